//! A DNS client for the netctl DNS tests: queries from inside a test
//! namespace (UDP and TCP), answers as a client sees them, and the helpers
//! around dnsmasq the tests share.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::netctl_support::{in_netns, World, WorldOptions};

/// Any address: the sandbox's port-53 traffic goes to netctl whatever the
/// destination. This one is the "internet" namespace's own resolver.
pub const RESOLVER: &str = "198.51.100.53:53";
/// An address no resolver listens on: still answered (redirected).
pub const NOWHERE: &str = "203.0.113.99:53";

/// An answer as a client sees it.
#[derive(Debug)]
pub struct Answer {
    pub code: ResponseCode,
    pub addrs: Vec<IpAddr>,
    pub took: Duration,
}

pub fn query_message(name: &str, kind: RecordType) -> Vec<u8> {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).expect("name"), kind));
    m.to_vec().expect("encode")
}

pub fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos())
        & 0xffff) as u16
}

pub fn parse(bytes: &[u8], took: Duration) -> Answer {
    let m = Message::from_vec(bytes).expect("a DNS answer");
    let addrs = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    Answer {
        code: m.metadata.response_code,
        addrs,
        took,
    }
}

/// Asks over UDP from inside the sandbox.
pub fn ask(w: &World, server: &str, name: &str, kind: RecordType) -> Answer {
    let server: SocketAddr = server.parse().expect("server");
    let query = query_message(name, kind);
    w.probe.run(move || udp_query(server, &query))
}

/// Asks over UDP from inside the namespace at `ns_path`.
pub fn ask_from(ns_path: &str, server: &str, name: &str) -> Answer {
    let server: SocketAddr = server.parse().expect("server");
    let query = query_message(name, RecordType::A);
    in_netns(ns_path, move || udp_query(server, &query))
}

pub fn udp_query(server: SocketAddr, query: &[u8]) -> Answer {
    let started = Instant::now();
    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    sock.send_to(query, server).expect("send");
    let mut buf = vec![0u8; 65_535];
    let n = sock.recv(&mut buf).expect("an answer within 5 s");
    parse(&buf[..n], started.elapsed())
}

/// Asks over TCP from inside the sandbox.
pub fn ask_tcp(w: &World, server: &str, name: &str, kind: RecordType) -> Answer {
    let server: SocketAddr = server.parse().expect("server");
    let query = query_message(name, kind);
    w.probe.run(move || {
        let started = Instant::now();
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        s.write_all(&framed).expect("send");
        let mut len = [0u8; 2];
        s.read_exact(&mut len).expect("length");
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).expect("answer");
        parse(&buf, started.elapsed())
    })
}

pub fn world_with_dns_args(args: &[String]) -> World {
    World::with(WorldOptions {
        dns_args: args.to_vec(),
        ..WorldOptions::default()
    })
}

/// What dnsmasq logged (`--log-queries`), once it had time to write it.
pub fn query_log(path: &std::path::Path) -> String {
    std::thread::sleep(Duration::from_millis(200));
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn addr_of(a: &Answer) -> String {
    a.addrs
        .first()
        .map(ToString::to_string)
        .expect("an address")
}

pub fn wait_for_answer(w: &World, name: &str, want: &str) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = ask(w, RESOLVER, name, RecordType::A);
        if a.addrs.first().map(ToString::to_string).as_deref() == Some(want) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {want}: {a:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
