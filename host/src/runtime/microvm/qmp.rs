//! A QMP client: one command at a time over the VMM's unix socket, with
//! fd passing (`getfd` needs SCM_RIGHTS on the same socket).
//!
//! Written by hand (about 150 lines) rather than with the `qapi` crate:
//! that crate generates the whole QAPI schema for one QEMU version, while
//! sbx-host needs six commands, must pass an fd on the very socket the
//! command goes over, and must bound every read (a wedged VMM must not
//! hang a suspend). It is blocking on purpose and runs on a blocking
//! thread: a conversation is a handful of lines.

use std::io::{self, BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::{json, Value};

/// One line from QEMU is at most this long (its replies to our commands
/// are small; an event carries little).
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP {path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP: {0}")]
    Protocol(String),
}

/// A QMP failure is a failure of the VMM, for the runtime's callers.
impl From<QmpError> for crate::runtime::RuntimeError {
    fn from(e: QmpError) -> Self {
        Self::Vmm(e.to_string())
    }
}

pub struct Qmp {
    path: String,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let p = path.display().to_string();
        let io = |what: &'static str| {
            let p = p.clone();
            move |source| QmpError::Io {
                path: p,
                what,
                source,
            }
        };
        let stream = UnixStream::connect(path).map_err(io("connect"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(io("set timeout"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(io("set timeout"))?;
        let reader = BufReader::new(stream.try_clone().map_err(io("clone"))?);
        let mut qmp = Self {
            path: p,
            writer: stream,
            reader,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("no greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// [`Qmp::connect`], retried for up to `patience` while the socket is
    /// not there yet or not listening yet: a VMM just started binds its
    /// socket a moment before it listens on it.
    pub fn connect_when_ready(
        path: &Path,
        timeout: Duration,
        patience: Duration,
    ) -> Result<Self, QmpError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match Self::connect(path, timeout) {
                Err(QmpError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => return other,
            }
        }
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let line = request(command, args)?;
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| self.io_err("write", source))?;
        self.reply(command)
    }

    /// Runs `getfd` with `fd` attached, naming it `name` inside QEMU.
    pub fn send_fd(&mut self, name: &str, fd: RawFd) -> Result<(), QmpError> {
        let line = request("getfd", Some(json!({ "fdname": name })))?;
        let fds = [fd];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let iov = [IoSlice::new(line.as_bytes())];
        let sent = sendmsg::<()>(
            self.writer.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| self.io_err("sendmsg", e.into()))?;
        if sent != line.len() {
            return Err(QmpError::Protocol("getfd: short write".into()));
        }
        self.reply("getfd").map(|_| ())
    }

    fn reply(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let msg = self.read_message()?;
            if msg.get("event").is_some() {
                continue;
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: s("class"),
                    desc: s("desc"),
                });
            }
            return Err(QmpError::Protocol(format!("unexpected message: {msg}")));
        }
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .map_err(|source| self.io_err("read", source))?;
        if n == 0 {
            return Err(QmpError::Protocol("the VMM closed the connection".into()));
        }
        if !line.ends_with(b"\n") {
            return Err(QmpError::Protocol("line too long".into()));
        }
        serde_json::from_slice(&line).map_err(|e| QmpError::Protocol(format!("bad JSON: {e}")))
    }

    fn io_err(&self, what: &'static str, source: io::Error) -> QmpError {
        QmpError::Io {
            path: self.path.clone(),
            what,
            source,
        }
    }
}

use std::io::Read as _;

fn request(command: &str, args: Option<Value>) -> Result<String, QmpError> {
    let mut req = json!({ "execute": command });
    if let Some(a) = args {
        req["arguments"] = a;
    }
    let mut line = serde_json::to_string(&req).map_err(|e| QmpError::Protocol(e.to_string()))?;
    line.push('\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greeting, then answers with an event first.
    #[test]
    fn events_are_skipped_and_errors_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            w.write_all(b"{\"QMP\": {\"version\": {}}}\n").unwrap();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            w.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            w.write_all(b"{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"paused\"}}\n")
                .unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            w.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n")
                .unwrap();
        });
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let st = q.execute("query-status", None).unwrap();
        assert_eq!(st["status"], "paused");
        let e = q.execute("cont", None).unwrap_err();
        assert_eq!(e.to_string(), "QMP cont: GenericError: nope");
        server.join().unwrap();
    }
}
