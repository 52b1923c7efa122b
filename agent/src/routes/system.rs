//! Health and info.

use axum::extract::State;
use axum::Json;
use sbx_proto::api::{Health, Info};

use crate::state::AppState;

pub async fn health() -> Json<Health> {
    Json(Health { healthy: true })
}

pub async fn info(State(state): State<AppState>) -> Json<Info> {
    Json(Info {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: state.started.elapsed().as_secs(),
        // Process management arrives with the management API; until then
        // the agent runs none.
        running_processes: 0,
        total_processes: 0,
    })
}
