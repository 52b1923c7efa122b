//! netctl's policy semantics (SPEC 4) against real nftables, namespaces,
//! DNS (dnsmasq) and TCP.

use std::time::Duration;

use sbx_tests::netctl_support::*;
use sbx_tests::netns::require_netns;

#[test]
fn default_allows_everything() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", "null");
    for ip in [V4_A, V4_B, V6_A, V6_B] {
        w.assert_reachable(ip);
    }
    w.put_ok("sb", "{}");
    for ip in [V4_A, V6_B] {
        w.assert_reachable(ip);
    }
    assert!(
        w.sandbox_dns("anything.test").is_ok(),
        "DNS open by default"
    );
}

#[test]
fn no_internet_and_nothing_allowed_refuses_everything_fast_including_dns() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", r#"{"allow_internet_access": false}"#);
    for ip in [V4_A, V4_B, V4_C, V6_A, V6_B] {
        w.assert_refused(ip);
    }
    assert!(w.sandbox_dns("anything.test").is_err(), "DNS must fail too");
    // The sandbox's own loopback is never filtered.
    let (outcome, _) = in_netns(&w.sandbox.path(), || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::net::TcpStream::connect(addr)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .map(|()| (Outcome::Ok, ()))
    .unwrap_or_else(|e| (Outcome::Refused(e), ()));
    assert_eq!(outcome, Outcome::Ok);
}

/// Adding an address makes the kernel send MLDv2 reports (twice, within
/// about a second); they stay on the link and are not counted as refused.
#[test]
fn multicast_listener_reports_are_not_refused() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", r#"{"allow_internet_access": false}"#);
    let refused = || {
        let view = w.api().call("GET", "/v1/sandboxes/sb", None).json();
        view["counters"]["refused"]
            .as_u64()
            .unwrap_or_else(|| panic!("no counters: {view}"))
    };
    let before = refused();
    let out = w.sandbox.sh(
        "dev=$(ip -o link show | awk -F': ' '$2 ~ /^va/ {print $2}' | cut -d@ -f1) && \
         ip addr add 2001:db8:1::77/64 dev \"$dev\" nodad",
    );
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(refused(), before, "MLD reports were refused");
}

#[test]
fn allowlist_with_addresses_cidrs_and_names() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.dns.set_records(&[(V4_C, "api.test"), (V6_B, "api.test")]);
    w.put_ok(
        "sb",
        &format!(
            r#"{{"allow_internet_access": false, "allow_out": ["{V4_A}", "2001:db8:2::10/128", "api.test"]}}"#
        ),
    );
    w.assert_reachable(V4_A);
    w.assert_reachable(V6_A);
    w.assert_reachable(V4_C);
    w.assert_reachable(V6_B);
    w.assert_refused(V4_B);
    w.assert_refused(V4_D);
    // allow_out names a domain, so the sandbox may ask the resolver.
    let answer = w.sandbox_dns("api.test").expect("DNS for allowed names");
    assert_eq!(answer, vec![V4_C.parse::<std::net::IpAddr>().unwrap()]);
}

#[test]
fn allow_is_evaluated_before_deny() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok(
        "sb",
        &format!(r#"{{"allow_out": ["{V4_A}", "{V6_A}"], "deny_out": ["198.51.100.0/24", "2001:db8:2::/64"]}}"#),
    );
    w.assert_reachable(V4_A);
    w.assert_reachable(V6_A);
    w.assert_refused(V4_B);
    w.assert_refused(V6_B);
    w.assert_reachable(V4_C);
}

#[test]
fn deny_by_cidr_address_and_domain_v4_and_v6() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.dns.set_records(&[(V4_A, "bad.test"), (V6_A, "bad.test")]);
    w.put_ok(
        "sb",
        &format!(r#"{{"deny_out": ["203.0.113.0/24", "{V6_B}", "Bad.Test"]}}"#),
    );
    w.assert_refused(V4_C);
    w.assert_refused(V4_D);
    w.assert_refused(V6_B);
    w.assert_refused(V4_A);
    w.assert_refused(V6_A);
    w.assert_reachable(V4_B);
    let show = w.api().call("GET", "/v1/sandboxes/sb", None).json();
    let names = show["names"].as_array().unwrap();
    assert_eq!(names[0]["name"], "bad.test");
    assert_eq!(names[0]["addresses"].as_array().unwrap().len(), 2);
    assert!(show["counters"]["refused"].as_u64().unwrap() >= 5, "{show}");
}

