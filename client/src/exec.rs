//! `sbx exec <url> -- cmd args...`: runs a command through
//! `POST /api/v1/processes/run`, streams its stdout and stderr to ours as
//! lines arrive, and exits with its exit code (128 + signal if killed).

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::credentials::Credentials;
use crate::request::{self, Body};
use crate::target::AgentUrl;

pub struct ExecOptions {
    pub agent: AgentUrl,
    pub credentials: Credentials,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub timeout: Option<f64>,
}

/// Runs the command; returns the exit status to exit with.
pub async fn run(opts: ExecOptions) -> anyhow::Result<u8> {
    let Some((command, args)) = opts.command.split_first() else {
        bail!("nothing to run: give a command after `--`");
    };
    let mut env = BTreeMap::new();
    for pair in &opts.env {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--env {pair:?} must be NAME=VALUE"))?;
        env.insert(k.to_owned(), v.to_owned());
    }
    let mut body = json!({"command": command, "args": args, "env": env});
    if let Some(dir) = &opts.working_dir {
        body["working_dir"] = json!(dir);
    }
    if let Some(user) = &opts.user {
        body["user"] = json!(user);
    }
    if let Some(t) = opts.timeout {
        body["timeout"] = json!(t);
    }
    let mut response = request::send(
        &opts.agent,
        "POST",
        "/api/v1/processes/run",
        &opts.credentials,
        Body::Json(body),
        "text/event-stream",
    )
    .await?
    .success()
    .await?;

    let mut events = SseParser::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = response.read(&mut buf).await?;
        if n == 0 {
            bail!("the agent closed the stream before the process exited");
        }
        for (event, data) in events.feed(&buf[..n]) {
            let data: Value = serde_json::from_str(&data)
                .with_context(|| format!("agent sent a malformed {event} frame"))?;
            match event.as_str() {
                "output" => {
                    let line = data["line"].as_str().unwrap_or_default();
                    if data["stream"] == "stderr" {
                        let mut err = std::io::stderr().lock();
                        let _ = writeln!(err, "{line}");
                    } else {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{line}").context("writing stdout")?;
                        out.flush().context("writing stdout")?;
                    }
                }
                "exit" => return Ok(exit_status(&data)),
                _ => tracing::debug!(%event, %data, "frame"),
            }
        }
    }
}

fn exit_status(exit: &Value) -> u8 {
    if let Some(code) = exit["exit_code"].as_i64() {
        return u8::try_from(code & 0xff).unwrap_or(1);
    }
    if exit["reason"] == "timed_out" {
        eprintln!("sbx: the command timed out and was killed");
    }
    match exit["signal"].as_i64() {
        Some(sig) => u8::try_from((128 + sig) & 0xff).unwrap_or(1),
        None => 1,
    }
}

/// Incremental Server-Sent Events parser: `(event, data)` per frame.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Some(end) = find_frame_end(&self.buf) {
            let frame: Vec<u8> = self.buf.drain(..end.0 + end.1).collect();
            let text = String::from_utf8_lossy(&frame[..end.0]);
            let mut event = String::from("message");
            let mut data = String::new();
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if !data.is_empty() {
                frames.push((event, data));
            }
        }
        frames
    }
}

/// Position and length of the first blank-line separator.
fn find_frame_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_split_anywhere() {
        let text = b"event: started\ndata: {\"pid\":1}\n\n: keep-alive\n\nevent: output\ndata: {\"line\":\"x\"}\n\nevent: exit\ndata: {}\n\n";
        for split in 0..text.len() {
            let mut p = SseParser::default();
            let mut frames = p.feed(&text[..split]);
            frames.extend(p.feed(&text[split..]));
            let names: Vec<_> = frames.iter().map(|(e, _)| e.as_str()).collect();
            assert_eq!(names, ["started", "output", "exit"], "split at {split}");
        }
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(&json!({"exit_code": 3})), 3);
        assert_eq!(exit_status(&json!({"exit_code": null, "signal": 9})), 137);
    }
}
