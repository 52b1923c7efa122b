//! The world for netctl's sandbox network setup (SPEC 5): the hypervisor
//! host is itself a namespace the test made, netctl runs inside it, and the
//! host's only uplink leads to an "internet" namespace with an echo server
//! and a DNS server. The machine's real root namespace never forwards.
//!
//! ```text
//!  sandbox A (netctl-made) ─veth─┐
//!  sandbox B (netctl-made) ─veth─┤ host (netctl)  192.0.2.130 ─veth─ 192.0.2.129  internet
//!                                │  2001:db8:1::2                     2001:db8:1::1 lo: servers, DNS
//! ```
//!
//! netctl is started with `nsenter --net` (not `ip netns exec`, whose
//! private mount namespace would hide the namespaces netctl bind-mounts),
//! and with a namespace prefix unique to the test, so a drop guard can
//! remove whatever a failed test left behind without touching anyone else's.

use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netctl_support::{dns_query, in_netns, Daemon, EchoServer, Response};
use crate::netns::{link, Netns};
use crate::process::ChildGuard;

pub use crate::netctl_support::{
    probe_tcp, NsThread, Outcome, AGENT_PORT, DNS_V4, PORT, V4_A, V4_B, V4_C, V6_A,
};

/// Addresses of the host's uplink (and the internet's end of it).
pub const HOST_V4: &str = "192.0.2.130";
pub const INTERNET_V4: &str = "192.0.2.129";
pub const HOST_V6: &str = "2001:db8:1::2";
pub const INTERNET_V6: &str = "2001:db8:1::1";

/// The pools netctl hands out (its defaults, spelled out so the test can
/// check the arithmetic of the view).
pub const IPV4_POOL: &str = "10.200.0.0/16";
pub const IPV6_POOL: &str = "fd00:5b::/48";

/// A microVM guest's address behind every tap (netctl's default
/// `guest_ipv4`), and its gateway, the tap's address.
pub const GUEST_V4: &str = "10.0.2.2";
pub const GUEST_GATEWAY_V4: &str = "10.0.2.1";
pub const GUEST_PREFIX: u8 = 30;
/// The table netctl puts in a tap sandbox's namespace for its guest.
pub const GUEST_TABLE: &str = "sbx_netctl_guest";

/// Names the DNS server in the internet namespace answers.
pub const ALLOWED_NAME: &str = "allowed.test";
pub const DENIED_NAME: &str = "denied.test";

/// Servers on the internet namespace's loopback.
const INTERNET_LOOPBACK: [&str; 6] = [
    "198.51.100.10/32",
    "198.51.100.20/32",
    "203.0.113.10/32",
    "198.51.100.53/32",
    "2001:db8:2::10/128",
    "2001:db8:2::53/128",
];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The whole world; everything is torn down on drop, in field order: the
/// daemon first, then whatever namespaces it left, then the servers, then
/// the test's own namespaces.
pub struct SetupWorld {
    pub daemon: Option<Daemon>,
    _leftovers: PrefixCleanup,
    _dns: ChildGuard,
    _echo: EchoServer,
    pub dir: tempfile::TempDir,
    /// Namespace names netctl makes start with this.
    pub netns_prefix: String,
    /// Host ends of the sandbox veths start with this.
    pub iface_prefix: String,
    /// The host's veth to the internet (netctl's `uplink`).
    pub uplink: String,
    pub host: Netns,
    pub internet: Netns,
}

