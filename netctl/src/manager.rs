//! The sandboxes under management: validation → resolution → saved state →
//! one transaction, and the DNS refresh that keeps sets fresh.
//!
//! Each sandbox has its own async mutex, so changes to one sandbox are
//! serialised (a refresh never interleaves with a PUT) while different
//! sandboxes proceed in parallel.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use sbx_proto::policy::{self, Destination, SandboxPatch, SandboxSpec, ValidPolicy};
use sbx_proto::ErrorCode;
use tokio::sync::{Mutex, Notify, Semaphore};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::dns::{self, NameState, Resolver, Timing};
use crate::metrics::{Metrics, SandboxSample};
use crate::nft::Nft;
use crate::ruleset::{self, Desired, Prefixes};
use crate::store::{Saved, Store};
use crate::view::{AddressView, NameView, SandboxView};

/// An error for the API: status code, machine code and one clear line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// One sandbox's live state.
struct Sandbox {
    spec: SandboxSpec,
    policy: Option<ValidPolicy>,
    names: BTreeMap<String, NameState>,
    /// What is in the kernel (None: nothing known to be applied).
    applied: Option<Desired>,
    error: Option<String>,
    /// Bumped on every PUT/PATCH so a refresh that raced one is discarded.
    generation: u64,
    removed: bool,
}

struct Entry {
    id: String,
    state: Mutex<Sandbox>,
    wake: Notify,
}

pub struct Manager {
    config: Config,
    always: Vec<IpNet>,
    sandbox_resolvers: Vec<IpNet>,
    timing: Timing,
    nft: Nft,
    resolver: Resolver,
    store: Store,
    sandboxes: StdMutex<HashMap<String, Arc<Entry>>>,
    pub metrics: Metrics,
}

impl Manager {
    pub fn new(config: Config, state_dir: PathBuf) -> anyhow::Result<Arc<Self>> {
        let always = config
            .always_deny_nets()
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        let resolver = Resolver::new(&config.dns, config.lookup_timeout())
            .map_err(|e| anyhow::anyhow!("dns: {e}"))?;
        let sandbox_resolvers = if config.dns.sandbox_resolvers.is_empty() {
            resolver.upstreams().to_vec()
        } else {
            config.dns.sandbox_resolvers.clone()
        }
        .into_iter()
        .map(policy::host_net)
        .collect();
        let store = Store::open(&state_dir)?;
        Ok(Arc::new(Self {
            timing: Timing::from_config(&config.dns),
            nft: Nft::new(config.nft.clone()),
            always,
            sandbox_resolvers,
            resolver,
            store,
            config,
            sandboxes: StdMutex::new(HashMap::new()),
            metrics: Metrics::default(),
        }))
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        let map = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        self.sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The entry for `id`, created (empty, not yet applied) if needed. The
    /// bool says whether it was created here.
    fn entry_or_insert(self: &Arc<Self>, id: &str, spec: &SandboxSpec) -> (Arc<Entry>, bool) {
        let mut map = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(id) {
            return (e.clone(), false);
        }
        let entry = Arc::new(Entry {
            id: id.to_owned(),
            state: Mutex::new(Sandbox {
                spec: spec.clone(),
                policy: None,
                names: BTreeMap::new(),
                applied: None,
                error: None,
                generation: 0,
                removed: false,
            }),
            wake: Notify::new(),
        });
        map.insert(id.to_owned(), entry.clone());
        tokio::spawn(refresher(self.clone(), entry.clone()));
        (entry, true)
    }

    fn forget(&self, id: &str, entry: &Arc<Entry>) {
        let mut map = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            map.remove(id);
        }
        entry.wake.notify_one();
    }

    /// `PUT /v1/sandboxes/{id}`.
    pub async fn put(
        self: &Arc<Self>,
        id: &str,
        spec: SandboxSpec,
    ) -> Result<SandboxView, ApiError> {
        let policy = self.validate(id, &spec)?;
        let (entry, created) = self.entry_or_insert(id, &spec);
        let mut sb = entry.state.lock().await;
        if sb.removed {
            // Lost a race with DELETE: start over with a fresh entry.
            drop(sb);
            return Box::pin(self.put(id, spec)).await;
        }
        let fresh = created || sb.applied.is_none() && sb.generation == 0;
        let result = self.set(&entry, &mut sb, spec, policy).await;
        if result.is_err() && fresh {
            sb.removed = true;
            self.forget(id, &entry);
        }
        result?;
        Ok(self.view(&entry.id, &sb, false).await)
    }

