//! netctl's inbound filter (SPEC 4, "Inbound"): new connections into a
//! sandbox are accepted only on the agent's port (9501) and only from the
//! allowed sources (default: the host end of the sandbox's link); the rest
//! is refused fast and counted. Replies to what the sandbox opened flow.
//!
//! Servers listen on `[::]` (IPv4 and IPv6) inside the sandbox, on 9501 and
//! on 8080 (a user port, reachable only through the proxy). Probes come
//! from the host namespace and from the test's "internet" namespace; all
//! traffic stays in namespaces the test made (SPEC 5).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sbx_tests::netctl_support::{self, in_netns, netctl_cli, EchoServer, World};
use sbx_tests::netns::{require_netns, Netns};
use sbx_tests::setup_support::*;
use serde_json::Value;

/// How fast a refusal must be: a reset or an ICMP error, not a timeout.
const FAST: Duration = Duration::from_millis(500);

fn probe(ns_path: &str, addr: SocketAddr) -> (Outcome, Duration) {
    in_netns(ns_path, move || probe_tcp(addr, Duration::from_secs(2)))
}

/// Probes until the round trip works or `within` passes (a route or a
/// neighbour entry may still be settling).
fn eventually_ok(ns_path: &str, addr: SocketAddr, within: Duration) -> Outcome {
    let deadline = Instant::now() + within;
    loop {
        let (outcome, _) = probe(ns_path, addr);
        if outcome.is_ok() || Instant::now() >= deadline {
            return outcome;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[track_caller]
fn assert_ok(ns_path: &str, addr: SocketAddr, what: &str) {
    let outcome = eventually_ok(ns_path, addr, Duration::from_secs(3));
    assert_eq!(outcome, Outcome::Ok, "{what}: {addr} should connect");
}

#[track_caller]
fn assert_refused_fast(ns_path: &str, addr: SocketAddr, what: &str) {
    let (outcome, took) = probe(ns_path, addr);
    assert!(
        matches!(outcome, Outcome::Refused(_)),
        "{what}: {addr} should be refused, got {outcome:?}"
    );
    assert!(took < FAST, "{what}: refusing {addr} took {took:?}");
}

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn addr_of(cidr: &str) -> IpAddr {
    cidr.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad address {cidr}"))
}

/// The sandbox's counters from its view.
fn counters(view: &Value) -> (u64, u64) {
    let c = &view["counters"];
    let get = |k: &str| {
        c[k].as_u64()
            .unwrap_or_else(|| panic!("no counters.{k}: {view}"))
    };
    (get("refused"), get("inbound_refused"))
}

/// `netctl_inbound_refused_packets_total{sandbox="<id>"}` from /metrics.
fn metric(metrics: &str, id: &str) -> u64 {
    let prefix = format!("netctl_inbound_refused_packets_total{{sandbox=\"{id}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}")) as u64
}

/// The sandbox addresses of a netctl-made sandbox: IPv4 and IPv6.
fn sandbox_ips(s: &SetupView) -> [IpAddr; 2] {
    [
        IpAddr::V4(s.ipv4_addr()),
        addr_of(s.ipv6.as_deref().expect("IPv6 pool configured")),
    ]
}

/// Routes from the internet namespace to the sandbox pools through the
/// host, so it can try to connect in (the host forwards: it has an uplink).
fn route_internet_to_pools(w: &SetupWorld) {
    w.internet.ip(&["route", "add", IPV4_POOL, "via", HOST_V4]);
    w.internet
        .ip(&["-6", "route", "add", IPV6_POOL, "via", HOST_V6]);
}

#[test]
fn netns_create_opens_9501_to_the_host_end_only() {
    if !require_netns() {
        return;
    }
    let mut w = SetupWorld::new();
    route_internet_to_pools(&w);
    let socket = w.socket();
    let (code, out, err) = netctl_cli(
        &socket,
        &["netns", "create", "inb", "--policy", "-", "--json"],
        Some(&format!(r#"{{"deny_out": ["{V4_B}"]}}"#)),
    );
    assert_eq!(code, 0, "netns create: {out}{err}\n{}", w.log_tail());
    let view: Value = serde_json::from_str(&out).expect("view JSON");
    let s = w.check_view("inb", &view, false);
    let ingress = &view["ingress"];
    assert_eq!(ingress["port"], 9501, "{view}");
    assert_eq!(ingress["from"], "host_end", "{view}");
    assert_eq!(
        ingress["allow_from"],
        serde_json::json!([
            format!("{}/32", s.gateway4),
            format!("{}/128", s.gateway6.as_deref().unwrap_or_default())
        ]),
        "{view}"
    );

    let _agent = echo_on(&s.netns_path, AGENT_PORT);
    let _user = echo_on(&s.netns_path, PORT);
    let host = w.host.path();
    let internet = w.internet.path();
    let before = counters(&w.api().call("GET", "/v1/sandboxes/inb", None).json());

    for ip in sandbox_ips(&s) {
        assert_ok(&host, at(ip, AGENT_PORT), "host -> agent port");
        assert_refused_fast(&host, at(ip, PORT), "host -> user port");
        assert_refused_fast(&internet, at(ip, AGENT_PORT), "internet -> agent port");
        assert_refused_fast(&internet, at(ip, PORT), "internet -> user port");
    }

    // Six refusals, each one SYN; the egress counter is not the one moving.
    let view = w.api().call("GET", "/v1/sandboxes/inb", None).json();
    let after = counters(&view);
    assert!(after.1 >= before.1 + 6, "{before:?} -> {after:?}: {view}");
    assert_eq!(after.0, before.0, "egress refused moved: {view}");
    let metrics = w.api().call("GET", "/metrics", None).body;
    assert!(metric(&metrics, "inb") >= after.1, "{metrics}");
    let (code, shown, err) = netctl_cli(&socket, &["show", "inb"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        shown.contains("inbound  tcp/9501 from [") && shown.contains("host end of the link"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("in: {} refused", after.1)),
        "{shown}"
    );

    // The sandbox's own connections out still work (their replies come
    // back in), on both families, and its policy still holds.
    for target in [at(addr_of(V4_A), PORT), at(addr_of(V6_A), PORT)] {
        assert_ok(&s.netns_path, target, "sandbox -> internet");
    }
    assert_refused_fast(&s.netns_path, at(addr_of(V4_B), PORT), "denied_out");
    // The sandbox's own loopback is not filtered, on any port.
    assert_ok(&s.netns_path, at([127, 0, 0, 1], PORT), "sandbox loopback");

    // After a restart the same rules are reconciled.
    w.start_daemon();
    for ip in sandbox_ips(&s) {
        assert_ok(
            &host,
            at(ip, AGENT_PORT),
            "host -> agent port after restart",
        );
        assert_refused_fast(&host, at(ip, PORT), "host -> user port after restart");
        assert_refused_fast(&internet, at(ip, AGENT_PORT), "internet after restart");
    }
    w.delete("inb");
}

#[test]
fn allow_from_in_the_config_replaces_the_host_end() {
    if !require_netns() {
        return;
    }
    let w = SetupWorld::with_config(&format!(
        "[ingress]\nallow_from = [\"{INTERNET_V4}\", \"{INTERNET_V6}/128\"]\n"
    ));
    route_internet_to_pools(&w);
    // No tap: with one, the agent's port at the sandbox's address is the
    // microVM guest's (netctl's guest NAT), not a process's in the namespace.
    let view = w.create("cfg", false, None);
    assert_eq!(view["ingress"]["from"], "config", "{view}");
    let s = SetupView::from_view(&view);
    let _agent = echo_on(&s.netns_path, AGENT_PORT);
    let _user = echo_on(&s.netns_path, PORT);
    let host = w.host.path();
    let internet = w.internet.path();
    for ip in sandbox_ips(&s) {
        assert_ok(
            &internet,
            at(ip, AGENT_PORT),
            "allowed internet -> agent port",
        );
        assert_refused_fast(&internet, at(ip, PORT), "allowed internet -> user port");
        assert_refused_fast(&host, at(ip, AGENT_PORT), "host (not listed) -> agent port");
    }
    // With a tap, what goes toward it is judged by the same rules.
    let vm = SetupView::from_view(&w.create("cfgvm", true, None));
    let out = sbx_tests::netns::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        &vm.netns,
        "nft",
        "list",
        "chain",
        "inet",
        "sbx_netctl",
        "forward",
    ]));
    let chain = String::from_utf8_lossy(&out.stdout);
    assert!(
        chain.contains("oifname \"tap0\" jump inbound")
            && chain.contains("iifname \"tap0\" jump policy"),
        "{chain}"
    );
    w.delete("cfgvm");
    w.delete("cfg");
}

/// `netctl apply --netns` on a namespace the runtime made: the default
/// sources are its default gateways, read at apply time.
#[test]
fn apply_netns_defaults_to_the_namespace_gateways() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    let (code, out, err) = netctl_cli(
        &w.socket(),
        &["apply", "rt", "--netns", w.sandbox.name(), "--policy", "-"],
        Some(r#"{"allow_internet_access": false}"#),
    );
    assert_eq!(code, 0, "apply: {out}{err}");
    let (code, out, err) = netctl_cli(&w.socket(), &["show", "rt", "--json"], None);
    assert_eq!(code, 0, "show: {out}{err}");
    let view: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(view["ingress"]["from"], "gateways", "{view}");
    assert_eq!(
        view["ingress"]["allow_from"],
        serde_json::json!(["192.0.2.1/32", "2001:db8:1::1/128"]),
        "{view}"
    );
    let sandbox = w.sandbox.path();
    let _agent = EchoServer::start_on(&sandbox, AGENT_PORT);
    let _user = EchoServer::start_on(&sandbox, PORT);
    let internet = w.internet.path();
    for ip in ["192.0.2.2", "2001:db8:1::2"] {
        let ip: IpAddr = ip.parse().expect("ip");
        // Replies flow even though the sandbox may not send anything new.
        assert_ok(&internet, at(ip, AGENT_PORT), "gateway -> agent port");
        assert_refused_fast(&internet, at(ip, PORT), "gateway -> user port");
    }
    // The host namespace reaches the sandbox through the internet one,
    // from an address that is not the gateway: refused.
    w.internet.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
    assert_refused_fast(
        &w.host.path(),
        at([192, 0, 2, 2], AGENT_PORT),
        "not the gateway -> agent port",
    );
}

/// No `allow_from`, no default route: every new connection in is refused
/// (fail closed); a later apply reads the routes again.
#[test]
fn no_gateway_and_no_allow_from_refuses_everything_inbound() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.sandbox.ip(&["route", "del", "default"]);
    w.sandbox.ip(&["-6", "route", "del", "default"]);
    let view = w.put_ok("rt", "null");
    assert_eq!(view["ingress"]["from"], "none", "{view}");
    assert_eq!(
        view["ingress"]["allow_from"],
        serde_json::json!([]),
        "{view}"
    );
    let sandbox = w.sandbox.path();
    let _agent = EchoServer::start_on(&sandbox, AGENT_PORT);
    let internet = w.internet.path();
    let agent = at([192, 0, 2, 2], AGENT_PORT);
    assert_refused_fast(&internet, agent, "no source allowed");
    let log = std::fs::read_to_string(w.dir.path().join("netctl.log")).unwrap_or_default();
    assert!(
        log.contains("every connection into the sandbox is refused"),
        "{log}"
    );

    w.sandbox
        .ip(&["route", "add", "default", "via", "192.0.2.1"]);
    let view = w.put_ok("rt", "null");
    assert_eq!(view["ingress"]["from"], "gateways", "{view}");
    assert_ok(&internet, agent, "gateway after the route came back");
}

/// A microVM behind the sandbox namespace (here a namespace on a veth
/// named as `--iface`): connections forwarded toward it meet the same
/// inbound rules; what it opens itself still gets its replies.
#[test]
fn the_forward_path_toward_the_vm_is_filtered_too() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    let vm = Netns::new("nvm");
    let (sb_if, _) =
        sbx_tests::netns::link(&w.sandbox, &["203.0.113.65/26"], &vm, &["203.0.113.66/26"]);
    vm.ip(&["route", "add", "default", "via", "203.0.113.65"]);
    w.internet
        .ip(&["route", "add", "203.0.113.64/26", "via", "192.0.2.2"]);
    w.sandbox.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
    let body = format!(
        r#"{{"netns":"{}","iface":"{sb_if}","network":null}}"#,
        w.sandbox.name()
    );
    let r = w.api().call("PUT", "/v1/sandboxes/vm", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    let _agent = EchoServer::start_on(&vm.path(), AGENT_PORT);
    let _user = EchoServer::start_on(&vm.path(), PORT);
    let internet = w.internet.path();
    let vm_ip: IpAddr = "203.0.113.66".parse().expect("ip");
    let before = counters(&w.api().call("GET", "/v1/sandboxes/vm", None).json());
    assert_ok(&internet, at(vm_ip, AGENT_PORT), "gateway -> VM agent port");
    assert_refused_fast(&internet, at(vm_ip, PORT), "gateway -> VM user port");
    w.internet.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
    assert_refused_fast(
        &w.host.path(),
        at(vm_ip, AGENT_PORT),
        "not the gateway -> VM agent port",
    );
    let after = counters(&w.api().call("GET", "/v1/sandboxes/vm", None).json());
    assert!(after.1 >= before.1 + 2, "{before:?} -> {after:?}");
    // The VM's own connections out are answered.
    assert_ok(
        &vm.path(),
        at(addr_of(netctl_support::V4_A), PORT),
        "VM -> internet",
    );
}
