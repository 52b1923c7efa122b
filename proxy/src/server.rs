//! The client-facing listeners: plain (HTTP/1.1 and h2c with prior
//! knowledge) and TLS (ALPN h2 and http/1.1), one hyper connection per
//! client (HTTP/1.1 with upgrades), bounded in count, in header size and
//! time, closed when idle, and drained on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::proxy::{ClientConn, Proxy};

/// Re-exported: the tunnel and listeners wait on the same signal.
pub use sbx_service::listen::stopping;

/// Pending connections the kernel queues for us.
const LISTEN_BACKLOG: u32 = 4096;
/// Streams one HTTP/2 client may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 keep-alive pings find dead clients.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    sbx_service::listen::bind(addr, LISTEN_BACKLOG)
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
    let builders = Arc::new(Builders::new(&shared.limits));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let Some((stream, peer)) = sbx_service::listen::accept(&listener, &mut shutdown).await
        else {
            break;
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
        shared
            .metrics
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        // One task type per listener kind, so a plain connection's task is
        // not sized for the TLS state it will never have.
        let open = OpenConnection {
            metrics: shared.metrics.clone(),
            _slot: slot,
        };
        match &tls {
            None => {
                tokio::spawn(plain(stream, peer, builders.clone(), shared.clone(), open));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(secure(
                    stream,
                    peer,
                    acceptor,
                    builders.clone(),
                    shared.clone(),
                    open,
                ));
            }
        }
    }
}

/// Counts a client connection as open, and holds its slot, until dropped.
struct OpenConnection {
    metrics: Arc<Metrics>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl OpenConnection {
    fn opened(self) -> Self {
        self.metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn plain(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    builders: Arc<Builders>,
    shared: Shared,
    open: OpenConnection,
) {
    let _open = open.opened();
    match sniff(&stream, shared.limits.header_read_timeout()).await {
        Some(protocol) => connection(stream, peer, false, protocol, &builders, &shared).await,
        None => tracing::debug!(%peer, "client sent no request in time; closed"),
    }
}

async fn secure(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    builders: Arc<Builders>,
    shared: Shared,
    open: OpenConnection,
) {
    let _open = open.opened();
    let timeout = shared.limits.header_read_timeout();
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let protocol = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            connection(stream, peer, true, protocol, &builders, &shared).await
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// What an h2c client sends first (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells HTTP/1.1 from h2c with prior knowledge by peeking at the first
/// bytes, within `timeout` (a client that sends nothing is cut here: hyper's
/// own header timer only starts once a protocol is chosen). Choosing before
/// hyper does means an HTTP/1.1 connection carries no HTTP/2 state, which
/// is most of a connection's memory when ten thousand sit idle.
async fn sniff(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<Protocol> {
    let look = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Some(Protocol::Http1);
            }
            if n == H2_PREFACE.len() {
                return Some(Protocol::Http2);
            }
            // A preface split across segments: rare, wait for the rest.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(timeout, look).await.ok().flatten()
}

/// The two protocol builders, configured once.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &Limits) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // Counted from the moment the connection waits for a request
            // head, so it is also how long an idle HTTP/1.1 connection is
            // kept.
            .header_read_timeout(limits.header_read_timeout())
            .max_buf_size(limits.max_header_bytes.max(8192));
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .keep_alive_interval(Some(H2_KEEPALIVE))
            .keep_alive_timeout(Duration::from_secs(20));
        Self {
            http1: h1,
            http2: h2,
        }
    }
}

/// hyper's two connection types, as far as shutdown is concerned.
trait Drain: Future<Output = Result<(), hyper::Error>> {
    fn drain(self: Pin<&mut Self>);
}

impl<I, S> Drain for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S> Drain for http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    S::ResBody: hyper::body::Body + Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

async fn connection<I>(
    io: I,
    peer: SocketAddr,
    tls: bool,
    protocol: Protocol,
    builders: &Builders,
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
    let io = TokioIo::new(io);
    let result = match protocol {
        // hyper closes an idle HTTP/1.1 connection at the header timeout.
        Protocol::Http1 => {
            let conn = builders.http1.serve_connection(io, service).with_upgrades();
            drive(conn, shared, None).await
        }
        // Boxed: the HTTP/2 state is only paid for by HTTP/2 connections.
        Protocol::Http2 => {
            let conn = builders.http2.serve_connection(io, service);
            Box::pin(drive(conn, shared, Some(&activity))).await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "client connection ended with an error");
    }
}

/// Runs a connection until it ends, shutdown starts (requests in flight
/// finish first), or, when `activity` is given, it has been idle for the
/// client idle timeout.
async fn drive<C: Drain>(
    conn: C,
    shared: &Shared,
    activity: Option<&Activity>,
) -> Result<(), hyper::Error> {
    tokio::pin!(conn);
    let mut stop = shared.shutdown.clone();
    let Some(activity) = activity else {
        tokio::select! {
            r = conn.as_mut() => return r,
            () = stopping(&mut stop) => {
                conn.as_mut().drain();
                return conn.as_mut().await;
            }
        }
    };
    let idle_limit = shared.limits.client_idle_timeout();
    // Not `interval`: its first tick is "now", which the timer wheel rounds
    // up to the next millisecond, and that would delay every connection.
    let period = idle_limit / 4;
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            r = conn.as_mut() => return r,
            () = stopping(&mut stop) => {
                conn.as_mut().drain();
                return conn.as_mut().await;
            }
            _ = check.tick() => {
                if activity.idle_for().is_some_and(|idle| idle >= idle_limit) {
                    conn.as_mut().drain();
                    return conn.as_mut().await;
                }
            }
        }
    }
}

/// Waits until every client connection has closed, or `timeout`.
pub async fn drain(slots: &Semaphore, max: usize, timeout: Duration) -> bool {
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    tokio::time::timeout(timeout, slots.acquire_many(all))
        .await
        .is_ok()
}
