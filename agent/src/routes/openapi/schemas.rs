//! Mirror types describing the wire types of `sbx-proto` for the document
//! (`sbx-proto` does not depend on utoipa). The drift tests build each from
//! its proto type by exhaustive destructuring and compare their JSON.

// The mirrors are only ever constructed by the drift tests.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::schema::{ArrayBuilder, Object, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

/// Most arguments or environment variables a process may get.
const MAX_ITEMS: usize = 4096;
/// A string without NUL (the agent refuses NUL in what it passes to exec).
const NO_NUL: &str = "^[^\\u0000]*$";

fn text_without_nul() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NO_NUL))
}

/// `args`: strings without NUL.
fn args_schema() -> utoipa::openapi::schema::Array {
    ArrayBuilder::new()
        .items(text_without_nul())
        .max_items(Some(MAX_ITEMS))
        .default(Some(serde_json::json!([])))
        .build()
}

/// The managed-process fields of the SDK: only absent or null is accepted.
fn unsupported() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Null)
        .description(Some(
            "Managed processes are not supported: any value but null is refused with 400",
        ))
        .build()
}

/// `env`: names non-empty, without `=` or NUL; values without NUL.
fn env_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[^=\\u0000]+$")),
        ))
        .additional_properties(Some(text_without_nul()))
        .max_properties(Some(MAX_ITEMS))
        .default(Some(serde_json::json!({})))
        .build()
}

/// `{"error": "<message>", "code": "<CODE>"}`.
#[derive(Serialize, ToSchema)]
#[schema(as = ErrorBody)]
pub struct ErrorDoc {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Health)]
pub struct HealthDoc {
    pub healthy: bool,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Info)]
pub struct InfoDoc {
    pub version: String,
    pub uptime_secs: u64,
    pub running_processes: u64,
    /// Processes started since the agent started.
    pub total_processes: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = StdinMode)]
pub enum StdinModeDoc {
    Closed,
    Pipe,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = OutputMode)]
pub enum OutputModeDoc {
    Capture,
    Discard,
}

/// `"name"`, `"uid"`, `"uid:gid"`, or `{name}` / `{uid, gid?}`.
#[derive(Serialize)]
#[serde(untagged)]
pub enum ProcessUserDoc {
    Text(String),
    Spec {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        gid: Option<u32>,
    },
}

/// Written out by hand: derived, the object form would allow `{}` and a
/// name together with a uid, which the agent refuses.
impl utoipa::PartialSchema for ProcessUserDoc {
    fn schema() -> RefOr<Schema> {
        let id = || {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(u32::MAX))
        };
        let text = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("\\S"))
            .description(Some("`name`, `uid`, `uid:gid` or `name:group`"));
        let spec = |required: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property(
                    "name",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1)),
                )
                .property("uid", id())
                .property("gid", id())
                .required(required)
        };
        OneOfBuilder::new()
            .item(text)
            .item(spec("name").description(Some("`{name, gid?}`")))
            .item(spec("uid").description(Some("`{uid, gid?}`")))
            .into()
    }
}

impl ToSchema for ProcessUserDoc {
    fn name() -> std::borrow::Cow<'static, str> {
        "ProcessUser".into()
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = CreateProcess)]
pub struct CreateProcessDoc {
    /// Refused when empty or with a NUL.
    #[schema(pattern = "^[^\\u0000]+$")]
    pub command: String,
    #[serde(default)]
    #[schema(schema_with = args_schema)]
    pub args: Vec<String>,
    #[serde(default)]
    #[schema(schema_with = env_schema)]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default)]
    #[schema(default)]
    pub stdin_mode: StdinModeDoc,
    #[serde(default)]
    #[schema(default)]
    pub stdout_mode: OutputModeDoc,
    #[serde(default)]
    #[schema(default)]
    pub stderr_mode: OutputModeDoc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<ProcessUserDoc>,
    /// Seconds before the process is killed with SIGKILL (`run`), at most
    /// a day.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 86400)]
    pub timeout: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = unsupported)]
    pub name: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = unsupported)]
    pub restart: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = unsupported)]
    pub health_check: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ProcessStatus)]
