//! The world for sbx-host (SPEC 8): netctl's world (a host namespace with
//! netctl, an "internet" namespace with DNS and servers behind it, see
//! `setup_support`), plus sbx-host in the host namespace with its own
//! state directory, its own cgroup, and the guest image from
//! `scripts/build-image.sh`. Everything it made is removed on drop, in
//! order: sbx-host, every process in its cgroups (guests, agents), then
//! netctl's world.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bins::{bin, workspace_root};
use crate::process::{piped, ChildGuard};
use crate::setup_support::SetupWorld;

pub use crate::setup_support::{ALLOWED_NAME, DENIED_NAME, DNS_V4};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The image every VM test boots (built once per checkout).
pub const IMAGE: &str = "default";

/// Options for one world.
#[derive(Clone)]
pub struct HostOptions {
    pub runtime: &'static str,
    pub cpus: f64,
    pub memory_mb: u64,
    pub boot_timeout_secs: u64,
    /// More TOML for netctl (after its `[setup]` table).
    pub netctl_extra: String,
    /// `[microvm] user`: the user QEMU drops to ("" stays root).
    pub vmm_user: &'static str,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            runtime: "process",
            cpus: 64.0,
            memory_mb: 16384,
            boot_timeout_secs: 120,
            netctl_extra: String::new(),
            vmm_user: "",
        }
    }
}

pub struct HostWorld {
    pub daemon: Option<ChildGuard>,
    _cgroup: CgroupCleanup,
    pub net: SetupWorld,
    pub dir: tempfile::TempDir,
    pub cgroup: PathBuf,
    pub opts: HostOptions,
}

impl HostWorld {
    pub fn new(opts: HostOptions) -> Self {
        let net = SetupWorld::with_config(&opts.netctl_extra);
        let dir = tempfile::tempdir().expect("tempdir");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let cgroup = cgroup2_mount().join(format!("sbxt-{}-{n}", std::process::id()));
        let images = image_dir();
        let config = format!(
            "socket = \"{sock}\"\nstate_dir = \"{state}\"\nnetctl_socket = \"{netctl}\"\n\
             images_dir = \"{images}\"\ndefault_runtime = \"{rt}\"\ncgroup_dir = \"{cg}\"\n\
             boot_timeout_secs = {boot}\nguest_dns = [\"{DNS_V4}\"]\nlog_max_bytes = 65536\n\
             [capacity]\ncpus = {cpus:.1}\nmemory_mb = {mem}\n\
             [microvm]\naccel = \"tcg\"\nuser = \"{user}\"\n[process]\nagent = \"{agent}\"\n",
            sock = dir.path().join("sbx-host.sock").display(),
            state = dir.path().join("state").display(),
            netctl = net.socket().display(),
            images = images.display(),
            rt = opts.runtime,
            cg = cgroup.display(),
            boot = opts.boot_timeout_secs,
            cpus = opts.cpus,
            mem = opts.memory_mb,
            agent = bin("sbx-agent").display(),
            user = opts.vmm_user,
        );
        fs::write(dir.path().join("config.toml"), config).expect("config");
        let mut world = Self {
            daemon: None,
            _cgroup: CgroupCleanup(cgroup.clone()),
            net,
            dir,
            cgroup,
            opts,
        };
        world.start();
        world
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sbx-host.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.state_dir().join("sandboxes").join(id)
    }

    /// Starts (or restarts) sbx-host in the host namespace.
    pub fn start(&mut self) {
        self.daemon = None;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.net.host.path()))
            .arg(bin("sbx-host"))
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .env("SBX_HOST_LOG", "sbx_host=debug,info");
        piped(&mut cmd);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sbx-host.log"))
            .expect("log");
        cmd.stderr(log);
        let mut child = ChildGuard::spawn("nsenter sbx-host serve", &mut cmd);
        child.wait_for_stdout_line("listening", Duration::from_secs(60));
        self.daemon = Some(child);
    }

    /// SIGKILL, no cleanup of its own (guests keep running).
    pub fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.signal(libc::SIGKILL);
            assert!(
                d.wait_timeout(Duration::from_secs(10)).is_some(),
                "sbx-host did not die"
            );
        }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, ChildGuard::pid)
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.dir.path().join("sbx-host.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn api(&self) -> HostApi {
        HostApi {
            socket: self.socket(),
        }
    }

    /// Creates `id` with `extra` fields merged in; panics unless 201.
    #[track_caller]
    pub fn create(&self, id: &str, extra: Value) -> Value {
        let r = self.api().create(id, extra);
        assert_eq!(
            r.0,
            201,
            "create {id}: {}\nlog:\n{}",
            r.1,
            self.log_tail(40)
        );
        r.1
    }

    /// Processes in the sandbox's cgroup.
    pub fn cgroup_pids(&self, id: &str) -> Vec<u32> {
        fs::read_to_string(self.cgroup.join(id).join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Asserts nothing of `id` is left: no namespace, host link, netctl
    /// entry, cgroup, process, directory.
    #[track_caller]
    pub fn assert_gone(&self, id: &str, netns: &str, vmm_pid: Option<u32>) {
        assert!(
            !Path::new("/run/netns").join(netns).exists(),
            "namespace {netns} left"
        );
        assert!(!self.cgroup.join(id).exists(), "cgroup of {id} left");
        assert!(
            !self.sandbox_dir(id).exists(),
            "state directory of {id} left"
        );
        let r = self
            .net
            .api()
            .call("GET", &format!("/v1/sandboxes/{id}"), None);
        assert_eq!(r.status, 404, "netctl still has {id}: {}", r.body);
        if let Some(pid) = vmm_pid {
            assert!(!running(pid), "VMM {pid} still runs");
        }
        let links = self.net.host.ip(&["-j", "link"]);
        let text = String::from_utf8_lossy(&links.stdout).to_string();
        let ours: Vec<Value> = serde_json::from_str::<Vec<Value>>(&text)
            .unwrap_or_default()
            .into_iter()
            .filter(|l| {
                l["ifname"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&self.net.iface_prefix))
            })
            .collect();
        // One host link per sandbox netctl still has: none left for `id`.
        let r = self.net.api().call("GET", "/v1/sandboxes", None);
        let known = serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        assert_eq!(ours.len(), known, "host links left: {ours:?}");
    }
}

