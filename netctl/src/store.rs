//! Desired state on disk: one JSON file per sandbox, written atomically
//! (temp file, fsync, rename) before it is applied, so a crash never leaves
//! a half-written file and a restart re-applies exactly what was last
//! accepted.
//!
//! The directory is deliberately not fsynced after the rename (it costs a
//! journal commit, ~8 ms here, on every apply). A daemon crash cannot lose
//! the rename, and a host crash that loses it also takes every network
//! namespace and its rules with it; the file read back is then the complete
//! previous or next version, never a torn one.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sbx_proto::policy::SandboxSpec;
use serde::{Deserialize, Serialize};

use crate::dns::NameState;
use crate::setup::SavedSetup;

/// What is saved for one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    pub id: String,
    pub spec: SandboxSpec,
    /// Last known addresses per name, so a restart applies them at once and
    /// picks up refreshing where it left off.
    #[serde(default)]
    pub names: BTreeMap<String, NameState>,
    /// The namespace, links and addresses netctl made for the sandbox, and
    /// how far making (or removing) them got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<SavedSetup>,
}

#[derive(Debug, thiserror::Error)]
#[error("state {path}: {source}")]
pub struct StoreError {
    path: PathBuf,
    source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating, mode 0700) `<state_dir>/sandboxes`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("sandboxes");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(err(&dir))?;
        Ok(Self { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn save(&self, saved: &Saved) -> Result<(), StoreError> {
        self.write(saved, true)
    }

    /// Like [`Store::save`] without the fsync, for the marks a setup leaves
    /// before it touches the kernel (`creating`, `deleting`). They only
    /// matter while the kernel objects exist, and a host crash that could
    /// lose them takes every namespace and veth with it; a daemon crash
    /// cannot lose them.
    pub fn save_quick(&self, saved: &Saved) -> Result<(), StoreError> {
        self.write(saved, false)
    }

    fn write(&self, saved: &Saved, sync: bool) -> Result<(), StoreError> {
        let path = self.path(&saved.id);
        let tmp = self.dir.join(format!(".{}.json.tmp", saved.id));
        let body = serde_json::to_vec(saved)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .map_err(err(&path))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err(&tmp))?;
        file.write_all(&body).map_err(err(&tmp))?;
        if sync {
            file.sync_all().map_err(err(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(err(&path))
    }

    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(&path)(e)),
        }
    }

    /// Every saved sandbox; files that cannot be read are reported, not
    /// fatal, so one bad file does not keep the others from being enforced.
    pub fn load_all(&self) -> Result<(Vec<Saved>, Vec<String>), StoreError> {
        let mut saved = Vec::new();
        let mut problems = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(err(&self.dir))? {
            let entry = entry.map_err(err(&self.dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Saved>(&b).map_err(|e| e.to_string()))
                .and_then(|s| {
                    sbx_proto::policy::validate_id(&s.id).map_err(|e| e.to_string())?;
                    if name != format!("{}.json", s.id) {
                        return Err(format!("file name does not match id {:?}", s.id));
                    }
                    s.spec.validate()?;
                    Ok(s)
                });
            match parsed {
                Ok(s) => saved.push(s),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        saved.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((saved, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_remove() {
        let dir = std::env::temp_dir().join(format!("netctl-store-{}", std::process::id()));
        let store = Store::open(&dir).unwrap();
        let saved = Saved {
            id: "sbx1".into(),
            spec: serde_json::from_str(
                r#"{"netns":"ns1","network":{"deny_out":["192.0.2.0/24"]}}"#,
            )
            .unwrap(),
            names: BTreeMap::new(),
            setup: None,
        };
        store.save(&saved).unwrap();
        fs::write(dir.join("sandboxes/bad.json"), "{").unwrap();
        let (all, problems) = store.load_all().unwrap();
        assert_eq!(all, vec![saved]);
        assert_eq!(problems.len(), 1);
        store.remove("sbx1").unwrap();
        store.remove("sbx1").unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
