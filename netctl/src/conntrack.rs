//! Clearing the generation bits of every connection in a namespace, with
//! the `conntrack` tool, before generations wrap (see
//! `ruleset::generation`).
//!
//! Why the tool rather than our own ctnetlink code: this runs only when a
//! sandbox's generation counter wraps (never, with the default 32 bits, at
//! any realistic rate of policy changes) or its generation is unknown
//! (first apply, restart after a crash), and conntrack-tools' update is the
//! reference implementation of a dump-then-update of every entry.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::netns::{self, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("conntrack in {netns}: {message}")]
    Failed { netns: PathBuf, message: String },
}

/// How conntrack-tools reports an update that matched nothing (it exits 1).
const NOTHING_UPDATED: &str = " 0 flow entries have been updated";

/// How to call conntrack.
#[derive(Debug, Clone)]
pub struct Conntrack {
    program: String,
}

impl Conntrack {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// Zeroes the `mask` bits of every connection's mark in the namespace
    /// (`conntrack -U --mark 0/<mask>`: the mask names the bits cleared
    /// before the value is XORed in), once per family: without one,
    /// conntrack-tools 1.4.7 asks the kernel with AF_UNSPEC, which current
    /// kernels refuse (EOPNOTSUPP).
    pub async fn clear_marks(&self, netns: &Path, mask: u32) -> Result<(), ConntrackError> {
        let program = self.program.clone();
        let mark = format!("0/{mask:#x}");
        let failed = |message: String| ConntrackError::Failed {
            netns: netns.to_path_buf(),
            message,
        };
        netns::run_in(netns, move || {
            FAMILIES
                .iter()
                .try_for_each(|family| update(&program, family, &mark))
        })
        .await?
        .map_err(failed)
    }
}

const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];

/// Runs one update on the current thread (which has entered the namespace).
fn update(program: &str, family: &str, mark: &str) -> Result<(), String> {
    let output = Command::new(program)
        .args(["-U", "-f", family, "--mark", mark])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("run {program}: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() || stderr.contains(NOTHING_UPDATED) {
        return Ok(());
    }
    Err(format!(
        "{family}: {} ({})",
        crate::nft::first_line(&stderr),
        output.status
    ))
}
