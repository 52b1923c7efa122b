//! The agent's OpenAPI 3 document, `GET /api/v1/openapi.json`.
//!
//! Paths come from the `#[utoipa::path]` attributes on the handlers
//! themselves. The wire types live in `sbx-proto`, which does not depend on
//! utoipa, so their schemas are described here by mirror types; the tests
//! below make drift impossible to miss: each mirror is built from its proto
//! type by an exhaustive destructuring (a new or renamed field fails to
//! compile) and must serialize to exactly the same JSON.

// The mirrors are only ever constructed by the drift tests.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::BTreeMap;

use axum::Json;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

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
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = ProcessUser)]
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

#[derive(Serialize, ToSchema)]
#[schema(as = CreateProcess)]
pub struct CreateProcessDoc {
    pub command: String,
    #[schema(default)]
    pub args: Vec<String>,
    #[schema(default)]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[schema(default)]
    pub stdin_mode: StdinModeDoc,
    #[schema(default)]
    pub stdout_mode: OutputModeDoc,
    #[schema(default)]
    pub stderr_mode: OutputModeDoc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<ProcessUserDoc>,
    /// Seconds before the process is killed with SIGKILL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Managed processes are not supported: refused with 400.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<serde_json::Value>,
    /// Managed processes are not supported: refused with 400.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<serde_json::Value>,
    /// Managed processes are not supported: refused with 400.
    #[serde(skip_serializing_if = "Option::is_none")]
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
    pub command: String,
    #[schema(default)]
    pub args: Vec<String>,
    #[schema(default)]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[schema(default = 24, minimum = 1, maximum = 500)]
    pub rows: u16,
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

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sbx-agent management API",
        description = "Processes, output streams, files, PTY sessions and the TCP tunnel of one sandbox. Wire-compatible with the Tensorlake sandbox SDK. Every route but /health needs `Authorization: Bearer` (direct mode) or `X-Sandbox-Forwarded-Auth`."
    ),
    paths(
        super::system::health,
        super::system::info,
        openapi_json,
        super::processes::create,
        super::processes::list,
        super::processes::run,
        super::processes::get,
        super::processes::kill,
        super::processes::signal,
        super::processes::write_stdin,
        super::processes::close_stdin,
        super::processes::stdout,
        super::processes::stderr,
        super::processes::output,
        super::processes::follow_stdout,
        super::processes::follow_stderr,
        super::processes::follow_output,
        super::files::read,
        super::files::write,
        super::files::delete,
        super::files::list,
        super::pty::create,
        super::pty::list,
        super::pty::get,
        super::pty::delete,
        super::pty::resize,
        super::pty::websocket,
    ),
    components(schemas(OutputEventDoc, RunStartedDoc, RunExitDoc))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod drift {
    //! Each mirror is built from a proto value by exhaustive destructuring,
    //! then both must serialize identically.

    use sbx_proto::api;
    use serde_json::json;

    use super::*;

    fn same<A: Serialize, B: Serialize>(a: &A, b: &B) {
        assert_eq!(
            serde_json::to_value(a).unwrap(),
            serde_json::to_value(b).unwrap()
        );
    }

    fn stdin(v: api::StdinMode) -> StdinModeDoc {
        match v {
            api::StdinMode::Closed => StdinModeDoc::Closed,
            api::StdinMode::Pipe => StdinModeDoc::Pipe,
        }
    }

    fn output_mode(v: api::OutputMode) -> OutputModeDoc {
        match v {
            api::OutputMode::Capture => OutputModeDoc::Capture,
            api::OutputMode::Discard => OutputModeDoc::Discard,
        }
    }

    fn user(v: api::ProcessUser) -> ProcessUserDoc {
        match v {
            api::ProcessUser::Text(t) => ProcessUserDoc::Text(t),
            api::ProcessUser::Spec { name, uid, gid } => ProcessUserDoc::Spec { name, uid, gid },
        }
    }

    fn status(v: api::ProcessStatus) -> ProcessStatusDoc {
        match v {
            api::ProcessStatus::Running => ProcessStatusDoc::Running,
            api::ProcessStatus::Exited => ProcessStatusDoc::Exited,
            api::ProcessStatus::Signaled => ProcessStatusDoc::Signaled,
        }
    }

    fn stream(v: api::StreamName) -> StreamNameDoc {
        match v {
            api::StreamName::Stdout => StreamNameDoc::Stdout,
            api::StreamName::Stderr => StreamNameDoc::Stderr,
        }
    }

    fn reason(v: api::ExitReason) -> ExitReasonDoc {
        match v {
            api::ExitReason::Exited => ExitReasonDoc::Exited,
            api::ExitReason::Signaled => ExitReasonDoc::Signaled,
            api::ExitReason::OomKilled => ExitReasonDoc::OomKilled,
            api::ExitReason::TimedOut => ExitReasonDoc::TimedOut,
        }
    }

    fn process_info(v: api::ProcessInfo) -> ProcessInfoDoc {
        let api::ProcessInfo {
            pid,
            status: s,
            exit_code,
            signal,
            oom_killed,
            stdin_writable,
            command,
            args,
            started_at,
            ended_at,
        } = v;
        ProcessInfoDoc {
            pid,
            status: status(s),
            exit_code,
            signal,
            oom_killed,
            stdin_writable,
            command,
            args,
            started_at,
            ended_at,
        }
    }

    fn pty_info(v: api::PtyInfo) -> PtyInfoDoc {
        let api::PtyInfo {
            session_id,
            pid,
            command,
            args,
            rows,
            cols,
            created_at,
            alive,
            exit_code,
        } = v;
        PtyInfoDoc {
            session_id,
            pid,
            command,
            args,
            rows,
            cols,
            created_at,
            alive,
            exit_code,
        }
    }

    #[test]
    fn mirrors_serialize_like_the_wire_types() {
        let e = sbx_proto::ErrorBody::new(sbx_proto::ErrorCode::NotFound, "x");
        same(&e, &{
            let sbx_proto::ErrorBody { error, code } = e.clone();
            ErrorDoc { error, code }
        });
        let h = api::Health { healthy: true };
        same(&h, &{
            let api::Health { healthy } = h.clone();
            HealthDoc { healthy }
        });
        let i = api::Info {
            version: "1".into(),
            uptime_secs: 2,
            running_processes: 3,
            total_processes: 4,
        };
        same(&i, &{
            let api::Info {
                version,
                uptime_secs,
                running_processes,
                total_processes,
            } = i.clone();
            InfoDoc {
                version,
                uptime_secs,
                running_processes,
                total_processes,
            }
        });

        for u in [
            None,
            Some(api::ProcessUser::Text("1:2".into())),
            Some(api::ProcessUser::Spec {
                name: None,
                uid: Some(1),
                gid: Some(2),
            }),
        ] {
            let c = api::CreateProcess {
                command: "sh".into(),
                args: vec!["-c".into()],
                env: [("A".into(), "1".into())].into(),
                working_dir: Some("/".into()),
                stdin_mode: api::StdinMode::Pipe,
                stdout_mode: api::OutputMode::Discard,
                stderr_mode: api::OutputMode::Capture,
                user: u,
                timeout: Some(1.5),
                name: Some(json!("n")),
                restart: None,
                health_check: Some(json!({"type": "tcp"})),
            };
            let api::CreateProcess {
                command,
                args,
                env,
                working_dir,
                stdin_mode,
                stdout_mode,
                stderr_mode,
                user: u,
                timeout,
                name,
                restart,
                health_check,
            } = c.clone();
            same(
                &c,
                &CreateProcessDoc {
                    command,
                    args,
                    env,
                    working_dir,
                    stdin_mode: stdin(stdin_mode),
                    stdout_mode: output_mode(stdout_mode),
                    stderr_mode: output_mode(stderr_mode),
                    user: u.map(user),
                    timeout,
                    name,
                    restart,
                    health_check,
                },
            );
        }
        for s in [
            api::ProcessStatus::Running,
            api::ProcessStatus::Exited,
            api::ProcessStatus::Signaled,
        ] {
            let p = api::ProcessInfo {
                pid: 1,
                status: s,
                exit_code: Some(0),
                signal: None,
                oom_killed: false,
                stdin_writable: true,
                command: "c".into(),
                args: vec![],
                started_at: 5,
                ended_at: None,
            };
            same(&p, &process_info(p.clone()));
            let l = api::ProcessList {
                processes: vec![p.clone()],
            };
            same(&l, &{
                let api::ProcessList { processes } = l.clone();
                ProcessListDoc {
                    processes: processes.into_iter().map(process_info).collect(),
                }
            });
        }
        let s = api::SignalRequest { signal: 9 };
        same(&s, &{
            let api::SignalRequest { signal } = s.clone();
            SignalRequestDoc { signal }
        });
        let s = api::SignalResponse { success: true };
        same(&s, &{
            let api::SignalResponse { success } = s.clone();
            SignalResponseDoc { success }
        });
        let o = api::OutputResponse {
            pid: 1,
            lines: vec!["a".into()],
            line_count: 1,
        };
        same(&o, &{
            let api::OutputResponse {
                pid,
                lines,
                line_count,
            } = o.clone();
            OutputResponseDoc {
                pid,
                lines,
                line_count,
            }
        });
        for st in [api::StreamName::Stdout, api::StreamName::Stderr] {
            let ev = api::OutputEvent {
                line: "l".into(),
                timestamp: 1,
                stream: st,
            };
            same(&ev, &{
                let api::OutputEvent {
                    line,
                    timestamp,
                    stream: s,
                } = ev.clone();
                OutputEventDoc {
                    line,
                    timestamp,
                    stream: stream(s),
                }
            });
        }
        let r = api::RunStarted {
            pid: 1,
            started_at: 2,
        };
        same(&r, &{
            let api::RunStarted { pid, started_at } = r.clone();
            RunStartedDoc { pid, started_at }
        });
        for why in [
            api::ExitReason::Exited,
            api::ExitReason::Signaled,
            api::ExitReason::OomKilled,
            api::ExitReason::TimedOut,
        ] {
            let x = api::RunExit {
                exit_code: None,
                signal: Some(9),
                oom_killed: false,
                reason: why,
            };
            same(&x, &{
                let api::RunExit {
                    exit_code,
                    signal,
                    oom_killed,
                    reason: r,
                } = x.clone();
                RunExitDoc {
                    exit_code,
                    signal,
                    oom_killed,
                    reason: reason(r),
                }
            });
        }
        let d = api::DirectoryListing {
            path: "/".into(),
            entries: vec![api::DirectoryEntry {
                name: "a".into(),
                is_dir: false,
                size: Some(1),
                modified_at: Some(2),
            }],
        };
        same(&d, &{
            let api::DirectoryListing { path, entries } = d.clone();
            DirectoryListingDoc {
                path,
                entries: entries
                    .into_iter()
                    .map(
                        |api::DirectoryEntry {
                             name,
                             is_dir,
                             size,
                             modified_at,
                         }| DirectoryEntryDoc {
                            name,
                            is_dir,
                            size,
                            modified_at,
                        },
                    )
                    .collect(),
            }
        });
        let c = api::CreatePty {
            command: "sh".into(),
            args: vec![],
            env: BTreeMap::new(),
            working_dir: None,
            rows: 24,
            cols: 80,
        };
        same(&c, &{
            let api::CreatePty {
                command,
                args,
                env,
                working_dir,
                rows,
                cols,
            } = c.clone();
            CreatePtyDoc {
                command,
                args,
                env,
                working_dir,
                rows,
                cols,
            }
        });
        let p = api::PtyCreated {
            session_id: "s".into(),
            token: "t".into(),
        };
        same(&p, &{
            let api::PtyCreated { session_id, token } = p.clone();
            PtyCreatedDoc { session_id, token }
        });
        let p = api::PtyResize { rows: 1, cols: 2 };
        same(&p, &{
            let api::PtyResize { rows, cols } = p.clone();
            PtyResizeDoc { rows, cols }
        });
        let p = api::PtyInfo {
            session_id: "s".into(),
            pid: 1,
            command: "c".into(),
            args: vec![],
            rows: 1,
            cols: 2,
            created_at: 3,
            alive: true,
            exit_code: None,
        };
        same(&p, &pty_info(p.clone()));
        let l = api::PtyList { sessions: vec![p] };
        same(&l, &{
            let api::PtyList { sessions } = l.clone();
            PtyListDoc {
                sessions: sessions.into_iter().map(pty_info).collect(),
            }
        });
    }

    #[test]
    fn document_lists_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/api/v1/health",
            "/api/v1/info",
            "/api/v1/openapi.json",
            "/api/v1/processes",
            "/api/v1/processes/run",
            "/api/v1/processes/{pid}",
            "/api/v1/processes/{pid}/signal",
            "/api/v1/processes/{pid}/stdin",
            "/api/v1/processes/{pid}/stdin/close",
            "/api/v1/processes/{pid}/stdout",
            "/api/v1/processes/{pid}/stderr",
            "/api/v1/processes/{pid}/output",
            "/api/v1/processes/{pid}/stdout/follow",
            "/api/v1/processes/{pid}/stderr/follow",
            "/api/v1/processes/{pid}/output/follow",
            "/api/v1/files",
            "/api/v1/files/list",
            "/api/v1/pty",
            "/api/v1/pty/{id}",
            "/api/v1/pty/{id}/resize",
            "/api/v1/pty/{id}/ws",
        ] {
            assert!(
                paths.contains_key(p),
                "{p} missing from the OpenAPI document"
            );
        }
        assert_eq!(
            paths["/api/v1/processes/{pid}"].as_object().unwrap().len(),
            2
        );
        assert_eq!(paths["/api/v1/files"].as_object().unwrap().len(), 3);
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for s in [
            "ProcessInfo",
            "CreateProcess",
            "ErrorBody",
            "DirectoryListing",
            "PtyInfo",
            "RunExit",
            "OutputEvent",
        ] {
            assert!(schemas.contains_key(s), "schema {s} missing");
        }
    }
}
