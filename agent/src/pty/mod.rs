//! PTY sessions: a process on a pseudo-terminal, its output held (bounded)
//! until a WebSocket client attaches and says READY, then streamed to it.
//!
//! The session's reader task owns the master side's read half: it forwards
//! output to the attached client (waiting for it, so a slow client slows
//! the program down as a real terminal would), or keeps it in a bounded
//! buffer while no client is ready. When the program exits, the exit code
//! goes to the client, or waits for the next one.

mod sys;
pub mod ws;

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sbx_proto::api::{CreatePty, PtyInfo, PTY_MAX_COLS, PTY_MAX_ROWS};
use sbx_proto::ErrorCode;
use tokio::io::unix::AsyncFd;
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::process::now_ms;
use crate::process::spec::CommandSpec;

/// After SIGHUP, how long a session's program gets before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(2);
/// After the program exits, how long output still in flight is read.
const DRAIN_GRACE: Duration = Duration::from_millis(200);
/// Exited sessions are forgotten after this long.
const EXITED_RETENTION: Duration = Duration::from_secs(300);
const READ_CHUNK: usize = 32 * 1024;

/// What the reader task hands to an attached client.
#[derive(Debug)]
pub enum Out {
    Data(Bytes),
    Exit(i32),
}

#[derive(Debug, Default)]
struct OutState {
    /// Output produced while no client was ready; oldest bytes dropped.
    pending: VecDeque<u8>,
    dropped: u64,
    attached: Option<mpsc::Sender<Out>>,
    exit: Option<i32>,
    exited_at: Option<Instant>,
}

#[derive(Debug)]
pub struct Session {
    pub id: String,
    token: String,
    pub pid: u32,
    pub command: String,
    pub args: Vec<String>,
    pub created_at: u64,
    size: Mutex<(u16, u16)>,
    master: Arc<AsyncFd<OwnedFd>>,
    out: Mutex<OutState>,
    pending_limit: usize,
}

impl Session {
    fn out(&self) -> MutexGuard<'_, OutState> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn info(&self) -> PtyInfo {
        let (rows, cols) = *self.size.lock().unwrap_or_else(|e| e.into_inner());
        let exit = self.out().exit;
        PtyInfo {
            session_id: self.id.clone(),
            pid: self.pid,
            command: self.command.clone(),
            args: self.args.clone(),
            rows,
            cols,
            created_at: self.created_at,
            alive: exit.is_none(),
            exit_code: exit,
        }
    }

    /// Constant-time comparison of the per-session token.
    pub fn token_matches(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        self.token.as_bytes().ct_eq(token.as_bytes()).into()
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ApiError> {
        check_size(rows, cols)?;
        sys::resize(self.master.get_ref(), rows, cols).map_err(|e| {
            ApiError::new(ErrorCode::Internal, format!("cannot resize terminal: {e}"))
        })?;
        *self.size.lock().unwrap_or_else(|e| e.into_inner()) = (rows, cols);
        Ok(())
    }

    pub async fn write_input(&self, data: &[u8]) -> std::io::Result<()> {
        sys::write_all(&self.master, data).await
    }

    /// A client became ready: it gets what was buffered, then live output
    /// through `tx`, and the exit code if the program already ended.
    pub fn attach(&self, tx: mpsc::Sender<Out>) -> (Vec<u8>, Option<i32>) {
        let mut out = self.out();
        let pending: Vec<u8> = out.pending.drain(..).collect();
        if out.dropped > 0 {
            tracing::info!(session = %self.id, dropped = out.dropped, "PTY output dropped before READY (buffer bound)");
            out.dropped = 0;
        }
        if out.exit.is_none() {
            out.attached = Some(tx);
        }
        (pending, out.exit)
    }

    /// The client behind `tx` went away.
    pub fn detach(&self, tx: &mpsc::Sender<Out>) {
        let mut out = self.out();
        if out.attached.as_ref().is_some_and(|a| a.same_channel(tx)) {
            out.attached = None;
        }
    }

    fn buffer(&self, out: &mut OutState, data: &[u8]) {
        out.pending.extend(data);
        let excess = out.pending.len().saturating_sub(self.pending_limit);
        if excess > 0 {
            out.pending.drain(..excess);
            out.dropped += excess as u64;
        }
    }

    async fn deliver(&self, data: Bytes) {
        let tx = {
            let mut out = self.out();
            match &out.attached {
                Some(tx) => tx.clone(),
                None => {
                    self.buffer(&mut out, &data);
                    return;
                }
            }
        };
        if let Err(mpsc::error::SendError(Out::Data(data))) = tx.send(Out::Data(data)).await {
            let mut out = self.out();
            if out.attached.as_ref().is_some_and(|a| a.same_channel(&tx)) {
                out.attached = None;
            }
            self.buffer(&mut out, &data);
        }
    }

    async fn finish(&self, code: i32) {
        let tx = {
            let mut out = self.out();
            out.exit = Some(code);
            out.exited_at = Some(Instant::now());
            out.attached.take()
        };
        if let Some(tx) = tx {
            let _ = tx.send(Out::Exit(code)).await;
        }
    }

    fn hang_up(self: &Arc<Self>) {
        let Ok(pid) = i32::try_from(self.pid) else {
            return;
        };
        if self.out().exit.is_some() {
            return;
        }
        let _ = killpg(Pid::from_raw(pid), Signal::SIGHUP);
        let session = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HANGUP_GRACE).await;
            if session.out().exit.is_none() {
                tracing::info!(session = %session.id, "PTY program ignored SIGHUP; killing");
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        });
    }
}

