//! Constants of the TCP tunnel protocol.
//!
//! The tunnel is a WebSocket at [`TUNNEL_PATH`]`?port=N`. Binary frames carry
//! the TCP byte stream verbatim. A Close frame doubles as a half-close: the
//! side that sends it has no more bytes to send but keeps reading until the
//! peer's own Close arrives, so request/response protocols finish. The agent
//! relays only to `127.0.0.1:N`.

/// Path of the TCP tunnel endpoint.
pub const TUNNEL_PATH: &str = "/api/v1/tunnels/tcp";

/// Path of the raw byte-stream tunnel: an HTTP/1.1 upgrade to
/// [`RAW_TUNNEL_PROTOCOL`] after which the connection carries the TCP bytes
/// of `127.0.0.1:N` with no framing at all. The sandbox proxy uses it for
/// user ports: it has the same auth, port rules and limits as the WebSocket
/// tunnel, but costs no per-frame work (see `proxy/README.md`).
pub const RAW_TUNNEL_PATH: &str = "/api/v1/tunnels/raw";

/// The `Upgrade` token of the raw tunnel.
pub const RAW_TUNNEL_PROTOCOL: &str = "sbx-tcp";

/// Query parameter naming the port inside the sandbox.
pub const PORT_PARAM: &str = "port";

/// Default cap on one incoming WebSocket frame's payload.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// Default cap on concurrently open tunnels per agent.
pub const DEFAULT_MAX_TUNNELS: usize = 4096;

/// How often the `sbx` client pings an open tunnel.
pub const CLIENT_PING_INTERVAL_SECS: u64 = 15;

/// WebSocket close codes the tunnel uses (RFC 6455, section 7.4.1).
pub mod close_code {
    /// Normal closure: this side has finished sending.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (agent shutting down).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error (bad framing, unmasked client frame, ...).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Unsupported data: a text frame on a binary tunnel.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A frame over the configured size cap.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The relay failed on the TCP side (reset, I/O error).
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// Parses the `port` query parameter exactly as the agent does.
///
/// A port is accepted only if the query holds exactly one `port` parameter
/// whose value is a decimal number in `1..=65535` (no sign, no whitespace).
pub fn parse_port_query(query: Option<&str>) -> Result<u16, PortError> {
    let mut found: Option<&str> = None;
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == PORT_PARAM {
            if found.is_some() {
                return Err(PortError::Repeated);
            }
            found = Some(value);
        }
    }
    let raw = found.ok_or(PortError::Missing)?;
    parse_port(raw)
}

/// Parses one port number in `1..=65535`.
pub fn parse_port(raw: &str) -> Result<u16, PortError> {
    if raw.is_empty() || raw.len() > 5 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortError::NotANumber(truncate(raw)));
    }
    match raw.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(PortError::OutOfRange(truncate(raw))),
    }
}

fn truncate(raw: &str) -> String {
    raw.chars().take(32).collect()
}

/// Why a tunnel port was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("query parameter `port` is required")]
    Missing,
    #[error("query parameter `port` is given more than once")]
    Repeated,
    #[error("port {0:?} is not a decimal number")]
    NotANumber(String),
    #[error("port {0} is out of range 1-65535")]
    OutOfRange(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ports() {
        assert_eq!(parse_port_query(Some("port=1")), Ok(1));
        assert_eq!(parse_port_query(Some("port=65535")), Ok(65535));
        assert_eq!(parse_port_query(Some("x=1&port=6379")), Ok(6379));
        assert_eq!(parse_port_query(Some("port=00080")), Ok(80));
    }

    #[test]
    fn refuses_bad_ports() {
        assert_eq!(parse_port_query(None), Err(PortError::Missing));
        assert_eq!(parse_port_query(Some("")), Err(PortError::Missing));
        assert_eq!(parse_port_query(Some("prt=1")), Err(PortError::Missing));
        assert!(matches!(
            parse_port_query(Some("port=")),
            Err(PortError::NotANumber(_))
        ));
        assert!(matches!(
            parse_port_query(Some("port=abc")),
            Err(PortError::NotANumber(_))
        ));
        assert!(matches!(
            parse_port_query(Some("port=-1")),
            Err(PortError::NotANumber(_))
        ));
        assert!(matches!(
            parse_port_query(Some("port=+80")),
            Err(PortError::NotANumber(_))
        ));
        assert!(matches!(
            parse_port_query(Some("port=0")),
            Err(PortError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_port_query(Some("port=65536")),
            Err(PortError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_port_query(Some("port=99999999999")),
            Err(PortError::NotANumber(_))
        ));
        assert_eq!(
            parse_port_query(Some("port=1&port=2")),
            Err(PortError::Repeated)
        );
    }
}
