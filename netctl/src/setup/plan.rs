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
    /// How many sandboxes the pools (and interface names) have room for.
    pub slots: u32,
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
        }
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
    }
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
                "ipv6": "fd00:5b:0:3::2/64", "gateway6": "fd00:5b:0:3::1", "tap": null})
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
        ] {
            assert!(layout(&format!("[setup]\n{bad}")).is_err(), "{bad}");
        }
        // 11 + 5 digits (slot 16383) is one too many for IFNAMSIZ; a
        // smaller pool makes the same prefix fit.
        assert!(layout("[setup]\nhost_iface_prefix = \"abcdefghijk\"").is_err());
        assert!(layout(
            "[setup]\nhost_iface_prefix = \"abcdefghijk\"\nipv4_pool = \"10.0.0.0/20\""
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
