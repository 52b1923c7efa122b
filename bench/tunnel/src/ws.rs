//! A minimal blocking WebSocket client: just the opening handshake and
//! single small frames.
//!
//! It measures the agent's own open cost (HTTP upgrade plus the agent's
//! local connect) without `sbx` in the way, and holds 1,000 idle tunnels
//! from one thread without a runtime.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use thiserror::Error;

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum WsError {
    #[error("websocket i/o with {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} answered the upgrade with HTTP {status}")]
    Status { addr: SocketAddr, status: u16 },
    #[error("{addr} sent a bad handshake response: {why}")]
    Handshake { addr: SocketAddr, why: String },
    #[error("{addr} sent an unexpected frame: {why}")]
    Frame { addr: SocketAddr, why: String },
}

/// Where and how to open tunnels.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub path: String,
    /// A complete extra header line such as `Authorization: Bearer ...`.
    pub auth_header: Option<String>,
}

/// An open WebSocket with the bytes that followed the 101, if any.
pub struct Conn {
    pub stream: TcpStream,
    addr: SocketAddr,
    pending: Vec<u8>,
}

impl Endpoint {
    /// Connects and completes the opening handshake (RFC 6455 section 4.1).
    pub fn open(&self) -> Result<Conn, WsError> {
        let addr = self.addr;
        let io = |source| WsError::Io { addr, source };
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;

        let key = tungstenite::handshake::client::generate_key();
        let auth = self
            .auth_header
            .as_deref()
            .map(|h| format!("{h}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{auth}\r\n",
            self.path
        );
        stream.write_all(request.as_bytes()).map_err(io)?;

        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).map_err(io)?;
            if n == 0 {
                return Err(WsError::Handshake {
                    addr,
                    why: "connection closed during the handshake".into(),
                });
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let parsed = response.parse(&buf).map_err(|e| WsError::Handshake {
                addr,
                why: e.to_string(),
            })?;
            let httparse::Status::Complete(head_len) = parsed else {
                if buf.len() > MAX_HEAD {
                    return Err(WsError::Handshake {
                        addr,
                        why: "response head too large".into(),
                    });
                }
                continue;
            };
            let status = response.code.unwrap_or(0);
            if status != 101 {
                return Err(WsError::Status { addr, status });
            }
            let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let accept = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                .map(|h| h.value);
            if accept != Some(expected.as_bytes()) {
                return Err(WsError::Handshake {
                    addr,
                    why: "wrong Sec-WebSocket-Accept".into(),
                });
            }
            return Ok(Conn {
                stream,
                addr,
                pending: buf.split_off(head_len),
            });
        }
    }
}

impl Conn {
    /// Sends one masked binary frame of at most 125 bytes.
    pub fn send_small_binary(&mut self, payload: &[u8]) -> Result<(), WsError> {
        let addr = self.addr;
        let len = u8::try_from(payload.len())
            .ok()
            .filter(|&l| l <= 125)
            .ok_or_else(|| WsError::Frame {
                addr,
                why: format!("payload of {} bytes is not small", payload.len()),
            })?;
        let mask: [u8; 4] = rand::random();
        let mut frame = Vec::with_capacity(6 + payload.len());
        frame.extend_from_slice(&[0x82, 0x80 | len]);
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream
            .write_all(&frame)
            .map_err(|source| WsError::Io { addr, source })
    }

    /// Reads one unmasked binary frame of at most 125 bytes.
    pub fn recv_small_binary(&mut self) -> Result<Vec<u8>, WsError> {
        let addr = self.addr;
        let mut head = [0u8; 2];
        self.read_exact(&mut head)?;
        if head[0] != 0x82 || head[1] & 0x80 != 0 || head[1] > 125 {
            return Err(WsError::Frame {
                addr,
                why: format!("header {:02x} {:02x}", head[0], head[1]),
            });
        }
        let mut payload = vec![0u8; usize::from(head[1])];
        self.read_exact(&mut payload)?;
        Ok(payload)
    }

    fn read_exact(&mut self, out: &mut [u8]) -> Result<(), WsError> {
        let from_pending = out.len().min(self.pending.len());
        out[..from_pending].copy_from_slice(&self.pending[..from_pending]);
        self.pending.drain(..from_pending);
        let addr = self.addr;
        self.stream
            .read_exact(&mut out[from_pending..])
            .map_err(|source| WsError::Io { addr, source })
    }
}
