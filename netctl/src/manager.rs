//! The sandboxes under management: validation → resolution → saved state →
//! the kernel (stage then switch, see `apply`), and the DNS refresh that
//! keeps sets fresh.
//!
//! Each sandbox has its own async mutex, so changes to one sandbox are
//! serialised (a refresh never interleaves with a PUT) while different
//! sandboxes proceed in parallel.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use sbx_proto::policy::{self, Destination, SandboxPatch, SandboxSpec, ValidPolicy};
use sbx_proto::ErrorCode;
use tokio::sync::{Mutex, Notify, Semaphore};
use tracing::{debug, info, warn};

use crate::apply;
use crate::config::Config;
use crate::dns::{self, NameState, Resolver, Timing};
use crate::ingress::{self, Inbound};
use crate::metrics::{Metrics, SandboxSample};
use crate::nft::Nft;
use crate::ruleset::{self, Applied, Desired, Prefixes};
use crate::setup::{Layout, Phase, Plan, SavedSetup, Setup};
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
    /// The namespace and links netctl made, for sandboxes PUT with `setup`.
    setup: Option<SavedSetup>,
    /// What is in the kernel (None: nothing known to be applied).
    applied: Option<Applied>,
    /// What the inbound rules last applied let in.
    inbound: Inbound,
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
    /// `[ingress] allow_from`, validated.
    ingress_from: Vec<IpNet>,
    sandbox_resolvers: Vec<IpNet>,
    timing: Timing,
    nft: Nft,
    resolver: Resolver,
    store: Store,
    setup: Setup,
    sandboxes: StdMutex<HashMap<String, Arc<Entry>>>,
    /// The namespace path each sandbox's rules live in, to refuse a second
    /// sandbox in the same namespace (both would own one table).
    targets: StdMutex<HashMap<String, PathBuf>>,
    pub metrics: Metrics,
}

