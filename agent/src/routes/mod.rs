//! The HTTP routes of the management API.

mod extract;
pub(crate) mod files;
pub(crate) mod openapi;
pub(crate) mod processes;
pub(crate) mod pty;
mod system;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use sbx_proto::ErrorCode;

use crate::auth::{require_auth, Authenticator};
use crate::error::ApiError;
use crate::state::AppState;
use crate::tunnel;

/// Every route; all but `/health` sit behind authentication.
pub fn router(state: AppState, auth: Arc<Authenticator>) -> Router {
    let protected = Router::new()
        .route("/api/v1/info", get(system::info))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route(
            "/api/v1/processes",
            get(processes::list).post(processes::create),
        )
        .route(
            "/api/v1/files",
            get(files::read).put(files::write).delete(files::delete),
        )
        .route("/api/v1/files/list", get(files::list))
        .route("/api/v1/pty", get(pty::list).post(pty::create))
        .route("/api/v1/pty/{id}", get(pty::get).delete(pty::delete))
        .route("/api/v1/pty/{id}/resize", post(pty::resize))
        .route("/api/v1/pty/{id}/ws", get(pty::websocket))
        .route("/api/v1/processes/run", post(processes::run))
        .route(
            "/api/v1/processes/{pid}",
            get(processes::get).delete(processes::kill),
        )
        .route("/api/v1/processes/{pid}/signal", post(processes::signal))
        .route(
            "/api/v1/processes/{pid}/stdin",
            post(processes::write_stdin),
        )
        .route(
            "/api/v1/processes/{pid}/stdin/close",
            post(processes::close_stdin),
        )
        .route("/api/v1/processes/{pid}/stdout", get(processes::stdout))
        .route("/api/v1/processes/{pid}/stderr", get(processes::stderr))
        .route("/api/v1/processes/{pid}/output", get(processes::output))
        .route(
            "/api/v1/processes/{pid}/stdout/follow",
            get(processes::follow_stdout),
        )
        .route(
            "/api/v1/processes/{pid}/stderr/follow",
            get(processes::follow_stderr),
        )
        .route(
            "/api/v1/processes/{pid}/output/follow",
            get(processes::follow_output),
        )
        .route(sbx_proto::tunnel::TUNNEL_PATH, get(tunnel::open))
        .route(sbx_proto::tunnel::RAW_TUNNEL_PATH, get(tunnel::open_raw))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(auth, require_auth));
    Router::new()
        .route("/api/v1/health", get(system::health))
        .merge(protected)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}
