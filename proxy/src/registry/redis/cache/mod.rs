//! The proxy's local copy of the entries it routes to: id → sandbox, name →
//! id, and short-lived "no such id or name" answers.
//!
//! Every entry carries the store version of the write that made it (one
//! counter for the whole store, bumped by removals too), so a read that
//! raced a newer write never replaces what it wrote, and a removal is
//! remembered for a while as a tombstone so a read that started before it
//! cannot bring the entry back. Negative answers are kept only when no
//! change notice arrived while they were being read.
//!
//! Lookups take a read lock; everything that builds or drops a [`Sandbox`]
//! holds `builder` as well, so the decision to replace an entry and the
//! build that carries its runtime state over (or cancels its connections)
//! are never interleaved with another replacement.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::registry::{Sandbox, SandboxSpec};

/// How long a removal is remembered: longer than any read can take.
const TOMBSTONE_TTL: Duration = Duration::from_secs(10);

/// An entry as read from redis.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub id: String,
    pub spec: SandboxSpec,
    pub version: u64,
}

/// What one read of redis found: an entry, or nothing as of store version
/// `as_of`. Lives for one reply, so the size difference is no matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Read {
    Found(Fetched),
    Absent { as_of: u64 },
}

/// What the cache knows about an id or name.
pub(crate) enum Lookup {
    Fresh(Arc<Sandbox>),
    /// Past its TTL. The claim, when there is one, makes this caller the one
    /// that re-reads it; the others answer with the stale entry meanwhile.
    Stale(Arc<Sandbox>, Option<Claim>),
    /// Recently read as neither an id nor a name.
    Unknown,
    Miss,
}

/// The right to refresh one stale entry; released when dropped.
pub(crate) struct Claim {
    flag: Arc<AtomicBool>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::Release);
    }
}

/// What became of an entry offered to the cache.
#[derive(Debug)]
pub(crate) enum Installed {
    /// The current version: the one offered, or a newer one already cached.
    Current(Arc<Sandbox>),
    /// Removed after it was read.
    Removed,
    /// Not cached, and the caller asked not to add it.
    Skipped,
}

struct Entry {
    sandbox: Arc<Sandbox>,
    version: u64,
    expires: Instant,
    refreshing: Arc<AtomicBool>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Entry>,
    /// name → id; the entry's own spec has the last word.
    by_name: HashMap<String, String>,
    /// Neither an id nor a name, until then.
    unknown: HashMap<String, Instant>,
    /// Removed id → (store version of the removal, until when remembered).
    tombstones: HashMap<String, (u64, Instant)>,
    /// Change notices seen (batches), for negative answers.
    notices: u64,
    /// The store's incarnation (a token the first write creates). When it
    /// changes, redis lost its data (a restart without persistence, a
    /// failover to an empty replica) and the versions cached mean nothing.
    incarnation: Option<String>,
}

impl Inner {
    fn id_of<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        if self.by_id.contains_key(key) {
            return Some(key);
        }
        let id = self.by_name.get(key)?;
        let entry = self.by_id.get(id)?;
        (entry.sandbox.spec.name.as_deref() == Some(key)).then_some(id.as_str())
    }

    fn evict(&mut self, id: &str) -> Option<Entry> {
        let entry = self.by_id.remove(id)?;
        if let Some(name) = &entry.sandbox.spec.name {
            if self.by_name.get(name).is_some_and(|owner| owner == id) {
                self.by_name.remove(name);
            }
        }
        Some(entry)
    }
}

pub(crate) struct Cache {
    inner: RwLock<Inner>,
    builder: Mutex<()>,
    ttl: Duration,
    negative_ttl: Duration,
    capacity: usize,
    max_inflight: usize,
}

impl Cache {
    pub fn new(
        ttl: Duration,
        negative_ttl: Duration,
        capacity: usize,
        max_inflight: usize,
    ) -> Self {
        Self {
            inner: RwLock::default(),
            builder: Mutex::new(()),
            ttl,
            negative_ttl: negative_ttl.min(ttl),
            capacity: capacity.max(1),
            max_inflight,
        }
    }