impl Manager {
    pub fn new(config: Config, state_dir: PathBuf) -> anyhow::Result<Arc<Self>> {
        let always = config
            .always_deny_nets()
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        let ingress_from = config
            .ingress
            .validated()
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
        let layout =
            Layout::from_config(&config.setup).map_err(|e| anyhow::anyhow!("config: {e}"))?;
        Ok(Arc::new(Self {
            setup: Setup::new(layout, Nft::new(config.nft.clone())),
            timing: Timing::from_config(&config.dns),
            nft: Nft::new(config.nft.clone()),
            always,
            ingress_from,
            sandbox_resolvers,
            resolver,
            store,
            config,
            sandboxes: StdMutex::new(HashMap::new()),
            targets: StdMutex::new(HashMap::new()),
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
                setup: None,
                applied: None,
                inbound: Inbound::default(),
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
            self.set_target(id, None);
        }
        entry.wake.notify_one();
    }

    /// Records `netns` as `id`'s, unless another sandbox's rules live in
    /// that namespace (compared by inode, so a name and a /proc path of
    /// one namespace match, and a namespace that is gone matches nothing).
    /// Returns what `id` had before, for [`Self::set_target`] on failure.
    fn claim(&self, id: &str, netns: &Path) -> Result<Option<PathBuf>, ApiError> {
        let mut map = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((other, _)) = map
            .iter()
            .find(|(other, path)| other.as_str() != id && same_file(path, netns))
        {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "network namespace {} already holds the rules of sandbox {other}",
                    netns.display()
                ),
            ));
        }
        Ok(map.insert(id.to_owned(), netns.to_path_buf()))
    }

    /// Records `id`'s namespace without checks (`None`: forgets it); also
    /// puts back what `id` had before a failed claim.
    fn set_target(&self, id: &str, previous: Option<PathBuf>) {
        let mut map = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        match previous {
            Some(path) => map.insert(id.to_owned(), path),
            None => map.remove(id),
        };
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
        let result = if spec.setup.is_some() || sb.setup.is_some() {
            // On failure of a new one, `sb.setup` stays only if the
            // rollback was incomplete: the entry then stays too, so a GET
            // shows the error and a DELETE or PUT finishes the job.
            self.put_setup(&entry, &mut sb, spec, policy, fresh).await
        } else {
            match netns_path(&spec) {
                Ok(netns) => self.set(&entry, &mut sb, spec, policy, netns, None).await,
                Err(e) => Err(e),
            }
        };
        if result.is_err() && fresh && sb.setup.is_none() {
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
            let netns = target(&sb.spec, sb.setup.as_ref())?;
            let setup = sb.setup.clone();
            self.set(&entry, &mut sb, spec, policy, netns, setup)
                .await?;
        }
        Ok(self.view(&entry.id, &sb, false).await)
    }

    fn validate(&self, id: &str, spec: &SandboxSpec) -> Result<Option<ValidPolicy>, ApiError> {
        let checked = policy::validate_id(id)
            .and_then(|()| spec.check_target())
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
        netns: PathBuf,
        setup: Option<SavedSetup>,
    ) -> Result<(), ApiError> {
        // `exists()` would call a namespace we may not open "not found".
        match std::fs::metadata(&netns) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("network namespace {} not found", netns.display()),
                ));
            }
            Err(e) => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("network namespace {}: {e}", netns.display()),
                ));
            }
        }
        let previous_target = self.claim(&entry.id, &netns)?;
        let result = self
            .set_claimed(entry, sb, spec, policy, netns, setup)
            .await;
        if result.is_err() {
            self.set_target(&entry.id, previous_target);
        }
        result
    }

    async fn set_claimed(
        &self,
        entry: &Entry,
        sb: &mut Sandbox,
        spec: SandboxSpec,
        policy: Option<ValidPolicy>,
        netns: PathBuf,
        setup: Option<SavedSetup>,
    ) -> Result<(), ApiError> {
        let wanted: Vec<String> = policy
            .as_ref()
            .map(ValidPolicy::domains)
            .unwrap_or_default();
        let mut names: BTreeMap<String, NameState> = wanted
            .iter()
            .map(|n| (n.clone(), sb.names.get(n).cloned().unwrap_or_default()))
            .collect();
        let first_seen: Vec<String> = names
            .iter()
            .filter(|(_, s)| s.resolved_at_ms.is_none() && s.addrs.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        self.resolve_new(&mut names).await;
        // SPEC 4: a domain that does not resolve when the policy is set is
        // refused, naming it, before anything is saved or applied, so the
        // previous policy stays in force. Names the policy already had keep
        // their history and are left to the refresher.
        if let Some((name, why)) = first_seen.iter().find_map(|n| {
            let state = names.get(n)?;
            match (&state.error, state.addrs.is_empty()) {
                (Some(why), true) => Some((n, why)),
                _ => None,
            }
        }) {
            self.metrics
                .rejected_requests
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                ErrorCode::InvalidPolicy,
                format!("domain {name:?} does not resolve: {why}"),
            ));
        }
        let inbound = self.inbound(&entry.id, setup.as_ref(), &netns).await;

        let desired = self.desired(&spec, setup.as_ref(), policy.as_ref(), &names, &inbound);
        let previous = Saved {
            id: entry.id.clone(),
            spec: sb.spec.clone(),
            names: sb.names.clone(),
            setup: sb.setup.clone(),
        };
        let next = Saved {
            id: entry.id.clone(),
            spec: spec.clone(),
            names: names.clone(),
            setup: setup.clone(),
        };
        let saving = Instant::now();
        self.store
            .save(&next)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let save_us = saving.elapsed().as_micros() as u64;
        let started = Instant::now();
        let same_netns = target(&sb.spec, sb.setup.as_ref()).ok().as_ref() == Some(&netns);
        let known = sb.applied.clone().filter(|_| same_netns);
        // Until this change completes the kernel may hold part of it; if
        // the request is dropped half-way this stays, and the next change
        // reads the kernel first.
        if let Some(applied) = sb.applied.as_mut() {
            applied.distrust();
        }
        let applied = apply::apply(&self.nft, &netns, known.as_ref(), &desired).await;
        self.metrics
            .record_apply(applied.is_ok(), started.elapsed());
        let applied = match applied {
            Ok(applied) => applied,
            Err(e) => {
                warn!(sandbox = %entry.id, error = %e, "apply failed; previous rules stay in force");
                let restored = if sb.generation == 0 && sb.applied.is_none() && sb.setup.is_none() {
                    self.store.remove(&entry.id)
                } else {
                    self.store.save(&previous)
                };
                if let Err(e) = restored {
                    warn!(sandbox = %entry.id, error = %e, "could not restore saved state");
                }
                return Err(ApiError::new(ErrorCode::Internal, e.to_string()));
            }
        };
        info!(sandbox = %entry.id, netns = %netns.display(), save_us, nft_us = started.elapsed().as_micros() as u64, "applied");
        let old_netns = target(&sb.spec, sb.setup.as_ref()).ok();
        if sb.applied.is_some() && old_netns.as_ref() != Some(&netns) {
            // A namespace reached by another path (a name and a /proc path)
            // holds the table just applied.
            if let Some(old) = old_netns.filter(|old| !same_file(old, &netns)) {
                // The sandbox moved: our table in the old namespace is stale.
                if let Err(e) = self.nft.apply(&old, &ruleset::remove()).await {
                    debug!(sandbox = %entry.id, error = %e, "old namespace not cleaned");
                }
            }
        }
        sb.spec = spec;
        sb.policy = policy;
        sb.names = names;
        sb.setup = setup;
        sb.applied = Some(applied);
        sb.inbound = inbound;
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

    /// Who may open connections into the sandbox (see [`ingress::resolve`]).
    async fn inbound(&self, id: &str, setup: Option<&SavedSetup>, netns: &Path) -> Inbound {
        ingress::resolve(
            id,
            self.config.ingress.port,
            &self.ingress_from,
            setup.map(|s| &s.plan),
            netns,
        )
        .await
    }

    /// The pure inputs of the ruleset for a spec, what its names resolve
    /// to and who may connect in.
    fn desired(
        &self,
        spec: &SandboxSpec,
        setup: Option<&SavedSetup>,
        policy: Option<&ValidPolicy>,
        names: &BTreeMap<String, NameState>,
        inbound: &Inbound,
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
            // With setup, the forwarded traffic to judge is the tap's.
            iface: match setup {
                Some(s) => s.plan.tap.clone(),
                None => spec.iface.clone(),
            },
            allow_internet_access,
            refusal: self.config.refusal,
            always: Prefixes::merge(&self.always),
            dns,
            allow: Prefixes::merge(&allow),
            deny: Prefixes::merge(&deny),
            ingress_port: inbound.port,
            ingress: Prefixes::merge(&inbound.allow_from),
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
    /// namespace itself is not ours, unless netctl made it (setup), and
    /// then it goes with everything in it.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        policy::validate_id(id).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let mut sb = entry.state.lock().await;
        if sb.removed {
            return Err(not_found(id));
        }
        if let Some(setup) = sb.setup.clone() {
            self.delete_setup(id, &mut sb, setup).await?;
            sb.removed = true;
            self.forget(id, &entry);
            info!(sandbox = %id, "removed with its network");
            return Ok(());
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

    /// Marks the setup as being deleted (so a crash half-way is finished on
    /// start, not undone), removes it, then forgets the sandbox. Our rules
    /// inside are not removed first: they die with the namespace.
    async fn delete_setup(
        &self,
        id: &str,
        sb: &mut Sandbox,
        setup: SavedSetup,
    ) -> Result<(), ApiError> {
        let internal = |e: String| ApiError::new(ErrorCode::Internal, e);
        let deleting = SavedSetup {
            phase: Phase::Deleting,
            ..setup
        };
        self.store
            .save_quick(&Saved {
                id: id.to_owned(),
                spec: sb.spec.clone(),
                names: sb.names.clone(),
                setup: Some(deleting.clone()),
            })
            .map_err(|e| internal(e.to_string()))?;
        sb.setup = Some(deleting.clone());
        let started = Instant::now();
        let (torn, ()) = tokio::join!(
            self.setup.teardown(&deleting.plan),
            self.setup.drop_table_if_last(id)
        );
        torn.map_err(|e| internal(format!("sandbox {id}: network teardown failed: {e}")))?;
        let teardown_us = started.elapsed().as_micros() as u64;
        self.store.remove(id).map_err(|e| internal(e.to_string()))?;
        let unlink_us = started.elapsed().as_micros() as u64 - teardown_us;
        self.setup.release(id, deleting.plan.slot).await;
        debug!(sandbox = %id, teardown_us, unlink_us, total_us = started.elapsed().as_micros() as u64, "network removed");
        Ok(())
    }

    /// PUT of a sandbox whose network netctl makes: a free slot is taken
    /// and saved (`creating`) before anything is made; a failure on a new
    /// sandbox removes whatever was made and the saved state with it.
    async fn put_setup(
        &self,
        entry: &Entry,
        sb: &mut Sandbox,
        spec: SandboxSpec,
        policy: Option<ValidPolicy>,
        fresh: bool,
    ) -> Result<(), ApiError> {
        let id = entry.id.as_str();
        let bad = |m: String| ApiError::new(ErrorCode::BadRequest, m);
        let Some(wanted) = spec.setup.clone() else {
            return Err(bad(format!(
                "sandbox {id:?} was made with \"setup\": PUT it with \"setup\" again, or DELETE it first"
            )));
        };
        if !fresh && sb.setup.is_none() {
            return Err(bad(format!(
                "sandbox {id:?} uses a namespace given as \"netns\": DELETE it before asking for \"setup\""
            )));
        }
        let layout = self.setup.layout();
        if let Some(iface) = &spec.iface {
            if !wanted.tap || *iface != layout.tap_name {
                return Err(bad(format!(
                    "iface {iface:?}: with \"setup\" the judged interface is the tap ({:?}, with \"tap\": true); leave iface out",
                    layout.tap_name
                )));
            }
        }
        let (plan, stale_tap) = match &sb.setup {
            Some(existing) => {
                let mut plan = existing.plan.clone();
                let old_tap = plan.tap.clone();
                plan.tap = wanted
                    .tap
                    .then(|| old_tap.clone().unwrap_or_else(|| layout.tap_name.clone()));
                (plan, old_tap)
            }
            None => {
                let slot = self.setup.reserve(id).await.map_err(|e| {
                    ApiError::new(ErrorCode::Unavailable, format!("sandbox {id}: {e}"))
                })?;
                let plan = layout.plan(id, slot, wanted.tap);
                let creating = SavedSetup {
                    plan: plan.clone(),
                    phase: Phase::Creating,
                };
                let marked = self.store.save_quick(&Saved {
                    id: id.to_owned(),
                    spec: spec.clone(),
                    names: BTreeMap::new(),
                    setup: Some(creating.clone()),
                });
                if let Err(e) = marked {
                    self.setup.release(id, slot).await;
                    return Err(ApiError::new(ErrorCode::Internal, e.to_string()));
                }
                sb.setup = Some(creating);
                (plan, None)
            }
        };

        let started = Instant::now();
        let built = match self.setup.ensure_host().await {
            Ok(()) => self.setup.create(&plan, stale_tap).await,
            Err(e) => Err(e),
        };
        if let Err(e) = built {
            warn!(sandbox = %id, error = %e, "network setup failed");
            if fresh && self.roll_back(id, &plan).await {
                sb.setup = None;
            } else {
                sb.error = Some(e.to_string());
            }
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("sandbox {id}: network setup failed: {e}"),
            ));
        }
        debug!(sandbox = %id, setup_us = started.elapsed().as_micros() as u64, "network in place");
        let netns = plan.netns_path.clone();
        let ready = SavedSetup {
            plan: plan.clone(),
            phase: Phase::Ready,
        };
        let result = self.set(entry, sb, spec, policy, netns, Some(ready)).await;
        if let Err(e) = &result {
            if fresh && self.roll_back(id, &plan).await {
                sb.setup = None;
            } else {
                sb.error = Some(e.message.clone());
            }
        }
        result
    }

    /// Undoes a setup that did not complete; false if it could not. Then
    /// the saved state and the slot stay, so the next PUT or DELETE of the
    /// id, or the next start, tries again.
    async fn roll_back(&self, id: &str, plan: &Plan) -> bool {
        if let Err(e) = self.setup.teardown(plan).await {
            warn!(sandbox = %id, error = %e, "rollback incomplete; retried on the next request or start");
            return false;
        }
        if let Err(e) = self.store.remove(id) {
            warn!(sandbox = %id, error = %e, "saved state not removed");
        }
        self.setup.release(id, plan.slot).await;
        info!(sandbox = %id, "network setup rolled back");
        true
    }

    async fn view(&self, id: &str, sb: &Sandbox, with_counters: bool) -> SandboxView {
        let counters = if with_counters {
            match target(&sb.spec, sb.setup.as_ref()) {
                Ok(path) => self.nft.counters(&path).await.ok().flatten(),
                Err(_) => None,
            }
        } else {
            None
        };
        SandboxView {
            id: id.to_owned(),
            netns: match (&sb.setup, &sb.spec.netns) {
                (Some(s), _) => s.plan.netns_path.display().to_string(),
                (None, Some(netns)) => netns.clone(),
                (None, None) => String::new(),
            },
            setup: sb.setup.as_ref().map(|s| s.plan.clone()),
            // The interface whose forwarded traffic the rules judge: the
            // tap netctl made, or the one the caller named.
            iface: match &sb.setup {
                Some(s) => s.plan.tap.clone(),
                None => sb.spec.iface.clone(),
            },
            network: sb.spec.network.clone(),
            ingress: sb.applied.is_some().then(|| sb.inbound.clone()),
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
            let counters = match target(&sb.spec, sb.setup.as_ref()) {
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
                inbound_refused: counters.map(|c| c.inbound_refused),
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
        let mut report = ReconcileReport {
            skipped: problems.len(),
            ..ReconcileReport::default()
        };
        // Every saved slot is taken before anything runs, so no restore and
        // no new PUT can be handed a slot that is still in use.
        let mut restorable = Vec::with_capacity(saved.len());
        for s in saved {
            if let Some(setup) = &s.setup {
                if !self.setup.layout().owns(&s.id, &setup.plan) {
                    warn!(sandbox = %s.id, netns = %setup.plan.netns, host_iface = %setup.plan.host_iface,
                        "saved setup does not match the [setup] config (changed since?); left alone");
                    report.skipped += 1;
                    continue;
                }
                if let Err(e) = self.setup.claim(&s.id, setup.plan.slot).await {
                    warn!(sandbox = %s.id, error = %e, "saved setup left alone");
                    report.skipped += 1;
                    continue;
                }
            }
            restorable.push(s);
        }
        let limit = Arc::new(Semaphore::new(self.config.reconcile_concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for s in restorable {
            let me = self.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                me.restore(s).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Restored::Applied) => report.applied += 1,
                Ok(Restored::RolledBack) => report.rolled_back += 1,
                _ => report.failed += 1,
            }
        }
        self.setup.remove_stale_host_table().await;
        report.took = started.elapsed();
        info!(
            applied = report.applied,
            failed = report.failed,
            skipped = report.skipped,
            rolled_back = report.rolled_back,
            took_ms = report.took.as_millis() as u64,
            "reconciled saved sandboxes"
        );
        Ok(report)
    }

    /// Re-applies one saved sandbox. A setup that a crash interrupted
    /// while it was being made or removed is rolled back (its request never
    /// got an answer); a complete one is checked and repaired first.
    async fn restore(self: &Arc<Self>, saved: Saved) -> Restored {
        let policy = match saved.spec.validate() {
            Ok(p) => p,
            Err(_) => return Restored::Failed,
        };
        if let Some(setup) = &saved.setup {
            if setup.phase != Phase::Ready {
                info!(sandbox = %saved.id, phase = ?setup.phase, "interrupted setup found; rolling it back");
                if let Err(e) = self.setup.teardown(&setup.plan).await {
                    warn!(sandbox = %saved.id, error = %e, "interrupted setup not rolled back");
                    return Restored::Failed;
                }
                if let Err(e) = self.store.remove(&saved.id) {
                    warn!(sandbox = %saved.id, error = %e, "saved state not removed");
                }
                self.setup.release(&saved.id, setup.plan.slot).await;
                return Restored::RolledBack;
            }
        }
        let (entry, _) = self.entry_or_insert(&saved.id, &saved.spec);
        if let Ok(path) = target(&saved.spec, saved.setup.as_ref()) {
            self.set_target(&saved.id, Some(path));
        }
        let mut sb = entry.state.lock().await;
        sb.spec = saved.spec.clone();
        sb.policy = policy.clone();
        sb.names = saved.names;
        sb.setup = saved.setup.clone();
        sb.generation += 1;
        let built = match &saved.setup {
            Some(setup) => match self.setup.ensure_host().await {
                Ok(()) => self
                    .setup
                    .create(&setup.plan, None)
                    .await
                    .map_err(|e| format!("network setup: {e}")),
                Err(e) => Err(format!("network setup: {e}")),
            },
            None => Ok(()),
        };
        let result = match built
            .and_then(|()| target(&saved.spec, saved.setup.as_ref()).map_err(|e| e.message))
        {
            Ok(path) => {
                let inbound = self.inbound(&saved.id, sb.setup.as_ref(), &path).await;
                let desired = self.desired(
                    &saved.spec,
                    sb.setup.as_ref(),
                    policy.as_ref(),
                    &sb.names,
                    &inbound,
                );
                sb.inbound = inbound;
                let started = Instant::now();
                let r = apply::apply(&self.nft, &path, None, &desired).await;
                self.metrics.record_apply(r.is_ok(), started.elapsed());
                r.map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        let ok = if result.is_ok() {
            Restored::Applied
        } else {
            Restored::Failed
        };
        match result {
            Ok(applied) => {
                sb.applied = Some(applied);
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

/// How restoring one saved sandbox ended.
enum Restored {
    Applied,
    Failed,
    RolledBack,
}

#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub applied: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Setups a crash interrupted while they were made or removed.
    pub rolled_back: usize,
    pub took: Duration,
}

/// Whether two paths name the same namespace (same device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("sandbox {id:?} not found"))
}

/// The namespace a sandbox named in its spec.
fn netns_path(spec: &SandboxSpec) -> Result<PathBuf, ApiError> {
    let netns = spec.netns.as_deref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::BadRequest,
            sbx_proto::policy::SpecError::Target.to_string(),
        )
    })?;
    policy::netns_path(netns)
        .map(PathBuf::from)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))
}

