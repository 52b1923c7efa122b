//! The registry of a fleet of proxies: entries live in redis (layout in
//! `script.rs`), every proxy keeps the ones it routes to in a local cache
//! (`cache.rs`) that change notices keep current (`subscriber.rs`).
//!
//! - Writes are Lua scripts: validation happens here with the same
//!   [`SandboxSpec::validate`] and [`apply_patch`] as the embedded store,
//!   the id/name rules and the write itself in redis, atomically, and the
//!   script publishes the id it changed.
//! - `resolve` answers from the cache; a miss reads redis; an entry past
//!   its TTL is re-read by one caller while the others keep answering with
//!   it. A notice re-reads the ids it names at once.
//! - Redis unreachable: cached entries keep answering, past their TTL too
//!   (stale beats down); ids not cached and every write fail with
//!   [`RegistryError::Store`]. The subscriber reconnects with backoff and
//!   re-reads every cached id, since notices may have been missed.
//!
//! The spec may hold an inline forwarded-auth key: nothing here logs a spec,
//! and the redis URL is logged without its credentials.

mod cache;
mod script;
mod subscriber;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Client;
use futures_util::future::BoxFuture;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{apply_patch, Registry, RegistryError, Sandbox, SandboxSpec};
use cache::{Cache, Fetched, Installed, Lookup, Read};
use script::{Keys, WriteOutcome};

pub use script::StoreError;

/// Negative answers ("no such id or name") are kept this long at most.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// Entries (sandboxes) one proxy caches; expired ones go first when full.
const CACHE_CAPACITY: usize = 100_000;
/// Ids read in one round trip (notices, resync, list).
const BATCH: usize = 512;
/// A patch whose entry keeps changing under it gives up after this many
/// reads.
const PATCH_ATTEMPTS: usize = 8;
/// The first subscription must be in place before `connect` returns, so a
/// write made right after is noticed.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest id or name worth a round trip (a DNS label is 63).
const MAX_KEY: usize = 255;

/// A registry in redis shared by a fleet of proxies.
pub struct RedisRegistry {
    shared: Arc<Shared>,
    /// Stops the subscriber when the registry goes.
    _subscriber: DropGuard,
}

struct Shared {
    conn: ConnectionManager,
    keys: Keys,
    cache: Cache,
    max_inflight: usize,
    /// Subscribed to change notices, and the cache resynced since: cached
    /// entries are as current as the notices.
    connected: AtomicBool,
}

impl RedisRegistry {
    /// Connects to `url` (`redis://`, `rediss://` is not built in,
    /// `redis+unix:///path`), with keys under `prefix`, and subscribes to
    /// change notices. Fails if redis cannot be reached now.
    pub async fn connect(
        url: &str,
        prefix: &str,
        max_inflight: usize,
        cache_ttl: Duration,
    ) -> Result<RedisRegistry, RegistryError> {
        Self::connect_with(url, prefix, max_inflight, cache_ttl, CACHE_CAPACITY).await
    }

