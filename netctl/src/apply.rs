//! Getting a sandbox's rules into its namespace in two transactions, stage
//! then switch (see [`ruleset::Change`] for why).

use std::path::Path;

use tracing::warn;

use crate::nft::{Nft, NftError};
use crate::ruleset::{self, Applied, Change, Desired, Slots};

/// Commits `desired`. From a trusted state we committed ourselves only the
/// changed sets are restaged; if that fails (our table was changed behind
/// our back, or a spare copy was left by an interrupted change) or nothing
/// trustworthy is known, the rules in the kernel are read to find the copies
/// nothing points at, and every set is rebuilt there.
pub async fn apply(
    nft: &Nft,
    netns: &Path,
    known: Option<&Applied>,
    desired: &Desired,
) -> Result<Applied, NftError> {
    if let Some(old) = known.filter(|a| a.trusted) {
        match commit(nft, netns, ruleset::update(old, desired)).await {
            Ok(slots) => return Ok(applied(desired, slots)),
            Err(e) => {
                warn!(netns = %netns.display(), error = %e, "incremental apply failed; rebuilding from what the kernel holds");
            }
        }
    }
    let referenced = match nft.list_rules(netns).await? {
        Some(listing) => ruleset::referenced(&listing).map_err(|message| NftError::Nft {
            netns: netns.to_path_buf(),
            message,
        })?,
        None => Slots::default(),
    };
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
        trusted: true,
    }
}
