//! The pure part of sandbox network setup: which names and addresses a
//! sandbox gets from its slot. Nothing here touches the kernel, so the
//! layout is unit-tested and the same slot always gives the same plan.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use sbx_proto::policy::{validate_iface, MAX_IFACE_LEN};
use serde::{Deserialize, Serialize};

use crate::config::SetupConfig;

/// The name of the veth end inside every sandbox namespace.
pub const SANDBOX_IFACE: &str = "eth0";
/// Each sandbox gets a /30 of the IPv4 pool: network, host end, sandbox,
/// broadcast.
const V4_SLOT_PREFIX: u8 = 30;
/// Each sandbox gets a /64 of the IPv6 pool (the smallest prefix that
/// behaves like an ordinary LAN for every IPv6 stack).
const V6_SLOT_PREFIX: u8 = 64;
/// A bound far above what one host runs, so slot numbers stay small.
const MAX_SLOTS: u32 = 1 << 20;
/// Prefixes are joined with sandbox ids (up to 64 bytes) into file names.
const MAX_NETNS_PREFIX: usize = 64;
/// The guest's network needs two host addresses: the guest and its
/// gateway (the tap).
const GUEST_MAX_PREFIX: u8 = 30;

/// The validated `[setup]` config: everything a plan is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub netns_prefix: String,
    pub netns_dir: PathBuf,
    pub host_iface_prefix: String,
    pub ipv4_pool: Ipv4Net,
    pub ipv6_pool: Option<Ipv6Net>,
    pub uplink: Option<String>,
    pub tap_name: String,
    /// The addressing of a microVM guest behind the tap.
    pub guest: Guest,
    /// How many sandboxes the pools (and interface names) have room for.
    pub slots: u32,
}

/// A microVM guest's addressing behind the tap. It is the same in every
/// sandbox (only the sandbox's namespace sees it; the namespace translates
/// to and from the sandbox's own address), so a guest snapshot taken in one
/// sandbox resumes in any other with its network configuration intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guest {
    /// The guest's address with its prefix: what it puts on its NIC.
    pub ipv4: Ipv4Net,
    /// The tap's address: the guest's default gateway.
    pub gateway4: Ipv4Addr,
}

impl Guest {
    /// The guest at `ipv4`; its gateway is the network's first host
    /// address, or the second when the guest is the first (in a /30: the
    /// other one). Refuses what cannot be a host on a link of its own.
    pub fn new(ipv4: Ipv4Net) -> Result<Self, String> {
        let addr = ipv4.addr();
        if ipv4.prefix_len() > GUEST_MAX_PREFIX {
            return Err(format!(
                "{ipv4}: too small (at most a /{GUEST_MAX_PREFIX}: the guest and its gateway)"
            ));
        }
        if addr == ipv4.network() || addr == ipv4.broadcast() {
            return Err(format!(
                "{ipv4}: {addr} is not a host address of {}",
                ipv4.trunc()
            ));
        }
        if addr.is_loopback() || addr.is_multicast() || addr.is_broadcast() || addr.octets()[0] == 0
        {
            return Err(format!("{ipv4}: not a unicast address"));
        }
        let first = Ipv4Addr::from(u32::from(ipv4.network()) + 1);
        let gateway4 = if addr == first {
            Ipv4Addr::from(u32::from(first) + 1)
        } else {
            first
        };
        Ok(Self { ipv4, gateway4 })
    }

    /// The tap's address with the guest's prefix.
    pub fn tap_ipv4(&self) -> Ipv4Net {
        Ipv4Net::new_assert(self.gateway4, self.ipv4.prefix_len())
    }
}

/// Everything one sandbox's setup consists of, saved with the sandbox
/// before any of it is made, so a crash can always be finished or rolled
/// back from the saved copy (even if the config changed meanwhile). It is
/// also the `setup` section of the sandbox view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Namespace name: `<netns_prefix><id>`.
    pub netns: String,
    /// Where the namespace is bind-mounted: `<netns_dir>/<netns>`.
    pub netns_path: PathBuf,
    pub slot: u32,
    /// Host end of the veth pair, in netctl's own namespace.
    pub host_iface: String,
    /// The other end, inside the sandbox namespace.
    pub sandbox_iface: String,
    /// The sandbox's address with its /30.
    pub ipv4: Ipv4Net,
    /// The host end's address: the sandbox's default gateway.
    pub gateway4: Ipv4Addr,
    pub ipv6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    /// The tap device inside the namespace, if one was asked for.
    pub tap: Option<String>,
    /// With a tap: the guest's addressing behind it. Absent from states
    /// saved before guests had one (they get it on their next repair).
    #[serde(default)]
    pub guest: Option<Guest>,
}