/// The namespace our rules go into: the one netctl made, or the one named.
fn target(spec: &SandboxSpec, setup: Option<&SavedSetup>) -> Result<PathBuf, ApiError> {
    match setup {
        Some(s) => Ok(s.plan.netns_path.clone()),
        None => netns_path(spec),
    }
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
        let desired = manager.desired(
            &sb.spec,
            sb.setup.as_ref(),
            sb.policy.as_ref(),
            &sb.names,
            &sb.inbound,
        );
        let Ok(path) = target(&sb.spec, sb.setup.as_ref()) else {
            continue;
        };
        let saved = Saved {
            id: entry.id.clone(),
            spec: sb.spec.clone(),
            names: sb.names.clone(),
            setup: sb.setup.clone(),
        };
        if let Err(e) = manager.store.save(&saved) {
            warn!(sandbox = %entry.id, error = %e, "could not save refreshed names");
        }
        let known = sb.applied.clone();
        if let Some(applied) = sb.applied.as_mut() {
            applied.distrust();
        }
        let applied = apply::apply(&manager.nft, &path, known.as_ref(), &desired).await;
        match applied {
            Ok(applied) => {
                manager.metrics.set_updates.fetch_add(1, Ordering::Relaxed);
                debug!(sandbox = %entry.id, "sets refreshed");
                sb.applied = Some(applied);
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
