//! The rules behind "domains are enforced through DNS" (SPEC 4): the
//! sandbox's port-53 traffic redirected to netctl's forwarder, the sets its
//! answers fill, and DNS over TLS refused.
//!
//! ```text
//! chain dns_out (nat, output):      udp/tcp dport 53 redirect to :<port>     the sandbox's own processes
//! chain dns_in  (nat, prerouting):  iifname <iface> udp/tcp dport 53 redirect to :<port>   its microVM
//! chain policy (before the fast path):
//!   udp/tcp dport 853 goto refuse
//!   ct mark == <generation> ip daddr @allow_dns4 update @allow_dns4 { ip daddr timeout <hold> } accept
//! chain policy (with the other allow rules):
//!   ip daddr @allow_dns4 update @allow_dns4 { ip daddr timeout <hold> } mark, accept
//! chain policy and chain inbound:
//!   udp/tcp dport <port> ct status dnat accept       queries redirected to the forwarder
//! ```
//!
//! `allow_dns4/6` hold single addresses with a timeout each; the forwarder
//! adds an answer's addresses before it releases the answer (see
//! `crate::elements`). Unlike the other sets they have one copy, are never
//! restaged and never flushed by an apply or a restart: only the kernel
//! expires elements. Traffic refreshes an element (`update`) to the longest
//! life an answer can give, so an expiry never cuts a connection in use.

use std::collections::HashSet;
use std::time::Duration;

use nftables::expr::{Elem, Expression, MetaKey, NamedExpression};
use nftables::schema::{Set, SetFlag, SetType, SetTypeValue};
use nftables::stmt::{self, Statement, NAT};

use super::{CHAIN_REFUSE, TABLE};
use crate::nft_schema::{accept, any_of, ct, eq, goto, meta, one_of, payload, FAMILY};

/// Port 53: what the sandbox asks its resolvers on.
const DNS_PORT: u32 = 53;
/// DNS over TLS (and over QUIC): refused while DNS carries the policy.
const DOT_PORT: u32 = 853;
/// `priority dstnat`.
const PRIO_DSTNAT: i32 = -100;

pub const SET_V4: &str = "allow_dns4";
pub const SET_V6: &str = "allow_dns6";
pub(super) const CHAIN_OUT: &str = "dns_out";
pub(super) const CHAIN_IN: &str = "dns_in";

/// Where the sandbox's DNS goes, when its policy names a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intercept {
    /// The forwarder's port inside the sandbox's namespace.
    pub port: u16,
    /// How long traffic keeps an answer's address alive (max TTL + grace).
    pub hold: Duration,
}

pub(super) fn set_name(v6: bool) -> &'static str {
    if v6 {
        SET_V6
    } else {
        SET_V4
    }
}

pub(super) fn set_decl(v6: bool) -> Set<'static> {
    Set {
        family: FAMILY,
        table: TABLE.into(),
        name: set_name(v6).into(),
        set_type: SetTypeValue::Single(if v6 {
            SetType::Ipv6Addr
        } else {
            SetType::Ipv4Addr
        }),
        flags: Some(HashSet::from([SetFlag::Timeout])),
        ..Set::default()
    }
}

fn udp_or_tcp() -> Statement<'static> {
    one_of(meta(MetaKey::L4proto), &["udp", "tcp"])
}

fn dport(port: u32) -> Statement<'static> {
    eq(payload("th", "dport"), Expression::Number(port))
}

/// `dns_out` and `dns_in`: every query to port 53, whatever the address,
/// goes to the forwarder instead.
pub(super) fn redirect_rules(
    intercept: &Intercept,
    iface: Option<&str>,
) -> (Vec<Vec<Statement<'static>>>, Vec<Vec<Statement<'static>>>) {
    let redirect = || {
        Statement::Redirect(Some(NAT {
            addr: None,
            family: None,
            port: Some(Expression::Number(u32::from(intercept.port))),
            flags: None,
        }))
    };
    let out = vec![vec![udp_or_tcp(), dport(DNS_PORT), redirect()]];
    let inbound = iface
        .map(|iface| {
            vec![vec![
                eq(
                    meta(MetaKey::Iifname),
                    Expression::String(iface.to_owned().into()),
                ),
                udp_or_tcp(),
                dport(DNS_PORT),
                redirect(),
            ]]
        })
        .unwrap_or_default();
    (out, inbound)
}

/// Refuses DNS over TLS (and QUIC): it would bypass the forwarder.
pub(super) fn refuse_dot() -> Vec<Statement<'static>> {
    vec![udp_or_tcp(), dport(DOT_PORT), goto(CHAIN_REFUSE)]
}

/// `ip daddr @allow_dns4 update @allow_dns4 { ip daddr timeout <hold> }`:
/// matches an answer's address and keeps it alive.
pub(super) fn answered(v6: bool, hold: Duration) -> [Statement<'static>; 2] {
    let proto = if v6 { "ip6" } else { "ip" };
    let name = set_name(v6);
    [
        eq(
            payload(proto, "daddr"),
            Expression::String(format!("@{name}").into()),
        ),
        Statement::Set(stmt::Set {
            op: stmt::SetOp::Update,
            elem: Expression::Named(NamedExpression::Elem(Elem {
                val: Box::new(payload(proto, "daddr")),
                timeout: Some(u32::try_from(hold.as_secs()).unwrap_or(u32::MAX)),
                expires: None,
                comment: None,
                counter: None,
            })),
            set: format!("@{name}").into(),
        }),
    ]
}

/// Accepts a fast-path packet to an answer's address and keeps the
/// address alive: a judged connection skips the other sets, but its
/// element must not expire under it.
pub(super) fn fast_path_refresh(
    fast: &[Statement<'static>],
    v6: bool,
    hold: Duration,
) -> Vec<Statement<'static>> {
    // `fast` is [mark match, counter, accept]: the set match and update go
    // between the mark match and the rest.
    let mut rule = Vec::with_capacity(fast.len() + 2);
    let (first, rest) = fast
        .split_first()
        .map_or((None, fast), |(f, r)| (Some(f), r));
    rule.extend(first.cloned());
    rule.extend(answered(v6, hold));
    rule.extend(rest.iter().cloned());
    rule
}

/// Queries redirected to the forwarder: let through on the way out (the
/// output filter still sees the original interface, not lo) and on the way
/// in from the microVM's tap.
pub(super) fn redirected(intercept: &Intercept) -> Vec<Statement<'static>> {
    vec![
        udp_or_tcp(),
        dport(u32::from(intercept.port)),
        any_of(ct("status"), &["dnat"]),
        accept(),
    ]
}

pub(super) const PRIO: i32 = PRIO_DSTNAT;
