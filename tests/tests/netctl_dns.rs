//! Domains enforced through the sandbox's own DNS (SPEC 4): netctl's
//! forwarder answers every port-53 query the sandbox sends, puts an allowed
//! answer's addresses into the sandbox's sets before releasing it, answers
//! NXDOMAIN for denied names, and refuses DNS over TLS. Real dnsmasq, real
//! TCP, real nftables.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use sbx_tests::netctl_support::*;
use sbx_tests::netns::require_netns;

/// Any address: the sandbox's port-53 traffic goes to netctl whatever the
/// destination. This one is the "internet" namespace's own resolver.
const RESOLVER: &str = "198.51.100.53:53";
/// An address no resolver listens on: still answered (redirected).
const NOWHERE: &str = "203.0.113.99:53";

/// An answer as a client sees it.
#[derive(Debug)]
struct Answer {
    code: ResponseCode,
    addrs: Vec<IpAddr>,
    took: Duration,
}

fn query_message(name: &str, kind: RecordType) -> Vec<u8> {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).expect("name"), kind));
    m.to_vec().expect("encode")
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos())
        & 0xffff) as u16
}

fn parse(bytes: &[u8], took: Duration) -> Answer {
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
fn ask(w: &World, server: &str, name: &str, kind: RecordType) -> Answer {
    let server: SocketAddr = server.parse().expect("server");
    let query = query_message(name, kind);
    w.probe.run(move || udp_query(server, &query))
}

/// Asks over UDP from inside the namespace at `ns_path`.
fn ask_from(ns_path: &str, server: &str, name: &str) -> Answer {
    let server: SocketAddr = server.parse().expect("server");
    let query = query_message(name, RecordType::A);
    in_netns(ns_path, move || udp_query(server, &query))
}

fn udp_query(server: SocketAddr, query: &[u8]) -> Answer {
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
fn ask_tcp(w: &World, server: &str, name: &str, kind: RecordType) -> Answer {
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

fn world_with_dns_args(args: &[String]) -> World {
    World::with(WorldOptions {
        dns_args: args.to_vec(),
        ..WorldOptions::default()
    })
}

/// What dnsmasq logged (`--log-queries`), once it had time to write it.
fn query_log(path: &std::path::Path) -> String {
    std::thread::sleep(Duration::from_millis(200));
    std::fs::read_to_string(path).unwrap_or_default()
}

fn addr_of(a: &Answer) -> String {
    a.addrs
        .first()
        .map(ToString::to_string)
        .expect("an address")
}

#[test]
fn an_answer_for_an_allowed_name_opens_exactly_its_addresses() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.dns
        .set_records(&[(V4_A, "app.cdn.test"), (V4_B, "other.test")]);
    // A wildcard: nothing is resolved in advance, only answers open the way.
    w.put_ok(
        "sb",
        r#"{"allow_internet_access": false, "allow_out": ["*.cdn.test"]}"#,
    );
    w.assert_refused(V4_A);
    // The sandbox asks an address of its own choosing; netctl answers.
    let a = ask(&w, NOWHERE, "app.cdn.test", RecordType::A);
    assert_eq!(a.code, ResponseCode::NoError, "{a:?}");
    assert_eq!(addr_of(&a), V4_A);
    w.assert_reachable(V4_A);
    // What another resolver would have said for the same name stays shut.
    w.assert_refused(V4_B);
    // Not under the wildcard: NXDOMAIN, and the apex is not covered.
    assert_eq!(
        ask(&w, RESOLVER, "other.test", RecordType::A).code,
        ResponseCode::NXDomain
    );
    assert_eq!(
        ask(&w, RESOLVER, "cdn.test", RecordType::A).code,
        ResponseCode::NXDomain
    );
    // `show` lists what the sandbox resolved.
    let view = w.api().call("GET", "/v1/sandboxes/sb", None).json();
    let answers = view["answers"].to_string();
    assert!(
        answers.contains("app.cdn.test") && answers.contains(V4_A),
        "{view}"
    );
}

/// A second resolver in the internet namespace: the one the sandbox thinks
/// it asks.
const OTHER_RESOLVER_IP: &str = "198.51.100.54";

#[test]
fn two_resolvers_disagree_and_only_the_answer_the_sandbox_got_opens() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.internet.ip(&[
        "addr",
        "add",
        &format!("{OTHER_RESOLVER_IP}/32"),
        "dev",
        "lo",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("other-queries.log");
    let other = Dns::start_at(
        &w.internet,
        dir.path(),
        &[OTHER_RESOLVER_IP],
        1,
        &[
            "--log-queries".to_owned(),
            format!("--log-facility={}", log.display()),
        ],
    );
    other.set_records(&[(V4_B, "app.test")]);
    // netctl's upstream says V4_C when the policy is set and V4_A by the
    // time the sandbox asks: what opens is the answer, not a guess.
    w.dns.set_records(&[(V4_C, "app.test")]);
    w.put_ok(
        "sb",
        r#"{"allow_internet_access": false, "allow_out": ["app.test"]}"#,
    );
    w.dns.set_records(&[(V4_A, "app.test")]);
    let other_resolver = format!("{OTHER_RESOLVER_IP}:53");
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        // The sandbox asks the resolver it believes is its own.
        let a = ask(&w, &other_resolver, "app.test", RecordType::A);
        if a.addrs.first().map(ToString::to_string).as_deref() == Some(V4_A) {
            break a;
        }
        assert!(Instant::now() < deadline, "never answered {V4_A}: {a:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(answer.code, ResponseCode::NoError);
    w.assert_reachable(V4_A);
    // What the other resolver would have said stays shut.
    w.assert_refused(V4_B);
    let logged = query_log(&log);
    assert!(
        !logged.contains("app.test"),
        "the sandbox's query reached the resolver it addressed: {logged}"
    );
}

#[test]
fn a_vm_behind_the_tap_is_answered_and_judged_the_same() {
    if !require_netns() {
        return;
    }
    // A "VM" behind the sandbox namespace: its queries are forwarded
    // traffic, redirected in prerouting on the tap (`dns_in`).
    let w = World::new();
    let (vm, tap) = w.vm_behind_sandbox();
    w.dns
        .set_records(&[(V4_A, "app.cdn.test"), (V4_B, "other.test")]);
    let body = format!(
        r#"{{"netns":"{}","iface":"{tap}","network":{{"allow_internet_access":false,"allow_out":["*.cdn.test"]}}}}"#,
        w.sandbox.name()
    );
    let r = w.api().call("PUT", "/v1/sandboxes/sb", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    let from_vm = |ip: &str, port: u16| {
        let addr = SocketAddr::new(ip.parse().expect("ip"), port);
        in_netns(&vm.path(), move || probe_tcp(addr, Duration::from_secs(2)))
    };
    assert!(matches!(from_vm(V4_A, PORT).0, Outcome::Refused(_)));
    // An address nothing answers on (outside the VM's own /26).
    let a = ask_from(&vm.path(), "198.51.100.99:53", "app.cdn.test");
    assert_eq!(a.code, ResponseCode::NoError, "{a:?}");
    assert_eq!(addr_of(&a), V4_A);
    assert_eq!(from_vm(V4_A, PORT).0, Outcome::Ok);
    assert!(matches!(from_vm(V4_B, PORT).0, Outcome::Refused(_)));
    assert_eq!(
        ask_from(&vm.path(), RESOLVER, "other.test").code,
        ResponseCode::NXDomain
    );
    let (dot, took) = from_vm(V4_A, 853);
    assert!(matches!(dot, Outcome::Refused(_)), "{dot:?}");
    assert!(took < Duration::from_millis(200), "{took:?}");
}

#[test]
fn an_answer_whose_addresses_cannot_be_written_is_servfail() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.dns.set_records(&[(V4_A, "app.cdn.test")]);
    let policy = r#"{"allow_internet_access": false, "allow_out": ["*.cdn.test"]}"#;
    w.put_ok("sb", policy);
    assert_eq!(
        addr_of(&ask(&w, RESOLVER, "app.cdn.test", RecordType::A)),
        V4_A
    );
    // Someone removes the answer sets behind netctl's back (the redirect
    // stays): an answer can no longer be put in force, so the client gets
    // SERVFAIL at once, never an answer whose addresses would be refused.
    // (As JSON: `policy` is a keyword of nft's text syntax.)
    let t = r#""family": "inet", "table": "sbx_netctl""#;
    w.sandbox.sh(&format!(
        r#"echo '{{"nftables": [
            {{"flush": {{"chain": {{{t}, "name": "policy"}}}}}},
            {{"delete": {{"set": {{{t}, "name": "allow_dns4"}}}}}},
            {{"delete": {{"set": {{{t}, "name": "allow_dns6"}}}}}}]}}' | nft -j -f -"#
    ));
    let a = ask(&w, RESOLVER, "app.cdn.test", RecordType::A);
    assert_eq!(a.code, ResponseCode::ServFail, "{a:?}");
    assert!(a.addrs.is_empty(), "{a:?}");
    assert!(a.took < Duration::from_secs(1), "{a:?}");
    let metrics = w.api().call("GET", "/metrics", None).body;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("netctl_dns_queries_total{verdict=\"servfail\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    // The same policy again repairs the table, and answers flow again.
    w.put_ok("sb", policy);
    let a = ask(&w, RESOLVER, "app.cdn.test", RecordType::A);
    assert_eq!(addr_of(&a), V4_A, "{a:?}");
    w.assert_reachable(V4_A);
    w.assert_refused(V4_B);
}

#[test]
fn an_answer_held_past_its_bound_is_servfail_not_late() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.internet
        .ip(&["route", "add", "local", "198.18.0.0/22", "dev", "lo"]);
    let names: Vec<String> = (0..1000).map(|i| format!("n{i}.hold.test")).collect();
    let addrs: Vec<String> = (0..1000)
        .map(|i| format!("198.18.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let records: Vec<(&str, &str)> = addrs
        .iter()
        .zip(&names)
        .map(|(a, n)| (a.as_str(), n.as_str()))
        .collect();
    w.dns.set_records(&records);
    w.put_ok(
        "sb",
        r#"{"allow_internet_access": false, "allow_out": ["*.hold.test"]}"#,
    );
    // One transaction of a million elements, in a table of its own in the
    // sandbox's namespace, holds nf_tables' lock there for most of a
    // second (0.78 s of kernel time on the 2-core CI VM): every set write
    // of netctl's waits for it meanwhile.
    let bulk = w.dir.path().join("bulk.nft");
    let mut text =
        String::from("table inet bulk {\n set s { type ipv4_addr; size 2000000; elements = {\n");
    for i in 0u32..1_000_000 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        text.push_str(&format!("{ip},\n"));
    }
    text.push_str("10.255.255.255 } }\n}\n");
    std::fs::write(&bulk, text).expect("write the bulk ruleset");
    let mut loader = sbx_tests::process::ChildGuard::spawn(
        "nft bulk load",
        w.sandbox
            .command("nft")
            .arg("-f")
            .arg(&bulk)
            .stdout(std::process::Stdio::null()),
    );
    // Queries one after another until the load is done; every allowed
    // answer is written before it is released, a name seen before too.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in names.iter().cycle() {
        if Instant::now() > deadline || loader.child_mut().try_wait().ok().flatten().is_some() {
            break;
        }
        let a = ask(&w, RESOLVER, name, RecordType::A);
        if a.code == ResponseCode::NoError {
            // What was released is in force at once.
            let addr = SocketAddr::new(*a.addrs.first().expect("an address"), PORT);
            let (outcome, _) = w.probe.run(move || probe_tcp(addr, Duration::from_secs(3)));
            assert_eq!(outcome, Outcome::Ok, "{name} -> {addr}");
        }
        seen.push((name.clone(), a));
    }
    let status = loader.wait_timeout(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "bulk load: {status:?}");
    w.sandbox.sh("nft delete table inet bulk");

    let servfails: Vec<&Answer> = seen
        .iter()
        .map(|(_, a)| a)
        .filter(|a| a.code == ResponseCode::ServFail)
        .collect();
    let slowest = seen
        .iter()
        .max_by_key(|(_, a)| a.took)
        .map(|(n, a)| format!("{n}: {a:?}"));
    assert!(
        !servfails.is_empty(),
        "no query met the held lock ({} asked; slowest {slowest:?})",
        seen.len()
    );
    for a in &servfails {
        // The bound (250 ms), not the lock's length, decides.
        assert!(
            a.took >= Duration::from_millis(200) && a.took < Duration::from_millis(750),
            "{a:?}"
        );
    }
    let slowest = seen.iter().map(|(_, a)| a.took).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_millis(750),
        "an answer took {slowest:?}"
    );
}

