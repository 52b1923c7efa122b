//! The sandboxes of this host: a registry of records, each behind its own
//! lock (one operation at a time per sandbox, any number across them),
//! and the capacity they hold.

mod create;
mod lifecycle;
mod restore;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sbx_netctl_client::Netctl;
use tokio::sync::Mutex as AsyncMutex;

use crate::cgroup::Cgroups;
use crate::config::{Config, RuntimeKind};
use crate::metrics::Metrics;
use crate::model::{Capacity, HostView, Record, SandboxView};
use crate::runtime::microvm::MicrovmRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::{Launch, Runtime, RuntimeError, Started, Suspended};
use crate::store::Store;

/// An answer other than success, with the HTTP status it maps to.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(400, "BAD_REQUEST", m)
    }
    pub fn not_found(id: &str) -> Self {
        Self::new(404, "NOT_FOUND", format!("no sandbox {id:?}"))
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(409, "CONFLICT", m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(500, "INTERNAL", m)
    }
}

/// One sandbox: its record, locked for the whole of an operation.
pub(crate) struct Entry {
    record: AsyncMutex<Record>,
}

/// What a sandbox holds of the host while its guest runs.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpus: f64,
    memory_mb: u64,
}

#[derive(Default)]
struct Registry {
    entries: HashMap<String, Arc<Entry>>,
    usage: HashMap<String, Usage>,
}

impl Registry {
    fn used(&self) -> (f64, u64, usize) {
        self.usage.values().fold((0.0, 0, 0), |(c, m, n), u| {
            (c + u.cpus, m + u.memory_mb, n + 1)
        })
    }
}

pub struct Manager {
    pub(crate) config: Config,
    pub(crate) netctl: Netctl,
    pub(crate) cgroups: Cgroups,
    pub(crate) microvm: MicrovmRuntime,
    pub(crate) process: ProcessRuntime,
    pub(crate) store: Store,
    pub(crate) metrics: Metrics,
    capacity: Capacity,
    dns: Vec<Ipv4Addr>,
    registry: Mutex<Registry>,
}

