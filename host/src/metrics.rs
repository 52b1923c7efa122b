//! Counters for `/metrics` (Prometheus text), lock-free on the paths that
//! move them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    creates: AtomicU64,
    create_failures: AtomicU64,
    create_us_sum: AtomicU64,
    deletes: AtomicU64,
    suspends: AtomicU64,
    suspend_us_sum: AtomicU64,
    resumes: AtomicU64,
    resume_us_sum: AtomicU64,
    guests_stopped: AtomicU64,
}

impl Metrics {
    pub fn created(&self, took: Duration) {
        self.creates.fetch_add(1, Relaxed);
        self.create_us_sum
            .fetch_add(took.as_micros() as u64, Relaxed);
    }
    pub fn create_failed(&self) {
        self.create_failures.fetch_add(1, Relaxed);
    }
    pub fn deleted(&self) {
        self.deletes.fetch_add(1, Relaxed);
    }
    pub fn suspended(&self, took: Duration) {
        self.suspends.fetch_add(1, Relaxed);
        self.suspend_us_sum
            .fetch_add(took.as_micros() as u64, Relaxed);
    }
    pub fn resumed(&self, took: Duration) {
        self.resumes.fetch_add(1, Relaxed);
        self.resume_us_sum
            .fetch_add(took.as_micros() as u64, Relaxed);
    }
    pub fn guest_stopped(&self) {
        self.guests_stopped.fetch_add(1, Relaxed);
    }

    /// The text exposition, with the gauges the caller read.
    pub fn render(&self, states: &[(&str, usize)], host: &crate::model::HostView) -> String {
        let mut out = String::with_capacity(2048);
        let secs = |us: &AtomicU64| us.load(Relaxed) as f64 / 1e6;
        let counter = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "sbx_host_creates_total",
            "Sandboxes created (agent healthy).",
            self.creates.load(Relaxed) as f64,
        );
        counter(
            &mut out,
            "sbx_host_create_failures_total",
            "Creates that failed and were undone.",
            self.create_failures.load(Relaxed) as f64,
        );
        counter(
            &mut out,
            "sbx_host_create_seconds_sum",
            "Time from request to healthy agent, summed.",
            secs(&self.create_us_sum),
        );
        counter(
            &mut out,
            "sbx_host_deletes_total",
            "Sandboxes deleted.",
            self.deletes.load(Relaxed) as f64,
        );
        counter(
            &mut out,
            "sbx_host_suspends_total",
            "Suspends.",
            self.suspends.load(Relaxed) as f64,
        );
        counter(
            &mut out,
            "sbx_host_suspend_seconds_sum",
            "Suspend time, summed.",
            secs(&self.suspend_us_sum),
        );
        counter(
            &mut out,
            "sbx_host_resumes_total",
            "Resumes.",
            self.resumes.load(Relaxed) as f64,
        );
        counter(
            &mut out,
            "sbx_host_resume_seconds_sum",
            "Resume time to healthy agent, summed.",
            secs(&self.resume_us_sum),
        );
        counter(
            &mut out,
            "sbx_host_guests_stopped_total",
            "Guests that stopped on their own.",
            self.guests_stopped.load(Relaxed) as f64,
        );
        let _ = writeln!(
            out,
            "# HELP sbx_host_sandboxes Sandboxes by state.\n# TYPE sbx_host_sandboxes gauge"
        );
        for (state, n) in states {
            let _ = writeln!(out, "sbx_host_sandboxes{{state=\"{state}\"}} {n}");
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "sbx_host_capacity_cpus",
            "vCPUs this host offers.",
            host.capacity.cpus,
        );
        gauge(
            &mut out,
            "sbx_host_capacity_memory_mb",
            "Guest memory this host offers.",
            host.capacity.memory_mb as f64,
        );
        gauge(
            &mut out,
            "sbx_host_used_cpus",
            "vCPUs held by running guests.",
            host.used_cpus,
        );
        gauge(
            &mut out,
            "sbx_host_used_memory_mb",
            "Memory held by running guests.",
            host.used_memory_mb as f64,
        );
        out
    }
}
