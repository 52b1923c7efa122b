//! `/pty`: create, list, inspect, resize and end PTY sessions, and their
//! WebSocket.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use sbx_proto::api::{CreatePty, PtyCreated, PtyInfo, PtyList, PtyResize};
use sbx_proto::ErrorCode;
use serde::Deserialize;

use super::extract::{ApiJson, ApiQuery};
use super::openapi::*;
use crate::error::ApiError;
use crate::pty::ws;
use crate::state::AppState;

#[utoipa::path(post, path = "/api/v1/pty", tag = "pty", request_body = CreatePtyDoc, responses((status = 201, body = PtyCreatedDoc), (status = 400, description = "BAD_REQUEST: size out of range, bad command", body = ErrorDoc), (status = 429, description = "TOO_MANY_SESSIONS", body = ErrorDoc), (status = 503, description = "UNAVAILABLE: cannot open a pseudo-terminal", body = ErrorDoc)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreatePty>,
) -> Result<(StatusCode, Json<PtyCreated>), ApiError> {
    let (session, token) = state.ptys.create(body)?;
    Ok((
        StatusCode::CREATED,
        Json(PtyCreated {
            session_id: session.id.clone(),
            token,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/pty", tag = "pty", responses((status = 200, body = PtyListDoc)))]
pub async fn list(State(state): State<AppState>) -> Json<PtyList> {
    Json(PtyList {
        sessions: state.ptys.list(),
    })
}

#[utoipa::path(get, path = "/api/v1/pty/{id}", tag = "pty", params(("id" = String, Path, description = "PTY session id")), responses((status = 200, body = PtyInfoDoc), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PtyInfo>, ApiError> {
    Ok(Json(state.ptys.get(&id)?.info()))
}

#[utoipa::path(delete, path = "/api/v1/pty/{id}", tag = "pty", params(("id" = String, Path, description = "PTY session id")), responses((status = 204, description = "SIGHUP, then SIGKILL after 2 s; the session is forgotten at once"), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.ptys.remove(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/pty/{id}/resize", tag = "pty", params(("id" = String, Path, description = "PTY session id")), request_body = PtyResizeDoc, responses((status = 204), (status = 400, description = "BAD_REQUEST", body = ErrorDoc), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn resize(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PtyResize>,
) -> Result<StatusCode, ApiError> {
    state.ptys.get(&id)?.resize(body.rows, body.cols)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    pub(crate) token: Option<String>,
}

/// `GET /pty/{id}/ws`: the token comes in `X-PTY-Token` or `?token=`.
#[utoipa::path(get, path = "/api/v1/pty/{id}/ws", tag = "pty", params(("id" = String, Path, description = "PTY session id"), ("token" = Option<String>, Query, description = "Session token (or the X-PTY-Token header)")), responses((status = 101, description = "WebSocket; binary frames with a 1-byte opcode. In: 0x00 data, 0x01 resize (cols u16 BE, rows u16 BE), 0x02 ready. Out: 0x00 data, 0x03 exit (i32 BE), then close with reason `exit:<code>`"), (status = 400, description = "BAD_REQUEST: not a WebSocket upgrade", body = ErrorDoc), (status = 403, description = "INVALID_TOKEN", body = ErrorDoc), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn websocket(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<TokenQuery>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let session = state.ptys.get(&id)?;
    let token = request
        .headers()
        .get("x-pty-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.token);
    match token {
        Some(token) if session.token_matches(&token) => {}
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidToken,
                "wrong PTY session token",
            ))
        }
        None => {
            return Err(ApiError::new(
                ErrorCode::InvalidToken,
                "missing PTY session token (X-PTY-Token header or ?token=)",
            ))
        }
    }
    let accept = accept_key(request.headers())?;
    let on_upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            ApiError::new(ErrorCode::BadRequest, "this connection cannot be upgraded")
        })?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => ws::serve(session, upgraded).await,
            Err(err) => tracing::debug!(error = %err, "PTY upgrade failed"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    Ok(response)
}

/// Checks the WebSocket upgrade headers (RFC 6455 4.2.1) and derives the
/// accept key.
fn accept_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let bad = |msg: &str| ApiError::new(ErrorCode::BadRequest, msg);
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
        return Err(bad("expected a WebSocket upgrade"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        != Some("13")
    {
        return Err(bad("unsupported WebSocket version: use 13"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad("missing Sec-WebSocket-Key"))?;
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}
