//! POST `.../suspend` and `.../resume`: the control plane does the work
//! through the lifecycle hook; the answer is 200 once the sandbox is in the
//! target state (within `wait_ms`, as the SDK asks), else 202 and the SDK
//! polls GET.

use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, Params};
use crate::registry::Status;

/// The SDK never asks for more.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting call looks at the registry.
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Deserialize)]
pub struct Wait {
    #[serde(default)]
    wait_ms: Option<u64>,
}

pub async fn suspend(
    State(state): State<ApiState>,
    Path(params): Path<Params>,
    Query(wait): Query<Wait>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    let sandbox = state.find_for(&params, &headers, &uri).await?;
    match sandbox.spec.status {
        Status::Suspended => return Ok(StatusCode::OK),
        Status::Running => {
            state.resumer.suspend(&sandbox.id).await.map_err(|why| {
                tracing::warn!(sandbox = %sandbox.id, error = %why, "suspend failed");
                ApiError::unavailable(format!("the sandbox could not be suspended: {why}"))
            })?;
            let mut status = serde_json::Map::new();
            status.insert("status".into(), json!(Status::Suspending.as_str()));
            state.registry.patch(&sandbox.id, status).await?;
        }
        Status::Suspending => {}
        other => return Err(invalid_state(other, "suspended")),
    }
    Ok(settle(&state, &sandbox.id, Status::Suspended, wait.wait_ms).await)
}

pub async fn resume(
    State(state): State<ApiState>,
    Path(params): Path<Params>,
    Query(wait): Query<Wait>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    let sandbox = state.find_for(&params, &headers, &uri).await?;
    match sandbox.spec.status {
        Status::Running => return Ok(StatusCode::OK),
        // The same flight an on-demand resume uses: one hook call however
        // many ask, through the API or by requests.
        Status::Suspended | Status::Suspending => state
            .resumer
            .start(&sandbox.id)
            .map_err(|e| ApiError::unavailable(e.message))?,
        other => return Err(invalid_state(other, "resumed")),
    }
    Ok(settle(&state, &sandbox.id, Status::Running, wait.wait_ms).await)
}

/// The SDK treats a 409 as "look again": it succeeds if the sandbox is
/// already where it asked.
fn invalid_state(status: Status, wanted: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "INVALID_STATE",
        format!("a {} sandbox cannot be {wanted}", status.as_str()),
    )
}

/// 200 once the registry shows `target` (within the wait asked for), else
/// 202.
async fn settle(state: &ApiState, id: &str, target: Status, wait_ms: Option<u64>) -> StatusCode {
    let deadline = Instant::now() + Duration::from_millis(wait_ms.unwrap_or(0)).min(MAX_WAIT);
    loop {
        if let Ok(Some(s)) = state.registry.resolve(id).await {
            if s.spec.status == target {
                return StatusCode::OK;
            }
        }
        if Instant::now() >= deadline {
            return StatusCode::ACCEPTED;
        }
        tokio::time::sleep(POLL).await;
    }
}
