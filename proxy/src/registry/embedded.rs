//! The registry of a single proxy: in memory, saved to one JSON file in the
//! state directory on every change, reloaded on start.
//!
//! A change is written to disk (temp file, fsync, rename) before it is
//! visible to requests, so a crash never loses an answered PUT. Readers take
//! a read lock for a map lookup only; writers are serialised by a separate
//! async mutex so the lock is never held across the file write.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{apply_patch, names, Registry, RegistryError, Sandbox, SandboxSpec};

const STATE_FILE: &str = "sandboxes.json";
const STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    sandboxes: BTreeMap<String, SandboxSpec>,
}

#[derive(Default)]
struct Maps {
    by_id: HashMap<String, Arc<Sandbox>>,
    /// name → id
    by_name: HashMap<String, String>,
}

pub struct EmbeddedRegistry {
    path: PathBuf,
    max_inflight: usize,
    maps: RwLock<Maps>,
    writer: tokio::sync::Mutex<()>,
}

impl EmbeddedRegistry {
    /// Opens (or creates) the registry in `state_dir`. A saved entry that no
    /// longer validates (a key file gone, say) is kept and served with its
    /// key marked unusable, so one bad entry never takes the others down.
    pub fn open(state_dir: &Path, max_inflight: usize) -> Result<Self, RegistryError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| RegistryError::Store(format!("create {}: {e}", state_dir.display())))?;
        let path = state_dir.join(STATE_FILE);
        let mut maps = Maps::default();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
                    RegistryError::Store(format!("{} is not a registry: {e}", path.display()))
                })?;
                if state.version != STATE_VERSION {
                    return Err(RegistryError::Store(format!(
                        "{}: unknown version {}",
                        path.display(),
                        state.version
                    )));
                }
                for (id, spec) in state.sandboxes {
                    let sandbox = Sandbox::build(id.clone(), spec, None, max_inflight);
                    if let Err(why) = &sandbox.key {
                        tracing::error!(sandbox = %id, error = %why, "saved sandbox has no usable forwarded-auth key; its requests fail until it is fixed");
                    }
                    if let Some(name) = &sandbox.spec.name {
                        maps.by_name.insert(name.clone(), id.clone());
                    }
                    maps.by_id.insert(id, Arc::new(sandbox));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RegistryError::Store(format!(
                    "read {}: {e}",
                    path.display()
                )))
            }
        }
        tracing::info!(sandboxes = maps.by_id.len(), path = %path.display(), "registry loaded");
        Ok(Self {
            path,
            max_inflight,
            maps: RwLock::new(maps),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the maps half-changed
        // (they are replaced entry by entry), so a poisoned lock is usable.
        self.maps.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, id_or_name: &str) -> Option<Arc<Sandbox>> {
        let maps = self.read();
        maps.by_id.get(id_or_name).cloned().or_else(|| {
            maps.by_name
                .get(id_or_name)
                .and_then(|id| maps.by_id.get(id).cloned())
        })
    }

    /// Ids and names share one space (see [`super::names`]).
    fn check_names(maps: &Maps, id: &str, spec: &SandboxSpec) -> Result<(), RegistryError> {
        names::check(
            id,
            spec.name.as_deref(),
            |n| maps.by_name.get(n).map(String::as_str),
            |i| maps.by_id.contains_key(i),
        )
        .map_err(RegistryError::from)
    }

    /// Writes the registry as it will be after a change, then applies the
    /// change in memory. The write (and its fsyncs, up to milliseconds on a
    /// busy disk) runs on the blocking pool, not on a thread that serves
    /// requests.
    async fn commit(&self, id: &str, new: Option<Arc<Sandbox>>) -> Result<(), RegistryError> {
        let mut specs: BTreeMap<String, SandboxSpec> = self
            .read()
            .by_id
            .iter()
            .map(|(k, v)| (k.clone(), v.spec.clone()))
            .collect();
        match &new {
            Some(sandbox) => specs.insert(id.to_owned(), sandbox.spec.clone()),
            None => specs.remove(id),
        };
        let path = self.path.clone();
        let state = StateFile {
            version: STATE_VERSION,
            sandboxes: specs,
        };
        tokio::task::spawn_blocking(move || save(&path, &state))
            .await
            .map_err(|e| RegistryError::Store(format!("saving the registry: {e}")))??;
        let mut maps = self.write();
        let old = match new {
            Some(sandbox) => maps.by_id.insert(id.to_owned(), sandbox),
            None => maps.by_id.remove(id),
        };
        if let Some(name) = old.as_ref().and_then(|o| o.spec.name.clone()) {
            maps.by_name.remove(&name);
        }
        if let Some(name) = maps.by_id.get(id).and_then(|s| s.spec.name.clone()) {
            maps.by_name.insert(name, id.to_owned());
        }
        Ok(())
    }

    async fn put_now(
        &self,
        id: &str,
        mut spec: SandboxSpec,
    ) -> Result<Arc<Sandbox>, RegistryError> {
        spec.validate(id)?;
        let old = self.lookup_id(id);
        Self::check_names(&self.read(), id, &spec)?;
        let sandbox = Arc::new(Sandbox::build(
            id.to_owned(),
            spec,
            old.as_deref(),
            self.max_inflight,
        ));
        self.commit(id, Some(sandbox.clone())).await?;
        Ok(sandbox)
    }

    fn lookup_id(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.read().by_id.get(id).cloned()
    }
}