impl Plan {
    /// The host end's address with the slot's prefix.
    pub fn host_ipv4(&self) -> Ipv4Net {
        Ipv4Net::new_assert(self.gateway4, self.ipv4.prefix_len())
    }

    pub fn host_ipv6(&self) -> Option<Ipv6Net> {
        match (self.gateway6, self.ipv6) {
            (Some(gw), Some(net)) => Some(Ipv6Net::new_assert(gw, net.prefix_len())),
            _ => None,
        }
    }
}

impl Layout {
    /// Validates the `[setup]` section: pools are networks with room for
    /// at least one sandbox, names are safe to put in paths and interface
    /// names (and fit IFNAMSIZ with the largest slot).
    pub fn from_config(c: &SetupConfig) -> Result<Self, String> {
        plain_prefix(
            "setup.netns_prefix",
            &c.netns_prefix,
            MAX_NETNS_PREFIX,
            true,
        )?;
        plain_prefix(
            "setup.host_iface_prefix",
            &c.host_iface_prefix,
            MAX_IFACE_LEN - 1,
            false,
        )?;
        let netns_dir = clean_dir(&c.netns_dir)?;

        let ipv4_pool: Ipv4Net = c
            .ipv4_pool
            .parse()
            .map_err(|_| format!("setup.ipv4_pool {:?}: not an IPv4 CIDR", c.ipv4_pool))?;
        if ipv4_pool.network() != ipv4_pool.addr() {
            return Err(format!(
                "setup.ipv4_pool {:?}: host bits set (the network is {})",
                c.ipv4_pool,
                ipv4_pool.trunc()
            ));
        }
        if ipv4_pool.prefix_len() > V4_SLOT_PREFIX {
            return Err(format!(
                "setup.ipv4_pool {:?}: too small (at least a /{V4_SLOT_PREFIX})",
                c.ipv4_pool
            ));
        }
        let mut slots = slot_count(V4_SLOT_PREFIX - ipv4_pool.prefix_len());

        let ipv6_pool = if c.ipv6_pool.is_empty() {
            None
        } else {
            let pool: Ipv6Net = c
                .ipv6_pool
                .parse()
                .map_err(|_| format!("setup.ipv6_pool {:?}: not an IPv6 CIDR", c.ipv6_pool))?;
            if pool.network() != pool.addr() {
                return Err(format!(
                    "setup.ipv6_pool {:?}: host bits set (the network is {})",
                    c.ipv6_pool,
                    pool.trunc()
                ));
            }
            if pool.prefix_len() > V6_SLOT_PREFIX {
                return Err(format!(
                    "setup.ipv6_pool {:?}: too small (at least a /{V6_SLOT_PREFIX})",
                    c.ipv6_pool
                ));
            }
            slots = slots.min(slot_count(V6_SLOT_PREFIX - pool.prefix_len()));
            Some(pool)
        };

        let largest = (slots - 1).to_string();
        if c.host_iface_prefix.len() + largest.len() > MAX_IFACE_LEN {
            return Err(format!(
                "setup.host_iface_prefix {:?}: with slot {largest} the name exceeds {MAX_IFACE_LEN} characters; use a shorter prefix or smaller pools",
                c.host_iface_prefix
            ));
        }

        let uplink = if c.uplink.is_empty() {
            None
        } else {
            validate_iface(&c.uplink).map_err(|e| format!("setup.uplink: {e}"))?;
            if c.uplink.starts_with(&c.host_iface_prefix) {
                return Err(format!(
                    "setup.uplink {:?} starts with host_iface_prefix {:?}",
                    c.uplink, c.host_iface_prefix
                ));
            }
            Some(c.uplink.clone())
        };
        let guest = guest_from_config(&c.guest_ipv4, ipv4_pool)?;
        validate_iface(&c.tap_name).map_err(|e| format!("setup.tap_name: {e}"))?;
        if c.tap_name == SANDBOX_IFACE || c.tap_name == "lo" {
            return Err(format!(
                "setup.tap_name {:?}: taken inside the namespace",
                c.tap_name
            ));
        }
        Ok(Self {
            netns_prefix: c.netns_prefix.clone(),
            netns_dir,
            host_iface_prefix: c.host_iface_prefix.clone(),
            ipv4_pool,
            ipv6_pool,
            uplink,
            tap_name: c.tap_name.clone(),
            guest,
            slots,
        })
    }

