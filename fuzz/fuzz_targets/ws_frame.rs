//! The relay's incremental WebSocket frame decoder (relay/src/decode.rs),
//! which reads every byte a tunnel peer sends.
//!
//! Mode 0 (first byte even): the rest is a raw byte stream. Properties: the
//! result is the same however the stream is cut into reads, and the same as
//! a whole-buffer reference decoder's (payloads unmasked, control frames
//! whole, fragmentation rules, size cap, Close codes).
//! Mode 1 (first byte odd): the rest describes frames, which are encoded as
//! a peer would and must decode to exactly what was sent.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sbx_relay::frame::{
    encode_header, parse_close_payload, parse_header, FrameError, OpCode, MAX_HEADER_LEN,
};
use sbx_relay::fuzzing::{decode, Decoded, Event};
use sbx_relay::mask::apply_mask;
use sbx_relay::Role;

const CAPS: [u64; 6] = [0, 1, 125, 126, 65_536, 16 << 20];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let role = if mode & 2 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    if mode & 1 == 0 {
        raw(role, mode, rest);
    } else {
        let _ = encoded(role, &mut Unstructured::new(rest));
    }
});

fn raw(role: Role, mode: u8, data: &[u8]) {
    let Some((&cap, stream)) = data.split_first() else {
        return;
    };
    let cap = CAPS[usize::from(cap) % CAPS.len()];
    let whole = decode(role, cap, [stream]);
    assert_eq!(whole, reference(role, cap, stream), "reference disagrees");
    // Reads of 1..=16 bytes, in a pattern the input picks.
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut state = u32::from(mode) | 1;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((state >> 16) as usize % 16 + 1).min(rest.len());
        let (head, tail) = rest.split_at(n);
        chunks.push(head);
        rest = tail;
    }
    assert_eq!(
        decode(role, cap, chunks),
        whole,
        "result depends on read sizes"
    );
    let bytewise = stream.chunks(1);
    assert_eq!(decode(role, cap, bytewise), whole, "byte-at-a-time differs");
}

/// Decodes a complete buffer frame by frame, straight from RFC 6455.
fn reference(role: Role, cap: u64, mut buf: &[u8]) -> Decoded {
    let mut events: Vec<Event> = Vec::new();
    let mut in_message = false;
    let end = loop {
        let (h, used) = match parse_header(buf) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break Ok(false),
            Err(e) => break Err(e),
        };
        if h.mask.is_some() != (role == Role::Server) {
            break Err(FrameError::Masking);
        }
        match h.opcode {
            OpCode::Text => break Err(FrameError::Text),
            OpCode::Binary if in_message => break Err(FrameError::ExpectedContinuation),
            OpCode::Continuation if !in_message => break Err(FrameError::UnexpectedContinuation),
            _ => {}
        }
        if !h.opcode.is_control() {
            if h.len > cap {
                break Err(FrameError::TooBig {
                    len: h.len,
                    max: cap,
                });
            }
            in_message = !h.fin;
        }
        buf = &buf[used..];
        let available = buf.len().min(usize::try_from(h.len).unwrap_or(usize::MAX));
        let mut payload = buf[..available].to_vec();
        buf = &buf[available..];
        if let Some(key) = h.mask {
            apply_mask(&mut payload, key, 0);
        }
        let complete = available as u64 == h.len;
        match h.opcode {
            OpCode::Binary | OpCode::Continuation => {
                if !payload.is_empty() {
                    match events.last_mut() {
                        Some(Event::Data(data)) => data.extend_from_slice(&payload),
                        _ => events.push(Event::Data(payload)),
                    }
                }
            }
            _ if !complete => {}
            OpCode::Ping => events.push(Event::Ping(payload)),
            OpCode::Pong => events.push(Event::Pong(payload)),
            OpCode::Close => match parse_close_payload(&payload) {
                Ok(code) => {
                    events.push(Event::Close(code));
                    break Ok(true);
                }
                Err(e) => break Err(e),
            },
            OpCode::Text => unreachable!(),
        }
        if !complete {
            break Ok(false);
        }
    };
    Decoded { events, end }
}

/// Frames a well-behaved peer sends: they decode to what was sent.
fn encoded(role: Role, u: &mut Unstructured<'_>) -> Result<()> {
    let mut wire = Vec::new();
    let mut expected: Vec<Event> = Vec::new();
    let mut closed = false;
    while !u.is_empty() && !closed {
        let kind = u.int_in_range(0..=4u8)?;
        let len = match kind {
            0 | 1 => u.int_in_range(0..=300usize)?,
            _ => u.int_in_range(0..=125usize)?,
        };
        let payload: Vec<u8> = u.bytes(len.min(u.len()))?.to_vec();
        let (opcode, event) = match kind {
            0 | 1 => (OpCode::Binary, Event::Data(payload.clone())),
            2 => (OpCode::Ping, Event::Ping(payload.clone())),
            3 => (OpCode::Pong, Event::Pong(payload.clone())),
            _ => {
                closed = true;
                let code = 1000 + u.int_in_range(0..=3u16)?;
                let mut body = code.to_be_bytes().to_vec();
                body.extend(payload.iter().map(|b| b'a' + b % 26).take(100));
                send(&mut wire, role, OpCode::Close, &body, u)?;
                expected.push(Event::Close(Some(code)));
                break;
            }
        };
        send(&mut wire, role, opcode, &payload, u)?;
        match (expected.last_mut(), event) {
            (_, Event::Data(d)) if d.is_empty() => {}
            (Some(Event::Data(prev)), Event::Data(d)) => prev.extend_from_slice(&d),
            (_, event) => expected.push(event),
        }
    }
    let got = decode(role, 16 << 20, [wire.as_slice()]);
    assert_eq!(got.end, Ok(closed));
    assert_eq!(got.events, expected);
    Ok(())
}

/// Encodes one frame as the peer of `role` would: a client masks.
fn send(
    wire: &mut Vec<u8>,
    role: Role,
    op: OpCode,
    payload: &[u8],
    u: &mut Unstructured<'_>,
) -> Result<()> {
    let mask = match role {
        Role::Server => Some(u.arbitrary::<[u8; 4]>()?),
        Role::Client => None,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut head, op, payload.len(), mask);
    wire.extend_from_slice(&head[MAX_HEADER_LEN - n..]);
    let start = wire.len();
    wire.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut wire[start..], key, 0);
    }
    Ok(())
}
