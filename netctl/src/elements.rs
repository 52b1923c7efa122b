//! Adding addresses to a sandbox's answer sets (`allow_dns4/6`) over a
//! netlink socket kept open in its namespace.
//!
//! A DNS answer is held until its addresses are in the kernel, so this is
//! on the answer's path: spawning `nft` costs about 2.4 ms, a netlink batch
//! on an open socket a few tens of microseconds. The socket is made by a
//! thread that entered the namespace (a netlink socket belongs to the
//! namespace it was created in) and is then used from any thread.
//! Messages are built with netlink-packet-netfilter (typed nf_tables
//! messages), never from text.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
    SetElementMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::netns::{self, NetnsError};
use crate::ruleset::TABLE;

/// nfnetlink's nf_tables subsystem, named in a batch's `res_id`.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// How long a write may wait for the kernel's answer (it answers within
/// the send; this only bounds a kernel that does not).
const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest answer we read: an ack or an error echoing our request.
const RECV_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ElementError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("netlink in {netns}: {message}")]
    Io { netns: PathBuf, message: String },
    #[error("add elements to {set} in {netns}: {source}")]
    Refused {
        netns: PathBuf,
        set: &'static str,
        source: std::io::Error,
    },
}

/// One address and how long it stays in the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element {
    pub addr: IpAddr,
    pub timeout: Duration,
}

/// An open nf_tables netlink socket in one sandbox's namespace.
pub struct ElementWriter {
    netns: PathBuf,
    socket: Mutex<Socket>,
    sequence: AtomicU32,
}

impl ElementWriter {
    /// Opens the socket inside the namespace at `netns`.
    pub async fn open(netns: &Path) -> Result<Self, ElementError> {
        let path = netns.to_path_buf();
        let socket = netns::run_in(netns, || -> std::io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_NETFILTER)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            set_receive_timeout(&socket, ACK_TIMEOUT)?;
            Ok(socket)
        })
        .await?
        .map_err(|e| ElementError::Io {
            netns: path.clone(),
            message: format!("open: {e}"),
        })?;
        Ok(Self {
            netns: path,
            socket: Mutex::new(socket),
            sequence: AtomicU32::new(1),
        })
    }

    /// Adds `elements` to `set` (in our table) in one transaction, or
    /// refreshes their timeouts when they are there already. Returns once
    /// the kernel has committed them. Blocking, but only for the syscalls:
    /// the kernel processes a batch within the send.
    pub fn add(&self, set: &'static str, elements: &[Element]) -> Result<(), ElementError> {
        if elements.is_empty() {
            return Ok(());
        }
        let first = self.sequence.fetch_add(3, Ordering::Relaxed);
        let request = batch(first, set, elements);
        let io = |message: String| ElementError::Io {
            netns: self.netns.clone(),
            message,
        };
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        socket
            .send(&request, 0)
            .map_err(|e| io(format!("send: {e}")))?;
        let wanted = first.wrapping_add(1);
        let mut buffer = vec![0u8; RECV_BUFFER];
        loop {
            let size = socket
                .recv(&mut &mut buffer[..], 0)
                .map_err(|e| io(format!("receive: {e}")))?;
            let mut offset = 0;
            while offset < size {
                let message =
                    NetlinkMessage::<NetfilterMessage>::deserialize(&buffer[offset..size])
                        .map_err(|e| io(format!("parse answer: {e}")))?;
                let length = message.header.length as usize;
                if message.header.sequence_number == wanted {
                    if let NetlinkPayload::Error(error) = &message.payload {
                        return match error.code {
                            None => Ok(()),
                            Some(code) => Err(ElementError::Refused {
                                netns: self.netns.clone(),
                                set,
                                source: std::io::Error::from_raw_os_error(-code.get()),
                            }),
                        };
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

/// Batch begin, the elements (acknowledged), batch end: one transaction.
fn batch(first: u32, set: &'static str, elements: &[Element]) -> Vec<u8> {
    let control = |inner: ControlMessage, sequence: u32| {
        message(
            NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
                inner,
            ),
            NLM_F_REQUEST,
            sequence,
        )
    };
    let list = elements
        .iter()
        .map(|e| {
            let key = match e.addr {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            ListAttribute::Element(vec![
                SetElementAttribute::Key(DataAttribute::Value(key)),
                SetElementAttribute::Timeout(e.timeout.as_millis().max(1) as u64),
            ])
        })
        .collect();
    let add = message(
        NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
            NfTablesMessage::NewSetElement(SetElementMessage {
                attributes: vec![
                    SetElementList::Table(TABLE.to_owned()),
                    SetElementList::Set(set.to_owned()),
                    SetElementList::Elements(list),
                ],
            }),
        ),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
        first.wrapping_add(1),
    );
    let mut out = control(ControlMessage::BatchBegin, first);
    out.extend(add);
    out.extend(control(ControlMessage::BatchEnd, first.wrapping_add(2)));
    out
}

fn message(payload: NetfilterMessage, flags: u16, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    packet.finalize();
    let mut buffer = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buffer);
    buffer
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized timeval.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespace of our own with a timeout set, removed on drop.
    struct Scratch(String);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    fn sh(cmd: &str) -> bool {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .is_ok_and(|s| s.success())
    }

    #[tokio::test]
    async fn elements_reach_the_kernel_with_their_timeouts() {
        let name = format!("nce{}", std::process::id());
        if !sh(&format!("ip netns add {name} 2>/dev/null")) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to create namespaces (run as root)"
            );
            return;
        }
        let _scratch = Scratch(name.clone());
        assert!(sh(&format!(
            "ip netns exec {name} nft 'add table inet {TABLE}; add set inet {TABLE} s4 {{ type ipv4_addr; flags timeout; }}; add set inet {TABLE} s6 {{ type ipv6_addr; flags timeout; }}'"
        )));
        let writer = ElementWriter::open(Path::new(&format!("/run/netns/{name}")))
            .await
            .unwrap();
        let minute = Duration::from_secs(60);
        let v4 = [
            Element {
                addr: "192.0.2.7".parse().unwrap(),
                timeout: minute,
            },
            Element {
                addr: "192.0.2.8".parse().unwrap(),
                timeout: minute * 2,
            },
        ];
        writer.add("s4", &v4).unwrap();
        // Again: a refresh, not an error.
        writer.add("s4", &v4).unwrap();
        writer
            .add(
                "s6",
                &[Element {
                    addr: "2001:db8::7".parse().unwrap(),
                    timeout: minute,
                }],
            )
            .unwrap();
        let listing = std::process::Command::new("ip")
            .args([
                "netns", "exec", &name, "nft", "list", "table", "inet", TABLE,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(text.contains("192.0.2.7 timeout 1m"), "{text}");
        assert!(text.contains("192.0.2.8 timeout 2m"), "{text}");
        assert!(text.contains("2001:db8::7 timeout 1m"), "{text}");
        // A set that is not there is an error naming it, not a hang.
        let e = writer.add("missing", &v4).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
