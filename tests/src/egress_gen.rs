//! Random egress policies and destinations for the differential test of
//! netctl against [`crate::egress_reference`], from a seeded RNG so that a
//! failing run can be replayed.
//!
//! Entries are drawn from a few small address ranges so that they overlap a
//! lot (in one list, across both lists, with the always-deny list), in
//! IPv4, IPv6 and IPv4-mapped IPv6 form, plus a few very wide prefixes.
//! Destinations are mostly the edges of entries (first and last address,
//! one before and one after), where an off-by-one in merging prefixes into
//! intervals would show.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::egress_reference::{as_ipv4_if_mapped, Policy};

/// Where a peer namespace answers every address: destinations outside are
/// drawn again (besides loopback and the sandbox's own addresses).
pub const ANSWERED_V4: [&str; 2] = ["198.16.0.0/12", "169.254.0.0/16"];
pub const ANSWERED_V6: &str = "2001:db8:a0::/44";

/// Prefixes wider than the ranges entries are drawn from.
const WIDE_V4: [&str; 4] = ["0.0.0.0/0", "198.0.0.0/8", "198.16.0.0/12", "198.18.0.0/15"];
/// `::/64`, `::/80` and `::fffe:0:0/95` contain the whole mapped block.
const WIDE_V6: [&str; 6] = [
    "::/0",
    "2001:db8::/32",
    "2001:db8:a0::/44",
    "::/64",
    "::/80",
    "::fffe:0:0/95",
];

/// A seeded source of policies and destinations.
pub struct Gen {
    rng: StdRng,
    /// Addresses that reach the sandbox's own loopback.
    own: Vec<IpAddr>,
}

impl Gen {
    pub fn new(seed: u64, own: Vec<IpAddr>) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            own,
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    /// An IPv4 address in 198.18.0.0/15, dense in its first few /24s.
    fn v4_addr(&mut self) -> Ipv4Addr {
        let second = if self.chance(0.9) { 18 } else { 19 };
        Ipv4Addr::new(198, second, self.rng.random_range(0..8), self.rng.random())
    }

    /// An IPv6 address `2001:db8:ab:W::X:Y`, dense in a few /64s.
    fn v6_addr(&mut self) -> Ipv6Addr {
        Ipv6Addr::new(
            0x2001,
            0xdb8,
            0xab,
            self.rng.random_range(0..4),
            0,
            0,
            self.rng.random_range(0..4),
            self.rng.random(),
        )
    }

    fn v4_net(&mut self) -> Ipv4Net {
        let roll = self.rng.random_range(0..100);
        let len = match roll {
            0..30 => 32,
            30..70 => self.rng.random_range(24..32),
            70..95 => self.rng.random_range(16..24),
            _ => return parse(self.pick::<&str>(&WIDE_V4)),
        };
        truncated4(self.v4_addr(), len)
    }

    fn v6_net(&mut self) -> Ipv6Net {
        let roll = self.rng.random_range(0..100);
        let len = match roll {
            0..30 => 128,
            30..65 => self.rng.random_range(112..128),
            65..75 => self.rng.random_range(96..112),
            75..90 => self.rng.random_range(48..65),
            _ => return parse(self.pick::<&str>(&WIDE_V6)),
        };
        truncated6(self.v6_addr(), len)
    }

    /// An IPv4 prefix written as IPv4-mapped IPv6 (`::ffff:a.b.c.d/n+96`).
    fn mapped_net(&mut self) -> Ipv6Net {
        mapped(self.v4_net())
    }

    /// One entry: IPv4, IPv6 or IPv4-mapped.
    pub fn entry(&mut self) -> IpNet {
        match self.rng.random_range(0..100) {
            0..45 => IpNet::V4(self.v4_net()),
            45..80 => IpNet::V6(self.v6_net()),
            _ => IpNet::V6(self.mapped_net()),
        }
    }

    /// A prefix overlapping `net`: inside it, around it, or itself, in the
    /// other notation when it is IPv4 and the coin says so.
    fn overlapping(&mut self, net: IpNet) -> IpNet {
        let out = match net {
            IpNet::V4(n) => {
                let len = self.rng.random_range(n.prefix_len().saturating_sub(4)..=32);
                IpNet::V4(truncated4(self.addr_in4(n), len))
            }
            IpNet::V6(n) => {
                let len = self
                    .rng
                    .random_range(n.prefix_len().saturating_sub(8)..=128);
                IpNet::V6(truncated6(self.addr_in6(n), len))
            }
        };
        match out {
            IpNet::V4(n) if self.chance(0.3) => IpNet::V6(mapped(n)),
            other => other,
        }
    }

