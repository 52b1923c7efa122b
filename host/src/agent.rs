//! Talking to a sandbox's agent over the same link the proxy uses.
//! "Running" means the agent answers: a create (and a resume) is done only
//! when `GET /api/v1/health` answers `{"healthy": true}`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use sbx_proto::auth::{ForwardedAuthKey, FORWARDED_AUTH_HEADER};
use tokio::net::TcpStream;

/// Between attempts: short, since under KVM a guest is up in ~100 ms.
const RETRY: Duration = Duration::from_millis(20);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Our answers from the agent are small; anything larger is not our agent.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("the agent at {addr} did not answer its health check within {secs} s (last: {last})")]
    Timeout {
        addr: SocketAddr,
        secs: u64,
        last: String,
    },
    #[error("the guest stopped before its agent answered")]
    GuestGone,
}

/// Polls until healthy, `deadline`, or `alive()` turns false.
pub async fn wait_healthy(
    addr: SocketAddr,
    deadline: Duration,
    alive: impl Fn() -> bool,
) -> Result<Duration, HealthError> {
    let started = Instant::now();
    loop {
        let last = match tokio::time::timeout(ATTEMPT_TIMEOUT, check(addr)).await {
            Ok(Ok(())) => return Ok(started.elapsed()),
            Ok(Err(e)) => e,
            Err(_) => "attempt timed out".into(),
        };
        if !alive() {
            return Err(HealthError::GuestGone);
        }
        if started.elapsed() >= deadline {
            return Err(HealthError::Timeout {
                addr,
                secs: deadline.as_secs(),
                last,
            });
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One attempt; the error is a short reason for the log.
pub async fn check(addr: SocketAddr) -> Result<(), String> {
    let req = hyper::Request::get("/api/v1/health")
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let v = call(addr, req).await?;
    if v.get("healthy") == Some(&serde_json::Value::Bool(true)) {
        Ok(())
    } else {
        Err("not healthy".into())
    }
}

/// Starts the sandbox's entrypoint as an ordinary process of the agent,
/// so its output is captured and visible through the API like any other.
pub async fn start_entrypoint(
    addr: SocketAddr,
    id: &str,
    key: &ForwardedAuthKey,
    argv: &[String],
) -> Result<u32, String> {
    let (command, args) = argv.split_first().ok_or("empty entrypoint")?;
    let body = serde_json::to_vec(&serde_json::json!({"command": command, "args": args}))
        .map_err(|e| e.to_string())?;
    let expiry = crate::model::now() + 60;
    let req = hyper::Request::post("/api/v1/processes")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .header(FORWARDED_AUTH_HEADER, key.mint(id, expiry))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let v = tokio::time::timeout(ATTEMPT_TIMEOUT * 5, call(addr, req))
        .await
        .map_err(|_| "the agent did not answer in time".to_string())??;
    v.get("pid")
        .and_then(serde_json::Value::as_u64)
        .map(|p| p as u32)
        .ok_or_else(|| format!("unexpected answer: {v}"))
}

/// One request on a fresh connection; a 2xx JSON answer, or why not.
async fn call(
    addr: SocketAddr,
    req: hyper::Request<Full<Bytes>>,
) -> Result<serde_json::Value, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("body: {e}"))
    }
    .await;
    driver.abort();
    result
}
