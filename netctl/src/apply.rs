//! Getting a sandbox's rules into its namespace so that no packet is ever
//! judged against a half-made change (see [`ruleset::Change`]).

use std::path::Path;

use tracing::warn;

use crate::nft::{Nft, NftError};
use crate::ruleset::{self, Applied, Change, Desired, Slots};

/// Commits `desired`. From a state we committed ourselves (`known`) only
/// the changed sets are restaged; if that fails (our table was changed
/// behind our back) or nothing is known, the rules in the kernel are read
/// to find the free copies and everything is rebuilt there.
pub async fn apply(
    nft: &Nft,
    netns: &Path,
    known: Option<&Applied>,
    desired: &Desired,
) -> Result<Applied, NftError> {
    if let Some(old) = known {
        match commit(nft, netns, ruleset::update(old, desired)).await {
            Ok(slots) => return Ok(applied(desired, slots)),
            Err(e) => {
                warn!(netns = %netns.display(), error = %e, "incremental apply failed; rebuilding from what the kernel holds");
            }
        }
    }
    let referenced = nft
        .list_policy_chain(netns)
        .await?
        .map(|listing| ruleset::referenced(&listing))
        .unwrap_or_default();
    commit(nft, netns, ruleset::rebuild(referenced, desired))
        .await
        .map(|slots| applied(desired, slots))
}

async fn commit(nft: &Nft, netns: &Path, change: Change) -> Result<Slots, NftError> {
    match &change.stage {
        Some(stage) => nft.apply_in_order(netns, &[stage, &change.switch]).await?,
        None => nft.apply(netns, &change.switch).await?,
    }
    Ok(change.slots)
}

fn applied(desired: &Desired, slots: Slots) -> Applied {
    Applied {
        desired: desired.clone(),
        slots,
        spares_absent: true,
    }
}
