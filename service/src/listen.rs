//! The accept side both network daemons share: a listener with a deep
//! backlog, an accept loop step that survives transient errors (out of file
//! descriptors) and stops at shutdown, and the shutdown signal itself.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Pause after an accept error, so a full descriptor table is not spun on.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Binds with a deep backlog: bursts (a tunnel pool opening, a load
/// balancer's new connections) queue in the kernel instead of being dropped.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The next connection, or `None` once shutdown starts.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => return Some(conn),
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            () = stopping(shutdown) => return None,
        }
    }
}

/// Completes once shutdown starts; never if the sender is gone without it.
pub async fn stopping(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}
