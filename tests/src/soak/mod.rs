//! The soak: the agent and netctl driven at the same time for a while
//! (tunnels, processes, files, PTYs; policy churn and DNS changes), their
//! memory and file descriptors sampled, every operation checked.
//! `scripts/soak.sh [minutes]` runs it; `SBX_SOAK_SECS` sets the length.

pub mod agent_ops;
pub mod http;
pub mod netctl_ops;
pub mod samples;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// Length of a run when `SBX_SOAK_SECS` is not set (what CI runs).
pub const DEFAULT_SECS: u64 = 120;
/// One operation may take this long before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// Failures printed in full; the rest are counted.
const SHOWN_FAILURES: usize = 20;

/// How long to run, to warm up, and how often to sample.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub duration: Duration,
    /// Growth is measured from the end of this (allocator arenas, caches
    /// and pools fill up first).
    pub warm_up: Duration,
    pub period: Duration,
}

impl Plan {
    pub fn from_env() -> Result<Self> {
        let secs = match std::env::var("SBX_SOAK_SECS") {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .with_context(|| format!("SBX_SOAK_SECS={s:?} is not a number of seconds"))?,
            Err(_) => DEFAULT_SECS,
        };
        anyhow::ensure!(
            secs >= 60,
            "SBX_SOAK_SECS={secs}: a soak needs at least 60 s"
        );
        let duration = Duration::from_secs(secs);
        Ok(Self {
            duration,
            warm_up: (duration / 4).max(Duration::from_secs(20)),
            period: (duration / 100).clamp(Duration::from_secs(2), Duration::from_secs(5)),
        })
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ok: u64,
    failed: u64,
    slowest: Duration,
}

/// Operations done and failed, by kind.
#[derive(Default)]
pub struct Tally {
    counts: Mutex<BTreeMap<&'static str, Counts>>,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    pub fn record(&self, op: &'static str, took: Duration, result: Result<()>) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = counts.entry(op).or_default();
        c.slowest = c.slowest.max(took);
        match result {
            Ok(()) => c.ok += 1,
            Err(e) => {
                c.failed += 1;
                eprintln!("soak: {op} failed: {e:#}");
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{op}: {e:#}"));
            }
        }
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One line per kind: done, failed, slowest.
    pub fn summary(&self) -> String {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = format!(
            "{:<16} {:>8} {:>7} {:>10}\n",
            "operation", "done", "failed", "slowest"
        );
        for (op, c) in counts.iter() {
            let _ = writeln!(
                out,
                "{op:<16} {:>8} {:>7} {:>9.0?}",
                c.ok + c.failed,
                c.failed,
                c.slowest
            );
        }
        let failures = self.failures();
        for f in failures.iter().take(SHOWN_FAILURES) {
            let _ = writeln!(out, "  {f}");
        }
        if failures.len() > SHOWN_FAILURES {
            let _ = writeln!(out, "  ... and {} more", failures.len() - SHOWN_FAILURES);
        }
        out
    }
}

/// Runs `op` again and again until `until`, `pace` apart, each bounded by
/// [`OP_TIMEOUT`], recording every outcome.
pub async fn repeat<F, Fut>(
    tally: &Tally,
    name: &'static str,
    until: Instant,
    pace: Duration,
    op: F,
) where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut i = 0;
    while Instant::now() < until {
        let started = Instant::now();
        let result = match tokio::time::timeout(OP_TIMEOUT, op(i)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("no result in {OP_TIMEOUT:?}")),
        };
        tally.record(
            name,
            started.elapsed(),
            result.with_context(|| format!("#{i}")),
        );
        i += 1;
        tokio::time::sleep(pace).await;
    }
}

/// [`repeat`] for blocking operations, on the calling thread; a panic in
/// `op` counts as a failure.
pub fn repeat_blocking(
    tally: &Tally,
    name: &'static str,
    until: Instant,
    pace: Duration,
    op: impl Fn(u64) -> Result<()>,
) {
    let mut i = 0;
    while Instant::now() < until {
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(i)))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")));
        tally.record(
            name,
            started.elapsed(),
            result.with_context(|| format!("#{i}")),
        );
        i += 1;
        std::thread::sleep(pace);
    }
}
