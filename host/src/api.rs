//! The HTTP/JSON API on the unix socket (mode 0600), in netctl's style.
//! Its clients are the proxies (or a fleet's control plane).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::manager::{ApiError, Manager};
use crate::model::{CreateRequest, SandboxList};

/// A create with the longest policy and entrypoint fits with room.
const MAX_BODY: usize = 4 * 1024 * 1024;

pub fn router(manager: Arc<Manager>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/host", get(host))
        .route("/metrics", get(metrics))
        .route("/v1/sandboxes", get(list).post(create))
        .route("/v1/sandboxes/{id}", get(show).delete(remove))
        .route("/v1/sandboxes/{id}/suspend", post(suspend))
        .route("/v1/sandboxes/{id}/resume", post(resume))
        .route("/v1/sandboxes/{id}/forwarded-auth-key", get(key))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(manager)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

async fn health(State(m): State<Arc<Manager>>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "sandboxes": m.host_view().sandboxes}))
}

async fn host(State(m): State<Arc<Manager>>) -> Json<crate::model::HostView> {
    Json(m.host_view())
}

async fn metrics(State(m): State<Arc<Manager>>) -> Response {
    let views = m.list().await;
    let mut states: Vec<(&str, usize)> = Vec::new();
    for v in &views {
        match states.iter_mut().find(|(s, _)| *s == v.state.as_str()) {
            Some((_, n)) => *n += 1,
            None => states.push((v.state.as_str(), 1)),
        }
    }
    let body = m.metrics.render(&states, &m.host_view());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn list(State(m): State<Arc<Manager>>) -> Json<SandboxList> {
    Json(SandboxList {
        sandboxes: m.list().await,
    })
}

async fn create(State(m): State<Arc<Manager>>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?;
    let created = m.create(req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn show(State(m): State<Arc<Manager>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(m.show(&id).await?).into_response())
}

async fn remove(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    m.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn suspend(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(m.suspend(&id).await?).into_response())
}

async fn resume(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(m.resume(&id).await?).into_response())
}

async fn key(State(m): State<Arc<Manager>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(json!({"forwarded_auth_key": m.key(&id).await?})).into_response())
}
