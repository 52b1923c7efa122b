//! The netctl test world (SPEC 5): a sandbox namespace whose egress netctl
//! filters, an "internet" namespace with IPv4 and IPv6 servers on
//! documentation addresses and a real DNS server (dnsmasq) whose records the
//! test changes, and a "host" namespace in which the netctl daemon runs and
//! resolves names.
//!
//! ```text
//!  sandbox 192.0.2.2/25 2001:db8:1::2/64 ──veth── 192.0.2.1 2001:db8:1::1  internet
//!                                                  lo: servers, DNS         │
//!  host (netctl) 192.0.2.130/25 ─────────────────veth── 192.0.2.129 ────────┘
//! ```
//!
//! Probes and servers run on threads that entered the namespace with
//! setns(2) (per thread), so no helper processes are needed.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bins::bin;
use crate::netns::{link, Netns};
use crate::process::{piped, ChildGuard};

/// Port of every echo server in the internet namespace.
pub const PORT: u16 = 8080;
/// The agent's port: the only one a sandbox accepts new connections on.
pub const AGENT_PORT: u16 = 9501;

/// Servers in the internet namespace (all on its loopback, routed to).
pub const V4_A: &str = "198.51.100.10";
pub const V4_B: &str = "198.51.100.20";
pub const V4_C: &str = "203.0.113.10";
pub const V4_D: &str = "203.0.113.20";
pub const V4_LINK_LOCAL: &str = "169.254.10.10";
pub const V6_A: &str = "2001:db8:2::10";
pub const V6_B: &str = "2001:db8:2::20";
pub const DNS_V4: &str = "198.51.100.53";
pub const DNS_V6: &str = "2001:db8:2::53";

const LOOPBACK_ADDRS: [&str; 9] = [
    V4_A,
    V4_B,
    V4_C,
    V4_D,
    V4_LINK_LOCAL,
    DNS_V4,
    V6_A,
    V6_B,
    DNS_V6,
];

/// A thread living inside a network namespace, running closures there.
pub struct NsThread {
    tx: Option<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    handle: Option<JoinHandle<()>>,
}

impl NsThread {
    pub fn new(ns_path: &str) -> Self {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let path = ns_path.to_owned();
        let handle = std::thread::spawn(move || {
            let entered = enter_netns(&path);
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if !ok {
                return;
            }
            while let Ok(job) = rx.recv() {
                job();
            }
        });
        ready_rx
            .recv()
            .expect("netns thread")
            .unwrap_or_else(|e| panic!("setns {ns_path}: {e}"));
        Self {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Runs `f` inside the namespace and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .expect("thread alive")
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .expect("netns thread alive");
        rx.recv().expect("netns job finished")
    }
}

impl Drop for NsThread {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn enter_netns(path: &str) -> std::io::Result<()> {
    let file = fs::File::open(path)?;
    // SAFETY: setns on a valid fd we own; affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs `f` on a fresh thread inside the namespace.
pub fn in_netns<T: Send + 'static>(ns_path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns_path.to_owned();
    std::thread::spawn(move || {
        enter_netns(&path).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// How a connection attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Connected and a message came back from the echo server.
    Ok,
    /// Failed with this error kind / errno text.
    Refused(String),
    /// No answer in time (a silent drop would look like this).
    Timeout,
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// Connects to `addr` and round-trips a message through the echo server.
pub fn probe_tcp(addr: SocketAddr, timeout: Duration) -> (Outcome, Duration) {
    let started = Instant::now();
    let outcome = match TcpStream::connect_timeout(&addr, timeout) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::Timeout,
        Err(e) => Outcome::Refused(e.to_string()),
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(timeout));
            let _ = s.set_write_timeout(Some(timeout));
            let mut buf = [0u8; 5];
            match s.write_all(b"ping\n").and_then(|()| s.read_exact(&mut buf)) {
                Ok(()) if &buf == b"ping\n" => Outcome::Ok,
                Ok(()) => Outcome::Refused("garbled echo".into()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Outcome::Timeout
                }
                Err(e) => Outcome::Refused(e.to_string()),
            }
        }
    };
    (outcome, started.elapsed())
}

/// Sends one DNS query for `name` (type A) and says whether an answer
/// came back within `timeout`; returns the IPv4 addresses in it.
pub fn dns_query(server: SocketAddr, name: &str, timeout: Duration) -> Result<Vec<IpAddr>, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, server).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).map_err(|e| e.to_string())?;
    let answer = &buf[..n];
    // Answers follow the echoed question; A records end in 4 address bytes.
    let ancount = u16::from_be_bytes([answer[6], answer[7]]) as usize;
    let mut addrs = Vec::new();
    let mut pos = q.len();
    for _ in 0..ancount {
        // name (pointer, 2 bytes), type, class, ttl, rdlength
        if pos + 12 > n {
            break;
        }
        let rdlen = u16::from_be_bytes([answer[pos + 10], answer[pos + 11]]) as usize;
        let data = &answer[pos + 12..(pos + 12 + rdlen).min(n)];
        if data.len() == 4 {
            addrs.push(IpAddr::from([data[0], data[1], data[2], data[3]]));
        }
        pos += 12 + rdlen;
    }
    Ok(addrs)
}

