//! A fake control plane for the resume rows: the lifecycle hook sbx-proxy
//! POSTs `{"sandbox_id", "action"}` to. It answers at once; for a resume it
//! waits a fixed delay (the time a real control plane takes to wake a
//! sandbox) and then PATCHes the sandbox's `status` to `running` through
//! the proxy's admin socket, as a control plane would. Every call is
//! counted and timed so the rows can say where the wait went.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::client;
use crate::rig::SANDBOX_ID;

/// The last stretch of the delay is spun rather than slept, so the hook
/// waits the delay and not the delay plus a timer's slack.
const SPIN: Duration = Duration::from_micros(500);

/// One resume call, as the control plane saw it.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// The POST arrived (its body read).
    pub received: Instant,
    /// The PATCH to `running` was sent (`received` + the delay).
    pub patch_sent: Option<Instant>,
    /// The admin socket answered it.
    pub patch_done: Option<Instant>,
}

#[derive(Default)]
struct Log {
    resumes: Vec<Call>,
    /// Calls that were not a resume of the bench's sandbox, or failed.
    other: Vec<String>,
}

/// The running hook; it ends with the runtime.
#[derive(Clone)]
pub struct Hook {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl Hook {
    /// `http://` URL for `[lifecycle] hook_url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1/sandbox-lifecycle", self.addr)
    }

    /// Resume calls received so far.
    pub fn resumes(&self) -> usize {
        self.lock().resumes.len()
    }

    /// The `i`-th resume call once its PATCH has been answered; waits up to
    /// `timeout` for that.
    pub fn finished(&self, i: usize, timeout: Duration) -> Option<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(call) = self.lock().resumes.get(i).copied() {
                if call.patch_done.is_some() {
                    return Some(call);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// What went wrong or was unexpected, for the notes.
    pub fn problems(&self) -> Vec<String> {
        self.lock().other.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Binds on an ephemeral loopback port; `admin_socket` is where the
/// PATCHes go (the proxy may not be running yet: it needs this URL first).
pub async fn start(admin_socket: PathBuf, delay: Duration) -> Result<Hook> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("bind the lifecycle hook")?;
    let hook = Hook {
        addr: listener.local_addr()?,
        log: Arc::default(),
    };
    let served = hook.clone();
    let admin_socket = Arc::new(admin_socket);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let hook = served.clone();
            let admin_socket = admin_socket.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    handle(request, hook.clone(), admin_socket.clone(), delay)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(hook)
}

async fn handle(
    request: Request<Incoming>,
    hook: Hook,
    admin_socket: Arc<PathBuf>,
    delay: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        Ok(response)
    };
    let method = request.method().clone();
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            hook.lock().other.push(format!("hook: reading a call: {e}"));
            return answer(StatusCode::BAD_REQUEST, "{}");
        }
    };
    let received = Instant::now();
    let call: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let action = call.get("action").and_then(|a| a.as_str()).unwrap_or("");
    let id = call
        .get("sandbox_id")
        .and_then(|a| a.as_str())
        .unwrap_or("");
    if method != http::Method::POST || action != "resume" || id != SANDBOX_ID {
        hook.lock().other.push(format!(
            "hook: unexpected call {method} {}",
            String::from_utf8_lossy(&body)
        ));
        return answer(StatusCode::BAD_REQUEST, "{}");
    }
    let index = {
        let mut log = hook.lock();
        log.resumes.push(Call {
            received,
            patch_sent: None,
            patch_done: None,
        });
        log.resumes.len() - 1
    };
    tokio::task::spawn_blocking(move || resume_later(&hook, index, &admin_socket, delay));
    answer(StatusCode::OK, "{}")
}

/// Waits until `delay` after the call arrived, then marks the sandbox
/// running through the admin socket.
fn resume_later(hook: &Hook, index: usize, admin_socket: &std::path::Path, delay: Duration) {
    let received = hook.lock().resumes[index].received;
    let due = received + delay;
    if let Some(nap) = due.checked_duration_since(Instant::now() + SPIN) {
        std::thread::sleep(nap);
    }
    while Instant::now() < due {
        std::hint::spin_loop();
    }
    let sent = Instant::now();
    let path = format!("/v1/sandboxes/{SANDBOX_ID}");
    let result = client::unix_request(
        admin_socket,
        "PATCH",
        &path,
        Some(r#"{"status":"running"}"#),
    );
    let done = Instant::now();
    let mut log = hook.lock();
    match result {
        Ok((200, _)) => {}
        Ok((status, body)) => log.other.push(format!(
            "hook: PATCH {path} status running answered {status}: {body}"
        )),
        Err(e) => log
            .other
            .push(format!("hook: PATCH {path} status running: {e:#}")),
    }
    let call = &mut log.resumes[index];
    call.patch_sent = Some(sent);
    call.patch_done = Some(done);
}
