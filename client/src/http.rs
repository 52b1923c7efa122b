//! Just enough HTTP/1.1 to open a tunnel and to ask the agent simple
//! questions, keeping every byte the agent sends after its response head.

use std::time::Duration;

use sbx_proto::ErrorBody;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::credentials::Credentials;
use crate::target::AgentUrl;

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest error body read.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to agent at {url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("agent at {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("connection to agent failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("agent sent a malformed response: {0}")]
    Malformed(String),
    #[error("{0}")]
    Api(#[from] ApiFailure),
}

/// A non-success answer from the agent, explained for a person.
#[derive(Debug, thiserror::Error)]
#[error("{explanation}")]
pub struct ApiFailure {
    pub status: u16,
    pub code: Option<String>,
    pub message: String,
    pub explanation: String,
}

/// A parsed response head plus whatever followed it.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub stream: TcpStream,
    /// Bytes received after the head (body or first WebSocket frames).
    pub rest: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads a (bounded) body and turns the answer into an error.
    pub async fn into_failure(mut self, context: impl Fn(u16, &str) -> String) -> HttpError {
        let body = match self.read_body().await {
            Ok(body) => body,
            Err(err) => return err,
        };
        let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
        let (message, code) = match parsed {
            Some(b) => (b.error, b.code),
            None => (String::from_utf8_lossy(&body).trim().to_owned(), None),
        };
        let explanation = context(self.status, &message);
        HttpError::Api(ApiFailure {
            status: self.status,
            code,
            message,
            explanation,
        })
    }

    pub async fn read_body(&mut self) -> Result<Vec<u8>, HttpError> {
        let len = self
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok());
        let limit = len.unwrap_or(MAX_BODY).min(MAX_BODY);
        let mut body = std::mem::take(&mut self.rest);
        while body.len() < limit {
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(limit);
        Ok(body)
    }
}

/// Sends one request with no body and reads the response head.
pub async fn request(
    url: &AgentUrl,
    path_and_query: &str,
    extra_headers: &str,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<Response, HttpError> {
    tokio::time::timeout(timeout, async {
        let stream = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|source| HttpError::Connect {
                url: url.to_string(),
                source,
            })?;
        stream.set_nodelay(true)?;
        let head = format!(
            "GET {}{path_and_query} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sbx/{}\r\n{}{extra_headers}\r\n",
            url.prefix,
            url.host_header(),
            env!("CARGO_PKG_VERSION"),
            credentials.header_line(),
        );
        read_head(stream, head.as_bytes()).await
    })
    .await
    .map_err(|_| HttpError::Timeout {
        url: url.to_string(),
        timeout,
    })?
}

async fn read_head(mut stream: TcpStream, request: &[u8]) -> Result<Response, HttpError> {
    stream.write_all(request).await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HttpError::Malformed(
                "connection closed before a response".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = parsed.code.unwrap_or(0);
                let headers = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let rest = buf[len..].to_vec();
                return Ok(Response {
                    status,
                    headers,
                    stream,
                    rest,
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(HttpError::Malformed("response head too large".into()))
            }
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        }
    }
}
