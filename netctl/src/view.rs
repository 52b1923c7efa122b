//! What the API answers about a sandbox (shared by the daemon and the CLI).

use sbx_proto::policy::NetworkPolicy;
use serde::{Deserialize, Serialize};

use crate::ingress::Inbound;
use crate::nft::Counters;

/// The `setup` section of a view: the saved plan, names and addresses.
pub type SetupView = crate::setup::Plan;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxView {
    pub id: String,
    pub netns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// What netctl made for a sandbox created with `setup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<SetupView>,
    /// `null`: no policy, everything allowed.
    pub network: Option<NetworkPolicy>,
    /// Who may open connections into the sandbox, once rules are applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Inbound>,
    /// Whether the rules last computed are in the kernel.
    pub applied: bool,
    /// The policy generation in force: connections judged under it are not
    /// judged again until a change that can refuse more moves it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_generation: Option<u32>,
    /// Why the last apply or refresh failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Resolved addresses per domain name.
    pub names: Vec<NameView>,
    /// Names the sandbox itself resolved through netctl's forwarder
    /// recently, newest first, with each address's element expiry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<crate::forwarder::Resolved>,
    /// Packets our rules accepted and refused; only on single-sandbox reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NameView {
    pub name: String,
    pub addresses: Vec<AddressView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at_ms: Option<u64>,
    pub next_refresh_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddressView {
    pub address: std::net::IpAddr,
    /// Unix milliseconds after which the address leaves the set unless a
    /// newer answer renews it.
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub sandboxes: usize,
}
