//! Processes started through the API: spawning, output capture, reaping,
//! signals and the table that remembers them.
//!
//! Every process gets its own process group, so a signal or a kill reaches
//! whatever it started too. A supervisor task per process waits for it (so
//! no zombie is ever left), records how it ended, and releases its slot in
//! the running-process limit. Where the agent can make cgroups, each
//! process also gets one, so that a kill by the OOM killer is recognised
//! (`cgroup`).

pub mod cgroup;
mod child;
pub mod output;
pub mod spec;
pub mod stdin;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sbx_proto::api::{
    ExitReason, OutputMode, ProcessInfo, ProcessStatus, RunExit, StdinMode, StreamName,
};
use sbx_proto::ErrorCode;
use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, ChildStdin};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::error::ApiError;
use cgroup::{Cgroups, ProcessCgroup};
use output::{Filter, Line, LineSplitter, OutputBuffer};
use spec::CommandSpec;

/// After a process exits, how long its pipes may stay open (held by
/// something it started in the background) before capture stops.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// Bytes read from a pipe at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How a process ended.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed the process or something it started.
    pub oom_killed: bool,
    pub ended_at: u64,
    ended: Instant,
}

#[derive(Debug)]
struct Inner {
    output: OutputBuffer,
    exit: Option<Exit>,
    /// Exited and all captured output read: followers may say `eof`.
    done: bool,
    /// Killed because a `run` timeout expired.
    timed_out: bool,
}

/// One process started through the API.
#[derive(Debug)]
pub struct Process {
    pub pid: u32,
    pub command: String,
    pub args: Vec<String>,
    pub started_at: u64,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    inner: Mutex<Inner>,
    /// Bumped whenever output arrives or the process ends.
    changed: watch::Sender<u64>,
}