/// Validates a `POST /pty` body before anything is opened or spawned.
pub fn check_create(req: CreatePty) -> Result<CommandSpec, ApiError> {
    check_size(req.rows, req.cols)?;
    let mut env: Vec<(String, String)> = Vec::new();
    if !req.env.contains_key("TERM") {
        env.push(("TERM".into(), "xterm-256color".into()));
    }
    env.extend(req.env);
    CommandSpec::new(req.command, req.args, env, req.working_dir, None)
}

pub fn check_size(rows: u16, cols: u16) -> Result<(), ApiError> {
    if !(1..=PTY_MAX_ROWS).contains(&rows) || !(1..=PTY_MAX_COLS).contains(&cols) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "terminal size {rows}x{cols} out of range: rows 1..={PTY_MAX_ROWS}, cols 1..={PTY_MAX_COLS}"
            ),
        ));
    }
    Ok(())
}

/// The PTY sessions of this agent.
pub struct PtyTable {
    max_sessions: usize,
    pending_limit: usize,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl PtyTable {
    pub fn new(max_sessions: usize, pending_limit: usize) -> Self {
        Self {
            max_sessions,
            pending_limit,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets exited sessions after a while, and the oldest exited ones
    /// at once when there are many, so sessions that come and go quickly
    /// cannot pile up their buffers.
    fn prune(&self) {
        let mut sessions = self.lock();
        sessions.retain(|_, s| {
            s.out()
                .exited_at
                .is_none_or(|at| at.elapsed() < EXITED_RETENTION)
        });
        let keep = self.max_sessions.saturating_mul(2);
        if sessions.len() > keep {
            let mut exited: Vec<(Instant, String)> = sessions
                .iter()
                .filter_map(|(id, s)| s.out().exited_at.map(|at| (at, id.clone())))
                .collect();
            exited.sort();
            let excess = sessions.len() - keep;
            for (_, id) in exited.into_iter().take(excess) {
                sessions.remove(&id);
            }
        }
    }

    pub fn get(&self, id: &str) -> Result<Arc<Session>, ApiError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no PTY session {id:?}")))
    }

    pub fn list(&self) -> Vec<PtyInfo> {
        self.prune();
        let mut all: Vec<_> = self.lock().values().map(|s| s.info()).collect();
        all.sort_by_key(|s| s.created_at);
        all
    }

    /// Ends a session: SIGHUP, then SIGKILL if the program lingers.
    pub fn remove(&self, id: &str) -> Result<(), ApiError> {
        let session = self
            .lock()
            .remove(id)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no PTY session {id:?}")))?;
        session.hang_up();
        Ok(())
    }

    pub fn create(&self, req: CreatePty) -> Result<(Arc<Session>, String), ApiError> {
        let (rows, cols) = (req.rows, req.cols);
        let spec = check_create(req)?;
        self.prune();
        let mut sessions = self.lock();
        let live = sessions.values().filter(|s| s.out().exit.is_none()).count();
        if live >= self.max_sessions {
            return Err(ApiError::new(
                ErrorCode::TooManySessions,
                format!("{live} PTY sessions are open, the configured maximum"),
            ));
        }
        let (master, slave) = sys::open(rows, cols).map_err(|e| {
            ApiError::new(
                ErrorCode::Unavailable,
                format!("cannot open a pseudo-terminal: {e}"),
            )
        })?;
        let stdio = |fd: &OwnedFd| -> Result<Stdio, ApiError> {
            fd.try_clone().map(Stdio::from).map_err(|e| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    format!("cannot duplicate the terminal: {e}"),
                )
            })
        };
        let mut cmd = spec.command();
        cmd.stdin(stdio(&slave)?)
            .stdout(stdio(&slave)?)
            .stderr(stdio(&slave)?)
            .kill_on_drop(false);
        // SAFETY: the closure only makes async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(sys::make_controlling_terminal);
        }
        let child = cmd.spawn().map_err(|err| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("cannot start {:?}: {err}", spec.command),
            )
        })?;
        // Only the child may hold the slave, so its exit ends our reads.
        drop(cmd);
        drop(slave);
        let pid = child.id().unwrap_or(0);
        // SAFETY: an OwnedFd always returns the fd it owns, open until drop.
        let master = unsafe { AsyncFd::register(master) }.map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("cannot watch the terminal: {e}"),
            )
        })?;
        let id = hex::encode(rand::random::<[u8; 16]>());
        let token = hex::encode(rand::random::<[u8; 32]>());
        let session = Arc::new(Session {
            id: id.clone(),
            token: token.clone(),
            pid,
            command: spec.command.clone(),
            args: spec.args.clone(),
            created_at: now_ms(),
            size: Mutex::new((rows, cols)),
            master: Arc::new(master),
            out: Mutex::new(OutState::default()),
            pending_limit: self.pending_limit,
        });
        sessions.insert(id.clone(), session.clone());
        drop(sessions);
        tracing::info!(session = %id, pid, command = %spec.command, "PTY session started");
        tokio::spawn(pump(session.clone(), child));
        Ok((session, token))
    }
}

