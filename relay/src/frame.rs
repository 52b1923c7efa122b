//! WebSocket frame headers (RFC 6455 section 5.2) and an incremental decoder
//! that never buffers more than one header and one control payload.

use thiserror::Error;

/// Longest possible header: 2 + 8 (extended length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;

/// Longest control frame payload the RFC allows.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Length of the header for a payload of `len` bytes.
pub fn header_len(len: usize, masked: bool) -> usize {
    let ext = if len < 126 {
        0
    } else if len <= u16::MAX as usize {
        2
    } else {
        8
    };
    2 + ext + if masked { 4 } else { 0 }
}

/// Writes a final (FIN) frame header for `len` payload bytes into the end of
/// `out` and returns how many bytes it used, so a caller can place the header
/// right before a payload already sitting in its buffer.
pub fn encode_header(out: &mut [u8], opcode: OpCode, len: usize, mask: Option<[u8; 4]>) -> usize {
    let n = header_len(len, mask.is_some());
    let start = out.len() - n;
    let h = &mut out[start..];
    h[0] = 0x80 | opcode.bits();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut pos = 2;
    if len < 126 {
        h[1] = mask_bit | len as u8;
    } else if len <= u16::MAX as usize {
        h[1] = mask_bit | 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        pos = 4;
    } else {
        h[1] = mask_bit | 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        pos = 10;
    }
    if let Some(key) = mask {
        h[pos..pos + 4].copy_from_slice(&key);
    }
    n
}

/// A frame header as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
}

/// A violation of the framing rules, with the close code to answer it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("frame masking is wrong for this side of the connection")]
    Masking,
    #[error("payload length has its most significant bit set")]
    BadLength,
    #[error("frame of {len} bytes is over the cap of {max}")]
    TooBig { len: u64, max: u64 },
    #[error("text frames are not supported on a binary tunnel")]
    Text,
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    #[error("close frame payload is invalid")]
    BadClosePayload,
}

impl FrameError {
    /// The close code (RFC 6455 section 7.4.1) that answers this error.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Text => 1003,
            Self::TooBig { .. } => 1009,
            _ => 1002,
        }
    }
}

/// Parses a header from the start of `buf`. Returns `None` while more bytes
/// are needed, otherwise the header and its length in bytes.
pub fn parse_header(buf: &[u8]) -> Result<Option<(Header, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7F;
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let total = 2 + ext + if masked { 4 } else { 0 };
    if buf.len() < total {
        return Ok(None);
    }
    let len = match len7 {
        126 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(FrameError::BadLength);
            }
            len
        }
        n => u64::from(n),
    };
    let mask = masked.then(|| {
        let at = 2 + ext;
        [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
    });
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(FrameError::BadControlFrame);
    }
    Ok(Some((
        Header {
            fin,
            opcode,
            mask,
            len,
        },
        total,
    )))
}

/// Parses a Close payload into its status code, if it has one.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::BadClosePayload),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid_code = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid_code || std::str::from_utf8(&payload[2..]).is_err() {
                return Err(FrameError::BadClosePayload);
            }
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_all_length_classes() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 1 << 24] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let mut out = [0u8; MAX_HEADER_LEN];
                let n = encode_header(&mut out, OpCode::Binary, len, mask);
                assert_eq!(n, header_len(len, mask.is_some()));
                let (h, used) = parse_header(&out[MAX_HEADER_LEN - n..]).unwrap().unwrap();
                assert_eq!(used, n);
                assert_eq!(h.len, len as u64);
                assert_eq!(h.mask, mask);
                assert!(h.fin);
                assert_eq!(h.opcode, OpCode::Binary);
            }
        }
    }

    #[test]
    fn needs_more_bytes() {
        assert_eq!(parse_header(&[0x82]).unwrap(), None);
        assert_eq!(parse_header(&[0x82, 0xFE, 0x01]).unwrap(), None);
        assert_eq!(parse_header(&[0x82, 0x85, 1, 2, 3]).unwrap(), None);
    }

    #[test]
    fn refuses_bad_headers() {
        assert_eq!(parse_header(&[0xC2, 0x00]), Err(FrameError::ReservedBits));
        assert_eq!(
            parse_header(&[0x83, 0x00]),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(
            parse_header(&[0x09, 0x00]),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(
            parse_header(&[0x89, 126, 0, 126]),
            Err(FrameError::BadControlFrame)
        );
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_header(&huge), Err(FrameError::BadLength));
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(parse_close_payload(&[3, 0xE8]), Ok(Some(1000)));
        assert_eq!(parse_close_payload(&[3, 0xEB, b'o', b'k']), Ok(Some(1003)));
        assert!(parse_close_payload(&[3]).is_err());
        assert!(parse_close_payload(&[3, 0xED]).is_err()); // 1005 is never sent
        assert!(parse_close_payload(&[3, 0xE8, 0xFF]).is_err());
    }

    #[test]
    fn error_close_codes() {
        assert_eq!(FrameError::Text.close_code(), 1003);
        assert_eq!(FrameError::TooBig { len: 2, max: 1 }.close_code(), 1009);
        assert_eq!(FrameError::Masking.close_code(), 1002);
    }
}
