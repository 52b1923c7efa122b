//! The processes under test: `sbx-agent` and `sbx-proxy` with the sandbox
//! registered, nginx with one server per (upstream, protocol), and the
//! plain forwarder. Dropping them stops exactly these processes, by PID.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};

use sbx_bench_support::agent::{self, Agent};
use sbx_bench_support::child::{find_on_path, Spawned};
use sbx_bench_support::listen::{free_port, wait_listening};
use sbx_bench_support::scratch::Scratch;
use sbx_bench_support::usage::with_children;

use crate::client;

/// How long any child may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The sandbox every proxied request goes to.
pub const SANDBOX_ID: &str = "benchsandbox";
/// The first of the proxy's domains; the `Host` every target is sent.
pub const DOMAIN: &str = "sbx.test";

/// The `Host` of requests for the service's port through sbx-proxy:
/// `<port>-<id>.<domain>`. Every target gets the same header, so every
/// target is sent the same bytes.
pub fn service_host(port: u16) -> String {
    format!("{port}-{SANDBOX_ID}.{DOMAIN}")
}

/// The agent for [`SANDBOX_ID`]; only the proxy talks to it, signing with
/// the forwarded-auth key, so it needs no bearer token.
pub fn start_agent(bin: &Path, scratch: &Scratch) -> Result<Agent> {
    agent::start(bin, scratch, SANDBOX_ID, None)
}

pub struct Proxy {
    pub proc: Spawned,
    /// The plain HTTP/1.1 + h2c listener.
    pub addr: SocketAddr,
    /// The sandbox API (`listen_api`).
    pub api: SocketAddr,
    pub admin_socket: PathBuf,
    /// What went differently from the documented interface, for the notes.
    pub notes: Vec<String>,
}

/// How one `sbx-proxy serve` is set up.
pub struct ProxyOptions {
    /// Names its files in the scratch directory and its log.
    pub name: &'static str,
    pub access_log: bool,
    /// `registry = ...`; the embedded store when `None`.
    pub registry: Option<String>,
    /// `[lifecycle] hook_url`.
    pub hook_url: Option<String>,
    /// `[api] allow_unauthenticated_namespaces` (on its loopback
    /// `listen_api`).
    pub open_api: bool,
    /// The entry PUT for [`SANDBOX_ID`] once it is ready, if any.
    pub register: Option<serde_json::Value>,
}

impl ProxyOptions {
    /// The proxy of the throughput, latency and memory rows: embedded
    /// registry, no hook, the API closed.
    pub fn plain(name: &'static str, access_log: bool) -> Self {
        Self {
            name,
            access_log,
            registry: None,
            hook_url: None,
            open_api: false,
            register: None,
        }
    }
}

/// The registry entry of [`SANDBOX_ID`]: agent `agent`, `ports` exposed
/// without auth.
pub fn sandbox_entry(
    scratch: &Scratch,
    agent: SocketAddr,
    ports: &[u16],
    status: &str,
    auto_resume: bool,
) -> serde_json::Value {
    serde_json::json!({
        "namespace": "default",
        "organization_id": "o",
        "project_id": "p",
        "agent": agent.to_string(),
        "forwarded_auth_key_file": scratch.key_file,
        "exposed_ports": ports,
        "allow_unauthenticated_access": true,
        "status": status,
        "auto_resume": auto_resume,
    })
}

/// Where the proxy named `name` puts its admin socket.
pub fn admin_socket(scratch: &Scratch, name: &str) -> PathBuf {
    scratch.path(&format!("{name}.admin.sock"))
}

