//! The world for `sbx-proxy` (SPEC 5 and 6): sandboxes are network
//! namespaces with a real `sbx-agent` on 0.0.0.0:9501 and services bound to
//! their own 127.0.0.1; each is linked by a veth pair to a "host" namespace
//! the test made, where `sbx-proxy` runs with its listeners on the host's
//! loopback and where every client (curl, Python) runs too.
//!
//! ```text
//!  sandbox A: agent :9501, services on 127.0.0.1 ─veth─ 10.77.k.1 ┐
//!  sandbox B: agent :9501                         ─veth─ 10.77.k.5 ┤ host: sbx-proxy on 127.0.0.1,
//!     (10.77.k.2, 10.77.k.6)                                       ┘       curl, python clients
//! ```
//!
//! The admin socket is a file, so the registry is driven from the test
//! process itself (`curl --unix-socket`). Credentials are minted with the
//! proxy's own CLI before it starts. Everything is removed on drop, also on
//! panic (the proxy's log is printed then).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::agent::{Secrets, READY_TIMEOUT};
use crate::bins::{bin, workspace_root};
use crate::netctl_support::in_netns;
use crate::netns::{link, require_netns, Netns};
use crate::process::{piped, ChildGuard};

/// The proxy's public domain in every test (plus `local`, the SDK's).
pub const DOMAIN: &str = "sbx.test";
/// The organization and project that own the test sandboxes.
pub const ORG: &str = "org-1";
pub const PROJECT: &str = "proj-1";
/// Another tenant: its credentials are valid but must not see our sandboxes.
pub const OTHER_ORG: &str = "org-2";
pub const OTHER_PROJECT: &str = "proj-9";
/// The agent's port.
pub const AGENT_PORT: u16 = 9501;

/// The Python packages the proxy tests need in `target/sdk-venv` (the SDK
/// conformance test's venv, shared).
const VENV_PACKAGES: &[&str] = &["tensorlake==0.5.163", "grpcio", "websockets", "h2", "httpx"];

static WORLDS: AtomicU32 = AtomicU32::new(0);

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

// ------------------------------------------------------------------ python

/// The venv's python with the SDK, grpcio, websockets and h2; created on
/// first use. None (skip) when it cannot be made, except under `CI=true`
/// (panic).
pub fn venv_python() -> Option<PathBuf> {
    crate::python::venv_python_with("sdk-venv", "proxy", VENV_PACKAGES)
}

/// `tests/py/<name>`.
pub fn py_script(name: &str) -> PathBuf {
    workspace_root().join("tests").join("py").join(name)
}

