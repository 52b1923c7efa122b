//! The inbound filter and the proxy together (SPEC 4 "Inbound", 5, 6): a
//! sandbox whose network netctl made (`netctl netns create`, so its inbound
//! filter is in force) runs `sbx-agent` on 0.0.0.0:9501 and an HTTP service
//! on 0.0.0.0:8080. From the host namespace 9501 answers and 8080 is
//! refused at once (a reset, not a timeout); from the "internet" namespace
//! both are refused; yet `sbx-proxy`, running in the same host namespace,
//! reaches 8080 through the agent once the port is exposed — and directly
//! the port stays closed. netctl counts every refusal.
//!
//! ```text
//!  sandbox (netctl-made)                     host (test namespace)          internet
//!  agent 0.0.0.0:9501      ─veth(netctl)─  netctl, sbx-proxy 127.0.0.1:0  ─veth─  probes
//!  service 0.0.0.0:8080                    probes, curl
//! ```
//!
//! The agent listens on IPv4 only, so for the IPv6 probes a stand-in HTTP
//! server listens on `[::]:9501` (IPv6 only) beside it; the service listens
//! on `[::]:8080` (IPv6 only) as well as on 0.0.0.0:8080. Every refused
//! port has a listener, checked from inside the sandbox: a refusal is the
//! filter's, never the kernel's "nothing listens here".

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sbx_tests::agent::{Secrets, READY_TIMEOUT};
use sbx_tests::bins::bin;
use sbx_tests::netctl_support::{in_netns, netctl_cli};
use sbx_tests::netns::require_netns;
use sbx_tests::process::{piped, ChildGuard};
use sbx_tests::proxy_support::{credentials_cli, output_within, DOMAIN, ORG, PROJECT};
use sbx_tests::setup_support::*;
use serde_json::{json, Value};

/// The sandbox's id (netctl's, the agent's and the proxy's).
const ID: &str = "inbp";
/// The user service's port.
const SERVICE_PORT: u16 = 8080;
/// How fast a refusal must be: a reset, not a timeout.
const FAST: Duration = Duration::from_millis(500);
/// What the service answers, so a 200 is known to come from it.
const SERVICE_BODY: &str = "hello from the service on 8080 in sandbox inbp";

/// An HTTP server answering every GET with 200 and `argv[1]`, listening on
/// each `host:port` of `argv[2:]` (an IPv6 host listens on IPv6 only);
/// prints `ready` once every socket listens.
const HTTP_SERVER: &str = r#"
import socket, socketserver, sys, threading
from http.server import BaseHTTPRequestHandler

body = sys.argv[1].encode()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

class V4(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

class V6(V4):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

servers = []
for spec in sys.argv[2:]:
    host, port = spec.rsplit(":", 1)
    host = host.strip("[]")
    cls = V6 if ":" in host else V4
    servers.append(cls((host, int(port)), Handler))
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

// ------------------------------------------------------------------ world

/// The whole test world, torn down in field order: the processes inside the
/// sandbox and the proxy first, then netctl and every namespace
/// ([`SetupWorld`]'s own drop: the daemon, leftovers of our prefix, the
/// servers, the host and internet namespaces).
struct World {
    services: Vec<ChildGuard>,
    agent: Option<ChildGuard>,
    proxy: Option<Proxy>,
    secrets: Secrets,
    setup: SetupView,
    w: SetupWorld,
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(p) = &self.proxy {
                eprintln!("---- sbx-proxy log ----\n{}", p.log_tail(60));
            }
            eprintln!("---- netctl log ----\n{}", self.w.log_tail());
        }
        // Processes inside the sandbox go before the namespace does.
        self.services.clear();
        self.agent = None;
        self.proxy = None;
    }
}

impl World {
    fn sandbox_v4(&self) -> IpAddr {
        IpAddr::V4(self.setup.ipv4_addr())
    }

    /// The sandbox's addresses: IPv4, and IPv6 when netctl gave it one.
    fn sandbox_ips(&self) -> Vec<IpAddr> {
        let mut ips = vec![self.sandbox_v4()];
        if let Some(v6) = &self.setup.ipv6 {
            ips.push(addr_of(v6));
        }
        ips
    }

