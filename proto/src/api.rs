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

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

// Request bodies are objects, never arrays of fields (see `crate::json`).
crate::object_only!(CreateProcess, CreatePty, PtyResize, SignalRequest);

/// Where a process's stdin comes from.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StdinMode {
    /// `/dev/null`.
    #[default]
    Closed,
    /// Written through `POST /processes/{pid}/stdin`.
    Pipe,
}

/// What happens to a process's stdout or stderr.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// Kept in the process's bounded output buffer.
    #[default]
    Capture,
    /// Sent to `/dev/null`.
    Discard,
}

/// The user a process runs as: `"name"`, `"uid"`, `"uid:gid"`, or (as the
/// Tensorlake SDK sends it) `{"name"}` / `{"uid", "gid"?}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ProcessUser {
    Text(String),
    Spec {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "crate::integral::option"
        )]
        uid: Option<u32>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "crate::integral::option"
        )]
        gid: Option<u32>,
    },
}

/// `POST /processes` and (with `timeout`) `POST /processes/run`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(remote = "Self")]
pub struct CreateProcess {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub stdin_mode: StdinMode,
    #[serde(default)]
    pub stdout_mode: OutputMode,
    #[serde(default)]
    pub stderr_mode: OutputMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ProcessUser>,
    /// `run` only: seconds before the process is killed (SIGKILL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// The Tensorlake SDK's managed processes (`name`, `restart`,
    /// `health_check`) are not supported; they are parsed only so that a
    /// request using them is refused with a clear 400 instead of silently
    /// running an unmanaged process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<serde_json::Value>,
}

/// Lifecycle state of a process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    Running,
    Exited,
    Signaled,
}

/// A process as the API reports it. Times are milliseconds since the epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub status: ProcessStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub stdin_writable: bool,
    pub command: String,
    pub args: Vec<String>,
    pub started_at: u64,
    pub ended_at: Option<u64>,
}

/// `GET /processes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

/// `POST /processes/{pid}/signal`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(remote = "Self")]
pub struct SignalRequest {
    #[serde(deserialize_with = "crate::integral::int")]
    pub signal: i32,
}

/// Answer to `POST /processes/{pid}/signal`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignalResponse {
    pub success: bool,
}

/// `GET /processes/{pid}/stdout|stderr|output`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputResponse {
    pub pid: u32,
    pub lines: Vec<String>,
    pub line_count: usize,
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    Stdout,
    Stderr,
}

/// One SSE `output` frame: `{line, timestamp, stream}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputEvent {
    pub line: String,
    pub timestamp: u64,
    pub stream: StreamName,
}

/// First SSE frame of `POST /processes/run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunStarted {
    pub pid: u32,
    pub started_at: u64,
}

/// Why a `run` ended (the SDK's `CommandExitReason`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    Exited,
    Signaled,
    OomKilled,
    TimedOut,
}

/// Last SSE frame of `POST /processes/run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunExit {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub reason: ExitReason,
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

/// One entry of `GET /files/list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: Option<u64>,
    pub modified_at: Option<u64>,
}

/// `GET /files/list?path=`: directories first, then by name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirectoryListing {
    pub path: String,
    pub entries: Vec<DirectoryEntry>,
}

// ---------------------------------------------------------------------------
// PTY
// ---------------------------------------------------------------------------

/// Default terminal size.
pub const PTY_DEFAULT_ROWS: u16 = 24;
pub const PTY_DEFAULT_COLS: u16 = 80;
/// Largest terminal accepted.
pub const PTY_MAX_ROWS: u16 = 500;
pub const PTY_MAX_COLS: u16 = 1000;

/// PTY WebSocket opcodes (first byte of every binary frame).
pub mod pty_op {
    pub const DATA: u8 = 0x00;
    pub const RESIZE: u8 = 0x01;
    pub const READY: u8 = 0x02;
    pub const EXIT: u8 = 0x03;
}

fn default_rows() -> u16 {
    PTY_DEFAULT_ROWS
}

fn default_cols() -> u16 {
    PTY_DEFAULT_COLS
}

/// `POST /pty`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(remote = "Self")]
pub struct CreatePty {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default = "default_rows", deserialize_with = "crate::integral::int")]
    pub rows: u16,
    #[serde(default = "default_cols", deserialize_with = "crate::integral::int")]
    pub cols: u16,
}

/// Answer to `POST /pty`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PtyCreated {
    pub session_id: String,
    pub token: String,
}

/// `POST /pty/{id}/resize`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(remote = "Self")]
pub struct PtyResize {
    #[serde(deserialize_with = "crate::integral::int")]
    pub rows: u16,
    #[serde(deserialize_with = "crate::integral::int")]
    pub cols: u16,
}

/// A PTY session as listed; the token is never listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PtyInfo {
    pub session_id: String,
    pub pid: u32,
    pub command: String,
    pub args: Vec<String>,
    pub rows: u16,
    pub cols: u16,
    pub created_at: u64,
    pub alive: bool,
    pub exit_code: Option<i32>,
}

/// `GET /pty`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PtyList {
    pub sessions: Vec<PtyInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_exactly() {
        // Found by fuzz/fuzz_targets/agent_process.rs: without serde_json's
        // `float_roundtrip` this timeout came back one ULP off.
        let body = CreateProcess {
            command: "true".into(),
            timeout: Some(1.222_222_222_222_222e49),
            ..CreateProcess::default()
        };
        let json = serde_json::to_string(&body).unwrap();
        let again: CreateProcess = serde_json::from_str(&json).unwrap();
        assert_eq!(again, body, "through {json}");
    }

    #[test]
    fn bodies_are_objects_only() {
        assert!(serde_json::from_str::<CreateProcess>(r#"["echo",["hi"]]"#).is_err());
        assert!(serde_json::from_str::<CreatePty>(r#"["sh"]"#).is_err());
        assert!(serde_json::from_str::<CreateProcess>(r#"{"command":"echo"}"#).is_ok());
    }
}