#[test]
fn ipv4_mapped_ipv6_is_treated_as_ipv4() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", &format!(r#"{{"deny_out": ["::ffff:{V4_A}"]}}"#));
    w.assert_refused(V4_A);
    // Through an IPv6 socket to the mapped address, too.
    w.assert_refused(&format!("::ffff:{V4_A}"));
    w.assert_reachable(V4_B);
    let table = w.nft_table().expect("table");
    assert!(table.contains(V4_A), "{table}");
}

#[test]
fn always_deny_beats_allow_out() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok(
        "sb",
        &format!(
            r#"{{"allow_internet_access": false, "allow_out": ["169.254.0.0/16", "{V4_A}"]}}"#
        ),
    );
    w.assert_refused(V4_LINK_LOCAL);
    w.assert_reachable(V4_A);
}

#[test]
fn changed_dns_answer_is_followed_within_ttl_plus_a_second() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.dns.set_records(&[(V4_A, "moving.test")]);
    w.put_ok("sb", r#"{"deny_out": ["moving.test"]}"#);
    w.assert_refused(V4_A);
    w.assert_reachable(V4_B);
    w.dns.set_records(&[(V4_B, "moving.test")]);
    // TTL is 1 s: the new address must be refused within TTL + 1 s (plus
    // a little for this shared 2-core machine).
    let took = w
        .wait_for(Duration::from_secs(4), || !w.reachable(V4_B))
        .expect("new address never refused");
    assert!(took <= Duration::from_millis(2_500), "took {took:?}");
    // The old address stays refused for the grace period (3 s here).
    w.assert_refused(V4_A);
}

#[test]
fn tightening_cuts_an_open_connection_within_a_second() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", "null");
    let addr: std::net::SocketAddr = format!("{V4_A}:{PORT}").parse().unwrap();
    let mut conn = w
        .probe
        .run(move || std::net::TcpStream::connect(addr).unwrap());
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let roundtrip = |c: &mut std::net::TcpStream| -> bool {
        use std::io::{Read, Write};
        let mut buf = [0u8; 1];
        c.write_all(b"x").is_ok() && c.read_exact(&mut buf).is_ok()
    };
    assert!(roundtrip(&mut conn));
    w.put_ok("sb", &format!(r#"{{"deny_out": ["{V4_A}"]}}"#));
    let cut = w.wait_for(Duration::from_secs(3), || !roundtrip(&mut conn));
    let took = cut.expect("connection survived the tightened policy");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn replies_to_connections_into_the_sandbox_still_flow() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", r#"{"allow_internet_access": false}"#);
    // A server in the sandbox on the agent's port, reached from the
    // internet namespace: the sandbox's gateway, so inbound rules let it in.
    let _server = EchoServer::start_on(&w.sandbox.path(), AGENT_PORT);
    let addr: std::net::SocketAddr = format!("192.0.2.2:{AGENT_PORT}").parse().unwrap();
    let (outcome, _) = in_netns(&w.internet.path(), move || {
        probe_tcp(addr, Duration::from_secs(2))
    });
    assert_eq!(outcome, Outcome::Ok);
}

#[test]
fn forwarded_traffic_from_iface_is_judged_too() {
    if !require_netns() {
        return;
    }
    // A "VM" behind the sandbox namespace: its packets are forwarded, so
    // they meet the forward hook, not output.
    let w = World::new();
    let (vm, sb_if) = w.vm_behind_sandbox();
    let body = format!(
        r#"{{"netns":"{}","iface":"{sb_if}","network":{{"deny_out":["{V4_A}"]}}}}"#,
        w.sandbox.name()
    );
    let r = w.api().call("PUT", "/v1/sandboxes/sb", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    let from_vm = |ip: &str| {
        let addr = std::net::SocketAddr::new(ip.parse().unwrap(), PORT);
        in_netns(&vm.path(), move || probe_tcp(addr, Duration::from_secs(2)))
    };
    let (refused, took) = from_vm(V4_A);
    assert!(matches!(refused, Outcome::Refused(_)), "{refused:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(from_vm(V4_B).0, Outcome::Ok);
}
