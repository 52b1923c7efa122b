//! netctl's sandbox network setup (`"setup"` instead of `"netns"` in a PUT):
//! the host it runs on is a namespace the test made (SPEC 5), whose only
//! uplink leads to the test's "internet".
//!
//! - create/delete cycles leave the host's links, addresses, routes,
//!   nftables ruleset and /run/netns exactly as they were;
//! - a sandbox reaches the internet under its policy, and never another
//!   sandbox;
//! - PUT is idempotent, bad input touches nothing, the CLI and tap work;
//! - a microVM guest behind the tap (emulated: a namespace wired to the
//!   tap) is the sandbox's address: reached on the agent's port from the
//!   allowed sources only, leaving with that address, under the policy,
//!   its DNS answered by netctl; its NAT is repaired and removed with the tap;
//! - a daemon killed mid-create is cleaned up after its restart.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use sbx_tests::dns_client::{ask_from, NOWHERE};
use sbx_tests::netctl_support::{in_netns, netctl_cli};
use sbx_tests::netns::require_netns;
use sbx_tests::setup_support::*;
use serde_json::Value;

/// A small policy, different per call so consecutive sandboxes differ.
fn small_policy(i: usize) -> String {
    format!(
        r#"{{"deny_out": ["203.0.113.{}", "2001:db8:9::{:x}", "198.51.100.0/30"]}}"#,
        100 + i % 100,
        i + 1
    )
}

fn ip_json(ns: &str, args: &[&str]) -> Value {
    let out = Command::new("ip")
        .args(["-n", ns, "-j"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {ns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()))
}

/// The addresses on the sandbox's eth0 as `address/len`, and its default
/// gateways: what a re-applied setup must keep.
fn sandbox_addressing(netns: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut addrs = BTreeSet::new();
    for link in ip_json(netns, &["addr", "show", "dev", "eth0"])
        .as_array()
        .into_iter()
        .flatten()
    {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] == "global" {
                addrs.insert(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or("?"),
                    a["prefixlen"]
                ));
            }
        }
    }
    let mut gateways = BTreeSet::new();
    for family in ["-4", "-6"] {
        for r in ip_json(netns, &[family, "route", "show", "default"])
            .as_array()
            .into_iter()
            .flatten()
        {
            gateways.insert(format!(
                "{} dev {}",
                r["gateway"].as_str().unwrap_or("?"),
                r["dev"].as_str().unwrap_or("?")
            ));
        }
    }
    (addrs, gateways)
}

/// Checks from the outside that a sandbox is what its view says: eth0 with
/// both addresses, default routes via the host end, lo up, our rules table
/// (present with or without a policy: the always-deny list applies).
fn check_inside(w: &SetupWorld, s: &SetupView) {
    let (addrs, gateways) = sandbox_addressing(&s.netns);
    let want: BTreeSet<String> = [Some(s.ipv4.clone()), s.ipv6.clone()]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(addrs, want, "addresses on eth0 in {}", s.netns);
    let want_gw: BTreeSet<String> = [Some(s.gateway4.clone()), s.gateway6.clone()]
        .into_iter()
        .flatten()
        .map(|g| format!("{g} dev eth0"))
        .collect();
    assert_eq!(gateways, want_gw, "default routes in {}", s.netns);
    let lo = ip_json(&s.netns, &["link", "show", "dev", "lo"]);
    let flags = lo[0]["flags"].to_string();
    assert!(flags.contains("\"UP\""), "lo down in {}: {lo}", s.netns);
    assert!(
        w.host_has_link(&s.host_iface),
        "host lacks {}",
        s.host_iface
    );
    let tables = Command::new("ip")
        .args(["netns", "exec", &s.netns, "nft", "list", "tables"])
        .output()
        .expect("nft list tables");
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(
        tables.contains("inet sbx_netctl"),
        "no rules table in {}: {tables}",
        s.netns
    );
}

