//! Just enough asynchronous HTTP/1.1 for the soak's agent calls: one request
//! per connection (`Connection: close`), the whole answer read, chunked
//! bodies decoded. Every failure is an error with context, never a panic:
//! the soak counts failures and keeps going.

use std::net::SocketAddr;

use anyhow::{bail, ensure, Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The most header lines an answer may have.
const MAX_HEADERS: usize = 64;

/// An answer: status and body (headers are not needed by the soak).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Fails unless the status is `want`, showing the body.
    pub fn expect(self, want: u16, what: &str) -> Result<Self> {
        ensure!(
            self.status == want,
            "{what}: status {} (wanted {want}): {}",
            self.status,
            self.text()
        );
        Ok(self)
    }
}

/// A client for one server with one `Authorization` header value.
#[derive(Clone)]
pub struct Http {
    pub addr: SocketAddr,
    pub authorization: String,
}

impl Http {
    pub async fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<Reply> {
        let mut conn = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: agent\r\nAuthorization: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.authorization,
            body.len()
        );
        conn.write_all(head.as_bytes()).await.context("send head")?;
        conn.write_all(body).await.context("send body")?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw)
            .await
            .with_context(|| format!("read the answer to {method} {path}"))?;
        parse(&raw).with_context(|| format!("{method} {path}"))
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.request("GET", path, b"").await
    }

    pub async fn delete(&self, path: &str) -> Result<Reply> {
        self.request("DELETE", path, b"").await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<Reply> {
        self.request("POST", path, body.to_string().as_bytes())
            .await
    }
}

/// Splits a whole HTTP/1.1 answer into status and (de-chunked) body.
pub fn parse(raw: &[u8]) -> Result<Reply> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw).context("malformed answer")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => bail!("answer ended inside its head ({} bytes)", raw.len()),
    };
    let status = response.code.context("no status code")?;
    let has = |name: &str, value: &str| {
        response.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case(name)
                && String::from_utf8_lossy(h.value)
                    .to_ascii_lowercase()
                    .contains(value)
        })
    };
    let rest = &raw[head_len..];
    let body = if has("transfer-encoding", "chunked") {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Reply { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line without CRLF")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).context("chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(rest.len() >= size + 2, "chunk of {size} bytes cut short");
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
        let r = parse(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"abcde"[..]));
    }

    #[test]
    fn truncated_answers_are_errors() {
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab").is_err());
    }
}
