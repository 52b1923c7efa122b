//! Small constructors for the nftables crate's typed schema, shared by the
//! sandbox ruleset (`ruleset`), netctl's host table (`setup::host_table`)
//! and a microVM guest's NAT table (`setup::guest_table`). The first two
//! are `inet` ([`FAMILY`]); the `_of` forms take a family. Every value here
//! is a constant or comes from a validated type, never from request text.

use std::borrow::Cow;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem, CT,
};
use nftables::schema::{Chain, Counter, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{self, JumpTarget, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The family of every table netctl makes.
pub const FAMILY: NfFamily = NfFamily::INet;

pub fn table(name: &'static str) -> Table<'static> {
    table_of(FAMILY, name)
}

pub fn table_of(family: NfFamily, name: &'static str) -> Table<'static> {
    Table {
        family,
        name: name.into(),
        handle: None,
    }
}

pub fn chain(table: &'static str, name: &'static str) -> Chain<'static> {
    chain_of(FAMILY, table, name)
}

pub fn chain_of(family: NfFamily, table: &'static str, name: &'static str) -> Chain<'static> {
    Chain {
        family,
        table: table.into(),
        name: name.into(),
        ..Chain::default()
    }
}

/// A chain on a hook; its policy is accept, so only our rules refuse.
pub fn base_chain(
    table: &'static str,
    name: &'static str,
    hook: NfHook,
    kind: NfChainType,
    prio: i32,
) -> Chain<'static> {
    base_chain_of(FAMILY, table, name, hook, kind, prio)
}

pub fn base_chain_of(
    family: NfFamily,
    table: &'static str,
    name: &'static str,
    hook: NfHook,
    kind: NfChainType,
    prio: i32,
) -> Chain<'static> {
    Chain {
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..chain_of(family, table, name)
    }
}

pub fn rule(
    table: &'static str,
    chain: &'static str,
    expr: Vec<Statement<'static>>,
) -> NfListObject<'static> {
    rule_of(FAMILY, table, chain, expr)
}

pub fn rule_of(
    family: NfFamily,
    table: &'static str,
    chain: &'static str,
    expr: Vec<Statement<'static>>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family,
        table: table.into(),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: None,
    })
}

/// Removes a table whether or not it is there, in one transaction: adding
/// it first means the delete always finds it.
pub fn remove_table(name: &'static str) -> Nftables<'static> {
    remove_table_of(FAMILY, name)
}

pub fn remove_table_of(family: NfFamily, name: &'static str) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table_of(family, name)));
    batch.delete(NfListObject::Table(table_of(family, name)));
    batch.to_nftables()
}

pub fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

/// `net` as nft writes it: a bare address for a single host, else
/// address/length.
pub fn prefix(net: IpNet) -> Expression<'static> {
    let addr = Expression::String(net.addr().to_string().into());
    if net.prefix_len() == net.max_prefix_len() {
        addr
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(addr),
            len: u32::from(net.prefix_len()),
        }))
    }
}

pub fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

pub fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

pub fn jump(target: &'static str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: target.into(),
    })
}

pub fn goto(target: &'static str) -> Statement<'static> {
    Statement::Goto(JumpTarget {
        target: target.into(),
    })
}

/// Counts into the named counter `name` of the rule's table.
pub fn count(name: &'static str) -> Statement<'static> {
    Statement::Counter(stmt::Counter::Named(name.into()))
}

/// A conntrack key (`state`, `direction`, ...).
pub fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

/// `left in { values }` for constant symbols (`ct state`, `icmpv6 type`).
pub fn one_of(left: Expression<'static>, values: &[&'static str]) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right: Expression::Named(NamedExpression::Set(
            values
                .iter()
                .map(|v| SetItem::Element(Expression::String((*v).into())))
                .collect(),
        )),
        op: Operator::EQ,
    })
}

/// Declares the named counter `name` in `table` (a no-op when it exists,
/// so it keeps counting).
pub fn counter(table: &'static str, name: &'static str) -> NfListObject<'static> {
    NfListObject::Counter(Counter {
        family: FAMILY,
        table: table.into(),
        name: name.into(),
        handle: None,
        packets: None,
        bytes: None,
    })
}

/// `left & (values) != 0` for flag-like keys (`ct state established,related`).
pub fn any_of(left: Expression<'static>, values: &[&'static str]) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right: Expression::List(
            values
                .iter()
                .map(|v| Expression::String((*v).into()))
                .collect(),
        ),
        op: Operator::IN,
    })
}
