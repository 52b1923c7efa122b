//! The pure policy → nftables translation. Nothing here touches the kernel,
//! so the exact rules can be unit-tested.
//!
//! Layout of our one table per sandbox netns:
//!
//! ```text
//! table inet sbx_netctl
//!   chain output  (hook output, filter)  -> jump policy
//!   chain forward (hook forward, filter) -> iifname <iface> jump policy
//!   chain policy:
//!     oif lo accept                                  own loopback
//!     icmpv6 neighbour discovery, hop limit 255      IPv6 keeps working
//!     icmpv6 MLDv2 report to ff02::16, hop limit 1   no refused-counter noise
//!     ct state established,related ct direction reply accept
//!     ip/ip6 daddr @always4/6   goto refuse
//!     udp/tcp dport 53 to @dns4/6 accept             only if allow_out names a domain
//!     ip/ip6 daddr @allow4/6    accept
//!     ip/ip6 daddr @deny4/6     goto refuse
//!     accept | goto refuse                           allow_internet_access
//!   chain refuse: counter, tcp reset, icmpx admin-prohibited
//! ```
//!
//! Every set exists as two copies (`deny4_0`, `deny4_1`) and the rules name
//! one; see [`Change`] for why a change fills the other copy first.
//!
//! Packets the sandbox originates are judged every time (interval-set
//! lookups are O(log n)), so a tightened policy also cuts connections that
//! were opened earlier. Only replies on connections opened *toward* the
//! sandbox skip the sets.

use std::borrow::Cow;
use std::collections::HashSet;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nftables::batch::Batch;

use crate::nft_schema::{self, eq, meta, payload, prefix, FAMILY};
use nftables::expr::{CTDir, Expression, MetaKey, NamedExpression, SetItem, CT};
use nftables::schema::{
    Counter, FlushObject, NfCmd, NfListObject, Nftables, Set, SetFlag, SetType, SetTypeValue,
};
use nftables::stmt::{self, JumpTarget, Match, Operator, Reject, RejectType, Statement};
use nftables::types::{NfChainType, NfHook, RejectCode};

/// Our table's name in every sandbox netns.
pub const TABLE: &str = "sbx_netctl";
/// `priority filter` as a number.
const PRIO_FILTER: i32 = 0;

const CHAIN_OUTPUT: &str = "output";
const CHAIN_FORWARD: &str = "forward";
const CHAIN_POLICY: &str = "policy";
const CHAIN_REFUSE: &str = "refuse";

pub const COUNTER_ACCEPTED: &str = "accepted";
pub const COUNTER_REFUSED: &str = "refused";

const DNS_PORT: u32 = 53;
/// Neighbour discovery is only valid with hop limit 255 (RFC 4861), which
/// also proves it never left the link.
const ND_HOP_LIMIT: u32 = 255;
/// MLD messages never leave the link (RFC 3810 section 5).
const MLD_HOP_LIMIT: u32 = 1;
/// Where MLDv2 reports go: all MLDv2-capable routers.
const MLD2_ROUTERS: &str = "ff02::16";

/// Which address families a set holds, and under which name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    Always,
    Dns,
    Allow,
    Deny,
}

impl SetKind {
    pub const ALL: [SetKind; 4] = [SetKind::Always, SetKind::Dns, SetKind::Allow, SetKind::Deny];

    fn name(self, v6: bool) -> &'static str {
        match (self, v6) {
            (SetKind::Always, false) => "always4",
            (SetKind::Always, true) => "always6",
            (SetKind::Dns, false) => "dns4",
            (SetKind::Dns, true) => "dns6",
            (SetKind::Allow, false) => "allow4",
            (SetKind::Allow, true) => "allow6",
            (SetKind::Deny, false) => "deny4",
            (SetKind::Deny, true) => "deny6",
        }
    }
}

/// How a refused packet fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Refusal {
    /// TCP reset, ICMP administratively prohibited: fails fast.
    #[default]
    Reject,
    /// Silent drop: the sender times out.
    Drop,
}