    /// The names and addresses of sandbox `id` in `slot`. `id` must be a
    /// valid sandbox id and `slot` below [`Layout::slots`].
    pub fn plan(&self, id: &str, slot: u32, tap: bool) -> Plan {
        let netns = format!("{}{id}", self.netns_prefix);
        let base4 = u32::from(self.ipv4_pool.network()) + (slot << (32 - V4_SLOT_PREFIX));
        let (ipv6, gateway6) = match self.ipv6_pool {
            Some(pool) => {
                let base =
                    u128::from(pool.network()) + (u128::from(slot) << (128 - V6_SLOT_PREFIX));
                (
                    Some(Ipv6Net::new_assert(
                        Ipv6Addr::from(base + 2),
                        V6_SLOT_PREFIX,
                    )),
                    Some(Ipv6Addr::from(base + 1)),
                )
            }
            None => (None, None),
        };
        Plan {
            netns_path: self.netns_dir.join(&netns),
            netns,
            slot,
            host_iface: format!("{}{slot}", self.host_iface_prefix),
            sandbox_iface: SANDBOX_IFACE.to_owned(),
            ipv4: Ipv4Net::new_assert(Ipv4Addr::from(base4 + 2), V4_SLOT_PREFIX),
            gateway4: Ipv4Addr::from(base4 + 1),
            ipv6,
            gateway6,
            tap: tap.then(|| self.tap_name.clone()),
            guest: tap.then_some(self.guest),
        }
    }

    /// Gives a plan with a tap its guest addressing (keeping the one it
    /// has, so a running guest never sees it change), and one without a
    /// tap none: for a PUT that toggles the tap, and for plans saved before
    /// guests had addressing.
    pub fn complete_guest(&self, plan: &mut Plan) {
        plan.guest = match plan.tap {
            Some(_) => Some(plan.guest.unwrap_or(self.guest)),
            None => None,
        };
    }

    /// Whether a saved plan is one this daemon may act on: its names carry
    /// our prefixes and its path lies in our namespace directory, so a
    /// tampered or foreign state file cannot make netctl unmount or delete
    /// something that is not ours.
    pub fn owns(&self, id: &str, plan: &Plan) -> bool {
        plan.netns == format!("{}{id}", self.netns_prefix)
            && plan.netns_path == self.netns_dir.join(&plan.netns)
            && plan.slot < self.slots
            && plan.host_iface == format!("{}{}", self.host_iface_prefix, plan.slot)
            && plan.sandbox_iface == SANDBOX_IFACE
            && plan
                .tap
                .as_deref()
                .is_none_or(|t| validate_iface(t).is_ok() && t != SANDBOX_IFACE && t != "lo")
            && plan.guest.is_none_or(|g| {
                plan.tap.is_some() && Guest::new(g.ipv4).is_ok_and(|valid| valid == g)
            })
    }
}

/// `setup.guest_ipv4`: a guest address that is a host of its network, and
/// a network apart from the pool (a sandbox's own address must never be
/// one the namespace routes to the tap).
fn guest_from_config(value: &str, pool: Ipv4Net) -> Result<Guest, String> {
    let net: Ipv4Net = value
        .parse()
        .map_err(|_| format!("setup.guest_ipv4 {value:?}: not an IPv4 CIDR"))?;
    let guest = Guest::new(net).map_err(|e| format!("setup.guest_ipv4 {e}"))?;
    if pool.contains(&net.network()) || net.contains(&pool.network()) {
        return Err(format!(
            "setup.guest_ipv4 {value:?}: overlaps setup.ipv4_pool {pool}"
        ));
    }
    Ok(guest)
}

