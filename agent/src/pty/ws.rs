//! The PTY WebSocket: binary frames with a one-byte opcode.
//!
//! In: `0x00` data, `0x01` resize (cols u16 BE, rows u16 BE), `0x02` ready.
//! Out: `0x00` data, `0x03` exit (i32 BE), then a close with reason
//! `exit:<code>`. Output is held until the client sends READY, so nothing
//! printed before the client was listening is lost (up to the buffer bound).

use std::sync::Arc;

use bytes::{BufMut as _, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use sbx_proto::api::pty_op;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{Out, Session};

/// Output chunks queued for a client before the reader waits for it.
const OUT_QUEUE: usize = 32;
/// Input frames queued for the terminal before the client is paused.
const IN_QUEUE: usize = 64;
/// Largest frame a client may send (input is typed, not uploaded).
const MAX_IN_FRAME: usize = 1024 * 1024;

/// The limits on what a client may send.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_frame_size(Some(MAX_IN_FRAME))
        .max_message_size(Some(MAX_IN_FRAME))
}

/// An outgoing frame: the opcode, then the payload.
pub fn frame(op: u8, payload: &[u8]) -> Message {
    let mut buf = BytesMut::with_capacity(payload.len() + 1);
    buf.put_u8(op);
    buf.put_slice(payload);
    Message::Binary(buf.freeze())
}

/// What a binary frame from the client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// Terminal input.
    Data(&'a [u8]),
    Resize {
        rows: u16,
        cols: u16,
    },
    Ready,
    /// Empty, an unknown opcode or a short resize: ignored, as a terminal
    /// ignores what it does not understand.
    Ignored,
}

/// Reads one binary frame from the client (the layout is in the module doc).
pub fn parse_client_frame(data: &[u8]) -> ClientFrame<'_> {
    match data.split_first() {
        Some((&pty_op::DATA, input)) => ClientFrame::Data(input),
        Some((&pty_op::RESIZE, &[c0, c1, r0, r1, ..])) => ClientFrame::Resize {
            cols: u16::from_be_bytes([c0, c1]),
            rows: u16::from_be_bytes([r0, r1]),
        },
        Some((&pty_op::READY, _)) => ClientFrame::Ready,
        _ => ClientFrame::Ignored,
    }
}

/// Serves one attached client until it leaves or the program exits.
pub async fn serve(session: Arc<Session>, upgraded: hyper::upgrade::Upgraded) {
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config()))
        .await;
    let (mut sink, mut incoming) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Out>(OUT_QUEUE);
    // Input is written by its own task: a program that stops reading its
    // input (because its output is not being drained) must not stop this
    // loop from draining that output.
    let (input_tx, mut input_rx) = mpsc::channel::<bytes::Bytes>(IN_QUEUE);
    let writer_session = session.clone();
    let writer = tokio::spawn(async move {
        while let Some(data) = input_rx.recv().await {
            if let Err(err) = writer_session.write_input(&data).await {
                tracing::debug!(session = %writer_session.id, error = %err, "terminal input failed");
            }
        }
    });
    let mut ready = false;
    let mut exit_code: Option<i32> = None;

    loop {
        tokio::select! {
            // Reading from the client pauses while its input is queued up.
            msg = incoming.next(), if input_tx.capacity() > 0 => match msg {
                Some(Ok(Message::Binary(data))) => match parse_client_frame(&data) {
                    ClientFrame::Data(input) => {
                        // Capacity was checked above and this is the only sender.
                        let _ = input_tx.try_send(data.slice_ref(input));
                    }
                    ClientFrame::Resize { rows, cols } => {
                        if let Err(err) = session.resize(rows, cols) {
                            tracing::debug!(session = %session.id, error = %err.message, "resize refused");
                        }
                    }
                    ClientFrame::Ready if !ready => {
                        ready = true;
                        let (pending, exit) = session.attach(tx.clone());
                        if !pending.is_empty() && sink.send(frame(pty_op::DATA, &pending)).await.is_err() {
                            break;
                        }
                        if let Some(code) = exit {
                            exit_code = Some(code);
                            break;
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                // Text frames, pings (answered by tungstenite) and pongs.
                Some(Ok(_)) => {}
            },
            out = rx.recv() => match out {
                Some(Out::Data(data)) => {
                    if sink.send(frame(pty_op::DATA, &data)).await.is_err() {
                        break;
                    }
                }
                Some(Out::Exit(code)) => {
                    exit_code = Some(code);
                    break;
                }
                None => break,
            },
        }
    }
    session.detach(&tx);
    // Input already queued still reaches the program; the writer ends once
    // it is written (or the session is gone).
    drop(input_tx);
    drop(writer);
    if let Some(code) = exit_code {
        let _ = sink.send(frame(pty_op::EXIT, &code.to_be_bytes())).await;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: format!("exit:{code}").into(),
            })))
            .await;
        // Let the client's close frame come back before dropping the socket.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Some(Ok(_)) = incoming.next().await {}
        })
        .await;
    }
}
