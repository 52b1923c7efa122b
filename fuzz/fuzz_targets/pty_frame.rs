//! The PTY WebSocket (agent/src/pty/ws.rs): the bytes a client sends, read
//! by tungstenite with the agent's limits, then each binary message by the
//! agent's one-byte-opcode parser.
//!
//! Properties: the parser reads exactly the documented layout (0x00 data is
//! the rest of the frame, 0x01 resize is cols then rows big-endian, 0x02
//! ready, anything else ignored); a resize is accepted iff it is within the
//! documented bounds; the agent's own frames parse back to what it encoded.
#![no_main]

use std::io::{self, Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use sbx_agent::fuzzing::{
    check_terminal_size, parse_client_frame, pty_frame, pty_ws_config, ClientFrame,
};
use sbx_proto::api::{pty_op, PTY_MAX_COLS, PTY_MAX_ROWS};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// The client's bytes in, the server's answers discarded.
struct Peer(Cursor<Vec<u8>>);

impl Read for Peer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Peer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    check_frame(data);
    check_roundtrip(data);
    let mut ws = WebSocket::from_raw_socket(
        Peer(Cursor::new(data.to_vec())),
        Role::Server,
        Some(pty_ws_config()),
    );
    for _ in 0..64 {
        match ws.read() {
            Ok(Message::Binary(frame)) => check_frame(&frame),
            Ok(_) => {}
            Err(_) => break,
        }
    }
});

fn check_frame(data: &[u8]) {
    match parse_client_frame(data) {
        ClientFrame::Data(input) => {
            assert_eq!(data[0], pty_op::DATA);
            assert_eq!(input, &data[1..]);
        }
        ClientFrame::Resize { rows, cols } => {
            assert_eq!(data[0], pty_op::RESIZE);
            assert!(data.len() >= 5);
            assert_eq!(cols, u16::from_be_bytes([data[1], data[2]]));
            assert_eq!(rows, u16::from_be_bytes([data[3], data[4]]));
            let in_bounds =
                (1..=PTY_MAX_ROWS).contains(&rows) && (1..=PTY_MAX_COLS).contains(&cols);
            assert_eq!(
                check_terminal_size(rows, cols).is_ok(),
                in_bounds,
                "{rows}x{cols}"
            );
        }
        ClientFrame::Ready => assert_eq!(data[0], pty_op::READY),
        ClientFrame::Ignored => assert!(
            data.is_empty()
                || ![pty_op::DATA, pty_op::RESIZE, pty_op::READY].contains(&data[0])
                || (data[0] == pty_op::RESIZE && data.len() < 5)
        ),
    }
}

fn check_roundtrip(data: &[u8]) {
    let out = pty_frame(pty_op::DATA, data);
    assert_eq!(parse_client_frame(&out), ClientFrame::Data(data));
    if let [c0, c1, r0, r1, ..] = *data {
        let out = pty_frame(pty_op::RESIZE, &[c0, c1, r0, r1]);
        let expected = ClientFrame::Resize {
            cols: u16::from_be_bytes([c0, c1]),
            rows: u16::from_be_bytes([r0, r1]),
        };
        assert_eq!(parse_client_frame(&out), expected);
    }
}
