//! The relay's frame decoder driven without sockets, for the fuzz targets in
//! `fuzz/`: the same state machine the tunnel runs, with what it decodes
//! collected in memory.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use crate::decode::{Decoder, Flow, FrameSink};
use crate::frame::{self, FrameError, OpCode};
use crate::Role;

/// What the decoder handed on, with adjacent data merged (how a byte stream
/// is cut into frames is not observable on the TCP side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Data(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The peer's Close and its status code, if it sent one.
    Close(Option<u16>),
}

/// Everything decoded from a stream and how the stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub events: Vec<Event>,
    /// `Ok(true)` once the peer's Close arrived (later bytes are not read),
    /// `Ok(false)` when the input ran out first.
    pub end: Result<bool, FrameError>,
}

#[derive(Default)]
struct Collect {
    events: Vec<Event>,
}

impl FrameSink for Collect {
    type Error = FrameError;

    async fn data(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        match self.events.last_mut() {
            Some(Event::Data(data)) => data.extend_from_slice(bytes),
            _ => self.events.push(Event::Data(bytes.to_vec())),
        }
        Ok(())
    }

    /// What the relay's TCP sink does with control frames, minus the
    /// socket writes.
    async fn control(&mut self, opcode: OpCode, payload: &[u8]) -> Result<Flow, FrameError> {
        Ok(match opcode {
            OpCode::Ping => {
                self.events.push(Event::Ping(payload.to_vec()));
                Flow::Continue
            }
            OpCode::Pong => {
                self.events.push(Event::Pong(payload.to_vec()));
                Flow::Continue
            }
            OpCode::Close => {
                let code = frame::parse_close_payload(payload)?;
                self.events.push(Event::Close(code));
                Flow::PeerClosed
            }
            _ => Flow::Continue,
        })
    }
}

/// Feeds `chunks` to a fresh decoder, one read per chunk, as the relay does.
pub fn decode<'a>(
    role: Role,
    max_frame_size: u64,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Decoded {
    let mut decoder = Decoder::new(role, max_frame_size);
    let mut sink = Collect::default();
    let mut end = Ok(false);
    for chunk in chunks {
        let mut buf = chunk.to_vec();
        match complete(decoder.feed(&mut buf, &mut sink)) {
            Ok(Flow::Continue) => {}
            Ok(Flow::PeerClosed) => {
                end = Ok(true);
                break;
            }
            Err(e) => {
                end = Err(e);
                break;
            }
        }
    }
    Decoded {
        events: sink.events,
        end,
    }
}

/// Runs a future that never waits: the collecting sink is always ready.
fn complete<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the in-memory sink never waits"),
    }
}
