//! HTTP/1.1 requests with bodies for `sbx exec` and `sbx files`: a request
//! body streamed from a file or memory, and a response body read as a
//! stream (Content-Length, chunked, or until close), so gigabyte files and
//! endless event streams never sit in memory.

use std::time::Duration;

use sbx_proto::ErrorBody;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::credentials::Credentials;
use crate::target::AgentUrl;

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest error body read.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long connecting and receiving the response head may take.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot connect to agent at {url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("agent at {url} did not answer within {HEAD_TIMEOUT:?}")]
    Timeout { url: String },
    #[error("connection to agent failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("agent sent a malformed response: {0}")]
    Malformed(String),
    #[error("agent answered {status}: {message}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Api {
        status: u16,
        code: Option<String>,
        message: String,
    },
}

/// What goes after the request head.
pub enum Body {
    Empty,
    Json(serde_json::Value),
    /// Streamed with a known length.
    Reader(Box<dyn AsyncRead + Unpin + Send>, u64),
}

/// A response whose body is read incrementally.
pub struct Response {
    pub status: u16,
    reader: BufReader<TcpStream>,
    framing: Framing,
}

enum Framing {
    Length(u64),
    /// Bytes left in the current chunk; `None` before the first chunk.
    Chunked {
        left: u64,
        done: bool,
    },
    UntilClose,
}

impl Response {
    /// Fails with the agent's `{"error","code"}` unless the status is 2xx.
    pub async fn success(mut self) -> Result<Self, RequestError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let mut body = Vec::new();
        let mut buf = [0u8; 8192];
        while body.len() < MAX_ERROR_BODY {
            let n = self.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
        let (message, code) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => (b.error, b.code),
            Err(_) => (String::from_utf8_lossy(&body).trim().to_owned(), None),
        };
        Err(RequestError::Api {
            status: self.status,
            code,
            message,
        })
    }

    /// Reads body bytes; 0 at the end of the body.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, RequestError> {
        match &mut self.framing {
            Framing::Length(left) => {
                if *left == 0 {
                    return Ok(0);
                }
                let max = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..max]).await?;
                if n == 0 {
                    return Err(RequestError::Malformed("body ended early".into()));
                }
                *left -= n as u64;
                Ok(n)
            }
            Framing::UntilClose => Ok(self.reader.read(buf).await?),
            Framing::Chunked { left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let size = read_chunk_size(&mut self.reader).await?;
                    if size == 0 {
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let max = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..max]).await?;
                if n == 0 {
                    return Err(RequestError::Malformed("chunk ended early".into()));
                }
                *left -= n as u64;
                if *left == 0 {
                    let mut crlf = [0u8; 2];
                    self.reader.read_exact(&mut crlf).await?;
                }
                Ok(n)
            }
        }
    }

    /// Reads a whole (bounded) body.
    pub async fn bytes(mut self, limit: usize) -> Result<Vec<u8>, RequestError> {
        let mut body = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = self.read(&mut buf).await?;
            if n == 0 {
                return Ok(body);
            }
            if body.len() + n > limit {
                return Err(RequestError::Malformed(format!(
                    "body larger than {limit} bytes"
                )));
            }
            body.extend_from_slice(&buf[..n]);
        }
    }
}

async fn read_chunk_size(reader: &mut BufReader<TcpStream>) -> Result<u64, RequestError> {
    let mut line = Vec::new();
    loop {
        let b = reader.read_u8().await?;
        if b == b'\n' {
            break;
        }
        if line.len() > 1024 {
            return Err(RequestError::Malformed("chunk size line too long".into()));
        }
        line.push(b);
    }
    let text = String::from_utf8_lossy(&line);
    let hex = text.trim().split(';').next().unwrap_or("");
    let size = u64::from_str_radix(hex, 16)
        .map_err(|_| RequestError::Malformed(format!("bad chunk size {hex:?}")))?;
    if size == 0 {
        // Trailers, then the blank line.
        loop {
            let mut l = Vec::new();
            loop {
                let b = reader.read_u8().await?;
                if b == b'\n' {
                    break;
                }
                l.push(b);
            }
            if l.iter().all(|b| *b == b'\r') {
                break;
            }
        }
    }
    Ok(size)
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends one request and reads the response head.
pub async fn send(
    url: &AgentUrl,
    method: &str,
    path_and_query: &str,
    credentials: &Credentials,
    body: Body,
    accept: &str,
) -> Result<Response, RequestError> {
    let connect = async {
        TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|source| RequestError::Connect {
                url: url.to_string(),
                source,
            })
    };
    let mut stream = tokio::time::timeout(HEAD_TIMEOUT, connect)
        .await
        .map_err(|_| RequestError::Timeout {
            url: url.to_string(),
        })??;
    stream.set_nodelay(true)?;
    let (content_type, length) = match &body {
        Body::Empty => ("", 0),
        Body::Json(v) => (
            "Content-Type: application/json\r\n",
            v.to_string().len() as u64,
        ),
        Body::Reader(_, len) => ("Content-Type: application/octet-stream\r\n", *len),
    };
    let head = format!(
        "{method} {}{path_and_query} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sbx/{}\r\nAccept: {accept}\r\nConnection: close\r\nContent-Length: {length}\r\n{content_type}{}\r\n",
        url.prefix,
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
        credentials.header_line(),
    );
    stream.write_all(head.as_bytes()).await?;
    match body {
        Body::Empty => {}
        Body::Json(v) => stream.write_all(v.to_string().as_bytes()).await?,
        Body::Reader(reader, len) => {
            let copied = tokio::io::copy(&mut reader.take(len), &mut stream).await?;
            if copied != len {
                return Err(RequestError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("local file ended after {copied} of {len} bytes"),
                )));
            }
        }
    }
    stream.flush().await?;
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut reader))
        .await
        .map_err(|_| RequestError::Timeout {
            url: url.to_string(),
        })?
        .map(|(status, headers)| {
            let chunked = headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("transfer-encoding")
                    && v.to_ascii_lowercase().contains("chunked")
            });
            let length = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<u64>().ok());
            let framing = if chunked {
                Framing::Chunked {
                    left: 0,
                    done: false,
                }
            } else if let Some(len) = length {
                Framing::Length(len)
            } else {
                Framing::UntilClose
            };
            Response {
                status,
                reader,
                framing,
            }
        })
}

async fn read_head(
    reader: &mut BufReader<TcpStream>,
) -> Result<(u16, Vec<(String, String)>), RequestError> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(RequestError::Malformed("response head too large".into()));
        }
        match reader.read_u8().await {
            Ok(b) => head.push(b),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(RequestError::Malformed(
                    "connection closed before a response".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    parsed
        .parse(&head)
        .map_err(|e| RequestError::Malformed(e.to_string()))?;
    let status = parsed
        .code
        .ok_or_else(|| RequestError::Malformed("no status".into()))?;
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
    Ok((status, headers))
}
