//! Counters for `/metrics` on the admin socket, in Prometheus text format.
//! Plain atomics in fixed arrays: the request path never takes a lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::route::AGENT_PORT;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Statuses 100..=599 are counted one by one.
const STATUSES: usize = 600;
const KINDS: [&str; 2] = ["agent", "port"];

pub struct Metrics {
    /// [kind][status]
    requests: Vec<AtomicU64>,
    /// [kind][bucket], the last slot is +Inf.
    latency: Vec<AtomicU64>,
    latency_micros_sum: [AtomicU64; 2],
    /// [kind][ok, failed]
    connects: [AtomicU64; 4],
    /// Requests the proxy answered itself without a sandbox (bad host).
    unrouted: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let atomics = |n| (0..n).map(|_| AtomicU64::new(0)).collect();
        Self {
            requests: atomics(KINDS.len() * STATUSES),
            latency: atomics(KINDS.len() * (BUCKETS.len() + 1)),
            latency_micros_sum: Default::default(),
            connects: Default::default(),
            unrouted: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
        }
    }
}

fn kind(port: u16) -> usize {
    usize::from(port != AGENT_PORT)
}

impl Metrics {
    /// One request that reached the routing stage, with the status sent
    /// and the time to the response head.
    pub fn record_request(&self, port: Option<u16>, status: u16, took: Duration) {
        let Some(port) = port else {
            self.unrouted.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let k = kind(port);
        let s = usize::from(status).min(STATUSES - 1);
        self.requests[k * STATUSES + s].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.latency[k * (BUCKETS.len() + 1) + bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_micros_sum[k].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn record_connect(&self, port: u16, ok: bool) {
        self.connects[kind(port) * 2 + usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Successful upstream connects so far (benchmarks read this).
    pub fn connects_ok(&self) -> u64 {
        self.connects[0].load(Ordering::Relaxed) + self.connects[2].load(Ordering::Relaxed)
    }

    pub fn render(&self, sandboxes: usize) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let _ = writeln!(out, "# HELP sbx_proxy_requests_total Requests routed to a sandbox, by route kind and status.");
        let _ = writeln!(out, "# TYPE sbx_proxy_requests_total counter");
        for (k, name) in KINDS.iter().enumerate() {
            for status in 100..STATUSES {
                let v = get(&self.requests[k * STATUSES + status]);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "sbx_proxy_requests_total{{kind=\"{name}\",status=\"{status}\"}} {v}"
                    );
                }
            }
        }
        let _ = writeln!(out, "# HELP sbx_proxy_unrouted_requests_total Requests refused before routing (malformed host or routing header).");
        let _ = writeln!(out, "# TYPE sbx_proxy_unrouted_requests_total counter");
        let _ = writeln!(
            out,
            "sbx_proxy_unrouted_requests_total {}",
            get(&self.unrouted)
        );
        let _ = writeln!(
            out,
            "# HELP sbx_proxy_request_duration_seconds Time to the response head, by route kind."
        );
        let _ = writeln!(out, "# TYPE sbx_proxy_request_duration_seconds histogram");
        for (k, name) in KINDS.iter().enumerate() {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += get(&self.latency[k * (BUCKETS.len() + 1) + i]);
                let _ = writeln!(out, "sbx_proxy_request_duration_seconds_bucket{{kind=\"{name}\",le=\"{bound}\"}} {cumulative}");
            }
            cumulative += get(&self.latency[k * (BUCKETS.len() + 1) + BUCKETS.len()]);
            let _ = writeln!(out, "sbx_proxy_request_duration_seconds_bucket{{kind=\"{name}\",le=\"+Inf\"}} {cumulative}");
            let sum = get(&self.latency_micros_sum[k]) as f64 / 1e6;
            let _ = writeln!(
                out,
                "sbx_proxy_request_duration_seconds_sum{{kind=\"{name}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "sbx_proxy_request_duration_seconds_count{{kind=\"{name}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "# HELP sbx_proxy_upstream_connects_total Connections opened to agents (a user port: through the raw tunnel), by route kind and result. Requests minus connects is pool reuse.");
        let _ = writeln!(out, "# TYPE sbx_proxy_upstream_connects_total counter");
        for (k, name) in KINDS.iter().enumerate() {
            for (r, result) in ["ok", "error"].iter().enumerate() {
                let v = get(&self.connects[k * 2 + r]);
                let _ = writeln!(
                    out,
                    "sbx_proxy_upstream_connects_total{{kind=\"{name}\",result=\"{result}\"}} {v}"
                );
            }
        }
        let gauges = [
            (
                "sbx_proxy_client_connections",
                "gauge",
                "Client connections open now.",
                get(&self.connections_open),
            ),
            (
                "sbx_proxy_client_connections_total",
                "counter",
                "Client connections accepted.",
                get(&self.connections_total),
            ),
            (
                "sbx_proxy_client_connections_refused_total",
                "counter",
                "Client connections closed at accept (limits.max_connections).",
                get(&self.connections_refused),
            ),
            (
                "sbx_proxy_sandboxes",
                "gauge",
                "Sandboxes in the registry.",
                sandboxes as u64,
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let m = Metrics::default();
        m.record_request(Some(8080), 200, Duration::from_micros(300));
        m.record_request(Some(9501), 401, Duration::from_millis(3));
        m.record_request(None, 400, Duration::ZERO);
        m.record_connect(8080, true);
        let text = m.render(1);
        assert!(text.contains("sbx_proxy_requests_total{kind=\"port\",status=\"200\"} 1"));
        assert!(text.contains("sbx_proxy_requests_total{kind=\"agent\",status=\"401\"} 1"));
        assert!(text
            .contains("sbx_proxy_request_duration_seconds_bucket{kind=\"port\",le=\"0.0005\"} 1"));
        assert!(text.contains("sbx_proxy_upstream_connects_total{kind=\"port\",result=\"ok\"} 1"));
        assert!(text.contains("sbx_proxy_unrouted_requests_total 1"));
        assert_eq!(m.connects_ok(), 1);
    }
}
