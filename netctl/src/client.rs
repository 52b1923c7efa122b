//! The CLI's side of the API: one HTTP/1.1 request per connection over the
//! daemon's unix socket (the shared control-socket client).

use std::path::Path;

use hyper::body::Bytes;

pub use sbx_service::control::ClientError;

/// Sends one request; returns the body of a 2xx answer.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, ClientError> {
    sbx_service::control::request("netctl", socket, method, path, body).await
}