fn host_table(w: &SetupWorld) -> Option<String> {
    let out = w
        .host
        .command("nft")
        .args(["list", "table", "inet", "sbx_netctl_host"])
        .stderr(Stdio::null())
        .output()
        .expect("nft");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn root_ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn fifty_setups_in_a_row_leave_the_host_as_it_was() {
    if !require_netns() {
        return;
    }
    let root_forward = root_ip_forward();
    let w = SetupWorld::new();
    let before = w.snapshot();
    assert!(before.namespaces.is_empty(), "{:?}", before.namespaces);
    assert!(host_table(&w).is_none(), "host table before any sandbox");

    for i in 0..50 {
        let id = format!("seq{i}");
        let view = w.create(&id, false, Some(&small_policy(i)));
        let s = SetupView::from_view(&view);
        assert!(w.host_has_link(&s.host_iface), "{id}: no {}", s.host_iface);
        if i % 10 == 0 {
            check_inside(&w, &s);
            let table = host_table(&w).expect("host table while a sandbox exists");
            assert!(table.contains("forward"), "{table}");
        }
        w.delete(&id);
        assert!(!Path::new(&s.netns_path).exists(), "{id}: namespace left");
        assert!(!w.host_has_link(&s.host_iface), "{id}: host end left");
    }
    w.snapshot()
        .assert_same(&before, "after 50 create/delete cycles");

    // Several alive at once, deleted in another order, with new ones made
    // in between: slots are reused but never shared by two live sandboxes.
    let mut alive: Vec<(String, SetupView)> = Vec::new();
    for i in 0..10 {
        let id = format!("il{i}");
        let view = w.create(&id, false, Some(&small_policy(i)));
        alive.push((id, SetupView::from_view(&view)));
    }
    let distinct = |alive: &[(String, SetupView)]| {
        let slots: BTreeSet<u32> = alive.iter().map(|(_, s)| s.slot).collect();
        let ifaces: BTreeSet<&str> = alive.iter().map(|(_, s)| s.host_iface.as_str()).collect();
        assert_eq!(slots.len(), alive.len(), "slots shared: {alive:?}");
        assert_eq!(ifaces.len(), alive.len(), "host ifaces shared: {alive:?}");
    };
    distinct(&alive);
    for pick in [3usize, 7, 0, 5] {
        let id = format!("il{pick}");
        w.delete(&id);
        alive.retain(|(a, _)| *a != id);
    }
    for i in 10..14 {
        let id = format!("il{i}");
        let view = w.create(&id, true, None);
        alive.push((id, SetupView::from_view(&view)));
    }
    distinct(&alive);
    for (_, s) in &alive {
        check_inside(&w, s);
    }
    alive.reverse();
    for (id, s) in alive.drain(..) {
        w.delete(&id);
        assert!(!Path::new(&s.netns_path).exists(), "{id}: namespace left");
    }
    assert!(w.api().ids().is_empty(), "{:?}", w.api().ids());
    w.snapshot()
        .assert_same(&before, "after interleaved create/delete");
    assert_eq!(
        root_ip_forward(),
        root_forward,
        "root namespace forwarding changed"
    );
}

#[test]
fn sandbox_reaches_the_internet_under_its_policy_and_never_its_neighbour() {
    if !require_netns() {
        return;
    }
    let w = SetupWorld::new();
    let port = PORT;
    let sa = SetupView::from_view(&w.create(
        "a",
        false,
        Some(&format!(
            r#"{{"allow_internet_access": false, "allow_out": ["{ALLOWED_NAME}"]}}"#
        )),
    ));
    let at = |ip: &str| SocketAddr::new(ip.parse().expect("ip"), port);

    // allowed.test's address answers, bytes intact.
    let (outcome, _) = retry_ok(&sa.netns_path, at(V4_A), Duration::from_secs(5));
    assert_eq!(
        outcome,
        Outcome::Ok,
        "A -> allowed.test ({V4_A})\n{}",
        w.log_tail()
    );
    // denied.test's address (same echo server) is refused, fast.
    let (outcome, took) = probe_from(&sa.netns_path, at(V4_B), Duration::from_secs(2));
    assert!(
        matches!(outcome, Outcome::Refused(_)),
        "A -> denied.test ({V4_B}): {outcome:?}"
    );
    assert!(took < Duration::from_millis(500), "refusal took {took:?}");

    // B, without a policy, reaches the internet on both families, through
    // the host's masquerade (the internet sees the host's uplink address).
    let sb = SetupView::from_view(&w.create("b", false, None));
    for ip in [V4_A, V4_B, V4_C] {
        let (outcome, _) = retry_ok(&sb.netns_path, at(ip), Duration::from_secs(5));
        assert_eq!(outcome, Outcome::Ok, "B -> {ip}");
    }
    let (outcome, _) = retry_ok(&sb.netns_path, at(V6_A), Duration::from_secs(5));
    assert_eq!(outcome, Outcome::Ok, "B -> {V6_A}\n{}", w.log_tail());
    assert_eq!(
        peer_seen_by_internet(&w, &sb.netns_path),
        HOST_V4.parse::<IpAddr>().expect("ip"),
        "sandbox traffic should leave masqueraded as the host's uplink address"
    );

    // Isolation: servers in both sandboxes on the agent's port (the only
    // one open inbound), reachable from the host itself (so they do
    // listen), never from the other sandbox.
    let _echo_a = echo_on(&sa.netns_path, AGENT_PORT);
    let _echo_b = echo_on(&sb.netns_path, AGENT_PORT);
    let a_addr = SocketAddr::new(IpAddr::V4(sa.ipv4_addr()), AGENT_PORT);
    let b_addr = SocketAddr::new(IpAddr::V4(sb.ipv4_addr()), AGENT_PORT);
    let host_path = w.host.path();
    for target in [a_addr, b_addr] {
        let (outcome, _) = retry_ok(&host_path, target, Duration::from_secs(3));
        assert_eq!(outcome, Outcome::Ok, "host -> {target} (control)");
    }
    let (outcome, _) = probe_from(&sb.netns_path, a_addr, Duration::from_secs(1));
    assert!(!outcome.is_ok(), "B reached A at {a_addr}");
    // A's own policy would refuse B anyway; allow B's address in it so only
    // the host's rules stand between them.
    let r = w.api().call(
        "PATCH",
        "/v1/sandboxes/a",
        Some(&format!(
            r#"{{"network": {{"allow_internet_access": false, "allow_out": ["{ALLOWED_NAME}", "{}", "{}"]}}}}"#,
            sb.ipv4_addr(),
            sb.ipv6.as_deref().and_then(|a| a.split('/').next()).unwrap_or("::1")
        )),
    );
    assert_eq!(r.status, 200, "PATCH a: {}", r.body);
    let (outcome, _) = probe_from(&sa.netns_path, b_addr, Duration::from_secs(1));
    assert!(!outcome.is_ok(), "A reached B at {b_addr}");
    // IPv6 too.
    if let (Some(a6), Some(b6)) = (&sa.ipv6, &sb.ipv6) {
        let a6 = SocketAddr::new(a6.split('/').next().unwrap().parse().unwrap(), AGENT_PORT);
        let b6 = SocketAddr::new(b6.split('/').next().unwrap().parse().unwrap(), AGENT_PORT);
        let (outcome, _) = retry_ok(&host_path, a6, Duration::from_secs(3));
        assert_eq!(outcome, Outcome::Ok, "host -> {a6} (control)");
        let (outcome, _) = probe_from(&sb.netns_path, a6, Duration::from_secs(1));
        assert!(!outcome.is_ok(), "B reached A at {a6}");
        let (outcome, _) = probe_from(&sa.netns_path, b6, Duration::from_secs(1));
        assert!(!outcome.is_ok(), "A reached B at {b6}");
    }
    // A's policy still holds after the PATCH.
    let (outcome, _) = probe_from(&sa.netns_path, at(V4_B), Duration::from_secs(2));
    assert!(
        matches!(outcome, Outcome::Refused(_)),
        "A -> {V4_B}: {outcome:?}"
    );
    let (outcome, _) = probe_from(&sa.netns_path, at(V4_A), Duration::from_secs(2));
    assert_eq!(outcome, Outcome::Ok, "A -> {V4_A} after PATCH");
}

/// Probes until the round trip works or `within` passes (a fresh IPv6
/// address may still be in duplicate address detection).
fn retry_ok(ns_path: &str, addr: SocketAddr, within: Duration) -> (Outcome, Duration) {
    let deadline = Instant::now() + within;
    loop {
        let result = probe_from(ns_path, addr, Duration::from_secs(1));
        if result.0.is_ok() || Instant::now() >= deadline {
            return result;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The source address a connection from the sandbox arrives with in the
/// internet namespace.
fn peer_seen_by_internet(w: &SetupWorld, sandbox: &str) -> IpAddr {
    let server = SocketAddr::new(V4_C.parse().expect("ip"), 9100);
    peer_seen_in(&w.internet.path(), sandbox, server)
}

#[test]
fn put_is_idempotent_and_bad_input_touches_nothing() {
    if !require_netns() {
        return;
    }
    let w = SetupWorld::new();
    let before = w.snapshot();
    let api = w.api();
    let cases: [(&str, &str, &str); 8] = [
        (
            "/v1/sandboxes/x1",
            r#"{"netns":"whatever","setup":{"tap":false}}"#,
            "setup and netns both",
        ),
        ("/v1/sandboxes/x1", r#"{"network":null}"#, "neither"),
        (
            "/v1/sandboxes/x1",
            r#"{"setup":{"tap":false,"bridge":"br0"}}"#,
            "unknown field",
        ),
        ("/v1/sandboxes/x1", r#"{"setup":{"tap":"yes"}}"#, "bad type"),
        (
            "/v1/sandboxes/x1",
            r#"{"setup":"on"}"#,
            "setup not an object",
        ),
        (
            "/v1/sandboxes/..bad",
            r#"{"setup":{"tap":false}}"#,
            "invalid id",
        ),
        (
            "/v1/sandboxes/x1",
            r#"{"setup":{"tap":false},"network":{"deny_out":["10.0.0.1/8"]}}"#,
            "invalid policy",
        ),
        (
            "/v1/sandboxes/x1",
            r#"{"setup":{"tap":false},"iface":"eth0; reboot"}"#,
            "bad iface",
        ),
    ];
    for (path, body, what) in cases {
        let r = api.call("PUT", path, Some(body));
        assert_eq!(r.status, 400, "{what}: {body} -> {}", r.body);
        assert!(r.json()["error"].is_string(), "{what}: {}", r.body);
    }
    let both = api.call("PUT", "/v1/sandboxes/x1", Some(cases[0].1)).json();
    assert_eq!(both["code"], "BAD_REQUEST", "setup+netns: {both}");
    assert!(
        api.ids().is_empty(),
        "a bad PUT left a sandbox: {:?}",
        api.ids()
    );
    w.snapshot()
        .assert_same(&before, "after refused PUTs (nothing may be made)");

    let r = api.call("DELETE", "/v1/sandboxes/nosuch", None);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["code"], "NOT_FOUND", "{}", r.body);

    // The same PUT twice: same view, same addresses, nothing else moves.
    let policy = small_policy(1);
    let first = w.create("idem", false, Some(&policy));
    let s1 = SetupView::from_view(&first);
    check_inside(&w, &s1);
    let host1 = w.snapshot();
    let inside1 = sandbox_addressing(&s1.netns);
    let second = w.create("idem", false, Some(&policy));
    let s2 = SetupView::from_view(&second);
    assert_eq!(s1, s2, "a repeated PUT changed the setup");
    assert_eq!(sandbox_addressing(&s2.netns), inside1);
    w.snapshot().assert_same(&host1, "after the same PUT again");
    // GET answers the same setup.
    let got = api.call("GET", "/v1/sandboxes/idem", None);
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(SetupView::from_view(&got.json()), s1);
    // A changed policy keeps the addresses.
    let third = w.create("idem", false, Some(&small_policy(2)));
    assert_eq!(
        SetupView::from_view(&third),
        s1,
        "policy change moved the setup"
    );
    assert_eq!(sandbox_addressing(&s1.netns), inside1);
    w.delete("idem");
    let r = api.call("DELETE", "/v1/sandboxes/idem", None);
    assert_eq!(r.status, 404, "second DELETE: {}", r.body);
    w.snapshot().assert_same(&before, "after DELETE");
}

#[test]
fn cli_netns_create_and_delete() {
    if !require_netns() {
        return;
    }
    let w = SetupWorld::new();
    let before = w.snapshot();
    let socket = w.socket();

    let policy = r#"{"deny_out": ["198.51.100.20"]}"#;
    let (code, out, err) = netctl_cli(
        &socket,
        &["netns", "create", "cli1", "--policy", "-", "--json"],
        Some(policy),
    );
    assert_eq!(code, 0, "netns create --json: {out}{err}");
    let view: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let s1 = w.check_view("cli1", &view, false);
    assert_eq!(view["network"]["deny_out"][0], "198.51.100.20", "{view}");
    check_inside(&w, &s1);

    let (code, out, err) = netctl_cli(&socket, &["netns", "create", "cli2", "--tap"], None);
    assert_eq!(code, 0, "netns create --tap: {out}{err}");
    assert!(
        out.contains(&format!("{}cli2", w.netns_prefix)),
        "human output names the namespace: {out}"
    );
    let (code, out, err) = netctl_cli(&socket, &["show", "cli2", "--json"], None);
    assert_eq!(code, 0, "show: {out}{err}");
    let s2 = w.check_view("cli2", &serde_json::from_str(&out).expect("json"), true);
    assert_ne!(s1.slot, s2.slot);

    // set-policy replaces the policy and keeps the namespace; --clear drops it.
    let (code, out, err) = netctl_cli(
        &socket,
        &["set-policy", "cli1", "--policy", "-"],
        Some(r#"{"allow_internet_access": false}"#),
    );
    assert_eq!(code, 0, "set-policy: {out}{err}");
    let (_, out, _) = netctl_cli(&socket, &["show", "cli1", "--json"], None);
    let view: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(view["network"]["allow_internet_access"], false, "{view}");
    assert_eq!(view["setup"]["netns"], s1.netns, "{view}");
    let (code, out, err) = netctl_cli(&socket, &["set-policy", "cli1", "--clear"], None);
    assert_eq!(code, 0, "set-policy --clear: {out}{err}");
    let (_, out, _) = netctl_cli(&socket, &["show", "cli1", "--json"], None);
    let view: Value = serde_json::from_str(&out).expect("json");
    assert!(view["network"].is_null(), "{view}");
    let (code, _, err) = netctl_cli(&socket, &["set-policy", "nobody", "--clear"], None);
    assert_ne!(code, 0, "set-policy of an unknown sandbox should fail");
    assert!(err.contains("nobody"), "error names the sandbox: {err}");

    // A bad policy from the CLI fails and makes nothing.
    let (code, out, err) = netctl_cli(
        &socket,
        &["netns", "create", "cli3", "--policy", "-"],
        Some(r#"{"deny_out": ["10.0.0.1/8"]}"#),
    );
    assert_ne!(code, 0, "bad policy accepted: {out}{err}");
    assert!(!Path::new(&format!("/run/netns/{}cli3", w.netns_prefix)).exists());

    for id in ["cli1", "cli2"] {
        let (code, out, err) = netctl_cli(&socket, &["netns", "delete", id], None);
        assert_eq!(code, 0, "netns delete {id}: {out}{err}");
    }
    let (code, _, _) = netctl_cli(&socket, &["netns", "delete", "cli1"], None);
    assert_ne!(code, 0, "deleting an unknown sandbox should fail");
    w.snapshot().assert_same(&before, "after CLI create/delete");
}

#[test]
fn tap_sandbox_has_its_tap_and_forwarding() {
    if !require_netns() {
        return;
    }
    let w = SetupWorld::new();
    let before = w.snapshot();
    let view = w.create("vm", true, Some(r#"{"deny_out": ["198.51.100.20"]}"#));
    let s = SetupView::from_view(&view);
    // The view names the interface whose forwarded traffic is judged.
    assert_eq!(view["iface"], "tap0", "iface: {view}");
    check_inside(&w, &s);
    let tap = ip_json(&s.netns, &["-d", "link", "show", "dev", "tap0"]);
    assert_eq!(tap[0]["ifname"], "tap0", "{tap}");
    assert_eq!(
        tap[0]["linkinfo"]["info_kind"], "tun",
        "tap0 is a tun/tap device: {tap}"
    );
    assert_eq!(
        read_in_netns(&s.netns, "/proc/sys/net/ipv4/ip_forward"),
        "1",
        "forwarding inside the tap sandbox"
    );
    let table = Command::new("ip")
        .args([
            "netns",
            "exec",
            &s.netns,
            "nft",
            "list",
            "table",
            "inet",
            "sbx_netctl",
        ])
        .output()
        .expect("nft");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("tap0"),
        "forward rules name the tap: {table}"
    );
    assert_eq!(
        ipv4_addresses(&s.netns, "tap0"),
        [format!("{GUEST_GATEWAY_V4}/{GUEST_PREFIX}")],
        "the tap carries the guest's gateway"
    );
    assert_eq!(
        guest_table(&s.netns),
        Some(expected_guest_table(&s.ipv4_addr().to_string(), AGENT_PORT)),
        "the guest's NAT in {}",
        s.netns
    );

    // Without tap: no tap0.
    let plain = SetupView::from_view(&w.create("plain", false, None));
    let out = Command::new("ip")
        .args(["-n", &plain.netns, "link", "show", "dev", "tap0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("ip");
    assert!(!out.success(), "a plain sandbox has no tap0");
    assert_eq!(
        guest_table(&plain.netns),
        None,
        "a plain sandbox has no guest NAT"
    );

    w.delete("vm");
    w.delete("plain");
    w.snapshot()
        .assert_same(&before, "after tap sandbox deleted");
}

/// What a microVM guest on the tap gets: the sandbox's address, in and out.
/// The guest is a namespace wired frame for frame to the sandbox's tap
/// ([`GuestWire`]), so its traffic takes the path a VM's would.
#[test]
fn a_guest_behind_the_tap_is_the_sandbox_address() {
    if !require_netns() {
        return;
    }
    let mut w = SetupWorld::new();
    let before = w.snapshot();
    // Naming a domain puts the sandbox's DNS (and its guest's) through
    // netctl's forwarder.
    let policy = format!(r#"{{"deny_out": ["{DENIED_NAME}"]}}"#);
    let s = SetupView::from_view(&w.create("vm", true, Some(&policy)));
    let sandbox_v4 = s.ipv4_addr();
    let nat = expected_guest_table(&sandbox_v4.to_string(), AGENT_PORT);
    let gateway_on_tap = vec![format!("{GUEST_GATEWAY_V4}/{GUEST_PREFIX}")];
    assert_eq!(ipv4_addresses(&s.netns, "tap0"), gateway_on_tap);
    assert_eq!(guest_table(&s.netns).as_ref(), Some(&nat));

    let guest = GuestWire::attach(
        &s.netns_path,
        "tap0",
        &format!("{GUEST_V4}/{GUEST_PREFIX}"),
        GUEST_GATEWAY_V4,
    );
    let guest_path = guest.ns.path();
    let _agent = echo_on(&guest_path, AGENT_PORT);
    let at = |ip: &str, port: u16| SocketAddr::new(ip.parse().expect("ip"), port);

    // In: the host (the allowed source, the host end of the link) reaches
    // the guest's agent at the sandbox's own address.
    let agent = SocketAddr::new(IpAddr::V4(sandbox_v4), AGENT_PORT);
    let (outcome, _) = retry_ok(&w.host.path(), agent, Duration::from_secs(5));
    assert_eq!(
        outcome,
        Outcome::Ok,
        "host -> guest agent at {agent}\n{}",
        w.log_tail()
    );
    // Anyone else is refused, fast, though the address translation would
    // take them there too: the inbound chain judges the forwarded packet.
    w.internet.ip(&["route", "add", IPV4_POOL, "via", HOST_V4]);
    let (outcome, took) = probe_from(&w.internet.path(), agent, Duration::from_secs(2));
    assert!(
        matches!(outcome, Outcome::Refused(_)),
        "internet -> guest agent at {agent}: {outcome:?}"
    );
    assert!(took < Duration::from_millis(500), "refusal took {took:?}");
    let counters = w.api().call("GET", "/v1/sandboxes/vm", None).json()["counters"].clone();
    assert!(
        counters["inbound_refused"].as_u64().unwrap_or(0) > 0,
        "the refusal was the inbound rules': {counters}"
    );

    // Out: the guest reaches the internet under the sandbox's policy...
    let (outcome, _) = retry_ok(&guest_path, at(V4_A, PORT), Duration::from_secs(5));
    assert_eq!(outcome, Outcome::Ok, "guest -> {V4_A}\n{}", w.log_tail());
    let (outcome, _) = probe_from(&guest_path, at(V4_B, PORT), Duration::from_secs(2));
    assert!(
        matches!(outcome, Outcome::Refused(_)),
        "guest -> {DENIED_NAME} ({V4_B}): {outcome:?}"
    );
    // ...with the sandbox's address, as the host sees it.
    assert_eq!(
        peer_seen_in(&w.host.path(), &guest_path, at(&s.gateway4, 9102)),
        IpAddr::V4(sandbox_v4),
        "the guest's traffic leaves as the sandbox"
    );
    // Its DNS, to any address, is answered by netctl's forwarder.
    for server in [NOWHERE.to_owned(), format!("{GUEST_GATEWAY_V4}:53")] {
        let allowed = ask_from(&guest_path, &server, ALLOWED_NAME);
        assert_eq!(
            allowed.addrs,
            [V4_A.parse::<IpAddr>().expect("ip")],
            "guest asks {server} for {ALLOWED_NAME}: {allowed:?}"
        );
        let denied = ask_from(&guest_path, &server, DENIED_NAME);
        assert_eq!(
            denied.code,
            hickory_proto::op::ResponseCode::NXDomain,
            "guest asks {server} for {DENIED_NAME}: {denied:?}"
        );
    }

    // Repair: the same PUT puts back a deleted table and tap address.
    sandbox_nft(&s.netns, &["delete", "table", "ip", GUEST_TABLE]);
    sandbox_ip(&s.netns, &["addr", "flush", "dev", "tap0"]);
    assert_eq!(guest_table(&s.netns), None);
    assert!(ipv4_addresses(&s.netns, "tap0").is_empty());
    let again = SetupView::from_view(&w.create("vm", true, Some(&policy)));
    assert_eq!(again, s, "a repair moved the setup");
    assert_eq!(
        ipv4_addresses(&s.netns, "tap0"),
        gateway_on_tap,
        "tap address repaired"
    );
    assert_eq!(
        guest_table(&s.netns).as_ref(),
        Some(&nat),
        "guest NAT repaired"
    );
    let (outcome, _) = retry_ok(&w.host.path(), agent, Duration::from_secs(5));
    assert_eq!(outcome, Outcome::Ok, "host -> guest agent after the repair");

    // Restart, the guest running: netctl's start repairs the table too.
    sandbox_nft(&s.netns, &["delete", "table", "ip", GUEST_TABLE]);
    w.kill_daemon();
    w.start_daemon();
    assert_eq!(
        guest_table(&s.netns).as_ref(),
        Some(&nat),
        "guest NAT restored on start\n{}",
        w.log_tail()
    );
    let (outcome, _) = retry_ok(&w.host.path(), agent, Duration::from_secs(5));
    assert_eq!(
        outcome,
        Outcome::Ok,
        "host -> guest agent after the restart"
    );
    drop(_agent);
    drop(guest);

    // Tap off: the tap, its address and the guest's NAT go; on: back.
    let off = w.api().put_setup("vm", false, Some(&policy));
    assert_eq!(off.status, 200, "PUT tap off: {}", off.body);
    let view = off.json();
    w.check_view("vm", &view, false);
    assert!(view["setup"]["guest"].is_null(), "{view}");
    assert_eq!(guest_table(&s.netns), None, "guest NAT left without a tap");
    assert!(
        !netns_has_link(&s.netns, "tap0"),
        "tap (and its address) left"
    );
    let on = SetupView::from_view(&w.create("vm", true, Some(&policy)));
    assert_eq!(on, s, "tap on again: the same setup");
    assert_eq!(ipv4_addresses(&s.netns, "tap0"), gateway_on_tap);
    assert_eq!(guest_table(&s.netns).as_ref(), Some(&nat));

    w.delete("vm");
    w.snapshot()
        .assert_same(&before, "after the guest's sandbox is deleted");
}

/// `nft <args>` inside the namespace `ns`.
fn sandbox_nft(ns: &str, args: &[&str]) {
    sbx_tests::netns::run(
        Command::new("ip")
            .args(["netns", "exec", ns, "nft"])
            .args(args),
    );
}

/// `ip -n <ns> <args>`.
fn sandbox_ip(ns: &str, args: &[&str]) {
    sbx_tests::netns::run(Command::new("ip").args(["-n", ns]).args(args));
}

/// The source address a connection from `client` (a namespace path)
/// arrives with at `server` inside the namespace `listener_ns`.
fn peer_seen_in(listener_ns: &str, client: &str, server: SocketAddr) -> IpAddr {
    let listener = in_netns(listener_ns, move || {
        TcpListener::bind(server).expect("bind listener")
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((_, peer)) = listener.accept() {
            let _ = tx.send(peer.ip());
        }
    });
    in_netns(client, move || {
        std::net::TcpStream::connect_timeout(&server, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to {server}: {e}"))
    });
    rx.recv_timeout(Duration::from_secs(2))
        .expect("the listener saw the connection")
}

#[test]
fn daemon_killed_mid_create_leaves_nothing_after_restart() {
    if !require_netns() {
        return;
    }
    let mut w = SetupWorld::new();
    let before = w.snapshot();
    // Early: as soon as a few namespaces exist, before any create answered.
    crash_round(&mut w, &before, "early", |namespaces, _| namespaces >= 3);
    // Later: once some creates were answered (they must survive), while
    // others are still under way.
    crash_round(&mut w, &before, "late", |_, answered| answered >= 4);
}

/// Starts 20 concurrent creates, SIGKILLs the daemon once `kill_when(namespaces
/// made, creates answered)` holds, restarts it on the same state, checks
/// what it kept is whole and what it dropped left nothing, deletes all and
/// compares the host with `before`.
fn crash_round(
    w: &mut SetupWorld,
    before: &HostSnapshot,
    round: &str,
    kill_when: impl Fn(usize, usize) -> bool,
) {
    const COUNT: usize = 20;
    let api = w.api();
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..COUNT {
        let (api, done) = (api.clone(), done.clone());
        let id = format!("{round}{i}");
        clients.push(std::thread::spawn(move || {
            let status = api
                .try_call(
                    "PUT",
                    &format!("/v1/sandboxes/{id}"),
                    Some(&SetupApi::setup_body(i % 3 == 0, Some(&small_policy(i)))),
                )
                .map(|r| r.status);
            if matches!(status, Ok(200)) {
                done.fetch_add(1, Ordering::SeqCst);
            }
            (id, status)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !kill_when(w.our_namespaces().len(), done.load(Ordering::SeqCst))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let seen = w.our_namespaces().len();
    w.kill_daemon();
    let answered: Vec<String> = clients
        .into_iter()
        .filter_map(|c| {
            let (id, status) = c.join().expect("client thread");
            matches!(status, Ok(200)).then_some(id)
        })
        .collect();
    assert!(
        answered.len() < COUNT,
        "{round}: every create finished before the kill; nothing was interrupted"
    );

    w.start_daemon();
    let api = w.api();
    let listed = api.ids();
    eprintln!(
        "{round}: killed with {seen} namespaces made and {} creates answered; {} sandboxes kept after restart",
        answered.len(),
        listed.len()
    );
    for id in &answered {
        assert!(
            listed.contains(id),
            "{round}: {id} was answered 200 but is gone after the restart"
        );
    }
    // Whatever the restarted daemon kept is whole.
    for id in &listed {
        let r = api.call("GET", &format!("/v1/sandboxes/{id}"), None);
        assert_eq!(r.status, 200, "{id}: {}", r.body);
        let view = r.json();
        assert_eq!(view["applied"], true, "{round}: {view}");
        let s = w.check_view(id, &view, view["setup"]["tap"].is_string());
        check_inside(w, &s);
    }
    // Ids it did not keep left nothing behind.
    let listed_ns: BTreeSet<String> = listed
        .iter()
        .map(|id| format!("{}{id}", w.netns_prefix))
        .collect();
    let present: BTreeSet<String> = w.our_namespaces().into_iter().collect();
    assert_eq!(
        present, listed_ns,
        "{round}: namespaces after restart should be exactly the kept sandboxes'"
    );
    for i in 0..COUNT {
        let id = format!("{round}{i}");
        let r = api.call("DELETE", &format!("/v1/sandboxes/{id}"), None);
        let want = if listed.contains(&id) { 204 } else { 404 };
        assert_eq!(r.status, want, "{round}: DELETE {id}: {}", r.body);
    }
    w.snapshot().assert_same(
        before,
        &format!("{round}: after kill -9, restart and deleting everything"),
    );
}
