//! The sandbox's network policy lives in netctl on its host: a PATCH of
//! `network` through the sandbox API is a PATCH to netctl's unix socket.

use std::path::Path;

use sbx_proto::policy::{NetworkPolicy, SandboxPatch};
use sbx_service::control::{self, ClientError};

/// Why netctl did not apply a policy.
#[derive(Debug, thiserror::Error)]
pub enum NetctlError {
    /// netctl refused the policy (an invalid or unresolvable entry): its
    /// message names the entry, and the caller gets it as a 400.
    #[error("{0}")]
    Refused(String),
    /// netctl does not know the sandbox.
    #[error("netctl has no sandbox {0:?}")]
    UnknownSandbox(String),
    /// netctl could not be asked or failed.
    #[error("{0}")]
    Unavailable(String),
}

/// Replaces (`Some`) or clears (`None`) the policy of `id` through netctl.
pub async fn set_policy(
    socket: &Path,
    id: &str,
    policy: Option<&NetworkPolicy>,
) -> Result<(), NetctlError> {
    let patch = SandboxPatch {
        network: Some(policy.cloned()),
    };
    let body = serde_json::to_vec(&patch).map_err(|e| NetctlError::Unavailable(e.to_string()))?;
    match control::request(
        "netctl",
        socket,
        "PATCH",
        &format!("/v1/sandboxes/{id}"),
        Some(body),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(ClientError::Api {
            status, message, ..
        }) if status.as_u16() == 400 => Err(NetctlError::Refused(message)),
        Err(ClientError::Api { status, .. }) if status.as_u16() == 404 => {
            Err(NetctlError::UnknownSandbox(id.to_owned()))
        }
        Err(e) => Err(NetctlError::Unavailable(e.to_string())),
    }
}
