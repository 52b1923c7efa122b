//! The processes under test: the agent, one `sbx tunnel` per server, and
//! the peer tool's server and client per server. Dropping the rig stops
//! exactly these processes, by PID.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use sbx_bench_support::agent::{self, Agent};
use sbx_bench_support::child::{find_on_path, Spawned};
use sbx_bench_support::listen::{free_port, wait_listening};
use sbx_bench_support::scratch::Scratch;

use crate::bearer::Bearer;
use crate::servers::ServerAddrs;

/// How long any child may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a client connects to reach each server by one route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub sink: SocketAddr,
    pub echo: SocketAddr,
}

/// One TCP-over-WebSocket tool pair per server: `server` accepts the
/// WebSocket and connects to the service, `client` accepts local TCP.
pub struct Pair {
    pub server: Spawned,
    pub client: Spawned,
    /// Where the server side accepts WebSockets.
    pub ws_addr: SocketAddr,
    /// Where the client side accepts TCP.
    pub client_listen: SocketAddr,
}

pub struct Peer {
    pub name: String,
    pub sink: Pair,
    pub echo: Pair,
}

impl Peer {
    pub fn route(&self) -> Route {
        Route {
            sink: self.sink.client_listen,
            echo: self.echo.client_listen,
        }
    }
}

/// The agent for sandbox `bench`, with bearer auth for `sbx tunnel`.
pub fn start_agent(bin: &Path, scratch: &Scratch, bearer: &Bearer) -> Result<Agent> {
    agent::start(bin, scratch, "bench", Some(&bearer.file))
}

/// Starts `sbx tunnel` to `port` on an ephemeral local port; returns the
/// process and the address it forwards from.
pub fn start_sbx_tunnel(
    bin: &Path,
    agent: SocketAddr,
    port: u16,
    scratch: &Scratch,
    bearer: &Bearer,
    label: &str,
) -> Result<(Spawned, SocketAddr)> {
    let name = format!("sbx-tunnel-{label}");
    let args: Vec<std::ffi::OsString> = vec![
        "tunnel".into(),
        format!("http://{agent}").into(),
        port.to_string().into(),
        "-l".into(),
        "0".into(),
        "--token-file".into(),
        bearer.file.clone().into(),
    ];
    let mut proc = Spawned::start(&name, bin, args, &scratch.log(&name))?;
    let line = proc.wait_for_line("Forwarding ", READY_TIMEOUT)?;
    let local = line
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("{name}: empty Forwarding line"))?
        .parse()
        .with_context(|| format!("{name}: unparsable Forwarding line {line:?}"))?;
    Ok((proc, local))
}

/// Starts a websocat pair for every server, with default settings apart
/// from binary frames (the tunnel's own framing).
pub fn start_websocat(bin: &Path, servers: ServerAddrs, scratch: &Scratch) -> Result<Peer> {
    Ok(Peer {
        name: "websocat".into(),
        sink: websocat_pair(bin, servers.sink, scratch, "sink")?,
        echo: websocat_pair(bin, servers.echo, scratch, "echo")?,
    })
}

fn websocat_pair(bin: &Path, target: SocketAddr, scratch: &Scratch, label: &str) -> Result<Pair> {
    // websocat cannot report an ephemeral port, so it gets one that was free.
    let ws_port = free_port()?;
    let server_name = format!("websocat-server-{label}");
    let server = Spawned::start(
        &server_name,
        bin,
        [
            "--binary".to_owned(),
            format!("ws-l:127.0.0.1:{ws_port}"),
            format!("tcp:{target}"),
        ],
        &scratch.log(&server_name),
    )?;
    wait_listening(ws_port, READY_TIMEOUT).context(server_name)?;

    let local_port = free_port()?;
    let client_name = format!("websocat-client-{label}");
    let client = Spawned::start(
        &client_name,
        bin,
        [
            "--binary".to_owned(),
            format!("tcp-l:127.0.0.1:{local_port}"),
            format!("ws://127.0.0.1:{ws_port}/"),
        ],
        &scratch.log(&client_name),
    )?;
    wait_listening(local_port, READY_TIMEOUT).context(client_name)?;
    Ok(Pair {
        server,
        client,
        ws_addr: SocketAddr::from(([127, 0, 0, 1], ws_port)),
        client_listen: SocketAddr::from(([127, 0, 0, 1], local_port)),
    })
}

/// The peer binary: the one given, else websocat on PATH. The error says
/// why there is none, for the note printed with the results.
pub fn find_peer(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(format!(
                "{} does not exist (websocat not installed?)",
                p.display()
            ))
        };
    }
    find_on_path("websocat")
        .ok_or_else(|| "websocat not found on PATH (pass --peer-bin)".to_owned())
}