    /// A command run inside the sandbox's (netctl-made) namespace.
    fn sandbox_cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.setup.netns, program]);
        cmd
    }

    /// Starts the HTTP server script inside the sandbox on `listen`.
    fn http_server(&mut self, label: &str, body: &str, listen: &[String]) {
        let mut cmd = self.sandbox_cmd("python3");
        cmd.args(["-c", HTTP_SERVER, body]).args(listen);
        let mut guard = ChildGuard::spawn(label, piped(&mut cmd));
        guard.wait_for_stdout_line("ready", READY_TIMEOUT);
        self.services.push(guard);
    }

    /// `counters.inbound_refused` of the sandbox, from `netctl show --json`.
    fn inbound_refused(&self) -> u64 {
        let (code, out, err) = netctl_cli(&self.w.socket(), &["show", ID, "--json"], None);
        assert_eq!(code, 0, "netctl show {ID} --json: {out}{err}");
        let view: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        view["counters"]["inbound_refused"]
            .as_u64()
            .unwrap_or_else(|| panic!("no counters.inbound_refused: {view}"))
    }
}

fn addr_of(cidr: &str) -> IpAddr {
    cidr.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad address {cidr}"))
}

/// `host:port` as a listen spec for [`HTTP_SERVER`].
fn spec(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

// ------------------------------------------------------------------ probes

/// What a direct connection to the sandbox got.
#[derive(Debug)]
enum Probe {
    /// Connected, and an HTTP answer came back: its status line and body.
    Answered(String, String),
    /// The connection was refused (a reset).
    Refused,
    /// Nothing came back in time.
    Timeout,
    /// Any other failure (the text shows in assertion messages).
    Failed(#[allow(dead_code)] String),
}

/// `GET path` straight to `addr` from inside the namespace at `ns_path`.
fn probe(ns_path: &str, addr: SocketAddr, path: &str) -> (Probe, Duration) {
    let path = path.to_owned();
    in_netns(ns_path, move || {
        let started = Instant::now();
        let outcome = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Probe::Refused,
            Err(e) if e.kind() == ErrorKind::TimedOut => Probe::Timeout,
            Err(e) => Probe::Failed(format!("connect: {e}")),
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req =
                    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                let mut raw = Vec::new();
                match s
                    .write_all(req.as_bytes())
                    .and_then(|()| s.read_to_end(&mut raw))
                {
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&raw).into_owned();
                        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                        let status = head.lines().next().unwrap_or("").to_owned();
                        Probe::Answered(status, body.to_owned())
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        Probe::Timeout
                    }
                    Err(e) => Probe::Failed(format!("exchange: {e}")),
                }
            }
        };
        (outcome, started.elapsed())
    })
}

