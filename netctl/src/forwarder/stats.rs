//! What the forwarders did, for `/metrics`: queries by verdict and how long
//! answers were held for their set writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the hold-time histogram, in microseconds.
pub const HOLD_BUCKETS_US: [u64; 9] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000];

/// How a query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Asked upstream and answered.
    Forwarded,
    /// A denied name, or a denied name in the answer's CNAME chain.
    NxdomainDenied,
    /// Not allowed with `allow_internet_access=false`: never asked upstream.
    NxdomainNotAllowed,
    /// The resolvers failed, or the answer's addresses could not be put in
    /// the sets in time.
    Servfail,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Forwarded,
        Verdict::NxdomainDenied,
        Verdict::NxdomainNotAllowed,
        Verdict::Servfail,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Forwarded => "forwarded",
            Verdict::NxdomainDenied => "nxdomain_denied",
            Verdict::NxdomainNotAllowed => "nxdomain_not_allowed",
            Verdict::Servfail => "servfail",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
pub struct DnsStats {
    queries: [AtomicU64; 4],
    /// Cumulative per bucket; the last counts everything.
    hold_buckets: [AtomicU64; HOLD_BUCKETS_US.len() + 1],
    hold_sum_us: AtomicU64,
    /// Datagrams dropped because a sandbox had too many queries in flight.
    pub dropped: AtomicU64,
}

impl DnsStats {
    pub fn count(&self, verdict: Verdict) {
        self.queries[verdict.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn queries(&self, verdict: Verdict) -> u64 {
        self.queries[verdict.index()].load(Ordering::Relaxed)
    }

    pub fn hold(&self, took: Duration) {
        let us = took.as_micros() as u64;
        for (i, bound) in HOLD_BUCKETS_US.iter().enumerate() {
            if us <= *bound {
                self.hold_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.hold_buckets[HOLD_BUCKETS_US.len()].fetch_add(1, Ordering::Relaxed);
        self.hold_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// `(upper bound in seconds or None for +Inf, cumulative count)`, and
    /// the sum in seconds.
    pub fn hold_histogram(&self) -> (Vec<(Option<f64>, u64)>, f64) {
        let mut out: Vec<(Option<f64>, u64)> = HOLD_BUCKETS_US
            .iter()
            .enumerate()
            .map(|(i, b)| {
                (
                    Some(*b as f64 / 1e6),
                    self.hold_buckets[i].load(Ordering::Relaxed),
                )
            })
            .collect();
        out.push((
            None,
            self.hold_buckets[HOLD_BUCKETS_US.len()].load(Ordering::Relaxed),
        ));
        (out, self.hold_sum_us.load(Ordering::Relaxed) as f64 / 1e6)
    }
}
