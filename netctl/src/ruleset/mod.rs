//! The pure policy → nftables translation. Nothing here touches the kernel,
//! so the exact rules can be unit-tested.
//!
//! Layout of our one table per sandbox netns:
//!
//! ```text
//! table inet sbx_netctl
//!   chain output  (hook output, filter)  -> jump policy
//!   chain input   (hook input, filter)   -> jump inbound
//!   chain forward (hook forward, filter) -> iifname <iface> jump policy
//!                                           oifname <iface> jump inbound
//!   chain policy:                                    what the sandbox sends (egress.rs)
//!     oif lo accept                                  own loopback
//!     icmpv6 neighbour discovery, hop limit 255      IPv6 keeps working
//!     icmpv6 MLDv2 report to ff02::16, hop limit 1   no refused-counter noise
//!     ct state established,related ct direction reply accept
//!     ct mark & <bits> == <generation> accept        judged under this policy already
//!     ip/ip6 daddr @always4/6   goto refuse
//!     udp/tcp dport 53 to @dns4/6 mark, accept       only if allow_out names a domain
//!     ip/ip6 daddr @allow4/6    mark, accept
//!     ip/ip6 daddr @deny4/6     goto refuse
//!     mark, accept | goto refuse                     allow_internet_access
//!   chain refuse: counter, tcp reset, icmpx admin-prohibited
//!   chain inbound:                                   connections into it (ingress.rs)
//!     ... tcp dport 9501 ip/ip6 saddr @ingress4/6 accept
//!     goto refuse_in
//!   chain refuse_in: counter inbound_refused, tcp reset, icmpx admin-prohibited
//! ```
//!
//! Every set exists as two copies (`deny4_0`, `deny4_1`) and the rules name
//! one; see [`Change`] for why a change fills the other copy first.
//!
//! A connection the sandbox opens is judged once per policy generation
//! ("mark" above records the generation on it; see `generation`): a change
//! that can refuse more starts a new generation, so the next packet of
//! every open connection is judged again and a tightened policy still cuts
//! connections opened earlier. Replies on connections opened *toward* the
//! sandbox never go through the sets.

pub mod answers;
mod egress;
mod generation;
mod ingress;
mod sets;
#[cfg(test)]
mod tests;

use nftables::batch::Batch;
use nftables::expr::{Expression, MetaKey};
use nftables::schema::{FlushObject, NfCmd, NfListObject, Nftables};
use nftables::stmt::{Reject, RejectType, Statement};
use nftables::types::{NfChainType, NfHook, RejectCode};

use crate::nft_schema::{self, count, eq, jump, meta};
pub use generation::{Generation, MarkBits};
use sets::{add_elements, set_decl};
pub use sets::{referenced, Prefixes, SetKind, Slots};

/// Our table's name in every sandbox netns.
pub const TABLE: &str = "sbx_netctl";
/// `priority filter` as a number.
const PRIO_FILTER: i32 = 0;

const CHAIN_OUTPUT: &str = "output";
const CHAIN_INPUT: &str = "input";
const CHAIN_FORWARD: &str = "forward";
const CHAIN_POLICY: &str = "policy";
const CHAIN_REFUSE: &str = "refuse";
const CHAIN_INBOUND: &str = "inbound";
const CHAIN_REFUSE_IN: &str = "refuse_in";

pub const COUNTER_ACCEPTED: &str = "accepted";
pub const COUNTER_REFUSED: &str = "refused";
/// Packets accepted without a set lookup: their connection was judged
/// under the policy generation in force.
pub const COUNTER_FAST: &str = "accepted_fast";
/// Packets of connections into the sandbox that the inbound rules refused.
pub const COUNTER_INBOUND_REFUSED: &str = "inbound_refused";

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
    /// The one TCP port new connections into the sandbox may go to.
    pub ingress_port: u16,
    /// Where they may come from (empty: nowhere).
    pub ingress: Prefixes,
    /// The ct mark bits that record under which generation a connection
    /// was judged.
    pub mark_bits: MarkBits,
    /// Where the sandbox's DNS is answered, when its policy names a domain.
    pub intercept: Option<answers::Intercept>,
}

impl Desired {
    fn set(&self, kind: SetKind) -> &Prefixes {
        match kind {
            SetKind::Always => &self.always,
            SetKind::Dns => &self.dns,
            SetKind::Allow => &self.allow,
            SetKind::Deny => &self.deny,
            SetKind::Ingress => &self.ingress,
        }
    }
}

/// What one apply left in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub desired: Desired,
    pub slots: Slots,
    /// The generation the rules accept without judging again.
    pub generation: Generation,
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
    /// The generation `switch` puts in force.
    pub generation: Generation,
    /// Whether every connection's generation bits must be cleared between
    /// `stage` and `switch` (the counter wrapped, or the generation in
    /// force is not known).
    pub sweep: bool,
}

