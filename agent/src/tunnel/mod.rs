//! `GET /api/v1/tunnels/tcp?port=N`: the TCP tunnel.
//!
//! Everything that can be refused is refused before the upgrade, with a JSON
//! error: the port (400), the handshake (400), the tunnel limit (429), and
//! the local connect (502). Only then does the client get its 101.

mod handshake;
mod raw;

pub use raw::{__path_open_raw, open_raw};

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use sbx_proto::tunnel::parse_port_query;
use sbx_proto::ErrorCode;
use sbx_relay::{relay, RelayConfig, Role};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::ApiError;
use crate::routes::openapi::ErrorDoc;
use crate::state::AppState;

/// The only address a tunnel ever reaches.
const TUNNEL_HOST: [u8; 4] = [127, 0, 0, 1];

#[utoipa::path(get, path = "/api/v1/tunnels/tcp", tag = "tunnels",
    params(("port" = u16, Query, description = "Port on 127.0.0.1 inside the sandbox (never another address)", minimum = 1, maximum = 65535)),
    responses(
        (status = 101, description = "WebSocket (RFC 6455: `Connection: Upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`). Binary frames are relayed verbatim to and from 127.0.0.1:port; a Close frame half-closes; a text frame closes the tunnel with 1003"),
        (status = 400, description = "INVALID_PORT: missing, repeated, not a number, 0 or above 65535; BAD_REQUEST: not a WebSocket upgrade", body = ErrorDoc),
        (status = 429, description = "TOO_MANY_TUNNELS", body = ErrorDoc),
        (status = 502, description = "CONNECTION_REFUSED: nothing accepted on 127.0.0.1:port (checked before the upgrade)", body = ErrorDoc)))]
pub async fn open(
    State(state): State<AppState>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let port = parse_port_query(request.uri().query())
        .map_err(|e| ApiError::new(ErrorCode::InvalidPort, e.to_string()))?;
    let accept_key = handshake::accept_key(request.headers())?;
    let (on_upgrade, target, permit) = admit(&state, port, &mut request).await?;
    tokio::spawn(run(state, port, on_upgrade, target, permit));
    Ok(handshake::switching_protocols(&accept_key))
}

/// The refusals both tunnel kinds share, in order: the tunnel limit (429),
/// an upgradable connection, then the local connect (502).
async fn admit(
    state: &AppState,
    port: u16,
    request: &mut Request,
) -> Result<(hyper::upgrade::OnUpgrade, TcpStream, OwnedSemaphorePermit), ApiError> {
    let permit = state.tunnels.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            ErrorCode::TooManyTunnels,
            format!(
                "{} tunnels are open, the configured maximum",
                state.config.max_tunnels
            ),
        )
    })?;
    let on_upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            ApiError::new(ErrorCode::BadRequest, "this connection cannot be upgraded")
        })?;
    let target = connect(port, state.config.connect_timeout).await?;
    Ok((on_upgrade, target, permit))
}

/// Takes the plain TCP stream back from an upgraded connection, with the
/// bytes hyper had already read past the request head.
async fn upgraded_stream(
    on_upgrade: hyper::upgrade::OnUpgrade,
    port: u16,
) -> Option<(TcpStream, bytes::Bytes)> {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => {
            tracing::warn!(port, error = %err, "tunnel upgrade failed");
            return None;
        }
    };
    // The server loop hands hyper plain TCP streams, so the upgraded
    // connection can be taken back as one: the relays work on raw sockets.
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let stream = parts.io.into_inner();
            let _ = stream.set_nodelay(true);
            Some((stream, parts.read_buf))
        }
        Err(_) => {
            tracing::error!(port, "upgraded connection is not a TCP stream");
            None
        }
    }
}

/// The peer (the proxy, or a direct client) as text for log lines, so an
/// open and its close can be paired.
fn peer_of(stream: &TcpStream) -> String {
    stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_owned(), |addr| addr.to_string())
}

async fn connect(port: u16, timeout: Duration) -> Result<TcpStream, ApiError> {
    let addr = std::net::SocketAddr::from((TUNNEL_HOST, port));
    let refused = |why: String| {
        ApiError::new(
            ErrorCode::ConnectionRefused,
            format!("cannot connect to 127.0.0.1:{port}: {why}"),
        )
    };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| refused(format!("timed out after {timeout:?}")))?
        .map_err(|e| refused(e.to_string()))?;
    // Interactive protocols (redis, DevTools, VNC) want every write sent now.
    stream
        .set_nodelay(true)
        .map_err(|e| refused(e.to_string()))?;
    Ok(stream)
}

async fn run(
    state: AppState,
    port: u16,
    on_upgrade: hyper::upgrade::OnUpgrade,
    target: TcpStream,
    permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let Some((ws, read_buf)) = upgraded_stream(on_upgrade, port).await else {
        return;
    };
    let peer = peer_of(&ws);
    tracing::info!(port, peer = %peer, "tunnel open");

    let config = relay_config(&state);
    let mut shutdown = state.shutdown.clone();
    let on_shutdown = async move { crate::server::stopping(&mut shutdown).await };
    let outcome = relay(ws, read_buf.to_vec(), target, &config, on_shutdown).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    match &outcome.result {
        Ok(()) => tracing::info!(
            port,
            peer = %peer,
            bytes_in = outcome.bytes_to_tcp,
            bytes_out = outcome.bytes_to_ws,
            duration_ms,
            "tunnel closed"
        ),
        Err(err) => tracing::warn!(
            port,
            peer = %peer,
            bytes_in = outcome.bytes_to_tcp,
            bytes_out = outcome.bytes_to_ws,
            duration_ms,
            error = %err,
            "tunnel closed with error"
        ),
    }
    drop(permit);
}

fn relay_config(state: &AppState) -> RelayConfig {
    let mut config = RelayConfig::new(Role::Server);
    config.max_frame_size = state.config.max_frame_size as u64;
    config.ping_interval = state.config.ping_interval;
    config.idle_timeout = state.config.idle_timeout;
    config
}
