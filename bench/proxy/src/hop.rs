//! A plain TCP forwarder, run as a child copy of this binary. nginx in
//! front of it has sbx-proxy's shape (a reverse proxy whose upstream
//! connection is a byte stream relayed by a second process to the service)
//! with no tunnel protocol and no relay logic of its own, so its cost over
//! nginx alone is the floor any two-hop design pays here.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use tokio::net::{TcpListener, TcpStream};

use crate::fixture::Scratch;
use crate::procs::Spawned;

/// First argument that turns this binary into a forwarder.
pub const SUBCOMMAND: &str = "__forward";
const READY_PREFIX: &str = "forwarding on ";

/// Runs a forwarder if `args` ask for one: `__forward <target>`. Returns
/// `None` when this is a normal bench run.
pub fn maybe_run(args: &[String]) -> Option<Result<()>> {
    if args.get(1).map(String::as_str) != Some(SUBCOMMAND) {
        return None;
    }
    Some(run(args.get(2).map(String::as_str)))
}

fn run(target: Option<&str>) -> Result<()> {
    let target: SocketAddr = target
        .ok_or_else(|| anyhow!("usage: {SUBCOMMAND} <target addr>"))?
        .parse()
        .context("target address")?;
    // The agent's runtime shape: the default multi-threaded one.
    let runtime = tokio::runtime::Runtime::new().context("start runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{READY_PREFIX}{}", listener.local_addr()?);
        loop {
            let (mut inbound, _) = listener.accept().await?;
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    })
}

/// Starts a forwarder to `target`; returns it and the address it listens on.
pub fn start(exe: &Path, target: SocketAddr, scratch: &Scratch) -> Result<(Spawned, SocketAddr)> {
    let name = "forwarder";
    let mut proc = Spawned::start(
        name,
        exe,
        [SUBCOMMAND.to_owned(), target.to_string()],
        &scratch.log(name),
    )?;
    let addr = proc
        .wait_for_line(READY_PREFIX, Duration::from_secs(10))?
        .parse()
        .with_context(|| format!("{name}: unparsable address"))?;
    Ok((proc, addr))
}
