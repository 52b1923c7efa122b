//! Who may see which sandboxes through the API: a credential's project
//! (both path forms), narrowed to a namespace in the namespace form; or,
//! when the operator allows it on a loopback listener, a namespace alone.

use axum::http::{HeaderMap, StatusCode};

use super::{ApiError, ApiState, Params};
use crate::auth::{presented, Principal, Verdict};
use crate::registry::Sandbox;

#[derive(Debug, Clone)]
pub struct Scope {
    namespace: Option<String>,
    project: Option<Principal>,
    /// A valid credential outside the project it names.
    nothing: bool,
}

impl Scope {
    pub fn allows(&self, sandbox: &Sandbox) -> bool {
        let spec = &sandbox.spec;
        !self.nothing
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == spec.namespace)
            && self.project.as_ref().is_none_or(|p| {
                p.organization_id == spec.organization_id && p.project_id == spec.project_id
            })
    }
}

pub async fn authorize(
    state: &ApiState,
    params: &Params,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Scope, ApiError> {
    let namespace = params.get("ns").cloned();
    let Some((credential, context)) = presented(headers, query) else {
        if namespace.is_some() && state.allow_unauthenticated_namespaces {
            return Ok(Scope {
                namespace,
                project: None,
                nothing: false,
            });
        }
        return Err(unauthorized("authentication required: an API key, or a personal access token with X-Forwarded-Organization-Id and X-Forwarded-Project-Id"));
    };
    let verdict = state
        .credentials
        .verify(&credential, &context)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "credential store unavailable; refusing");
            ApiError::unavailable("credentials cannot be checked right now")
        })?;
    match verdict {
        Verdict::Granted(project) => Ok(Scope {
            namespace,
            project: Some(project),
            nothing: false,
        }),
        Verdict::OutOfScope => Ok(Scope {
            namespace,
            project: None,
            nothing: true,
        }),
        Verdict::Invalid => Err(unauthorized(
            "the credential is not valid (unknown, expired, or missing its organization/project)",
        )),
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
}
