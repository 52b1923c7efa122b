//! SIGTERM and SIGINT as a future.

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGTERM and SIGINT, watched from the moment this exists. Create it
/// before `notify::ready()`: a stop requested right after start must not
/// kill the daemon with the default SIGTERM action.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    pub fn watch() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("watch SIGINT")?,
        })
    }

    /// Resolves at the first SIGTERM or SIGINT.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