/// Merged, non-overlapping contents of one IPv4 and one IPv6 set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefixes {
    pub v4: Vec<Ipv4Net>,
    pub v6: Vec<Ipv6Net>,
}

impl Prefixes {
    /// Folds IPv4-mapped IPv6 into IPv4 and merges overlapping or adjacent
    /// prefixes: nftables refuses overlapping intervals in one set.
    pub fn merge<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match sbx_proto::policy::fold_mapped(*net) {
                IpNet::V4(n) => v4.push(n),
                IpNet::V6(n) => v6.push(n),
            }
        }
        Self {
            v4: Ipv4Net::aggregate(&v4),
            v6: Ipv6Net::aggregate(&v6),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything the rules depend on, already resolved to prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub iface: Option<String>,
    pub allow_internet_access: bool,
    pub refusal: Refusal,
    pub always: Prefixes,
    pub dns: Prefixes,
    pub allow: Prefixes,
    pub deny: Prefixes,
}

impl Desired {
    fn set(&self, kind: SetKind) -> &Prefixes {
        match kind {
            SetKind::Always => &self.always,
            SetKind::Dns => &self.dns,
            SetKind::Allow => &self.allow,
            SetKind::Deny => &self.deny,
        }
    }
}

/// Which of its two copies (slot 0 or 1) each of the eight sets is, as
/// far as the rules are concerned. Rules name a set by slot, so swapping
/// the rules is what switches a set's contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slots(u8);

impl Slots {
    fn bit(kind: SetKind, v6: bool) -> u8 {
        let index = SetKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        1 << (index * 2 + usize::from(v6))
    }

    pub fn get(self, kind: SetKind, v6: bool) -> u8 {
        u8::from(self.0 & Self::bit(kind, v6) != 0)
    }

    fn flipped(self, kind: SetKind, v6: bool) -> Self {
        Self(self.0 ^ Self::bit(kind, v6))
    }
}

/// What one apply left in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub desired: Desired,
    pub slots: Slots,
    /// Whether the kernel is known to hold exactly this: rules pointing at
    /// `slots` and no spare copies (a completed switch deletes them).
    /// Cleared before every change and left cleared if it fails or its
    /// request is dropped half-way, so the next change reads the kernel
    /// instead of trusting a guess about which copy is live or empty.
    pub trusted: bool,
}

impl Applied {
    pub fn distrust(&mut self) {
        self.trusted = false;
    }
}

/// One change as two transactions.
///
/// Set contents are never changed in the transaction that makes rules
/// depend on them: on some kernels a packet judged while a commit is being
/// finalised can miss an element added or re-added in that commit (seen
/// here: a denied IPv6 address let through while a policy switched from
/// allowlist to denylist). So `stage` fills the slot no rule points at,
/// and `switch` then swaps the rules over to it in one atomic step and
/// drops the copies no rule points at any more.
pub struct Change {
    pub stage: Option<Nftables<'static>>,
    pub switch: Nftables<'static>,
    /// What the rules point at once `switch` is committed.
    pub slots: Slots,
}

/// From a state we committed ourselves (`old.trusted`): only sets whose
/// contents differ are restaged, into spare copies that must not exist yet
/// (`create`, so a leftover fails the stage and the caller rebuilds rather
/// than merging into it). The same state again restages every set: a repair
/// if someone changed our table, and cheap, since creating a set waits for
/// nothing.
pub fn update(old: &Applied, new: &Desired) -> Change {
    let same = &old.desired == new;
    change(old.slots, Spares::Absent, new, |kind: SetKind, v6: bool| {
        let (before, after) = (old.desired.set(kind), new.set(kind));
        same || if v6 {
            before.v6 != after.v6
        } else {
            before.v4 != after.v4
        }
    })
}

/// From a state we do not know: every set is staged into the slot the
/// rules in the kernel do not point at (`referenced`, read from there).
pub fn rebuild(referenced: Slots, new: &Desired) -> Change {
    change(referenced, Spares::Unknown, new, |_, _| true)
}