impl Registry for EmbeddedRegistry {
    fn resolve<'a>(
        &'a self,
        id_or_name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Sandbox>>, RegistryError>> {
        let found = self.lookup(id_or_name);
        Box::pin(async move { Ok(found) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Arc<Sandbox>>, RegistryError>> {
        let mut all: Vec<_> = self.read().by_id.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Box::pin(async move { Ok(all) })
    }

    fn put<'a>(
        &'a self,
        id: &'a str,
        spec: SandboxSpec,
    ) -> BoxFuture<'a, Result<Arc<Sandbox>, RegistryError>> {
        Box::pin(async move {
            let _writer = self.writer.lock().await;
            self.put_now(id, spec).await
        })
    }

    fn patch<'a>(
        &'a self,
        id_or_name: &'a str,
        patch: serde_json::Map<String, serde_json::Value>,
    ) -> BoxFuture<'a, Result<Arc<Sandbox>, RegistryError>> {
        Box::pin(async move {
            let _writer = self.writer.lock().await;
            let current = self
                .lookup(id_or_name)
                .ok_or_else(|| RegistryError::NotFound(id_or_name.to_owned()))?;
            let spec = apply_patch(&current.spec, patch)?;
            self.put_now(&current.id, spec).await
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move {
            let _writer = self.writer.lock().await;
            let Some(old) = self.lookup_id(id) else {
                return Ok(false);
            };
            self.commit(id, None).await?;
            old.retire();
            Ok(true)
        })
    }
}

/// Atomic replace: a reader (or a crash) sees the old file or the new one.
fn save(path: &Path, state: &StateFile) -> Result<(), RegistryError> {
    let store = |what: &str, e: std::io::Error| {
        RegistryError::Store(format!("{what} {}: {e}", path.display()))
    };
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| RegistryError::Store(format!("encode registry: {e}")))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| store("create temp file for", e))?;
    file.write_all(&json).map_err(|e| store("write", e))?;
    file.sync_all().map_err(|e| store("fsync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| store("rename into", e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| store("fsync directory of", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: Option<&str>, agent: &str) -> SandboxSpec {
        SandboxSpec::sample(name, agent)
    }

    #[tokio::test]
    async fn names_ids_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let reg = EmbeddedRegistry::open(dir.path(), 4).unwrap();
        reg.put("sbx-1", spec(Some("web"), "10.0.0.2:9501"))
            .await
            .unwrap();
        assert_eq!(reg.resolve("web").await.unwrap().unwrap().id, "sbx-1");
        assert!(matches!(
            reg.put("sbx-2", spec(Some("web"), "10.0.0.3:9501")).await,
            Err(RegistryError::Conflict(_))
        ));
        assert!(matches!(
            reg.put("sbx-2", spec(Some("sbx-1"), "10.0.0.3:9501")).await,
            Err(RegistryError::Conflict(_))
        ));
        assert!(matches!(
            reg.put("web", spec(None, "10.0.0.3:9501")).await,
            Err(RegistryError::Conflict(_))
        ));
        let patch = serde_json::json!({"name": "site"});
        reg.patch("web", patch.as_object().unwrap().clone())
            .await
            .unwrap();
        assert!(reg.resolve("web").await.unwrap().is_none());
        assert_eq!(reg.resolve("site").await.unwrap().unwrap().id, "sbx-1");
        drop(reg);
        let reg = EmbeddedRegistry::open(dir.path(), 4).unwrap();
        assert_eq!(reg.resolve("site").await.unwrap().unwrap().id, "sbx-1");
        assert!(reg.remove("sbx-1").await.unwrap());
        assert!(!reg.remove("sbx-1").await.unwrap());
        assert!(reg.resolve("site").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn upstream_epoch_follows_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let reg = EmbeddedRegistry::open(dir.path(), 4).unwrap();
        let a = reg.put("sbx-1", spec(None, "10.0.0.2:9501")).await.unwrap();
        let patch = serde_json::json!({"exposed_ports": [1, 2]});
        let b = reg
            .patch("sbx-1", patch.as_object().unwrap().clone())
            .await
            .unwrap();
        assert_eq!(a.live.upstream.generation, b.live.upstream.generation);
        assert!(!a.live.upstream.cancelled.is_cancelled());
        let patch = serde_json::json!({"agent": "10.0.0.9:9501"});
        let c = reg
            .patch("sbx-1", patch.as_object().unwrap().clone())
            .await
            .unwrap();
        assert_ne!(b.live.upstream.generation, c.live.upstream.generation);
        assert!(b.live.upstream.cancelled.is_cancelled());
        assert!(Arc::ptr_eq(&a.live.inflight, &c.live.inflight));
        reg.remove("sbx-1").await.unwrap();
        assert!(c.live.upstream.cancelled.is_cancelled());
    }

    #[tokio::test]
    async fn invalid_put_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let reg = EmbeddedRegistry::open(dir.path(), 4).unwrap();
        let mut bad = spec(None, "10.0.0.2:9501");
        bad.exposed_ports = vec![9501];
        assert!(matches!(
            reg.put("sbx-1", bad).await,
            Err(RegistryError::Invalid(_))
        ));
        assert!(reg.list().await.unwrap().is_empty());
    }
}
