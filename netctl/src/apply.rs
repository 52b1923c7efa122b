//! Getting a sandbox's rules into its namespace in two transactions, stage
//! then switch (see [`ruleset::Change`] for why), clearing connections'
//! generation marks in between when the change asks for it.

use std::path::Path;

use tracing::{debug, warn};

use crate::conntrack::{Conntrack, ConntrackError};
use crate::nft::{Nft, NftError};
use crate::ruleset::{self, Applied, Change, Desired, InForce};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("clear connection marks before generations wrap: {0}")]
    Sweep(#[from] ConntrackError),
}

/// The tools an apply runs in the namespace.
#[derive(Debug, Clone)]
pub struct Tools {
    pub nft: Nft,
    pub conntrack: Conntrack,
}

/// Commits `desired`. From a trusted state we committed ourselves only the
/// changed sets are restaged; if that fails (our table was changed behind
/// our back, or a spare copy was left by an interrupted change) or nothing
/// trustworthy is known, the rules in the kernel are read to find the copies
/// nothing points at and the generation in force, and every set is rebuilt.
pub async fn apply(
    tools: &Tools,
    netns: &Path,
    known: Option<&Applied>,
    desired: &Desired,
) -> Result<Applied, ApplyError> {
    if let Some(old) = known.filter(|a| a.trusted) {
        match commit(tools, netns, desired, ruleset::update(old, desired)).await {
            Ok(applied) => return Ok(applied),
            Err(e) => {
                warn!(netns = %netns.display(), error = %e, "incremental apply failed; rebuilding from what the kernel holds");
            }
        }
    }
    let in_force = match tools.nft.list_rules(netns).await? {
        Some(listing) => ruleset::in_force(&listing).map_err(|message| NftError::Nft {
            netns: netns.to_path_buf(),
            message,
        })?,
        None => InForce::default(),
    };
    commit(tools, netns, desired, ruleset::rebuild(in_force, desired)).await
}

async fn commit(
    tools: &Tools,
    netns: &Path,
    desired: &Desired,
    change: Change,
) -> Result<Applied, ApplyError> {
    match (&change.stage, change.sweep) {
        (Some(stage), false) => {
            tools
                .nft
                .apply_in_order(netns, &[stage, &change.switch])
                .await?
        }
        (None, false) => tools.nft.apply(netns, &change.switch).await?,
        (stage, true) => {
            if let Some(stage) = stage {
                tools.nft.apply(netns, stage).await?;
            }
            // The rules in force still write the old generation, which the
            // switch below no longer accepts; everything older is cleared.
            tools
                .conntrack
                .clear_marks(netns, desired.mark_bits.mask())
                .await?;
            debug!(netns = %netns.display(), generation = change.generation.get(), "connection marks cleared");
            tools.nft.apply(netns, &change.switch).await?;
        }
    }
    Ok(Applied {
        desired: desired.clone(),
        slots: change.slots,
        generation: change.generation,
        trusted: true,
    })
}
