//! Readiness and shutdown notices to the service manager (sd_notify(3)).
//!
//! With `Type=notify`, systemd considers a daemon started only once it says
//! `READY=1`, so units ordered after it (sandbox runtimes after netctl, image
//! health checks after sbx-agent) never talk to a socket that is not there
//! yet. The protocol is one datagram to
//! the unix socket named by `$NOTIFY_SOCKET`; doing it here keeps libsystemd
//! (and unsafe FFI) out of the daemon. Without `$NOTIFY_SOCKET` (not started
//! by systemd, or a test) every call is a no-op.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{NOTIFY_SOCKET_ENV}={0:?} is neither an absolute path nor an abstract name (@...)")]
    BadAddress(String),
    #[error("notify socket {socket:?}: {source}")]
    Send {
        socket: String,
        source: std::io::Error,
    },
}

/// Tells the service manager the daemon is serving. Failures are logged,
/// never fatal: a daemon that serves but cannot say so is still useful, and
/// systemd's start timeout reports the problem.
pub fn ready() {
    report(notify("READY=1"), "READY=1");
}

/// Tells the service manager the daemon is shutting down on purpose.
pub fn stopping() {
    report(notify("STOPPING=1"), "STOPPING=1");
}

fn report(result: Result<bool, NotifyError>, state: &str) {
    match result {
        Ok(true) => tracing::debug!(state, "notified the service manager"),
        Ok(false) => {}
        Err(err) => tracing::warn!(error = %err, state, "cannot notify the service manager"),
    }
}

/// Sends `state` to `$NOTIFY_SOCKET`. `Ok(false)` when the variable is unset
/// or empty.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var_os(NOTIFY_SOCKET_ENV) {
        Some(socket) if !socket.is_empty() => send_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends one notification datagram to `socket`: an absolute path, or an
/// abstract socket name written with a leading `@` (systemd's convention).
pub fn send_to(socket: &OsStr, state: &str) -> Result<(), NotifyError> {
    let shown = || socket.to_string_lossy().into_owned();
    let addr = address(socket)?;
    let sender = UnixDatagram::unbound().map_err(|source| NotifyError::Send {
        socket: shown(),
        source,
    })?;
    sender
        .send_to_addr(state.as_bytes(), &addr)
        .map_err(|source| NotifyError::Send {
            socket: shown(),
            source,
        })?;
    Ok(())
}

fn address(socket: &OsStr) -> Result<SocketAddr, NotifyError> {
    let bytes = socket.as_bytes();
    let bad = || NotifyError::BadAddress(socket.to_string_lossy().into_owned());
    match bytes.first() {
        Some(b'@') => abstract_address(&bytes[1..]).ok_or_else(bad),
        Some(b'/') => SocketAddr::from_pathname(PathBuf::from(socket)).map_err(|_| bad()),
        // `vsock:` addresses (systemd 254+, for VMs) are not used by the units
        // we ship; refusing them is clearer than a silent no-op.
        _ => Err(bad()),
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> Option<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name).ok()
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &[u8]) -> Option<SocketAddr> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(listener: &UnixDatagram) -> String {
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("sbx-service-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("bind");
        send_to(path.as_os_str(), "READY=1").expect("send");
        assert_eq!(receive(&listener), "READY=1");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sbx-service-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind");
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1").expect("send");
        assert_eq!(receive(&listener), "STOPPING=1");
    }

    #[test]
    fn refuses_relative_and_empty_names() {
        assert!(matches!(
            address(OsStr::new("run/notify")),
            Err(NotifyError::BadAddress(_))
        ));
        assert!(matches!(
            address(OsStr::new("vsock:2:1234")),
            Err(NotifyError::BadAddress(_))
        ));
        assert!(address(OsStr::new("")).is_err());
    }

    #[test]
    fn a_missing_listener_is_an_error_not_a_panic() {
        let path =
            std::env::temp_dir().join(format!("sbx-service-notify-none-{}", std::process::id()));
        assert!(matches!(
            send_to(path.as_os_str(), "READY=1"),
            Err(NotifyError::Send { .. })
        ));
    }
}
