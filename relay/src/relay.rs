//! One tunnel: bytes from the WebSocket go to the TCP connection and back.
//!
//! Each direction reads only when its destination has taken the previous
//! chunk, so a slow reader on either side stops the relay from reading more:
//! memory per tunnel is bounded by one chunk per direction plus the kernel's
//! socket buffers. A direction's buffer exists only while bytes are flowing.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::decode::{Decoder, Flow, FrameSink};
use crate::frame::{self, encode_header, FrameError, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::mask::apply_mask;

/// Close codes sent by the relay itself.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// How long a failing tunnel may spend telling the peer why.
const CLOSE_NOTICE_TIMEOUT: Duration = Duration::from_secs(1);

/// Which end of the WebSocket this relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The agent: incoming frames must be masked, outgoing ones are not.
    Server,
    /// The client: outgoing frames are masked, incoming ones must not be.
    Client,
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub role: Role,
    /// Cap on one incoming data frame's payload; larger ones close with 1009.
    pub max_frame_size: u64,
    /// Largest payload read from TCP into one outgoing frame.
    pub chunk_size: usize,
    /// Ping the peer after this long without hearing from it.
    pub ping_interval: Duration,
    /// Give up on a peer silent for this long (pongs count as heard).
    pub idle_timeout: Duration,
}

