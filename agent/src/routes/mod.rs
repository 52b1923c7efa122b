//! The HTTP routes of the management API.

mod system;

use std::sync::Arc;

use axum::routing::get;
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
        .route(sbx_proto::tunnel::TUNNEL_PATH, get(tunnel::open))
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
