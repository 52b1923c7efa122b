//! What the soak does to the agent, one operation per function, each
//! checking its own result: WebSocket and raw tunnels carrying data to an
//! echo server and closing, processes run to the end or killed, files
//! written, read back and deleted, PTY sessions opened, written and closed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::http::Http;

/// The largest payload one tunnel or file operation carries.
const MAX_PAYLOAD: usize = 256 * 1024;
const FRAME: usize = 16 * 1024;
/// How long a process or PTY may take to do what it was asked.
const SETTLE: Duration = Duration::from_secs(10);

/// One agent and what the operations need around it.
#[derive(Clone)]
pub struct AgentTarget {
    pub http: Http,
    /// Port of an echo server on the agent's loopback.
    pub echo_port: u16,
    /// Where file operations write.
    pub scratch: PathBuf,
}

/// Echoes every connection on 127.0.0.1 until the runtime ends; returns
/// the port.
pub async fn start_echo_server() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind echo server")?;
    let port = listener.local_addr().context("echo server address")?.port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    Ok(port)
}

/// Random bytes, their length varying with `i` (reproducible per call).
fn payload(i: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(i);
    let len = rng.random_range(1..=MAX_PAYLOAD);
    let mut data = vec![0u8; len];
    rng.fill(data.as_mut_slice());
    data
}

fn ws_request(
    url: &str,
    headers: &[(&'static str, &str)],
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let mut req = url.into_client_request().context("WebSocket URL")?;
    for (name, value) in headers {
        req.headers_mut()
            .insert(*name, HeaderValue::from_str(value).context("header value")?);
    }
    Ok(req)
}

/// A WebSocket tunnel to the echo server: data out in frames, a Close
/// (half-close), every byte back, then the agent's Close.
pub async fn ws_tunnel(t: &AgentTarget, i: u64) -> Result<()> {
    let url = format!(
        "ws://{}/api/v1/tunnels/tcp?port={}",
        t.http.addr, t.echo_port
    );
    let req = ws_request(&url, &[("authorization", &t.http.authorization)])?;
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .context("open WebSocket tunnel")?;
    let data = payload(i);
    let (mut sink, mut stream) = ws.split();
    let writer = async {
        for chunk in data.chunks(FRAME) {
            sink.send(Message::Binary(chunk.to_vec().into()))
                .await
                .context("send frame")?;
        }
        sink.send(Message::Close(None))
            .await
            .context("send Close")?;
        anyhow::Ok(())
    };
    let reader = async {
        let mut got = Vec::with_capacity(data.len());
        while let Some(msg) = stream.next().await {
            match msg.context("read tunnel")? {
                Message::Binary(b) => got.extend_from_slice(&b),
                Message::Close(_) => return Ok(got),
                _ => {}
            }
        }
        bail!("tunnel ended without a Close after {} bytes", got.len())
    };
    let ((), got) = tokio::try_join!(writer, reader)?;
    ensure!(
        got == data,
        "echo through the WebSocket tunnel differs: sent {} bytes, got {}",
        data.len(),
        got.len()
    );
    Ok(())
}

/// The raw tunnel (`Upgrade: sbx-tcp`): data out, write side shut, every
/// byte back, then end of stream.
pub async fn raw_tunnel(t: &AgentTarget, i: u64) -> Result<()> {
    let mut conn = TcpStream::connect(t.http.addr)
        .await
        .context("connect to agent")?;
    let head = format!(
        "GET /api/v1/tunnels/raw?port={} HTTP/1.1\r\nHost: agent\r\nAuthorization: {}\r\nConnection: Upgrade\r\nUpgrade: sbx-tcp\r\n\r\n",
        t.echo_port, t.http.authorization
    );
    conn.write_all(head.as_bytes())
        .await
        .context("send upgrade")?;
    let early = read_upgrade(&mut conn).await?;
    let data = payload(i);
    let (mut r, mut w) = conn.into_split();
    let writer = async {
        w.write_all(&data).await.context("write raw tunnel")?;
        w.shutdown().await.context("half-close raw tunnel")?;
        anyhow::Ok(())
    };
    let reader = async {
        let mut got = early;
        r.read_to_end(&mut got).await.context("read raw tunnel")?;
        anyhow::Ok(got)
    };
    let ((), got) = tokio::try_join!(writer, reader)?;
    ensure!(
        got == data,
        "echo through the raw tunnel differs: sent {} bytes, got {}",
        data.len(),
        got.len()
    );
    Ok(())
}

/// Reads the answer's head, requires 101, and returns any bytes after it.
async fn read_upgrade(conn: &mut TcpStream) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk).await.context("read upgrade answer")?;
        ensure!(n > 0, "agent closed before answering the upgrade");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let status = String::from_utf8_lossy(&buf[..end]).into_owned();
            ensure!(
                status.starts_with("HTTP/1.1 101"),
                "raw tunnel refused: {status}"
            );
            return Ok(buf.split_off(end + 4));
        }
        ensure!(buf.len() < 16 * 1024, "upgrade answer head too long");
    }
}