impl SetupWorld {
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// A world whose netctl config gets `extra` TOML appended (after the
    /// `[setup]` table, so start it with a table header of its own).
    pub fn with_config(extra: &str) -> Self {
        let internet = Netns::new("sti");
        let host = Netns::new("sth");
        let (uplink, _) = link(
            &host,
            &[&format!("{HOST_V4}/25"), &format!("{HOST_V6}/64")],
            &internet,
            &[&format!("{INTERNET_V4}/25"), &format!("{INTERNET_V6}/64")],
        );
        for addr in INTERNET_LOOPBACK {
            internet.ip(&["addr", "add", addr, "dev", "lo"]);
        }
        host.ip(&["route", "add", "default", "via", INTERNET_V4]);
        host.ip(&["-6", "route", "add", "default", "via", INTERNET_V6]);

        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let netns_prefix = format!("sbxt{}x{n}-", pid % 100_000);
        // 6 bytes + up to 5 digits of slot: fits IFNAMSIZ with room.
        let iface_prefix = format!("t{:04x}h", (pid.wrapping_mul(31).wrapping_add(n)) & 0xffff);

        let dir = tempfile::tempdir().expect("tempdir");
        let dns = start_dns(&internet, dir.path());
        let echo = EchoServer::start(&internet.path());
        let config = format!(
            "[dns]\nupstreams = [\"{DNS_V4}\"]\nmin_ttl = 1\nmax_ttl = 60\ngrace = 3\ntimeout_ms = 500\n\
             [setup]\nnetns_prefix = \"{netns_prefix}\"\nhost_iface_prefix = \"{iface_prefix}\"\n\
             ipv4_pool = \"{IPV4_POOL}\"\nipv6_pool = \"{IPV6_POOL}\"\nuplink = \"{uplink}\"\n{extra}\n"
        );
        fs::write(dir.path().join("config.toml"), config).expect("config");
        let mut world = Self {
            daemon: None,
            _leftovers: PrefixCleanup(netns_prefix.clone()),
            _dns: dns,
            _echo: echo,
            dir,
            netns_prefix,
            iface_prefix,
            uplink,
            host,
            internet,
        };
        world.settle();
        world.start_daemon();
        world
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("netctl.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Starts (or restarts, with the same state) netctl in the host.
    pub fn start_daemon(&mut self) {
        self.daemon = None;
        self.daemon = Some(Daemon::start(
            &self.host,
            &self.socket(),
            &self.dir.path().join("config.toml"),
            &self.state_dir(),
        ));
    }

    /// Kills the daemon with SIGKILL (no cleanup of its own) and reaps it.
    pub fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.child.signal(libc::SIGKILL);
            assert!(
                d.child.wait_timeout(Duration::from_secs(10)).is_some(),
                "netctl did not die on SIGKILL"
            );
        }
    }

    pub fn api(&self) -> SetupApi {
        SetupApi {
            socket: self.socket(),
        }
    }

    /// The daemon's log so far (for assertion messages).
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("netctl.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until the host's links are up and no address is still in
    /// duplicate address detection, so a snapshot taken now is stable.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let addrs = self.host.ip(&["-j", "addr"]);
            let text = String::from_utf8_lossy(&addrs.stdout);
            let links = self.host.ip(&["-j", "link", "show", "dev", &self.uplink]);
            let up = String::from_utf8_lossy(&links.stdout).contains("\"operstate\":\"UP\"");
            if up && !text.contains("tentative") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host links did not settle: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything of the host that netctl's setup may touch.
    pub fn snapshot(&self) -> HostSnapshot {
        HostSnapshot::take(self.host.name(), &self.netns_prefix)
    }

    /// Namespaces under /run/netns carrying our prefix.
    pub fn our_namespaces(&self) -> Vec<String> {
        namespaces_with_prefix(&self.netns_prefix)
    }

    /// PUT with `setup`; panics unless 200; returns the view.
    pub fn create(&self, id: &str, tap: bool, network: Option<&str>) -> Value {
        let r = self.api().put_setup(id, tap, network);
        assert_eq!(
            r.status,
            200,
            "PUT {id} with setup: {}\n--- netctl log ---\n{}",
            r.body,
            self.log_tail()
        );
        let view = r.json();
        self.check_view(id, &view, tap);
        view
    }

    /// DELETE; panics unless 204.
    pub fn delete(&self, id: &str) {
        let r = self
            .api()
            .call("DELETE", &format!("/v1/sandboxes/{id}"), None);
        assert_eq!(
            r.status,
            204,
            "DELETE {id}: {}\n--- netctl log ---\n{}",
            r.body,
            self.log_tail()
        );
    }

    /// Checks a view's `setup` against the agreed interface and that the
    /// namespace and the host end of the veth exist.
    pub fn check_view(&self, id: &str, view: &Value, tap: bool) -> SetupView {
        let s = SetupView::from_view(view);
        assert_eq!(view["id"], id, "{view}");
        assert_eq!(s.netns, format!("{}{id}", self.netns_prefix), "{view}");
        assert_eq!(s.netns_path, format!("/run/netns/{}", s.netns), "{view}");
        assert_eq!(view["netns"], s.netns_path.as_str(), "view's netns: {view}");
        assert_eq!(
            s.host_iface,
            format!("{}{}", self.iface_prefix, s.slot),
            "{view}"
        );
        assert_eq!(s.sandbox_iface, "eth0", "{view}");
        let (v4, gw4) = slot_v4(s.slot);
        assert_eq!(s.ipv4, format!("{v4}/30"), "{view}");
        assert_eq!(s.gateway4, gw4, "{view}");
        let (v6, gw6) = slot_v6(s.slot);
        assert_eq!(
            s.ipv6.as_deref(),
            Some(format!("{v6}/64").as_str()),
            "{view}"
        );
        assert_eq!(s.gateway6.as_deref(), Some(gw6.as_str()), "{view}");
        if tap {
            assert_eq!(s.tap.as_deref(), Some("tap0"), "{view}");
            assert_eq!(
                s.guest,
                Some(GuestView {
                    ipv4: format!("{GUEST_V4}/{GUEST_PREFIX}"),
                    gateway4: GUEST_GATEWAY_V4.to_owned(),
                }),
                "{view}"
            );
        } else {
            assert_eq!(s.tap, None, "{view}");
            assert_eq!(s.guest, None, "{view}");
        }
        assert!(
            Path::new(&s.netns_path).exists(),
            "{} missing while {id} is alive",
            s.netns_path
        );
        s
    }

    /// Whether the host has a link of this name.
    pub fn host_has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", self.host.name(), "link", "show", "dev", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Default for SetupWorld {
    fn default() -> Self {
        Self::new()
    }
}

/// The `setup` object of a sandbox view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupView {
    pub netns: String,
    pub netns_path: String,
    pub slot: u32,
    pub host_iface: String,
    pub sandbox_iface: String,
    pub ipv4: String,
    pub gateway4: String,
    pub ipv6: Option<String>,
    pub gateway6: Option<String>,
    pub tap: Option<String>,
    /// The microVM guest's addressing behind the tap (only with a tap).
    pub guest: Option<GuestView>,
}