/// What the rules in the kernel are, read from a listing of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InForce {
    /// The copy of each set they name.
    pub slots: Slots,
    /// The mask and the mark value their fast path accepts, if they have one.
    pub mark: Option<(u32, u32)>,
    /// Whether the answer sets (`allow_dns4/6`) are there.
    pub answer_sets: bool,
}

/// Reads [`InForce`] from a JSON listing of our rules (see [`list_rules`]).
pub fn in_force(listing: &str) -> Result<InForce, String> {
    let slots = referenced(listing)?;
    let value: serde_json::Value =
        serde_json::from_str(listing).map_err(|e| format!("nft listing: {e}"))?;
    let answer_sets = value["nftables"].as_array().is_some_and(|items| {
        items
            .iter()
            .any(|i| i["set"]["name"].as_str() == Some(answers::SET_V4))
    });
    Ok(InForce {
        slots,
        mark: generation::listed(&value),
        answer_sets,
    })
}

/// From a state we committed ourselves (`old.trusted`): only sets whose
/// contents differ are restaged, into spare copies that must not exist yet
/// (`create`, so a leftover fails the stage and the caller rebuilds rather
/// than merging into it). The same state again restages every set: a repair
/// if someone changed our table, and cheap, since creating a set waits for
/// nothing.
pub fn update(old: &Applied, new: &Desired) -> Change {
    let same = &old.desired == new;
    let next = generation::following(old.generation, &old.desired, new);
    let answer_sets = old.desired.intercept.is_some();
    change(
        old.slots,
        Spares::Absent,
        new,
        next,
        answer_sets,
        (!same).then_some(old),
        |kind: SetKind, v6: bool| {
            let (before, after) = (old.desired.set(kind), new.set(kind));
            same || if v6 {
                before.v6 != after.v6
            } else {
                before.v4 != after.v4
            }
        },
    )
}

/// From a state we do not know: every set is staged into the slot the
/// rules in the kernel do not point at, and connections are judged again
/// under a generation after the one in force (both read from there).
pub fn rebuild(in_force: InForce, new: &Desired) -> Change {
    let next = generation::from_listing(new.mark_bits, in_force.mark);
    change(
        in_force.slots,
        Spares::Unknown,
        new,
        next,
        in_force.answer_sets,
        None,
        |_, _| true,
    )
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
    next: generation::Next,
    answer_sets: bool,
    before: Option<&Applied>,
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
        switch: switch(desired, slots, next.generation, answer_sets, before),
        slots,
        generation: next.generation,
        sweep: next.sweep,
    }
}

/// The rules, pointing at `slots`.
///
/// Without `before` (a rebuild, or the same state again as a repair) the
/// whole table is written: named counters and chains are added (a no-op
/// when they exist, so counters keep counting), every chain is refilled
/// and every copy no rule points at is deleted. With `before` (a trusted
/// state we committed) only the chains whose rules change are refilled and
/// only the copies the change stopped pointing at are deleted: the smaller
/// batch is what an apply waits for. If the table is not what `before`
/// says, the switch fails whole and the caller rebuilds.
///
/// Sets are not declared here: if one the rules need is missing the
/// transaction fails whole instead of matching against an empty set.
fn switch(
    desired: &Desired,
    slots: Slots,
    generation: Generation,
    answer_sets: bool,
    before: Option<&Applied>,
) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(nft_schema::table(TABLE)));
    if before.is_none() {
        declare_objects(&mut batch);
    }
    // The answer sets keep their elements across applies and restarts,
    // so they are made only when missing and never re-declared: nft marks
    // a set that rules update from the packet path (the kernel then
    // refuses the same declaration without that mark, and nft 1.0's JSON
    // cannot write it). Without domains they go.
    // (Deleted at the end, once no rule names them.)
    if desired.intercept.is_some() && !answer_sets {
        for v6 in [false, true] {
            batch.add(NfListObject::Set(Box::new(answers::set_decl(v6))));
        }
    }
    let rules = chain_rules(desired, slots, generation);
    let old_rules = before.map(|b| chain_rules(&b.desired, b.slots, b.generation));
    let changed: Vec<&(&'static str, Vec<Vec<Statement<'static>>>)> = rules
        .iter()
        .filter(|(name, new)| {
            old_rules
                .as_ref()
                .is_none_or(|old| old.iter().find(|(n, _)| n == name).map(|(_, r)| r) != Some(new))
        })
        .collect();
    for (name, _) in &changed {
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(nft_schema::chain(
            TABLE, name,
        ))));
    }
    for (name, chain) in &changed {
        for r in chain {
            batch.add(nft_schema::rule(TABLE, name, r.clone()));
        }
    }
    if desired.intercept.is_none() && answer_sets {
        for v6 in [false, true] {
            batch.delete(NfListObject::Set(Box::new(answers::set_decl(v6))));
        }
    }
    // The copies no rule points at any more.
    for kind in SetKind::ALL {
        for v6 in [false, true] {
            let unused = set_decl(kind, v6, 1 - slots.get(kind, v6));
            match before {
                // Adding first makes the delete succeed whether or not
                // the copy is there.
                None => {
                    batch.add(NfListObject::Set(Box::new(unused.clone())));
                    batch.delete(NfListObject::Set(Box::new(unused)));
                }
                // Trusted: exactly the copies this change moved off exist.
                Some(b) if b.slots.get(kind, v6) != slots.get(kind, v6) => {
                    batch.delete(NfListObject::Set(Box::new(unused)));
                }
                Some(_) => {}
            }
        }
    }
    batch.to_nftables()
}