/// Reads the terminal until the program is gone, then reports its exit.
async fn pump(session: Arc<Session>, mut child: Child) {
    let mut buf = vec![0u8; READ_CHUNK];
    let master = session.master.clone();
    let mut status = None;
    loop {
        tokio::select! {
            read = sys::read(&master, &mut buf) => match read {
                Ok(0) => break,
                Ok(n) => session.deliver(Bytes::copy_from_slice(&buf[..n])).await,
                Err(err) => {
                    tracing::warn!(session = %session.id, error = %err, "reading the terminal failed");
                    break;
                }
            },
            waited = child.wait(), if status.is_none() => {
                status = Some(waited);
                // Something in the background may keep the terminal open:
                // read what is in flight, then stop.
                while let Ok(Ok(n)) = tokio::time::timeout(DRAIN_GRACE, sys::read(&master, &mut buf)).await {
                    if n == 0 {
                        break;
                    }
                    session.deliver(Bytes::copy_from_slice(&buf[..n])).await;
                }
                break;
            }
        }
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().await,
    };
    let code = match status {
        Ok(s) => s
            .code()
            .or_else(|| s.signal().map(|sig| 128 + sig))
            .unwrap_or(-1),
        Err(err) => {
            tracing::error!(session = %session.id, error = %err, "waiting for the PTY program failed");
            -1
        }
    };
    tracing::info!(session = %session.id, code, "PTY program exited");
    session.finish(code).await;
}