    fn addr_in4(&mut self, n: Ipv4Net) -> Ipv4Addr {
        let span = u32::from(n.broadcast()) - u32::from(n.network());
        Ipv4Addr::from(u32::from(n.network()) + self.rng.random_range(0..=span))
    }

    fn addr_in6(&mut self, n: Ipv6Net) -> Ipv6Addr {
        let span = u128::from(n.broadcast()) - u128::from(n.network());
        Ipv6Addr::from(u128::from(n.network()) + self.rng.random_range(0..=span))
    }

    /// The operator's list: sometimes the defaults, plus a few entries of
    /// the same shapes policies use (so they overlap policy entries).
    pub fn always_deny(&mut self) -> Vec<IpNet> {
        let mut list = Vec::new();
        if self.chance(0.7) {
            list.push(parse("169.254.0.0/16"));
            list.push(parse("fe80::/10"));
        }
        for _ in 0..self.rng.random_range(1..=3) {
            let entry = match self.rng.random_range(0..3) {
                0 => IpNet::V4(truncated4(self.v4_addr(), self.rng.random_range(22..=32))),
                1 => IpNet::V6(truncated6(self.v6_addr(), self.rng.random_range(110..=128))),
                _ => IpNet::V6(mapped(truncated4(
                    self.v4_addr(),
                    self.rng.random_range(22..=32),
                ))),
            };
            list.push(entry);
        }
        list
    }

    /// A policy whose lists overlap each other and the always-deny list.
    pub fn policy(&mut self, always_deny: &[IpNet]) -> Policy {
        let mut allow: Vec<IpNet> = (0..self.rng.random_range(0..=6))
            .map(|_| self.entry())
            .collect();
        let mut deny: Vec<IpNet> = (0..self.rng.random_range(0..=6))
            .map(|_| self.entry())
            .collect();
        for _ in 0..self.rng.random_range(0..=3) {
            if let Some(&base) = self.maybe_pick(&deny) {
                let net = self.overlapping(base);
                allow.push(net);
            }
            if let Some(&base) = self.maybe_pick(&allow) {
                let net = self.overlapping(base);
                deny.push(net);
            }
        }
        if self.chance(0.3) {
            if let Some(&base) = self.maybe_pick(always_deny) {
                let net = self.overlapping(base);
                allow.push(net);
            }
        }
        Policy {
            allow_internet_access: self.chance(0.5),
            allow_out: allow,
            deny_out: deny,
        }
    }

    fn maybe_pick<'a>(&mut self, items: &'a [IpNet]) -> Option<&'a IpNet> {
        (!items.is_empty()).then(|| self.pick(items))
    }

    /// `count` destinations a peer answers, mostly at the edges of the
    /// policy's and the operator's entries.
    pub fn destinations(
        &mut self,
        policy: &Policy,
        always_deny: &[IpNet],
        count: usize,
    ) -> Vec<IpAddr> {
        let entries: Vec<IpNet> = policy
            .allow_out
            .iter()
            .chain(&policy.deny_out)
            .chain(always_deny)
            .copied()
            .collect();
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let dest = self.destination(&entries);
            if self.answered(dest) {
                out.push(dest);
            }
        }
        out
    }

    fn destination(&mut self, entries: &[IpNet]) -> IpAddr {
        let roll = self.rng.random_range(0..100);
        let dest = match (roll, self.maybe_pick(entries).copied()) {
            (0..60, Some(entry)) => self.edge(entry),
            (0..5, None) | (60..65, _) => *self.pick(&self.own.clone()),
            (65..68, _) => IpAddr::V4(Ipv4Addr::new(127, self.rng.random(), 0, 1)),
            (68..70, _) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            (70..73, _) => IpAddr::V4(Ipv4Addr::new(169, 254, self.rng.random(), 1)),
            (73..87, _) => IpAddr::V4(self.v4_addr()),
            _ => IpAddr::V6(self.v6_addr()),
        };
        match dest {
            IpAddr::V4(v4) if self.chance(0.2) => IpAddr::V6(v4.to_ipv6_mapped()),
            other => other,
        }
    }

    /// First, last, one before, one after, or somewhere inside `entry`.
    fn edge(&mut self, entry: IpNet) -> IpAddr {
        let which = self.rng.random_range(0..5);
        match entry {
            IpNet::V4(n) => {
                let (first, last) = (u32::from(n.network()), u32::from(n.broadcast()));
                let addr = match which {
                    0 => Some(first),
                    1 => Some(last),
                    2 => first.checked_sub(1),
                    3 => last.checked_add(1),
                    _ => Some(u32::from(self.addr_in4(n))),
                };
                IpAddr::V4(Ipv4Addr::from(addr.unwrap_or(first)))
            }
            IpNet::V6(n) => {
                let (first, last) = (u128::from(n.network()), u128::from(n.broadcast()));
                let addr = match which {
                    0 => Some(first),
                    1 => Some(last),
                    2 => first.checked_sub(1),
                    3 => last.checked_add(1),
                    _ => Some(u128::from(self.addr_in6(n))),
                };
                IpAddr::V6(Ipv6Addr::from(addr.unwrap_or(first)))
            }
        }
    }

    /// Whether a connection to `dest` gets an answer when nothing refuses
    /// it: a peer answers the ANSWERED ranges, the sandbox its loopback
    /// and its own addresses.
    pub fn answered(&self, dest: IpAddr) -> bool {
        let dest = as_ipv4_if_mapped(dest);
        // The loopback's broadcast address: TCP cannot connect to it.
        if dest == IpAddr::V4(Ipv4Addr::new(127, 255, 255, 255)) {
            return false;
        }
        if dest.is_loopback() || self.own.contains(&dest) {
            return true;
        }
        match dest {
            IpAddr::V4(v4) => ANSWERED_V4
                .iter()
                .any(|net| parse::<Ipv4Net>(net).contains(&v4)),
            IpAddr::V6(v6) => parse::<Ipv6Net>(ANSWERED_V6).contains(&v6),
        }
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse()
        .unwrap_or_else(|e| panic!("constant {s} does not parse: {e:?}"))
}

