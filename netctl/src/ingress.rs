//! Where new connections into a sandbox may come from (SPEC 4, "Inbound"):
//! the `[ingress]` config, and the default when it names no source.
//!
//! In order:
//! 1. `[ingress] allow_from`, when it lists anything, for every sandbox;
//! 2. a sandbox whose network netctl made: the host end of its veth
//!    (`gateway4`, `gateway6`), which is the address the host's proxy
//!    connects from;
//! 3. a namespace the runtime made: its default routes' gateways in the
//!    main table, read when the rules are applied (PUT, PATCH, restart);
//! 4. none of these: no source at all. Every new connection into the
//!    sandbox is refused (fail closed) and a warning is logged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures_util::stream::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::RouteMessageBuilder;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::netns::{self, NetnsError};
use crate::setup::Plan;

/// The agent's port (SPEC 2): the only one open to new connections.
pub const DEFAULT_PORT: u16 = 9501;
/// The kernel's main routing table (RT_TABLE_MAIN), where default routes go.
const MAIN_TABLE: u8 = 254;

/// `[ingress]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// Addresses or CIDRs new connections may come from, for every sandbox.
    /// Empty: each sandbox's own default (see the module documentation).
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// The one TCP port they may go to.
    #[serde(default = "default_port")]
    pub port: u16,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            allow_from: Vec::new(),
            port: DEFAULT_PORT,
        }
    }
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

impl IngressConfig {
    /// `allow_from` parsed with the same strict rules as policies (no host
    /// bits, no domain names), and the port checked.
    pub fn validated(&self) -> Result<Vec<IpNet>, String> {
        if self.port == 0 {
            return Err("ingress.port must be between 1 and 65535".into());
        }
        crate::config::parse_nets("ingress.allow_from", &self.allow_from)
    }
}

/// Where a sandbox's allowed sources came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// `[ingress] allow_from`.
    Config,
    /// The host end of the veth netctl made.
    HostEnd,
    /// The namespace's default gateways, read at apply time.
    Gateways,
    /// Nothing found: every new connection in is refused.
    #[default]
    None,
}

/// What a sandbox's inbound rules let in (part of its view).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbound {
    /// TCP port new connections may go to.
    pub port: u16,
    /// Sources they may come from; empty: none.
    pub allow_from: Vec<IpNet>,
    pub from: SourceKind,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("read routes: {0}")]
    Netlink(String),
}

/// The allowed sources for one sandbox: `configured` (validated
/// `allow_from`) if not empty, else the host end of the link netctl made,
/// else the namespace's default gateways; else none, with a warning.
pub async fn resolve(
    id: &str,
    port: u16,
    configured: &[IpNet],
    plan: Option<&Plan>,
    netns: &Path,
) -> Inbound {
    let (allow_from, from) = if !configured.is_empty() {
        (configured.to_vec(), SourceKind::Config)
    } else if let Some(plan) = plan {
        let mut hosts = vec![IpNet::from(IpAddr::V4(plan.gateway4))];
        hosts.extend(plan.gateway6.map(|gw| IpNet::from(IpAddr::V6(gw))));
        (hosts, SourceKind::HostEnd)
    } else {
        match default_gateways(netns).await {
            Ok(gateways) if !gateways.is_empty() => (
                gateways.into_iter().map(IpNet::from).collect(),
                SourceKind::Gateways,
            ),
            Ok(_) => {
                warn!(sandbox = %id, netns = %netns.display(),
                    "no [ingress] allow_from and no default route in the namespace: every connection into the sandbox is refused");
                (Vec::new(), SourceKind::None)
            }
            Err(e) => {
                warn!(sandbox = %id, netns = %netns.display(), error = %e,
                    "no [ingress] allow_from and the namespace's routes are unreadable: every connection into the sandbox is refused");
                (Vec::new(), SourceKind::None)
            }
        }
    };
    Inbound {
        port,
        allow_from,
        from,
    }
}

/// The gateways of the default routes (IPv4 and IPv6, main table) inside
/// the namespace at `path`, over rtnetlink from a thread that entered it
/// (a netlink socket acts in the namespace it was opened in).
pub async fn default_gateways(path: &Path) -> Result<Vec<IpAddr>, GatewayError> {
    netns::run_in(path, read_default_gateways).await?
}

fn read_default_gateways() -> Result<Vec<IpAddr>, GatewayError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| GatewayError::Netlink(e.to_string()))?;
    runtime.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| GatewayError::Netlink(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let mut gateways = Vec::new();
        for request in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut routes = handle.route().get(request).execute();
            while let Some(route) = routes
                .try_next()
                .await
                .map_err(|e| GatewayError::Netlink(e.to_string()))?
            {
                gateways.extend(default_route_gateways(&route));
            }
        }
        driver.abort();
        gateways.sort();
        gateways.dedup();
        Ok(gateways)
    })
}

/// The gateways of `route` if it is a unicast default route of the main
/// table (one, or each next hop of a multipath route).
fn default_route_gateways(route: &RouteMessage) -> Vec<IpAddr> {
    let header = &route.header;
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(header.table));
    if header.destination_prefix_length != 0
        || header.kind != RouteType::Unicast
        || table != u32::from(MAIN_TABLE)
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Gateway(addr) => out.extend(address(addr)),
            RouteAttribute::MultiPath(hops) => {
                for hop in hops {
                    out.extend(hop.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(addr) => address(addr),
                        _ => None,
                    }));
                }
            }
            _ => {}
        }
    }
    out
}

fn address(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        let c: IngressConfig = toml::from_str("").expect("empty");
        assert_eq!((c.port, c.allow_from.len()), (DEFAULT_PORT, 0));
        let c: IngressConfig =
            toml::from_str("allow_from = [\"192.0.2.10\", \"2001:db8::/64\"]\nport = 9600")
                .expect("valid");
        assert_eq!(c.validated().expect("valid").len(), 2);
        for (text, needle) in [
            ("allow_from = [\"192.0.2.1/24\"]", "allow_from[0]"),
            (
                "allow_from = [\"10.0.0.1\", \"proxy.example\"]",
                "allow_from[1]",
            ),
            ("allow_from = [\"1.2.3\"]", "allow_from[0]"),
            ("port = 0", "ingress.port"),
        ] {
            let c: IngressConfig = toml::from_str(text).expect(text);
            let err = c.validated().expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
        assert!(toml::from_str::<IngressConfig>("allow = []").is_err());
        assert!(toml::from_str::<IngressConfig>("port = 70000").is_err());
    }

    #[test]
    fn only_main_table_default_routes_count() {
        let gw = |dst_len: u8, table: u8| {
            let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(Ipv4Addr::new(192, 0, 2, 1))
                .build();
            route.header.destination_prefix_length = dst_len;
            route.header.table = table;
            route.header.kind = RouteType::Unicast;
            default_route_gateways(&route)
        };
        assert_eq!(gw(0, MAIN_TABLE), vec![IpAddr::from([192, 0, 2, 1])]);
        assert!(gw(24, MAIN_TABLE).is_empty());
        assert!(gw(0, 100).is_empty());
    }
}
