//! The client-facing listeners: plain (HTTP/1.1 and h2c with prior
//! knowledge) and TLS (ALPN h2 and http/1.1), one hyper-util auto
//! connection per client with upgrades, bounded in count, in header size and
//! time, closed when idle, and drained on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::proxy::{ClientConn, Proxy};

/// Pending connections the kernel queues for us.
const LISTEN_BACKLOG: u32 = 4096;
/// Pause after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Streams one HTTP/2 client may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 keep-alive pings find dead clients.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Requests in flight on one client connection and when it last did
/// anything, so an idle connection (no request, no bytes) can be closed
/// without cutting a quiet SSE stream.
#[derive(Debug)]
pub struct Activity {
    inflight: AtomicUsize,
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inflight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Counts a request until the guard (kept by the response body) drops.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ActivityGuard(self.clone())
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.inflight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }
}

pub struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// What every listener shares.
#[derive(Clone)]
pub struct Shared {
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// One permit per open client connection; also how shutdown waits.
    pub slots: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
}

pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Shared) {
    let builder = Arc::new(builder(&shared.limits));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = stopping(&mut shutdown) => break,
        };
        let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
            shared
                .metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, max = shared.limits.max_connections, "connection refused: too many connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            shared
                .metrics
                .connections_total
                .fetch_add(1, Ordering::Relaxed);
            shared
                .metrics
                .connections_open
                .fetch_add(1, Ordering::Relaxed);
            match tls {
                // hyper's header timer starts only once it has bytes to tell
                // HTTP/1.1 from h2c, so a client that sends nothing at all
                // is cut here.
                None => match first_bytes(&stream, shared.limits.header_read_timeout()).await {
                    true => connection(stream, peer, false, &builder, &shared).await,
                    false => tracing::debug!(%peer, "client sent nothing; closed"),
                },
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        shared.limits.header_read_timeout(),
                        acceptor.accept(stream),
                    );
                    match handshake.await {
                        Ok(Ok(stream)) => connection(stream, peer, true, &builder, &shared).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            shared
                .metrics
                .connections_open
                .fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
}

/// Whether the client sends a first byte in time (and did not just close).
async fn first_bytes(stream: &tokio::net::TcpStream, timeout: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, stream.peek(&mut byte)).await,
        Ok(Ok(n)) if n > 0
    )
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Counted from the moment the connection waits for a request head,
        // so it is also how long an idle HTTP/1.1 connection is kept.
        .header_read_timeout(limits.header_read_timeout())
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(H2_KEEPALIVE))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

async fn connection<I>(
    io: I,
    peer: SocketAddr,
    tls: bool,
    builder: &auto::Builder<TokioExecutor>,
    shared: &Shared,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let client = ClientConn {
        peer,
        tls,
        activity: activity.clone(),
    };
    let proxy = shared.proxy.clone();
    let service = service_fn(move |request| proxy.clone().handle(client.clone(), request));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stop = shared.shutdown.clone();
    let idle_limit = shared.limits.client_idle_timeout();
    // Not `interval`: its first tick is "now", which the timer wheel rounds
    // up to the next millisecond, and that would delay every connection.
    let period = idle_limit / 4;
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            () = stopping(&mut stop) => {
                // Finish what is in flight, then close.
                conn.as_mut().graceful_shutdown();
                break conn.as_mut().await;
            }
            _ = check.tick() => {
                if activity.idle_for().is_some_and(|idle| idle >= idle_limit) {
                    conn.as_mut().graceful_shutdown();
                    break conn.as_mut().await;
                }
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "client connection ended with an error");
    }
}

/// Completes once shutdown starts; never if the sender is gone without it.
pub async fn stopping(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits until every client connection has closed, or `timeout`.
pub async fn drain(slots: &Semaphore, max: usize, timeout: Duration) -> bool {
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    tokio::time::timeout(timeout, slots.acquire_many(all))
        .await
        .is_ok()
}
