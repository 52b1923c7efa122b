//! Our table in netctl's own namespace, `inet sbx_netctl_host`, present
//! while at least one setup sandbox exists:
//!
//! ```text
//! table inet sbx_netctl_host
//!   chain forward     (hook forward, filter)
//!     iifname "<prefix>*" oifname "<prefix>*" drop      no sandbox reaches another
//!   chain postrouting (hook postrouting, srcnat)         only with an uplink
//!     oifname <uplink> ip  saddr <ipv4_pool> masquerade
//!     oifname <uplink> ip6 saddr <ipv6_pool> masquerade
//! ```
//!
//! Built from the nftables crate's typed schema; the prefix and uplink come
//! from the validated config, never from a request.

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{Expression, MetaKey};
use nftables::schema::{NfListObject, Nftables};
use nftables::stmt::Statement;
use nftables::types::{NfChainType, NfHook};

use super::plan::Layout;
use crate::nft_schema::{self, eq, meta, payload, prefix};

pub const TABLE: &str = "sbx_netctl_host";
const CHAIN_FORWARD: &str = "forward";
const CHAIN_POSTROUTING: &str = "postrouting";
/// `priority filter` and `priority srcnat` as numbers.
const PRIO_FILTER: i32 = 0;
const PRIO_SRCNAT: i32 = 100;

/// The whole table as one transaction that replaces whatever version is
/// there (add, delete, add: the delete always finds a table), so the result
/// is exactly this config's table however the previous one looked.
pub fn full(layout: &Layout) -> Nftables<'static> {
    let mut batch = Batch::new();
    let table = || NfListObject::Table(nft_schema::table(TABLE));
    batch.add(table());
    batch.delete(table());
    batch.add(table());
    batch.add(NfListObject::Chain(nft_schema::base_chain(
        TABLE,
        CHAIN_FORWARD,
        NfHook::Forward,
        NfChainType::Filter,
        PRIO_FILTER,
    )));
    let wildcard = format!("{}*", layout.host_iface_prefix);
    batch.add(nft_schema::rule(
        TABLE,
        CHAIN_FORWARD,
        vec![
            eq(
                meta(MetaKey::Iifname),
                Expression::String(wildcard.clone().into()),
            ),
            eq(meta(MetaKey::Oifname), Expression::String(wildcard.into())),
            Statement::Drop(None),
        ],
    ));
    if let Some(uplink) = &layout.uplink {
        batch.add(NfListObject::Chain(nft_schema::base_chain(
            TABLE,
            CHAIN_POSTROUTING,
            NfHook::Postrouting,
            NfChainType::NAT,
            PRIO_SRCNAT,
        )));
        let pools =
            std::iter::once(IpNet::V4(layout.ipv4_pool)).chain(layout.ipv6_pool.map(IpNet::V6));
        for pool in pools {
            let proto = if matches!(pool, IpNet::V4(_)) {
                "ip"
            } else {
                "ip6"
            };
            batch.add(nft_schema::rule(
                TABLE,
                CHAIN_POSTROUTING,
                vec![
                    eq(
                        meta(MetaKey::Oifname),
                        Expression::String(uplink.clone().into()),
                    ),
                    eq(payload(proto, "saddr"), prefix(pool.trunc())),
                    Statement::Masquerade(None),
                ],
            ));
        }
    }
    batch.to_nftables()
}

/// Removes the table whether or not it is there, in one transaction.
pub fn remove() -> Nftables<'static> {
    nft_schema::remove_table(TABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(extra: &str) -> Layout {
        let c: crate::config::Config = toml::from_str(&format!("[setup]\n{extra}")).unwrap();
        Layout::from_config(&c.setup).unwrap()
    }

    #[test]
    fn forward_isolation_without_uplink() {
        let json = serde_json::to_value(full(&layout(""))).unwrap();
        let cmds = json["nftables"].as_array().unwrap();
        let text = json.to_string();
        assert!(text.contains(r#""right":"sbxh*""#), "{text}");
        assert!(!text.contains("postrouting"), "{text}");
        assert!(!text.contains("masquerade"), "{text}");
        // table (add, delete, add), chain, one rule
        assert_eq!(cmds.len(), 5, "{text}");
        assert_eq!(
            cmds[4]["add"]["rule"]["expr"][2],
            serde_json::json!({"drop": null})
        );
    }

    #[test]
    fn masquerade_both_pools_out_of_the_uplink() {
        let json = serde_json::to_value(full(&layout("uplink = \"up0\""))).unwrap();
        let rules: Vec<&serde_json::Value> = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["chain"] == "postrouting")
            .collect();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0]["expr"],
            serde_json::json!([
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "up0"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": {"prefix": {"addr": "10.200.0.0", "len": 16}}}},
                {"masquerade": null}
            ])
        );
        assert_eq!(
            rules[1]["expr"][1]["match"]["right"],
            serde_json::json!({"prefix": {"addr": "fd00:5b::", "len": 48}})
        );
        let chain = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|c| c["add"].get("chain").filter(|c| c["name"] == "postrouting"))
            .unwrap()
            .clone();
        assert_eq!(chain["type"], "nat");
        assert_eq!(chain["hook"], "postrouting");
        assert_eq!(chain["prio"], 100);
    }

    #[test]
    fn remove_is_add_then_delete() {
        let json = serde_json::to_value(remove()).unwrap();
        assert_eq!(
            json["nftables"],
            serde_json::json!([
                {"add": {"table": {"family": "inet", "name": "sbx_netctl_host"}}},
                {"delete": {"table": {"family": "inet", "name": "sbx_netctl_host"}}}
            ])
        );
    }
}