    // A panic while a lock is held cannot leave the maps half-changed for
    // a reader (each change is a whole insert or remove): poison is ignored.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn building(&self) -> MutexGuard<'_, ()> {
        self.builder.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn lookup(&self, key: &str, now: Instant) -> Lookup {
        let inner = self.read();
        let Some(entry) = inner.id_of(key).and_then(|id| inner.by_id.get(id)) else {
            return match inner.unknown.get(key) {
                Some(until) if *until > now => Lookup::Unknown,
                _ => Lookup::Miss,
            };
        };
        if entry.expires > now {
            return Lookup::Fresh(entry.sandbox.clone());
        }
        let claim = entry
            .refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then(|| Claim {
                flag: entry.refreshing.clone(),
            });
        Lookup::Stale(entry.sandbox.clone(), claim)
    }

    /// The count of change-notice batches seen; a negative answer read
    /// while it moved is not kept.
    pub fn notices(&self) -> u64 {
        self.read().notices
    }

    /// A batch of change notices arrived: negative answers read before it
    /// may be wrong from now on.
    pub fn notice(&self) {
        self.write().notices += 1;
    }

    /// Every reply from redis names the store's incarnation.
    pub fn observe(&self, incarnation: &str) {
        if self.read().incarnation.as_deref() == Some(incarnation) {
            return;
        }
        let _building = self.building();
        let mut inner = self.write();
        if inner
            .incarnation
            .as_deref()
            .is_some_and(|was| !was.is_empty())
        {
            tracing::warn!(
                "registry: redis's data was lost or replaced; revalidating every cached entry"
            );
            let now = Instant::now();
            for entry in inner.by_id.values_mut() {
                entry.version = 0;
                entry.expires = now;
            }
            inner.tombstones.clear();
        }
        inner.incarnation = Some(incarnation.to_owned());
    }

