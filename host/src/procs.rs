//! Processes sbx-host starts and must find again after a restart: a pid
//! alone can be reused, so a process is known by its pid and its start
//! time (`/proc/<pid>/stat` field 22), and it is started inside the
//! sandbox's network namespace and cgroup before it runs any code of its
//! own.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

/// A process by pid and start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: u32,
    pub start_ticks: u64,
}

impl ProcId {
    /// The identity of a live process, or `None` if there is no such pid.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, start_ticks) = parse_stat(&stat)?;
        (state != 'Z' && state != 'X').then_some(Self { pid, start_ticks })
    }

    /// Whether this very process still runs (not a zombie, not a new
    /// process that got the same pid).
    pub fn alive(&self) -> bool {
        Self::of(self.pid).is_some_and(|now| now == *self)
    }

    /// Sends `signal` if this is still the same process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> bool {
        if !self.alive() {
            return false;
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), signal).is_ok()
    }

    /// Resolves when the process has exited. Works for processes that are
    /// not our children (adopted after a restart) through a pidfd; the
    /// start time is checked after the pidfd is open, so a reused pid is
    /// seen as "already exited".
    pub async fn exited(&self) {
        let Some(fd) = pidfd_open(self.pid) else {
            return;
        };
        if !self.alive() {
            return;
        }
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, so it stays
        // open and names the same pidfd for the AsyncFd's whole life.
        match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
            Ok(afd) => {
                let _ = afd.readable().await;
            }
            Err(_) => {
                while self.alive() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.exited()).await.is_ok()
    }
}

/// The state letter and start time out of `/proc/<pid>/stat`. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// from the last `)`.
pub fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state; field 22 is the start time: 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this fd and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Where a child starts: a network namespace and a cgroup, entered in the
/// child between fork and exec, so not one instruction of the program runs
/// outside them.
pub struct Placement {
    netns: File,
    cgroup_procs: File,
}

impl Placement {
    pub fn new(netns_path: &Path, cgroup: &Path) -> io::Result<Self> {
        let netns = File::open(netns_path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", netns_path.display())))?;
        let procs = cgroup.join("cgroup.procs");
        let cgroup_procs = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", procs.display())))?;
        Ok(Self {
            netns,
            cgroup_procs,
        })
    }

    /// Arranges for `cmd`'s child to join the cgroup, enter the namespace
    /// and start a session of its own (so a signal to sbx-host's process
    /// group, a Ctrl-C in a terminal, never reaches a guest).
    pub fn apply(&self, cmd: &mut std::process::Command) {
        let netns = self.netns.as_raw_fd();
        let procs = self.cgroup_procs.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls on fds opened before the
        // fork, formatting the pid into a stack buffer (no allocation).
        unsafe {
            cmd.pre_exec(move || {
                let mut buf = [0u8; 16];
                let len = format_pid(libc::getpid() as u32, &mut buf);
                if libc::write(procs, buf.as_ptr().cast(), len) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setns(netns, libc::CLONE_NEWNET) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Starts `cmd` and lets it run on its own: the tokio runtime reaps it
/// when it exits (its orphan queue), so no thread or task waits per
/// child, and a child outlives sbx-host (it is never killed on drop).
pub fn spawn_detached(cmd: std::process::Command) -> io::Result<u32> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    let child = cmd.spawn()?;
    child
        .id()
        .ok_or_else(|| io::Error::other("the child exited before its pid was read"))
}

/// Decimal digits of `pid` into `buf`; returns the length.
fn format_pid(mut pid: u32, buf: &mut [u8; 16]) -> usize {
    let mut tmp = [0u8; 10];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (pid % 10) as u8;
        n += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    for i in 0..n {
        buf[i] = tmp[n - 1 - i];
    }
    n
}

/// A C string for an argument; an interior NUL is an error, never a cut.
pub fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_the_name() {
        let stat =
            "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 3 0 987654 1 2";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("1 (init"), None);
    }

    #[test]
    fn pids_format() {
        let mut b = [0u8; 16];
        let n = format_pid(0, &mut b);
        assert_eq!(&b[..n], b"0");
        let n = format_pid(4_194_304, &mut b);
        assert_eq!(&b[..n], b"4194304");
    }

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcId::of(std::process::id()).unwrap();
        assert!(me.alive());
        let other = ProcId {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!other.alive());
    }
}