/// What may be in the copies a stage fills.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spares {
    /// Nothing: create them, failing if one exists. A flush would make the
    /// kernel wait for a grace period (~15 ms here) even when empty.
    Absent,
    /// Leftovers of an interrupted change: flush them. Nothing points at
    /// a spare copy, so that is safe.
    Unknown,
}

fn change(
    current: Slots,
    spares: Spares,
    desired: &Desired,
    restage: impl Fn(SetKind, bool) -> bool,
) -> Change {
    let mut slots = current;
    let mut stage = Batch::new();
    let mut staged = false;
    for kind in SetKind::ALL {
        for v6 in [false, true] {
            if restage(kind, v6) {
                slots = slots.flipped(kind, v6);
                if !staged {
                    stage.add(NfListObject::Table(nft_schema::table(TABLE)));
                    staged = true;
                }
                let decl = set_decl(kind, v6, slots.get(kind, v6));
                match spares {
                    Spares::Absent => {
                        stage.add_cmd(NfCmd::Create(NfListObject::Set(Box::new(decl))));
                    }
                    Spares::Unknown => {
                        stage.add(NfListObject::Set(Box::new(decl.clone())));
                        stage.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(decl))));
                    }
                }
                add_elements(&mut stage, kind, v6, slots.get(kind, v6), desired.set(kind));
            }
        }
    }
    Change {
        stage: staged.then(|| stage.to_nftables()),
        switch: switch(desired, slots),
        slots,
    }
}

/// The rules, pointing at `slots`; named counters are added (a no-op when
/// they exist, so they keep counting). Sets are not declared here: if one
/// the rules need is missing the transaction fails whole instead of
/// matching against an empty set.
fn switch(desired: &Desired, slots: Slots) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(nft_schema::table(TABLE)));
    for name in [COUNTER_ACCEPTED, COUNTER_REFUSED] {
        batch.add(NfListObject::Counter(Counter {
            family: FAMILY,
            table: TABLE.into(),
            name: name.into(),
            handle: None,
            packets: None,
            bytes: None,
        }));
    }
    for (name, hook) in [
        (CHAIN_OUTPUT, NfHook::Output),
        (CHAIN_FORWARD, NfHook::Forward),
    ] {
        batch.add(NfListObject::Chain(nft_schema::base_chain(
            TABLE,
            name,
            hook,
            NfChainType::Filter,
            PRIO_FILTER,
        )));
    }
    batch.add(NfListObject::Chain(nft_schema::chain(TABLE, CHAIN_POLICY)));
    batch.add(NfListObject::Chain(nft_schema::chain(TABLE, CHAIN_REFUSE)));
    for name in [CHAIN_OUTPUT, CHAIN_FORWARD, CHAIN_POLICY, CHAIN_REFUSE] {
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(nft_schema::chain(
            TABLE, name,
        ))));
    }
    batch.add(nft_schema::rule(
        TABLE,
        CHAIN_OUTPUT,
        vec![jump(CHAIN_POLICY)],
    ));
    if let Some(iface) = &desired.iface {
        batch.add(nft_schema::rule(
            TABLE,
            CHAIN_FORWARD,
            vec![
                eq(
                    meta(MetaKey::Iifname),
                    Expression::String(iface.clone().into()),
                ),
                jump(CHAIN_POLICY),
            ],
        ));
    }
    for r in policy_rules(desired, slots) {
        batch.add(nft_schema::rule(TABLE, CHAIN_POLICY, r));
    }
    for r in refuse_rules(desired.refusal) {
        batch.add(nft_schema::rule(TABLE, CHAIN_REFUSE, r));
    }
    // The copies no rule points at any more (adding first makes the delete
    // succeed whether or not the copy is there).
    for kind in SetKind::ALL {
        for v6 in [false, true] {
            let unused = set_decl(kind, v6, 1 - slots.get(kind, v6));
            batch.add(NfListObject::Set(Box::new(unused.clone())));
            batch.delete(NfListObject::Set(Box::new(unused)));
        }
    }
    batch.to_nftables()
}

