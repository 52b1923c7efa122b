//! The incremental frame decoder of the relay's receiving direction.
//!
//! It is generic over where decoded frames go so that the relay can write
//! payloads straight to TCP while the fuzz targets (and tests) collect them
//! in memory through the very same state machine.

use crate::frame::{parse_header, FrameError, Header, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::Role;

/// Whether the peer's Close has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    PeerClosed,
}

/// Receives what the decoder finds. Payload bytes of data frames arrive in
/// pieces as they are read; a control frame arrives whole.
pub(crate) trait FrameSink {
    type Error: From<FrameError>;

    async fn data(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;

    async fn control(&mut self, opcode: OpCode, payload: &[u8]) -> Result<Flow, Self::Error>;
}

/// The frame being received.
#[derive(Debug, Clone, Copy)]
struct Current {
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    mask_offset: usize,
    remaining: u64,
}

/// Incremental frame decoder: holds at most one header and one control
/// payload between reads, never a data payload.
pub(crate) struct Decoder {
    role: Role,
    max_frame_size: u64,
    header: [u8; MAX_HEADER_LEN],
    header_len: usize,
    current: Option<Current>,
    in_message: bool,
    control: [u8; MAX_CONTROL_PAYLOAD],
    control_len: usize,
}

impl Decoder {
    pub(crate) fn new(role: Role, max_frame_size: u64) -> Self {
        Self {
            role,
            max_frame_size,
            header: [0; MAX_HEADER_LEN],
            header_len: 0,
            current: None,
            in_message: false,
            control: [0; MAX_CONTROL_PAYLOAD],
            control_len: 0,
        }
    }

    /// Consumes `buf` (unmasking it in place), forwarding payloads to
    /// `sink` as they complete.
    pub(crate) async fn feed<S: FrameSink>(
        &mut self,
        buf: &mut [u8],
        sink: &mut S,
    ) -> Result<Flow, S::Error> {
        let mut pos = 0;
        while pos < buf.len() {
            let Some(mut cur) = self.current else {
                pos += self.read_header(&buf[pos..])?;
                if let Some(cur) = self.current {
                    if cur.remaining == 0
                        && self.end_frame(cur.opcode, sink).await? == Flow::PeerClosed
                    {
                        return Ok(Flow::PeerClosed);
                    }
                }
                continue;
            };
            let take = (buf.len() - pos).min(usize::try_from(cur.remaining).unwrap_or(usize::MAX));
            let chunk = &mut buf[pos..pos + take];
            if let Some(key) = cur.mask {
                cur.mask_offset = crate::mask::apply_mask(chunk, key, cur.mask_offset);
            }
            if cur.opcode.is_control() {
                self.control[self.control_len..self.control_len + take].copy_from_slice(chunk);
                self.control_len += take;
            } else {
                sink.data(chunk).await?;
            }
            pos += take;
            cur.remaining -= take as u64;
            self.current = Some(cur);
            if cur.remaining == 0 && self.end_frame(cur.opcode, sink).await? == Flow::PeerClosed {
                return Ok(Flow::PeerClosed);
            }
        }
        Ok(Flow::Continue)
    }

    /// Accumulates header bytes; returns how many of `input` it consumed.
    fn read_header(&mut self, input: &[u8]) -> Result<usize, FrameError> {
        let take = (MAX_HEADER_LEN - self.header_len).min(input.len());
        self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
        match parse_header(&self.header[..self.header_len + take])? {
            None => {
                self.header_len += take;
                Ok(take)
            }
            Some((header, used)) => {
                let consumed = used - self.header_len;
                self.header_len = 0;
                self.start_frame(header)?;
                Ok(consumed)
            }
        }
    }

    fn start_frame(&mut self, h: Header) -> Result<(), FrameError> {
        let must_be_masked = self.role == Role::Server;
        if h.mask.is_some() != must_be_masked {
            return Err(FrameError::Masking);
        }
        match h.opcode {
            OpCode::Text => return Err(FrameError::Text),
            OpCode::Binary if self.in_message => return Err(FrameError::ExpectedContinuation),
            OpCode::Continuation if !self.in_message => {
                return Err(FrameError::UnexpectedContinuation)
            }
            _ => {}
        }
        if !h.opcode.is_control() {
            if h.len > self.max_frame_size {
                return Err(FrameError::TooBig {
                    len: h.len,
                    max: self.max_frame_size,
                });
            }
            self.in_message = !h.fin;
        }
        self.control_len = 0;
        self.current = Some(Current {
            opcode: h.opcode,
            mask: h.mask,
            mask_offset: 0,
            remaining: h.len,
        });
        Ok(())
    }

    async fn end_frame<S: FrameSink>(
        &mut self,
        opcode: OpCode,
        sink: &mut S,
    ) -> Result<Flow, S::Error> {
        self.current = None;
        if !opcode.is_control() {
            return Ok(Flow::Continue);
        }
        let payload = self.control;
        sink.control(opcode, &payload[..self.control_len]).await
    }
}
