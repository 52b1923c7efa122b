//! Small constructors for the nftables crate's typed schema, shared by the
//! sandbox ruleset (`ruleset`) and netctl's host table (`setup::host_table`).
//! Both tables are `inet`; every value here is a constant or comes from a
//! validated type, never from request text.

use std::borrow::Cow;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The family of every table netctl makes.
pub const FAMILY: NfFamily = NfFamily::INet;

pub fn table(name: &'static str) -> Table<'static> {
    Table {
        family: FAMILY,
        name: name.into(),
        handle: None,
    }
}

pub fn chain(table: &'static str, name: &'static str) -> Chain<'static> {
    Chain {
        family: FAMILY,
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
    Chain {
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..chain(table, name)
    }
}

pub fn rule(
    table: &'static str,
    chain: &'static str,
    expr: Vec<Statement<'static>>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: FAMILY,
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
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table(name)));
    batch.delete(NfListObject::Table(table(name)));
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
