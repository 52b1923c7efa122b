//! The service behind every target, run in the bench process: HTTP/1.1 and
//! h2c (prior knowledge) on one port, answering every request with the same
//! 64-byte body, and a WebSocket echo on any HTTP/1.1 upgrade. The same
//! service serves every route, so whatever it costs is common to all
//! columns.
//!
//! It counts the TCP connections it accepts: every upstream connection a
//! proxy opens (for sbx-proxy, every raw tunnel the agent connects) shows up
//! here, whatever the proxy reports about itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Every plain response carries exactly this body (64 bytes), which also
/// proves a response came from this service and not from a proxy's error
/// page.
pub const BODY: &[u8; 64] = b"sbx-proxy-bench: 64-byte response body from the bench service..\n";
/// Deep enough for 10,000 connections arriving back to back.
const LISTEN_BACKLOG: u32 = 4096;

/// The running service: its address and accepted-connection counter.
#[derive(Clone)]
pub struct Service {
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
}

impl Service {
    /// TCP connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Binds on an ephemeral loopback port and spawns the accept loop on the
/// current runtime; it ends with the runtime.
pub async fn start() -> Result<Service> {
    let socket = TcpSocket::new_v4().context("service socket")?;
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .context("bind service")?;
    let listener = socket.listen(LISTEN_BACKLOG).context("listen service")?;
    let service = Service {
        addr: listener.local_addr()?,
        accepted: Arc::new(AtomicU64::new(0)),
    };
    tokio::spawn(accept_loop(listener, service.accepted.clone()));
    Ok(service)
}

async fn accept_loop(listener: TcpListener, accepted: Arc<AtomicU64>) {
    let builder = Arc::new({
        let mut b = auto::Builder::new(TokioExecutor::new());
        // Room for h2load's 64 streams per connection and more.
        b.http2().max_concurrent_streams(1024);
        b
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handle);
            // A client that hangs up mid-way is the client's business.
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(mut request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(accept) = websocket_accept(&request) {
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(64 << 20))
                    .max_frame_size(Some(64 << 20));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                let _ = echo(ws).await;
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        return Ok(response);
    }
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

/// The `Sec-WebSocket-Accept` value when `request` is an HTTP/1.1
/// WebSocket upgrade.
fn websocket_accept(request: &Request<Incoming>) -> Option<HeaderValue> {
    let h = request.headers();
    let upgrade = h.get(header::UPGRADE)?.to_str().ok()?;
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return None;
    }
    let key = h.get(header::SEC_WEBSOCKET_KEY)?;
    HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key.as_bytes())).ok()
}

async fn echo<S>(mut ws: WebSocketStream<S>) -> Result<(), tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        match msg? {
            m @ (Message::Binary(_) | Message::Text(_)) => ws.send(m).await?,
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}
