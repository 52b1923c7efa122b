//! The sandbox API (SPEC 7), shaped like Tensorlake's so the public SDK's
//! `SandboxClient` and `tl sbx port` work against it: list, get, PATCH of
//! the routing settings and the network policy, suspend and resume, under
//! `/v1/namespaces/{ns}/sandboxes...` (what the SDK sends to a localhost
//! URL) and `/sandboxes...` (the cloud form, scoped by the credential).

mod info;
mod lifecycle;
mod scope;
mod update;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sbx_proto::ErrorBody;

pub use info::PublicUrls;
use info::{SandboxInfo, SandboxList};
use scope::Scope;

use crate::auth::CredentialStore;
use crate::registry::{Registry, Sandbox};
use crate::resume::Resumer;

/// Largest PATCH body: a policy with a few thousand entries.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<dyn Registry>,
    pub credentials: Arc<dyn CredentialStore>,
    pub resumer: Arc<Resumer>,
    pub urls: PublicUrls,
    /// netctl's socket for sandboxes whose entry names none.
    pub netctl_socket: Option<PathBuf>,
    /// `SandboxClient.for_localhost` sends no credential; honoured only on
    /// a loopback listener (checked when the config is loaded).
    pub allow_unauthenticated_namespaces: bool,
    /// One write at a time: netctl and the registry change together, in
    /// the same order for every PATCH.
    pub writes: Arc<tokio::sync::Mutex<()>>,
}

pub fn router(state: ApiState) -> Router {
    let one = get(show).patch(update::patch);
    Router::new()
        .route("/v1/namespaces/{ns}/sandboxes", get(list))
        .route("/v1/namespaces/{ns}/sandboxes/{id}", one.clone())
        .route(
            "/v1/namespaces/{ns}/sandboxes/{id}/suspend",
            post(lifecycle::suspend),
        )
        .route(
            "/v1/namespaces/{ns}/sandboxes/{id}/resume",
            post(lifecycle::resume),
        )
        .route("/sandboxes", get(list))
        .route("/sandboxes/{id}", one)
        .route("/sandboxes/{id}/suspend", post(lifecycle::suspend))
        .route("/sandboxes/{id}/resume", post(lifecycle::resume))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// `{"error", "code"}` with a status; the SDK shows the body as it is.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "SANDBOX_NOT_FOUND",
            format!("no sandbox {what:?}"),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: Some(self.code.to_owned()),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<crate::registry::RegistryError> for ApiError {
    fn from(e: crate::registry::RegistryError) -> Self {
        use crate::registry::RegistryError;
        match e {
            RegistryError::Invalid(e) => Self::bad_request(e.to_string()),
            RegistryError::Conflict(m) => Self::bad_request(m),
            RegistryError::NotFound(id) => Self::not_found(&id),
            RegistryError::Store(m) => {
                tracing::error!(error = %m, "registry unavailable");
                Self::unavailable("the sandbox registry is unavailable")
            }
        }
    }
}

impl From<crate::registry::SpecError> for ApiError {
    fn from(e: crate::registry::SpecError) -> Self {
        Self::bad_request(e.to_string())
    }
}

/// The path parameters of both forms: `ns` is present in the namespace form.
type Params = HashMap<String, String>;

impl ApiState {
    /// The sandbox `id` names, if the caller may see it; else 404, whether
    /// it exists or not.
    async fn find(&self, scope: &Scope, id: &str) -> Result<Arc<Sandbox>, ApiError> {
        match self.registry.resolve(id).await? {
            Some(s) if scope.allows(&s) => Ok(s),
            _ => Err(ApiError::not_found(id)),
        }
    }

    /// Authorizes the caller, then finds the sandbox the path names.
    async fn find_for(
        &self,
        params: &Params,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Result<Arc<Sandbox>, ApiError> {
        let scope = scope::authorize(self, params, headers, uri.query()).await?;
        let id = params.get("id").map(String::as_str).unwrap_or_default();
        self.find(&scope, id).await
    }

    fn info(&self, sandbox: &Sandbox) -> SandboxInfo {
        SandboxInfo::new(sandbox, &self.urls)
    }
}

async fn list(
    State(state): State<ApiState>,
    Path(params): Path<Params>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<SandboxList>, ApiError> {
    let scope = scope::authorize(&state, &params, &headers, uri.query()).await?;
    let all = state.registry.list().await?;
    Ok(Json(SandboxList {
        sandboxes: all
            .iter()
            .filter(|s| scope.allows(s))
            .map(|s| state.info(s))
            .collect(),
    }))
}

async fn show(
    State(state): State<ApiState>,
    Path(params): Path<Params>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<SandboxInfo>, ApiError> {
    let sandbox = state.find_for(&params, &headers, &uri).await?;
    Ok(Json(state.info(&sandbox)))
}
