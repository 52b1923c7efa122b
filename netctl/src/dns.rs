//! Keeping the addresses behind domain names fresh.
//!
//! Each name has its last known addresses, each with an expiry: TTL
//! (clamped) plus grace, because clients keep using cached answers after an
//! address drops out. A failed lookup keeps what we knew: for a denied name
//! that fails closed, and an allowed name keeps working through a resolver
//! hiccup. Times are Unix milliseconds so they survive a restart.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use serde::{Deserialize, Serialize};

use crate::config::DnsConfig;

/// What we know about one name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameState {
    /// Address → expiry (Unix ms).
    pub addrs: BTreeMap<IpAddr, u64>,
    /// When the name is next looked up (Unix ms); 0 = at once.
    pub next_refresh_ms: u64,
    /// Last successful lookup (Unix ms).
    pub resolved_at_ms: Option<u64>,
    /// Why the last lookup failed, if it did.
    pub error: Option<String>,
}

/// One answer: addresses with their TTLs in seconds.
pub type Answer = Vec<(IpAddr, u32)>;

/// TTL clamps and grace, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub min_ttl_ms: u64,
    pub max_ttl_ms: u64,
    pub grace_ms: u64,
}

impl Timing {
    pub fn from_config(dns: &DnsConfig) -> Self {
        Self {
            min_ttl_ms: dns.min_ttl.saturating_mul(1000),
            max_ttl_ms: dns.max_ttl.saturating_mul(1000),
            grace_ms: dns.grace.saturating_mul(1000),
        }
    }

    fn clamp(&self, ttl_s: u32) -> u64 {
        (u64::from(ttl_s) * 1000).clamp(self.min_ttl_ms, self.max_ttl_ms)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl NameState {
    /// Folds a lookup result in. Returns whether the address set changed.
    pub fn update(&mut self, result: Result<Answer, String>, now: u64, timing: Timing) -> bool {
        let before: Vec<IpAddr> = self.addrs.keys().copied().collect();
        match result {
            Ok(answer) if !answer.is_empty() => {
                let mut shortest = timing.max_ttl_ms;
                for (addr, ttl) in answer {
                    let ttl_ms = timing.clamp(ttl);
                    shortest = shortest.min(ttl_ms);
                    let addr = sbx_proto::policy::fold_mapped_addr(addr);
                    let expiry = now + ttl_ms + timing.grace_ms;
                    let slot = self.addrs.entry(addr).or_insert(expiry);
                    *slot = (*slot).max(expiry);
                }
                self.addrs.retain(|_, expiry| *expiry > now);
                self.resolved_at_ms = Some(now);
                self.error = None;
                // Looked up again just before the answer runs out, so a
                // change is seen within one TTL.
                self.next_refresh_ms = now + refresh_after(shortest, timing);
            }
            Ok(_) => {
                self.error = Some("no A or AAAA records".into());
                self.next_refresh_ms = now + timing.min_ttl_ms;
            }
            Err(e) => {
                self.error = Some(e);
                self.next_refresh_ms = now + timing.min_ttl_ms;
            }
        }
        let after: Vec<IpAddr> = self.addrs.keys().copied().collect();
        before != after
    }

    /// Addresses currently in force.
    pub fn current(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.keys().copied()
    }
}

/// 90% of the TTL, never less than the minimum clamp's 90%.
fn refresh_after(ttl_ms: u64, timing: Timing) -> u64 {
    (ttl_ms - ttl_ms / 10)
        .max(timing.min_ttl_ms - timing.min_ttl_ms / 10)
        .max(1)
}

/// hickory-resolver with our upstreams and without its own cache (we keep
/// our own, with expiries we control).
pub struct Resolver {
    inner: TokioResolver,
    timeout: Duration,
    upstreams: Vec<IpAddr>,
}

impl Resolver {
    pub fn new(dns: &DnsConfig, timeout: Duration) -> Result<Self, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if dns.upstreams.is_empty() {
            TokioResolver::builder(provider).map_err(|e| format!("read resolv.conf: {e}"))?
        } else {
            let servers = dns
                .upstreams
                .iter()
                .map(|ip| NameServerConfig::udp_and_tcp(*ip))
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let opts = builder.options_mut();
        opts.cache_size = 0;
        opts.timeout = timeout;
        opts.attempts = 1;
        // Names in a policy are absolute; never try search domains.
        opts.ndots = 0;
        let inner = builder
            .build()
            .map_err(|e| format!("build resolver: {e}"))?;
        let upstreams = inner_upstreams(dns);
        Ok(Self {
            inner,
            timeout,
            upstreams,
        })
    }

    /// The servers used, for opening port 53 to them from the sandbox.
    pub fn upstreams(&self) -> &[IpAddr] {
        &self.upstreams
    }

    /// A and AAAA for `name`. Succeeds if either query answered; "no such
    /// record" counts as an empty answer for that type.
    pub async fn resolve(&self, name: &str) -> Result<Answer, String> {
        let fqdn = format!("{name}.");
        let (a, aaaa) = tokio::join!(
            self.query(&fqdn, RecordType::A),
            self.query(&fqdn, RecordType::AAAA)
        );
        match (a, aaaa) {
            (Err(e), Err(_)) => Err(e),
            (a, aaaa) => {
                let mut answer = a.unwrap_or_default();
                answer.extend(aaaa.unwrap_or_default());
                Ok(answer)
            }
        }
    }

    async fn query(&self, fqdn: &str, kind: RecordType) -> Result<Answer, String> {
        let lookup = tokio::time::timeout(
            self.timeout + Duration::from_millis(500),
            self.inner.lookup(fqdn, kind),
        )
        .await
        .map_err(|_| format!("{kind} lookup timed out"))?
        .map_err(|e| format!("{kind} lookup: {e}"))?;
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
                RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
                _ => None,
            })
            .collect())
    }
}

