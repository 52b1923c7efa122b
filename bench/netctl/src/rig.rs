//! The bench's own namespaces, daemon and HTTP client; everything is torn
//! down on drop (namespaces deleted, the daemon killed by PID).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use sbx_bench_support::netns::{in_netns, link, run, Netns};

/// The netctl daemon, killed by PID on drop.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts it and returns once it listens (reconcile included), with the
    /// time that took.
    pub fn start(netctl: &Path, dir: &Path) -> Result<(Self, Duration)> {
        // No names are used: the upstream only keeps resolv.conf out of it.
        Self::start_with(
            netctl,
            dir,
            "reconcile_concurrency = 8\n[dns]\nupstreams = [\"192.0.2.53\"]\n",
            None,
        )
    }

    /// Starts it with this config, inside `host` when given (`nsenter
    /// --net`, so the namespaces it bind-mounts are visible here too).
    pub fn start_with(
        netctl: &Path,
        dir: &Path,
        config_text: &str,
        host: Option<&Netns>,
    ) -> Result<(Self, Duration)> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("netctl.sock");
        let config = dir.join("config.toml");
        std::fs::write(&config, config_text)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("netctl.log"))?;
        let started = Instant::now();
        let mut cmd = match host {
            // nsenter execs netctl in place: the PID we kill is netctl's.
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", ns.path().display()))
                    .arg(netctl);
                cmd
            }
            None => Command::new(netctl),
        };
        let mut child = cmd
            .arg("--socket")
            .arg(&socket)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", netctl.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut daemon = Self { child, socket };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if !line.contains("listening") {
            let _ = daemon.child.kill();
            bail!("netctl did not start (see {}/netctl.log)", dir.display());
        }
        Ok((daemon, started.elapsed()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One HTTP/1.1 request; returns status and body.
    pub fn call(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let mut s = UnixStream::connect(&self.socket)?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: netctl\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, rest) = raw.split_once("\r\n\r\n").context("HTTP head")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("status")?;
        Ok((status, rest.to_owned()))
    }

    pub fn put(&self, id: &str, netns: &str, network: &str) -> Result<()> {
        let body = format!(r#"{{"netns":"{netns}","network":{network}}}"#);
        let (status, answer) = self.call("PUT", &format!("/v1/sandboxes/{id}"), &body)?;
        if status != 200 {
            bail!(
                "PUT {id}: {status} {}",
                answer.chars().take(300).collect::<String>()
            );
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
