//! A real `sbx-agent` process with its own key, token and sandbox id, and
//! `sbx tunnel` processes in front of it.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sbx_proto::auth::ForwardedAuthKey;

use crate::bins::bin;
use crate::netns::Netns;
use crate::process::{piped, ChildGuard};

/// How long a binary may take to say it is ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Credentials of one agent, written to files as an operator would.
pub struct Secrets {
    pub dir: tempfile::TempDir,
    pub sandbox_id: String,
    pub key: ForwardedAuthKey,
    pub token: String,
}

impl Secrets {
    pub fn new(sandbox_id: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // 0755 so that a test may run the agent as another user if it wants.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        let key_bytes: [u8; 32] = rand::random();
        let key = ForwardedAuthKey::from_bytes(key_bytes);
        let token = hex::encode(rand::random::<[u8; 16]>());
        write_secret(&dir.path().join("key"), &format!("{}\n", key.to_hex()));
        write_secret(&dir.path().join("token"), &format!("{token}\n"));
        Self {
            dir,
            sandbox_id: sandbox_id.to_owned(),
            key,
            token,
        }
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("key")
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// Hands the key and token files to another user (still mode 0600), so
    /// an agent running as that user can read them.
    pub fn chown(&self, uid: u32, gid: u32) {
        for file in [self.key_file(), self.token_file()] {
            std::os::unix::fs::chown(&file, Some(uid), Some(gid)).expect("chown secret");
        }
    }

    /// A forwarded-auth token valid for `ttl_secs` (negative: already expired).
    pub fn forwarded_token(&self, sandbox_id: &str, ttl_secs: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        self.key.mint(sandbox_id, (now + ttl_secs).max(0) as u64)
    }
}

fn write_secret(path: &Path, content: &str) {
    std::fs::write(path, content).expect("write secret");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod secret");
}

/// A running agent.
pub struct Agent {
    pub addr: SocketAddr,
    pub secrets: Secrets,
    pub process: ChildGuard,
}

impl Agent {
    /// Starts an agent on an ephemeral loopback port.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(None, "127.0.0.1:0", extra)
    }

    /// Starts an agent, inside `netns` when given.
    pub fn start_with(netns: Option<&Netns>, listen: &str, extra: &[&str]) -> Self {
        Self::launch(netns, &[], Secrets::new("sbx-test-1"), listen, extra)
    }

    /// Starts an agent as another user (`setpriv`, no supplementary
    /// groups), inside `netns`: what it may touch is what that user may.
    pub fn start_as(netns: &Netns, uid: u32, gid: u32, listen: &str, extra: &[&str]) -> Self {
        let secrets = Secrets::new("sbx-test-1");
        secrets.chown(uid, gid);
        let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={gid}"));
        let wrapper = ["setpriv", &reuid, &regid, "--clear-groups", "--"];
        Self::launch(Some(netns), &wrapper, secrets, listen, extra)
    }

    /// Runs `wrapper... sbx-agent` (inside `netns` when given) and waits
    /// for its address.
    fn launch(
        netns: Option<&Netns>,
        wrapper: &[&str],
        secrets: Secrets,
        listen: &str,
        extra: &[&str],
    ) -> Self {
        let agent = bin("sbx-agent");
        let agent = agent.to_str().expect("utf-8 path");
        let (program, rest): (&str, Vec<&str>) = match wrapper.split_first() {
            Some((first, rest)) => (first, rest.iter().copied().chain([agent]).collect()),
            None => (agent, Vec::new()),
        };
        let mut cmd = match netns {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        };
        cmd.args(rest)
            .args(["--listen", listen, "--sandbox-id", &secrets.sandbox_id])
            .arg("--forwarded-auth-key-file")
            .arg(secrets.key_file())
            .arg("--bearer-token-file")
            .arg(secrets.token_file())
            .args(extra)
            .env("RUST_LOG", "warn");
        let mut process = ChildGuard::spawn("sbx-agent", piped(&mut cmd));
        let line = process.wait_for_stdout_line("listening on", READY_TIMEOUT);
        let addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse agent address from {line:?}"));
        Self {
            addr,
            secrets,
            process,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/api/v1/tunnels/tcp{query}", self.addr)
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.secrets.token)
    }

    /// Resident set size of the agent in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.process.pid())
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// A running `sbx tunnel`.
pub struct SbxTunnel {
    pub local: SocketAddr,
    pub process: ChildGuard,
}

impl SbxTunnel {
    /// `sbx tunnel <agent> <remote_port> -l 0` with the agent's bearer token.
    pub fn start(agent: &Agent, remote_port: u16) -> Self {
        Self::start_with(None, &agent.url(), remote_port, &agent.secrets, false)
    }

    /// Starts `sbx tunnel`, inside `netns` when given; `forwarded` picks
    /// forwarded-auth tokens (as the proxy) over the bearer token.
    pub fn start_with(
        netns: Option<&Netns>,
        url: &str,
        remote_port: u16,
        secrets: &Secrets,
        forwarded: bool,
    ) -> Self {
        let sbx = bin("sbx");
        let sbx = sbx.to_str().expect("utf-8 path");
        let mut cmd = match netns {
            Some(ns) => ns.command(sbx),
            None => Command::new(sbx),
        };
        cmd.args(["tunnel", url, &remote_port.to_string(), "-l", "0"]);
        if forwarded {
            cmd.arg("--key-file")
                .arg(secrets.key_file())
                .args(["--sandbox-id", &secrets.sandbox_id]);
        } else {
            cmd.arg("--token-file").arg(secrets.token_file());
        }
        let mut process = ChildGuard::spawn("sbx tunnel", piped(&mut cmd));
        let line = process.wait_for_stdout_line("Forwarding", READY_TIMEOUT);
        let local = line
            .split_whitespace()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse local address from {line:?}"));
        Self { local, process }
    }
}