fn inner_upstreams(dns: &DnsConfig) -> Vec<IpAddr> {
    if !dns.upstreams.is_empty() {
        return dns.upstreams.clone();
    }
    hickory_resolver::system_conf::read_system_conf()
        .map(|(config, _)| config.name_servers().iter().map(|ns| ns.ip).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        min_ttl_ms: 1_000,
        max_ttl_ms: 60_000,
        grace_ms: 5_000,
    };
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ttl_is_clamped_and_grace_added() {
        let mut s = NameState::default();
        assert!(s.update(Ok(vec![(ip("192.0.2.1"), 0)]), 0, T));
        assert_eq!(s.addrs[&ip("192.0.2.1")], 1_000 + 5_000);
        assert_eq!(s.next_refresh_ms, 900);
        let mut s = NameState::default();
        s.update(Ok(vec![(ip("192.0.2.1"), 86_400)]), 0, T);
        assert_eq!(s.addrs[&ip("192.0.2.1")], 60_000 + 5_000);
    }

    #[test]
    fn dropped_address_stays_for_grace_then_goes() {
        let mut s = NameState::default();
        s.update(Ok(vec![(ip("192.0.2.1"), 1)]), 0, T);
        assert!(s.update(Ok(vec![(ip("192.0.2.2"), 1)]), 1_000, T));
        assert_eq!(s.current().count(), 2, "old address kept for grace");
        s.update(Ok(vec![(ip("192.0.2.2"), 1)]), 6_500, T);
        assert_eq!(s.current().collect::<Vec<_>>(), [ip("192.0.2.2")]);
    }

    #[test]
    fn failure_keeps_last_known() {
        let mut s = NameState::default();
        s.update(Ok(vec![(ip("2001:db8::1"), 1)]), 0, T);
        assert!(!s.update(Err("timeout".into()), 100_000, T));
        assert_eq!(s.current().count(), 1);
        assert_eq!(s.error.as_deref(), Some("timeout"));
        assert_eq!(s.next_refresh_ms, 101_000);
    }

    #[test]
    fn mapped_answers_fold_to_ipv4() {
        let mut s = NameState::default();
        s.update(Ok(vec![(ip("::ffff:192.0.2.9"), 5)]), 0, T);
        assert_eq!(s.current().collect::<Vec<_>>(), [ip("192.0.2.9")]);
    }
}
