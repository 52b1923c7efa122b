//! PATCH of a sandbox: routing settings in the registry, the network policy
//! in netctl, all or nothing. netctl goes first (it is the part that can
//! refuse for reasons only it knows, such as a name that does not resolve);
//! the registry change follows, and if it fails the old policy is put back.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::Json;
use sbx_proto::policy::NetworkPolicy;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};

use super::info::SandboxInfo;
use super::{scope, ApiError, ApiState, Params};
use crate::netctl::{self, NetctlError};
use crate::registry::{apply_patch, Sandbox};
use crate::route::AGENT_PORT;

/// What the SDK sends (`UpdateSandboxRequest`, fields omitted when unset).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    #[serde(default)]
    exposed_ports: Option<Vec<i64>>,
    #[serde(default)]
    allow_unauthenticated_access: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    #[serde(default)]
    auto_resume: Option<bool>,
    /// Absent keeps, `null` clears, an object replaces.
    #[serde(default, deserialize_with = "present")]
    network: Option<Option<NetworkPolicy>>,
    /// Resizing is the control plane's business, not the proxy's.
    #[serde(default)]
    resources: Option<Value>,
}

fn present<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

pub async fn patch(
    State(state): State<ApiState>,
    Path(params): Path<Params>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Json<SandboxInfo>, ApiError> {
    let scope = scope::authorize(&state, &params, &headers, uri.query()).await?;
    let id = params.get("id").map(String::as_str).unwrap_or_default();
    let update = parse(&body)?;
    let _writes = state.writes.lock().await;
    let sandbox = state.find(&scope, id).await?;
    let changes = registry_changes(&sandbox, &update)?;

    let network = update.network.as_ref();
    if let Some(policy) = network {
        apply_policy(&state, &sandbox, policy.as_ref()).await?;
    }
    match state.registry.patch(&sandbox.id, changes).await {
        Ok(updated) => {
            tracing::info!(sandbox = %updated.id, network = network.is_some(), "sandbox updated through the API");
            Ok(Json(state.info(&updated)))
        }
        Err(e) => {
            if network.is_some() {
                // The registry said no after netctl said yes: put the old
                // policy back so the two agree again.
                if let Err(undo) =
                    apply_policy(&state, &sandbox, sandbox.spec.network_policy.as_ref()).await
                {
                    tracing::error!(sandbox = %sandbox.id, error = ?undo, "could not restore the previous network policy");
                }
            }
            Err(e.into())
        }
    }
}

fn parse(body: &[u8]) -> Result<Update, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let update: Update = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(format!("`{path}`: {}", e.into_inner()))
    })?;
    if update.resources.is_some() {
        return Err(ApiError::bad_request(
            "`resources`: resizing a sandbox is not done through this API",
        ));
    }
    let nothing = update.exposed_ports.is_none()
        && update.allow_unauthenticated_access.is_none()
        && update.name.is_none()
        && update.auto_resume.is_none()
        && update.network.is_none();
    if nothing {
        return Err(ApiError::bad_request(
            "at least one field to change is required",
        ));
    }
    if let Some(Some(policy)) = &update.network {
        policy
            .validate()
            .map_err(|e| ApiError::bad_request(format!("`network`: {e}")))?;
    }
    Ok(update)
}

/// The registry side of the update as a merge patch, checked against the
/// current entry before anything is changed anywhere.
fn registry_changes(sandbox: &Sandbox, update: &Update) -> Result<Map<String, Value>, ApiError> {
    let mut changes = Map::new();
    if let Some(ports) = &update.exposed_ports {
        let mut checked = Vec::with_capacity(ports.len());
        for port in ports {
            match u16::try_from(*port) {
                Ok(p) if p != 0 && p != AGENT_PORT => checked.push(p),
                Ok(AGENT_PORT) => {
                    return Err(ApiError::bad_request(format!(
                        "`exposed_ports`: {AGENT_PORT} is the sandbox agent's port and is never exposed"
                    )))
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "`exposed_ports`: {port} is not a port (1-65535)"
                    )))
                }
            }
        }
        checked.sort_unstable();
        checked.dedup();
        // Unexposing the last port also ends public access (SPEC 7).
        if checked.is_empty() {
            changes.insert("allow_unauthenticated_access".into(), json!(false));
        }
        changes.insert("exposed_ports".into(), json!(checked));
    }
    if let Some(public) = update.allow_unauthenticated_access {
        let none_left = changes
            .get("exposed_ports")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty);
        changes.insert(
            "allow_unauthenticated_access".into(),
            json!(public && !none_left),
        );
    }
    if let Some(name) = &update.name {
        changes.insert("name".into(), json!(name));
    }
    if let Some(auto_resume) = update.auto_resume {
        changes.insert("auto_resume".into(), json!(auto_resume));
    }
    if let Some(network) = &update.network {
        changes.insert("network_policy".into(), json!(network));
    }
    // Everything but a name clash with another sandbox is caught here,
    // before netctl is touched.
    let mut candidate = apply_patch(&sandbox.spec, changes.clone())?;
    candidate.validate(&sandbox.id)?;
    Ok(changes)
}

async fn apply_policy(
    state: &ApiState,
    sandbox: &Sandbox,
    policy: Option<&NetworkPolicy>,
) -> Result<(), ApiError> {
    let socket = sandbox
        .spec
        .netctl_socket
        .as_ref()
        .or(state.netctl_socket.as_ref())
        .ok_or_else(|| {
            ApiError::bad_request("`network`: no netctl is configured for this sandbox's host")
        })?;
    netctl::set_policy(socket, &sandbox.id, policy)
        .await
        .map_err(|e| match e {
            NetctlError::Refused(why) => ApiError::bad_request(format!("`network`: {why}")),
            NetctlError::UnknownSandbox(_) => ApiError::bad_request(format!(
                "`network`: netctl on this sandbox's host does not manage {:?}",
                sandbox.id
            )),
            NetctlError::Unavailable(why) => {
                tracing::error!(sandbox = %sandbox.id, error = %why, "netctl unavailable");
                ApiError::unavailable("the sandbox's network policy service is unavailable")
            }
        })
}