/// Runs a command with a deadline; kills it when the deadline passes.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
            panic!("{cmd:?} timed out after {timeout:?} ({status}); stderr: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

// --------------------------------------------------------------------- TLS

/// A test CA and a wildcard certificate `*.sbx.test` signed by it.
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    /// Writes `<prefix>ca.pem`, `<prefix>cert.pem`, `<prefix>key.pem` in `dir`.
    pub fn generate(dir: &Path, prefix: &str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("sbx proxy test CA {prefix}"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign CA");
        let names = vec![
            format!("*.{DOMAIN}"),
            DOMAIN.to_owned(),
            "localhost".to_owned(),
        ];
        let mut leaf = CertificateParams::new(names).expect("leaf params");
        leaf.distinguished_name
            .push(DnType::CommonName, format!("*.{DOMAIN}"));
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf_cert = leaf
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .expect("sign leaf");
        let tls = Self {
            ca: dir.join(format!("{prefix}ca.pem")),
            cert: dir.join(format!("{prefix}cert.pem")),
            key: dir.join(format!("{prefix}key.pem")),
        };
        std::fs::write(&tls.ca, ca_cert.pem()).expect("write CA");
        std::fs::write(&tls.cert, leaf_cert.pem()).expect("write cert");
        std::fs::write(&tls.key, leaf_key.serialize_pem()).expect("write key");
        tls
    }
}

// ----------------------------------------------------------------- sandbox

/// One sandbox: its namespace, its agent and the services inside it.
pub struct Sandbox {
    pub id: String,
    pub name: Option<String>,
    /// Services started with [`Sandbox::service`], ended before the agent.
    pub services: Vec<ChildGuard>,
    pub agent: Option<ChildGuard>,
    pub secrets: Secrets,
    /// The sandbox's end of the veth (the agent listens on it, port 9501).
    pub ip: String,
    /// The host's end.
    pub host_ip: String,
    pub ns: Netns,
}

impl Sandbox {
    pub fn agent_addr(&self) -> String {
        format!("{}:{AGENT_PORT}", self.ip)
    }

    /// Starts the agent on 0.0.0.0:9501 inside the sandbox.
    pub fn start_agent(&mut self) {
        let agent = bin("sbx-agent");
        let mut cmd = self.ns.command(agent.to_str().expect("utf-8"));
        cmd.args(["--listen", "0.0.0.0:9501", "--sandbox-id", &self.id])
            .arg("--forwarded-auth-key-file")
            .arg(self.secrets.key_file())
            .env("RUST_LOG", "warn");
        let mut process = ChildGuard::spawn("sbx-agent", piped(&mut cmd));
        process.wait_for_stdout_line("listening on", READY_TIMEOUT);
        self.agent = Some(process);
    }

    /// Kills the agent (the sandbox stays registered).
    pub fn stop_agent(&mut self) {
        self.agent.take();
    }

    /// Starts `tests/py/proxy_servers.py <kind> <port> <name>` on the
    /// sandbox's loopback and waits until it listens.
    pub fn service(&mut self, python: &Path, kind: &str, port: u16) {
        let mut cmd = self.ns.command(python.to_str().expect("utf-8"));
        cmd.arg(py_script("proxy_servers.py"))
            .args([kind, &port.to_string(), &self.id]);
        let mut process = ChildGuard::spawn(&format!("{kind} service"), piped(&mut cmd));
        process.wait_for_stdout_line("ready", READY_TIMEOUT);
        self.services.push(process);
    }

    /// Starts any command inside the sandbox; waits for `ready_line` on stdout
    /// when given.
    pub fn spawn(&mut self, label: &str, program: &str, args: &[&str], ready_line: Option<&str>) {
        let mut cmd = self.ns.command(program);
        cmd.args(args);
        let mut process = ChildGuard::spawn(label, piped(&mut cmd));
        if let Some(line) = ready_line {
            process.wait_for_stdout_line(line, READY_TIMEOUT);
        }
        self.services.push(process);
    }

    /// Waits until something accepts on `127.0.0.1:port` inside the sandbox.
    pub fn wait_port(&self, port: u16) {
        let path = self.ns.path();
        let ok = in_netns(&path, move || {
            let deadline = Instant::now() + READY_TIMEOUT;
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        });
        assert!(ok, "nothing listens on 127.0.0.1:{port} in {}", self.id);
    }
}

// ----------------------------------------------------------------- options

/// What a world is made of.
#[derive(Clone)]
pub struct WorldOptions {
    /// Sandboxes as (id, name); each gets a namespace and an agent.
    pub sandboxes: Vec<(String, Option<String>)>,
    pub listen_http: Option<String>,
    pub listen_https: Option<String>,
    pub max_concurrent_requests_per_sandbox: usize,
    pub header_read_timeout_secs: u64,
    pub max_header_bytes: usize,
    pub connect_timeout_ms: u64,
    /// More `key = value` lines for `[limits]`.
    pub extra_limits: Vec<String>,
    /// Raw TOML appended after `[limits]` (other sections, e.g. `[lifecycle]`).
    pub extra_config: Vec<String>,
    /// Top-level `key = value` lines (before any table).
    pub top_level: Vec<String>,
    /// Commands (argv) started in the host namespace before the proxy, each
    /// waited for until it prints its ready line (e.g. a Redis server).
    pub host_services: Vec<(Vec<String>, String)>,
    /// Register every sandbox at start with [`ProxyWorld::default_entry`].
    pub register: bool,
}

impl Default for WorldOptions {
    fn default() -> Self {
        Self {
            sandboxes: vec![("sbx-alpha".into(), Some("web".into()))],
            listen_http: Some("127.0.0.1:0".into()),
            listen_https: Some("127.0.0.1:0".into()),
            max_concurrent_requests_per_sandbox: 1024,
            header_read_timeout_secs: 10,
            max_header_bytes: 65536,
            connect_timeout_ms: 3000,
            extra_limits: Vec::new(),
            extra_config: Vec::new(),
            top_level: Vec::new(),
            host_services: Vec::new(),
            register: true,
        }
    }
}

/// Credentials minted before the proxy starts.
#[derive(Debug, Clone)]
pub struct Creds {
    /// API key of ORG/PROJECT.
    pub api_key: String,
    /// API key of OTHER_ORG/OTHER_PROJECT.
    pub other_api_key: String,
    /// PAT and session of user `alice`, member of ORG/PROJECT.
    pub pat: String,
    pub session: String,
    /// PAT and session of user `bob`, member of OTHER_ORG/OTHER_PROJECT only.
    pub other_pat: String,
    pub other_session: String,
}

/// The listeners a running proxy announced.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    /// The sandbox API (SPEC 7).
    pub api: Option<SocketAddr>,
}