/// Writes the configuration and a credentials file, starts `sbx-proxy
/// serve` (every listener on an ephemeral loopback port), and registers
/// the sandbox through the admin socket when asked to.
pub fn start_proxy(bin: &Path, scratch: &Scratch, opts: &ProxyOptions) -> Result<Proxy> {
    let name = opts.name;
    let mut notes = Vec::new();
    let credentials = scratch.path(&format!("{name}.credentials.toml"));
    let admin_socket = admin_socket(scratch, name);
    let state_dir = scratch.path(&format!("{name}.state"));
    std::fs::create_dir_all(&state_dir).context("create proxy state dir")?;

    // The requests of the bench need no credential (the port is exposed
    // without auth), but the proxy wants a credentials file: made the way
    // an operator would.
    let out = Command::new(bin)
        .arg("credentials")
        .arg("--file")
        .arg(&credentials)
        .args(["add-api-key", "--org", "o", "--project", "p"])
        .output()
        .with_context(|| format!("run {} credentials", bin.display()))?;
    if !out.status.success() {
        let note = format!(
            "`sbx-proxy credentials add-api-key` failed ({}): {}; started with an empty credentials file",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        eprintln!("proxy-bench: NOTE: {note}");
        notes.push(note);
        std::fs::write(&credentials, "").context("write empty credentials file")?;
    }

    let config = scratch.path(&format!("{name}.toml"));
    let mut text = format!(
        "domains = [\"{DOMAIN}\", \"local\"]\n\
         listen_http = \"127.0.0.1:0\"\n\
         listen_api = \"127.0.0.1:0\"\n\
         admin_socket = {admin}\n\
         state_dir = {state}\n\
         log_format = \"text\"\n",
        admin = toml_str(&admin_socket)?,
        state = toml_str(&state_dir)?,
    );
    if let Some(registry) = &opts.registry {
        let _ = writeln!(text, "registry = {registry:?}");
    }
    let _ = writeln!(
        text,
        "[auth]\ncredentials_file = {}",
        toml_str(&credentials)?
    );
    if opts.open_api {
        text.push_str("[api]\nallow_unauthenticated_namespaces = true\n");
    }
    if let Some(hook) = &opts.hook_url {
        let _ = writeln!(text, "[lifecycle]\nhook_url = {hook:?}");
    }
    std::fs::write(&config, text).context("write proxy config")?;
    let mut args: Vec<std::ffi::OsString> = vec!["serve".into(), "--config".into()];
    args.push(config.into());
    // Its default logs every request (at info, to stderr: the log file).
    let env: &[(&str, &str)] = if opts.access_log {
        &[]
    } else {
        &[("SBX_PROXY_LOG", "info,sbx_proxy::access=warn")]
    };
    let mut proc = Spawned::start_with_env(name, bin, args, env, &scratch.log(name))?;
    let addr: SocketAddr = proc
        .wait_for_line("sbx-proxy: http on ", READY_TIMEOUT)?
        .trim()
        .parse()
        .context("sbx-proxy printed an unparsable http address")?;
    let api: SocketAddr = proc
        .wait_for_line("sbx-proxy: api on ", READY_TIMEOUT)?
        .trim()
        .parse()
        .context("sbx-proxy printed an unparsable api address")?;
    proc.wait_for_line("sbx-proxy ready", READY_TIMEOUT)?;

    if let Some(entry) = &opts.register {
        let path = format!("/v1/sandboxes/{SANDBOX_ID}");
        let (status, answer) =
            client::unix_request(&admin_socket, "PUT", &path, Some(&entry.to_string()))
                .with_context(|| format!("register the sandbox through {name}'s admin socket"))?;
        if !(200..300).contains(&status) {
            bail!("PUT {path} on {name}'s admin socket answered {status}: {answer}");
        }
    }
    Ok(Proxy {
        proc,
        addr,
        api,
        admin_socket,
        notes,
    })
}

impl Proxy {
    /// Successful upstream connects, `sbx_proxy_upstream_connects_total`
    /// summed over its label sets but `result="error"`; `None` when the
    /// proxy does not export it.
    pub fn upstream_connects(&self) -> Result<Option<f64>> {
        self.metric("sbx_proxy_upstream_connects_total")
    }

    /// Client connections open now (`sbx_proxy_client_connections`).
    pub fn client_connections(&self) -> Result<Option<f64>> {
        self.metric("sbx_proxy_client_connections")
    }

    fn metric(&self, name: &str) -> Result<Option<f64>> {
        let (status, text) = client::unix_request(&self.admin_socket, "GET", "/metrics", None)?;
        if status != 200 {
            bail!("GET /metrics on the admin socket answered {status}");
        }
        Ok(metric_sum(&text, name))
    }
}

/// Sum of every sample of `name` in Prometheus text, failed attempts
/// (`result="error"`) left out.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if rest.contains("result=\"error\"") {
            continue;
        }
        // The name itself, not a longer one sharing its prefix.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest
            .rsplit_once('}')
            .map(|(_, v)| v)
            .unwrap_or(rest)
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

fn toml_str(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))?;
    Ok(format!("{s:?}"))
}

/// nginx and the ports of its servers.
pub struct Nginx {
    pub proc: Spawned,
    /// HTTP/1.1 and h2c listeners proxying to the service.
    pub direct_h1: SocketAddr,
    pub direct_h2: SocketAddr,
    /// The same, proxying to the forwarder in front of the service.
    pub fwd_h1: SocketAddr,
    pub fwd_h2: SocketAddr,
}

/// Starts nginx with a generated configuration, as the current user, in
/// the foreground.
pub fn start_nginx(
    bin: &Path,
    scratch: &Scratch,
    service: SocketAddr,
    forwarder: SocketAddr,
    access_log: bool,
) -> Result<Nginx> {
    let prefix = scratch.path("nginx");
    for sub in ["", "tmp"] {
        std::fs::create_dir_all(prefix.join(sub)).context("create nginx prefix")?;
    }
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<Result<_>>()?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_config(&prefix, service, forwarder, &ports, access_log)?,
    )
    .context("write nginx.conf")?;
    let mut args: Vec<std::ffi::OsString> = vec!["-p".into(), prefix.clone().into()];
    args.extend(["-c".into(), conf.into(), "-e".into()]);
    args.push(prefix.join("error.log").into());
    let mut proc = Spawned::start("nginx", bin, args, &scratch.log("nginx"))?;
    for &port in &ports {
        if let Err(err) = wait_listening(port, READY_TIMEOUT) {
            let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
            let _ = proc.ensure_running();
            return Err(err.context(format!("nginx did not start; its error log:\n{log}")));
        }
    }
    // The master listens before it forks its workers; their PIDs are
    // wanted for CPU time.
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    while with_children(proc.pid()).len() < 2 {
        proc.ensure_running()?;
        if std::time::Instant::now() >= deadline {
            bail!("nginx started no worker within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    Ok(Nginx {
        proc,
        direct_h1: at(ports[0]),
        direct_h2: at(ports[1]),
        fwd_h1: at(ports[2]),
        fwd_h2: at(ports[3]),
    })
}