/// Whether `pid` runs (exists and is not a zombie: a VMM orphaned by a
/// killed sbx-host is reaped by PID 1, which on some machines never does).
pub fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// HTTP/1.1 over sbx-host's socket.
#[derive(Debug, Clone)]
pub struct HostApi {
    pub socket: PathBuf,
}

impl HostApi {
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Value), String> {
        let mut s = UnixStream::connect(&self.socket).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(300)))
            .map_err(|e| e.to_string())?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: sbx-host\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no head")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status")?;
        let value = if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()))
        };
        Ok((status, value))
    }

    pub fn create(&self, id: &str, extra: Value) -> (u16, Value) {
        let mut body = serde_json::json!({"id": id});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        self.call("POST", "/v1/sandboxes", Some(&body.to_string()))
    }

    pub fn get(&self, id: &str) -> (u16, Value) {
        self.call("GET", &format!("/v1/sandboxes/{id}"), None)
    }

    pub fn delete(&self, id: &str) -> u16 {
        self.call("DELETE", &format!("/v1/sandboxes/{id}"), None).0
    }
}

/// Runs `script` with busybox sh inside the guest of `agent` (an
/// `<ip>:9501` the test reaches from the host namespace), through the
/// agent's API with a token minted from the create's key. Returns stdout
/// and the exit code.
pub fn guest_sh(world: &HostWorld, created: &Value, script: &str) -> (String, i64) {
    let id = created["id"].as_str().expect("id");
    let agent = created["agent"].as_str().expect("agent");
    let key = world.dir.path().join(format!("{id}.key"));
    fs::write(&key, created["forwarded_auth_key"].as_str().expect("key")).expect("key");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", world.net.host.path()))
        .arg(bin("sbx"))
        .arg("exec")
        .arg(format!("http://{agent}"))
        .arg("--key-file")
        .arg(&key)
        .arg("--sandbox-id")
        .arg(id)
        .args(["--timeout", "60", "--", "sh", "-c", script])
        .stdin(Stdio::null());
    let out = cmd.output().expect("sbx exec");
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        i64::from(out.status.code().unwrap_or(-1)),
    )
}

/// Where the images are: `target/images` (`SBX_IMAGES_DIR` overrides).
/// Built on first use when missing, once per machine at a time.
pub fn image_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SBX_IMAGES_DIR") {
        return PathBuf::from(dir);
    }
    let root = workspace_root();
    let dir = root.join("target/images");
    if dir.join(IMAGE).join("manifest.json").exists() {
        return dir;
    }
    fs::create_dir_all(&dir).expect("images dir");
    // flock(1) serializes test binaries building it at once.
    let status = Command::new("flock")
        .arg(dir.join(".build.lock"))
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "test -e {dir}/{IMAGE}/manifest.json || {root}/scripts/build-image.sh --name {IMAGE} --out {dir} --agent {agent}",
            dir = dir.display(),
            root = root.display(),
            agent = bin("sbx-agent").display(),
        ))
        .status()
        .expect("run build-image.sh");
    assert!(status.success(), "scripts/build-image.sh failed");
    dir
}

/// Builds a variant of the default image whose init is `init` (a broken
/// guest, for failure tests) under `dir/<name>`; returns `dir`.
pub fn image_with_init(dir: &Path, name: &str, init: &str) -> PathBuf {
    let base = image_dir();
    let init_file = dir.join(format!("{name}.init"));
    fs::write(&init_file, init).expect("init");
    let status = Command::new(workspace_root().join("scripts/build-image.sh"))
        .args(["--name", name, "--out"])
        .arg(dir)
        .arg("--init")
        .arg(&init_file)
        .arg("--agent")
        .arg(bin("sbx-agent"))
        .status()
        .expect("build-image.sh");
    assert!(status.success(), "build-image.sh --init failed");
    let _ = base;
    dir.to_path_buf()
}

fn cgroup2_mount() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("mounts");
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found.into_iter().next().expect("a cgroup2 mount")
}

/// Ends every process in a test's cgroups and removes them.
struct CgroupCleanup(PathBuf);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(&self.0) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                let _ = fs::write(p.join("cgroup.freeze"), "0");
                let _ = fs::write(p.join("cgroup.kill"), "1");
                let deadline = Instant::now() + Duration::from_secs(10);
                while fs::remove_dir(&p).is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}
