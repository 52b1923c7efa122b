//! The agent's bearer token: `sbx tunnel` authenticates to the agent
//! directly (no proxy in between signs its requests), and the bench's own
//! WebSocket client opens tunnels the same way.

use std::path::PathBuf;

use anyhow::Result;
use sbx_bench_support::scratch::{random_hex, Scratch};

pub struct Bearer {
    /// The token file (0600, as the agent insists), for the agent and
    /// `sbx tunnel`.
    pub file: PathBuf,
    /// The token itself, for the bench's `Authorization` header.
    pub token: String,
}

impl Bearer {
    /// A random token written into `scratch`.
    pub fn create(scratch: &Scratch) -> Result<Self> {
        let token = random_hex(24);
        let file = scratch.write_secret("bearer.token", &token)?;
        Ok(Self { file, token })
    }
}
