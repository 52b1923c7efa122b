//! `GET /api/v1/tunnels/raw?port=N` with `Upgrade: sbx-tcp`: the sandbox
//! proxy's byte stream to a user port.
//!
//! The WebSocket tunnel frames and masks every chunk, which the proxy would
//! pay for on each request it carries; here the connection, once upgraded, is
//! the TCP stream itself and the agent only copies bytes. Refusals are the
//! WebSocket tunnel's, in the same order and before the 101.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use sbx_proto::tunnel::{parse_port_query, RAW_TUNNEL_PROTOCOL};
use sbx_proto::ErrorCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::handshake::header_has_token;
use super::{admit, peer_of, upgraded_stream};
use crate::error::ApiError;
use crate::routes::openapi::ErrorDoc;
use crate::state::AppState;

#[utoipa::path(get, path = "/api/v1/tunnels/raw", tag = "tunnels",
    params(("port" = u16, Query, description = "Port on 127.0.0.1 inside the sandbox (never another address)", minimum = 1, maximum = 65535)),
    responses(
        (status = 101, description = "`Connection: Upgrade`, `Upgrade: sbx-tcp`: after the 101 the connection is the TCP stream to 127.0.0.1:port, byte for byte (the sandbox proxy's path to a user port)"),
        (status = 400, description = "INVALID_PORT: missing, repeated, not a number, 0 or above 65535; BAD_REQUEST: not an `Upgrade: sbx-tcp` request", body = ErrorDoc),
        (status = 429, description = "TOO_MANY_TUNNELS", body = ErrorDoc),
        (status = 502, description = "CONNECTION_REFUSED: nothing accepted on 127.0.0.1:port (checked before the upgrade)", body = ErrorDoc)))]
pub async fn open_raw(
    State(state): State<AppState>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let port = parse_port_query(request.uri().query())
        .map_err(|e| ApiError::new(ErrorCode::InvalidPort, e.to_string()))?;
    let headers = request.headers();
    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, RAW_TUNNEL_PROTOCOL)
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("expected Connection: Upgrade and Upgrade: {RAW_TUNNEL_PROTOCOL}"),
        ));
    }
    let (on_upgrade, target, permit) = admit(&state, port, &mut request).await?;
    tokio::spawn(run(state, port, on_upgrade, target, permit));

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(
        header::UPGRADE,
        HeaderValue::from_static(RAW_TUNNEL_PROTOCOL),
    );
    Ok(response)
}

async fn run(
    state: AppState,
    port: u16,
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut target: TcpStream,
    permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let Some((mut stream, read_buf)) = upgraded_stream(on_upgrade, port).await else {
        return;
    };
    let peer = peer_of(&stream);
    tracing::debug!(port, peer = %peer, "raw tunnel open");
    let mut shutdown = state.shutdown.clone();
    let result = async {
        // Bytes the client pipelined behind its request head belong to the
        // service.
        target.write_all(&read_buf).await?;
        tokio::select! {
            // Copies both ways with 8 KiB buffers; an EOF on one side shuts
            // down the other's write half, so half-close carries through.
            copied = tokio::io::copy_bidirectional(&mut stream, &mut target) => copied,
            () = crate::server::stopping(&mut shutdown) => Ok((0, 0)),
        }
    }
    .await;
    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok((to_service, to_client)) => tracing::debug!(
            port,
            peer = %peer,
            bytes_in = to_service + read_buf.len() as u64,
            bytes_out = to_client,
            duration_ms,
            "raw tunnel closed"
        ),
        Err(err) => tracing::debug!(
            port,
            peer = %peer,
            duration_ms,
            error = %err,
            "raw tunnel closed with error"
        ),
    }
    drop(permit);
}