fn slot_count(bits: u8) -> u32 {
    if u32::from(bits) >= MAX_SLOTS.trailing_zeros() {
        MAX_SLOTS
    } else {
        1 << bits
    }
}

/// Letters, digits, '-', '_' and '.', not starting with '.' or '-' (a
/// prefix ends up at the start of a file name and an interface name).
fn plain_prefix(key: &str, value: &str, max: usize, may_be_empty: bool) -> Result<(), String> {
    let ok = (may_be_empty || !value.is_empty())
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key} {value:?}: use up to {max} letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// An absolute directory without `.`/`..` parts: namespaces are mounted
/// and unlinked under it, so it must mean exactly what it says.
fn clean_dir(dir: &Path) -> Result<PathBuf, String> {
    let ok = dir.is_absolute()
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && dir.components().count() > 1
        && dir.to_str().is_some_and(|s| !s.contains(['\n', '\0']));
    if ok {
        Ok(dir.components().collect())
    } else {
        Err(format!(
            "setup.netns_dir {:?}: expected an absolute directory without '.' or '..'",
            dir.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(toml_text: &str) -> Result<Layout, String> {
        let c: crate::config::Config = toml::from_str(toml_text).unwrap();
        Layout::from_config(&c.setup)
    }

    #[test]
    fn defaults_match_the_documented_example() {
        let l = layout("").unwrap();
        assert_eq!(l.slots, 1 << 14);
        let p = l.plan("abc", 3, false);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"netns": "sbx-abc", "netns_path": "/run/netns/sbx-abc", "slot": 3,
                "host_iface": "sbxh3", "sandbox_iface": "eth0",
                "ipv4": "10.200.0.14/30", "gateway4": "10.200.0.13",
                "ipv6": "fd00:5b:0:3::2/64", "gateway6": "fd00:5b:0:3::1", "tap": null,
                "guest": null})
        );
        assert_eq!(p.host_ipv4().to_string(), "10.200.0.13/30");
        assert_eq!(p.host_ipv6().unwrap().to_string(), "fd00:5b:0:3::1/64");
        assert!(l.owns("abc", &p));
        assert!(!l.owns("abd", &p));
        let mut foreign = p.clone();
        foreign.netns_path = "/etc/passwd".into();
        assert!(!l.owns("abc", &foreign));
    }

    #[test]
    fn slots_tile_the_pools() {
        let l =
            layout("[setup]\nipv4_pool = \"192.0.2.0/24\"\nipv6_pool = \"\"\ntap_name = \"vm0\"")
                .unwrap();
        assert_eq!(l.slots, 64);
        let first = l.plan("a", 0, true);
        assert_eq!(first.ipv4.to_string(), "192.0.2.2/30");
        assert_eq!(first.gateway4.to_string(), "192.0.2.1");
        assert_eq!((first.ipv6, first.gateway6), (None, None));
        assert_eq!(first.tap.as_deref(), Some("vm0"));
        let last = l.plan("a", 63, false);
        assert_eq!(last.ipv4.to_string(), "192.0.2.254/30");
        assert_eq!(last.gateway4.to_string(), "192.0.2.253");
        // The IPv6 pool can be the tighter one.
        let l = layout("[setup]\nipv6_pool = \"fd00:1:2:4::/62\"").unwrap();
        assert_eq!(l.slots, 4);
        assert_eq!(
            l.plan("a", 3, false).ipv6.unwrap().to_string(),
            "fd00:1:2:7::2/64"
        );
    }

    #[test]
    fn a_tap_plan_has_the_guest_addressing_of_every_sandbox() {
        let l = layout("").unwrap();
        let (a, b) = (l.plan("a", 0, true), l.plan("b", 9, true));
        let guest = a.guest.unwrap();
        assert_eq!(Some(guest), b.guest);
        assert_eq!(
            serde_json::to_value(guest).unwrap(),
            serde_json::json!({"ipv4": "10.0.2.2/30", "gateway4": "10.0.2.1"})
        );
        assert_eq!(guest.tap_ipv4().to_string(), "10.0.2.1/30");
        assert!(l.owns("a", &a));
        // A guest that is the first host gets the second as its gateway;
        // a wider network keeps the first.
        let first = layout("[setup]\nguest_ipv4 = \"192.168.7.1/30\"").unwrap();
        assert_eq!(first.guest.gateway4.to_string(), "192.168.7.2");
        let wide = layout("[setup]\nguest_ipv4 = \"172.16.0.15/24\"").unwrap();
        assert_eq!(wide.guest.tap_ipv4().to_string(), "172.16.0.1/24");
        // Toggling the tap adds and drops the guest, keeping a saved one.
        let mut p = l.plan("a", 0, false);
        assert_eq!(p.guest, None);
        p.tap = Some("tap0".into());
        first.complete_guest(&mut p);
        assert_eq!(p.guest, Some(first.guest));
        l.complete_guest(&mut p);
        assert_eq!(p.guest, Some(first.guest), "a saved guest is kept");
        p.tap = None;
        l.complete_guest(&mut p);
        assert_eq!(p.guest, None);
        // A guest without a tap, or inconsistent, is not ours to act on.
        let mut odd = l.plan("a", 0, false);
        odd.guest = Some(guest);
        assert!(!l.owns("a", &odd));
        let mut odd = a.clone();
        odd.guest = Some(Guest {
            gateway4: Ipv4Addr::new(10, 0, 2, 2),
            ..guest
        });
        assert!(!l.owns("a", &odd));
    }

    #[test]
    fn a_plan_saved_before_guests_still_loads() {
        let saved = r#"{"netns": "sbx-abc", "netns_path": "/run/netns/sbx-abc", "slot": 3,
            "host_iface": "sbxh3", "sandbox_iface": "eth0",
            "ipv4": "10.200.0.14/30", "gateway4": "10.200.0.13",
            "ipv6": null, "gateway6": null, "tap": "tap0"}"#;
        let mut plan: Plan = serde_json::from_str(saved).unwrap();
        assert_eq!(plan.guest, None);
        let l = layout("").unwrap();
        assert!(l.owns("abc", &plan));
        l.complete_guest(&mut plan);
        assert_eq!(plan.guest, Some(l.guest));
        assert!(serde_json::from_str::<Plan>(&saved.replace("\"tap\"", "\"tapp\"")).is_err());
    }

    #[test]
    fn bad_config_is_refused() {
        for bad in [
            "ipv4_pool = \"10.200.0.1/16\"",
            "ipv4_pool = \"10.200.0.0/31\"",
            "ipv4_pool = \"fd00::/16\"",
            "ipv6_pool = \"fd00::1/48\"",
            "ipv6_pool = \"fd00::/65\"",
            "ipv6_pool = \"10.0.0.0/8\"",
            "uplink = \"eth0; drop\"",
            "uplink = \"sbxh0\"",
            "tap_name = \"eth0\"",
            "tap_name = \"\"",
            "netns_prefix = \"../x\"",
            "netns_prefix = \".x\"",
            "host_iface_prefix = \"\"",
            "host_iface_prefix = \"a*\"",
            "host_iface_prefix = \"abcdefghijklmn\"",
            "netns_dir = \"run/netns\"",
            "netns_dir = \"/run/../etc\"",
            "netns_dir = \"/\"",
            "guest_ipv4 = \"10.0.2.2\"",
            "guest_ipv4 = \"10.0.2.0/30\"",
            "guest_ipv4 = \"10.0.2.3/30\"",
            "guest_ipv4 = \"10.0.2.2/31\"",
            "guest_ipv4 = \"fd00::2/64\"",
            "guest_ipv4 = \"127.0.0.2/30\"",
            "guest_ipv4 = \"10.200.7.2/30\"",
            "guest_ipv4 = \"10.0.0.2/8\"",
            "guest_ipv4 = \"\"",
        ] {
            assert!(layout(&format!("[setup]\n{bad}")).is_err(), "{bad}");
        }
        // 11 + 5 digits (slot 16383) is one too many for IFNAMSIZ; a
        // smaller pool makes the same prefix fit.
        assert!(layout("[setup]\nhost_iface_prefix = \"abcdefghijk\"").is_err());
        assert!(layout(
            "[setup]\nhost_iface_prefix = \"abcdefghijk\"\nipv4_pool = \"10.200.0.0/20\""
        )
        .is_ok());
        assert_eq!(
            layout("[setup]\nnetns_dir = \"/run//netns/\"")
                .unwrap()
                .netns_dir,
            PathBuf::from("/run/netns")
        );
    }
}
