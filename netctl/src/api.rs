//! The HTTP/JSON API on the daemon's unix socket.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sbx_proto::policy::{SandboxPatch, SandboxSpec};
use sbx_proto::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;

use crate::manager::{ApiError, Manager};
use crate::view::Health;

/// Two full lists of the longest names fit with room to spare.
const MAX_BODY: usize = 16 * 1024 * 1024;

pub fn router(manager: Arc<Manager>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/sandboxes", get(list))
        .route(
            "/v1/sandboxes/{id}",
            get(show).put(put).patch(patch).delete(remove),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(manager)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

/// Parses a body ourselves so a bad one gets our error body, with serde's
/// message (which names unknown fields and bad types).
fn parse<T: DeserializeOwned>(manager: &Manager, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        manager
            .metrics
            .rejected_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ApiError::new(ErrorCode::InvalidPolicy, format!("invalid body: {e}"))
    })
}

async fn health(State(m): State<Arc<Manager>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        sandboxes: m.count(),
    })
}

async fn metrics(State(m): State<Arc<Manager>>) -> Response {
    let samples = m.samples().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.metrics.render(&samples),
    )
        .into_response()
}

async fn list(State(m): State<Arc<Manager>>) -> Response {
    Json(m.list().await).into_response()
}

async fn show(State(m): State<Arc<Manager>>, Path(id): Path<String>) -> Response {
    match m.get(&id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn put(State(m): State<Arc<Manager>>, Path(id): Path<String>, body: Bytes) -> Response {
    let spec: SandboxSpec = match parse(&m, &body) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match m.put(&id, spec).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn patch(State(m): State<Arc<Manager>>, Path(id): Path<String>, body: Bytes) -> Response {
    let p: SandboxPatch = match parse(&m, &body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match m.patch(&id, p).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn remove(State(m): State<Arc<Manager>>, Path(id): Path<String>) -> Response {
    match m.delete(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}
