//! One long-lived `nft -j -t -i` per sandbox namespace, for applies and
//! listings.
//!
//! Why not spawn `nft` per change: a process whose transaction deleted
//! anything (a flushed chain, a set copy) waits, when it closes its
//! netlink socket at exit, for the kernel to free what was deleted (the
//! nf_tables destroy work, an RCU grace period: 10–20 ms on our CI VM,
//! measured as `close()` taking 10.8 ms of a 16 ms `nft -f`). Every switch
//! deletes, so every apply paid it twice over. A session keeps its socket,
//! so no change waits for it; a session is closed off the apply path.
//!
//! Why a separate program and not libnftables in-process: libnftables is
//! GPL-2.0-only and netctl is Apache-2.0; a pipe keeps them apart, as
//! spawning `nft` did. Why not our own netlink encoding of rules: the
//! nftables crate's typed JSON is what every rule is built from and
//! tested against; only the answer-set elements, on the DNS answer's
//! path, are written over netlink ourselves (`elements`).
//!
//! The protocol over nft's interactive mode: a request is one line of JSON
//! (serde_json never writes a raw newline), then a marker line that is a
//! syntax error naming a number used once. nft runs lines in order and
//! writes output and errors to one pipe in order, quoting a refused line
//! under its complaint, so the answer to the request is everything before
//! the marker's complaint.

use std::collections::HashMap;
use std::io::{PipeReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{debug, warn};

/// How long one request may take. A 10,000-prefix stage takes about
/// 100 ms; this only bounds an nft that hangs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// nft's interactive mode keeps every line in its history, in memory: a
/// session is replaced after this much input.
const INPUT_BUDGET: usize = 16 << 20;
/// How long a closing session may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// The largest answer read: a terse listing of our table is tens of KiB.
const ANSWER_LIMIT: usize = 16 << 20;
/// Requests longer than this go to a one-shot `nft` instead: nft's
/// interactive mode reads its input a byte per read(2) (about 0.3 µs a
/// byte here), which past this outweighs a one-shot's start and exit.
pub const LINE_LIMIT: usize = 64 << 10;
/// The start of every marker line (the rest is the request's number).
const MARKER: &str = "sbx_netctl_end_";

/// A namespace by device and inode (see `netns::identity`).
pub type Identity = (u64, u64);

/// How a request through a session failed.
#[derive(Debug)]
pub enum SessionError {
    /// nft ran the request and refused it; the session goes on.
    Refused(String),
    /// The session broke (nft exited, timed out or answered nonsense) and
    /// was closed; the request's outcome is unknown.
    Broken(String),
}

/// A running `nft -i` inside one namespace.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    /// nft's stdout and stderr, one pipe so their order is kept.
    output: PipeReader,
    /// Bytes read past the last answer.
    pending: Vec<u8>,
    sequence: u64,
    sent: usize,
    last_used: Instant,
}

