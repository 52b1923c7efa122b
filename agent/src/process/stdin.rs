//! Writing to a process's stdin, bounded in time.
//!
//! A process that never reads its stdin fills the pipe (64 KiB) and a plain
//! `write_all` would then hold the request, and the pipe's lock, forever.
//! Instead each write may go [`STDIN_STALL_TIMEOUT`] without progress; then
//! the request ends with 409 `STDIN_BLOCKED`, saying exactly how many bytes
//! reached the pipe (also in the `X-Stdin-Accepted-Bytes` header, on success
//! too), so the client can send the rest later and nothing is lost silently.
//! The pipe stays open: the process may start reading later.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use sbx_proto::ErrorCode;
use tokio::io::AsyncWriteExt as _;

use super::Process;
use crate::error::ApiError;

/// How long a write to stdin (or the wait for another request writing to
/// it) may make no progress before the request gives up.
pub const STDIN_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// After giving up, how long the rest of the request body is read and
/// discarded, so a client that sends its whole body before reading the
/// answer still gets it (instead of a reset connection).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of the request written to the pipe, on success and on failure.
pub static ACCEPTED_HEADER: HeaderName = HeaderName::from_static("x-stdin-accepted-bytes");

/// A stdin write that did not deliver the whole body.
#[derive(Debug)]
pub struct StdinFailure {
    pub error: ApiError,
    /// Bytes of this request that reached the pipe.
    pub accepted: u64,
}

impl IntoResponse for StdinFailure {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        response
            .headers_mut()
            .insert(ACCEPTED_HEADER.clone(), HeaderValue::from(self.accepted));
        response
    }
}

impl Process {
    /// Streams `chunks` into stdin; returns the bytes written. 400
    /// `STDIN_NOT_WRITABLE` when stdin is not a pipe, was closed, or the
    /// process closed its end; 409 `STDIN_BLOCKED` when it stops reading.
    pub async fn write_stdin<S>(&self, mut chunks: S) -> Result<u64, StdinFailure>
    where
        S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    {
        let pid = self.pid;
        let Ok(mut guard) = tokio::time::timeout(STDIN_STALL_TIMEOUT, self.stdin.lock()).await
        else {
            let rest = discard_rest(&mut chunks).await;
            return Err(blocked(pid, 0, 0, rest, "another write to it is blocked"));
        };
        let Some(stdin) = guard.as_mut() else {
            return Err(StdinFailure {
                error: not_writable(pid, "it is closed"),
                accepted: 0,
            });
        };
        let mut accepted = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| StdinFailure {
                error: ApiError::new(
                    ErrorCode::BadRequest,
                    format!("reading request body: {e} ({accepted} bytes were written to the stdin of process {pid})"),
                ),
                accepted,
            })?;
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                // A write that is still pending has written nothing: dropping
                // it on timeout loses no byte and double-counts none.
                match tokio::time::timeout(STDIN_STALL_TIMEOUT, stdin.write(rest)).await {
                    Ok(Ok(n)) if n > 0 => {
                        accepted += n as u64;
                        rest = &rest[n..];
                    }
                    Ok(Err(err)) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Ok(result) => {
                        // The process closed its end: the pipe is useless now.
                        *guard = None;
                        drop(guard);
                        let why = match result {
                            Err(err) => err.to_string(),
                            Ok(_) => "the pipe accepts no more".to_owned(),
                        };
                        let unwritten = rest.len() as u64;
                        let rest = discard_rest(&mut chunks).await;
                        return Err(StdinFailure {
                            error: not_writable(
                                pid,
                                &format!(
                                    "{why}; {accepted} bytes of this request were written, {}",
                                    not_written(unwritten, rest)
                                ),
                            ),
                            accepted,
                        });
                    }
                    Err(_) => {
                        drop(guard);
                        let unwritten = rest.len() as u64;
                        let rest = discard_rest(&mut chunks).await;
                        return Err(blocked(
                            pid,
                            accepted,
                            unwritten,
                            rest,
                            "the process is not reading it",
                        ));
                    }
                }
            }
        }
        Ok(accepted)
    }

    pub async fn close_stdin(&self) -> Result<(), ApiError> {
        let Ok(mut guard) = tokio::time::timeout(STDIN_STALL_TIMEOUT, self.stdin.lock()).await
        else {
            return Err(ApiError::new(
                ErrorCode::StdinBlocked,
                format!(
                    "stdin of process {} is held by a blocked write; try again",
                    self.pid
                ),
            ));
        };
        if guard.take().is_none() {
            return Err(not_writable(self.pid, "it is not open"));
        }
        Ok(())
    }
}

fn not_writable(pid: u32, why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::StdinNotWritable,
        format!("stdin of process {pid} is not writable: {why}"),
    )
}

fn blocked(pid: u32, accepted: u64, unwritten: u64, rest: Option<u64>, why: &str) -> StdinFailure {
    StdinFailure {
        error: ApiError::new(
            ErrorCode::StdinBlocked,
            format!(
                "stdin of process {pid} accepted nothing for {}s ({why}): {accepted} bytes of this request were written, {}; send them again once it reads",
                STDIN_STALL_TIMEOUT.as_secs(),
                not_written(unwritten, rest)
            ),
        ),
        accepted,
    }
}

/// "the other N bytes were not", or "the rest was not" when the body was
/// too long to read to its end.
fn not_written(unwritten: u64, rest: Option<u64>) -> String {
    match rest {
        Some(rest) => format!("the other {} bytes were not", unwritten + rest),
        None => "the rest was not".to_owned(),
    }
}

/// Reads and drops the rest of the body; its length, or None when it did
/// not end within [`DRAIN_TIMEOUT`] or broke off.
async fn discard_rest<S>(chunks: &mut S) -> Option<u64>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut n = 0u64;
        while let Some(chunk) = chunks.next().await {
            n += chunk.ok()?.len() as u64;
        }
        Some(n)
    })
    .await
    .ok()
    .flatten()
}
