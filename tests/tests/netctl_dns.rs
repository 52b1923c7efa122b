//! Domains enforced through the sandbox's own DNS (SPEC 4): netctl's
//! forwarder answers every port-53 query the sandbox (or a VM behind its
//! tap) sends, whatever resolver it addresses; an allowed answer opens
//! exactly its addresses, denied names get NXDOMAIN, unlisted names never
//! leave the host under an allowlist, and DNS over TLS is refused. Real
//! dnsmasq, real TCP, real nftables. (What happens between an answer and
//! its release: `netctl_dns_hold`.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use sbx_tests::dns_client::*;
use sbx_tests::netctl_support::*;
use sbx_tests::netns::require_netns;

/// A second resolver in the internet namespace: the one the sandbox thinks
/// it asks.
const OTHER_RESOLVER_IP: &str = "198.51.100.54";

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
