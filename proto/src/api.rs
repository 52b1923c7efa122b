//! Bodies of the agent's management API that are not specific to one feature.

use serde::{Deserialize, Serialize};

/// The agent's API prefix; every route lives below it.
pub const API_PREFIX: &str = "/api/v1";

/// Default port of the agent inside every sandbox.
pub const AGENT_PORT: u16 = 9501;

/// `GET /api/v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
}

/// `GET /api/v1/info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Info {
    pub version: String,
    pub uptime_secs: u64,
    pub running_processes: u64,
    pub total_processes: u64,
}
