//! The blocking WebSocket client: round trips of small messages and echo
//! throughput of large ones, one message in flight, against the service's
//! echo through each target.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Ws {
    socket: WebSocket<TcpStream>,
    what: String,
}

impl Ws {
    /// Connects to `addr` and upgrades `GET /ws` with `Host: host`.
    pub fn open(addr: SocketAddr, host: &str) -> Result<Self> {
        let what = format!("websocket via {addr}");
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let (socket, _) = tungstenite::client::client_with_config(
            format!("ws://{host}/ws"),
            stream,
            Some(config),
        )
        .map_err(|e| anyhow!("{what}: handshake failed: {e}"))?;
        Ok(Self { socket, what })
    }

    /// Sends `payload` as one binary message and waits for its echo.
    pub fn round_trip(&mut self, payload: &[u8]) -> Result<()> {
        self.socket
            .send(Message::Binary(payload.to_vec().into()))
            .map_err(|e| anyhow!("{}: send: {e}", self.what))?;
        loop {
            match self
                .socket
                .read()
                .map_err(|e| anyhow!("{}: read: {e}", self.what))?
            {
                Message::Binary(data) => {
                    if data.len() != payload.len() {
                        bail!(
                            "{}: echo of {} bytes came back as {}",
                            self.what,
                            payload.len(),
                            data.len()
                        );
                    }
                    return Ok(());
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => bail!("{}: unexpected message {other:?}", self.what),
            }
        }
    }

    /// Times one round trip.
    pub fn timed_round_trip(&mut self, payload: &[u8]) -> Result<Duration> {
        let start = Instant::now();
        self.round_trip(payload)?;
        Ok(start.elapsed())
    }

    pub fn close(mut self) {
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
    }
}
