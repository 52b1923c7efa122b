//! The forwarder's sockets inside a sandbox's namespace: UDP and TCP on
//! the wildcard addresses (IPv4 and IPv6), where the sandbox's redirected
//! port-53 traffic arrives.
//!
//! A redirected datagram arrives addressed to the sandbox's own address
//! (127.0.0.1 for its own processes, the tap's address for its microVM),
//! and the answer must leave from exactly that address or conntrack cannot
//! map it back to the resolver the client asked. So UDP is read and
//! written with IP_PKTINFO / IPV6_PKTINFO (tokio's UdpSocket does not
//! expose ancillary data; nix's recvmsg/sendmsg do).

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};
use tokio::io::unix::AsyncFd;

use crate::netns::{self, NetnsError};

/// The sockets of one sandbox's forwarder.
pub struct Sockets {
    pub udp: Vec<AsyncFd<UdpSocket>>,
    pub tcp: Vec<tokio::net::TcpListener>,
}

/// Binds the forwarder's sockets inside the namespace at `netns`. IPv6 is
/// optional (a namespace may have it disabled); IPv4 is not.
pub async fn bind(netns: &Path, port: u16) -> Result<Sockets, String> {
    let made = netns::run_in(netns, move || -> Result<_, String> {
        let v4 = bind_pair(IpAddr::from([0u8; 4]), port)
            .map_err(|e| format!("bind the DNS forwarder to port {port}: {e}"))?;
        let v6 = bind_pair(IpAddr::from([0u16; 8]), port).ok();
        Ok((v4, v6))
    })
    .await
    .map_err(|e: NetnsError| e.to_string())??;
    let (v4, v6) = made;
    let mut sockets = Sockets {
        udp: Vec::new(),
        tcp: Vec::new(),
    };
    for (udp, tcp) in std::iter::once(v4).chain(v6) {
        // SAFETY: the AsyncFd owns the socket, so its descriptor stays
        // open (and is not reused) for as long as it is registered.
        let registered =
            unsafe { AsyncFd::register(udp) }.map_err(|e| format!("register UDP socket: {e}"))?;
        sockets.udp.push(registered);
        sockets.tcp.push(
            tokio::net::TcpListener::from_std(tcp)
                .map_err(|e| format!("register TCP listener: {e}"))?,
        );
    }
    Ok(sockets)
}

fn bind_pair(ip: IpAddr, port: u16) -> std::io::Result<(UdpSocket, TcpListener)> {
    let addr = SocketAddr::new(ip, port);
    let udp = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let tcp = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if ip.is_ipv6() {
        udp.set_only_v6(true)?;
        tcp.set_only_v6(true)?;
        setsockopt(&udp, sockopt::Ipv6RecvPacketInfo, &true).map_err(std::io::Error::from)?;
    } else {
        setsockopt(&udp, sockopt::Ipv4PacketInfo, &true).map_err(std::io::Error::from)?;
    }
    tcp.set_reuse_address(true)?;
    udp.bind(&addr.into())?;
    tcp.bind(&addr.into())?;
    tcp.listen(128)?;
    udp.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    Ok((udp.into(), tcp.into()))
}

/// A datagram and where it came from and went to.
pub struct Datagram {
    pub len: usize,
    pub from: SocketAddr,
    /// The local address it was sent to (what the answer leaves from).
    pub to: Option<IpAddr>,
}

/// Receives one datagram into `buffer`.
pub async fn recv(socket: &AsyncFd<UdpSocket>, buffer: &mut [u8]) -> std::io::Result<Datagram> {
    loop {
        let mut guard = socket.readable().await?;
        match guard.try_io(|s| recv_now(s.get_ref(), buffer)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

fn recv_now(socket: &UdpSocket, buffer: &mut [u8]) -> std::io::Result<Datagram> {
    let mut space = nix::cmsg_space!(libc::in6_pktinfo);
    let mut iov = [IoSliceMut::new(buffer)];
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    let mut to = None;
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        match cmsg {
            ControlMessageOwned::Ipv4PacketInfo(info) => {
                to = Some(IpAddr::from(
                    u32::from_be(info.ipi_addr.s_addr).to_be_bytes(),
                ));
            }
            ControlMessageOwned::Ipv6PacketInfo(info) => {
                to = Some(IpAddr::from(info.ipi6_addr.s6_addr));
            }
            _ => {}
        }
    }
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from((v4.ip(), v4.port())))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
                })
        })
        .ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
    Ok(Datagram {
        len: msg.bytes,
        from,
        to,
    })
}

/// Sends `answer` to `to`, from the local address `from`.
pub async fn send(
    socket: &AsyncFd<UdpSocket>,
    answer: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> std::io::Result<()> {
    loop {
        let mut guard = socket.writable().await?;
        match guard.try_io(|s| send_now(s.get_ref(), answer, to, from)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

fn send_now(
    socket: &UdpSocket,
    answer: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> std::io::Result<()> {
    let iov = [IoSlice::new(answer)];
    let dest = SockaddrStorage::from(to);
    let sent = match from {
        Some(IpAddr::V4(src)) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(src.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            sendmsg(
                socket.as_raw_fd(),
                &iov,
                &[ControlMessage::Ipv4PacketInfo(&info)],
                MsgFlags::empty(),
                Some(&dest),
            )
        }
        Some(IpAddr::V6(src)) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: src.octets(),
                },
                ipi6_ifindex: 0,
            };
            sendmsg(
                socket.as_raw_fd(),
                &iov,
                &[ControlMessage::Ipv6PacketInfo(&info)],
                MsgFlags::empty(),
                Some(&dest),
            )
        }
        None => sendmsg(
            socket.as_raw_fd(),
            &iov,
            &[],
            MsgFlags::empty(),
            Some(&dest),
        ),
    };
    sent.map(drop).map_err(std::io::Error::from)
}
