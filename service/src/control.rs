//! A daemon's control socket, both sides: the daemon binds a unix socket
//! only its own user may connect to; the CLI sends one HTTP/1.1 request per
//! connection over it. netctl and sbx-proxy both work this way.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
pub use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use sbx_proto::ErrorBody;
use tokio::net::{UnixListener, UnixStream};

/// Binds `socket` with mode 0600, replacing a stale socket left by a
/// previous run (crash, kill -9) but nothing else.
pub fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket",
            socket.display()
        );
        std::fs::remove_file(socket)
            .with_context(|| format!("remove stale {}", socket.display()))?;
    }
    // The umask closes the window between bind and chmod.
    let old = umask(0o177);
    let bound = UnixListener::bind(socket);
    umask(old);
    let listener = bound.with_context(|| format!("bind {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", socket.display()))?;
    Ok(listener)
}

fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask(2) cannot fail and touches only the process's mask.
    unsafe { libc::umask(mask) }
}

/// A request that did not succeed, as one line for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {daemon} at {path}: {source} (is `{daemon} serve` running?)")]
    Connect {
        daemon: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("talking to {daemon}: {message}")]
    Http {
        daemon: &'static str,
        message: String,
    },
    /// The daemon answered with an error status; `message` and `code` come
    /// from its `{"error", "code"}` body when it has one.
    #[error("{status}: {message}")]
    Api {
        status: hyper::StatusCode,
        message: String,
        code: Option<String>,
    },
}

/// Sends one request to `daemon`'s socket; returns the body of a 2xx answer.
pub async fn request(
    daemon: &'static str,
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, ClientError> {
    let http = |e: &dyn std::fmt::Display| ClientError::Http {
        daemon,
        message: e.to_string(),
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            daemon,
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let has_body = body.is_some();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", daemon);
    if has_body {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| http(&e))?
        .to_bytes();
    if status.is_success() {
        return Ok(bytes);
    }
    let (message, code) = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => (body.error, body.code),
        Err(_) => (String::from_utf8_lossy(&bytes).trim().to_owned(), None),
    };
    Err(ClientError::Api {
        status,
        message,
        code,
    })
}