fn truncated4(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    Ipv4Net::new(addr, len.min(32))
        .unwrap_or_else(|_| unreachable!("length clamped to 32"))
        .trunc()
}

fn truncated6(addr: Ipv6Addr, len: u8) -> Ipv6Net {
    Ipv6Net::new(addr, len.min(128))
        .unwrap_or_else(|_| unreachable!("length clamped to 128"))
        .trunc()
}

fn mapped(net: Ipv4Net) -> Ipv6Net {
    Ipv6Net::new(net.network().to_ipv6_mapped(), net.prefix_len() + 96)
        .unwrap_or_else(|_| unreachable!("an IPv4 prefix length plus 96 is at most 128"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Vec<IpAddr> {
        vec![
            "192.0.2.2".parse().unwrap(),
            "2001:db8:1::2".parse().unwrap(),
        ]
    }

    #[test]
    fn the_same_seed_gives_the_same_policies() {
        let (mut a, mut b) = (Gen::new(7, own()), Gen::new(7, own()));
        let (da, db) = (a.always_deny(), b.always_deny());
        assert_eq!(da, db);
        for _ in 0..50 {
            let (pa, pb) = (a.policy(&da), b.policy(&db));
            assert_eq!(pa, pb);
            assert_eq!(a.destinations(&pa, &da, 20), b.destinations(&pb, &db, 20));
        }
    }

    #[test]
    fn entries_have_no_host_bits_and_every_form_appears() {
        let mut g = Gen::new(1, own());
        let entries: Vec<IpNet> = (0..2000).map(|_| g.entry()).collect();
        assert!(entries.iter().all(|e| e.trunc() == *e));
        let mapped_block: Ipv6Net = parse("::ffff:0:0/96");
        let is_mapped = |e: &IpNet| matches!(e, IpNet::V6(n) if mapped_block.contains(n));
        assert!(entries.iter().any(|e| matches!(e, IpNet::V4(_))));
        assert!(entries.iter().any(is_mapped));
        assert!(entries
            .iter()
            .any(|e| matches!(e, IpNet::V6(_)) && !is_mapped(e)));
    }

    #[test]
    fn destinations_are_answered_and_include_mapped_and_own() {
        let mut g = Gen::new(3, own());
        let deny = g.always_deny();
        let mut all = Vec::new();
        for _ in 0..100 {
            let p = g.policy(&deny);
            all.extend(g.destinations(&p, &deny, 40));
        }
        assert!(all.iter().all(|d| g.answered(*d)));
        assert!(all
            .iter()
            .any(|d| matches!(d, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())));
        assert!(all.iter().any(|d| own().contains(d)));
        assert!(all.iter().any(|d| d.is_loopback()));
    }
}
