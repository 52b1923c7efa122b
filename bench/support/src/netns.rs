//! The benches' own network namespaces: made with `ip`, linked by veth
//! pairs, entered from a thread of their own, and deleted on drop (also on
//! error), so a failed run leaves nothing behind.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{anyhow, bail, Context as _, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this run: `<prefix><pid>x<n>`.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace under /run/netns, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique(prefix);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `/run/netns/<name>`, the path setns(2) takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

fn delete(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Connects two namespaces with a veth pair; returns the names of its ends.
pub fn link(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> Result<(String, String)> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (a_if, b_if) = (format!("bva{n}"), format!("bvb{n}"));
    run(Command::new("ip").args([
        "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns",
        &b.name,
    ]))?;
    for (ns, ifname, addr) in [(a, &a_if, a_addr), (b, &b_if, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", ifname])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok((a_if, b_if))
}

/// Runs `f` on a fresh thread that entered the network namespace at `path`.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let path = path.to_owned();
    std::thread::spawn(move || -> Result<T> {
        let file =
            std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        // SAFETY: setns on an fd we own; it changes only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}

/// Namespaces under /run/netns whose names start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes every namespace whose name carries the prefix when dropped:
/// whatever a daemon under test made and did not delete itself.
pub struct PrefixCleanup(pub String);

impl Drop for PrefixCleanup {
    fn drop(&mut self) {
        for name in namespaces_with_prefix(&self.0) {
            delete(&name);
        }
    }
}
