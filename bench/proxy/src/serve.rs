//! The bench's service alone in a child copy of this binary, for the
//! memory rows: what a plain hyper server (the library sbx-proxy is built
//! on, with the same HTTP/1.1 + h2c builder) holds per idle connection, as
//! the "direct" column there.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use sbx_bench_support::child::Spawned;
use sbx_bench_support::scratch::Scratch;

/// First argument that turns this binary into the lone service.
pub const SUBCOMMAND: &str = "__serve";
const READY_PREFIX: &str = "serving on ";

/// Runs the service if `args` ask for it. Returns `None` when this is a
/// normal bench run.
pub fn maybe_run(args: &[String]) -> Option<Result<()>> {
    if args.get(1).map(String::as_str) != Some(SUBCOMMAND) {
        return None;
    }
    Some(run())
}

fn run() -> Result<()> {
    // The proxy's runtime shape: the default multi-threaded one.
    let runtime = tokio::runtime::Runtime::new().context("start runtime")?;
    runtime.block_on(async {
        let service = crate::service::start().await?;
        println!("{READY_PREFIX}{}", service.addr);
        std::future::pending::<Result<()>>().await
    })
}

/// Starts the lone service; returns it and the address it listens on.
pub fn start(exe: &Path, scratch: &Scratch) -> Result<(Spawned, std::net::SocketAddr)> {
    let name = "plain-hyper";
    let mut proc = Spawned::start(name, exe, [SUBCOMMAND], &scratch.log(name))?;
    let addr = proc
        .wait_for_line(READY_PREFIX, Duration::from_secs(10))?
        .parse()
        .with_context(|| format!("{name}: unparsable address"))?;
    Ok((proc, addr))
}