// ------------------------------------------------------------------- world

/// Everything a proxy test needs; torn down in field order on drop.
pub struct ProxyWorld {
    pub proxy: Option<ChildGuard>,
    /// [`WorldOptions::host_services`], ended after the proxy.
    pub host_services: Vec<ChildGuard>,
    pub listeners: Listeners,
    pub sandboxes: Vec<Sandbox>,
    pub creds: Creds,
    pub tls: Tls,
    pub python: PathBuf,
    pub opts: WorldOptions,
    pub host: Netns,
    pub dir: tempfile::TempDir,
}

impl ProxyWorld {
    /// The default world: sandbox `sbx-alpha` named `web`, registered
    /// (private, nothing exposed), and the proxy running. None when the test
    /// must be skipped (no root, no venv; never under `CI=true`).
    pub fn start() -> Option<Self> {
        Self::with(WorldOptions::default())
    }

    pub fn with(opts: WorldOptions) -> Option<Self> {
        if !require_netns() {
            return None;
        }
        let python = venv_python()?;
        let k = WORLDS.fetch_add(1, Ordering::Relaxed) % 250;
        let dir = tempfile::tempdir().expect("tempdir");
        let host = Netns::new("sbxph");
        let mut sandboxes = Vec::new();
        for (i, (id, name)) in opts.sandboxes.iter().enumerate() {
            let ns = Netns::new("sbxps");
            let host_ip = format!("10.77.{k}.{}", 4 * i + 1);
            let ip = format!("10.77.{k}.{}", 4 * i + 2);
            link(
                &host,
                &[&format!("{host_ip}/30")],
                &ns,
                &[&format!("{ip}/30")],
            );
            let mut sandbox = Sandbox {
                id: id.clone(),
                name: name.clone(),
                services: Vec::new(),
                agent: None,
                secrets: Secrets::new(id),
                ip,
                host_ip,
                ns,
            };
            sandbox.start_agent();
            sandboxes.push(sandbox);
        }
        let tls = Tls::generate(dir.path(), "");
        let creds = mint_creds(&dir.path().join("credentials.toml"));
        let mut host_services = Vec::new();
        for (argv, ready) in &opts.host_services {
            let mut cmd = host.command(&argv[0]);
            cmd.args(&argv[1..]);
            let mut guard = ChildGuard::spawn(&argv[0], piped(&mut cmd));
            guard.wait_for_stdout_line(ready, READY_TIMEOUT);
            host_services.push(guard);
        }
        let mut world = Self {
            proxy: None,
            host_services,
            listeners: Listeners {
                http: None,
                https: None,
                api: None,
            },
            sandboxes,
            creds,
            tls,
            python,
            opts,
            host,
            dir,
        };
        world.write_config();
        world.start_proxy();
        if world.opts.register {
            for i in 0..world.sandboxes.len() {
                let entry = world.default_entry(i);
                world.put_ok(&entry);
            }
        }
        Some(world)
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandboxes[0]
    }

