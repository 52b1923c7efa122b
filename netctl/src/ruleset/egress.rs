//! The `policy` chain: what the sandbox sends (output hook, and forwarded
//! traffic arriving from the microVM's tap), in the order of SPEC 4.

use nftables::expr::{Expression, MetaKey};
use nftables::stmt::Statement;

use super::answers;
use super::generation::{self, Generation};
use super::sets::{daddr_in, SetKind, Slots};
use super::{Desired, CHAIN_REFUSE, COUNTER_ACCEPTED};
use crate::nft_schema::{accept, any_of, count, ct, eq, goto, meta, one_of, payload};

const DNS_PORT: u32 = 53;
/// Neighbour discovery is only valid with hop limit 255 (RFC 4861), which
/// also proves it never left the link.
pub(super) const ND_HOP_LIMIT: u32 = 255;
/// MLD messages never leave the link (RFC 3810 section 5).
pub(super) const MLD_HOP_LIMIT: u32 = 1;
/// Where MLDv2 reports go: all MLDv2-capable routers.
const MLD2_ROUTERS: &str = "ff02::16";
/// What a sandbox sends for neighbour discovery.
const ND_OUT: [&str; 3] = [
    "nd-router-solicit",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
];

/// `meta l4proto ipv6-icmp`.
pub(super) fn is_icmpv6() -> Statement<'static> {
    eq(
        meta(MetaKey::L4proto),
        Expression::String("ipv6-icmp".into()),
    )
}

pub(super) fn hop_limit(limit: u32) -> Statement<'static> {
    eq(payload("ip6", "hoplimit"), Expression::Number(limit))
}

pub(super) fn policy_rules(
    desired: &Desired,
    slots: Slots,
    generation: Generation,
) -> Vec<Vec<Statement<'static>>> {
    let bits = desired.mark_bits;
    let judged = || generation::mark(bits, generation);
    // Packets of connections judged under this generation come first: they
    // are nearly all the traffic. Every rule up to the always-deny check
    // accepts, so their order changes no verdict. DNS over TLS is refused
    // after the fast path safely: naming a domain starts a new generation,
    // so a connection to port 853 accepted before is judged again.
    let fast = generation::fast_path(bits, generation);
    let mut rules = Vec::new();
    if let Some(intercept) = &desired.intercept {
        for v6 in [false, true] {
            rules.push(answers::fast_path_refresh(&fast, v6, intercept.hold));
        }
    }
    rules.push(fast);
    rules.extend([
        vec![
            any_of(ct("state"), &["established", "related"]),
            eq(ct("direction"), Expression::String("reply".into())),
            accept(),
        ],
        vec![
            eq(meta(MetaKey::Oif), Expression::String("lo".into())),
            accept(),
        ],
        vec![
            is_icmpv6(),
            one_of(payload("icmpv6", "type"), &ND_OUT),
            hop_limit(ND_HOP_LIMIT),
            accept(),
        ],
        // The kernel reports multicast groups whenever an address is
        // added; refusing those reports only inflates the refused counter.
        // Hop limit 1 and the all-MLDv2-routers group keep them on the link.
        vec![
            is_icmpv6(),
            eq(
                payload("icmpv6", "type"),
                Expression::String("mld2-listener-report".into()),
            ),
            hop_limit(MLD_HOP_LIMIT),
            eq(
                payload("ip6", "daddr"),
                Expression::String(MLD2_ROUTERS.into()),
            ),
            accept(),
        ],
    ]);
    if let Some(intercept) = &desired.intercept {
        rules.push(answers::redirected(intercept));
        rules.push(answers::refuse_dot());
    }
    for v6 in [false, true] {
        rules.push(vec![
            daddr_in(SetKind::Always, v6, slots),
            goto(CHAIN_REFUSE),
        ]);
    }
    if !desired.dns.is_empty() {
        for v6 in [false, true] {
            for proto in ["udp", "tcp"] {
                rules.push(vec![
                    daddr_in(SetKind::Dns, v6, slots),
                    eq(payload(proto, "dport"), Expression::Number(DNS_PORT)),
                    count(COUNTER_ACCEPTED),
                    judged(),
                    accept(),
                ]);
            }
        }
    }
    if let Some(intercept) = &desired.intercept {
        for v6 in [false, true] {
            let mut rule = answers::answered(v6, intercept.hold).to_vec();
            rule.extend([count(COUNTER_ACCEPTED), judged(), accept()]);
            rules.push(rule);
        }
    }
    for v6 in [false, true] {
        rules.push(vec![
            daddr_in(SetKind::Allow, v6, slots),
            count(COUNTER_ACCEPTED),
            judged(),
            accept(),
        ]);
    }
    for v6 in [false, true] {
        rules.push(vec![daddr_in(SetKind::Deny, v6, slots), goto(CHAIN_REFUSE)]);
    }
    if desired.allow_internet_access {
        rules.push(vec![count(COUNTER_ACCEPTED), judged(), accept()]);
    } else {
        rules.push(vec![goto(CHAIN_REFUSE)]);
    }
    rules
}