#[test]
fn denied_names_get_nxdomain_and_fail_at_once() {
    if !require_netns() {
        return;
    }
    let w = world_with_dns_args(&["--cname=alias.test,tracker.bad.test".to_owned()]);
    w.dns.set_records(&[
        (V4_C, "denied.test"),
        (V4_D, "tracker.bad.test"),
        (V4_A, "fine.test"),
    ]);
    w.put_ok(
        "sb",
        r#"{"allow_out": [], "deny_out": ["denied.test", "*.bad.test"]}"#,
    );
    let a = ask(&w, RESOLVER, "denied.test", RecordType::A);
    assert_eq!(a.code, ResponseCode::NXDomain, "{a:?}");
    assert!(a.took < Duration::from_millis(100), "{a:?}");
    assert_eq!(
        ask(&w, RESOLVER, "tracker.bad.test", RecordType::AAAA).code,
        ResponseCode::NXDomain
    );
    // A name that is fine itself but whose CNAME chain ends in a denied one.
    assert_eq!(
        ask(&w, RESOLVER, "alias.test", RecordType::A).code,
        ResponseCode::NXDomain
    );
    // Everything else is answered (allow_internet_access is true).
    let ok = ask(&w, RESOLVER, "fine.test", RecordType::A);
    assert_eq!(addr_of(&ok), V4_A);
    // The pre-resolved addresses stay refused for clients that hard-code them.
    w.assert_refused(V4_C);
}