    /// [`Self::connect`] with a cache bounded to `cache_capacity` sandboxes.
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        max_inflight: usize,
        cache_ttl: Duration,
        cache_capacity: usize,
    ) -> Result<RedisRegistry, RegistryError> {
        check_prefix(prefix)?;
        let shown = redacted(url);
        let client = Client::open(url)
            .map_err(|e| RegistryError::Store(format!("registry {shown}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = script::timed(ConnectionManager::new_with_config(client.clone(), config))
            .await
            .map_err(|e| RegistryError::Store(format!("registry {shown}: {e}")))?;
        let shared = Arc::new(Shared {
            conn,
            keys: Keys::new(prefix),
            cache: Cache::new(cache_ttl, NEGATIVE_TTL, cache_capacity, max_inflight),
            max_inflight,
            connected: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(subscriber::run(
            shared.clone(),
            client,
            ready_tx,
            stop.clone(),
        ));
        let guard = stop.drop_guard();
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => {}
            _ => {
                return Err(RegistryError::Store(format!(
                    "registry {shown}: cannot subscribe to change notices"
                )))
            }
        }
        tracing::info!(redis = %shown, prefix, cache_ttl = ?cache_ttl, "registry: shared store in redis");
        Ok(Self {
            shared,
            _subscriber: guard,
        })
    }

    /// Sandboxes in this proxy's cache.
    pub fn cached(&self) -> usize {
        self.shared.cache.len()
    }

    /// Subscribed to change notices (false while redis is unreachable).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    async fn resolve_now(&self, key: &str) -> Result<Option<Arc<Sandbox>>, RegistryError> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Ok(None);
        }
        let shared = &self.shared;
        match shared.cache.lookup(key, Instant::now()) {
            Lookup::Fresh(sandbox) => Ok(Some(sandbox)),
            Lookup::Unknown => Ok(None),
            Lookup::Stale(sandbox, None) => Ok(Some(sandbox)),
            Lookup::Stale(sandbox, Some(_claim)) => {
                if !shared.connected.load(Ordering::Acquire) {
                    return Ok(Some(sandbox));
                }
                match shared.fill(key).await {
                    Ok(found) => Ok(found),
                    Err(e) => {
                        tracing::debug!(sandbox = %sandbox.id, error = %e, "registry: redis unreachable; answering from the cache");
                        Ok(Some(sandbox))
                    }
                }
            }
            Lookup::Miss => shared.fill(key).await.map_err(RegistryError::from),
        }
    }

    /// The entry as written, in the cache if it is the current version.
    fn written(&self, fetched: Fetched) -> Arc<Sandbox> {
        let (id, spec) = (fetched.id.clone(), fetched.spec.clone());
        match self.shared.cache.install(fetched, true, Instant::now()) {
            Installed::Current(sandbox) => sandbox,
            // Removed again already: an entry of its own.
            Installed::Removed | Installed::Skipped => {
                Arc::new(Sandbox::build(id, spec, None, self.shared.max_inflight))
            }
        }
    }

    async fn put_now(
        &self,
        id: &str,
        mut spec: SandboxSpec,
    ) -> Result<Arc<Sandbox>, RegistryError> {
        spec.validate(id)?;
        let shared = &self.shared;
        let seen = script::write(&shared.conn, &shared.keys, id, &spec, None).await?;
        shared.cache.observe(&seen.incarnation);
        match seen.value {
            WriteOutcome::Written(version) => {
                tracing::debug!(sandbox = %id, version, "registry: entry written");
                Ok(self.written(Fetched {
                    id: id.to_owned(),
                    spec,
                    version,
                }))
            }
            WriteOutcome::Conflict(clash) => Err(clash.into()),
            WriteOutcome::Stale => Err(RegistryError::Store(
                "redis answered a put as if it were a patch".into(),
            )),
        }
    }

    async fn patch_now(
        &self,
        id_or_name: &str,
        patch: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Arc<Sandbox>, RegistryError> {
        let shared = &self.shared;
        for _ in 0..PATCH_ATTEMPTS {
            let seen = script::read(&shared.conn, &shared.keys, id_or_name).await?;
            shared.cache.observe(&seen.incarnation);
            let Read::Found(current) = seen.value else {
                return Err(RegistryError::NotFound(id_or_name.to_owned()));
            };
            let mut spec = apply_patch(&current.spec, patch.clone())?;
            spec.validate(&current.id)?;
            let seen = script::write(
                &shared.conn,
                &shared.keys,
                &current.id,
                &spec,
                Some(current.version),
            )
            .await?;
            shared.cache.observe(&seen.incarnation);
            match seen.value {
                WriteOutcome::Written(version) => {
                    tracing::debug!(sandbox = %current.id, version, "registry: entry patched");
                    return Ok(self.written(Fetched {
                        id: current.id,
                        spec,
                        version,
                    }));
                }
                WriteOutcome::Conflict(clash) => return Err(clash.into()),
                WriteOutcome::Stale => continue,
            }
        }
        Err(RegistryError::Conflict(format!(
            "sandbox {id_or_name:?} kept changing during the patch; try again"
        )))
    }

    async fn remove_now(&self, id: &str) -> Result<bool, RegistryError> {
        let shared = &self.shared;
        let seen = script::remove(&shared.conn, &shared.keys, id).await?;
        shared.cache.observe(&seen.incarnation);
        let Some(as_of) = seen.value else {
            return Ok(false);
        };
        tracing::debug!(sandbox = %id, version = as_of, "registry: entry removed");
        shared.cache.removed(id, as_of, Instant::now());
        Ok(true)
    }

    async fn list_now(&self) -> Result<Vec<Arc<Sandbox>>, RegistryError> {
        let shared = &self.shared;
        let ids = script::all_ids(&shared.conn, &shared.keys).await?;
        let mut all = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let seen = script::read_ids(&shared.conn, &shared.keys, chunk).await?;
            shared.cache.observe(&seen.incarnation);
            for (id, read) in chunk.iter().zip(seen.value) {
                match read {
                    Ok(Read::Found(fetched)) => all.push(shared.cache.current_or_build(fetched)),
                    Ok(Read::Absent { .. }) => {}
                    Err(e) => tracing::error!(sandbox = %id, error = %e, "registry: entry skipped"),
                }
            }
        }
        Ok(all)
    }
}

impl Shared {
    /// Reads `key` from redis into the cache: the answer to a resolve.
    async fn fill(&self, key: &str) -> Result<Option<Arc<Sandbox>>, StoreError> {
        let notices = self.cache.notices();
        let seen = script::read(&self.conn, &self.keys, key).await?;
        self.cache.observe(&seen.incarnation);
        let now = Instant::now();
        Ok(match seen.value {
            Read::Found(fetched) => match self.cache.install(fetched, true, now) {
                Installed::Current(sandbox) => Some(sandbox),
                Installed::Removed | Installed::Skipped => None,
            },
            Read::Absent { as_of } => {
                self.cache.absent(key, as_of, notices, now);
                None
            }
        })
    }

    /// Re-reads these ids and brings the cached ones up to date (a notice,
    /// a resync); ids not cached are only read to remember removals.
    async fn refresh(&self, ids: &[String]) -> Result<(), StoreError> {
        for chunk in ids.chunks(BATCH) {
            let seen = script::read_ids(&self.conn, &self.keys, chunk).await?;
            self.cache.observe(&seen.incarnation);
            let now = Instant::now();
            for (id, read) in chunk.iter().zip(seen.value) {
                match read {
                    Ok(Read::Found(fetched)) => {
                        self.cache.install(fetched, false, now);
                    }
                    Ok(Read::Absent { as_of }) => self.cache.removed(id, as_of, now),
                    Err(e) => {
                        // What is cached is outdated and the new version
                        // unreadable: requests fail (502) until it is fixed.
                        tracing::error!(sandbox = %id, error = %e, "registry: changed entry unreadable; dropped from the cache");
                        self.cache.forget(id);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Registry for RedisRegistry {
    fn resolve<'a>(
        &'a self,
        id_or_name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Sandbox>>, RegistryError>> {
        Box::pin(self.resolve_now(id_or_name))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Arc<Sandbox>>, RegistryError>> {
        Box::pin(self.list_now())
    }

    fn put<'a>(
        &'a self,
        id: &'a str,
        spec: SandboxSpec,
    ) -> BoxFuture<'a, Result<Arc<Sandbox>, RegistryError>> {
        Box::pin(self.put_now(id, spec))
    }

    fn patch<'a>(
        &'a self,
        id_or_name: &'a str,
        patch: serde_json::Map<String, serde_json::Value>,
    ) -> BoxFuture<'a, Result<Arc<Sandbox>, RegistryError>> {
        Box::pin(self.patch_now(id_or_name, patch))
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(self.remove_now(id))
    }
}

fn check_prefix(prefix: &str) -> Result<(), RegistryError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Store(format!(
            "registry key prefix {prefix:?} must be 1-64 characters of letters, digits, '-', '_', '.' and ':'"
        )))
    }
}

/// The URL without user, password or query (which may carry a password).
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable redis url>".into();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_logged_without_credentials() {
        assert_eq!(
            redacted("redis://user:s3cret@10.0.0.5:6379/2"),
            "redis://10.0.0.5:6379/2"
        );
        assert_eq!(redacted("redis://:s3cret@host"), "redis://host");
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?pass=s3cret"),
            "redis+unix:///run/redis.sock"
        );
        assert_eq!(redacted("redis://:pa/ss@host/0"), "redis://host/0");
        assert!(!redacted("s3cret").contains("s3cret"));
    }

    #[test]
    fn prefixes() {
        assert!(check_prefix("sbx-proxy").is_ok());
        assert!(check_prefix("fleet:eu-1").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("a b").is_err());
        assert!(check_prefix("a*").is_err());
    }
}