/// Probes until an HTTP 200 comes back (a neighbour entry may still be
/// settling) or `within` passes; returns the last outcome and the body.
#[track_caller]
fn assert_answers(ns_path: &str, addr: SocketAddr, path: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (outcome, _) = probe(ns_path, addr, path);
        if let Probe::Answered(status, body) = &outcome {
            if status.starts_with("HTTP/1.1 200") {
                return body.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {addr}{path} should answer 200, got {outcome:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[track_caller]
fn assert_refused_fast(ns_path: &str, addr: SocketAddr, what: &str) {
    let (outcome, took) = probe(ns_path, addr, "/");
    assert!(
        matches!(outcome, Probe::Refused),
        "{what}: {addr} should be refused (a reset), got {outcome:?} after {took:?}"
    );
    assert!(took < FAST, "{what}: refusing {addr} took {took:?}");
}

// ------------------------------------------------------------------- proxy

/// `sbx-proxy serve` in the host namespace: a plain listener on
/// 127.0.0.1:0, the registry on its admin socket, one API key.
struct Proxy {
    /// Ended (by its PID) on drop.
    _process: ChildGuard,
    http: SocketAddr,
    api_key: String,
    dir: PathBuf,
    host_ns: String,
}

impl Proxy {
    fn start(w: &SetupWorld) -> Self {
        let dir = w.dir.path().join("proxy");
        std::fs::create_dir_all(&dir).expect("proxy dir");
        let credentials = dir.join("credentials.toml");
        let api_key = credentials_cli(
            &credentials,
            &["add-api-key", "--org", ORG, "--project", PROJECT],
        );
        let mut config = String::new();
        writeln!(config, "domains = [\"{DOMAIN}\"]").unwrap();
        writeln!(config, "listen_http = \"127.0.0.1:0\"").unwrap();
        writeln!(config, "listen_api = \"127.0.0.1:0\"").unwrap();
        writeln!(
            config,
            "admin_socket = \"{}\"",
            dir.join("admin.sock").display()
        )
        .unwrap();
        writeln!(config, "state_dir = \"{}\"", dir.join("state").display()).unwrap();
        writeln!(config, "log_format = \"text\"\n\n[auth]").unwrap();
        writeln!(config, "credentials_file = \"{}\"", credentials.display()).unwrap();
        writeln!(config, "\n[limits]\nconnect_timeout_ms = 3000").unwrap();
        let config_path = dir.join("proxy.toml");
        std::fs::write(&config_path, config).expect("proxy config");

        let log = std::fs::File::create(dir.join("proxy.log")).expect("proxy log");
        let proxy = bin("sbx-proxy");
        let mut cmd = w.host.command(proxy.to_str().expect("utf-8"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut process = ChildGuard::spawn("sbx-proxy", &mut cmd);
        let stdout = process.child_mut().stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut reader, &mut line).is_ok_and(|n| n > 0) {
                let _ = tx.send(line.trim_end().to_owned());
                line.clear();
            }
        });
        let mut http = None;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                let log = std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default();
                panic!("sbx-proxy did not print `sbx-proxy ready`; log:\n{log}")
            });
            if let Some(addr) = line.strip_prefix("sbx-proxy: http on ") {
                http = Some(
                    addr.trim()
                        .parse()
                        .unwrap_or_else(|e| panic!("{e}: {line:?}")),
                );
            } else if line.trim() == "sbx-proxy ready" {
                break;
            }
        }
        Self {
            _process: process,
            http: http.expect("sbx-proxy announced no http listener"),
            api_key,
            dir,
            host_ns: w.host.name().to_owned(),
        }
    }

    fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A call to the admin API over its unix socket: (status, body).
    fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.arg("--unix-socket")
            .arg(self.dir.join("admin.sock"))
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "-X",
                method,
            ]);
        if let Some(body) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(body.to_string());
        }
        cmd.arg(format!("http://admin{path}"));
        status_and_body(&output_within(&mut cmd, Duration::from_secs(20)), "admin")
    }

    #[track_caller]
    fn admin_ok(&self, method: &str, path: &str, body: &Value) -> Value {
        let (status, text) = self.admin(method, path, Some(body));
        assert_eq!(status, 200, "{method} {path} {body}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// GET `path` through the plain listener with `Host: <host>.<DOMAIN>`,
    /// by curl in the host namespace, with the API key when `auth`.
    fn get(&self, host: &str, path: &str, auth: bool) -> (u16, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host_ns, "curl", "-sS"])
            .args(["--max-time", "10", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Host: {host}.{DOMAIN}"));
        if auth {
            cmd.arg("-H")
                .arg(format!("Authorization: Bearer {}", self.api_key));
        }
        cmd.arg(format!("http://{}{path}", self.http));
        status_and_body(&output_within(&mut cmd, Duration::from_secs(20)), "curl")
    }

    /// Asserts a proxy error: this status and JSON `code`.
    #[track_caller]
    fn assert_error(&self, (status, body): (u16, String), want: u16, code: &str) {
        assert_eq!(status, want, "expected {want} {code}, got {status}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["code"], code, "{v}");
    }
}

/// curl's output with `-w "\n%{http_code}"` appended: (status, body).
fn status_and_body(out: &Output, what: &str) -> (u16, String) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = text.trim_end_matches('\n');
    // The status is the last line (curl's `-w "\n%{http_code}"`).
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text));
    let status = code.trim().parse().unwrap_or(0);
    assert!(
        status != 0,
        "{what}: no HTTP answer (exit {}): {}{}",
        out.status,
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    (status, body.to_owned())
}