/// Which copy of each set the rules point at, from `nft -j list chain
/// inet sbx_netctl policy` (the only chain that names sets). A set no rule
/// names counts as slot 0. If both copies of one set are named, someone
/// rewrote our rules and neither copy can be refilled without a packet
/// seeing it change: that is an error, and the rules in force stay.
pub fn referenced(listing: &str) -> Result<Slots, String> {
    let value: serde_json::Value =
        serde_json::from_str(listing).map_err(|e| format!("nft listing: {e}"))?;
    let mut named = HashSet::new();
    collect_set_refs(&value, &mut named);
    let mut slots = Slots::default();
    for kind in SetKind::ALL {
        for v6 in [false, true] {
            let [zero, one] =
                [0, 1].map(|slot| named.contains(&format!("@{}", set_name(kind, v6, slot))));
            if zero && one {
                return Err(format!(
                    "our policy chain names both {0}_0 and {0}_1: table inet {TABLE} was changed by someone else; delete it to let netctl rebuild it",
                    kind.name(v6)
                ));
            }
            if one {
                slots = slots.flipped(kind, v6);
            }
        }
    }
    Ok(slots)
}

/// Set references are JSON strings starting with `@` in rule expressions;
/// comments are never expressions, so only exact matches count.
fn collect_set_refs(value: &serde_json::Value, out: &mut HashSet<String>) {
    match value {
        serde_json::Value::String(s) if s.starts_with('@') => {
            out.insert(s.clone());
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_set_refs(v, out)),
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(k, _)| k.as_str() != "comment")
            .for_each(|(_, v)| collect_set_refs(v, out)),
        _ => {}
    }
}

/// The command that lists our policy chain (read by [`referenced`]).
pub fn list_policy() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add_cmd(NfCmd::List(NfListObject::Chain(nft_schema::chain(
        TABLE,
        CHAIN_POLICY,
    ))));
    batch.to_nftables()
}

/// Removes our table. Adding it first makes the delete succeed whether or
/// not the table is there, in one transaction.
pub fn remove() -> Nftables<'static> {
    nft_schema::remove_table(TABLE)
}

fn set_name(kind: SetKind, v6: bool, slot: u8) -> String {
    format!("{}_{slot}", kind.name(v6))
}

fn add_elements(
    batch: &mut Batch<'static>,
    kind: SetKind,
    v6: bool,
    slot: u8,
    prefixes: &Prefixes,
) {
    let elems: Vec<Expression<'static>> = if v6 {
        prefixes.v6.iter().map(|n| prefix(IpNet::V6(*n))).collect()
    } else {
        prefixes.v4.iter().map(|n| prefix(IpNet::V4(*n))).collect()
    };
    if !elems.is_empty() {
        batch.add(NfListObject::Element(nftables::schema::Element {
            family: FAMILY,
            table: TABLE.into(),
            name: set_name(kind, v6, slot).into(),
            elem: Cow::Owned(elems),
        }));
    }
}

