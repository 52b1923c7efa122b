//! `/processes`: start, list, inspect, signal, kill, stdin, output, and the
//! Server-Sent Event streams (`.../follow`, `POST /processes/run`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use nix::sys::signal::Signal;
use sbx_proto::api::{
    CreateProcess, OutputMode, OutputResponse, ProcessInfo, ProcessList, RunStarted, SignalRequest,
    SignalResponse, StdinMode,
};
use sbx_proto::ErrorCode;

use super::extract::ApiJson;
use super::openapi::*;
use crate::error::ApiError;
use crate::process::output::Filter;
use crate::process::spec::CommandSpec;
use crate::process::stdin::ACCEPTED_HEADER;
use crate::process::Process;
use crate::state::AppState;

/// Lines sent per wake-up of a follower, so one chatty process cannot
/// monopolise a stream task.
const FOLLOW_BATCH: usize = 512;
/// Longest `timeout` accepted: a day.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// Parses the `{pid}` segment. Names (the SDK's managed processes) are not
/// supported, so anything but a number is an unknown process.
fn parse_pid(raw: &str) -> Result<u32, ApiError> {
    raw.parse::<u32>()
        .map_err(|_| ApiError::new(ErrorCode::NotFound, format!("no process {raw:?}")))
}

fn lookup(state: &AppState, raw: &str) -> Result<Arc<Process>, ApiError> {
    state.processes.get(parse_pid(raw)?)
}

/// A `POST /processes` (or `/processes/run`) body that passed every check:
/// what is left to do is spawn it.
pub struct Checked {
    pub spec: CommandSpec,
    pub timeout: Option<Duration>,
    pub stdin_mode: StdinMode,
    pub stdout_mode: OutputMode,
    pub stderr_mode: OutputMode,
}

/// Validates a body without side effects (beyond user and directory
/// lookups), so that every refusal happens before anything is spawned.
pub fn check(body: CreateProcess) -> Result<Checked, ApiError> {
    for (field, given) in [
        ("name", body.name.is_some()),
        ("restart", body.restart.is_some()),
        ("health_check", body.health_check.is_some()),
    ] {
        if given {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("`{field}`: managed processes are not supported by this agent"),
            ));
        }
    }
    let timeout = match body.timeout {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_SECS => {
            Some(Duration::from_secs_f64(t))
        }
        Some(t) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("timeout must be between 0 and {MAX_TIMEOUT_SECS} seconds, not {t}"),
            ))
        }
    };
    let spec = CommandSpec::new(
        body.command,
        body.args,
        body.env,
        body.working_dir,
        body.user.as_ref(),
    )?;
    Ok(Checked {
        spec,
        timeout,
        stdin_mode: body.stdin_mode,
        stdout_mode: body.stdout_mode,
        stderr_mode: body.stderr_mode,
    })
}

fn start(state: &AppState, body: CreateProcess) -> Result<Arc<Process>, ApiError> {
    let checked = check(body)?;
    let process = state.processes.spawn(
        &checked.spec,
        checked.stdin_mode,
        checked.stdout_mode,
        checked.stderr_mode,
    )?;
    if let Some(timeout) = checked.timeout {
        let p = process.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            p.kill_for_timeout();
        });
    }
    Ok(process)
}

#[utoipa::path(post, path = "/api/v1/processes", tag = "processes", request_body = CreateProcessDoc, responses((status = 201, body = ProcessInfoDoc), (status = 400, description = "BAD_REQUEST, NOT_A_DIRECTORY (working_dir)", body = ErrorDoc), (status = 403, description = "FORBIDDEN: cannot switch user", body = ErrorDoc), (status = 429, description = "TOO_MANY_PROCESSES", body = ErrorDoc), (status = 503, description = "UNAVAILABLE: cannot fork", body = ErrorDoc)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateProcess>,
) -> Result<(StatusCode, Json<ProcessInfo>), ApiError> {
    let process = start(&state, body)?;
    Ok((StatusCode::CREATED, Json(process.info())))
}

#[utoipa::path(get, path = "/api/v1/processes", tag = "processes", responses((status = 200, body = ProcessListDoc)))]
pub async fn list(State(state): State<AppState>) -> Json<ProcessList> {
    Json(ProcessList {
        processes: state.processes.list().iter().map(|p| p.info()).collect(),
    })
}

#[utoipa::path(get, path = "/api/v1/processes/{pid}", tag = "processes", params(("pid" = u32, Path, description = "Process id")), responses((status = 200, body = ProcessInfoDoc), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn get(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<Json<ProcessInfo>, ApiError> {
    Ok(Json(lookup(&state, &pid)?.info()))
}

