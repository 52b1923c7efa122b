//! A small blocking HTTP/1.1 client for the API tests: enough for JSON,
//! raw bodies, chunked responses and Server-Sent Events, with nothing
//! between the test and the agent's bytes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an API error: status, `{"error","code"}` with this code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        let body = self.json();
        assert_eq!(body["code"], code, "body: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "error message missing: {body}"
        );
    }

    /// The SSE frames as `(event, data)`.
    pub fn events(&self) -> Vec<(String, Value)> {
        parse_sse(&self.text())
    }
}

pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = "message".to_owned();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        if !data.is_empty() {
            let value = serde_json::from_str(&data).unwrap_or(Value::String(data));
            out.push((event, value));
        }
    }
    out
}

#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub auth: String,
}

impl Client {
    pub fn new(addr: SocketAddr, auth: String) -> Self {
        Self { addr, auth }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect to agent");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        s
    }

    /// Writes a request head for a body of `len` bytes.
    pub fn send_head(
        &self,
        s: &mut TcpStream,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        len: Option<u64>,
    ) {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: agent\r\nAuthorization: {}\r\nConnection: close\r\n",
            self.auth
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(len) = len {
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).expect("write head");
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut s = self.connect();
        self.send_head(&mut s, method, path, extra, Some(body.len() as u64));
        s.write_all(body).expect("write body");
        read_response(s)
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, &[], b"")
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// `POST /processes`, asserting 201; returns the pid.
    #[track_caller]
    pub fn start(&self, body: Value) -> u64 {
        let r = self.post_json("/api/v1/processes", &body);
        assert_eq!(r.status, 201, "start {body}: {}", r.text());
        r.json()["pid"].as_u64().expect("pid")
    }

    /// Polls until the process is no longer running; returns its info.
    #[track_caller]
    pub fn wait_exit(&self, pid: u64) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let info = self.get(&format!("/api/v1/processes/{pid}")).json();
            if info["status"] != "running" {
                return info;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} still running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn info(&self) -> Value {
        self.get("/api/v1/info").json()
    }
}

/// Reads a whole response (the agent closes after it: `Connection: close`).
pub fn read_response(s: TcpStream) -> Response {
    let mut reader = BufReader::new(s);
    let (status, headers) = read_head(&mut reader);
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("chunk size");
            let size = usize::from_str_radix(line.trim(), 16).expect("chunk size hex");
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).expect("chunk");
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = length {
        body.resize(len, 0);
        reader.read_exact(&mut body).expect("body");
    } else {
        reader.read_to_end(&mut body).expect("body");
    }
    Response {
        status,
        headers,
        body,
    }
}

pub fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    (status, headers)
}
