//! The admin API on a unix socket (mode 0600): the registry, written by the
//! control plane or the CLI, and `/metrics`. Only root (or the proxy's own
//! user) can connect, so it needs no credentials of its own.

pub mod client;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sbx_proto::ErrorBody;
use serde::Serialize;

use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryError, SandboxSpec, SandboxView};

/// Largest admin request body.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<dyn Registry>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/sandboxes", get(list))
        .route(
            "/v1/sandboxes/{id}",
            get(show).put(put).patch(patch).delete(remove),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

#[derive(Serialize)]
struct List {
    sandboxes: Vec<SandboxView>,
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody {
        error: message,
        code: Some(code.to_owned()),
    };
    (status, Json(body)).into_response()
}

fn registry_error(err: RegistryError) -> Response {
    match err {
        RegistryError::Invalid(e) => error(StatusCode::BAD_REQUEST, "BAD_REQUEST", e.to_string()),
        RegistryError::NotFound(id) => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no sandbox {id:?}"),
        ),
        // SPEC 7: a name that equals another sandbox's id is a 400.
        RegistryError::Conflict(m) => error(StatusCode::BAD_REQUEST, "BAD_REQUEST", m),
        RegistryError::Store(m) => {
            tracing::error!(error = %m, "registry store failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", m)
        }
    }
}

async fn list(State(state): State<AdminState>) -> Response {
    match state.registry.list().await {
        Ok(all) => Json(List {
            sandboxes: all.iter().map(|s| s.view()).collect(),
        })
        .into_response(),
        Err(e) => registry_error(e),
    }
}

async fn show(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    match state.registry.resolve(&id).await {
        Ok(Some(sandbox)) => Json(sandbox.view()).into_response(),
        Ok(None) => registry_error(RegistryError::NotFound(id)),
        Err(e) => registry_error(e),
    }
}

async fn put(State(state): State<AdminState>, Path(id): Path<String>, body: Bytes) -> Response {
    let spec = match SandboxSpec::from_json(&body) {
        Ok(spec) => spec,
        Err(e) => return registry_error(e.into()),
    };
    match state.registry.put(&id, spec).await {
        Ok(sandbox) => {
            tracing::info!(sandbox = %id, agent = %sandbox.spec.agent, "sandbox registered");
            Json(sandbox.view()).into_response()
        }
        Err(e) => registry_error(e),
    }
}

async fn patch(State(state): State<AdminState>, Path(id): Path<String>, body: Bytes) -> Response {
    let patch = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "`body`: a PATCH body is a JSON object".into(),
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                format!("`body`: {e}"),
            )
        }
    };
    match state.registry.patch(&id, patch).await {
        Ok(sandbox) => {
            tracing::info!(sandbox = %sandbox.id, "sandbox changed");
            Json(sandbox.view()).into_response()
        }
        Err(e) => registry_error(e),
    }
}

async fn remove(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    match state.registry.remove(&id).await {
        Ok(true) => {
            tracing::info!(sandbox = %id, "sandbox removed");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => registry_error(RegistryError::NotFound(id)),
        Err(e) => registry_error(e),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let count = state.registry.list().await.map(|l| l.len()).unwrap_or(0);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(count),
    )
        .into_response()
}
