//! `SandboxInfo` as the Tensorlake SDK validates it (its Rust layer, then
//! its pydantic models): `id` only (never also `sandbox_id`), lowercase
//! `status`, integer `memory_mb`/`disk_mb`, non-null booleans.

use sbx_proto::policy::NetworkPolicy;
use serde::Serialize;

use crate::registry::{Resources, Sandbox};

#[derive(Debug, Serialize)]
pub struct SandboxInfo {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub namespace: String,
    pub status: &'static str,
    pub resources: Resources,
    /// The management URL (the agent, port 9501).
    pub sandbox_url: String,
    /// Where `<port>-<id>` hosts live: `<scheme>://<domain>[:port]`.
    pub ingress_endpoint: String,
    pub exposed_ports: Vec<u16>,
    pub allow_unauthenticated_access: bool,
    pub auto_resume: bool,
    /// The policy in force; `null` when there is none (all egress allowed).
    pub network_policy: Option<NetworkPolicy>,
    pub file_systems: [(); 0],
}

/// How public URLs are spelled: `<scheme>://<label>.<domain>[:<port>]`.
#[derive(Debug, Clone)]
pub struct PublicUrls {
    pub scheme: &'static str,
    pub domain: String,
    /// Omitted from URLs when it is the scheme's default.
    pub port: Option<u16>,
}

impl PublicUrls {
    fn host(&self, label: Option<&str>) -> String {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        match label {
            Some(label) => format!("{}://{label}.{}{port}", self.scheme, self.domain),
            None => format!("{}://{}{port}", self.scheme, self.domain),
        }
    }
}

impl SandboxInfo {
    pub fn new(sandbox: &Sandbox, urls: &PublicUrls) -> Self {
        let spec = &sandbox.spec;
        Self {
            id: sandbox.id.clone(),
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            status: spec.status.as_str(),
            resources: spec.resources,
            sandbox_url: urls.host(Some(&sandbox.id)),
            ingress_endpoint: urls.host(None),
            exposed_ports: spec.exposed_ports.clone(),
            allow_unauthenticated_access: spec.allow_unauthenticated_access,
            auto_resume: spec.auto_resume,
            network_policy: spec.network_policy.clone(),
            file_systems: [],
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
}
