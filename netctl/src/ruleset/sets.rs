//! The sets the rules look addresses up in: which exist, their two copies
//! (slots), their declarations and contents, and reading back which copy
//! the rules in the kernel name.

use std::borrow::Cow;
use std::collections::HashSet;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::schema::{NfListObject, Set, SetFlag, SetType, SetTypeValue};
use nftables::stmt::Statement;

use super::TABLE;
use crate::nft_schema::{eq, payload, prefix, FAMILY};

/// Which address families a set holds, and under which name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    Always,
    Dns,
    Allow,
    Deny,
    /// Sources new connections into the sandbox may come from.
    Ingress,
}

impl SetKind {
    pub const ALL: [SetKind; 5] = [
        SetKind::Always,
        SetKind::Dns,
        SetKind::Allow,
        SetKind::Deny,
        SetKind::Ingress,
    ];

    pub(super) fn name(self, v6: bool) -> &'static str {
        match (self, v6) {
            (SetKind::Always, false) => "always4",
            (SetKind::Always, true) => "always6",
            (SetKind::Dns, false) => "dns4",
            (SetKind::Dns, true) => "dns6",
            (SetKind::Allow, false) => "allow4",
            (SetKind::Allow, true) => "allow6",
            (SetKind::Deny, false) => "deny4",
            (SetKind::Deny, true) => "deny6",
            (SetKind::Ingress, false) => "ingress4",
            (SetKind::Ingress, true) => "ingress6",
        }
    }
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

/// Which of its two copies (slot 0 or 1) each set is, as far as the rules
/// are concerned. Rules name a set by slot, so swapping the rules is what
/// switches a set's contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slots(u16);

impl Slots {
    fn bit(kind: SetKind, v6: bool) -> u16 {
        let index = SetKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        1 << (index * 2 + usize::from(v6))
    }

    pub fn get(self, kind: SetKind, v6: bool) -> u8 {
        u8::from(self.0 & Self::bit(kind, v6) != 0)
    }

    pub(super) fn flipped(self, kind: SetKind, v6: bool) -> Self {
        Self(self.0 ^ Self::bit(kind, v6))
    }
}

pub(super) fn set_name(kind: SetKind, v6: bool, slot: u8) -> String {
    format!("{}_{slot}", kind.name(v6))
}

pub(super) fn set_decl(kind: SetKind, v6: bool, slot: u8) -> Set<'static> {
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

pub(super) fn add_elements(
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

/// `ip daddr @<set>` (or `ip6`), naming the copy `slots` points at.
pub(super) fn daddr_in(kind: SetKind, v6: bool, slots: Slots) -> Statement<'static> {
    addr_in("daddr", kind, v6, slots)
}

/// `ip saddr @<set>` (or `ip6`), naming the copy `slots` points at.
pub(super) fn saddr_in(kind: SetKind, v6: bool, slots: Slots) -> Statement<'static> {
    addr_in("saddr", kind, v6, slots)
}

fn addr_in(field: &'static str, kind: SetKind, v6: bool, slots: Slots) -> Statement<'static> {
    let proto = if v6 { "ip6" } else { "ip" };
    eq(
        payload(proto, field),
        Expression::String(format!("@{}", set_name(kind, v6, slots.get(kind, v6))).into()),
    )
}

/// Which copy of each set the rules point at, from a JSON listing of our
/// rules. A set no rule names counts as slot 0. If both copies of one set
/// are named, someone rewrote our rules and neither copy can be refilled
/// without a packet seeing it change: that is an error, and the rules in
/// force stay.
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
                    "our rules name both {0}_0 and {0}_1: table inet {TABLE} was changed by someone else; delete it to let netctl rebuild it",
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