    pub fn sandbox_mut(&mut self) -> &mut Sandbox {
        &mut self.sandboxes[0]
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("proxy.toml")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.path("admin.sock")
    }

    pub fn credentials_file(&self) -> PathBuf {
        self.path("credentials.toml")
    }

    /// The proxy's configuration file, from the options.
    pub fn config_text(&self) -> String {
        let o = &self.opts;
        let mut s = String::new();
        writeln!(s, "domains = [\"{DOMAIN}\", \"local\"]").unwrap();
        if let Some(l) = &o.listen_http {
            writeln!(s, "listen_http = \"{l}\"").unwrap();
        }
        if let Some(l) = &o.listen_https {
            writeln!(s, "listen_https = \"{l}\"").unwrap();
            writeln!(s, "tls_cert = \"{}\"", self.tls.cert.display()).unwrap();
            writeln!(s, "tls_key = \"{}\"", self.tls.key.display()).unwrap();
        }
        // The sandbox API (SPEC 7) on a port of its own, never a fixed one.
        writeln!(s, "listen_api = \"127.0.0.1:0\"").unwrap();
        writeln!(s, "admin_socket = \"{}\"", self.admin_socket().display()).unwrap();
        writeln!(s, "state_dir = \"{}\"", self.path("state").display()).unwrap();
        for line in &o.top_level {
            writeln!(s, "{line}").unwrap();
        }
        writeln!(s, "log_format = \"text\"\n\n[auth]").unwrap();
        writeln!(
            s,
            "credentials_file = \"{}\"\n\n[limits]",
            self.credentials_file().display()
        )
        .unwrap();
        writeln!(
            s,
            "max_concurrent_requests_per_sandbox = {}",
            o.max_concurrent_requests_per_sandbox
        )
        .unwrap();
        writeln!(
            s,
            "header_read_timeout_secs = {}",
            o.header_read_timeout_secs
        )
        .unwrap();
        writeln!(s, "max_header_bytes = {}", o.max_header_bytes).unwrap();
        writeln!(s, "connect_timeout_ms = {}", o.connect_timeout_ms).unwrap();
        for line in o.extra_limits.iter().chain(&o.extra_config) {
            writeln!(s, "{line}").unwrap();
        }
        s
    }

    pub fn write_config(&self) {
        std::fs::write(self.config_path(), self.config_text()).expect("write config");
    }

    /// Starts `sbx-proxy serve` in the host namespace and waits for `ready`.
    pub fn start_proxy(&mut self) {
        let (guard, listeners) = self.spawn_proxy(&[]);
        self.proxy = Some(guard);
        self.listeners = listeners;
    }

    /// Spawns the proxy with its stderr appended to `proxy.log`; parses the
    /// listener lines up to `sbx-proxy ready`.
    pub fn spawn_proxy(&self, extra: &[&str]) -> (ChildGuard, Listeners) {
        self.spawn_proxy_with(&self.config_path(), extra)
    }

