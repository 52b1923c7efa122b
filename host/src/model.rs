//! The API's bodies and the record each sandbox keeps on disk. The record
//! is the single source of truth after a restart: everything needed to
//! adopt, finish or undo a sandbox is in it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use sbx_proto::policy::NetworkPolicy;
use serde::{Deserialize, Serialize};

use crate::config::RuntimeKind;
use crate::procs::ProcId;

/// The port every agent serves its API on (SPEC 2).
pub const AGENT_PORT: u16 = 9501;
/// The smallest guest that boots the image with room for the agent.
pub const MIN_MEMORY_MB: u64 = 64;
pub const MAX_CPUS: f64 = 64.0;

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub id: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub runtime: Option<RuntimeKind>,
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    #[serde(default = "default_memory")]
    pub memory_mb: u64,
    #[serde(default)]
    pub disk_mb: Option<u64>,
    #[serde(default)]
    pub network: Option<NetworkPolicy>,
    /// Started through the agent once it is healthy, so its output is
    /// captured and visible like any other process.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
}

fn default_cpus() -> f64 {
    1.0
}
fn default_memory() -> u64 {
    512
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being made; saved before the first step, so a crash is rolled back.
    Starting,
    Running,
    /// Being suspended: a crash leaves it to be finished or rolled back.
    Suspending,
    Suspended,
    Resuming,
    /// Its guest is gone (it exited, or died while sbx-host was down); its
    /// network is deleted, the record stays until DELETE.
    Stopped,
    /// Being deleted: a crash half-way is finished at start.
    Deleting,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Suspending => "suspending",
            Self::Suspended => "suspended",
            Self::Resuming => "resuming",
            Self::Stopped => "stopped",
            Self::Deleting => "deleting",
            Self::Failed => "failed",
        }
    }
}

/// What netctl made, as far as the guest needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub netns: String,
    pub netns_path: PathBuf,
    /// The sandbox's address: the agent answers at `<addr>:9501`.
    pub ipv4: Ipv4Net,
    pub tap: Option<String>,
    /// The guest's own address and gateway behind the tap.
    pub guest_ipv4: Option<Ipv4Net>,
    pub guest_gateway4: Option<Ipv4Addr>,
}

/// The record of one sandbox, `<state_dir>/sandboxes/<id>/record.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub id: String,
    pub state: State,
    pub runtime: RuntimeKind,
    pub image: String,
    pub cpus: f64,
    pub memory_mb: u64,
    pub disk_mb: Option<u64>,
    pub policy: Option<NetworkPolicy>,
    pub entrypoint: Option<Vec<String>>,
    pub network: Option<Network>,
    /// The running VMM (or agent process), by pid and start time.
    pub vmm: Option<ProcId>,
    /// `kvm` or `tcg` for a microVM.
    pub accel: Option<String>,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub suspended_at: Option<u64>,
    pub snapshot_bytes: Option<u64>,
    /// Why it failed or stopped, one line.
    pub error: Option<String>,
}

impl Record {
    pub fn agent(&self) -> Option<SocketAddr> {
        self.network
            .as_ref()
            .map(|n| SocketAddr::new(n.ipv4.addr().into(), AGENT_PORT))
    }

    /// Whether it holds capacity (anything but a stopped, failed or
    /// suspended one: a suspended guest has no RAM and no vCPU).
    pub fn holds_capacity(&self) -> bool {
        matches!(
            self.state,
            State::Starting | State::Running | State::Resuming | State::Suspending
        )
    }
}

/// A sandbox as the API shows it. Never the key.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxView {
    pub id: String,
    pub state: State,
    pub runtime: RuntimeKind,
    pub image: String,
    pub cpus: f64,
    pub memory_mb: u64,
    pub disk_mb: Option<u64>,
    pub agent: Option<SocketAddr>,
    pub network: Option<NetworkPolicy>,
    pub netns: Option<String>,
    pub vmm_pid: Option<u32>,
    pub accel: Option<String>,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub suspended_at: Option<u64>,
    pub snapshot_bytes: Option<u64>,
    pub error: Option<String>,
}

impl From<&Record> for SandboxView {
    fn from(r: &Record) -> Self {
        Self {
            id: r.id.clone(),
            state: r.state,
            runtime: r.runtime,
            image: r.image.clone(),
            cpus: r.cpus,
            memory_mb: r.memory_mb,
            disk_mb: r.disk_mb,
            agent: r.agent(),
            network: r.policy.clone(),
            netns: r.network.as_ref().map(|n| n.netns.clone()),
            vmm_pid: r.vmm.map(|p| p.pid),
            accel: r.accel.clone(),
            created_at: r.created_at,
            started_at: r.started_at,
            suspended_at: r.suspended_at,
            snapshot_bytes: r.snapshot_bytes,
            error: r.error.clone(),
        }
    }
}

/// The answer to a create: the view, plus the key the proxy signs the
/// agent's forwarded auth with. Only this answer carries it (and
/// `GET .../forwarded-auth-key`, for a control plane that lost it).
#[derive(Debug, Serialize)]
pub struct Created {
    #[serde(flatten)]
    pub view: SandboxView,
    pub forwarded_auth_key: String,
}

#[derive(Debug, Serialize)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxView>,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The host's capacity, resolved from the config and the machine.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Capacity {
    pub cpus: f64,
    pub memory_mb: u64,
    pub max_sandboxes: usize,
}

/// `GET /v1/host`.
#[derive(Debug, Serialize)]
pub struct HostView {
    pub capacity: Capacity,
    pub used_cpus: f64,
    pub used_memory_mb: u64,
    pub running: usize,
    pub sandboxes: usize,
    pub accel: Option<&'static str>,
    pub default_runtime: RuntimeKind,
}
