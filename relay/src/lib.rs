//! The TCP⇄WebSocket relay shared by both ends of the tunnel: the agent
//! (WebSocket server, relaying to `127.0.0.1:N`) and the `sbx` client
//! (WebSocket client, relaying a local TCP connection).
//!
//! Framing is done here rather than through a message-oriented WebSocket
//! library for three reasons: payload bytes go straight from the socket
//! buffer to the other socket without a per-message allocation; a Close
//! frame can act as a half-close (the sender has finished, the receiver may
//! still send until its own side ends), which request/response protocols
//! need; and an idle tunnel holds no buffer at all, so thousands of open
//! tunnels cost little memory. The HTTP upgrade itself stays with hyper (agent)
//! and a small handshake (client), checked against tungstenite in the tests.

mod decode;
pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod mask;
mod relay;

pub use relay::{relay, Outcome, RelayConfig, RelayError, Role};
