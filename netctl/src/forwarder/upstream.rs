//! Asking the configured resolvers: UDP first, and TCP when the answer
//! came back truncated (so every address the client will eventually see is
//! known before any of them is released), or when the client itself asked
//! over TCP. Sockets live in netctl's own namespace.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

/// The largest DNS message (both transports).
pub const MAX_MESSAGE: usize = 65_535;
/// The TC bit in the second header byte.
const TRUNCATED: u8 = 0x02;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no resolver answered within {0:?}")]
    Timeout(Duration),
    #[error("no resolver is configured")]
    NoResolver,
    #[error("resolver {server}: {message}")]
    Failed { server: SocketAddr, message: String },
}

/// The resolvers, in order, and the time one question may take in all.
#[derive(Debug, Clone)]
pub struct Upstreams {
    servers: Vec<SocketAddr>,
    budget: Duration,
}

impl Upstreams {
    pub fn new(servers: Vec<SocketAddr>, budget: Duration) -> Self {
        Self { servers, budget }
    }

    /// The answer to `query` (a whole DNS message whose ID is `id`): the
    /// first resolver that answers, trying the next on an error. A
    /// truncated UDP answer is asked again over TCP; `udp_answer` is then
    /// the truncated one, for a client that asked over UDP.
    pub async fn ask(&self, query: &[u8], id: u16, tcp: bool) -> Result<Reply, UpstreamError> {
        if self.servers.is_empty() {
            return Err(UpstreamError::NoResolver);
        }
        let deadline = Instant::now() + self.budget;
        let mut last = None;
        for server in &self.servers {
            let asked = tokio::time::timeout_at(deadline, async {
                if tcp {
                    return over_tcp(*server, query, id).await.map(|full| Reply {
                        full,
                        udp_answer: None,
                    });
                }
                let answer = over_udp(*server, query, id).await?;
                if answer.get(2).is_some_and(|b| b & TRUNCATED != 0) {
                    let full = over_tcp(*server, query, id).await?;
                    return Ok(Reply {
                        full,
                        udp_answer: Some(answer),
                    });
                }
                Ok(Reply {
                    full: answer,
                    udp_answer: None,
                })
            })
            .await;
            match asked {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(message)) => {
                    last = Some(UpstreamError::Failed {
                        server: *server,
                        message,
                    })
                }
                Err(_) => return Err(UpstreamError::Timeout(self.budget)),
            }
        }
        Err(last.unwrap_or(UpstreamError::Timeout(self.budget)))
    }
}

/// An upstream answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The complete answer.
    pub full: Vec<u8>,
    /// The truncated UDP answer, when the complete one came over TCP.
    pub udp_answer: Option<Vec<u8>>,
}

async fn over_udp(server: SocketAddr, query: &[u8], id: u16) -> Result<Vec<u8>, String> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    // A fresh socket (random port) per question, connected so only the
    // resolver's datagrams reach it.
    let socket = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    socket.connect(server).await.map_err(|e| e.to_string())?;
    socket.send(query).await.map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let n = socket.recv(&mut buffer).await.map_err(|e| e.to_string())?;
        // Anything but the answer to this question (a stale or forged
        // datagram) is ignored; the deadline bounds the wait.
        if n >= 12 && u16::from_be_bytes([buffer[0], buffer[1]]) == id {
            buffer.truncate(n);
            return Ok(buffer);
        }
    }
}

async fn over_tcp(server: SocketAddr, query: &[u8], id: u16) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let length = u16::try_from(query.len()).map_err(|_| "query too long".to_owned())?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.map_err(|e| e.to_string())?;
    let length = stream.read_u16().await.map_err(|e| e.to_string())?;
    let mut answer = vec![0u8; usize::from(length)];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    if answer.len() < 12 || u16::from_be_bytes([answer[0], answer[1]]) != id {
        return Err("answer does not match the question".into());
    }
    Ok(answer)
}