fn policy_rules(desired: &Desired, slots: Slots) -> Vec<Vec<Statement<'static>>> {
    let mut rules = vec![
        vec![
            eq(meta(MetaKey::Oif), Expression::String("lo".into())),
            accept(),
        ],
        vec![
            eq(
                meta(MetaKey::L4proto),
                Expression::String("ipv6-icmp".into()),
            ),
            Statement::Match(Match {
                left: payload("icmpv6", "type"),
                right: Expression::Named(NamedExpression::Set(vec![
                    SetItem::Element(Expression::String("nd-router-solicit".into())),
                    SetItem::Element(Expression::String("nd-neighbor-solicit".into())),
                    SetItem::Element(Expression::String("nd-neighbor-advert".into())),
                ])),
                op: Operator::EQ,
            }),
            eq(payload("ip6", "hoplimit"), Expression::Number(ND_HOP_LIMIT)),
            accept(),
        ],
        // The kernel reports multicast groups whenever an address is
        // added; refusing those reports only inflates the refused counter.
        // Hop limit 1 and the all-MLDv2-routers group keep them on the link.
        vec![
            eq(
                meta(MetaKey::L4proto),
                Expression::String("ipv6-icmp".into()),
            ),
            eq(
                payload("icmpv6", "type"),
                Expression::String("mld2-listener-report".into()),
            ),
            eq(
                payload("ip6", "hoplimit"),
                Expression::Number(MLD_HOP_LIMIT),
            ),
            eq(
                payload("ip6", "daddr"),
                Expression::String(MLD2_ROUTERS.into()),
            ),
            accept(),
        ],
        vec![
            Statement::Match(Match {
                left: ct("state", None),
                right: Expression::List(vec![
                    Expression::String("established".into()),
                    Expression::String("related".into()),
                ]),
                op: Operator::IN,
            }),
            eq(ct("direction", None), Expression::String("reply".into())),
            accept(),
        ],
    ];
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
                    accept(),
                ]);
            }
        }
    }
    for v6 in [false, true] {
        rules.push(vec![
            daddr_in(SetKind::Allow, v6, slots),
            count(COUNTER_ACCEPTED),
            accept(),
        ]);
    }
    for v6 in [false, true] {
        rules.push(vec![daddr_in(SetKind::Deny, v6, slots), goto(CHAIN_REFUSE)]);
    }
    if desired.allow_internet_access {
        rules.push(vec![count(COUNTER_ACCEPTED), accept()]);
    } else {
        rules.push(vec![goto(CHAIN_REFUSE)]);
    }
    rules
}

fn refuse_rules(refusal: Refusal) -> Vec<Vec<Statement<'static>>> {
    match refusal {
        Refusal::Drop => vec![vec![count(COUNTER_REFUSED), Statement::Drop(None)]],
        Refusal::Reject => vec![
            vec![count(COUNTER_REFUSED)],
            vec![
                eq(meta(MetaKey::L4proto), Expression::String("tcp".into())),
                Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))),
            ],
            vec![Statement::Reject(Some(Reject::new(
                Some(RejectType::ICMPX),
                Some(RejectCode::AdminProhibited),
            )))],
        ],
    }
}

fn set_decl(kind: SetKind, v6: bool, slot: u8) -> Set<'static> {
    Set {
        family: FAMILY,
        table: TABLE.into(),
        name: set_name(kind, v6, slot).into(),
        set_type: SetTypeValue::Single(if v6 {
            SetType::Ipv6Addr
        } else {
            SetType::Ipv4Addr
        }),
        flags: Some(HashSet::from([SetFlag::Interval])),
        ..Set::default()
    }
}

fn ct(key: &'static str, dir: Option<CTDir>) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir,
    }))
}

fn daddr_in(kind: SetKind, v6: bool, slots: Slots) -> Statement<'static> {
    let proto = if v6 { "ip6" } else { "ip" };
    eq(
        payload(proto, "daddr"),
        Expression::String(format!("@{}", set_name(kind, v6, slots.get(kind, v6))).into()),
    )
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn jump(target: &'static str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: target.into(),
    })
}

