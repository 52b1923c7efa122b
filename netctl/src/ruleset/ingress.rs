//! The `inbound` chain: new connections into the sandbox (SPEC 4,
//! "Inbound"). Reached from the input hook, and from the forward hook for
//! traffic leaving toward the microVM's tap.
//!
//! ```text
//! chain inbound:
//!   iif lo accept                                        own loopback (and our own refusals)
//!   icmpv6 neighbour discovery, hop limit 255            IPv6 keeps working
//!   icmpv6 MLD, hop limit 1                              no refused-counter noise
//!   ct state established ct direction reply accept       replies to what the sandbox opened
//!   ct state related accept                              ICMP errors about known connections
//!   tcp dport <port> ip/ip6 saddr @ingress4/6 accept     the proxy's way in (port 9501)
//!   goto refuse_in
//! chain refuse_in: counter inbound_refused, tcp reset, icmpx admin-prohibited
//! ```
//!
//! Like egress, a connection into the sandbox is judged on every packet, so
//! narrowing the allowed sources also cuts connections opened before.

use nftables::expr::{Expression, MetaKey};
use nftables::stmt::Statement;

use super::egress::{hop_limit, is_icmpv6, MLD_HOP_LIMIT, ND_HOP_LIMIT};
use super::sets::{saddr_in, SetKind, Slots};
use super::{Desired, CHAIN_REFUSE_IN};
use crate::nft_schema::{accept, any_of, ct, eq, goto, meta, one_of, payload};

/// Neighbour discovery a sandbox receives: solicitations and adverts for
/// its addresses, router adverts and redirects from its gateway.
const ND_IN: [&str; 4] = [
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-router-advert",
    "nd-redirect",
];
/// Multicast listener discovery (queries from the router, other hosts'
/// reports and dones on the link).
const MLD: [&str; 4] = [
    "mld-listener-query",
    "mld-listener-report",
    "mld-listener-done",
    "mld2-listener-report",
];

pub(super) fn inbound_rules(desired: &Desired, slots: Slots) -> Vec<Vec<Statement<'static>>> {
    // Replies to what the sandbox opened first: they are most of the
    // traffic. Every rule before the refusal accepts, so the order changes
    // no verdict.
    let mut rules = vec![
        vec![
            any_of(ct("state"), &["established"]),
            eq(ct("direction"), Expression::String("reply".into())),
            accept(),
        ],
        vec![
            eq(meta(MetaKey::Iif), Expression::String("lo".into())),
            accept(),
        ],
        vec![
            is_icmpv6(),
            one_of(payload("icmpv6", "type"), &ND_IN),
            hop_limit(ND_HOP_LIMIT),
            accept(),
        ],
        vec![
            is_icmpv6(),
            one_of(payload("icmpv6", "type"), &MLD),
            hop_limit(MLD_HOP_LIMIT),
            accept(),
        ],
        vec![any_of(ct("state"), &["related"]), accept()],
    ];
    for v6 in [false, true] {
        rules.push(vec![
            eq(
                payload("tcp", "dport"),
                Expression::Number(u32::from(desired.ingress_port)),
            ),
            saddr_in(SetKind::Ingress, v6, slots),
            accept(),
        ]);
    }
    if let Some(intercept) = &desired.intercept {
        rules.push(super::answers::redirected(intercept));
    }
    rules.push(vec![goto(CHAIN_REFUSE_IN)]);
    rules
}