impl Process {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` inconsistent
        // in a way that matters more than losing the process's state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn info(&self) -> ProcessInfo {
        let inner = self.lock();
        let stdin_writable =
            inner.exit.is_none() && self.stdin.try_lock().map(|s| s.is_some()).unwrap_or(true);
        // The exit is shown only once the output is captured (or the drain
        // gave up): a client that waits for the exit and then reads stdout
        // must get all of it. Between the reap and the end of the drain the
        // process still shows as running, for at most DRAIN_GRACE.
        let shown_exit = inner.exit.filter(|_| inner.done);
        let oom_killed = shown_exit.is_some_and(|e| e.oom_killed);
        let (status, exit_code, signal, ended_at) = match shown_exit {
            None => (ProcessStatus::Running, None, None, None),
            Some(e) if e.signal.is_some() => {
                (ProcessStatus::Signaled, None, e.signal, Some(e.ended_at))
            }
            Some(e) => (ProcessStatus::Exited, e.code, None, Some(e.ended_at)),
        };
        ProcessInfo {
            pid: self.pid,
            status,
            exit_code,
            signal,
            oom_killed,
            stdin_writable,
            command: self.command.clone(),
            args: self.args.clone(),
            started_at: self.started_at,
            ended_at,
        }
    }

    pub fn is_running(&self) -> bool {
        self.lock().exit.is_none()
    }

    pub fn output(&self, filter: Filter) -> Vec<String> {
        self.lock().output.snapshot(filter)
    }

    /// Lines from `from` on, the position to continue from, and whether the
    /// stream is complete (the process ended and everything was read).
    pub fn poll_output(
        &self,
        from: u64,
        filter: Filter,
        max: usize,
    ) -> (Vec<sbx_proto::api::OutputEvent>, u64, bool) {
        let inner = self.lock();
        let (lines, next) = inner.output.since(from, filter, max);
        let complete = inner.done && next >= inner.output.next_seq();
        (lines, next, complete)
    }

    /// The final frame of a `run`, once the process is done.
    pub fn run_exit(&self) -> Option<RunExit> {
        let inner = self.lock();
        if !inner.done {
            return None;
        }
        let exit = inner.exit?;
        let reason = if inner.timed_out {
            ExitReason::TimedOut
        } else if exit.oom_killed {
            ExitReason::OomKilled
        } else if exit.signal.is_some() {
            ExitReason::Signaled
        } else {
            ExitReason::Exited
        };
        Some(RunExit {
            exit_code: exit.code,
            signal: exit.signal,
            oom_killed: exit.oom_killed,
            reason,
        })
    }

    /// Sends `signal` to the process's group.
    pub fn signal(&self, signal: Signal) -> Result<(), ApiError> {
        if !self.is_running() {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("process {} has already exited", self.pid),
            ));
        }
        self.signal_group(signal);
        Ok(())
    }

    fn signal_group(&self, signal: Signal) {
        let Ok(pid) = i32::try_from(self.pid) else {
            return;
        };
        match killpg(Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(err) => tracing::warn!(pid = self.pid, %signal, error = %err, "killpg failed"),
        }
    }

    /// Kills the process (and its group) because a `run` timeout expired.
    pub fn kill_for_timeout(&self) {
        let mut inner = self.lock();
        if inner.exit.is_none() {
            inner.timed_out = true;
            drop(inner);
            tracing::info!(pid = self.pid, "run timeout expired; killing");
            self.signal_group(Signal::SIGKILL);
        }
    }

    fn push_lines(&self, stream: StreamName, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        let timestamp = now_ms();
        let dropped: u64 = {
            let mut inner = self.lock();
            lines
                .into_iter()
                .map(|text| {
                    inner.output.push(Line {
                        text,
                        timestamp,
                        stream,
                    })
                })
                .sum()
        };
        if dropped > 0 {
            tracing::debug!(
                pid = self.pid,
                dropped,
                "output buffer full; oldest lines dropped"
            );
        }
        self.bump();
    }
}

/// The processes the agent knows about.
pub struct ProcessTable {
    limits: Limits,
    /// Where per-process cgroups are made; None where the agent cannot.
    cgroups: Option<Arc<Cgroups>>,
    processes: Mutex<HashMap<u32, Arc<Process>>>,
    running: Arc<Semaphore>,
    started_total: AtomicU64,
}

impl ProcessTable {
    pub fn new(limits: Limits, cgroups: Option<Cgroups>) -> Self {
        Self {
            running: Arc::new(Semaphore::new(limits.max_processes)),
            limits,
            cgroups: cgroups.map(Arc::new),
            processes: Mutex::new(HashMap::new()),
            started_total: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Arc<Process>>> {
        self.processes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn running_count(&self) -> u64 {
        (self.limits.max_processes - self.running.available_permits()) as u64
    }

    pub fn started_total(&self) -> u64 {
        self.started_total.load(Ordering::Relaxed)
    }

    pub fn get(&self, pid: u32) -> Result<Arc<Process>, ApiError> {
        self.lock()
            .get(&pid)
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no process {pid}")))
    }

    /// Every known process, by pid.
    pub fn list(&self) -> Vec<Arc<Process>> {
        self.prune();
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|p| p.pid);
        all
    }

    /// `DELETE /processes/{pid}`: kills a running process (it stays listed
    /// until it is reaped and ages out); forgets a finished one.
    pub fn kill(&self, pid: u32) -> Result<(), ApiError> {
        let process = self.get(pid)?;
        // Decided before the kill: a killed process may be reaped at once.
        let was_running = process.is_running();
        // Whatever it left behind in its group goes too.
        process.signal_group(Signal::SIGKILL);
        if !was_running {
            self.lock().remove(&pid);
        }
        Ok(())
    }

    /// Forgets finished processes beyond the retention time or count.
    fn prune(&self) {
        let mut table = self.lock();
        let retention = self.limits.finished_retention;
        let mut finished: Vec<(Instant, u32)> = Vec::new();
        table.retain(|pid, p| match p.lock().exit {
            Some(exit) if exit.ended.elapsed() > retention => false,
            Some(exit) => {
                finished.push((exit.ended, *pid));
                true
            }
            None => true,
        });
        if finished.len() > self.limits.max_finished_processes {
            finished.sort();
            let excess = finished.len() - self.limits.max_finished_processes;
            for (_, pid) in finished.into_iter().take(excess) {
                table.remove(&pid);
            }
        }
    }

    /// Starts a process. 429 `TOO_MANY_PROCESSES` at the limit; 503 when the
    /// system cannot fork.
    pub fn spawn(
        &self,
        spec: &CommandSpec,
        stdin_mode: StdinMode,
        stdout_mode: OutputMode,
        stderr_mode: OutputMode,
    ) -> Result<Arc<Process>, ApiError> {
        let permit = self.running.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                ErrorCode::TooManyProcesses,
                format!(
                    "{} processes are running, the configured maximum",
                    self.limits.max_processes
                ),
            )
        })?;
        let stdio = |capture: bool| {
            if capture {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        let mut cgroup = self.process_cgroup();
        let mut cmd = match cgroup.as_ref().and_then(ProcessCgroup::join_fd) {
            Some(fd) => spec.command_joining(fd)?,
            None => spec.command(),
        };
        cmd.stdin(stdio(stdin_mode == StdinMode::Pipe))
            .stdout(stdio(stdout_mode == OutputMode::Capture))
            .stderr(stdio(stderr_mode == OutputMode::Capture))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|err| spawn_error(&spec.command, &err))?;
        // The child is in its cgroup: it exec'd.
        if let Some(cgroup) = cgroup.as_mut() {
            cgroup.joined();
        }
        let Some(pid) = child.id() else {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "process exited before its pid was known",
            ));
        };
        let (changed, _) = watch::channel(0);
        let process = Arc::new(Process {
            pid,
            command: spec.command.clone(),
            args: spec.args.clone(),
            started_at: now_ms(),
            stdin: tokio::sync::Mutex::new(child.stdin.take()),
            inner: Mutex::new(Inner {
                output: OutputBuffer::new(
                    self.limits.output_max_lines,
                    self.limits.output_max_bytes,
                ),
                exit: None,
                done: false,
                timed_out: false,
            }),
            changed,
        });
        self.started_total.fetch_add(1, Ordering::Relaxed);
        self.prune();
        // A reaped pid may have been reused by the kernel: the old entry is
        // finished, so the new process replaces it.
        self.lock().insert(pid, process.clone());
        tracing::info!(pid, command = %spec.command, "process started");
        let cgroup = cgroup.zip(self.cgroups.clone());
        tokio::spawn(supervise(process.clone(), child, permit, cgroup));
        Ok(process)
    }

    /// A fresh cgroup for a process, or None (the process then runs in the
    /// agent's cgroup and an OOM kill is not recognised; said in the log).
    fn process_cgroup(&self) -> Option<ProcessCgroup> {
        let cgroups = self.cgroups.as_ref()?;
        match cgroups.create() {
            Ok(cgroup) => Some(cgroup),
            Err(err) => {
                tracing::warn!(error = %err, "process started without a cgroup: an OOM kill will not be recognised");
                None
            }
        }
    }
}

fn spawn_error(command: &str, err: &std::io::Error) -> ApiError {
    let code = match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::ENOMEM) | Some(libc::EMFILE) | Some(libc::ENFILE) => {
            ErrorCode::Unavailable
        }
        _ => ErrorCode::BadRequest,
    };
    ApiError::new(code, format!("cannot start {command:?}: {err}"))
}

/// Captures output, reaps the process, records its exit, and frees its slot.
async fn supervise(
    process: Arc<Process>,
    mut child: Child,
    permit: OwnedSemaphorePermit,
    cgroup: Option<(ProcessCgroup, Arc<Cgroups>)>,
) {
    let mut readers = tokio::task::JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(capture(process.clone(), out, StreamName::Stdout));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(capture(process.clone(), err, StreamName::Stderr));
    }
    let status = child.wait().await;
    let ended = Instant::now();
    // The kernel counts an OOM kill before it sends the SIGKILL, so the
    // count is final once the process is reaped.
    let oom_killed = match &cgroup {
        Some((cgroup, _)) => match cgroup.oom_kills() {
            Ok(n) => n > 0,
            Err(err) => {
                tracing::warn!(pid = process.pid, error = %err, "cannot read the OOM kill count");
                false
            }
        },
        None => false,
    };
    if let Some((cgroup, owner)) = cgroup {
        owner.release(cgroup);
    }
    let exit = match status {
        Ok(status) => Exit {
            code: status.code(),
            signal: status.signal(),
            oom_killed,
            ended_at: now_ms(),
            ended,
        },
        Err(err) => {
            tracing::error!(pid = process.pid, error = %err, "waiting for process failed");
            Exit {
                code: None,
                signal: None,
                oom_killed,
                ended_at: now_ms(),
                ended,
            }
        }
    };
    {
        let mut inner = process.lock();
        inner.exit = Some(exit);
    }
    // The stdin pipe is of no use any more.
    if let Ok(mut stdin) = process.stdin.try_lock() {
        *stdin = None;
    }
    drop(permit);
    tracing::info!(pid = process.pid, code = ?exit.code, signal = ?exit.signal, oom_killed, "process exited");
    process.bump();

    // Read what is left in the pipes; something started in the background
    // may hold them open forever, so only for a while.
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            pid = process.pid,
            "output pipes still open after exit; capture stopped"
        );
        readers.abort_all();
    }
    process.lock().done = true;
    let dropped = process.lock().output.dropped();
    if dropped > 0 {
        tracing::info!(
            pid = process.pid,
            dropped,
            "output lines dropped (buffer bound)"
        );
    }
    process.bump();
}

async fn capture(
    process: Arc<Process>,
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    stream: StreamName,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut splitter = LineSplitter::default();
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let mut lines = Vec::new();
                splitter.feed(&buf[..n], &mut |l| lines.push(l));
                process.push_lines(stream, lines);
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(pid = process.pid, ?stream, error = %err, "reading output failed");
                break;
            }
        }
    }
    let mut lines = Vec::new();
    splitter.finish(&mut |l| lines.push(l));
    process.push_lines(stream, lines);
}