    /// `PATCH /v1/sandboxes/{id}`: `network` absent keeps, null clears, an
    /// object replaces.
    pub async fn patch(
        self: &Arc<Self>,
        id: &str,
        patch: SandboxPatch,
    ) -> Result<SandboxView, ApiError> {
        policy::validate_id(id).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let mut sb = entry.state.lock().await;
        if sb.removed {
            return Err(not_found(id));
        }
        if let Some(network) = patch.network {
            let mut spec = sb.spec.clone();
            spec.network = network;
            let policy = self.validate(id, &spec)?;
            self.set(&entry, &mut sb, spec, policy).await?;
        }
        Ok(self.view(&entry.id, &sb, false).await)
    }

    fn validate(&self, id: &str, spec: &SandboxSpec) -> Result<Option<ValidPolicy>, ApiError> {
        let checked = policy::validate_id(id)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))
            .and_then(|()| {
                spec.validate()
                    .map_err(|e| ApiError::new(ErrorCode::InvalidPolicy, e))
            });
        if checked.is_err() {
            self.metrics
                .rejected_requests
                .fetch_add(1, Ordering::Relaxed);
        }
        checked
    }

    /// Resolves new names, saves, applies; on failure the saved state and
    /// the kernel both keep the previous version.
    async fn set(
        &self,
        entry: &Entry,
        sb: &mut Sandbox,
        spec: SandboxSpec,
        policy: Option<ValidPolicy>,
    ) -> Result<(), ApiError> {
        let netns = netns_path(&spec)?;
        if !netns.exists() {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("network namespace {} not found", netns.display()),
            ));
        }
        let wanted: Vec<String> = policy
            .as_ref()
            .map(ValidPolicy::domains)
            .unwrap_or_default();
        let mut names: BTreeMap<String, NameState> = wanted
            .iter()
            .map(|n| (n.clone(), sb.names.get(n).cloned().unwrap_or_default()))
            .collect();
        self.resolve_new(&mut names).await;

        let desired = self.desired(&spec, policy.as_ref(), &names);
        let previous = Saved {
            id: entry.id.clone(),
            spec: sb.spec.clone(),
            names: sb.names.clone(),
        };
        let next = Saved {
            id: entry.id.clone(),
            spec: spec.clone(),
            names: names.clone(),
        };
        let saving = Instant::now();
        self.store
            .save(&next)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let save_us = saving.elapsed().as_micros() as u64;
        let started = Instant::now();
        let same_netns = netns_path(&sb.spec).ok().as_ref() == Some(&netns);
        let applied = match sb.applied.as_ref().filter(|_| same_netns) {
            // We committed `old` ourselves: send only the difference. If the
            // kernel drifted (our table touched by someone else) the smaller
            // transaction fails whole and the full table goes in instead.
            Some(old) => match ruleset::update(old, &desired) {
                // The same state again: re-assert it whole (a no-op for a
                // healthy table, a repair for one someone changed).
                None => self.nft.apply(&netns, &ruleset::full(&desired)).await,
                Some(batch) => match self.nft.apply(&netns, &batch).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        warn!(sandbox = %entry.id, error = %e, "incremental apply failed; applying the whole table");
                        self.nft.apply(&netns, &ruleset::full(&desired)).await
                    }
                },
            },
            None => self.nft.apply(&netns, &ruleset::full(&desired)).await,
        };
        self.metrics
            .record_apply(applied.is_ok(), started.elapsed());
        if let Err(e) = applied {
            warn!(sandbox = %entry.id, error = %e, "apply failed; previous rules stay in force");
            let restored = if sb.generation == 0 && sb.applied.is_none() {
                self.store.remove(&entry.id)
            } else {
                self.store.save(&previous)
            };
            if let Err(e) = restored {
                warn!(sandbox = %entry.id, error = %e, "could not restore saved state");
            }
            return Err(ApiError::new(ErrorCode::Internal, e.to_string()));
        }
        info!(sandbox = %entry.id, netns = %netns.display(), save_us, nft_us = started.elapsed().as_micros() as u64, "applied");
        let old_netns = netns_path(&sb.spec).ok();
        if sb.applied.is_some() && old_netns.as_ref() != Some(&netns) {
            if let Some(old) = old_netns {
                // The sandbox moved: our table in the old namespace is stale.
                if let Err(e) = self.nft.apply(&old, &ruleset::remove()).await {
                    debug!(sandbox = %entry.id, error = %e, "old namespace not cleaned");
                }
            }
        }
        sb.spec = spec;
        sb.policy = policy;
        sb.names = names;
        sb.applied = Some(desired);
        sb.error = None;
        sb.generation += 1;
        entry.wake.notify_one();
        Ok(())
    }

    /// Looks up names we know nothing about yet (all at once); names with
    /// history keep it and are left to the refresher.
    async fn resolve_new(&self, names: &mut BTreeMap<String, NameState>) {
        let todo: Vec<String> = names
            .iter()
            .filter(|(_, s)| s.resolved_at_ms.is_none() && s.addrs.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        if todo.is_empty() {
            return;
        }
        let answers = futures_join(todo.iter().map(|n| self.resolver.resolve(n))).await;
        let now = dns::now_ms();
        for (name, answer) in todo.iter().zip(answers) {
            self.count_lookup(answer.is_ok());
            if let Some(state) = names.get_mut(name) {
                state.update(answer, now, self.timing);
            }
        }
    }

    fn count_lookup(&self, ok: bool) {
        let counter = if ok {
            &self.metrics.refresh_ok
        } else {
            &self.metrics.refresh_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The pure inputs of the ruleset for a spec and what its names resolve to.
    fn desired(
        &self,
        spec: &SandboxSpec,
        policy: Option<&ValidPolicy>,
        names: &BTreeMap<String, NameState>,
    ) -> Desired {
        let expand = |list: &[Destination]| -> Vec<IpNet> {
            let mut nets = Vec::new();
            for d in list {
                match d {
                    Destination::Net(net) => nets.push(*net),
                    Destination::Domain(name) => {
                        if let Some(state) = names.get(name) {
                            nets.extend(state.current().map(policy::host_net));
                        }
                    }
                }
            }
            nets
        };
        let (allow_internet_access, allow, deny, allow_has_name) = match policy {
            None => (true, Vec::new(), Vec::new(), false),
            Some(p) => (
                p.allow_internet_access,
                expand(&p.allow_out),
                expand(&p.deny_out),
                p.allow_out
                    .iter()
                    .any(|d| matches!(d, Destination::Domain(_))),
            ),
        };
        let dns = if allow_has_name && self.config.dns.allow_sandbox_queries {
            Prefixes::merge(&self.sandbox_resolvers)
        } else {
            Prefixes::default()
        };
        Desired {
            iface: spec.iface.clone(),
            allow_internet_access,
            refusal: self.config.refusal,
            always: Prefixes::merge(&self.always),
            dns,
            allow: Prefixes::merge(&allow),
            deny: Prefixes::merge(&deny),
        }
    }

    /// `GET /v1/sandboxes/{id}`.
    pub async fn get(&self, id: &str) -> Result<SandboxView, ApiError> {
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let sb = entry.state.lock().await;
        if sb.removed {
            return Err(not_found(id));
        }
        Ok(self.view(id, &sb, true).await)
    }

    /// `GET /v1/sandboxes`.
    pub async fn list(&self) -> Vec<SandboxView> {
        let mut out = Vec::new();
        for entry in self.entries() {
            let sb = entry.state.lock().await;
            if !sb.removed && (sb.applied.is_some() || sb.generation > 0 || sb.error.is_some()) {
                out.push(self.view(&entry.id, &sb, false).await);
            }
        }
        out
    }

    /// `DELETE /v1/sandboxes/{id}`: our table leaves the namespace; the
    /// namespace itself is not ours.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        policy::validate_id(id).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let mut sb = entry.state.lock().await;
        if sb.removed {
            return Err(not_found(id));
        }
        let netns = netns_path(&sb.spec)?;
        if netns.exists() {
            if let Err(e) = self.nft.apply(&netns, &ruleset::remove()).await {
                // A namespace that vanished meanwhile took our table with it.
                if netns.exists() {
                    return Err(ApiError::new(ErrorCode::Internal, e.to_string()));
                }
            }
        }
        self.store
            .remove(id)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        sb.removed = true;
        self.forget(id, &entry);
        info!(sandbox = %id, "removed");
        Ok(())
    }

    async fn view(&self, id: &str, sb: &Sandbox, with_counters: bool) -> SandboxView {
        let counters = if with_counters {
            match netns_path(&sb.spec) {
                Ok(path) => self.nft.counters(&path).await.ok().flatten(),
                Err(_) => None,
            }
        } else {
            None
        };
        SandboxView {
            id: id.to_owned(),
            netns: sb.spec.netns.clone(),
            iface: sb.spec.iface.clone(),
            network: sb.spec.network.clone(),
            applied: sb.applied.is_some(),
            error: sb.error.clone(),
            names: sb
                .names
                .iter()
                .map(|(name, s)| NameView {
                    name: name.clone(),
                    addresses: s
                        .addrs
                        .iter()
                        .map(|(a, e)| AddressView {
                            address: *a,
                            expires_at_ms: *e,
                        })
                        .collect(),
                    resolved_at_ms: s.resolved_at_ms,
                    next_refresh_ms: s.next_refresh_ms,
                    error: s.error.clone(),
                })
                .collect(),
            counters,
        }
    }

    pub async fn samples(&self) -> Vec<SandboxSample> {
        let mut out = Vec::new();
        for entry in self.entries() {
            let sb = entry.state.lock().await;
            if sb.removed {
                continue;
            }
            let counters = match netns_path(&sb.spec) {
                Ok(path) if sb.applied.is_some() => self.nft.counters(&path).await.ok().flatten(),
                _ => None,
            };
            out.push(SandboxSample {
                id: entry.id.clone(),
                applied: sb.applied.is_some(),
                names: sb.names.len(),
                failing_names: sb.names.values().filter(|s| s.error.is_some()).count(),
                accepted: counters.map(|c| c.accepted),
                refused: counters.map(|c| c.refused),
            });
        }
        out
    }

    pub fn count(&self) -> usize {
        self.sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Re-applies every saved sandbox (rules may have survived in the
    /// kernel; re-applying the same state is harmless). Names keep their
    /// saved addresses and are refreshed when due.
    pub async fn reconcile(self: &Arc<Self>) -> anyhow::Result<ReconcileReport> {
        let started = Instant::now();
        let (saved, problems) = self.store.load_all()?;
        for p in &problems {
            warn!(problem = %p, "saved state skipped");
        }
        let limit = Arc::new(Semaphore::new(self.config.reconcile_concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for s in saved {
            let me = self.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                me.restore(s).await
            });
        }
        let mut report = ReconcileReport {
            skipped: problems.len(),
            ..ReconcileReport::default()
        };
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(true) => report.applied += 1,
                _ => report.failed += 1,
            }
        }
        report.took = started.elapsed();
        info!(
            applied = report.applied,
            failed = report.failed,
            skipped = report.skipped,
            took_ms = report.took.as_millis() as u64,
            "reconciled saved sandboxes"
        );
        Ok(report)
    }

    async fn restore(self: &Arc<Self>, saved: Saved) -> bool {
        let policy = match saved.spec.validate() {
            Ok(p) => p,
            Err(_) => return false,
        };
        let (entry, _) = self.entry_or_insert(&saved.id, &saved.spec);
        let mut sb = entry.state.lock().await;
        sb.spec = saved.spec.clone();
        sb.policy = policy.clone();
        sb.names = saved.names;
        sb.generation += 1;
        let desired = self.desired(&saved.spec, policy.as_ref(), &sb.names);
        let result = match netns_path(&saved.spec) {
            Ok(path) => {
                let started = Instant::now();
                let r = self.nft.apply(&path, &ruleset::full(&desired)).await;
                self.metrics.record_apply(r.is_ok(), started.elapsed());
                r.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.message),
        };
        let ok = result.is_ok();
        match result {
            Ok(()) => {
                sb.applied = Some(desired);
                sb.error = None;
            }
            Err(e) => {
                warn!(sandbox = %saved.id, error = %e, "saved sandbox not applied");
                sb.applied = None;
                sb.error = Some(e);
            }
        }
        entry.wake.notify_one();
        ok
    }
}

#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub applied: usize,
    pub failed: usize,
    pub skipped: usize,
    pub took: Duration,
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("sandbox {id:?} not found"))
}

