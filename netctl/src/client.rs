//! The CLI's side of the API: one HTTP/1.1 request per connection over the
//! daemon's unix socket.

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use sbx_proto::ErrorBody;
use tokio::net::UnixStream;

/// A request that did not succeed, as one line for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach netctl at {path}: {source} (is `netctl serve` running?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to netctl: {0}")]
    Http(String),
    #[error("{0}")]
    Api(String),
}

/// Sends one request; returns the body of a 2xx answer.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let has_body = body.is_some();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "netctl");
    if has_body {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    if status.is_success() {
        return Ok(bytes);
    }
    let message = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_owned());
    Err(ClientError::Api(format!("{status}: {message}")))
}
