//! `sbx tunnel`: a local listener whose every connection becomes one
//! WebSocket tunnel to a port inside the sandbox.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sbx_proto::tunnel::{CLIENT_PING_INTERVAL_SECS, TUNNEL_PATH};
use sbx_relay::{relay, RelayConfig, Role};
use tokio::net::{TcpListener, TcpStream};

use crate::credentials::Credentials;
use crate::http::{self, HttpError};
use crate::target::AgentUrl;

/// How long opening one tunnel may take before the local connection is dropped.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pending connections the local listener queues.
const LISTEN_BACKLOG: u32 = 4096;
/// Three missed pings and the agent is taken for gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3 * CLIENT_PING_INTERVAL_SECS);

pub struct TunnelOptions {
    pub agent: AgentUrl,
    pub remote_port: u16,
    pub bind: IpAddr,
    pub listen_port: u16,
    pub credentials: Credentials,
}

/// Binds the listener, checks the agent, then serves until Ctrl-C.
pub async fn run(opts: TunnelOptions) -> Result<(), HttpError> {
    preflight(&opts).await?;
    let listener = listen(SocketAddr::new(opts.bind, opts.listen_port))?;
    let local = listener.local_addr()?;
    println!(
        "Forwarding {local} -> {} port {} (Ctrl-C to stop)",
        opts.agent, opts.remote_port
    );
    let opts = Arc::new(opts);
    loop {
        let (conn, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let opts = opts.clone();
        tokio::spawn(async move {
            if let Err(err) = forward(conn, &opts).await {
                eprintln!("sbx: connection from {peer}: {err}");
            }
        });
    }
}

/// Binds with a deep backlog: tools open many connections at once (browsers,
/// connection pools, benchmarks) and a short queue would drop them.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Asks the agent for `/info` so that a wrong URL or bad credentials are
/// reported at once, not at the first connection.
async fn preflight(opts: &TunnelOptions) -> Result<(), HttpError> {
    let resp = http::request(
        &opts.agent,
        "/api/v1/info",
        "Connection: close\r\n",
        &opts.credentials,
        OPEN_TIMEOUT,
    )
    .await?;
    if resp.status == 200 {
        return Ok(());
    }
    Err(resp
        .into_failure(|status, msg| explain(status, msg, opts.remote_port))
        .await)
}

async fn forward(local: TcpStream, opts: &TunnelOptions) -> Result<(), HttpError> {
    local.set_nodelay(true)?;
    let (ws, initial) = open(opts).await?;
    let mut config = RelayConfig::new(Role::Client);
    config.ping_interval = Duration::from_secs(CLIENT_PING_INTERVAL_SECS);
    config.idle_timeout = IDLE_TIMEOUT;
    let outcome = relay(ws, initial, local, &config, std::future::pending()).await;
    match outcome.result {
        Ok(()) => {
            tracing::debug!(
                sent = outcome.bytes_to_ws,
                received = outcome.bytes_to_tcp,
                "tunnel closed"
            );
            Ok(())
        }
        Err(err) => Err(HttpError::Io(std::io::Error::other(format!(
            "tunnel broke after {} bytes sent, {} received: {err}",
            outcome.bytes_to_ws, outcome.bytes_to_tcp
        )))),
    }
}

/// Opens one tunnel: returns the upgraded connection and any frame bytes
/// that arrived with the 101.
pub async fn open(opts: &TunnelOptions) -> Result<(TcpStream, Vec<u8>), HttpError> {
    let key = tungstenite::handshake::client::generate_key();
    let headers = format!(
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    let path = format!("{TUNNEL_PATH}?port={}", opts.remote_port);
    let resp = http::request(
        &opts.agent,
        &path,
        &headers,
        &opts.credentials,
        OPEN_TIMEOUT,
    )
    .await?;
    if resp.status != 101 {
        return Err(resp
            .into_failure(|status, msg| explain(status, msg, opts.remote_port))
            .await);
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if resp.header("sec-websocket-accept") != Some(expected.as_str()) {
        return Err(HttpError::Malformed(
            "wrong Sec-WebSocket-Accept in the 101".into(),
        ));
    }
    Ok((resp.stream, resp.rest))
}

/// One line a person can act on.
fn explain(status: u16, message: &str, port: u16) -> String {
    match status {
        400 => format!("agent refused the request: {message}"),
        401 => format!("agent refused our credentials (401): {message}; check --token or --key-file/--sandbox-id"),
        403 => format!("agent forbade the request (403): {message}"),
        429 => format!("agent is at its tunnel limit (429): {message}"),
        502 => format!("cannot reach port {port} inside the sandbox (502): {message}"),
        _ => format!("agent answered HTTP {status}: {message}"),
    }
}