// -------------------------------------------------------------------- test

#[test]
fn user_port_is_closed_directly_and_open_through_the_proxy_once_exposed() {
    if !require_netns() {
        return;
    }
    let started = Instant::now();
    let w = SetupWorld::new();
    // The internet namespace may try to connect in: it routes the pools
    // through the host (which forwards, having an uplink).
    w.internet.ip(&["route", "add", IPV4_POOL, "via", HOST_V4]);
    w.internet
        .ip(&["-6", "route", "add", IPV6_POOL, "via", HOST_V6]);

    // netctl makes the sandbox's network, inbound filter included; the
    // egress policy lets nothing new out, so whatever works below works on
    // connections opened toward the sandbox.
    let (code, out, err) = netctl_cli(
        &w.socket(),
        &["netns", "create", ID, "--policy", "-", "--json"],
        Some(r#"{"allow_internet_access": false}"#),
    );
    assert_eq!(code, 0, "netns create: {out}{err}\n{}", w.log_tail());
    let view: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let setup = w.check_view(ID, &view, false);
    assert_eq!(view["ingress"]["port"], AGENT_PORT, "{view}");
    assert_eq!(view["ingress"]["from"], "host_end", "{view}");

    let secrets = Secrets::new(ID);
    let mut world = World {
        services: Vec::new(),
        agent: None,
        proxy: None,
        secrets,
        setup,
        w,
    };

    // Inside the sandbox: the agent on 0.0.0.0:9501, the service on
    // 0.0.0.0:8080 (and [::]:8080), the IPv6 stand-in on [::]:9501.
    let agent = bin("sbx-agent");
    let mut cmd = world.sandbox_cmd(agent.to_str().expect("utf-8"));
    cmd.args(["--listen", "0.0.0.0:9501", "--sandbox-id", ID])
        .arg("--forwarded-auth-key-file")
        .arg(world.secrets.key_file())
        .env("RUST_LOG", "warn");
    let mut guard = ChildGuard::spawn("sbx-agent", piped(&mut cmd));
    guard.wait_for_stdout_line("listening on", READY_TIMEOUT);
    world.agent = Some(guard);
    let mut service = vec![spec("0.0.0.0", SERVICE_PORT)];
    if world.setup.ipv6.is_some() {
        service.push(spec("::", SERVICE_PORT));
        world.http_server(
            "IPv6 stand-in on 9501",
            "stand-in for the agent on IPv6",
            &[spec("::", AGENT_PORT)],
        );
    }
    world.http_server("service on 8080", SERVICE_BODY, &service);

    // Every port listens on the sandbox's own addresses (seen from inside,
    // where the filter does not apply): a refusal below is the filter's.
    let sandbox_ns = world.setup.netns_path.clone();
    for ip in world.sandbox_ips() {
        assert_answers(
            &sandbox_ns,
            SocketAddr::new(ip, AGENT_PORT),
            "/api/v1/health",
            "inside -> 9501",
        );
        let body = assert_answers(
            &sandbox_ns,
            SocketAddr::new(ip, SERVICE_PORT),
            "/",
            "inside -> 8080",
        );
        assert_eq!(body, SERVICE_BODY);
    }

    // Direct probes: the host reaches 9501 only; the internet nothing.
    let host_ns = world.w.host.path();
    let internet_ns = world.w.internet.path();
    let before = world.inbound_refused();
    for ip in world.sandbox_ips() {
        assert_answers(
            &host_ns,
            SocketAddr::new(ip, AGENT_PORT),
            "/api/v1/health",
            "host -> 9501",
        );
        assert_refused_fast(&host_ns, SocketAddr::new(ip, SERVICE_PORT), "host -> 8080");
        assert_refused_fast(
            &internet_ns,
            SocketAddr::new(ip, AGENT_PORT),
            "internet -> 9501",
        );
        assert_refused_fast(
            &internet_ns,
            SocketAddr::new(ip, SERVICE_PORT),
            "internet -> 8080",
        );
    }
    let probes = 3 * world.sandbox_ips().len() as u64;
    let after_probes = world.inbound_refused();
    assert!(
        after_probes >= before + probes,
        "{probes} refused connections, inbound_refused {before} -> {after_probes}"
    );
    let (code, shown, err) = netctl_cli(&world.w.socket(), &["show", ID], None);
    assert_eq!(code, 0, "netctl show: {err}");
    assert!(
        shown.contains("inbound  tcp/9501 from [") && shown.contains("host end of the link"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("in: {after_probes} refused")),
        "{shown}"
    );

    // The proxy in the host namespace, the sandbox registered through its
    // admin socket: private, nothing exposed.
    world.proxy = Some(Proxy::start(&world.w));
    let agent_addr = SocketAddr::new(world.sandbox_v4(), AGENT_PORT).to_string();
    let key_file = world.secrets.key_file();
    let p = world.proxy.as_ref().expect("proxy");
    let entry = p.admin_ok(
        "PUT",
        &format!("/v1/sandboxes/{ID}"),
        &json!({
            "organization_id": ORG,
            "project_id": PROJECT,
            "agent": agent_addr,
            "forwarded_auth_key_file": key_file,
            "exposed_ports": [],
            "allow_unauthenticated_access": false,
            "status": "running",
        }),
    );
    assert_eq!(entry["agent"], agent_addr.as_str(), "{entry}");

    // The agent answers through the proxy (its connection comes from the
    // host end, the one source the filter lets in).
    let (status, body) = p.get(ID, "/api/v1/info", true);
    assert_eq!(status, 200, "agent through the proxy: {body}");
    // Not exposed: 403 with the API key, 401 without.
    let port_host = format!("{SERVICE_PORT}-{ID}");
    p.assert_error(p.get(&port_host, "/", true), 403, "PORT_NOT_EXPOSED");
    p.assert_error(p.get(&port_host, "/", false), 401, "UNAUTHORIZED");

    // Exposed (private): the service's answer with the key, 401 without.
    let exposed = p.admin_ok(
        "PATCH",
        &format!("/v1/sandboxes/{ID}"),
        &json!({"exposed_ports": [SERVICE_PORT]}),
    );
    assert_eq!(exposed["exposed_ports"], json!([SERVICE_PORT]), "{exposed}");
    assert_eq!(
        p.get(&port_host, "/", true),
        (200, SERVICE_BODY.to_owned()),
        "exposed 8080 with the API key"
    );
    p.assert_error(p.get(&port_host, "/", false), 401, "UNAUTHORIZED");

    // Public: anyone, no credential.
    let public = p.admin_ok(
        "PATCH",
        &format!("/v1/sandboxes/{ID}"),
        &json!({"allow_unauthenticated_access": true}),
    );
    assert_eq!(public["allow_unauthenticated_access"], true, "{public}");
    assert_eq!(
        p.get(&port_host, "/", false),
        (200, SERVICE_BODY.to_owned()),
        "public 8080 without a credential"
    );

    // Nothing the proxy sent was refused.
    let before_again = world.inbound_refused();
    assert_eq!(
        before_again, after_probes,
        "inbound_refused moved while only the proxy connected"
    );

    // Exposing a port in the proxy opens nothing in the filter: directly,
    // 8080 is still refused from the host and from the internet.
    for ip in world.sandbox_ips() {
        let addr = SocketAddr::new(ip, SERVICE_PORT);
        assert_refused_fast(&host_ns, addr, "host -> 8080 once exposed");
        assert_refused_fast(&internet_ns, addr, "internet -> 8080 once exposed");
    }
    let after_again = world.inbound_refused();
    let probes = 2 * world.sandbox_ips().len() as u64;
    assert!(
        after_again >= before_again + probes,
        "{probes} more refusals, inbound_refused {before_again} -> {after_again}"
    );

    // Tear down in order, the network last; the drop guards do the same on
    // a failure.
    world.proxy = None;
    world.services.clear();
    world.agent = None;
    world.w.delete(ID);
    assert!(
        !Path::new(&world.setup.netns_path).exists(),
        "{} left behind",
        world.setup.netns_path
    );
    eprintln!("proxy_inbound: {:?}", started.elapsed());
}