#[utoipa::path(delete, path = "/api/v1/processes/{pid}", tag = "processes", params(("pid" = u32, Path, description = "Process id")), responses((status = 204, description = "A running process: SIGKILL to its group; it stays listed with its exit until it ages out. A finished one is forgotten"), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn kill(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.processes.kill(parse_pid(&pid)?)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/processes/{pid}/signal", tag = "processes", params(("pid" = u32, Path, description = "Process id")), request_body = SignalRequestDoc, responses((status = 200, body = SignalResponseDoc), (status = 400, description = "BAD_REQUEST: not a signal, or the process exited", body = ErrorDoc), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn signal(
    State(state): State<AppState>,
    Path(pid): Path<String>,
    ApiJson(body): ApiJson<SignalRequest>,
) -> Result<Json<SignalResponse>, ApiError> {
    let process = lookup(&state, &pid)?;
    let signal = Signal::try_from(body.signal).map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("{} is not a signal number", body.signal),
        )
    })?;
    process.signal(signal)?;
    Ok(Json(SignalResponse { success: true }))
}

#[utoipa::path(post, path = "/api/v1/processes/{pid}/stdin", tag = "processes", params(("pid" = u32, Path, description = "Process id")), request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Every byte was written to the pipe", headers(("x-stdin-accepted-bytes" = u64, description = "Bytes of this request written to the pipe"))),
        (status = 400, description = "STDIN_NOT_WRITABLE (not a pipe, closed, or the process closed its end), BAD_REQUEST (the body broke off)", body = ErrorDoc, headers(("x-stdin-accepted-bytes" = u64, description = "Bytes of this request written to the pipe before the error"))),
        (status = 404, description = "NOT_FOUND", body = ErrorDoc),
        (status = 409, description = "STDIN_BLOCKED: the process read nothing for 5 s; the pipe stays open and the bytes not written may be sent again", body = ErrorDoc, headers(("x-stdin-accepted-bytes" = u64, description = "Bytes of this request written to the pipe; the rest were not")))))]
pub async fn write_stdin(
    State(state): State<AppState>,
    Path(pid): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let process = lookup(&state, &pid)?;
    Ok(match process.write_stdin(body.into_data_stream()).await {
        Ok(accepted) => (
            StatusCode::NO_CONTENT,
            [(ACCEPTED_HEADER.clone(), HeaderValue::from(accepted))],
        )
            .into_response(),
        Err(failure) => failure.into_response(),
    })
}

#[utoipa::path(post, path = "/api/v1/processes/{pid}/stdin/close", tag = "processes", params(("pid" = u32, Path, description = "Process id")), responses((status = 204), (status = 400, description = "STDIN_NOT_WRITABLE", body = ErrorDoc), (status = 404, description = "NOT_FOUND", body = ErrorDoc), (status = 409, description = "STDIN_BLOCKED: a blocked write holds the pipe", body = ErrorDoc)))]
pub async fn close_stdin(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<StatusCode, ApiError> {
    lookup(&state, &pid)?.close_stdin().await?;
    Ok(StatusCode::NO_CONTENT)
}

fn output_of(
    state: &AppState,
    pid: &str,
    filter: Filter,
) -> Result<Json<OutputResponse>, ApiError> {
    let process = lookup(state, pid)?;
    let lines = process.output(filter);
    Ok(Json(OutputResponse {
        pid: process.pid,
        line_count: lines.len(),
        lines,
    }))
}

#[utoipa::path(get, path = "/api/v1/processes/{pid}/stdout", tag = "processes", params(("pid" = u32, Path, description = "Process id")), responses((status = 200, body = OutputResponseDoc), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn stdout(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<Json<OutputResponse>, ApiError> {
    output_of(&state, &pid, Filter::Stdout)
}

#[utoipa::path(get, path = "/api/v1/processes/{pid}/stderr", tag = "processes", params(("pid" = u32, Path, description = "Process id")), responses((status = 200, body = OutputResponseDoc), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn stderr(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<Json<OutputResponse>, ApiError> {
    output_of(&state, &pid, Filter::Stderr)
}

#[utoipa::path(get, path = "/api/v1/processes/{pid}/output", tag = "processes", params(("pid" = u32, Path, description = "Process id")), responses((status = 200, body = OutputResponseDoc), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn output(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<Json<OutputResponse>, ApiError> {
    output_of(&state, &pid, Filter::Both)
}