/// An echo server on `[::]:PORT` (IPv4 too) inside a namespace; stops on
/// drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns_path: &str) -> Self {
        Self::start_on(ns_path, PORT)
    }

    /// An echo server on `[::]:port` (IPv4 too) inside a namespace.
    pub fn start_on(ns_path: &str, port: u16) -> Self {
        let listener = in_netns(ns_path, move || {
            TcpListener::bind(("::", port)).expect("bind echo server in namespace")
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let flag = flag.clone();
                        std::thread::spawn(move || echo(conn, &flag));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

fn echo(mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// dnsmasq answering from a hosts file the test rewrites.
pub struct Dns {
    hosts: PathBuf,
    child: ChildGuard,
}

impl Dns {
    fn start(internet: &Netns, dir: &Path, ttl: u32, extra: &[String]) -> Self {
        Self::start_at(internet, dir, &[DNS_V4, DNS_V6], ttl, extra)
    }

    /// A resolver listening on `listen` (addresses the caller put on the
    /// internet namespace's loopback), with its own hosts file in `dir`.
    pub fn start_at(
        internet: &Netns,
        dir: &Path,
        listen: &[&str],
        ttl: u32,
        extra: &[String],
    ) -> Self {
        let first = listen.first().copied().expect("an address to listen on");
        let hosts = dir.join(format!("hosts-{first}"));
        fs::write(&hosts, "").expect("hosts file");
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
        ])
        .args(listen.iter().map(|a| format!("--listen-address={a}")))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .arg(format!("--local-ttl={ttl}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = ChildGuard::spawn("dnsmasq", &mut cmd);
        let dns = Self { hosts, child };
        // Ready when it answers.
        let deadline = Instant::now() + Duration::from_secs(5);
        let server = SocketAddr::new(first.parse().expect("listen address"), 53);
        let path = internet.path();
        loop {
            let answered = in_netns(&path, move || {
                dns_query(server, "ready.test", Duration::from_millis(100)).is_ok()
            });
            if answered {
                return dns;
            }
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills dnsmasq (by its PID): the resolver is gone.
    pub fn stop(&mut self) {
        self.child.signal(libc::SIGKILL);
        let _ = self.child.wait_timeout(Duration::from_secs(2));
    }

    /// Replaces all records (`(address, name)`) and makes dnsmasq reload.
    pub fn set_records(&self, records: &[(&str, &str)]) {
        let text: String = records
            .iter()
            .map(|(addr, name)| format!("{addr} {name}\n"))
            .collect();
        let tmp = self.hosts.with_extension("tmp");
        fs::write(&tmp, text).expect("write hosts");
        fs::rename(&tmp, &self.hosts).expect("rename hosts");
        self.child.signal(libc::SIGHUP);
    }
}

/// Options for [`World::with`].
#[derive(Debug, Clone)]
pub struct WorldOptions {
    pub dns_ttl: u32,
    /// Extra TOML appended to the daemon's config.
    pub extra_config: String,
    pub grace: u64,
    /// Extra dnsmasq arguments (`--cname=...`, `--log-queries`, ...).
    pub dns_args: Vec<String>,
}

impl Default for WorldOptions {
    fn default() -> Self {
        Self {
            dns_ttl: 1,
            extra_config: String::new(),
            grace: 3,
            dns_args: Vec::new(),
        }
    }
}

/// The whole test world; everything is torn down on drop.
pub struct World {
    pub daemon: Option<Daemon>,
    pub dns: Dns,
    _server: EchoServer,
    /// Probes run here (the sandbox's namespace).
    pub probe: NsThread,
    pub dir: tempfile::TempDir,
    // Namespaces last: dropped after everything living in them.
    pub host: Netns,
    pub internet: Netns,
    pub sandbox: Netns,
}

impl World {
    pub fn new() -> Self {
        Self::with(WorldOptions::default())
    }

    pub fn with(opts: WorldOptions) -> Self {
        let sandbox = Netns::new("ncs");
        let internet = Netns::new("nci");
        let host = Netns::new("nch");
        link(
            &sandbox,
            &["192.0.2.2/25", "2001:db8:1::2/64"],
            &internet,
            &["192.0.2.1/25", "2001:db8:1::1/64"],
        );
        link(&host, &["192.0.2.130/25"], &internet, &["192.0.2.129/25"]);
        for addr in LOOPBACK_ADDRS {
            let with_len = if addr.contains(':') {
                format!("{addr}/128")
            } else {
                format!("{addr}/32")
            };
            internet.ip(&["addr", "add", &with_len, "dev", "lo"]);
        }
        sandbox.ip(&["route", "add", "default", "via", "192.0.2.1"]);
        sandbox.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
        host.ip(&["route", "add", "default", "via", "192.0.2.129"]);

        let dir = tempfile::tempdir().expect("tempdir");
        let dns = Dns::start(&internet, dir.path(), opts.dns_ttl, &opts.dns_args);
        let server = EchoServer::start(&internet.path());
        let config = format!(
            "{}\n[dns]\nupstreams = [\"{DNS_V4}\"]\nmin_ttl = 1\nmax_ttl = 60\ngrace = {}\ntimeout_ms = 500\n",
            opts.extra_config, opts.grace
        );
        fs::write(dir.path().join("config.toml"), config).expect("config");
        let probe = NsThread::new(&sandbox.path());
        let mut world = Self {
            daemon: None,
            dns,
            _server: server,
            probe,
            dir,
            host,
            internet,
            sandbox,
        };
        world.start_daemon();
        world
    }

    /// A "VM" namespace behind the sandbox's (203.0.113.64/26; the
    /// sandbox's end, .65, forwards for it): its packets are forwarded
    /// traffic, met where a microVM's tap traffic is. Returns the VM and
    /// the sandbox's end of the link, the `iface` to PUT.
    pub fn vm_behind_sandbox(&self) -> (Netns, String) {
        let vm = Netns::new("ncv");
        let (tap, _) = link(
            &self.sandbox,
            &["203.0.113.65/26"],
            &vm,
            &["203.0.113.66/26"],
        );
        vm.ip(&["route", "add", "default", "via", "203.0.113.65"]);
        self.internet
            .ip(&["route", "add", "203.0.113.64/26", "via", "192.0.2.2"]);
        // Net sysctls follow the writer's namespace: this is the sandbox's own.
        self.sandbox.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
        (vm, tap)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("netctl.sock")
    }

    /// Starts (or restarts) the daemon in the host namespace.
    pub fn start_daemon(&mut self) {
        self.daemon = None;
        self.daemon = Some(Daemon::start(
            &self.host,
            &self.socket(),
            &self.dir.path().join("config.toml"),
            &self.dir.path().join("state"),
        ));
    }

    pub fn api(&self) -> Api {
        Api {
            socket: self.socket(),
        }
    }

    /// TCP round trip from the sandbox to `ip:PORT`.
    pub fn connect(&self, ip: &str) -> (Outcome, Duration) {
        let addr = SocketAddr::new(ip.parse().expect("ip"), PORT);
        self.probe
            .run(move || probe_tcp(addr, Duration::from_secs(2)))
    }

    pub fn reachable(&self, ip: &str) -> bool {
        self.connect(ip).0.is_ok()
    }

    /// Asserts `ip` is refused, quickly.
    pub fn assert_refused(&self, ip: &str) {
        let (outcome, took) = self.connect(ip);
        assert!(
            matches!(outcome, Outcome::Refused(_)),
            "{ip}: expected a refusal, got {outcome:?}"
        );
        assert!(
            took < Duration::from_millis(500),
            "{ip}: refusal took {took:?}"
        );
    }

    pub fn assert_reachable(&self, ip: &str) {
        let (outcome, _) = self.connect(ip);
        assert_eq!(outcome, Outcome::Ok, "{ip} should be reachable");
    }

    /// DNS query from the sandbox.
    pub fn sandbox_dns(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        let server: SocketAddr = format!("{DNS_V4}:53").parse().unwrap();
        let name = name.to_owned();
        self.probe
            .run(move || dns_query(server, &name, Duration::from_millis(700)))
    }

    /// `nft list table inet sbx_netctl` in the sandbox; None if absent.
    pub fn nft_table(&self) -> Option<String> {
        let out = self
            .sandbox
            .command("nft")
            .args(["list", "table", "inet", "sbx_netctl"])
            .stderr(Stdio::null())
            .output()
            .expect("run nft");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every table in the sandbox namespace, as `nft list tables` prints.
    pub fn nft_tables(&self) -> String {
        let out = self.sandbox.sh("nft list tables");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// PUT a policy (JSON text of the `network` object, or `null`).
    pub fn put(&self, id: &str, network: &str) -> Response {
        let body = format!(
            r#"{{"netns":"{}","network":{network}}}"#,
            self.sandbox.name()
        );
        self.api()
            .call("PUT", &format!("/v1/sandboxes/{id}"), Some(&body))
    }

    pub fn put_ok(&self, id: &str, network: &str) -> serde_json::Value {
        let r = self.put(id, network);
        assert_eq!(r.status, 200, "PUT {network}: {}", r.body);
        r.json()
    }

    /// Polls `cond` every 50 ms until it holds or `timeout` passes; returns
    /// how long it took.
    pub fn wait_for(&self, timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
        let started = Instant::now();
        loop {
            if cond() {
                return Some(started.elapsed());
            }
            if started.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// The netctl daemon inside the host namespace, killed by PID on drop.
/// Entered with `nsenter --net` rather than `ip netns exec`, so it shares
/// our mount namespace: the namespaces it creates under /run/netns must be
/// visible to the test.
pub struct Daemon {
    pub child: ChildGuard,
}

impl Daemon {
    pub fn start(host: &Netns, socket: &Path, config: &Path, state_dir: &Path) -> Self {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", host.path()))
            .arg(bin("netctl"))
            .arg("--socket")
            .arg(socket)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(state_dir)
            .env("NETCTL_LOG", "netctl=debug");
        piped(&mut cmd);
        // The daemon's log goes next to its state, out of the test output.
        let log_path = state_dir.with_file_name("netctl.log");
        if let Ok(log) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
        {
            cmd.stderr(log);
        }
        // nsenter execs netctl in place (no fork for --net), so this PID is
        // netctl's own and a SIGKILL reaches the daemon itself.
        let mut child = ChildGuard::spawn("nsenter netctl serve", &mut cmd);
        child.wait_for_stdout_line("listening", Duration::from_secs(30));
        Self { child }
    }
}

/// A minimal HTTP/1.1 client over the daemon's unix socket.
pub struct Api {
    pub socket: PathBuf,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Api {
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let mut s = UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.socket.display()));
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: netctl\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("send request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read response");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP head");
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_owned()
        };
        Response { status, body }
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

/// Runs the netctl CLI (with this world's socket); returns status, stdout,
/// stderr.
pub fn netctl_cli(socket: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(bin("netctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netctl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    } else {
        child.stdin.take();
    }
    let out = child.wait_with_output().expect("netctl output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