impl RelayConfig {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            max_frame_size: 16 * 1024 * 1024,
            chunk_size: 64 * 1024,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Why a tunnel ended other than by both sides finishing.
#[derive(Debug, Error)]
pub enum RelayError {
    #[error("websocket connection failed: {0}")]
    WebSocketIo(#[source] io::Error),
    #[error("tcp connection failed: {0}")]
    TcpIo(#[source] io::Error),
    #[error("peer broke the protocol: {0}")]
    Protocol(#[from] FrameError),
    #[error("websocket connection ended without a close frame")]
    PeerVanished,
    #[error("peer silent for {0:?}")]
    Timeout(Duration),
    #[error("relay shutting down")]
    Shutdown,
}

impl RelayError {
    /// The close code to send the peer, if it is still worth telling.
    fn close_code(&self) -> Option<u16> {
        match self {
            Self::Protocol(e) => Some(e.close_code()),
            Self::TcpIo(_) => Some(CLOSE_INTERNAL_ERROR),
            Self::Shutdown => Some(CLOSE_GOING_AWAY),
            Self::WebSocketIo(_) | Self::PeerVanished | Self::Timeout(_) => None,
        }
    }
}

/// What happened on a tunnel, for logs and tests.
#[derive(Debug)]
pub struct Outcome {
    /// Payload bytes written to the TCP side.
    pub bytes_to_tcp: u64,
    /// Payload bytes sent as WebSocket frames.
    pub bytes_to_ws: u64,
    /// Close code the peer sent, if any.
    pub peer_close_code: Option<u16>,
    pub result: Result<(), RelayError>,
}

/// Relays between an upgraded WebSocket connection `ws` and `tcp` until both
/// directions have finished or one fails. `initial` holds bytes already read
/// from `ws` during the handshake. When `shutdown` completes the tunnel closes
/// with 1001.
pub async fn relay(
    ws: TcpStream,
    initial: Vec<u8>,
    tcp: TcpStream,
    config: &RelayConfig,
    shutdown: impl Future<Output = ()>,
) -> Outcome {
    let (ws_read, ws_write) = ws.into_split();
    let (tcp_read, mut tcp_write) = tcp.into_split();
    let writer = Mutex::new(WsWriter::new(ws_write, config.role));
    let stats = Stats::new();

    let result = {
        let inbound = ws_to_tcp(&ws_read, initial, &mut tcp_write, &writer, config, &stats);
        let outbound = tcp_to_ws(&tcp_read, &writer, config, &stats);
        supervise(inbound, outbound, &writer, config, &stats, shutdown).await
    };

    let mut writer = writer.into_inner();
    if let Err(err) = &result {
        if let Some(code) = err.close_code() {
            let notice = writer.send_close(code);
            let _ = tokio::time::timeout(CLOSE_NOTICE_TIMEOUT, notice).await;
        }
        // Reset rather than finish the TCP side so the service sees that
        // the stream was cut, not completed.
        if let Ok(stream) = tcp_read.reunite(tcp_write) {
            let _ = stream.set_zero_linger();
        }
    }
    let _ = writer.half.shutdown().await;

    Outcome {
        bytes_to_tcp: stats.to_tcp.load(Ordering::Relaxed),
        bytes_to_ws: stats.to_ws.load(Ordering::Relaxed),
        peer_close_code: match stats.peer_close.load(Ordering::Relaxed) {
            0 => None,
            code => u16::try_from(code).ok(),
        },
        result,
    }
}

/// Runs both directions and the keepalive until both directions finish or
/// anything fails.
async fn supervise(
    inbound: impl Future<Output = Result<(), RelayError>>,
    outbound: impl Future<Output = Result<(), RelayError>>,
    writer: &Mutex<WsWriter>,
    config: &RelayConfig,
    stats: &Stats,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    tokio::pin!(inbound, outbound, shutdown);
    let mut inbound_done = false;
    let mut outbound_done = false;
    let mut tick = tokio::time::interval(config.ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    while !(inbound_done && outbound_done) {
        tokio::select! {
            r = &mut inbound, if !inbound_done => { r?; inbound_done = true; }
            r = &mut outbound, if !outbound_done => { r?; outbound_done = true; }
            () = &mut shutdown => return Err(RelayError::Shutdown),
            _ = tick.tick(), if !inbound_done => {
                let silent = stats.silent_for();
                if silent >= config.idle_timeout {
                    return Err(RelayError::Timeout(silent));
                }
                // A writer busy with data is progress enough; never wait for
                // it here, or this loop would stop polling the writer itself.
                if silent >= config.ping_interval {
                    if let Ok(mut w) = writer.try_lock() {
                        w.send_control(OpCode::Ping, b"").await.map_err(RelayError::WebSocketIo)?;
                    }
                }
            }
        }
    }
    Ok(())
}

struct Stats {
    to_tcp: AtomicU64,
    to_ws: AtomicU64,
    peer_close: AtomicU64,
    start: Instant,
    /// Milliseconds after `start` when the peer last sent anything.
    last_heard_ms: AtomicU64,
}

impl Stats {
    fn new() -> Self {
        Self {
            to_tcp: AtomicU64::new(0),
            to_ws: AtomicU64::new(0),
            peer_close: AtomicU64::new(0),
            start: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
        }
    }

    fn heard(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_heard_ms.store(now, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_heard_ms.load(Ordering::Relaxed)))
    }
}

/// The sending half of the WebSocket; shared by data and control frames.
struct WsWriter {
    half: OwnedWriteHalf,
    role: Role,
    close_sent: bool,
}

impl WsWriter {
    fn new(half: OwnedWriteHalf, role: Role) -> Self {
        Self {
            half,
            role,
            close_sent: false,
        }
    }

    fn mask_key(&self) -> Option<[u8; 4]> {
        (self.role == Role::Client).then(rand::random::<[u8; 4]>)
    }

    /// Sends `buf[MAX_HEADER_LEN..]` as one binary frame, writing the header
    /// into the room left before it so the frame goes out in one write.
    async fn send_binary_in_place(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let (head, payload) = buf.split_at_mut(MAX_HEADER_LEN);
        let mask = self.mask_key();
        let n = encode_header(head, OpCode::Binary, payload.len(), mask);
        if let Some(key) = mask {
            apply_mask(payload, key, 0);
        }
        self.half.write_all(&buf[MAX_HEADER_LEN - n..]).await
    }

    async fn send_control(&mut self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        let mut frame = [0u8; MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD];
        let len = payload.len().min(MAX_CONTROL_PAYLOAD);
        let body = &mut frame[MAX_HEADER_LEN..MAX_HEADER_LEN + len];
        body.copy_from_slice(&payload[..len]);
        let mask = self.mask_key();
        if let Some(key) = mask {
            apply_mask(body, key, 0);
        }
        let n = encode_header(&mut frame[..MAX_HEADER_LEN], opcode, len, mask);
        self.half
            .write_all(&frame[MAX_HEADER_LEN - n..MAX_HEADER_LEN + len])
            .await
    }

    /// Sends Close once; after it this side sends no more data frames.
    async fn send_close(&mut self, code: u16) -> io::Result<()> {
        if self.close_sent {
            return Ok(());
        }
        self.close_sent = true;
        self.send_control(OpCode::Close, &code.to_be_bytes()).await
    }
}

/// TCP → WebSocket: each read becomes one binary frame; EOF becomes Close.
async fn tcp_to_ws(
    tcp: &OwnedReadHalf,
    writer: &Mutex<WsWriter>,
    config: &RelayConfig,
    stats: &Stats,
) -> Result<(), RelayError> {
    let capacity = MAX_HEADER_LEN + config.chunk_size;
    loop {
        tcp.readable().await.map_err(RelayError::TcpIo)?;
        let mut buf: Vec<u8> = Vec::with_capacity(capacity);
        loop {
            buf.clear();
            buf.resize(MAX_HEADER_LEN, 0);
            match tcp.try_read_buf(&mut buf) {
                Ok(0) => {
                    let mut w = writer.lock().await;
                    w.send_close(CLOSE_NORMAL)
                        .await
                        .map_err(RelayError::WebSocketIo)?;
                    return Ok(());
                }
                Ok(n) => {
                    let mut w = writer.lock().await;
                    w.send_binary_in_place(&mut buf)
                        .await
                        .map_err(RelayError::WebSocketIo)?;
                    stats.to_ws.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(RelayError::TcpIo(e)),
            }
        }
        // The buffer is dropped here: an idle tunnel holds none.
    }
}

/// WebSocket → TCP: payloads are unmasked in place and written on; the
/// peer's Close shuts the TCP write side (half-close).
async fn ws_to_tcp(
    ws: &OwnedReadHalf,
    initial: Vec<u8>,
    tcp: &mut OwnedWriteHalf,
    writer: &Mutex<WsWriter>,
    config: &RelayConfig,
    stats: &Stats,
) -> Result<(), RelayError> {
    let mut decoder = Decoder::new(config.role, config.max_frame_size);
    let mut sink = TcpSink { tcp, writer, stats };
    if !initial.is_empty() {
        let mut initial = initial;
        if decoder.feed(&mut initial, &mut sink).await? == Flow::PeerClosed {
            return sink.finish().await;
        }
    }
    let capacity = config.chunk_size;
    loop {
        ws.readable().await.map_err(RelayError::WebSocketIo)?;
        let mut buf: Vec<u8> = Vec::with_capacity(capacity);
        loop {
            buf.clear();
            match ws.try_read_buf(&mut buf) {
                Ok(0) => return Err(RelayError::PeerVanished),
                Ok(_) => {
                    stats.heard();
                    if decoder.feed(&mut buf, &mut sink).await? == Flow::PeerClosed {
                        return sink.finish().await;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(RelayError::WebSocketIo(e)),
            }
        }
    }
}

/// Where decoded frames go.
struct TcpSink<'a> {
    tcp: &'a mut OwnedWriteHalf,
    writer: &'a Mutex<WsWriter>,
    stats: &'a Stats,
}

impl FrameSink for TcpSink<'_> {
    type Error = RelayError;

    async fn data(&mut self, bytes: &[u8]) -> Result<(), RelayError> {
        self.tcp.write_all(bytes).await.map_err(RelayError::TcpIo)?;
        self.stats
            .to_tcp
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn control(&mut self, opcode: OpCode, payload: &[u8]) -> Result<Flow, RelayError> {
        match opcode {
            OpCode::Ping => {
                let mut w = self.writer.lock().await;
                // After our own Close no more frames of any kind are due.
                if !w.close_sent {
                    w.send_control(OpCode::Pong, payload)
                        .await
                        .map_err(RelayError::WebSocketIo)?;
                }
                Ok(Flow::Continue)
            }
            OpCode::Close => {
                let code = frame::parse_close_payload(payload)?;
                self.stats
                    .peer_close
                    .store(u64::from(code.unwrap_or(1005)), Ordering::Relaxed);
                Ok(Flow::PeerClosed)
            }
            _ => Ok(Flow::Continue),
        }
    }
}

impl TcpSink<'_> {
    /// The peer has finished sending: pass the half-close on to TCP.
    async fn finish(&mut self) -> Result<(), RelayError> {
        // The service may already have closed; its FIN is not our error.
        match self.tcp.shutdown().await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(RelayError::TcpIo(e)),
        }
    }
}
