//! Network namespaces made by a test and removed when it ends, even on panic.
//!
//! Names are unique per process and call so tests can run in parallel. Only
//! `ip` from iproute2 is used here: the tests exercise our code, not this.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique name: `<prefix><pid % 100000><counter>`, at most 15 bytes
/// so it is also a valid interface name.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "name {name} too long for an interface");
    name
}

/// Runs a command and panics with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `ip <args>` and panics on failure.
pub fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

/// Whether this process may create namespaces. Under `CI=true` a test that
/// cannot must fail, never pass by skipping: call [`require_netns`].
pub fn can_create_netns() -> bool {
    let name = unique_name("probe");
    let ok = Command::new("ip")
        .args(["netns", "add", &name])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
    ok
}

/// Returns false (and says why) when the test should be skipped; panics
/// instead under `CI=true`.
pub fn require_netns() -> bool {
    if can_create_netns() {
        return true;
    }
    let in_ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    assert!(
        !in_ci,
        "CI=true but network namespaces cannot be created (need root)"
    );
    eprintln!("skipping: network namespaces need root (set CI=true to make this fatal)");
    false
}

/// A network namespace under /run/netns, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named from `prefix` with its loopback up.
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the path setns(2) takes.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A command that will run inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `ip <args>` inside the namespace and panics on failure.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs a shell snippet inside the namespace and panics on failure.
    pub fn sh(&self, script: &str) -> Output {
        run(self.command("sh").args(["-c", script]))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Connects two namespaces with a veth pair and gives each end an address
/// (with prefix length, e.g. `192.0.2.1/24` or `2001:db8::1/64`).
pub fn link(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) -> (String, String) {
    let a_if = unique_name("va");
    let b_if = unique_name("vb");
    ip(&[
        "link",
        "add",
        &a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &b_if,
        "netns",
        b.name(),
    ]);
    for (ns, ifname, addrs) in [(a, &a_if, a_addrs), (b, &b_if, b_addrs)] {
        for addr in addrs {
            // nodad: IPv6 addresses are usable at once instead of after DAD.
            if addr.contains(':') {
                ns.ip(&["addr", "add", addr, "dev", ifname, "nodad"]);
            } else {
                ns.ip(&["addr", "add", addr, "dev", ifname]);
            }
        }
        ns.ip(&["link", "set", ifname, "up"]);
    }
    (a_if, b_if)
}