impl Session {
    /// Starts nft. Must run on a thread inside the namespace: nft's
    /// netlink socket, and so every change, belongs to the namespace nft
    /// starts in.
    pub fn start(program: &str) -> std::io::Result<Self> {
        let (output, writer) = std::io::pipe()?;
        let mut child = Command::new(program)
            .args(["-j", "-t", "-i"])
            // History is written to $HOME at exit and an editrc read from
            // there at start: neither may touch a real home.
            .env("HOME", "/dev/null")
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("nft started without a stdin pipe"))?;
        Ok(Self {
            child,
            stdin,
            output,
            pending: Vec::new(),
            sequence: 0,
            sent: 0,
            last_used: Instant::now(),
        })
    }

    /// Runs one JSON request; its output (a listing) on success.
    pub fn run(&mut self, json: &str) -> Result<String, SessionError> {
        if json.contains('\n') {
            return Err(SessionError::Refused(
                "request holds a newline; nft would read it as two commands".into(),
            ));
        }
        self.sequence += 1;
        self.last_used = Instant::now();
        let marker = format!("{MARKER}{}", self.sequence);
        let mut request = String::with_capacity(json.len() + marker.len() + 2);
        request.push_str(json);
        request.push('\n');
        request.push_str(&marker);
        request.push('\n');
        // nft answers only after reading the request's whole line, and
        // what is left to write then (the marker) fits the pipe, so this
        // write cannot wait on nft waiting on us to read.
        self.stdin
            .write_all(request.as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| SessionError::Broken(format!("write to nft: {e}")))?;
        self.sent += request.len();
        let answer = self.answer(&marker)?;
        let text = String::from_utf8_lossy(&answer);
        match text.lines().map(str::trim).find(|l| l.contains("Error:")) {
            Some(_) => Err(SessionError::Refused(refusal(&text))),
            None => Ok(text.into_owned()),
        }
    }

    /// Whether this session has taken enough input to be replaced.
    pub fn spent(&self) -> bool {
        self.sent >= INPUT_BUDGET
    }

    /// Reads until the marker's complaint and returns what came before it.
    fn answer(&mut self, marker: &str) -> Result<Vec<u8>, SessionError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            if let Some(answer) = take_answer(&mut self.pending, marker) {
                return Ok(answer);
            }
            if self.pending.len() > ANSWER_LIMIT {
                return Err(SessionError::Broken(format!(
                    "nft answered more than {ANSWER_LIMIT} bytes"
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SessionError::Broken(format!(
                    "nft did not answer within {}s",
                    REQUEST_TIMEOUT.as_secs()
                )));
            }
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.output.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(SessionError::Broken(format!("wait for nft: {e}"))),
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = std::io::Read::read(&mut self.output, &mut chunk)
                .map_err(|e| SessionError::Broken(format!("read from nft: {e}")))?;
            if n == 0 {
                let status = self.child.try_wait().ok().flatten();
                return Err(SessionError::Broken(format!(
                    "nft exited ({})",
                    status.map_or_else(|| "still running".to_owned(), |s| s.to_string())
                )));
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Ends nft: end of input makes it exit; it is killed if it does not
    /// within [`EXIT_GRACE`]. Its exit waits for the kernel's grace period
    /// (see the module docs), which is why this runs off the apply path.
    fn close(self) {
        let Session {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

/// Takes from `pending` the answer before `marker`'s complaint (its header
/// line and the quoted marker line), leaving what follows. The caret line
/// nft prints under a quoted line is dropped when it starts the next
/// answer, so a version that prints none is no different.
fn take_answer(pending: &mut Vec<u8>, marker: &str) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(pending).into_owned();
    let mut offset = 0;
    let mut header_start = 0;
    let mut quoted = None;
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break;
        }
        if line.trim_end() == marker {
            quoted = Some(offset + line.len());
            break;
        }
        header_start = offset;
        offset += line.len();
    }
    let end = quoted?;
    let answer: String = text[..header_start]
        .lines()
        .skip_while(|l| is_caret_line(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let rest = text.as_bytes()[end..].to_vec();
    *pending = rest;
    Some(answer.into_bytes())
}

fn is_caret_line(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && t.chars().all(|c| c == '^' || c == '~')
}

/// What a refused request's error says: the first line naming an error.
fn refusal(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| l.contains("Error:"))
        .unwrap_or("nft refused the request")
        .to_owned()
}

/// The sessions of all namespaces, keyed by namespace identity so two
/// paths to one namespace share one session. A session's nft is a member
/// of its namespace and so keeps it alive: sessions are closed when their
/// sandbox goes ([`Sessions::release`]), after [`Sessions::idle`] without
/// use, and the least recently used beyond [`Sessions::max`]. An nft that
/// served changes holds about 2 MB of its own (PSS, its cache and history).
pub struct Sessions {
    program: String,
    idle: Duration,
    /// The most namespaces with a session at once.
    max: usize,
    slots: Mutex<HashMap<Identity, Arc<Slot>>>,
    reaper: Mutex<bool>,
}

/// One namespace's session; its lock orders the requests into it.
pub struct Slot {
    /// The path the namespace was last reached by, to release it by path
    /// once the path is gone.
    path: Mutex<PathBuf>,
    pub session: Mutex<Option<Session>>,
}

impl Sessions {
    pub fn new(program: String, idle: Duration, max: usize) -> Arc<Self> {
        Arc::new(Self {
            program,
            idle,
            max: max.max(1),
            slots: Mutex::new(HashMap::new()),
            reaper: Mutex::new(false),
        })
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// The slot for a namespace (made if new).
    pub fn slot(self: &Arc<Self>, identity: Identity, path: &Path) -> Arc<Slot> {
        self.start_reaper();
        let mut slots = lock(&self.slots);
        let slot = slots
            .entry(identity)
            .or_insert_with(|| {
                Arc::new(Slot {
                    path: Mutex::new(path.to_path_buf()),
                    session: Mutex::new(None),
                })
            })
            .clone();
        *lock(&slot.path) = path.to_path_buf();
        if slots.len() > self.max {
            self.evict(&mut slots, identity);
        }
        slot
    }

    /// Keeps at most [`Self::max`] namespaces with a session: the least
    /// recently used ones not in use are closed, on a thread of their own
    /// (an exit waits for the kernel's grace period).
    fn evict(&self, slots: &mut HashMap<Identity, Arc<Slot>>, keep: Identity) {
        // Empty slots (`None`) sort first, then by last use.
        let mut idle: Vec<(Option<Instant>, Identity)> = Vec::new();
        for (identity, slot) in slots.iter() {
            if *identity == keep {
                continue;
            }
            // Never blocks: a session in use is simply not a candidate.
            if let Ok(guard) = slot.session.try_lock() {
                idle.push((guard.as_ref().map(|s| s.last_used), *identity));
            }
        }
        idle.sort();
        let excess = slots.len().saturating_sub(self.max);
        let mut closing = Vec::new();
        for (_, identity) in idle.into_iter().take(excess) {
            if let Some(slot) = slots.remove(&identity) {
                if let Ok(mut guard) = slot.session.try_lock() {
                    closing.extend(guard.take());
                }
            }
        }
        if !closing.is_empty() {
            debug!(count = closing.len(), "nft sessions over the limit closed");
            std::thread::spawn(move || closing.into_iter().for_each(Session::close));
        }
    }

    /// Closes the session of the namespace at `path` (or last reached by
    /// it), after any request in it. Its nft then exits on its own thread:
    /// the exit waits for the kernel's grace period (10–20 ms), which a
    /// DELETE need not; nothing else holds the namespace meanwhile.
    pub fn release(&self, path: &Path) {
        let identity = crate::netns::identity(path);
        let released: Vec<Arc<Slot>> = {
            let mut slots = lock(&self.slots);
            let keys: Vec<Identity> = slots
                .iter()
                .filter(|(id, slot)| Some(**id) == identity || *lock(&slot.path) == path)
                .map(|(id, _)| *id)
                .collect();
            keys.iter().filter_map(|k| slots.remove(k)).collect()
        };
        let closing: Vec<Session> = released
            .iter()
            .filter_map(|slot| lock(&slot.session).take())
            .collect();
        if !closing.is_empty() {
            debug!(netns = %path.display(), "nft session closed");
            std::thread::spawn(move || closing.into_iter().for_each(Session::close));
        }
    }

    /// Closes sessions unused for [`Self::idle`] (skipping any in use).
    fn reap(&self) {
        let idle: Vec<(Identity, Arc<Slot>)> = lock(&self.slots)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (identity, slot) in idle {
            let Ok(mut guard) = slot.session.try_lock() else {
                continue;
            };
            let expired = guard
                .as_ref()
                .is_none_or(|s| s.last_used.elapsed() >= self.idle);
            if !expired {
                continue;
            }
            let session = guard.take();
            drop(guard);
            {
                let mut slots = lock(&self.slots);
                if slots.get(&identity).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    slots.remove(&identity);
                }
            }
            if let Some(session) = session {
                session.close();
            }
        }
    }

    /// One thread per [`Sessions`] closes idle sessions; it ends with them.
    fn start_reaper(self: &Arc<Self>) {
        let mut started = lock(&self.reaper);
        if *started {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let period = (self.idle / 2).max(Duration::from_millis(100));
        let spawned = std::thread::Builder::new()
            .name("netctl-nft-reaper".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                match weak.upgrade() {
                    Some(sessions) => sessions.reap(),
                    None => return,
                }
            });
        match spawned {
            Ok(_) => *started = true,
            Err(e) => {
                warn!(error = %e, "could not start the nft session reaper; idle sessions stay open")
            }
        }
    }
}

/// Locks, taking over a lock whose holder panicked: every value behind
/// these locks is valid at every step.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `batches` in order through the session in `slot`, starting one if
/// there is none; a batch over [`LINE_LIMIT`] goes to `one_shot`. Must
/// run on a thread inside the slot's namespace (a session may have to
/// start). Stops at the first refused batch; a broken session is closed
/// and the next request starts a new one.
pub fn run_batches(
    sessions: &Sessions,
    slot: &Slot,
    batches: &[String],
    one_shot: impl Fn(&str) -> Result<String, SessionError>,
) -> Result<Vec<String>, SessionError> {
    let mut guard = lock(&slot.session);
    let mut answers = Vec::with_capacity(batches.len());
    for json in batches {
        if json.len() > LINE_LIMIT {
            answers.push(one_shot(json)?);
            continue;
        }
        if guard.is_none() {
            let session = Session::start(sessions.program())
                .map_err(|e| SessionError::Broken(format!("run {}: {e}", sessions.program())))?;
            *guard = Some(session);
        }
        let Some(session) = guard.as_mut() else {
            break;
        };
        match session.run(json) {
            Ok(answer) => answers.push(answer),
            Err(SessionError::Refused(m)) => return Err(SessionError::Refused(m)),
            Err(SessionError::Broken(m)) => {
                if let Some(session) = guard.take() {
                    session.close();
                }
                return Err(SessionError::Broken(m));
            }
        }
    }
    if guard.as_ref().is_some_and(Session::spent) {
        if let Some(session) = guard.take() {
            // Off this request's path: its exit waits for a grace period.
            std::thread::spawn(move || session.close());
        }
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_is_what_precedes_the_markers_complaint() {
        let mut pending = b"{\"nftables\": []}\nError: syntax error, unexpected newline, expecting string\nsbx_netctl_end_1\n".to_vec();
        let answer = take_answer(&mut pending, "sbx_netctl_end_1").unwrap();
        assert_eq!(answer, b"{\"nftables\": []}\n");
        assert!(pending.is_empty());
    }

    #[test]
    fn caret_of_the_previous_marker_is_dropped() {
        let mut pending = b"                ^\ninternal:0:0-0: Error: Could not process rule: No such file or directory\n\nError: syntax error\nsbx_netctl_end_2\n    ^\n".to_vec();
        let answer = take_answer(&mut pending, "sbx_netctl_end_2").unwrap();
        let text = String::from_utf8(answer).unwrap();
        assert!(text.starts_with("internal:0:0-0: Error: Could not process rule"));
        assert_eq!(
            refusal(&text),
            "internal:0:0-0: Error: Could not process rule: No such file or directory"
        );
        assert_eq!(pending, b"    ^\n");
    }

    #[test]
    fn incomplete_answer_waits_for_more() {
        let mut pending = b"Error: syntax error\nsbx_netctl_end_3".to_vec();
        assert!(take_answer(&mut pending, "sbx_netctl_end_3").is_none());
        // A marker with a longer number is not this one.
        let mut pending = b"Error: syntax error\nsbx_netctl_end_31\n".to_vec();
        assert!(take_answer(&mut pending, "sbx_netctl_end_3").is_none());
    }
}
