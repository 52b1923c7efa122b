//! What runs a sandbox's guest. Two implementations of one trait: a QEMU
//! microVM on netctl's tap, and the agent as a plain process in the
//! sandbox's namespace (for machines that can run no VM). A Firecracker or
//! cloud-hypervisor runtime would be a third.
//!
//! The manager owns everything around a guest (network, key, cgroup,
//! record, health); a runtime only starts, suspends and resumes the
//! processes in the sandbox's cgroup. Ending them is the cgroup's job
//! (`cgroup.kill`), the same for every runtime.

pub mod microvm;
pub mod process;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::image::Image;
use crate::model::Network;
use crate::procs::ProcId;

/// Files in a sandbox's directory (mode 0700, root).
pub const KEY_FILE: &str = "forwarded-auth.key";
pub const CONSOLE_LOG: &str = "console.log";
pub const VMM_LOG: &str = "vmm.log";
pub const SNAPSHOT: &str = "snapshot";

/// Everything a runtime needs to start or resume one sandbox.
pub struct Launch<'a> {
    pub id: &'a str,
    pub dir: &'a Path,
    pub cgroup: &'a Path,
    pub network: &'a Network,
    pub cpus: f64,
    pub memory_mb: u64,
    pub disk_mb: Option<u64>,
    pub image: &'a Image,
    /// The key in hex (the guest gets it through its config channel).
    pub key_hex: &'a str,
    pub dns: &'a [Ipv4Addr],
}

impl Launch<'_> {
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A started (or resumed) guest.
#[derive(Debug, Clone)]
pub struct Started {
    pub vmm: ProcId,
    /// `kvm` or `tcg` for a VM.
    pub accel: Option<String>,
}

/// A suspended guest: what is left of it.
#[derive(Debug, Clone)]
pub struct Suspended {
    /// The process runtime keeps its (frozen) processes.
    pub vmm: Option<ProcId>,
    pub snapshot_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Vmm(String),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
}

pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

pub trait Runtime: Send + Sync {
    /// Starts the guest; returns once its VMM (or agent) runs. Health is
    /// the caller's to wait for.
    fn start(&self, l: &Launch<'_>) -> impl Future<Output = Result<Started, RuntimeError>> + Send;

    /// Stops the guest from running and from holding memory, keeping its
    /// processes and files for `resume`.
    fn suspend(
        &self,
        l: &Launch<'_>,
        vmm: ProcId,
    ) -> impl Future<Output = Result<Suspended, RuntimeError>> + Send;

    /// Undoes `suspend`; `vmm` is what `suspend` left.
    fn resume(
        &self,
        l: &Launch<'_>,
        vmm: Option<ProcId>,
    ) -> impl Future<Output = Result<Started, RuntimeError>> + Send;

    /// Undoes a `suspend` that failed half-way, leaving the guest running.
    fn abort_suspend(&self, l: &Launch<'_>) -> impl Future<Output = ()> + Send;

    /// The log a failure's last lines come from.
    fn console(&self, dir: &Path) -> PathBuf;
}