#[utoipa::path(get, path = "/api/v1/processes/{pid}/stdout/follow", tag = "processes", params(("pid" = u32, Path, description = "Process id")), responses((status = 200, description = "SSE: `output` (OutputEvent)... then `eof`", content_type = "text/event-stream"), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn follow_stdout(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let process = lookup(&state, &pid)?;
    Ok(sse(follow(process, Filter::Stdout, Ending::Eof, None)))
}

#[utoipa::path(get, path = "/api/v1/processes/{pid}/stderr/follow", tag = "processes", params(("pid" = u32, Path, description = "Process id")), responses((status = 200, description = "SSE: `output` (OutputEvent)... then `eof`", content_type = "text/event-stream"), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn follow_stderr(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let process = lookup(&state, &pid)?;
    Ok(sse(follow(process, Filter::Stderr, Ending::Eof, None)))
}

#[utoipa::path(get, path = "/api/v1/processes/{pid}/output/follow", tag = "processes", params(("pid" = u32, Path, description = "Process id")), responses((status = 200, description = "SSE: `output` (OutputEvent)... then `eof`", content_type = "text/event-stream"), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn follow_output(
    State(state): State<AppState>,
    Path(pid): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let process = lookup(&state, &pid)?;
    Ok(sse(follow(process, Filter::Both, Ending::Eof, None)))
}

/// `POST /processes/run`: `started`, the output, then `exit`.
#[utoipa::path(post, path = "/api/v1/processes/run", tag = "processes", request_body = CreateProcessDoc, responses((status = 200, description = "SSE: `started` (RunStarted), `output` (OutputEvent)..., `exit` (RunExit)", content_type = "text/event-stream"), (status = 400, description = "BAD_REQUEST, NOT_A_DIRECTORY (working_dir)", body = ErrorDoc), (status = 403, description = "FORBIDDEN: cannot switch user", body = ErrorDoc), (status = 429, description = "TOO_MANY_PROCESSES", body = ErrorDoc), (status = 503, description = "UNAVAILABLE: cannot fork", body = ErrorDoc)))]
pub async fn run(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateProcess>,
) -> Result<impl IntoResponse, ApiError> {
    let process = start(&state, body)?;
    let started = json_event(
        "started",
        &RunStarted {
            pid: process.pid,
            started_at: process.started_at,
        },
    );
    Ok(sse(follow(process, Filter::Both, Ending::Exit, started)))
}

fn sse<S>(stream: S) -> impl IntoResponse
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    // Keep-alive comments also reveal a client that went away while the
    // process is silent, so its stream is dropped promptly.
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn json_event<T: serde::Serialize>(name: &str, value: &T) -> Option<Event> {
    match Event::default().event(name).json_data(value) {
        Ok(event) => Some(event),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode SSE frame");
            None
        }
    }
}

#[derive(Clone, Copy)]
enum Ending {
    /// `event: eof` (the follow endpoints).
    Eof,
    /// `event: exit` with the exit status (`run`).
    Exit,
}

struct Follower {
    process: Arc<Process>,
    changes: tokio::sync::watch::Receiver<u64>,
    next: u64,
    filter: Filter,
    ending: Ending,
    queue: VecDeque<Event>,
    ended: bool,
}

/// Replays the captured lines, then live ones, then the ending frame. A
/// client that disconnects just drops this stream; the process runs on.
fn follow(
    process: Arc<Process>,
    filter: Filter,
    ending: Ending,
    first: Option<Event>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let follower = Follower {
        changes: process.subscribe(),
        process,
        next: 0,
        filter,
        ending,
        queue: first.into_iter().collect(),
        ended: false,
    };
    futures_util::stream::unfold(follower, |mut f| async move {
        loop {
            if let Some(event) = f.queue.pop_front() {
                return Some((Ok(event), f));
            }
            if f.ended {
                return None;
            }
            f.changes.borrow_and_update();
            let (lines, next, complete) = f.process.poll_output(f.next, f.filter, FOLLOW_BATCH);
            f.next = next;
            f.queue
                .extend(lines.iter().filter_map(|l| json_event("output", l)));
            if !f.queue.is_empty() {
                continue;
            }
            if complete {
                f.ended = true;
                let last = match f.ending {
                    Ending::Eof => Some(Event::default().event("eof").data("{}")),
                    Ending::Exit => f
                        .process
                        .run_exit()
                        .and_then(|exit| json_event("exit", &exit)),
                };
                f.queue.extend(last);
                continue;
            }
            if f.changes.changed().await.is_err() {
                return None;
            }
        }
    })
}