    pub fn cached_ids(&self) -> Vec<String> {
        self.read().by_id.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// Offers an entry read from redis (or just written). A newer cached
    /// version wins; an older one is replaced, carrying its runtime state
    /// over; `add` says whether an id not cached yet is added.
    pub fn install(&self, fetched: Fetched, add: bool, now: Instant) -> Installed {
        let _building = self.building();
        let old = {
            let mut inner = self.write();
            if let Some(name) = &fetched.spec.name {
                inner.unknown.remove(name);
            }
            inner.unknown.remove(&fetched.id);
            match inner.by_id.get_mut(&fetched.id) {
                Some(entry) if entry.version >= fetched.version => {
                    if entry.version == fetched.version {
                        entry.expires = now + self.ttl;
                    }
                    return Installed::Current(entry.sandbox.clone());
                }
                Some(entry) => Some(entry.sandbox.clone()),
                None => {
                    let removed = inner
                        .tombstones
                        .get(&fetched.id)
                        .is_some_and(|(as_of, until)| *until > now && *as_of >= fetched.version);
                    if removed {
                        return Installed::Removed;
                    }
                    if !add {
                        return Installed::Skipped;
                    }
                    None
                }
            }
        };
        // Built outside the map's lock (a key file may be read); `builder`
        // keeps any other replacement out meanwhile.
        let sandbox = Arc::new(Sandbox::build(
            fetched.id.clone(),
            fetched.spec,
            old.as_deref(),
            self.max_inflight,
        ));
        let mut inner = self.write();
        if old.is_none() {
            self.make_room(&mut inner, now);
        }
        inner.evict(&fetched.id);
        if let Some(name) = &sandbox.spec.name {
            inner.by_name.insert(name.clone(), fetched.id.clone());
        }
        inner.by_id.insert(
            fetched.id,
            Entry {
                sandbox: sandbox.clone(),
                version: fetched.version,
                expires: now + self.ttl,
                refreshing: Arc::new(AtomicBool::new(false)),
            },
        );
        Installed::Current(sandbox)
    }

    /// Redis has no entry with this id as of `as_of`: a cached one written
    /// before that is gone (its connections close), and the removal is
    /// remembered so a read that started earlier cannot bring it back.
    pub fn removed(&self, id: &str, as_of: u64, now: Instant) {
        let _building = self.building();
        self.removed_locked(id, as_of, now);
    }

    fn removed_locked(&self, id: &str, as_of: u64, now: Instant) {
        let gone = {
            let mut inner = self.write();
            if inner.tombstones.len() >= self.capacity {
                inner.tombstones.retain(|_, (_, until)| *until > now);
                if inner.tombstones.len() >= self.capacity {
                    // A storm of removals: forgetting them only reopens a
                    // race with reads already in flight.
                    inner.tombstones.clear();
                }
            }
            let entry = inner.tombstones.entry(id.to_owned()).or_insert((0, now));
            entry.0 = entry.0.max(as_of);
            entry.1 = now + TOMBSTONE_TTL;
            match inner.by_id.get(id) {
                Some(entry) if entry.version <= as_of => inner.evict(id),
                _ => None,
            }
        };
        if let Some(entry) = gone {
            entry.sandbox.retire();
        }
    }

    /// Drops an entry whose new version cannot be read: requests for it
    /// fail rather than go on with what it was.
    pub fn forget(&self, id: &str) {
        let _building = self.building();
        let gone = self.write().evict(id);
        if let Some(entry) = gone {
            entry.sandbox.retire();
        }
    }

    /// The cached sandbox if it is this version, else one built apart
    /// (for listings: the cache is for what this proxy routes to).
    pub fn current_or_build(&self, fetched: Fetched) -> Arc<Sandbox> {
        if let Some(entry) = self.read().by_id.get(&fetched.id) {
            if entry.version == fetched.version {
                return entry.sandbox.clone();
            }
        }
        Arc::new(Sandbox::build(
            fetched.id,
            fetched.spec,
            None,
            self.max_inflight,
        ))
    }

    /// A read of `key` (an id or a name) found nothing as of `as_of`. A
    /// cached id goes as in [`Self::removed`]; a cached name only loses
    /// its index entry (its sandbox may have been renamed, not removed).
    /// The negative answer is kept if no notice arrived since `notices`.
    pub fn absent(&self, key: &str, as_of: u64, notices: u64, now: Instant) {
        let _building = self.building();
        if self.read().by_id.contains_key(key) {
            self.removed_locked(key, as_of, now);
        }
        let mut inner = self.write();
        if let Some(id) = inner.by_name.get(key).cloned() {
            if inner.by_id.get(&id).is_none_or(|e| e.version <= as_of) {
                inner.by_name.remove(key);
            }
        }
        if inner.notices == notices && inner.id_of(key).is_none() {
            if inner.unknown.len() >= self.capacity {
                inner.unknown.retain(|_, until| *until > now);
                if inner.unknown.len() >= self.capacity {
                    inner.unknown.clear();
                }
            }
            inner
                .unknown
                .insert(key.to_owned(), now + self.negative_ttl);
        }
    }

    /// Makes room for one more entry: expired entries go first; if that is
    /// not enough, the ones closest to expiry, down to 90% of capacity so
    /// the next inserts do not scan again. Their runtime state goes with
    /// the last reference (they were not removed, so not retired).
    fn make_room(&self, inner: &mut Inner, now: Instant) {
        if inner.by_id.len() < self.capacity {
            return;
        }
        let target = self.capacity - self.capacity / 10 - 1;
        let mut order: Vec<(Instant, String)> = inner
            .by_id
            .iter()
            .map(|(id, e)| (e.expires, id.clone()))
            .collect();
        order.sort_unstable();
        let expired = order.iter().take_while(|(at, _)| *at <= now).count();
        let excess = inner.by_id.len().saturating_sub(target);
        let drop = expired.max(excess).min(order.len());
        for (_, id) in order.into_iter().take(drop) {
            inner.evict(&id);
        }
        tracing::debug!(evicted = drop, "registry cache full");
    }
}

#[cfg(test)]
mod tests;
