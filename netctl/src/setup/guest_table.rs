//! The microVM guest's NAT, `ip sbx_netctl_guest`, inside a sandbox's
//! namespace while it has a tap:
//!
//! ```text
//! table ip sbx_netctl_guest
//!   chain prerouting  (hook prerouting, nat, dstnat)
//!     iifname "eth0" ip daddr <sandbox> tcp dport <agent port> dnat to <guest>
//!   chain postrouting (hook postrouting, nat, srcnat)
//!     oifname "eth0" ip saddr <guest> snat to <sandbox>
//! ```
//!
//! Every guest has the same address (`setup.guest_ipv4`), so a snapshot
//! resumes in any sandbox, while the sandbox keeps its one routable address
//! (the one its process-runtime agent would have): the host reaches the
//! guest's agent at `<sandbox>:<agent port>`, and the guest's traffic
//! leaves as `<sandbox>`. This is the per-namespace NAT of Firecracker's
//! network-namespace snapshot setup.
//!
//! NAT only rewrites addresses: the policy still judges the guest's
//! traffic in `inet sbx_netctl`'s forward hook (`iifname <tap> jump
//! policy`, destinations are untouched by the source NAT) and connections
//! to it (`oifname <tap> jump inbound`, after the destination NAT, which
//! keeps the port and the source). IPv4 only: the guest has no IPv6.

use nftables::batch::Batch;
use nftables::expr::{Expression, MetaKey};
use nftables::schema::{NfListObject, Nftables};
use nftables::stmt::{Statement, NAT};
use nftables::types::{NfChainType, NfFamily, NfHook};

use super::plan::{Guest, Plan};
use crate::nft_schema::{self, eq, meta, payload};

pub const TABLE: &str = "sbx_netctl_guest";
/// IPv4 alone: the guest has no IPv6, and an `ip` table's NAT needs no
/// family on its statements.
pub const FAMILY: NfFamily = NfFamily::IP;
const CHAIN_PREROUTING: &str = "prerouting";
const CHAIN_POSTROUTING: &str = "postrouting";
/// `priority dstnat` and `priority srcnat` as numbers.
const PRIO_DSTNAT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;

/// The whole table for `plan`'s guest as one transaction that replaces
/// whatever version is there (add, delete, add), so a repair restores
/// exactly these rules however the table was changed.
pub fn full(plan: &Plan, guest: &Guest, agent_port: u16) -> Nftables<'static> {
    let sandbox = plan.ipv4.addr().to_string();
    let guest_addr = guest.ipv4.addr().to_string();
    let link = || Expression::String(plan.sandbox_iface.clone().into());
    let mut batch = Batch::new();
    let table = || NfListObject::Table(nft_schema::table_of(FAMILY, TABLE));
    batch.add(table());
    batch.delete(table());
    batch.add(table());
    for (name, hook, prio) in [
        (CHAIN_PREROUTING, NfHook::Prerouting, PRIO_DSTNAT),
        (CHAIN_POSTROUTING, NfHook::Postrouting, PRIO_SRCNAT),
    ] {
        batch.add(NfListObject::Chain(nft_schema::base_chain_of(
            FAMILY,
            TABLE,
            name,
            hook,
            NfChainType::NAT,
            prio,
        )));
    }
    batch.add(nft_schema::rule_of(
        FAMILY,
        TABLE,
        CHAIN_PREROUTING,
        vec![
            eq(meta(MetaKey::Iifname), link()),
            eq(
                payload("ip", "daddr"),
                Expression::String(sandbox.clone().into()),
            ),
            eq(
                payload("tcp", "dport"),
                Expression::Number(u32::from(agent_port)),
            ),
            Statement::DNAT(Some(to(guest_addr.clone()))),
        ],
    ));
    batch.add(nft_schema::rule_of(
        FAMILY,
        TABLE,
        CHAIN_POSTROUTING,
        vec![
            eq(meta(MetaKey::Oifname), link()),
            eq(
                payload("ip", "saddr"),
                Expression::String(guest_addr.into()),
            ),
            Statement::SNAT(Some(to(sandbox))),
        ],
    ));
    batch.to_nftables()
}

/// Removes the table whether or not it is there, in one transaction.
pub fn remove() -> Nftables<'static> {
    nft_schema::remove_table_of(FAMILY, TABLE)
}

/// `to <addr>`, the port unchanged.
fn to(addr: String) -> NAT<'static> {
    NAT {
        addr: Some(Expression::String(addr.into())),
        family: None,
        port: None,
        flags: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::plan::Layout;

    fn plan() -> (Plan, Guest) {
        let c: crate::config::Config = toml::from_str("").unwrap();
        let layout = Layout::from_config(&c.setup).unwrap();
        let plan = layout.plan("vm", 3, true);
        let guest = plan.guest.unwrap();
        (plan, guest)
    }

    #[test]
    fn dnat_the_agent_port_in_and_snat_the_guest_out() {
        let (plan, guest) = plan();
        let json = serde_json::to_value(full(&plan, &guest, 9501)).unwrap();
        assert_eq!(
            json["nftables"],
            serde_json::json!([
                {"add": {"table": {"family": "ip", "name": "sbx_netctl_guest"}}},
                {"delete": {"table": {"family": "ip", "name": "sbx_netctl_guest"}}},
                {"add": {"table": {"family": "ip", "name": "sbx_netctl_guest"}}},
                {"add": {"chain": {"family": "ip", "table": "sbx_netctl_guest", "name": "prerouting",
                    "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}},
                {"add": {"chain": {"family": "ip", "table": "sbx_netctl_guest", "name": "postrouting",
                    "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
                {"add": {"rule": {"family": "ip", "table": "sbx_netctl_guest", "chain": "prerouting",
                    "expr": [
                        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}},
                        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                                   "right": "10.200.0.14"}},
                        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                                   "right": 9501}},
                        {"dnat": {"addr": "10.0.2.2"}}
                    ]}}},
                {"add": {"rule": {"family": "ip", "table": "sbx_netctl_guest", "chain": "postrouting",
                    "expr": [
                        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
                        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                   "right": "10.0.2.2"}},
                        {"snat": {"addr": "10.200.0.14"}}
                    ]}}}
            ])
        );
    }

    #[test]
    fn the_port_is_the_ingress_port() {
        let (plan, guest) = plan();
        let json = serde_json::to_value(full(&plan, &guest, 7000)).unwrap();
        assert_eq!(
            json["nftables"][5]["add"]["rule"]["expr"][2]["match"]["right"],
            7000
        );
    }

    #[test]
    fn remove_is_add_then_delete() {
        let json = serde_json::to_value(remove()).unwrap();
        assert_eq!(
            json["nftables"],
            serde_json::json!([
                {"add": {"table": {"family": "ip", "name": "sbx_netctl_guest"}}},
                {"delete": {"table": {"family": "ip", "name": "sbx_netctl_guest"}}}
            ])
        );
    }
}
