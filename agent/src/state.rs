//! State shared by the request handlers.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::process::cgroup::Cgroups;
use crate::process::ProcessTable;
use crate::pty::PtyTable;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub started: Instant,
    /// One permit per open tunnel; also how shutdown waits for them.
    pub tunnels: Arc<Semaphore>,
    /// Flips to true when the agent starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Processes started through the API.
    pub processes: Arc<ProcessTable>,
    /// PTY sessions.
    pub ptys: Arc<PtyTable>,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        cgroups: Option<Cgroups>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            tunnels: Arc::new(Semaphore::new(config.max_tunnels)),
            processes: Arc::new(ProcessTable::new(config.limits.clone(), cgroups)),
            ptys: Arc::new(PtyTable::new(
                config.limits.max_pty_sessions,
                config.limits.pty_pending_bytes,
            )),
            config,
            started: Instant::now(),
            shutdown,
        }
    }

    /// Number of tunnels open now.
    pub fn open_tunnels(&self) -> usize {
        self.config.max_tunnels - self.tunnels.available_permits()
    }
}
