//! Judging a connection once per policy generation instead of once per
//! packet.
//!
//! Every accept in the `policy` chain writes the current generation into
//! the connection's ct mark (in the bits of [`MarkBits`] only); a packet of
//! a connection whose mark holds the current generation is accepted before
//! any set lookup. A change that can refuse more (see [`tightens`]) moves
//! to the next generation, so the next packet of every open connection is
//! judged again and cut if it is now refused. A change that can only allow
//! more keeps the generation: nothing already accepted can become refused.
//!
//! Wrap-around: generations run 1..=[`MarkBits::max`] (0 is "never
//! judged"). Marks in the kernel only ever hold generations used since the
//! last sweep, so the next one is safe until the counter wraps; then every
//! connection's generation bits are zeroed (a conntrack sweep, see
//! `crate::conntrack`) before the rules switch back to generation 1. The
//! same sweep runs whenever the generation in force is unknown.

use nftables::expr::{BinaryOperation, Expression};
use nftables::stmt::{Mangle, Statement};

use super::{Desired, Prefixes, COUNTER_FAST};
use crate::nft_schema::{accept, count, ct, eq};

/// The ct mark bits generations are recorded in (contiguous, so a
/// generation is a number shifted into place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkBits {
    mask: u32,
    shift: u32,
}

impl Default for MarkBits {
    fn default() -> Self {
        Self {
            mask: u32::MAX,
            shift: 0,
        }
    }
}

impl MarkBits {
    /// Fewer bits than this would sweep on nearly every tightening.
    pub const MIN_BITS: u32 = 2;

    pub fn new(mask: u32) -> Result<Self, String> {
        if mask.count_ones() < Self::MIN_BITS {
            return Err(format!(
                "ct_mark_mask {mask:#x}: needs at least {} bits",
                Self::MIN_BITS
            ));
        }
        let shift = mask.trailing_zeros();
        let bits = mask >> shift;
        if bits & bits.wrapping_add(1) != 0 {
            return Err(format!(
                "ct_mark_mask {mask:#x}: the bits must be contiguous"
            ));
        }
        Ok(Self { mask, shift })
    }

    pub fn mask(self) -> u32 {
        self.mask
    }

    /// The last generation before the counter wraps.
    pub fn max(self) -> u32 {
        self.mask >> self.shift
    }

    fn value(self, generation: Generation) -> u32 {
        generation.0 << self.shift
    }
}

/// A policy generation as written into ct marks (1..=max).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u32);

impl Generation {
    pub const FIRST: Generation = Generation(1);

    pub fn get(self) -> u32 {
        self.0
    }
}

/// The generation a change switches to, and whether every connection's
/// generation bits must be cleared before the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    pub generation: Generation,
    pub sweep: bool,
}

/// After `current`, which is in force with the same bits.
pub fn after(bits: MarkBits, current: Generation) -> Next {
    if current.0 >= 1 && current.0 < bits.max() {
        Next {
            generation: Generation(current.0 + 1),
            sweep: false,
        }
    } else {
        Next {
            generation: Generation::FIRST,
            sweep: true,
        }
    }
}

/// The generation after `current` (in force under `old`) for a change to
/// `new`: the next one if the change can refuse more, the same one if it
/// can only allow more. Re-applying the same state keeps it too, so a PUT
/// repeated by a control plane changes nothing in the kernel.
pub(super) fn following(current: Generation, old: &Desired, new: &Desired) -> Next {
    if old.mark_bits != new.mark_bits {
        return unknown(new.mark_bits, Some(old.mark_bits.value(current)));
    }
    if tightens(old, new) {
        after(new.mark_bits, current)
    } else {
        Next {
            generation: current,
            sweep: false,
        }
    }
}