/// The `setup.guest` object of a sandbox view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestView {
    pub ipv4: String,
    pub gateway4: String,
}

impl SetupView {
    pub fn from_view(view: &Value) -> Self {
        let s = &view["setup"];
        assert!(s.is_object(), "view has no setup object: {view}");
        let text = |k: &str| {
            s[k].as_str()
                .unwrap_or_else(|| panic!("setup.{k} is not a string: {view}"))
                .to_owned()
        };
        let opt = |k: &str| match &s[k] {
            Value::Null => None,
            Value::String(v) => Some(v.clone()),
            other => panic!("setup.{k} is {other}: {view}"),
        };
        Self {
            netns: text("netns"),
            netns_path: text("netns_path"),
            slot: s["slot"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or_else(|| panic!("setup.slot: {view}")),
            host_iface: text("host_iface"),
            sandbox_iface: text("sandbox_iface"),
            ipv4: text("ipv4"),
            gateway4: text("gateway4"),
            ipv6: opt("ipv6"),
            gateway6: opt("gateway6"),
            tap: opt("tap"),
            guest: match &s["guest"] {
                Value::Null => None,
                g => {
                    let field = |k: &str| {
                        g[k].as_str()
                            .unwrap_or_else(|| panic!("setup.guest.{k} is not a string: {view}"))
                            .to_owned()
                    };
                    assert_eq!(
                        g.as_object().map(|o| o.len()),
                        Some(2),
                        "setup.guest has exactly ipv4 and gateway4: {view}"
                    );
                    Some(GuestView {
                        ipv4: field("ipv4"),
                        gateway4: field("gateway4"),
                    })
                }
            },
        }
    }

    /// The sandbox's eth0 IPv4 address without the prefix length.
    pub fn ipv4_addr(&self) -> std::net::Ipv4Addr {
        self.ipv4
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bad ipv4 {}", self.ipv4))
    }
}

/// Sandbox and host addresses of a slot in [`IPV4_POOL`]: a /30 each, the
/// host end .4n+1, the sandbox .4n+2.
pub fn slot_v4(slot: u32) -> (String, String) {
    let base = u32::from(std::net::Ipv4Addr::new(10, 200, 0, 0)) + 4 * slot;
    (
        std::net::Ipv4Addr::from(base + 2).to_string(),
        std::net::Ipv4Addr::from(base + 1).to_string(),
    )
}

/// Sandbox and host addresses of a slot in [`IPV6_POOL`]: a /64 each, the
/// host ::1, the sandbox ::2.
pub fn slot_v6(slot: u32) -> (String, String) {
    let pool: std::net::Ipv6Addr = "fd00:5b::".parse().expect("pool");
    let net = u128::from(pool) | (u128::from(slot) << 64);
    (
        std::net::Ipv6Addr::from(net | 2).to_string(),
        std::net::Ipv6Addr::from(net | 1).to_string(),
    )
}

/// Removes every namespace under /run/netns whose name carries the test's
/// prefix (a failed test's leftovers); runs after the daemon is gone.
struct PrefixCleanup(String);

impl Drop for PrefixCleanup {
    fn drop(&mut self) {
        for name in namespaces_with_prefix(&self.0) {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Names under /run/netns starting with `prefix`, sorted.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Mount points under /run/netns carrying `prefix` (a namespace unlinked
/// but still mounted would show here).
pub fn mounts_with_prefix(prefix: &str) -> Vec<String> {
    let needle = format!("/run/netns/{prefix}");
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&needle))
        .map(str::to_owned)
        .collect();
    mounts.sort();
    mounts
}

/// dnsmasq in the internet namespace answering [`ALLOWED_NAME`] with
/// V4_A and [`DENIED_NAME`] with V4_B.
fn start_dns(internet: &Netns, dir: &Path) -> ChildGuard {
    let hosts = dir.join("hosts");
    fs::write(
        &hosts,
        format!("{V4_A} {ALLOWED_NAME}\n{V4_B} {DENIED_NAME}\n"),
    )
    .expect("hosts file");
    let mut cmd = internet.command("/usr/sbin/dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        "--group=root",
        "--pid-file",
        "--port=53",
        "--local-ttl=5",
    ])
    .arg(format!("--listen-address={DNS_V4}"))
    .arg(format!("--addn-hosts={}", hosts.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = ChildGuard::spawn("dnsmasq", &mut cmd);
    let deadline = Instant::now() + Duration::from_secs(5);
    let server: SocketAddr = format!("{DNS_V4}:53").parse().expect("dns addr");
    let path = internet.path();
    loop {
        let answered = in_netns(&path, move || {
            dns_query(server, ALLOWED_NAME, Duration::from_millis(100))
                .map(|a| !a.is_empty())
                .unwrap_or(false)
        });
        if answered {
            return child;
        }
        assert!(Instant::now() < deadline, "dnsmasq did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The host's state that netctl's setup may change, compared whole before
/// and after: links, addresses, routes of every table, the nftables ruleset,
/// and our namespaces (files and mounts).
#[derive(Debug, Clone, PartialEq)]
pub struct HostSnapshot {
    pub links: Value,
    pub addrs: Value,
    pub routes4: Value,
    pub routes6: Value,
    pub ruleset: Value,
    pub namespaces: Vec<String>,
    pub mounts: Vec<String>,
}

impl HostSnapshot {
    /// The state of the namespace `ns` (a name under /run/netns) and of the
    /// namespaces and mounts carrying `prefix`.
    pub fn take(ns: &str, prefix: &str) -> Self {
        let json = |args: &[&str]| -> Value {
            let out = crate::netns::run(Command::new("ip").args(["netns", "exec", ns]).args(args));
            let text = String::from_utf8_lossy(&out.stdout);
            if text.trim().is_empty() {
                return Value::Array(Vec::new());
            }
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        let links = json(&["ip", "-d", "-j", "link"]);
        let addrs = json(&["ip", "-j", "addr"]);
        let routes4 = json(&["ip", "-4", "-j", "route", "show", "table", "all"]);
        let mut routes6 = json(&["ip", "-6", "-j", "route", "show", "table", "all"]);
        // Subnet-router anycast routes come and go with the forwarding
        // sysctl (which netctl turns on for its uplink), not with anything
        // netctl made.
        if let Value::Array(routes) = &mut routes6 {
            routes.retain(|r| r["type"] != "anycast");
        }
        let ruleset = json(&["nft", "-j", "list", "ruleset"]);
        Self {
            links: strip(links),
            addrs: strip(addrs),
            routes4,
            routes6,
            ruleset,
            namespaces: namespaces_with_prefix(prefix),
            mounts: mounts_with_prefix(prefix),
        }
    }

    /// Panics naming every part that differs, both versions shown.
    pub fn assert_same(&self, after: &HostSnapshot, what: &str) {
        let mut diffs = Vec::new();
        let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
        for (name, a, b) in [
            ("links", &self.links, &after.links),
            ("addresses", &self.addrs, &after.addrs),
            ("IPv4 routes", &self.routes4, &after.routes4),
            ("IPv6 routes", &self.routes6, &after.routes6),
            ("nft ruleset", &self.ruleset, &after.ruleset),
        ] {
            if a != b {
                diffs.push(format!(
                    "{name} differ\n--- before ---\n{}\n--- after ---\n{}",
                    pretty(a),
                    pretty(b)
                ));
            }
        }
        if self.namespaces != after.namespaces {
            diffs.push(format!(
                "namespaces differ: before {:?} after {:?}",
                self.namespaces, after.namespaces
            ));
        }
        if self.mounts != after.mounts {
            diffs.push(format!(
                "mounts differ: before {:?} after {:?}",
                self.mounts, after.mounts
            ));
        }
        assert!(
            diffs.is_empty(),
            "{what}: host changed\n{}",
            diffs.join("\n")
        );
    }
}

/// Drops fields that move on their own (DAD's `tentative` flag while an
/// address settles; statistics, should a newer `ip` print them).
fn strip(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.retain(|k, _| k != "tentative" && !k.starts_with("stats"));
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// HTTP/1.1 over the daemon's unix socket; unlike
/// [`crate::netctl_support::Api`] it can also report a failed call instead
/// of panicking (the daemon may be killed mid-request).
#[derive(Debug, Clone)]
pub struct SetupApi {
    pub socket: PathBuf,
}

impl SetupApi {
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Response, String> {
        let mut s = UnixStream::connect(&self.socket)
            .map_err(|e| format!("connect {}: {e}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: netctl\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP head in {text:?}"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_owned()
        };
        Ok(Response { status, body })
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// The PUT body for a netctl-made network, `network` being the policy
    /// JSON (None: no policy).
    pub fn setup_body(tap: bool, network: Option<&str>) -> String {
        format!(
            r#"{{"setup":{{"tap":{tap}}},"network":{}}}"#,
            network.unwrap_or("null")
        )
    }

    pub fn put_setup(&self, id: &str, tap: bool, network: Option<&str>) -> Response {
        self.call(
            "PUT",
            &format!("/v1/sandboxes/{id}"),
            Some(&Self::setup_body(tap, network)),
        )
    }

    /// Ids of the sandboxes the daemon knows.
    pub fn ids(&self) -> Vec<String> {
        let r = self.call("GET", "/v1/sandboxes", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let mut ids: Vec<String> = r
            .json()
            .as_array()
            .unwrap_or_else(|| panic!("list is not an array: {}", r.body))
            .iter()
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n.min(tail.len())]);
        rest = tail.get(n + 2..).unwrap_or("");
    }
    out
}

/// A TCP round trip through an echo server, from inside a namespace.
pub fn probe_from(ns_path: &str, addr: SocketAddr, timeout: Duration) -> (Outcome, Duration) {
    in_netns(ns_path, move || probe_tcp(addr, timeout))
}

/// An echo server on `[::]:PORT` inside a netctl-made sandbox.
pub fn echo_in(ns_path: &str) -> EchoServer {
    EchoServer::start(ns_path)
}

/// An echo server on `[::]:port` inside a netctl-made sandbox.
pub fn echo_on(ns_path: &str, port: u16) -> EchoServer {
    EchoServer::start_on(ns_path, port)
}

/// `cat <path>` inside a namespace (sysctls under /proc/sys/net are per
/// namespace).
pub fn read_in_netns(ns: &str, path: &str) -> String {
    let out = crate::netns::run(Command::new("ip").args(["netns", "exec", ns, "cat", path]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether the namespace `ns` has a link named `dev`.
pub fn netns_has_link(ns: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "link", "show", "dev", dev])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The IPv4 addresses (`address/len`) on `dev` inside the namespace `ns`.
pub fn ipv4_addresses(ns: &str, dev: &str) -> Vec<String> {
    let out = crate::netns::run(
        Command::new("ip").args(["-n", ns, "-j", "-4", "addr", "show", "dev", dev]),
    );
    let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()));
    let mut addrs: Vec<String> = links
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
        .collect();
    addrs.sort();
    addrs
}

/// `nft -j list table ip sbx_netctl_guest` inside the namespace `ns`,
/// reduced to what the table means: each chain as `[name, type, hook,
/// prio]` and each rule as `[chain, expr]`, in listing order. `None` when
/// the table is not there.
pub fn guest_table(ns: &str) -> Option<Value> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "nft",
            "-j",
            "list",
            "table",
            "ip",
            GUEST_TABLE,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run nft");
    if !out.status.success() {
        return None;
    }
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "nft listing is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let mut reduced = Vec::new();
    for item in listing["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = item.get("chain") {
            reduced
                .push(serde_json::json!({"chain": [c["name"], c["type"], c["hook"], c["prio"]]}));
        } else if let Some(r) = item.get("rule") {
            reduced.push(serde_json::json!({"rule": [r["chain"], r["expr"]]}));
        }
    }
    Some(Value::Array(reduced))
}

/// What [`guest_table`] must list for a sandbox at `sandbox_v4` whose
/// guest's agent port is `port`.
pub fn expected_guest_table(sandbox_v4: &str, port: u16) -> Value {
    serde_json::json!([
        {"chain": ["prerouting", "nat", "prerouting", -100]},
        {"chain": ["postrouting", "nat", "postrouting", 100]},
        {"rule": ["prerouting", [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": sandbox_v4}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": port}},
            {"dnat": {"addr": GUEST_V4}}
        ]]},
        {"rule": ["postrouting", [
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": GUEST_V4}},
            {"snat": {"addr": sandbox_v4}}
        ]]}
    ])
}

/// A stand-in for the microVM on a sandbox's tap, without a VM: a "guest"
/// namespace with a tap of its own, wired frame for frame to the sandbox's
/// tap (both opened with TUNSETIFF; a thread copies Ethernet frames between
/// the two descriptors, as a VMM's virtio-net backend does). The guest's
/// kernel then talks through the sandbox's tap exactly as a guest would:
/// ARP, its address, its default route via the tap's address.
pub struct GuestWire {
    stop: Arc<AtomicBool>,
    copier: Option<JoinHandle<()>>,
    /// The guest's namespace (its tap is `gtap0`).
    pub ns: Netns,
}

/// The guest's NIC inside its namespace.
const GUEST_NIC: &str = "gtap0";

impl GuestWire {
    /// Attaches to `tap` in the sandbox namespace at `sandbox_ns_path` and
    /// gives the guest `address/prefix` with a default route via `gateway`.
    pub fn attach(sandbox_ns_path: &str, tap: &str, address: &str, gateway: &str) -> Self {
        let ns = Netns::new("stg");
        // IPv4 only, like the guest netctl plans for; no IPv6 chatter.
        ns.sh("echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6");
        let tap_name = tap.to_owned();
        let outer = in_netns(sandbox_ns_path, move || open_tap(&tap_name));
        let inner = in_netns(&ns.path(), || open_tap(GUEST_NIC));
        ns.ip(&["addr", "add", address, "dev", GUEST_NIC]);
        ns.ip(&["link", "set", GUEST_NIC, "up"]);
        ns.ip(&["route", "add", "default", "via", gateway]);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let copier = std::thread::spawn(move || copy_frames(&outer, &inner, &flag));
        Self {
            stop,
            copier: Some(copier),
            ns,
        }
    }
}

impl Drop for GuestWire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.copier.take() {
            let _ = h.join();
        }
    }
}

/// `struct ifreq` as TUNSETIFF reads it.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (attaching to, or creating) tap `name` in this thread's namespace,
/// non-blocking, single queue, no packet information header: the flags
/// netctl made its tap with.
fn open_tap(name: &str) -> fs::File {
    let tun = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `req` is an initialised ifreq that outlives the call; the fd
    // is open.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert!(
        rc == 0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    tun
}

/// Copies every frame each side sends to the other until `stop`.
fn copy_frames(a: &fs::File, b: &fs::File, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
        if ready <= 0 {
            continue;
        }
        for (from, to, revents) in [(a, b, fds[0].revents), (b, a, fds[1].revents)] {
            if revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                return;
            }
            if revents & libc::POLLIN == 0 {
                continue;
            }
            let mut reader = from;
            let mut writer = to;
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        // A frame the other side cannot take is lost, as
                        // on a wire.
                        let _ = writer.write(&buf[..n]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => return,
                }
            }
        }
    }
}
