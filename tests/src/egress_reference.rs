//! A reference for SPEC 4's egress decision, written from the SPEC's text
//! and nothing else, so that the differential test can hold netctl's
//! nftables rules against an independent reading of the contract.
//!
//! It is deliberately naive: the lists are scanned entry by entry in the
//! order the SPEC gives (no merging, no sets, no copies), so that it is easy
//! to check by eye against the SPEC:
//!
//! 1. replies on connections someone else opened to the sandbox: accepted
//!    (not modelled: the reference judges what the sandbox *opens*);
//! 2. the operator's always-deny list: refused, `allow_out` cannot override;
//! 3. `allow_out`: accepted;
//! 4. `deny_out`: refused;
//! 5. otherwise accepted if `allow_internet_access`, else refused.
//!
//! Before all of them, traffic on the sandbox's own loopback (which is also
//! where packets to the sandbox's own addresses go) is never filtered.
//!
//! "An IPv4-mapped IPv6 address is treated as the IPv4 address": a
//! destination `::ffff:a.b.c.d` is judged as `a.b.c.d`, and so is an entry
//! made only of mapped addresses (`::ffff:a.b.c.0/120` is `a.b.c.0/24`). An
//! IPv6 entry that merely *contains* the mapped block (`::/0`, `::/64`) is
//! read as an IPv6 entry and says nothing about IPv4: the SPEC speaks of
//! mapped *addresses*, and reading `::/0` as "and all of IPv4" would turn an
//! IPv6 rule into an IPv4 one behind the writer's back. netctl's README
//! documents the same reading; the unit tests below pin it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What happens to a connection the sandbox opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Refuse,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Accept => "accept",
            Verdict::Refuse => "refuse",
        })
    }
}

/// A policy with address and CIDR entries only (domains are resolved into
/// addresses before the rules see them, so they add nothing here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub allow_internet_access: bool,
    pub allow_out: Vec<IpNet>,
    pub deny_out: Vec<IpNet>,
}

impl Policy {
    /// The policy as the platform API sends it (SPEC 4's JSON object).
    pub fn to_json(&self) -> serde_json::Value {
        let list = |nets: &[IpNet]| nets.iter().map(ToString::to_string).collect::<Vec<_>>();
        serde_json::json!({
            "allow_internet_access": self.allow_internet_access,
            "allow_out": list(&self.allow_out),
            "deny_out": list(&self.deny_out),
        })
    }
}

/// What the host fixes for every sandbox: the operator's always-deny list
/// and the sandbox's own addresses (reached over its loopback).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    pub always_deny: Vec<IpNet>,
    pub own_addresses: Vec<IpAddr>,
}

impl Host {
    /// SPEC 4's evaluation order for a connection the sandbox opens to
    /// `dest`.
    pub fn verdict(&self, policy: &Policy, dest: IpAddr) -> Verdict {
        let dest = as_ipv4_if_mapped(dest);
        if self.on_loopback(dest) {
            return Verdict::Accept;
        }
        if listed(&self.always_deny, dest) {
            return Verdict::Refuse;
        }
        if listed(&policy.allow_out, dest) {
            return Verdict::Accept;
        }
        if listed(&policy.deny_out, dest) {
            return Verdict::Refuse;
        }
        if policy.allow_internet_access {
            Verdict::Accept
        } else {
            Verdict::Refuse
        }
    }

    fn on_loopback(&self, dest: IpAddr) -> bool {
        dest.is_loopback()
            || self
                .own_addresses
                .iter()
                .any(|own| as_ipv4_if_mapped(*own) == dest)
    }
}

/// Whether any entry of `list` covers `dest` (already unmapped).
fn listed(list: &[IpNet], dest: IpAddr) -> bool {
    list.iter().any(|entry| covers(*entry, dest))
}

/// Whether one entry covers `dest`, mapped entries read as IPv4.
pub fn covers(entry: IpNet, dest: IpAddr) -> bool {
    match (as_ipv4_if_all_mapped(entry), as_ipv4_if_mapped(dest)) {
        (IpNet::V4(net), IpAddr::V4(addr)) => net.contains(&addr),
        (IpNet::V6(net), IpAddr::V6(addr)) => net.contains(&addr),
        _ => false,
    }
}