/// The generation after the one a listing of the rules in force shows
/// (`listed`: their mask and mark value).
pub(super) fn from_listing(bits: MarkBits, listed: Option<(u32, u32)>) -> Next {
    match listed {
        Some((mask, value)) if mask == bits.mask => {
            let current = value >> bits.shift;
            if value & !mask == 0 && (1..=bits.max()).contains(&current) {
                after(bits, Generation(current))
            } else {
                unknown(bits, Some(value))
            }
        }
        Some((_, value)) => unknown(bits, Some(value)),
        None => unknown(bits, None),
    }
}

/// When the generation in force is not known with these bits. `stale` is
/// the mark value the rules in the kernel may still write until the switch
/// (read from them, in whatever bits they used): the first generation whose
/// value differs is taken, and the sweep clears everything older.
pub fn unknown(bits: MarkBits, stale: Option<u32>) -> Next {
    let stale = stale.map(|v| v & bits.mask);
    let generation = (1..=bits.max())
        .map(Generation)
        .find(|g| Some(bits.value(*g)) != stale)
        .unwrap_or(Generation::FIRST);
    Next {
        generation,
        sweep: true,
    }
}

/// Whether going from `old` to `new` can refuse a packet `old` accepted:
/// then connections must be judged again. Conservative: any change of what
/// is judged (the interface, the bits) counts.
pub fn tightens(old: &Desired, new: &Desired) -> bool {
    old.iface != new.iface
        || old.mark_bits != new.mark_bits
        || old.intercept != new.intercept
        || (old.allow_internet_access && !new.allow_internet_access)
        || !covers(&old.always, &new.always)
        || !covers(&new.allow, &old.allow)
        || !covers(&new.dns, &old.dns)
        || !covers(&old.deny, &new.deny)
}

/// Whether every address in `inner` is in `outer`. Both are merged
/// (sorted, non-overlapping), so each prefix of `inner` can only sit in the
/// last prefix of `outer` that starts at or before it.
fn covers(outer: &Prefixes, inner: &Prefixes) -> bool {
    fn all<N: Copy, K: Ord>(
        outer: &[N],
        inner: &[N],
        start: impl Fn(N) -> K,
        contains: impl Fn(N, N) -> bool,
    ) -> bool {
        inner.iter().all(|n| {
            let after = outer.partition_point(|o| start(*o) <= start(*n));
            after > 0 && contains(outer[after - 1], *n)
        })
    }
    all(&outer.v4, &inner.v4, |n| n.network(), |o, n| o.contains(&n))
        && all(&outer.v6, &inner.v6, |n| n.network(), |o, n| o.contains(&n))
}

/// `ct mark & mask`, or plain `ct mark` when the mask is every bit (nft
/// drops an all-ones mask anyway, and the listing must read back alike).
fn masked_mark(bits: MarkBits) -> Expression<'static> {
    if bits.mask == u32::MAX {
        ct("mark")
    } else {
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            ct("mark"),
            Expression::Number(bits.mask),
        )))
    }
}

/// Accepts, before any set lookup, packets of connections judged under
/// `generation`.
pub(super) fn fast_path(bits: MarkBits, generation: Generation) -> Vec<Statement<'static>> {
    vec![
        eq(
            masked_mark(bits),
            Expression::Number(bits.value(generation)),
        ),
        count(COUNTER_FAST),
        accept(),
    ]
}

/// Records `generation` on the connection, keeping the mark's other bits.
pub(super) fn mark(bits: MarkBits, generation: Generation) -> Statement<'static> {
    let value = Expression::Number(bits.value(generation));
    Statement::Mangle(Mangle {
        key: ct("mark"),
        value: if bits.mask == u32::MAX {
            value
        } else {
            Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
                Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                    ct("mark"),
                    Expression::Number(!bits.mask),
                ))),
                value,
            ])))
        },
    })
}

/// The mark value the fast-path rule in a JSON listing of our rules
/// accepts, with its mask: what the rules in force write. `None` when there
/// is no such rule (no table, or one from before generations).
pub fn listed(listing: &serde_json::Value) -> Option<(u32, u32)> {
    let rules = listing.get("nftables")?.as_array()?;
    rules.iter().find_map(|item| {
        item.get("rule")?
            .get("expr")?
            .as_array()?
            .iter()
            .find_map(|e| mark_match(e.get("match")?))
    })
}