/// One worker per CPU, an access log or none (as sbx-proxy), upstream
/// keep-alive, generous keep-alive limits on
/// both sides (nginx's defaults close a connection every 1,000 requests),
/// the `X-Forwarded-*` headers sbx-proxy also sets, and WebSocket
/// upgrades passed through.
fn nginx_config(
    prefix: &Path,
    service: SocketAddr,
    forwarder: SocketAddr,
    ports: &[u16],
    access_log: bool,
) -> Result<String> {
    let p = prefix
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", prefix.display()))?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // What this process may open is what nginx may (it cannot raise it).
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes to the struct we own.
    let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20)
    } else {
        1024
    };
    let connections = nofile.saturating_sub(64).clamp(512, 65_536);
    let mut c = String::new();
    let _ = write!(
        c,
        "daemon off;\n\
         master_process on;\n\
         worker_processes auto;\n\
         worker_rlimit_nofile {nofile};\n\
         pid {p}/nginx.pid;\n\
         error_log {p}/error.log warn;\n\
         {user}\
         events {{ worker_connections {connections}; }}\n\
         http {{\n\
         \x20 access_log {access};\n\
         \x20 client_body_temp_path {p}/tmp/body;\n\
         \x20 proxy_temp_path {p}/tmp/proxy;\n\
         \x20 fastcgi_temp_path {p}/tmp/fastcgi;\n\
         \x20 uwsgi_temp_path {p}/tmp/uwsgi;\n\
         \x20 scgi_temp_path {p}/tmp/scgi;\n\
         \x20 keepalive_requests 1000000;\n\
         \x20 keepalive_timeout 300s;\n\
         \x20 map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
         \x20 upstream service {{ server {service}; keepalive 1024; keepalive_requests 1000000; keepalive_timeout 300s; }}\n\
         \x20 upstream forwarder {{ server {forwarder}; keepalive 1024; keepalive_requests 1000000; keepalive_timeout 300s; }}\n",
        // Run as the current user: as root, nginx would otherwise switch
        // its workers to an unprivileged account that cannot use the
        // scratch directory.
        user = if root { "user root root;\n" } else { "" },
        // Like sbx-proxy's: one line per request, written as it completes.
        access = if access_log {
            format!("{p}/access.log combined")
        } else {
            "off".to_owned()
        },
    );
    let servers = [
        (ports[0], "", "service"),
        (ports[1], " http2", "service"),
        (ports[2], "", "forwarder"),
        (ports[3], " http2", "forwarder"),
    ];
    for (port, h2, upstream) in servers {
        let _ = writeln!(
            c,
            "  server {{\n\
             \x20   listen 127.0.0.1:{port}{h2};\n\
             \x20   location / {{\n\
             \x20     proxy_pass http://{upstream};\n\
             \x20     proxy_http_version 1.1;\n\
             \x20     proxy_set_header Host $host;\n\
             \x20     proxy_set_header Upgrade $http_upgrade;\n\
             \x20     proxy_set_header Connection $connection_upgrade;\n\
             \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             \x20     proxy_set_header X-Forwarded-Proto $scheme;\n\
             \x20     proxy_set_header X-Forwarded-Host $host;\n\
             \x20     proxy_read_timeout 300s;\n\
             \x20   }}\n\
             \x20 }}"
        );
    }
    c.push_str("}\n");
    Ok(c)
}

/// nginx from the flag, else on PATH or in /usr/sbin (not on a normal
/// user's PATH). The error says why there is none.
pub fn find_nginx(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(format!("{} does not exist", p.display()))
        };
    }
    find_on_path("nginx")
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        .ok_or_else(|| "nginx not found (apt-get install nginx-light)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_label_sets_and_skips_longer_names() {
        let text = "# TYPE sbx_proxy_upstream_connects_total counter\n\
                    sbx_proxy_upstream_connects_total{kind=\"raw\"} 3\n\
                    sbx_proxy_upstream_connects_total{kind=\"ws\"} 2\n\
                    sbx_proxy_upstream_connects_total{kind=\"ws\",result=\"error\"} 9\n\
                    sbx_proxy_upstream_connects_total_other 100\n";
        assert_eq!(
            metric_sum(text, "sbx_proxy_upstream_connects_total"),
            Some(5.0)
        );
        assert_eq!(
            metric_sum("x 1\n", "sbx_proxy_upstream_connects_total"),
            None
        );
        assert_eq!(metric_sum("m 7\n", "m"), Some(7.0));
    }
}
