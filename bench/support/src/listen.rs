//! Loopback ports for tools that cannot report the ephemeral port they
//! bound (nginx, websocat): a port picked beforehand, then waited on.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// Waits until something listens on `127.0.0.1:port`, per `/proc/net/tcp`.
///
/// A probing connect would itself count as a connection of the bench, and
/// through a tool that tunnels every accepted connection it would open a
/// tunnel; the kernel's table is read instead.
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

/// A port that was free a moment ago. The race with other processes is
/// accepted.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind a probe port")?;
    Ok(listener.local_addr().context("probe port address")?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        wait_listening(port, Duration::from_secs(1)).unwrap();
        drop(listener);
        assert!(wait_listening(port, Duration::from_millis(50)).is_err());
    }
}
