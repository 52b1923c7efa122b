//! Process-wide counters, rendered as Prometheus text together with
//! per-sandbox figures gathered at scrape time.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::forwarder::stats::Verdict;
use std::time::Duration;

/// Name, type, help and labelled values of one metric family.
type Family = (&'static str, &'static str, &'static str, Vec<(String, f64)>);

#[derive(Debug, Default)]
pub struct Metrics {
    pub applies_ok: AtomicU64,
    pub applies_failed: AtomicU64,
    apply_micros_sum: AtomicU64,
    pub refresh_ok: AtomicU64,
    pub refresh_failed: AtomicU64,
    pub set_updates: AtomicU64,
    pub set_updates_failed: AtomicU64,
    pub rejected_requests: AtomicU64,
    /// What the DNS forwarders did.
    pub dns: std::sync::Arc<crate::forwarder::stats::DnsStats>,
}

/// Per-sandbox figures for one scrape.
#[derive(Debug, Default)]
pub struct SandboxSample {
    pub id: String,
    pub applied: bool,
    pub failing_names: usize,
    pub names: usize,
    pub accepted: Option<u64>,
    pub accepted_fast: Option<u64>,
    pub refused: Option<u64>,
    pub inbound_refused: Option<u64>,
    /// Addresses from DNS answers in the sandbox's sets, while its DNS is
    /// forwarded.
    pub answer_elements: Option<usize>,
}

impl Metrics {
    pub fn record_apply(&self, ok: bool, took: Duration) {
        if ok {
            self.applies_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.applies_failed.fetch_add(1, Ordering::Relaxed);
        }
        self.apply_micros_sum
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self, samples: &[SandboxSample]) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let by_result = |ok: &AtomicU64, bad: &AtomicU64| {
            vec![
                ("result=\"ok\"".to_owned(), get(ok)),
                ("result=\"error\"".to_owned(), get(bad)),
            ]
        };
        let per_sandbox = |f: &dyn Fn(&SandboxSample) -> Option<f64>| {
            samples
                .iter()
                .filter_map(|s| f(s).map(|v| (format!("sandbox=\"{}\"", s.id), v)))
                .collect::<Vec<_>>()
        };
        let mut packets = Vec::new();
        for s in samples {
            if let (Some(a), Some(r)) = (s.accepted, s.refused) {
                packets.push((
                    format!("sandbox=\"{}\",verdict=\"accepted\"", s.id),
                    a as f64,
                ));
                packets.push((
                    format!("sandbox=\"{}\",verdict=\"accepted_fast\"", s.id),
                    s.accepted_fast.unwrap_or(0) as f64,
                ));
                packets.push((
                    format!("sandbox=\"{}\",verdict=\"refused\"", s.id),
                    r as f64,
                ));
            }
        }
        let families: Vec<Family> = vec![
            (
                "netctl_sandboxes",
                "gauge",
                "Sandboxes under management.",
                vec![(String::new(), samples.len() as f64)],
            ),
            (
                "netctl_sandboxes_unapplied",
                "gauge",
                "Sandboxes whose rules are not (yet) in the kernel.",
                vec![(
                    String::new(),
                    samples.iter().filter(|s| !s.applied).count() as f64,
                )],
            ),
            (
                "netctl_applies_total",
                "counter",
                "Policy applies (PUT, PATCH, reconcile), by result.",
                by_result(&self.applies_ok, &self.applies_failed),
            ),
            (
                "netctl_apply_seconds_sum",
                "counter",
                "Time spent in policy applies.",
                vec![(String::new(), get(&self.apply_micros_sum) / 1e6)],
            ),
            (
                "netctl_dns_lookups_total",
                "counter",
                "Name lookups, by result.",
                by_result(&self.refresh_ok, &self.refresh_failed),
            ),
            (
                "netctl_set_updates_total",
                "counter",
                "Applies after DNS answers changed a set, by result.",
                by_result(&self.set_updates, &self.set_updates_failed),
            ),
            (
                "netctl_rejected_requests_total",
                "counter",
                "API requests refused as invalid.",
                vec![(String::new(), get(&self.rejected_requests))],
            ),
            (
                "netctl_sandbox_names",
                "gauge",
                "Domain names in a sandbox's policy.",
                per_sandbox(&|s| Some(s.names as f64)),
            ),
            (
                "netctl_sandbox_names_failing",
                "gauge",
                "Names whose last lookup failed (last known addresses kept).",
                per_sandbox(&|s| Some(s.failing_names as f64)),
            ),
            (
                "netctl_packets_total",
                "counter",
                "Packets judged by a sandbox's policy, by verdict.",
                packets,
            ),
            (
                "netctl_inbound_refused_packets_total",
                "counter",
                "Packets sent into a sandbox that its inbound rules refused (new connections not to the agent's port from an allowed source).",
                per_sandbox(&|s| s.inbound_refused.map(|n| n as f64)),
            ),
            (
                "netctl_dns_queries_total",
                "counter",
                "Queries the DNS forwarders answered, by verdict.",
                Verdict::ALL
                    .iter()
                    .map(|v| {
                        (
                            format!("verdict=\"{}\"", v.label()),
                            self.dns.queries(*v) as f64,
                        )
                    })
                    .collect(),
            ),
            (
                "netctl_dns_dropped_total",
                "counter",
                "Queries dropped because a sandbox had too many in flight.",
                vec![(String::new(), get(&self.dns.dropped))],
            ),
            (
                "netctl_dns_answer_elements",
                "gauge",
                "Addresses from DNS answers in a sandbox's allow sets.",
                per_sandbox(&|s| s.answer_elements.map(|n| n as f64)),
            ),
        ];
        let mut out = String::new();
        let (buckets, sum) = self.dns.hold_histogram();
        let _ = writeln!(
            out,
            "# HELP netctl_dns_hold_seconds How long answers were held until their addresses were in the sets.\n# TYPE netctl_dns_hold_seconds histogram"
        );
        let mut total = 0;
        for (bound, count) in buckets {
            let le = bound.map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "netctl_dns_hold_seconds_bucket{{le=\"{le}\"}} {count}");
            total = count;
        }
        let _ = writeln!(
            out,
            "netctl_dns_hold_seconds_sum {sum}\nnetctl_dns_hold_seconds_count {total}"
        );
        for (name, kind, help, values) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in values {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}