#[test]
fn allowlist_mode_never_forwards_unlisted_names() {
    if !require_netns() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("queries.log");
    let w = world_with_dns_args(&[
        "--log-queries".to_owned(),
        format!("--log-facility={}", log.display()),
    ]);
    w.dns
        .set_records(&[(V4_A, "allowed.test"), (V4_B, "secret-data.exfil.test")]);
    w.put_ok(
        "sb",
        r#"{"allow_internet_access": false, "allow_out": ["allowed.test"]}"#,
    );
    let a = ask(&w, RESOLVER, "secret-data.exfil.test", RecordType::A);
    assert_eq!(a.code, ResponseCode::NXDomain, "{a:?}");
    let a = ask(&w, RESOLVER, "allowed.test", RecordType::A);
    assert_eq!(addr_of(&a), V4_A);
    w.assert_reachable(V4_A);
    let logged = query_log(&log);
    assert!(
        logged.contains("allowed.test"),
        "the allowed name was asked upstream: {logged}"
    );
    assert!(
        !logged.contains("exfil"),
        "an unlisted name reached the upstream resolver: {logged}"
    );
}

#[test]
fn tcp_large_answers_and_dot() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    // 60 addresses for one name: more than 512 bytes, so UDP truncates.
    let many: Vec<String> = (1..=60).map(|i| format!("198.18.0.{i}")).collect();
    let mut records: Vec<(&str, &str)> = many.iter().map(|a| (a.as_str(), "many.test")).collect();
    records.push((V4_A, "app.test"));
    w.dns.set_records(&records);
    w.put_ok(
        "sb",
        r#"{"allow_internet_access": false, "allow_out": ["app.test", "many.test"]}"#,
    );
    let a = ask_tcp(&w, RESOLVER, "app.test", RecordType::A);
    assert_eq!(addr_of(&a), V4_A, "DNS over TCP");
    let a = ask_tcp(&w, RESOLVER, "many.test", RecordType::A);
    assert_eq!(a.addrs.len(), 60, "{a:?}");
    // Over UDP the client sees a truncated answer or the whole one; either
    // way every address it can get is already allowed.
    let view = w.api().call("GET", "/v1/sandboxes/sb", None).json();
    assert_eq!(
        view["answers"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == "many.test"))
            .and_then(|r| r["addresses"].as_array())
            .map(Vec::len),
        Some(60),
        "{view}"
    );
    // DNS over TLS would bypass all this: refused at once.
    let dot: SocketAddr = format!("{V4_A}:853").parse().expect("addr");
    let (outcome, took) = w.probe.run(move || probe_tcp(dot, Duration::from_secs(2)));
    assert!(matches!(outcome, Outcome::Refused(_)), "{outcome:?}");
    assert!(took < Duration::from_millis(200), "{took:?}");
}