pub enum ProcessStatusDoc {
    Running,
    Exited,
    Signaled,
}

/// A process; times are milliseconds since the epoch.
#[derive(Serialize, ToSchema)]
#[schema(as = ProcessInfo)]
pub struct ProcessInfoDoc {
    pub pid: u32,
    pub status: ProcessStatusDoc,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub stdin_writable: bool,
    pub command: String,
    pub args: Vec<String>,
    pub started_at: u64,
    pub ended_at: Option<u64>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = ProcessList)]
pub struct ProcessListDoc {
    pub processes: Vec<ProcessInfoDoc>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = SignalRequest)]
pub struct SignalRequestDoc {
    /// A standard Linux signal number.
    #[schema(minimum = 1, maximum = 31)]
    pub signal: i32,
}

#[derive(Serialize, ToSchema)]
#[schema(as = SignalResponse)]
pub struct SignalResponseDoc {
    pub success: bool,
}

#[derive(Serialize, ToSchema)]
#[schema(as = OutputResponse)]
pub struct OutputResponseDoc {
    pub pid: u32,
    pub lines: Vec<String>,
    pub line_count: usize,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = StreamName)]
pub enum StreamNameDoc {
    Stdout,
    Stderr,
}

/// SSE `event: output`.
#[derive(Serialize, ToSchema)]
#[schema(as = OutputEvent)]
pub struct OutputEventDoc {
    pub line: String,
    pub timestamp: u64,
    pub stream: StreamNameDoc,
}

/// SSE `event: started` (first frame of `run`).
#[derive(Serialize, ToSchema)]
#[schema(as = RunStarted)]
pub struct RunStartedDoc {
    pub pid: u32,
    pub started_at: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ExitReason)]
pub enum ExitReasonDoc {
    Exited,
    Signaled,
    OomKilled,
    TimedOut,
}

/// SSE `event: exit` (last frame of `run`).
#[derive(Serialize, ToSchema)]
#[schema(as = RunExit)]
pub struct RunExitDoc {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub reason: ExitReasonDoc,
}

#[derive(Serialize, ToSchema)]
#[schema(as = DirectoryEntry)]
pub struct DirectoryEntryDoc {
    pub name: String,
    pub is_dir: bool,
    pub size: Option<u64>,
    pub modified_at: Option<u64>,
}

/// Directories first, then by name.
#[derive(Serialize, ToSchema)]
#[schema(as = DirectoryListing)]
pub struct DirectoryListingDoc {
    pub path: String,
    pub entries: Vec<DirectoryEntryDoc>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = CreatePty)]
pub struct CreatePtyDoc {
    /// Refused when empty or with a NUL.
    #[schema(pattern = "^[^\\u0000]+$")]
    pub command: String,
    #[serde(default)]
    #[schema(schema_with = args_schema)]
    pub args: Vec<String>,
    #[serde(default)]
    #[schema(schema_with = env_schema)]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default)]
    #[schema(default = 24, minimum = 1, maximum = 500)]
    pub rows: u16,
    #[serde(default)]
    #[schema(default = 80, minimum = 1, maximum = 1000)]
    pub cols: u16,
}

#[derive(Serialize, ToSchema)]
#[schema(as = PtyCreated)]
pub struct PtyCreatedDoc {
    pub session_id: String,
    /// For the WebSocket: `X-PTY-Token` header or `?token=`.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
#[schema(as = PtyResize)]
pub struct PtyResizeDoc {
    #[schema(minimum = 1, maximum = 500)]
    pub rows: u16,
    #[schema(minimum = 1, maximum = 1000)]
    pub cols: u16,
}

#[derive(Serialize, ToSchema)]
#[schema(as = PtyInfo)]
pub struct PtyInfoDoc {
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

#[derive(Serialize, ToSchema)]
#[schema(as = PtyList)]
pub struct PtyListDoc {
    pub sessions: Vec<PtyInfoDoc>,
}