    /// [`Self::spawn_proxy`] with another configuration file (a second proxy
    /// of a fleet: its own admin socket and state directory).
    pub fn spawn_proxy_with(&self, config: &Path, extra: &[&str]) -> (ChildGuard, Listeners) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("proxy.log"))
            .expect("proxy log");
        let proxy = bin("sbx-proxy");
        let mut cmd = self.host.command(proxy.to_str().expect("utf-8"));
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut guard = ChildGuard::spawn("sbx-proxy", &mut cmd);
        let stdout = guard.child_mut().stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut listeners = Listeners {
            http: None,
            https: None,
            api: None,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "sbx-proxy did not print `sbx-proxy ready` (exit: {:?}); log:\n{}",
                    guard.child_mut().try_wait(),
                    self.log_tail(40)
                )
            });
            let addr = |l: &str| -> SocketAddr {
                let mut a: SocketAddr = l
                    .rsplit(' ')
                    .next()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("cannot parse an address from {l:?}"));
                if a.ip().is_unspecified() {
                    a.set_ip([127, 0, 0, 1].into());
                }
                a
            };
            if line.starts_with("sbx-proxy: http on") {
                listeners.http = Some(addr(&line));
            } else if line.starts_with("sbx-proxy: https on") {
                listeners.https = Some(addr(&line));
            } else if line.starts_with("sbx-proxy: api on") {
                listeners.api = Some(addr(&line));
            } else if line.trim() == "sbx-proxy ready" {
                break;
            }
        }
        (guard, listeners)
    }

    pub fn proxy_pid(&self) -> u32 {
        self.proxy.as_ref().expect("proxy running").pid()
    }

    /// SIGTERM; asserts a clean exit (status 0) within `timeout`.
    pub fn stop_proxy(&mut self, timeout: Duration) {
        let mut proxy = self.proxy.take().expect("proxy running");
        proxy.signal(15);
        let status = proxy
            .wait_timeout(timeout)
            .unwrap_or_else(|| panic!("sbx-proxy did not exit on SIGTERM within {timeout:?}"));
        assert!(
            status.success(),
            "sbx-proxy exited with {status} on SIGTERM"
        );
    }

    pub fn restart_proxy(&mut self) {
        self.stop_proxy(Duration::from_secs(20));
        self.start_proxy();
    }

    /// SIGHUP: reload TLS and credentials.
    pub fn reload(&self) {
        self.proxy.as_ref().expect("proxy running").signal(1);
    }

    /// The last `n` lines of the proxy's stderr.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.path("proxy.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn https_port(&self) -> u16 {
        self.listeners.https.expect("https listener").port()
    }

    pub fn http_port(&self) -> u16 {
        self.listeners.http.expect("http listener").port()
    }

    /// `https://<host>:<port><path>` on the TLS listener.
    pub fn https(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https_port())
    }

    /// `http://<host>:<port><path>` on the plain listener.
    pub fn http(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.http_port())
    }

    /// `Authorization: Bearer <API key of ORG/PROJECT>`, as a curl `-H` value.
    pub fn bearer(&self) -> String {
        format!("Authorization: Bearer {}", self.creds.api_key)
    }

    // ------------------------------------------------------------ registry

    /// The entry of sandbox `i`: ORG/PROJECT, its agent and key file,
    /// running, private, nothing exposed.
    pub fn default_entry(&self, i: usize) -> Value {
        let s = &self.sandboxes[i];
        let mut v = json!({
            "id": s.id,
            "namespace": "default",
            "organization_id": ORG,
            "project_id": PROJECT,
            "agent": s.agent_addr(),
            "forwarded_auth_key_file": s.secrets.key_file(),
            "exposed_ports": [],
            "allow_unauthenticated_access": false,
            "status": "running",
            "auto_resume": false,
        });
        if let Some(name) = &s.name {
            v["name"] = json!(name);
        }
        v
    }

    /// A call to the admin API over its unix socket.
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        self.admin_at(&self.admin_socket(), method, path, body)
    }

    /// A call to the admin API on `socket` (another proxy's).
    pub fn admin_at(
        &self,
        socket: &Path,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> HttpResponse {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("curl");
        cmd.arg("--unix-socket").arg(socket).args(["-X", method]);
        if let Some(body) = body {
            let file = tmp.path().join("body");
            std::fs::write(&file, body).expect("write body");
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", file.display()));
        }
        cmd.arg(format!("http://admin{path}"));
        curl_run(cmd, tmp.path(), Duration::from_secs(30))
    }

    /// PUT /v1/sandboxes/{id} (the id taken from the body's `id`, removed
    /// from the body).
    pub fn put(&self, entry: &Value) -> HttpResponse {
        let mut body = entry.clone();
        let id = body["id"].as_str().expect("entry has an id").to_owned();
        body.as_object_mut().expect("object").remove("id");
        self.admin(
            "PUT",
            &format!("/v1/sandboxes/{id}"),
            Some(&body.to_string()),
        )
    }

    #[track_caller]
    pub fn put_ok(&self, entry: &Value) -> Value {
        let r = self.put(entry);
        assert_eq!(r.status, 200, "PUT {entry}: {}", r.text());
        r.json()
    }

    pub fn patch(&self, id: &str, body: Value) -> HttpResponse {
        self.admin(
            "PATCH",
            &format!("/v1/sandboxes/{id}"),
            Some(&body.to_string()),
        )
    }

    #[track_caller]
    pub fn patch_ok(&self, id: &str, body: Value) -> Value {
        let r = self.patch(id, body.clone());
        assert_eq!(r.status, 200, "PATCH {id} {body}: {}", r.text());
        r.json()
    }

    /// Exposes `ports` of sandbox 0, public or not.
    pub fn expose(&self, ports: &[u16], public: bool) {
        let id = self.sandbox().id.clone();
        self.patch_ok(
            &id,
            json!({"exposed_ports": ports, "allow_unauthenticated_access": public}),
        );
    }

    /// `sbx-proxy sandbox --admin-socket S <args>`, with `stdin` piped in.
    pub fn sandbox_cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(bin("sbx-proxy"));
        cmd.arg("sandbox")
            .arg("--admin-socket")
            .arg(self.admin_socket())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sbx-proxy sandbox");
        {
            use std::io::Write;
            let mut pipe = child.stdin.take().expect("stdin");
            if let Some(s) = stdin {
                pipe.write_all(s.as_bytes()).expect("write stdin");
            }
        }
        child.wait_with_output().expect("wait sbx-proxy sandbox")
    }

    /// `sbx-proxy credentials --file <credentials> <args>`: the secret.
    pub fn credentials(&self, args: &[&str]) -> String {
        credentials_cli(&self.credentials_file(), args)
    }

    // ------------------------------------------------------------- clients

    /// curl in the host namespace, trusting the test CA; every URL's host
    /// name resolves to 127.0.0.1 (`--resolve`).
    pub fn curl(&self, args: &[&str]) -> HttpResponse {
        self.curl_within(args, Duration::from_secs(60))
    }

    pub fn curl_within(&self, args: &[&str], timeout: Duration) -> HttpResponse {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = self.host.command("curl");
        cmd.arg("--cacert").arg(&self.tls.ca);
        for a in args {
            cmd.args(resolve_args(a));
        }
        cmd.args(args);
        curl_run(cmd, tmp.path(), timeout)
    }

    /// GET `https://<host>:<port><path>` (HTTP/1.1) with these `-H` headers.
    pub fn get(&self, host: &str, path: &str, headers: &[&str]) -> HttpResponse {
        let url = self.https(host, path);
        let mut args: Vec<&str> = Vec::new();
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        self.curl(&args)
    }

    /// The organization/project context headers of ORG/PROJECT (what a PAT
    /// or a session cookie needs alongside it).
    pub fn context_headers(&self) -> [String; 2] {
        [
            format!("X-Forwarded-Organization-Id: {ORG}"),
            format!("X-Forwarded-Project-Id: {PROJECT}"),
        ]
    }

    /// curl `-N` in the host namespace with its stdout read line by line as
    /// it arrives: each line with the instant it was read.
    pub fn curl_lines(&self, args: &[&str]) -> (ChildGuard, mpsc::Receiver<(Instant, String)>) {
        let mut cmd = self.host.command("curl");
        cmd.args(["-sS", "-N", "--max-time", "60"])
            .arg("--cacert")
            .arg(&self.tls.ca);
        for a in args {
            cmd.args(resolve_args(a));
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut guard = ChildGuard::spawn("curl -N", &mut cmd);
        let stdout = guard.child_mut().stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        (guard, rx)
    }

    /// A command run in the host namespace.
    pub fn host_cmd(&self, program: &str) -> Command {
        self.host.command(program)
    }

    /// Runs `tests/py/<script> <args>` with the venv's python in the host
    /// namespace; panics with its output unless it exits 0.
    pub fn py(&self, script: &str, args: &[&str], timeout: Duration) -> String {
        let out = self.py_output(script, args, timeout);
        assert!(
            out.status.success(),
            "{script} {args:?} failed ({}):\n{}\n{}\nproxy log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn py_output(&self, script: &str, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = self.host.command(self.python.to_str().expect("utf-8"));
        cmd.arg(py_script(script)).args(args);
        output_within(&mut cmd, timeout)
    }

    /// A TCP connection from the host namespace (to the proxy's loopback).
    pub fn connect(&self, addr: SocketAddr) -> TcpStream {
        let path = self.host.path();
        in_netns(&path, move || TcpStream::connect(addr)).expect("connect in host netns")
    }

    /// GET /metrics on the admin socket.
    pub fn metrics(&self) -> String {
        let r = self.admin("GET", "/metrics", None);
        assert_eq!(r.status, 200, "metrics: {}", r.text());
        r.text()
    }
}

/// The sum of every sample of metric `name` (exact family name, any labels)
/// whose labels contain all of `labels` (e.g. `kind="port"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (family, rest) = match series.split_once('{') {
                Some((f, r)) => (f, r),
                None => (series, ""),
            };
            (family == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

impl Drop for ProxyWorld {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- sbx-proxy log ({}) ----\n{}",
                self.path("proxy.log").display(),
                self.log_tail(60)
            );
        }
    }
}