#[test]
fn every_answer_is_in_force_before_the_client_sees_it() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok(
        "sb",
        r#"{"allow_internet_access": false, "allow_out": ["*.rotate.test"]}"#,
    );
    // Rotating answers: the name moves between addresses; every address
    // the sandbox is told works at once, and the connection made under an
    // earlier answer keeps working after that answer changed.
    let targets = [V4_A, V4_B, V4_C, V4_D];
    let mut first: Option<TcpStream> = None;
    for (round, target) in targets.iter().cycle().take(12).enumerate() {
        w.dns.set_records(&[(target, "svc.rotate.test")]);
        let a = wait_for_answer(&w, "svc.rotate.test", target);
        let ip = addr_of(&a);
        let addr: SocketAddr = format!("{ip}:{PORT}").parse().expect("addr");
        let conn = w
            .probe
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
        let conn = conn
            .unwrap_or_else(|e| panic!("round {round}: {ip} refused right after the answer: {e}"));
        if first.is_none() {
            first = Some(conn);
        }
    }
    let mut first = first.expect("a connection");
    first.write_all(b"x").expect("old connection writes");
    let mut b = [0u8; 1];
    first
        .read_exact(&mut b)
        .expect("old connection still answers");

    // 1,000 rounds of query-then-connect-at-once, each name on an address
    // of its own (the internet namespace answers on all of 198.18.0.0/22),
    // so every round waits for its own set write.
    w.internet
        .ip(&["route", "add", "local", "198.18.0.0/22", "dev", "lo"]);
    let names: Vec<String> = (0..1000).map(|i| format!("n{i}.rotate.test")).collect();
    let addrs: Vec<String> = (0..1000)
        .map(|i| format!("198.18.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let records: Vec<(&str, &str)> = addrs
        .iter()
        .zip(&names)
        .map(|(a, n)| (a.as_str(), n.as_str()))
        .collect();
    w.dns.set_records(&records);
    std::thread::sleep(Duration::from_millis(300));
    let query_names = names.clone();
    let failures = w.probe.run(move || {
        let mut failures = Vec::new();
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let server: SocketAddr = RESOLVER.parse().expect("server");
        let mut buf = vec![0u8; 4096];
        for name in &query_names {
            let q = query_message(name, RecordType::A);
            sock.send_to(&q, server).expect("send");
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    failures.push(format!("{name}: no answer: {e}"));
                    continue;
                }
            };
            let a = parse(&buf[..n], Duration::ZERO);
            let Some(ip) = a.addrs.first() else {
                failures.push(format!("{name}: {:?}", a.code));
                continue;
            };
            let addr = SocketAddr::new(*ip, PORT);
            // A refusal is a reset at once; the timeout only has to outlast
            // one SYN retransmission (1 s) when a loaded machine lets the
            // echo server's accept queue overflow.
            if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                failures.push(format!("{name} -> {ip}: {e}"));
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    // Nothing was open before its answer: an address no one asked for is refused.
    w.assert_refused("198.18.3.251");
    let metrics = w.api().call("GET", "/metrics", None).body;
    assert!(
        metrics.contains("netctl_dns_hold_seconds_bucket"),
        "{metrics}"
    );
}

fn wait_for_answer(w: &World, name: &str, want: &str) -> Answer {
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

#[test]
fn a_dead_upstream_is_servfail_and_a_restart_keeps_everything() {
    if !require_netns() {
        return;
    }
    let mut w = World::new();
    w.dns.set_records(&[(V4_A, "app.test")]);
    w.put_ok(
        "sb",
        r#"{"allow_internet_access": false, "allow_out": ["*.app.test", "app.test"]}"#,
    );
    let a = ask(&w, RESOLVER, "app.test", RecordType::A);
    assert_eq!(addr_of(&a), V4_A);
    let addr: SocketAddr = format!("{V4_A}:{PORT}").parse().expect("addr");
    let mut conn = w
        .probe
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
        .expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");

    // netctl killed and restarted: the sets, the rules and the open
    // connection survive; DNS is answered again once the daemon is back.
    if let Some(d) = w.daemon.as_ref() {
        d.child.signal(libc::SIGKILL);
    }
    w.start_daemon();
    conn.write_all(b"y").expect("write after restart");
    let mut b = [0u8; 1];
    conn.read_exact(&mut b)
        .expect("the connection survived the restart");
    let a = ask(&w, RESOLVER, "app.test", RecordType::A);
    assert_eq!(addr_of(&a), V4_A, "answered again after the restart");

    // The upstream resolver killed: SERVFAIL within 2 s, not a hang.
    w.dns.stop();
    let a = ask(&w, RESOLVER, "x.app.test", RecordType::A);
    assert_eq!(a.code, ResponseCode::ServFail, "{a:?}");
    assert!(a.took < Duration::from_secs(2), "{a:?}");
}

#[test]
fn a_connection_outlives_its_answers_ttl() {
    if !require_netns() {
        return;
    }
    // TTL 1 s, grace 3 s: the element would expire after 4 s, but traffic
    // on the connection keeps it alive.
    let w = World::new();
    w.dns.set_records(&[(V4_A, "app.ttl.test")]);
    w.put_ok(
        "sb",
        r#"{"allow_internet_access": false, "allow_out": ["*.ttl.test"]}"#,
    );
    // A wildcard: only the answer opens the address (nothing pre-resolved).
    assert_eq!(
        addr_of(&ask(&w, RESOLVER, "app.ttl.test", RecordType::A)),
        V4_A
    );
    let addr: SocketAddr = format!("{V4_A}:{PORT}").parse().expect("addr");
    let mut conn = w
        .probe
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
        .expect("connect right after the answer");
    conn.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut b = [0u8; 1];
    for _ in 0..6 {
        conn.write_all(b"z").expect("write");
        conn.read_exact(&mut b).expect("echo");
        std::thread::sleep(Duration::from_secs(1));
    }
    // A tightening makes every connection be judged again: this one is
    // still allowed because its element is still there.
    w.put_ok(
        "sb",
        &format!(
            r#"{{"allow_internet_access": false, "allow_out": ["*.ttl.test"], "deny_out": ["{V4_D}"]}}"#
        ),
    );
    conn.write_all(b"z").expect("write after the tightening");
    conn.read_exact(&mut b)
        .expect("the connection outlived its answer's TTL and a new generation");
}

#[test]
fn the_forwarder_comes_and_goes_with_the_policy_s_domains() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.dns
        .set_records(&[(V4_A, "app.test"), (V4_B, "denied.test")]);
    let with_names =
        r#"{"allow_out": ["app.test"], "deny_out": ["denied.test", "203.0.113.0/24"]}"#;
    w.put_ok("sb", with_names);
    assert_eq!(
        ask(&w, RESOLVER, "denied.test", RecordType::A).code,
        ResponseCode::NXDomain
    );
    assert!(w.nft_table().unwrap_or_default().contains("allow_dns4"));
    // No names any more: the sandbox asks its resolver directly again.
    let r = w.api().call(
        "PATCH",
        "/v1/sandboxes/sb",
        Some(r#"{"network": {"deny_out": ["203.0.113.0/24"]}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let table = w.nft_table().unwrap_or_default();
    assert!(
        !table.contains("allow_dns4") && !table.contains("redirect to"),
        "{table}"
    );
    assert_eq!(
        addr_of(&ask(&w, RESOLVER, "denied.test", RecordType::A)),
        V4_B
    );
    // And back.
    let r = w.api().call(
        "PATCH",
        "/v1/sandboxes/sb",
        Some(&format!(r#"{{"network": {with_names}}}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        ask(&w, RESOLVER, "denied.test", RecordType::A).code,
        ResponseCode::NXDomain
    );
    assert_eq!(addr_of(&ask(&w, RESOLVER, "app.test", RecordType::A)), V4_A);
}
