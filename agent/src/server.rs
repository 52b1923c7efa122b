//! The accept loop: HTTP/1.1 with upgrades, bounded connections, header
//! timeouts, and graceful shutdown.
//!
//! hyper is driven directly rather than through `axum::serve` so that an
//! upgraded connection is known to be a plain `TcpStream` (the tunnel relays
//! on raw sockets) and so that slow or excess clients are bounded.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Re-exported: the tunnel and listeners wait on the same signal.
pub use sbx_service::listen::stopping;

/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head hyper buffers.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending connections the kernel queues for us.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the API listener with a deep backlog, so bursts of tunnel opens
/// queue in the kernel instead of being dropped.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    sbx_service::listen::bind(addr, LISTEN_BACKLOG)
}

pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = TowerToHyperService::new(router);
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);

    loop {
        let Some((stream, peer)) = sbx_service::listen::accept(&listener, &mut shutdown).await
        else {
            break;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections, "connection refused: too many connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection(TokioIo::new(stream), service.clone())
            .with_upgrades();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stopping(&mut stop) => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop(slot);
        });
    }

    drop(listener);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("some requests were still running at shutdown");
    }
}