/// An entry as a policy writes it: an address (a host prefix) or a CIDR.
pub fn parse_entry(entry: &str) -> Result<IpNet, ipnet::AddrParseError> {
    match entry.parse::<IpAddr>() {
        Ok(addr) => Ok(IpNet::from(addr)),
        Err(_) => entry.parse(),
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; anything else unchanged.
pub fn as_ipv4_if_mapped(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The block of IPv4-mapped addresses, `::ffff:0:0/96`.
fn mapped_block() -> Ipv6Net {
    Ipv6Net::new(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), 96)
        .unwrap_or_else(|_| unreachable!("96 is a valid IPv6 prefix length"))
}

/// An IPv6 entry made only of mapped addresses as the IPv4 entry it is.
fn as_ipv4_if_all_mapped(entry: IpNet) -> IpNet {
    match entry {
        IpNet::V6(v6) if mapped_block().contains(&v6) => {
            let first = v6
                .network()
                .to_ipv4_mapped()
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            Ipv4Net::new(first, v6.prefix_len() - 96).map_or(entry, IpNet::V4)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        parse_entry(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn policy(internet: bool, allow: &[&str], deny: &[&str]) -> Policy {
        Policy {
            allow_internet_access: internet,
            allow_out: allow.iter().map(|s| net(s)).collect(),
            deny_out: deny.iter().map(|s| net(s)).collect(),
        }
    }

    fn host(always: &[&str]) -> Host {
        Host {
            always_deny: always.iter().map(|s| net(s)).collect(),
            own_addresses: vec![ip("192.0.2.2"), ip("2001:db8:1::2")],
        }
    }

    #[test]
    fn the_final_verdict_follows_allow_internet_access() {
        let h = host(&[]);
        assert_eq!(
            h.verdict(&policy(true, &[], &[]), ip("198.18.0.1")),
            Verdict::Accept
        );
        assert_eq!(
            h.verdict(&policy(false, &[], &[]), ip("2001:db8::1")),
            Verdict::Refuse
        );
    }

    #[test]
    fn allow_out_is_evaluated_before_deny_out() {
        let h = host(&[]);
        let p = policy(true, &["198.18.1.0/24"], &["198.18.0.0/16"]);
        assert_eq!(h.verdict(&p, ip("198.18.1.7")), Verdict::Accept);
        assert_eq!(h.verdict(&p, ip("198.18.2.7")), Verdict::Refuse);
        assert_eq!(h.verdict(&p, ip("198.19.0.1")), Verdict::Accept);
        let p = policy(false, &["2001:db8::/64"], &["2001:db8::5"]);
        assert_eq!(h.verdict(&p, ip("2001:db8::5")), Verdict::Accept);
        assert_eq!(h.verdict(&p, ip("2001:db8:0:1::5")), Verdict::Refuse);
    }

    #[test]
    fn always_deny_cannot_be_overridden_by_allow_out() {
        let h = host(&["169.254.0.0/16", "fe80::/10", "198.18.7.0/24"]);
        let p = policy(true, &["169.254.169.254", "198.18.0.0/16", "fe80::1"], &[]);
        assert_eq!(h.verdict(&p, ip("169.254.169.254")), Verdict::Refuse);
        assert_eq!(h.verdict(&p, ip("198.18.7.1")), Verdict::Refuse);
        assert_eq!(h.verdict(&p, ip("fe80::1")), Verdict::Refuse);
        assert_eq!(h.verdict(&p, ip("198.18.8.1")), Verdict::Accept);
    }

    #[test]
    fn mapped_destinations_are_judged_as_ipv4() {
        let h = host(&["::ffff:198.18.9.0/120"]);
        let p = policy(true, &[], &["198.18.1.0/24"]);
        assert_eq!(h.verdict(&p, ip("::ffff:198.18.1.1")), Verdict::Refuse);
        assert_eq!(h.verdict(&p, ip("::ffff:198.18.2.1")), Verdict::Accept);
        // The mapped always-deny entry is the IPv4 /24.
        assert_eq!(h.verdict(&p, ip("198.18.9.3")), Verdict::Refuse);
        assert_eq!(h.verdict(&p, ip("::ffff:198.18.9.3")), Verdict::Refuse);
    }

    #[test]
    fn mapped_entries_are_ipv4_entries() {
        let h = host(&[]);
        let p = policy(false, &["::ffff:198.18.0.0/112", "::ffff:198.19.0.1"], &[]);
        assert_eq!(h.verdict(&p, ip("198.18.200.1")), Verdict::Accept);
        assert_eq!(h.verdict(&p, ip("198.19.0.1")), Verdict::Accept);
        assert_eq!(h.verdict(&p, ip("198.19.0.2")), Verdict::Refuse);
        // The whole mapped block is all of IPv4.
        let p = policy(false, &["::ffff:0:0/96"], &[]);
        assert_eq!(h.verdict(&p, ip("203.0.113.1")), Verdict::Accept);
        assert_eq!(h.verdict(&p, ip("2001:db8::1")), Verdict::Refuse);
    }

    #[test]
    fn wide_ipv6_entries_say_nothing_about_ipv4() {
        let h = host(&[]);
        for (wide, inside) in [
            ("::/0", "2001:db8::1"),
            ("::/64", "::1.2.3.4"),
            ("::fffe:0:0/95", "::fffe:1.2.3.4"),
        ] {
            let p = policy(true, &[], &[wide]);
            assert_eq!(h.verdict(&p, ip("198.18.0.1")), Verdict::Accept, "{wide}");
            assert_eq!(h.verdict(&p, ip("::ffff:198.18.0.1")), Verdict::Accept);
            assert_eq!(h.verdict(&p, ip(inside)), Verdict::Refuse, "{wide}");
        }
    }

    #[test]
    fn loopback_and_own_addresses_are_never_filtered() {
        let h = host(&["0.0.0.0/0", "::/0"]);
        let p = policy(false, &[], &["127.0.0.0/8", "::1", "192.0.2.0/24"]);
        for dest in [
            "127.0.0.1",
            "127.9.8.7",
            "::1",
            "::ffff:127.0.0.1",
            "192.0.2.2",
            "::ffff:192.0.2.2",
            "2001:db8:1::2",
        ] {
            assert_eq!(h.verdict(&p, ip(dest)), Verdict::Accept, "{dest}");
        }
        assert_eq!(h.verdict(&p, ip("192.0.2.3")), Verdict::Refuse);
    }

    #[test]
    fn policies_serialise_as_the_platform_sends_them() {
        let p = policy(false, &["::ffff:198.18.0.0/112"], &["2001:db8::/32"]);
        assert_eq!(
            p.to_json(),
            serde_json::json!({
                "allow_internet_access": false,
                "allow_out": ["::ffff:198.18.0.0/112"],
                "deny_out": ["2001:db8::/32"],
            })
        );
    }
}