/// A process run to its end (output checked) or killed; either way the
/// agent is told to forget it. Every third goes through `/processes/run`.
pub async fn process(t: &AgentTarget, i: u64) -> Result<()> {
    let marker = format!("soak-{i}");
    match i % 3 {
        0 => {
            let pid = start(
                t,
                json!({"command": "sh", "args": ["-c", format!("printf {marker}")]}),
            )
            .await?;
            wait_exit(t, pid).await?;
            let out = t
                .http
                .get(&format!("/api/v1/processes/{pid}/stdout"))
                .await?
                .expect(200, "stdout")?
                .json()?;
            ensure!(out["lines"] == json!([marker]), "stdout of {pid}: {out}");
            forget(t, pid).await
        }
        1 => {
            let pid = start(t, json!({"command": "sleep", "args": ["60"]})).await?;
            t.http
                .delete(&format!("/api/v1/processes/{pid}"))
                .await?
                .expect(204, "kill")?;
            let info = wait_exit(t, pid).await?;
            ensure!(info["signal"] == 9, "killed process {pid}: {info}");
            forget(t, pid).await
        }
        _ => {
            let r = t
                .http
                .post_json(
                    "/api/v1/processes/run",
                    &json!({"command": "sh", "args": ["-c", format!("echo {marker}")]}),
                )
                .await?
                .expect(200, "processes/run")?;
            let text = r.text();
            ensure!(
                text.contains(&marker) && text.contains("exit_code"),
                "processes/run answered {text}"
            );
            Ok(())
        }
    }
}

async fn start(t: &AgentTarget, body: serde_json::Value) -> Result<u64> {
    let r = t
        .http
        .post_json("/api/v1/processes", &body)
        .await?
        .expect(201, "start process")?
        .json()?;
    r["pid"].as_u64().with_context(|| format!("no pid in {r}"))
}

async fn wait_exit(t: &AgentTarget, pid: u64) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let info = t
            .http
            .get(&format!("/api/v1/processes/{pid}"))
            .await?
            .expect(200, "process info")?
            .json()?;
        if info["status"] != "running" {
            return Ok(info);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "process {pid} still running after {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn forget(t: &AgentTarget, pid: u64) -> Result<()> {
    let path = format!("/api/v1/processes/{pid}");
    t.http.delete(&path).await?.expect(204, "forget process")?;
    t.http.get(&path).await?.expect(404, "forgotten process")?;
    Ok(())
}

/// A file written, read back byte for byte, deleted, and gone.
pub async fn file(t: &AgentTarget, i: u64) -> Result<()> {
    let path = t.scratch.join(format!("soak-{}.bin", i % 8));
    let path = path.to_str().context("scratch path is not UTF-8")?;
    ensure!(
        path.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)),
        "scratch path {path} needs percent-encoding"
    );
    let url = format!("/api/v1/files?path={path}");
    let data = payload(i);
    t.http
        .request("PUT", &url, &data)
        .await?
        .expect(204, "upload")?;
    let got = t.http.get(&url).await?.expect(200, "download")?;
    ensure!(
        got.body == data,
        "download of {path} differs: {} bytes sent, {} back",
        data.len(),
        got.body.len()
    );
    t.http.delete(&url).await?.expect(204, "delete file")?;
    t.http.get(&url).await?.expect(404, "deleted file")?;
    Ok(())
}

/// A PTY session: a shell computes something (so the echo of the input
/// cannot pass for the answer), then exits or is deleted while alive.
pub async fn pty(t: &AgentTarget, i: u64) -> Result<()> {
    let created = t
        .http
        .post_json(
            "/api/v1/pty",
            &json!({"command": "sh", "rows": 24, "cols": 80}),
        )
        .await?
        .expect(201, "create PTY")?
        .json()?;
    let id = created["session_id"]
        .as_str()
        .with_context(|| format!("no session_id in {created}"))?;
    let token = created["token"]
        .as_str()
        .with_context(|| format!("no token in {created}"))?;
    let url = format!("ws://{}/api/v1/pty/{id}/ws", t.http.addr);
    let req = ws_request(
        &url,
        &[
            ("authorization", &t.http.authorization),
            ("x-pty-token", token),
        ],
    )?;
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .context("open PTY WebSocket")?;
    ws.send(Message::Binary(vec![2u8].into()))
        .await
        .context("send READY")?;
    let mut input = vec![0u8];
    input.extend_from_slice(format!("echo soak-$(({i}+1))\n").as_bytes());
    ws.send(Message::Binary(input.into()))
        .await
        .context("send input")?;
    let want = format!("soak-{}", i + 1);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !String::from_utf8_lossy(&seen).contains(&want) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("no {want:?} from the PTY in {SETTLE:?}"))?;
        match msg {
            Some(Ok(Message::Binary(b))) if b.first() == Some(&0) => {
                seen.extend_from_slice(&b[1..]);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("read PTY"),
            None => bail!("PTY closed before printing {want:?}"),
        }
    }
    if i.is_multiple_of(2) {
        ws.send(Message::Binary(b"\0exit\n".to_vec().into()))
            .await
            .context("send exit")?;
        let closed = tokio::time::timeout(SETTLE, async {
            while let Some(Ok(msg)) = ws.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        });
        closed.await.context("the PTY did not close after exit")?;
    } else {
        let _ = ws.close(None).await;
    }
    t.http
        .delete(&format!("/api/v1/pty/{id}"))
        .await?
        .expect(204, "delete PTY")?;
    Ok(())
}

/// The agent's address as the soak reaches it.
pub fn http(addr: SocketAddr, authorization: String) -> Http {
    Http {
        addr,
        authorization,
    }
}