/// `sbx-proxy credentials --file F <args>`: stdout, trimmed.
pub fn credentials_cli(file: &Path, args: &[&str]) -> String {
    let out = output_within(
        Command::new(bin("sbx-proxy"))
            .arg("credentials")
            .arg("--file")
            .arg(file)
            .args(args),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "sbx-proxy credentials {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mints = args
        .first()
        .is_some_and(|a| a.starts_with("add-") && *a != "add-user");
    assert!(
        !mints || (!secret.is_empty() && !secret.contains('\n')),
        "credentials {args:?} printed {secret:?}, not one secret"
    );
    secret
}

fn mint_creds(file: &Path) -> Creds {
    let c = |args: &[&str]| credentials_cli(file, args);
    let api_key = c(&["add-api-key", "--org", ORG, "--project", PROJECT]);
    let other_api_key = c(&[
        "add-api-key",
        "--org",
        OTHER_ORG,
        "--project",
        OTHER_PROJECT,
    ]);
    let ours = format!("{ORG}/{PROJECT}");
    let theirs = format!("{OTHER_ORG}/{OTHER_PROJECT}");
    let _ = c(&["add-user", "--user", "alice", "--project", &ours]);
    let _ = c(&["add-user", "--user", "bob", "--project", &theirs]);
    let pat = c(&["add-pat", "--user", "alice"]);
    let session = c(&["add-session", "--user", "alice", "--ttl-secs", "3600"]);
    let other_pat = c(&["add-pat", "--user", "bob"]);
    let other_session = c(&["add-session", "--user", "bob", "--ttl-secs", "3600"]);
    assert!(pat.starts_with("tl_pat_"), "PAT {pat:?} lacks tl_pat_");
    Creds {
        api_key,
        other_api_key,
        pat,
        session,
        other_pat,
        other_session,
    }
}

/// `--resolve host:port:127.0.0.1` for an argument that is a URL with a
/// host name (not an address).
fn resolve_args(arg: &str) -> Vec<String> {
    let rest = match arg.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        _ => return Vec::new(),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Vec::new();
    };
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return Vec::new();
    }
    vec!["--resolve".into(), format!("{host}:{port}:127.0.0.1")]
}

