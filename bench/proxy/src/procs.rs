//! Child processes the bench starts, and what it reads about them from
//! `/proc`.
//!
//! Every child is owned by a [`Spawned`] guard that ends it by its own PID
//! when dropped, so an error or panic anywhere in the bench never leaves an
//! agent, proxy or nginx behind. Children also get `PR_SET_PDEATHSIG`, which covers
//! the bench itself being killed.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A running child; terminated (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Spawned {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Spawned {
    /// Starts `program` with stdout piped (for its readiness line) and stderr
    /// appended to `log`.
    ///
    /// Must be called from the main thread: the parent-death signal fires
    /// when the *thread* that forked exits, and the main thread lives as
    /// long as the bench.
    pub fn start<I, S>(name: &str, program: &Path, args: I, log: &Path) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start_with_env(name, program, args, &[], log)
    }

    /// [`Spawned::start`] with extra environment variables.
    pub fn start_with_env<I, S>(
        name: &str,
        program: &Path,
        args: I,
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open log {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours,
        // which is all that may run between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: stdout not captured"))?;
        let (tx, lines) = mpsc::channel();
        // Drains stdout for the child's whole life so it never blocks on a
        // full pipe; lines nobody waits for are dropped.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.to_owned());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} printed no `{prefix}` line within {timeout:?}",
                        self.name
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!(
                        "{} closed stdout before printing `{prefix}` (exit status {status:?})",
                        self.name
                    )
                }
            }
        }
    }

    /// Fails if the child has already exited: a figure measured against a
    /// dead process would be meaningless.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited unexpectedly: {status}", self.name),
            Err(err) => bail!("{}: cannot check status: {err}", self.name),
        }
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the PID of a child we have not reaped yet,
            // so the PID cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resident set size of `pid`, in bytes (`VmRSS` in `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or_else(|| anyhow!("{path}: no VmRSS line"))?;
    let kib: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{path}: bad VmRSS {line:?}"))?;
    Ok(kib * 1024)
}

/// User plus system CPU time `pid` has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name may hold spaces and parentheses; fields resume after
    // the last ')'. utime and stime are fields 14 and 15 of the whole line.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: malformed"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("{path}: missing field {}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

/// Waits until something listens on `127.0.0.1:port`, per `/proc/net/tcp`
/// (nginx cannot report the ports it bound, and a probing connect would
/// count as a connection of the bench).
pub fn wait_listening(port: u16, timeout: Duration) -> Result<()> {
    let wanted = format!("0100007F:{port:04X}");
    let deadline = Instant::now() + timeout;
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").context("read /proc/net/tcp")?;
        let listening = table.lines().skip(1).any(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1);
            let state = fields.nth(1);
            local == Some(wanted.as_str()) && state == Some("0A")
        });
        if listening {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listened on 127.0.0.1:{port} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago, for tools that cannot report the
/// ephemeral port they bound. The race with other processes is accepted.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind a probe port")?;
    Ok(listener.local_addr().context("probe port address")?.port())
}

/// Raises the open-file limit: to [`WANTED_NOFILE`] when allowed (root may
/// raise the hard limit), else the soft limit to the hard one. 10,000 idle
/// client connections need 10,000 descriptors here and as many in the proxy
/// (and nginx), which inherit the limit.
pub fn raise_nofile_limit() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(NOFILE)");
        }
        if lim.rlim_max < WANTED_NOFILE {
            let wanted = libc::rlimit {
                rlim_cur: WANTED_NOFILE,
                rlim_max: WANTED_NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return Ok(WANTED_NOFILE);
            }
        }
        // An unlimited hard limit still cannot exceed fs.nr_open.
        lim.rlim_cur = lim.rlim_max.min(1 << 20);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(NOFILE)");
        }
    }
    Ok(lim.rlim_cur)
}

/// Open-file limit asked for: 10,000 idle connections on both ends of each
/// proxy plus everything else, with room to spare.
const WANTED_NOFILE: u64 = 65_536;

/// `pid` and its direct children (nginx's master and its workers), from
/// `/proc/PID/task/*/children`.
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return pids;
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Summed VmRSS of `pids` (shared pages count once per process).
pub fn rss_sum(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&p| rss_bytes(p)).sum()
}

/// Summed user+system CPU of `pids`.
pub fn cpu_sum(pids: &[u32]) -> Result<Duration> {
    pids.iter().map(|&p| cpu_time(p)).sum()
}
