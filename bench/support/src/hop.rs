//! A plain TCP forwarder, run as a child copy of the bench's own binary.
//!
//! It adds a process and two loopback hops to a route with no tunnel
//! protocol and no relay logic of its own, so its cost is the floor any
//! design with that many hops pays on this machine: tunnel-bench chains two
//! of them (the tunnel's shape), proxy-bench puts nginx in front of one
//! (sbx-proxy's shape).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use tokio::net::{TcpListener, TcpStream};

use crate::child::Spawned;
use crate::scratch::Scratch;

/// First argument that turns the bench binary into a forwarder.
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
    // The runtime shape of the agent, `sbx` and sbx-proxy: the default
    // multi-threaded one.
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

/// Starts a forwarder named `name` (its log's name too) from the bench
/// binary `exe` to `target`; returns it and the address it listens on.
pub fn start(
    exe: &Path,
    target: SocketAddr,
    scratch: &Scratch,
    name: &str,
) -> Result<(Spawned, SocketAddr)> {
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