fn mark_match(m: &serde_json::Value) -> Option<(u32, u32)> {
    let value = u32::try_from(m.get("right")?.as_u64()?).ok()?;
    let left = m.get("left")?;
    let is_mark = |v: &serde_json::Value| v.get("ct")?.get("key")?.as_str().map(|k| k == "mark");
    if is_mark(left) == Some(true) {
        return Some((u32::MAX, value));
    }
    let [operand, mask] = left.get("&")?.as_array()?.as_slice() else {
        return None;
    };
    (is_mark(operand) == Some(true))
        .then(|| u32::try_from(mask.as_u64()?).ok())
        .flatten()
        .map(|mask| (mask, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(v4: &[&str], v6: &[&str]) -> Prefixes {
        let nets: Vec<ipnet::IpNet> = v4
            .iter()
            .chain(v6)
            .map(|s| s.parse().expect("test net"))
            .collect();
        Prefixes::merge(&nets)
    }

    #[test]
    fn bits_are_checked() {
        assert!(MarkBits::new(0).is_err());
        assert!(MarkBits::new(0b1).is_err());
        assert!(MarkBits::new(0b1011).is_err());
        let b = MarkBits::new(0x00ff_0000).unwrap();
        assert_eq!(b.max(), 255);
        assert_eq!(b.value(Generation(3)), 0x0003_0000);
        assert_eq!(MarkBits::default().max(), u32::MAX);
    }

    #[test]
    fn wraps_with_a_sweep() {
        let b = MarkBits::new(0b11).unwrap();
        let g2 = after(b, Generation::FIRST);
        assert_eq!((g2.generation.get(), g2.sweep), (2, false));
        let g3 = after(b, g2.generation);
        assert_eq!((g3.generation.get(), g3.sweep), (3, false));
        let wrapped = after(b, g3.generation);
        assert_eq!((wrapped.generation.get(), wrapped.sweep), (1, true));
    }

    #[test]
    fn unknown_avoids_what_the_old_rules_write() {
        let b = MarkBits::new(0xf0).unwrap();
        assert_eq!(unknown(b, None).generation.get(), 1);
        assert_eq!(unknown(b, Some(0x10)).generation.get(), 2);
        assert_eq!(unknown(b, Some(0x0f)).generation.get(), 1);
        assert!(unknown(b, None).sweep);
    }

    #[test]
    fn coverage() {
        let big = prefixes(&["10.0.0.0/8", "192.0.2.0/24"], &["2001:db8::/32"]);
        assert!(covers(
            &big,
            &prefixes(&["10.1.2.0/24", "192.0.2.7/32"], &[])
        ));
        assert!(covers(&big, &prefixes(&[], &["2001:db8:1::/48"])));
        assert!(!covers(&big, &prefixes(&["11.0.0.0/24"], &[])));
        assert!(!covers(&big, &prefixes(&["0.0.0.0/0"], &[])));
        assert!(!covers(&big, &prefixes(&[], &["2001:db9::/48"])));
        assert!(covers(&big, &Prefixes::default()));
        assert!(!covers(&Prefixes::default(), &big));
    }

    #[test]
    fn listed_reads_both_forms() {
        let masked: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"rule": {"expr": [{"match": {"op": "==",
              "left": {"&": [{"ct": {"key": "mark"}}, 65280]}, "right": 512}}, {"accept": null}]}}]}"#,
        )
        .unwrap();
        assert_eq!(listed(&masked), Some((0xff00, 0x200)));
        let whole: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"rule": {"expr": [{"match": {"op": "==",
              "left": {"ct": {"key": "mark"}}, "right": 9}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(listed(&whole), Some((u32::MAX, 9)));
        assert_eq!(listed(&serde_json::json!({"nftables": []})), None);
    }
}
