//! Opening a byte stream to a port inside a sandbox: TCP to its agent, and
//! for a user port the agent's raw tunnel (`GET /api/v1/tunnels/raw?port=N`,
//! `Upgrade: sbx-tcp`), after which the socket carries the service's bytes.
//!
//! The upgrade handshake is written by hand rather than with hyper's client:
//! it is one request and one response head, and doing it on the socket
//! keeps the pooled connection a bare `TcpStream` (no boxed upgraded IO in
//! the path of every byte).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use sbx_proto::auth::{ForwardedAuthKey, FORWARDED_AUTH_HEADER};
use sbx_proto::tunnel::{RAW_TUNNEL_PATH, RAW_TUNNEL_PROTOCOL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::route::AGENT_PORT;

/// Largest response head the agent sends to a tunnel request.
const MAX_HEAD: usize = 16 * 1024;

/// Why no stream could be opened; mapped to SPEC 6's error codes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the sandbox's agent at {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("nothing is listening on port {port} inside the sandbox")]
    PortNotListening { port: u16 },
    #[error("the sandbox's agent has too many open tunnels")]
    AgentBusy,
    #[error("the sandbox's agent refused the proxy's forwarded auth (key or sandbox id mismatch)")]
    AuthRefused,
    #[error("the sandbox's agent answered the tunnel request with {0}")]
    Protocol(String),
    #[error("the sandbox changed while connecting; retry")]
    Changed,
    #[error("no usable forwarded-auth key for this sandbox: {0}")]
    NoKey(String),
}

/// Mints a forwarded-auth token valid for `ttl`.
pub fn mint(key: &ForwardedAuthKey, sandbox_id: &str, ttl: Duration) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    key.mint(sandbox_id, now.saturating_add(ttl.as_secs()))
}

/// Connects to `port` inside the sandbox whose agent is at `agent`; returns
/// the stream and any service bytes read with the tunnel's answer.
pub async fn open(
    agent: SocketAddr,
    port: u16,
    token: impl FnOnce() -> String,
    timeout: Duration,
) -> Result<(TcpStream, Bytes), ConnectError> {
    let unreachable = |reason: String| ConnectError::Unreachable {
        addr: agent,
        reason,
    };
    let work = async {
        let mut stream = TcpStream::connect(agent)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let early = if port == AGENT_PORT {
            Bytes::new()
        } else {
            handshake(&mut stream, agent, port, &token()).await?
        };
        Ok((stream, early))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
}

/// Sends the upgrade request and reads the answer's head. Returns the bytes
/// that arrived behind the head: they already belong to the service.
async fn handshake(
    stream: &mut TcpStream,
    agent: SocketAddr,
    port: u16,
    token: &str,
) -> Result<Bytes, ConnectError> {
    let request = format!(
        "GET {RAW_TUNNEL_PATH}?port={port} HTTP/1.1\r\nHost: {agent}\r\nConnection: Upgrade\r\n\
         Upgrade: {RAW_TUNNEL_PROTOCOL}\r\n{FORWARDED_AUTH_HEADER}: {token}\r\n\r\n"
    );
    let io = |e: std::io::Error| ConnectError::Unreachable {
        addr: agent,
        reason: e.to_string(),
    };
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err(ConnectError::Protocol("a closed connection".into()));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                return match response.code.unwrap_or(0) {
                    101 => Ok(buf.split_off(head_len).freeze()),
                    502 => Err(ConnectError::PortNotListening { port }),
                    429 => Err(ConnectError::AgentBusy),
                    401 => Err(ConnectError::AuthRefused),
                    other => Err(ConnectError::Protocol(format!("status {other}"))),
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(ConnectError::Protocol("an oversized response head".into()))
            }
            Err(e) => return Err(ConnectError::Protocol(format!("a malformed head ({e})"))),
        }
    }
}