impl Manager {
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let cgroups = Cgroups::open(&config.cgroup_dir)?;
        let store = Store::open(&config.state_dir)?;
        let capacity = resolve_capacity(&config);
        let dns = if config.guest_dns.is_empty() {
            host_resolvers()
        } else {
            config.guest_dns.clone()
        };
        Ok(Arc::new(Self {
            netctl: Netctl::new(&config.netctl_socket),
            microvm: MicrovmRuntime::new(config.microvm.clone()),
            process: ProcessRuntime::new(config.process.agent.clone(), cgroups.clone()),
            cgroups,
            store,
            metrics: Metrics::default(),
            capacity,
            dns,
            registry: Mutex::new(Registry::default()),
            config,
        }))
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the map cannot leave it half-changed (each
        // change is one insert or remove), so poisoning is ignored.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn entry(&self, id: &str) -> Result<Arc<Entry>, ApiError> {
        self.registry()
            .entries
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(id))
    }

    /// Takes `usage` for `id` if the host has room for it.
    fn reserve(&self, id: &str, usage: Usage) -> Result<(), ApiError> {
        let mut reg = self.registry();
        let (cpus, mem, n) = reg.used();
        let cap = self.capacity;
        if cap.max_sandboxes > 0 && n >= cap.max_sandboxes {
            return Err(no_capacity(format!(
                "{n} of {} sandboxes running",
                cap.max_sandboxes
            )));
        }
        // A tiny tolerance: fractional cpus summed in floating point.
        if cpus + usage.cpus > cap.cpus + 1e-9 {
            return Err(no_capacity(format!(
                "{} cpus asked, {:.2} of {} free",
                usage.cpus,
                (cap.cpus - cpus).max(0.0),
                cap.cpus
            )));
        }
        if mem + usage.memory_mb > cap.memory_mb {
            return Err(no_capacity(format!(
                "{} MB asked, {} of {} MB free",
                usage.memory_mb,
                cap.memory_mb.saturating_sub(mem),
                cap.memory_mb
            )));
        }
        reg.usage.insert(id.to_owned(), usage);
        Ok(())
    }

    fn release(&self, id: &str) {
        self.registry().usage.remove(id);
    }

    fn forget(&self, id: &str) {
        let mut reg = self.registry();
        reg.entries.remove(id);
        reg.usage.remove(id);
    }

    pub async fn list(&self) -> Vec<SandboxView> {
        let entries: Vec<Arc<Entry>> = self.registry().entries.values().cloned().collect();
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push(SandboxView::from(&*e.record.lock().await));
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub async fn show(&self, id: &str) -> Result<SandboxView, ApiError> {
        let e = self.entry(id)?;
        let r = e.record.lock().await;
        Ok(SandboxView::from(&*r))
    }

    /// The agent key, for a control plane that lost the create's answer.
    pub async fn key(&self, id: &str) -> Result<String, ApiError> {
        let e = self.entry(id)?;
        let _r = e.record.lock().await;
        self.key_hex(id)
    }

    pub fn host_view(&self) -> HostView {
        let reg = self.registry();
        let (used_cpus, used_memory_mb, running) = reg.used();
        HostView {
            capacity: self.capacity,
            used_cpus,
            used_memory_mb,
            running,
            sandboxes: reg.entries.len(),
            accel: self.microvm.accel_known().map(|a| a.as_str()),
            default_runtime: self.config.default_runtime,
        }
    }

    pub fn sandbox_dirs(&self) -> Vec<PathBuf> {
        self.registry()
            .entries
            .keys()
            .map(|id| self.store.dir(id))
            .collect()
    }

    /// Runs `f` with the runtime of `kind`: one trait, two implementations,
    /// dispatched here so the trait keeps plain `async fn`s.
    async fn start(&self, kind: RuntimeKind, l: &Launch<'_>) -> Result<Started, RuntimeError> {
        match kind {
            RuntimeKind::Microvm => self.microvm.start(l).await,
            RuntimeKind::Process => self.process.start(l).await,
        }
    }

    async fn suspend_guest(
        &self,
        kind: RuntimeKind,
        l: &Launch<'_>,
        vmm: crate::procs::ProcId,
    ) -> Result<Suspended, RuntimeError> {
        match kind {
            RuntimeKind::Microvm => self.microvm.suspend(l, vmm).await,
            RuntimeKind::Process => self.process.suspend(l, vmm).await,
        }
    }

    async fn resume_guest(
        &self,
        kind: RuntimeKind,
        l: &Launch<'_>,
        vmm: Option<crate::procs::ProcId>,
    ) -> Result<Started, RuntimeError> {
        match kind {
            RuntimeKind::Microvm => self.microvm.resume(l, vmm).await,
            RuntimeKind::Process => self.process.resume(l, vmm).await,
        }
    }

    async fn abort_suspend(&self, kind: RuntimeKind, l: &Launch<'_>) {
        match kind {
            RuntimeKind::Microvm => self.microvm.abort_suspend(l).await,
            RuntimeKind::Process => self.process.abort_suspend(l).await,
        }
    }

    fn console(&self, kind: RuntimeKind, id: &str) -> PathBuf {
        let dir = self.store.dir(id);
        match kind {
            RuntimeKind::Microvm => self.microvm.console(&dir),
            RuntimeKind::Process => self.process.console(&dir),
        }
    }
}

fn no_capacity(why: String) -> ApiError {
    ApiError::new(
        503,
        "NO_CAPACITY",
        format!("no capacity on this host: {why}"),
    )
}

fn resolve_capacity(config: &Config) -> Capacity {
    let c = &config.capacity;
    let online = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Capacity {
        // Idle sandboxes far outnumber busy ones: vCPUs are shared 4:1 by
        // default. Memory is not overcommitted.
        cpus: if c.cpus > 0.0 { c.cpus } else { online * 4.0 },
        memory_mb: if c.memory_mb > 0 {
            c.memory_mb
        } else {
            mem_total_mb().saturating_sub(1024)
        },
        max_sandboxes: c.max_sandboxes,
    }
}

fn mem_total_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// The host's resolvers a guest can reach (not loopback ones).
fn host_resolvers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

fn parse_resolv_conf(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .take(3)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_skip_loopback_and_v6() {
        let t = "# x\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\nnameserver 198.51.100.1\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec![Ipv4Addr::new(192, 0, 2, 53), Ipv4Addr::new(198, 51, 100, 1)]
        );
    }
}
