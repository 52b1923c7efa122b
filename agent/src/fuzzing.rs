//! The agent's parsers of untrusted input, reachable from the fuzz targets
//! in `fuzz/` (feature `fuzzing`). Each function runs exactly the code a
//! request runs, up to the point where something would be spawned, opened
//! or written.

use std::path::PathBuf;

use axum::extract::Query;
use http::Uri;
use sbx_proto::api::{CreateProcess, CreatePty};
use sbx_proto::ErrorCode;

pub use crate::auth::{AuthError, Authenticator};
pub use crate::error::ApiError;
pub use crate::process::spec::{CommandSpec, ResolvedUser};
pub use crate::pty::check_size as check_terminal_size;
pub use crate::pty::ws::{config as pty_ws_config, parse_client_frame, ClientFrame};
pub use crate::routes::processes::Checked as CheckedProcess;

fn body<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(json).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))
}

/// A `POST /processes` (or `/processes/run`) body, checked as the route
/// checks it before spawning.
pub fn create_process(json: &[u8]) -> Result<CheckedProcess, ApiError> {
    crate::routes::processes::check(body::<CreateProcess>(json)?)
}

/// A `POST /pty` body, checked as the session table checks it before
/// opening a terminal.
pub fn create_pty(json: &[u8]) -> Result<CommandSpec, ApiError> {
    crate::pty::check_create(body::<CreatePty>(json)?)
}

/// The query of the `/files` routes: the checked path and `recursive`.
pub fn files_query(uri: &Uri) -> Result<(PathBuf, bool), ApiError> {
    let Query(q) = Query::<crate::routes::files::PathQuery>::try_from_uri(uri)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let path = crate::files::checked_path(q.path.as_deref())?;
    Ok((path, q.recursive))
}

/// The `?token=` of the PTY WebSocket.
pub fn pty_token_query(uri: &Uri) -> Result<Option<String>, ApiError> {
    Query::<crate::routes::pty::TokenQuery>::try_from_uri(uri)
        .map(|Query(q)| q.token)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))
}

/// An outgoing PTY frame as it goes on the wire (opcode, then payload).
pub fn pty_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    crate::pty::ws::frame(op, payload).into_data().to_vec()
}
