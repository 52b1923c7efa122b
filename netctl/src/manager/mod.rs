//! The sandboxes under management: validation → resolution → saved state →
//! the kernel (stage then switch, see `apply`), and the DNS refresh that
//! keeps sets fresh.
//!
//! Each sandbox has its own async mutex, so changes to one sandbox are
//! serialised (a refresh never interleaves with a PUT) while different
//! sandboxes proceed in parallel.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use ipnet::IpNet;
use sbx_proto::policy::{self, Destination, SandboxSpec, ValidPolicy};
use sbx_proto::ErrorCode;
use tokio::sync::{Mutex, Notify};

use crate::apply::Tools;
use crate::config::Config;
use crate::conntrack::Conntrack;
use crate::dns::{NameState, Resolver, Timing};
use crate::forwarder::names::NameRules;
use crate::forwarder::upstream::Upstreams;
use crate::forwarder::{self, Forwarder};
use crate::ingress::{self, Inbound};
use crate::metrics::Metrics;
use crate::netns::HostNamespaces;
use crate::nft::Nft;
use crate::ruleset::answers::Intercept;
use crate::ruleset::{Applied, Desired, MarkBits, Prefixes};
use crate::setup::{Layout, SavedSetup, Setup};
use crate::store::Store;

mod lifecycle;
mod refresh;
mod restore;
mod views;

pub use restore::ReconcileReport;

use refresh::refresher;

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
    /// Answers the sandbox's DNS while its policy names a domain.
    forwarder: Option<Forwarder>,
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
    tools: Tools,
    mark_bits: MarkBits,
    /// Where sandbox rules must never go.
    host_netns: HostNamespaces,
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
        let mark_bits = config
            .fast_path
            .mark_bits()
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        let store = Store::open(&state_dir)?;
        let layout =
            Layout::from_config(&config.setup).map_err(|e| anyhow::anyhow!("config: {e}"))?;
        let sandbox_nft = match config.nft_session_idle_secs {
            0 => Nft::new(config.nft.clone()),
            idle => Nft::with_sessions(
                config.nft.clone(),
                Duration::from_secs(idle),
                config.nft_sessions_max,
            ),
        };
        Ok(Arc::new(Self {
            setup: Setup::new(
                layout,
                Nft::new(config.nft.clone()),
                sandbox_nft.clone(),
                config.ingress.port,
            ),
            timing: Timing::from_config(&config.dns),
            tools: Tools {
                nft: sandbox_nft,
                conntrack: Conntrack::new(config.fast_path.conntrack.clone()),
            },
            mark_bits,
            host_netns: HostNamespaces::read(),
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
                forwarder: None,
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
                    // Only DNS answers carry a wildcard's addresses.
                    Destination::Wildcard(_) => {}
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
        let intercept = self.intercepts(policy);
        let dns = if intercept {
            // Port 53 goes to the forwarder; the resolvers stay closed.
            Prefixes::default()
        } else if allow_has_name && self.config.dns.allow_sandbox_queries {
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
            mark_bits: self.mark_bits,
            intercept: intercept.then(|| Intercept {
                port: self.config.dns.forwarder_port,
                hold: Duration::from_millis(self.timing.max_ttl_ms + self.timing.grace_ms),
            }),
        }
    }

    /// Whether the sandbox's DNS goes through a forwarder (its policy names
    /// a domain or a wildcard).
    fn intercepts(&self, policy: Option<&ValidPolicy>) -> bool {
        self.config.dns.forward && policy.is_some_and(ValidPolicy::names_any_domain)
    }

    /// Makes sure a forwarder for `policy` serves the sandbox at `netns`
    /// before rules redirect its DNS there. Returns the one started here,
    /// if one was, so the caller installs it only once the rules are in.
    async fn forwarder_for(
        &self,
        id: &str,
        sb: &Sandbox,
        netns: &Path,
        same_netns: bool,
        policy: Option<&ValidPolicy>,
    ) -> Result<Option<Forwarder>, ApiError> {
        let Some(policy) = policy.filter(|_| self.intercepts(policy)) else {
            return Ok(None);
        };
        if sb.forwarder.is_some() && same_netns {
            return Ok(None);
        }
        let budget = self.config.lookup_timeout().min(FORWARD_BUDGET);
        Forwarder::start(
            id,
            netns,
            self.config.dns.forwarder_port,
            NameRules::from_policy(policy),
            Upstreams::new(forwarder::upstream_addrs(self.resolver.upstreams()), budget),
            self.timing,
            self.metrics.dns.clone(),
        )
        .await
        .map(Some)
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("sandbox {id}: DNS forwarder: {e}"),
            )
        })
    }
}

impl Manager {
    /// Refuses a target namespace that is the host's (see
    /// [`HostNamespaces`]), before anything is touched.
    fn check_not_host(&self, netns: &Path) -> Result<(), ApiError> {
        match self.host_netns.refusal(netns) {
            Some(why) => Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "network namespace {} {why}: sandbox rules are never put there",
                    netns.display()
                ),
            )),
            None => Ok(()),
        }
    }
}

/// The most a forwarded question may take before the sandbox gets
/// SERVFAIL: well inside a stub resolver's own timeout (glibc: 5 s).
const FORWARD_BUDGET: Duration = Duration::from_millis(1500);

/// Whether two paths name the same namespace (same device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    matches!((crate::netns::identity(a), crate::netns::identity(b)), (Some(a), Some(b)) if a == b)
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
