//! The `sbx-agent` under test, started the same way by every bench: on an
//! ephemeral loopback port, with the scratch directory's forwarded-auth key.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::child::Spawned;
use crate::scratch::Scratch;

/// How long the agent may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Agent {
    pub proc: Spawned,
    /// Where it accepts HTTP (and tunnel WebSockets).
    pub addr: SocketAddr,
}

/// Starts `bin` for `sandbox_id`; `bearer_token_file` enables its bearer
/// auth for clients that talk to it directly (`sbx tunnel`).
pub fn start(
    bin: &Path,
    scratch: &Scratch,
    sandbox_id: &str,
    bearer_token_file: Option<&Path>,
) -> Result<Agent> {
    let mut args: Vec<OsString> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--sandbox-id".into(),
        sandbox_id.into(),
        "--forwarded-auth-key-file".into(),
        scratch.key_file.clone().into(),
    ];
    if let Some(file) = bearer_token_file {
        args.extend(["--bearer-token-file".into(), file.into()]);
    }
    let mut proc = Spawned::start("sbx-agent", bin, args, &scratch.log("sbx-agent"))?;
    let addr = proc
        .wait_for_line("sbx-agent listening on ", READY_TIMEOUT)?
        .trim()
        .parse()
        .context("agent printed an unparsable address")?;
    Ok(Agent { proc, addr })
}
