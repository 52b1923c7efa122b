//! A minimal blocking HTTP/1.1 client: one keep-alive connection, one
//! request at a time. The same bytes go to every target, so its own cost
//! is common to all columns; with no runtime and no pool in the way, the
//! time per request is the targets' latency.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed response.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server announced `Connection: close`.
    pub close: bool,
}

/// TCP, or a unix socket (sbx-proxy's admin API).
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Unix(s) => s.flush(),
        }
    }
}

/// One HTTP/1.1 connection to a target.
pub struct Conn {
    stream: Stream,
    /// The peer, for messages.
    addr: String,
    /// Received bytes not yet consumed.
    buf: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Self {
            stream: Stream::Tcp(stream),
            addr: addr.to_string(),
            buf: Vec::with_capacity(1024),
        })
    }

    /// A keep-alive connection to a unix socket.
    pub fn connect_unix(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("connect to {}", socket.display()))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Self {
            stream: Stream::Unix(stream),
            addr: socket.display().to_string(),
            buf: Vec::with_capacity(1024),
        })
    }

    /// Sends `request` (a complete head, no body) and reads the response.
    pub fn exchange(&mut self, request: &[u8]) -> Result<Response> {
        self.send(request)?;
        self.read_response()
    }

    pub fn send(&mut self, request: &[u8]) -> Result<()> {
        self.stream
            .write_all(request)
            .with_context(|| format!("send to {}", self.addr))
    }

    fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self
            .stream
            .read(&mut chunk)
            .with_context(|| format!("read from {}", self.addr))?;
        if n == 0 {
            bail!("{} closed the connection mid-response", self.addr);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub fn read_response(&mut self) -> Result<Response> {
        let (head_len, status, length, chunked, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response
                .parse(&self.buf)
                .with_context(|| format!("bad response from {}", self.addr))?
            {
                httparse::Status::Complete(len) => {
                    let status = response.code.unwrap_or(0);
                    let mut length = None;
                    let mut chunked = false;
                    let mut close = false;
                    for h in response.headers.iter() {
                        let value = std::str::from_utf8(h.value).unwrap_or("");
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse::<usize>().ok();
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = value.to_ascii_lowercase().contains("chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = value.to_ascii_lowercase().contains("close");
                        }
                    }
                    break (len, status, length, chunked, close);
                }
                httparse::Status::Partial if self.buf.len() > MAX_HEAD => {
                    bail!("{}: response head too large", self.addr)
                }
                httparse::Status::Partial => self.fill()?,
            }
        };
        self.buf.drain(..head_len);
        let body = if chunked {
            self.read_chunked()?
        } else if let Some(len) = length {
            while self.buf.len() < len {
                self.fill()?;
            }
            self.buf.drain(..len).collect()
        } else if status == 204 || status == 304 || status / 100 == 1 {
            Vec::new()
        } else {
            bail!(
                "{}: response {status} without Content-Length or chunked body",
                self.addr
            );
        };
        Ok(Response {
            status,
            body,
            close,
        })
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.fill()?;
            };
            let line = std::str::from_utf8(&self.buf[..line_end])
                .map_err(|_| anyhow!("{}: bad chunk size line", self.addr))?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| anyhow!("{}: bad chunk size {size_text:?}", self.addr))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers, if any, end with an empty line.
                loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        self.buf.drain(..i + 2);
                        if i == 0 {
                            return Ok(body);
                        }
                    } else {
                        self.fill()?;
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }
}

/// A keep-alive request with a JSON body.
pub fn json_request(method: &str, path: &str, host: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: proxy-bench\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `GET / HTTP/1.1` with `host`, keep-alive.
pub fn get_request(host: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: proxy-bench\r\n\r\n").into_bytes()
}

/// Fails unless `response` is the service's 200 with its 64-byte body.
pub fn check(response: &Response, target: &str) -> Result<()> {
    if response.status != 200 || response.body != crate::service::BODY {
        let preview: String = String::from_utf8_lossy(&response.body)
            .chars()
            .take(200)
            .collect();
        bail!(
            "{target} answered {} with a {}-byte body instead of the service's 200: {preview:?}",
            response.status,
            response.body.len()
        );
    }
    Ok(())
}

/// One request over a unix socket with `Connection: close`; returns the
/// status and body (the sbx-proxy admin API).
pub fn unix_request(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let body = body.unwrap_or("");
    let content = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{content}\r\n{body}"
    );
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("read answer from {}", socket.display()))?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = response.parse(&raw)? else {
        bail!(
            "{}: truncated response to {method} {path}",
            socket.display()
        );
    };
    let status = response.code.unwrap_or(0);
    let chunked = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
    });
    let rest = &raw[head_len..];
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Decodes a complete chunked body (already read to EOF).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..i]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        raw = &raw[i + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or(&[]);
    }
    out
}