// ---------------------------------------------------------------- response

/// One HTTP exchange as curl saw it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// 0 when curl got no response at all (see `stderr`).
    pub status: u16,
    /// "1.1", "2", ...
    pub version: String,
    /// The last response's headers (after any 100/101).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// curl's `-w %{json}` for each transfer.
    pub transfers: Vec<Value>,
    pub stderr: String,
    pub exit_code: i32,
}

fn curl_run(mut cmd: Command, tmp: &Path, timeout: Duration) -> HttpResponse {
    let head = tmp.join("head");
    let body = tmp.join("body");
    cmd.args(["-sS", "--max-time", &timeout.as_secs().to_string()])
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{json}"]);
    let out = output_within(&mut cmd, timeout + Duration::from_secs(10));
    let transfers: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .filter_map(Result::ok)
        // Bodies of later URLs (no -o of their own) land on stdout too.
        .filter(|v| v.get("http_code").is_some() && v.get("num_connects").is_some())
        .collect();
    let last = transfers.last().cloned().unwrap_or(Value::Null);
    let head = std::fs::read_to_string(&head).unwrap_or_default();
    let block = head
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("");
    let headers = block
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status: last["http_code"].as_u64().unwrap_or(0) as u16,
        version: last["http_version"].as_str().unwrap_or("").to_owned(),
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
        transfers,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit_code: out.status.code().unwrap_or(-1),
    }
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {:?} {} {}",
                self.status,
                self.headers,
                self.text(),
                self.stderr
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status,
            status,
            "expected {status}, got {} (curl exit {}: {}); headers {:?}; body {}",
            self.status,
            self.exit_code,
            self.stderr.trim(),
            self.headers,
            self.text()
        );
        self
    }

    /// A proxy error: status, JSON `{"error", "code"}` with this code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        self.assert_status(status);
        let body = self.json();
        assert_eq!(body["code"], code, "body: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "error message missing: {body}"
        );
    }

    /// The echo service's view of the request (see proxy_servers.py).
    #[track_caller]
    pub fn echo(&self) -> Echo {
        self.assert_status(200);
        let v = self.json();
        let headers = v["headers"]
            .as_array()
            .unwrap_or_else(|| panic!("not an echo answer: {v}"))
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap_or("").to_owned(),
                    p[1].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        Echo {
            server: v["server"].as_str().unwrap_or("").to_owned(),
            target: v["target"].as_str().unwrap_or("").to_owned(),
            method: v["method"].as_str().unwrap_or("").to_owned(),
            headers,
            body_len: v["body_len"].as_u64().unwrap_or(0),
            body_sha256: v["body_sha256"].as_str().unwrap_or("").to_owned(),
        }
    }
}

/// What a service in the sandbox received.
#[derive(Debug, Clone)]
pub struct Echo {
    /// The sandbox id of the service that answered.
    pub server: String,
    /// The request target exactly as it arrived.
    pub target: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: String,
}

impl Echo {
    /// All values of a header (case-insensitive name).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    /// Cookie pairs as the service received them, in order.
    pub fn cookies(&self) -> Vec<(String, String)> {
        self.all("cookie")
            .iter()
            .flat_map(|c| c.split(';'))
            .filter_map(|p| p.trim().split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// Samples a process's RSS every 100 ms on a thread; `stop` returns the
/// peak in KiB.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let rss = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap_or(0);
                peak = peak.max(rss);
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        Self { stop, handle }
    }

    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("sampler")
    }
}
