//! Health and info.

use axum::extract::State;
use axum::Json;
use sbx_proto::api::{Health, Info};

use super::openapi::{HealthDoc, InfoDoc};
use crate::state::AppState;

#[utoipa::path(get, path = "/api/v1/health", tag = "system", security(), responses((status = 200, body = HealthDoc)))]
pub async fn health() -> Json<Health> {
    Json(Health { healthy: true })
}

#[utoipa::path(get, path = "/api/v1/info", tag = "system", responses((status = 200, body = InfoDoc)))]
pub async fn info(State(state): State<AppState>) -> Json<Info> {
    Json(Info {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: state.started.elapsed().as_secs(),
        running_processes: state.processes.running_count(),
        // Every process started since the agent started, finished or not.
        total_processes: state.processes.started_total(),
    })
}