/// Our named counters and chains (adding is a no-op when they exist).
fn declare_objects(batch: &mut Batch<'static>) {
    for name in [
        COUNTER_ACCEPTED,
        COUNTER_FAST,
        COUNTER_REFUSED,
        COUNTER_INBOUND_REFUSED,
    ] {
        batch.add(nft_schema::counter(TABLE, name));
    }
    for (name, hook) in [
        (CHAIN_OUTPUT, NfHook::Output),
        (CHAIN_INPUT, NfHook::Input),
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
    // Declared always (and empty when no domain is named): a NAT chain is
    // only consulted for a connection's first packet.
    for (name, hook) in [
        (answers::CHAIN_OUT, NfHook::Output),
        (answers::CHAIN_IN, NfHook::Prerouting),
    ] {
        batch.add(NfListObject::Chain(nft_schema::base_chain(
            TABLE,
            name,
            hook,
            NfChainType::NAT,
            answers::PRIO,
        )));
    }
    for name in [CHAIN_POLICY, CHAIN_REFUSE, CHAIN_INBOUND, CHAIN_REFUSE_IN] {
        batch.add(NfListObject::Chain(nft_schema::chain(TABLE, name)));
    }
}

/// Every chain of ours with the rules it holds under `desired`.
fn chain_rules(
    desired: &Desired,
    slots: Slots,
    generation: Generation,
) -> Vec<(&'static str, Vec<Vec<Statement<'static>>>)> {
    let (dns_out, dns_in) = match &desired.intercept {
        Some(intercept) => answers::redirect_rules(intercept, desired.iface.as_deref()),
        None => (Vec::new(), Vec::new()),
    };
    let mut forward = Vec::new();
    if let Some(iface) = &desired.iface {
        // From the microVM: what it sends; toward it: connections into it.
        for (key, target) in [
            (MetaKey::Iifname, CHAIN_POLICY),
            (MetaKey::Oifname, CHAIN_INBOUND),
        ] {
            forward.push(vec![
                eq(meta(key), Expression::String(iface.clone().into())),
                jump(target),
            ]);
        }
    }
    vec![
        (CHAIN_OUTPUT, vec![vec![jump(CHAIN_POLICY)]]),
        (CHAIN_INPUT, vec![vec![jump(CHAIN_INBOUND)]]),
        (CHAIN_FORWARD, forward),
        (
            CHAIN_POLICY,
            egress::policy_rules(desired, slots, generation),
        ),
        (CHAIN_REFUSE, refuse_rules(desired.refusal, COUNTER_REFUSED)),
        (CHAIN_INBOUND, ingress::inbound_rules(desired, slots)),
        (
            CHAIN_REFUSE_IN,
            refuse_rules(desired.refusal, COUNTER_INBOUND_REFUSED),
        ),
        (answers::CHAIN_OUT, dns_out),
        (answers::CHAIN_IN, dns_in),
    ]
}

/// The command that lists our table (read by [`referenced`]; run with
/// `-t`, so set contents are left out and only the rules' references
/// remain).
pub fn list_rules() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add_cmd(NfCmd::List(NfListObject::Table(nft_schema::table(TABLE))));
    batch.to_nftables()
}

/// Removes our table. Adding it first makes the delete succeed whether or
/// not the table is there, in one transaction.
pub fn remove() -> Nftables<'static> {
    nft_schema::remove_table(TABLE)
}

/// A refusal chain counting into `counter`.
fn refuse_rules(refusal: Refusal, counter: &'static str) -> Vec<Vec<Statement<'static>>> {
    match refusal {
        Refusal::Drop => vec![vec![count(counter), Statement::Drop(None)]],
        Refusal::Reject => vec![
            vec![count(counter)],
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
