//! Each mirror is built from a proto value by exhaustive destructuring,
//! then both must serialize identically.

use std::collections::BTreeMap;

use sbx_proto::api;
use serde::Serialize;
use serde_json::json;

use super::schemas::*;

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
    let doc: serde_json::Value = serde_json::from_slice(super::document()).unwrap();
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
        "/api/v1/tunnels/tcp",
        "/api/v1/tunnels/raw",
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

#[test]
fn auth_operation_ids_and_links_are_consistent() {
    let doc: serde_json::Value = serde_json::from_slice(super::document()).unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "operationId {id} repeats");
            let public = path == "/api/v1/health";
            assert_eq!(
                op["responses"].get("401").is_some(),
                !public,
                "{method} {path}: 401 documented iff auth is needed"
            );
            assert_eq!(
                op.get("security") == Some(&json!([])),
                public,
                "{method} {path}"
            );
        }
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(
        schemes["forwarded_auth"]["name"],
        "X-Sandbox-Forwarded-Auth"
    );
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    for (path, expression) in [
        ("/api/v1/processes", "$response.body#/pid"),
        ("/api/v1/pty", "$response.body#/session_id"),
    ] {
        let links = doc["paths"][path]["post"]["responses"]["201"]["links"]
            .as_object()
            .unwrap();
        assert!(!links.is_empty());
        for link in links.values() {
            let target = link["operationId"]
                .as_str()
                .expect("operationId, camel case");
            assert!(ids.contains(target), "link to unknown operation {target}");
            let parameters = link["parameters"].as_object().unwrap();
            assert_eq!(parameters.values().next().unwrap(), expression);
        }
    }
}