fn goto(target: &'static str) -> Statement<'static> {
    Statement::Goto(JumpTarget {
        target: target.into(),
    })
}

fn count(name: &'static str) -> Statement<'static> {
    Statement::Counter(stmt::Counter::Named(name.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Desired {
        Desired {
            iface: None,
            allow_internet_access: true,
            refusal: Refusal::Reject,
            always: Prefixes::merge(&[
                "169.254.0.0/16".parse().unwrap(),
                "fe80::/10".parse().unwrap(),
            ]),
            dns: Prefixes::default(),
            allow: Prefixes::default(),
            deny: Prefixes::default(),
        }
    }

    #[test]
    fn merges_overlapping_and_adjacent_prefixes() {
        let nets: Vec<IpNet> = [
            "192.0.2.0/25",
            "192.0.2.128/25",
            "192.0.2.7/32",
            "198.51.100.0/24",
            "198.51.100.9/32",
            "::ffff:203.0.113.5/128",
            "2001:db8::/33",
            "2001:db8:8000::/33",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let merged = Prefixes::merge(&nets);
        let v4: Vec<String> = merged.v4.iter().map(|n| n.to_string()).collect();
        let v6: Vec<String> = merged.v6.iter().map(|n| n.to_string()).collect();
        assert_eq!(v4, ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.5/32"]);
        assert_eq!(v6, ["2001:db8::/32"]);
    }

    fn fresh(d: &Desired) -> Change {
        rebuild(Slots::default(), d)
    }

    /// What a first apply of `desired()` leaves.
    fn applied_fresh() -> Applied {
        Applied {
            desired: desired(),
            slots: fresh(&desired()).slots,
            trusted: true,
        }
    }

    fn json(n: &Nftables) -> serde_json::Value {
        serde_json::to_value(n).unwrap()
    }

    fn rules_of(n: &Nftables, chain: &str) -> Vec<serde_json::Value> {
        json(n)["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("add").and_then(|a| a.get("rule")))
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].clone())
            .collect()
    }

    #[test]
    fn order_follows_the_spec() {
        let mut d = desired();
        d.allow_internet_access = false;
        let n = fresh(&d).switch;
        let rules = rules_of(&n, CHAIN_POLICY);
        let text: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        let pos = |needle: &str| {
            text.iter()
                .position(|t| t.contains(needle))
                .unwrap_or_else(|| panic!("{needle} missing in {text:#?}"))
        };
        assert!(pos("\"lo\"") < pos("\"direction\""));
        assert!(pos("\"direction\"") < pos("@always4"));
        assert!(pos("@always6") < pos("@allow4"));
        assert!(pos("@allow6") < pos("@deny4"));
        // No DNS opening without a domain in allow_out.
        assert!(!text.iter().any(|t| t.contains("@dns4")));
        // Final verdict refuses.
        let last = text.last().unwrap();
        assert!(
            last.contains("goto") && last.contains(CHAIN_REFUSE),
            "{last}"
        );
    }

    #[test]
    fn default_allow_ends_in_accept() {
        let n = fresh(&desired()).switch;
        let rules = rules_of(&n, CHAIN_POLICY);
        let last = rules.last().unwrap().to_string();
        assert!(
            last.contains("accept") && last.contains(COUNTER_ACCEPTED),
            "{last}"
        );
    }

    #[test]
    fn forward_chain_only_with_iface() {
        assert!(rules_of(&fresh(&desired()).switch, CHAIN_FORWARD).is_empty());
        let mut d = desired();
        d.iface = Some("tap0".into());
        let fwd = rules_of(&fresh(&d).switch, CHAIN_FORWARD);
        assert_eq!(fwd.len(), 1);
        assert!(fwd[0].to_string().contains("tap0"));
    }

    #[test]
    fn refusal_is_fast() {
        let rules = rules_of(&fresh(&desired()).switch, CHAIN_REFUSE);
        let text = serde_json::Value::Array(rules).to_string();
        assert!(text.contains("tcp reset"), "{text}");
        assert!(text.contains("admin-prohibited"), "{text}");
    }

    #[test]
    fn sets_carry_prefixes_and_hosts() {
        let mut d = desired();
        d.deny = Prefixes::merge(&[
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::5/128".parse().unwrap(),
        ]);
        let text = json(&fresh(&d).stage.unwrap()).to_string();
        assert!(
            text.contains(r#"{"prefix":{"addr":"192.0.2.0","len":24}}"#),
            "{text}"
        );
        assert!(text.contains(r#""2001:db8::5""#), "{text}");
    }

    #[test]
    fn only_changed_sets_are_restaged_into_the_other_slot() {
        let old = applied_fresh();
        let mut new = old.desired.clone();
        new.deny = Prefixes::merge(&["192.0.2.0/24".parse().unwrap()]);
        let c = update(&old, &new);
        let stage = json(&c.stage.unwrap()).to_string();
        assert!(
            stage.contains("deny4_0") && !stage.contains("deny6"),
            "{stage}"
        );
        assert!(
            !stage.contains("\"rule\"") && !stage.contains("\"chain\""),
            "{stage}"
        );
        let switch = json(&c.switch).to_string();
        assert!(
            switch.contains("@deny4_0") && switch.contains("@deny6_1"),
            "{switch}"
        );
        assert_eq!(c.slots.get(SetKind::Deny, false), 0);
        assert_eq!(c.slots.get(SetKind::Allow, false), 1);
    }

    fn commands(c: &Change, verb: &str) -> usize {
        c.stage.as_ref().map_or(0, |n| {
            json(n)["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c.get(verb).is_some())
                .count()
        })
    }

    #[test]
    fn trusted_spares_are_created_unknown_ones_flushed() {
        let old = applied_fresh();
        let mut new = old.desired.clone();
        new.deny = Prefixes::merge(&["192.0.2.0/24".parse().unwrap()]);
        let c = update(&old, &new);
        assert_eq!((commands(&c, "create"), commands(&c, "flush")), (1, 0));
        let c = fresh(&new);
        assert_eq!((commands(&c, "create"), commands(&c, "flush")), (0, 8));
    }

    #[test]
    fn the_same_state_again_restages_everything() {
        let old = applied_fresh();
        let c = update(&old, &desired());
        assert_eq!(commands(&c, "create"), 8);
        assert_ne!(c.slots, old.slots);
    }

    #[test]
    fn rules_only_change_stages_nothing() {
        let old = applied_fresh();
        let mut new = old.desired.clone();
        new.allow_internet_access = false;
        let c = update(&old, &new);
        assert!(c.stage.is_none());
        assert_eq!(c.slots, old.slots);
    }

    #[test]
    fn the_switch_never_touches_set_contents() {
        let mut d = desired();
        d.allow = Prefixes::merge(&["192.0.2.0/24".parse().unwrap()]);
        for c in [
            fresh(&d),
            update(
                &Applied {
                    desired: desired(),
                    slots: Slots::default(),
                    trusted: true,
                },
                &d,
            ),
        ] {
            for cmd in json(&c.switch)["nftables"].as_array().unwrap() {
                let text = cmd.to_string();
                assert!(!text.contains("\"element\""), "{text}");
                assert!(
                    !(cmd.get("flush").is_some() && text.contains("\"set\"")),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn reads_which_slot_the_kernel_rules_point_at() {
        let listing = r#"{"nftables": [{"rule": {"expr": [{"match": {"op": "==",
            "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@deny4_1"}},
            {"goto": {"target": "refuse"}}]}}]}"#;
        let slots = referenced(listing).unwrap();
        assert_eq!(slots.get(SetKind::Deny, false), 1);
        assert_eq!(slots.get(SetKind::Deny, true), 0);
        assert_eq!(
            rebuild(slots, &desired()).slots.get(SetKind::Deny, false),
            0
        );
        // A comment naming a set is not a reference.
        let commented = listing.replace(
            r#""right": "@deny4_1""#,
            r#""right": "@deny4_0", "comment": "@deny4_1""#,
        );
        assert_eq!(referenced(&commented).unwrap().get(SetKind::Deny, false), 0);
        // Both copies named: someone rewrote our rules.
        let both = listing.replace(
            r#"{"goto": {"target": "refuse"}}"#,
            r#"{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@deny4_0"}}"#,
        );
        assert!(referenced(&both)
            .unwrap_err()
            .contains("deny4_0 and deny4_1"));
        assert!(referenced("not json").is_err());
    }

    #[test]
    fn same_input_same_batch() {
        assert_eq!(
            json(&fresh(&desired()).switch),
            json(&fresh(&desired()).switch)
        );
    }
}