fn netns_path(spec: &SandboxSpec) -> Result<PathBuf, ApiError> {
    policy::netns_path(&spec.netns)
        .map(PathBuf::from)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))
}

/// Runs lookups concurrently on the current task.
async fn futures_join<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let futs: Vec<_> = futs.map(Box::pin).collect();
    let mut results: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    let mut pending: Vec<_> = futs.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                results[*i] = Some(v);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// Keeps one sandbox's names fresh until it is removed. Lookups run without
/// the sandbox lock; the result is applied only if no PUT/PATCH happened
/// meanwhile (that one resolved and applied for itself).
async fn refresher(manager: Arc<Manager>, entry: Arc<Entry>) {
    loop {
        let (due, generation) = {
            let sb = entry.state.lock().await;
            if sb.removed {
                return;
            }
            let due = sb.names.values().map(|s| s.next_refresh_ms).min();
            (if sb.applied.is_some() { due } else { None }, sb.generation)
        };
        match due {
            None => {
                entry.wake.notified().await;
                continue;
            }
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(dns::now_ms()));
                if !wait.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = entry.wake.notified() => continue,
                    }
                }
            }
        }
        let todo: Vec<String> = {
            let sb = entry.state.lock().await;
            let now = dns::now_ms();
            sb.names
                .iter()
                .filter(|(_, s)| s.next_refresh_ms <= now)
                .map(|(n, _)| n.clone())
                .collect()
        };
        let answers = futures_join(todo.iter().map(|n| manager.resolver.resolve(n))).await;
        let mut sb = entry.state.lock().await;
        if sb.removed {
            return;
        }
        if sb.generation != generation {
            continue;
        }
        let now = dns::now_ms();
        let mut changed = false;
        for (name, answer) in todo.iter().zip(answers) {
            manager.count_lookup(answer.is_ok());
            if let Err(e) = &answer {
                debug!(sandbox = %entry.id, name = %name, error = %e, "lookup failed; keeping last known addresses");
            }
            if let Some(state) = sb.names.get_mut(name) {
                changed |= state.update(answer, now, manager.timing);
            }
        }
        if !changed {
            continue;
        }
        let desired = manager.desired(&sb.spec, sb.policy.as_ref(), &sb.names);
        let Ok(path) = netns_path(&sb.spec) else {
            continue;
        };
        let saved = Saved {
            id: entry.id.clone(),
            spec: sb.spec.clone(),
            names: sb.names.clone(),
        };
        if let Err(e) = manager.store.save(&saved) {
            warn!(sandbox = %entry.id, error = %e, "could not save refreshed names");
        }
        let mut applied = manager
            .nft
            .apply(&path, &ruleset::sets_only(&desired))
            .await;
        if applied.is_err() && path.exists() {
            // Our table was changed behind our back: put it back whole.
            applied = manager.nft.apply(&path, &ruleset::full(&desired)).await;
        }
        match applied {
            Ok(()) => {
                manager.metrics.set_updates.fetch_add(1, Ordering::Relaxed);
                debug!(sandbox = %entry.id, "sets refreshed");
                sb.applied = Some(desired);
                sb.error = None;
            }
            Err(e) => {
                manager
                    .metrics
                    .set_updates_failed
                    .fetch_add(1, Ordering::Relaxed);
                warn!(sandbox = %entry.id, error = %e, "set refresh failed");
                sb.error = Some(e.to_string());
            }
        }
    }
}
