//! The bench's own plumbing: network namespaces and cgroups it makes (and
//! removes on drop, also on error), HTTP/1.1 over a daemon's unix socket,
//! health polling from inside a namespace, and an interruption flag so a
//! Ctrl-C ends the run through the same drops as an error does.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// One health attempt may take this long (as sbx-host's).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Between health attempts of a floor. sbx-host waits 20 ms; a floor polls
/// finer so that its figure is as low as the guest allows.
pub const FLOOR_POLL: Duration = Duration::from_millis(5);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set a flag that the bench checks between
/// steps, so it unwinds through its drops (namespaces, cgroups, children).
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe);
        // the sigaction struct is zeroed and then filled in.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Fails once a stop signal arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

pub use sbx_bench_support::netns::{in_netns, link, namespaces_with_prefix, Netns, PrefixCleanup};

/// Polls `GET /api/v1/health` of the agent at `addr` from inside the
/// namespace at `netns` (sbx-host's own check, one fresh connection per
/// attempt) every [`FLOOR_POLL`] until it answers healthy. Returns the time
/// since `since`. Fails when `alive` turns false or after `timeout`.
pub fn wait_healthy(
    netns: &Path,
    addr: SocketAddr,
    since: Instant,
    timeout: Duration,
    alive: impl Fn() -> bool + Send + 'static,
) -> Result<Duration> {
    in_netns(netns, move || -> Result<Duration> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("health poller runtime")?;
        rt.block_on(async move {
            loop {
                let last = match tokio::time::timeout(ATTEMPT_TIMEOUT, sbx_host::agent::check(addr))
                    .await
                {
                    Ok(Ok(())) => return Ok(since.elapsed()),
                    Ok(Err(e)) => e,
                    Err(_) => "attempt timed out".into(),
                };
                if !alive() {
                    bail!("the guest exited before its agent at {addr} answered (last: {last})");
                }
                if INTERRUPTED.load(Ordering::SeqCst) {
                    bail!("interrupted while waiting for the agent at {addr}");
                }
                if since.elapsed() > timeout {
                    bail!("the agent at {addr} did not answer within {timeout:?} (last: {last})");
                }
                tokio::time::sleep(FLOOR_POLL).await;
            }
        })
    })?
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn running(pid: u32) -> bool {
    sbx_host::procs::ProcId::of(pid).is_some()
}

/// HTTP/1.1 over a daemon's unix socket, one request per connection.
#[derive(Debug, Clone)]
pub struct Api {
    pub name: &'static str,
    pub socket: PathBuf,
}

impl Api {
    /// Sends one request; returns the status and the body as JSON (a
    /// string value when it is not JSON, null when empty).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Value)> {
        let mut s = UnixStream::connect(&self.socket)
            .with_context(|| format!("connect to {} at {}", self.name, self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(600)))?;
        let body = body.unwrap_or("");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.name,
            body.len()
        )
        .with_context(|| format!("{} {method} {path}: send", self.name))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .with_context(|| format!("{} {method} {path}: read the answer", self.name))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("{} {method} {path}: no HTTP head", self.name))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("{} {method} {path}: no status", self.name))?;
        let value = if rest.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(rest).unwrap_or_else(|_| Value::String(rest.to_owned()))
        };
        Ok((status, value))
    }

    /// [`Api::call`] that fails unless the status is `want`.
    pub fn expect(&self, method: &str, path: &str, body: Option<&str>, want: u16) -> Result<Value> {
        let (status, v) = self.call(method, path, body)?;
        if status != want {
            let text = v.to_string();
            bail!(
                "{} {method} {path}: {status} (wanted {want}): {}",
                self.name,
                text.chars().take(400).collect::<String>()
            );
        }
        Ok(v)
    }
}

/// Where the cgroup2 file system is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid layout).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("read /proc/self/mounts")?;
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no cgroup2 file system is mounted"))
}

/// A cgroup v2 directory of the bench's own. On drop every process in it
/// and below is ended (thawed first: a frozen process cannot die) and the
/// directories are removed, deepest first.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn create(path: PathBuf) -> Result<Self> {
        fs::create_dir(&path).with_context(|| format!("create cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn child(&self, name: &str) -> Result<Self> {
        Self::create(self.path.join(name))
    }

    pub fn add(&self, pid: u32) -> Result<()> {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move {pid} into {}", self.path.display()))
    }

    /// The bare freezer: writes `cgroup.freeze` and spins on
    /// `cgroup.events` until the kernel says it is done. Returns how long
    /// that took.
    pub fn set_frozen(&self, frozen: bool) -> Result<Duration> {
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let started = Instant::now();
        fs::write(
            self.path.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )
        .with_context(|| format!("write {}/cgroup.freeze", self.path.display()))?;
        loop {
            let events = fs::read_to_string(self.path.join("cgroup.events"))?;
            if events.lines().any(|l| l == want) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("{}: not {want} after 10 s", self.path.display());
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
    }
}

/// Processes in the cgroup at `path` (not below it).
pub fn cgroup_pids(path: &Path) -> Vec<u32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.parse().ok()).collect())
        .unwrap_or_default()
}

fn remove_cgroup_tree(path: &Path) {
    if !path.is_dir() {
        return;
    }
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::write(path.join("cgroup.freeze"), "0");
    if fs::write(path.join("cgroup.kill"), "1").is_err() {
        // Kernels before 5.14: signal each process of this cgroup by PID.
        for pid in cgroup_pids(path) {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) on a PID that is in our own cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    // EBUSY while the killed processes are still exiting.
    while fs::remove_dir(path).is_err() && path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file whose pages are dropped from the page cache (it must be clean:
/// written back, as after an fsync) so the next read comes from the disk.
pub fn drop_page_cache(path: &Path) -> Result<()> {
    let f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: posix_fadvise on an fd we own; it only advises the kernel.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!(
            "posix_fadvise({}): {}",
            path.display(),
            std::io::Error::from_raw_os_error(rc)
        );
    }
    Ok(())
}

/// The fraction of `path`'s pages in the page cache (mincore), to check
/// that a drop took.
pub fn cached_fraction(path: &Path) -> Result<f64> {
    let f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok(0.0);
    }
    // SAFETY: a private read-only mapping of a file we hold open, unmapped
    // below; mincore writes one byte per page into a vector of that size.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            bail!(
                "mmap {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE))
            .unwrap_or(4096)
            .max(1);
        let pages = len.div_ceil(page);
        let mut vec = vec![0u8; pages];
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        libc::munmap(addr, len);
        if rc != 0 {
            bail!(
                "mincore {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(vec.iter().filter(|&&b| b & 1 == 1).count() as f64 / pages as f64)
    }
}

/// Proportional set size of `pid` in bytes (`Pss:` of smaps_rollup).
pub fn pss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .ok_or_else(|| anyhow!("{path}: no Pss line"))?;
    let kib: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{path}: bad Pss {line:?}"))?;
    Ok(kib * 1024)
}

/// The last `n` lines of a log file, ANSI colours removed.
pub fn tail(path: &Path, n: usize) -> String {
    let text = strip_ansi(&fs::read_to_string(path).unwrap_or_default());
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The file system `path` is on: its type and source, from the longest
/// mount point that contains it.
pub fn filesystem_of(path: &Path) -> String {
    let Ok(path) = path.canonicalize() else {
        return "?".into();
    };
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && path.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} on {}", f[2], f[0])))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2026  WARN x"
        );
    }

    #[test]
    fn own_pss_is_read() {
        assert!(pss_bytes(std::process::id()).unwrap() > 0);
    }
}
