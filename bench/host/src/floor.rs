//! The floors: what each sbx-host figure costs with no sbx-host in the way.
//!
//! - A bare microVM: a namespace of the bench's own with a tap addressed
//!   10.0.2.1/30 (netctl's guest addressing, without netctl), a guest
//!   config file for fw_cfg, and QEMU started with the very command line
//!   sbx-host builds (`sbx_host::runtime::microvm::args::VmArgs::build`,
//!   same accelerator, kernel command line and TCG TSC frequency), placed
//!   in the namespace and a cgroup the same way (`procs::Placement`); timed
//!   from the spawn to the agent's first health answer, polled from inside
//!   the namespace at 10.0.2.2:9501.
//! - A bare agent: netctl's namespace create (PUT with `setup`), then
//!   `nsenter --net=<ns> sbx-agent` with the flags of sbx-host's process
//!   runtime; timed from the PUT to the first health answer, polled from
//!   the host namespace (where sbx-host polls from).

use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use sbx_bench_support::child::Spawned;
use sbx_bench_support::scratch::random_hex;
use sbx_host::image::Image;
use sbx_host::model::AGENT_PORT;
use sbx_host::runtime::microvm::args::{host_tsc_khz, Accel, VmArgs};

use crate::rig::{self, Api, Cgroup, Netns};

/// The guest's address behind the tap, and the tap's (netctl's defaults).
pub const GUEST_V4: &str = "10.0.2.2";
const GUEST_CIDR: &str = "10.0.2.2/30";
const TAP_CIDR: &str = "10.0.2.1/30";
const TAP_GATEWAY: &str = "10.0.2.1";
const TAP: &str = "tap0";

/// How long a floor guest or agent may take to answer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// What every bare microVM boot shares.
pub struct VmFloor<'a> {
    pub qemu: &'a Path,
    pub image: &'a Image,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mb: u64,
    /// Where each VM gets a directory (guest config, console, QMP socket).
    pub dir: PathBuf,
    pub cgroups: &'a Cgroup,
}

/// A bare QEMU guest; killed by PID (and its namespace and cgroup removed)
/// on drop.
pub struct FloorVm {
    child: Child,
    pub pid: u32,
    pub console: PathBuf,
    _cgroup: Cgroup,
    ns: Netns,
}

impl Drop for FloorVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl VmFloor<'_> {
    /// Boots guest `n` and waits for its agent; returns it and the time
    /// from QEMU's spawn to the first health answer.
    ///
    /// Must run on the main thread (the guest dies with the thread that
    /// started it: `PR_SET_PDEATHSIG`).
    pub fn boot(&self, n: usize) -> Result<(FloorVm, Duration)> {
        rig::check_interrupted()?;
        let ns = Netns::new("hbf")?;
        ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ns.ip(&["addr", "add", TAP_CIDR, "dev", TAP])?;
        ns.ip(&["link", "set", TAP, "up"])?;
        let id = format!("floor-vm-{n}");
        let dir = self.dir.join(&id);
        fs::create_dir_all(&dir)?;
        let config = dir.join("guest.cfg");
        let _ = fs::remove_file(&config);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config)
            .with_context(|| format!("create {}", config.display()))?;
        // guest_config.rs's format, with an empty resolver list.
        write!(
            f,
            "sandbox_id={id}\nhostname={id}\nipv4={GUEST_CIDR}\ngateway4={TAP_GATEWAY}\ndns=\nkey={}\n",
            random_hex(32)
        )?;
        f.sync_all()?;
        drop(f);
        let console = dir.join("console.log");
        let qmp = dir.join("qmp.sock");
        let _ = fs::remove_file(&qmp);
        let cgroup = self.cgroups.child(&id)?;
        let vmm = sbx_host::config::MicrovmConfig::default();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("vmm.log"))?;
        let log2 = log.try_clone()?;

        let started = Instant::now();
        let argv = VmArgs {
            id: &id,
            accel: self.accel,
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            kernel: &self.image.kernel,
            initrd: &self.image.initrd,
            guest_config: &config,
            console_log: &console,
            qmp_socket: &qmp,
            tap: TAP,
            user: (!vmm.user.is_empty()).then_some(vmm.user.as_str()),
            seccomp: vmm.seccomp,
            incoming: false,
            tsc_khz: host_tsc_khz(),
        }
        .build();
        let mut cmd = Command::new(self.qemu);
        cmd.args(argv)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let placement = sbx_host::procs::Placement::new(&ns.path(), &cgroup.path)
            .context("place the floor VMM")?;
        placement.apply(&mut cmd);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", self.qemu.display()))?;
        drop(placement);
        let pid = child.id();
        let vm = FloorVm {
            child,
            pid,
            console: console.clone(),
            _cgroup: cgroup,
            ns,
        };
        let addr = SocketAddr::new(GUEST_V4.parse::<Ipv4Addr>()?.into(), AGENT_PORT);
        let took = rig::wait_healthy(&vm.ns.path(), addr, started, BOOT_TIMEOUT, move || {
            rig::running(pid)
        })
        .with_context(|| format!("bare QEMU boot: console:\n{}", rig::tail(&console, 15)))?;
        Ok((vm, took))
    }
}

/// What every bare agent start shares.
pub struct AgentFloor<'a> {
    pub nsenter: &'a Path,
    pub agent: &'a Path,
    pub netctl: &'a Api,
    /// Where sbx-host runs and polls from.
    pub host_ns: &'a Path,
    /// An empty agent config (as sbx-host's process runtime writes).
    pub agent_config: &'a Path,
    pub key_file: &'a Path,
    pub log: PathBuf,
}

/// A netctl sandbox, deleted through netctl on drop.
struct NetctlSandbox {
    api: Api,
    id: String,
}

impl Drop for NetctlSandbox {
    fn drop(&mut self) {
        let _ = self
            .api
            .call("DELETE", &format!("/v1/sandboxes/{}", self.id), None);
    }
}

/// A bare agent in a netctl-made namespace: stopped by PID, then its
/// network deleted, on drop (fields drop in this order).
pub struct FloorAgent {
    proc: Spawned,
    _net: NetctlSandbox,
    pub pid: u32,
}

impl AgentFloor<'_> {
    /// Makes `id`'s network through netctl and starts the agent in it;
    /// returns it and the time from the PUT to the first health answer.
    ///
    /// Must run on the main thread (see [`Spawned::start`]).
    pub fn start(&self, id: &str) -> Result<(FloorAgent, Duration)> {
        rig::check_interrupted()?;
        let started = Instant::now();
        let view = self.netctl.expect(
            "PUT",
            &format!("/v1/sandboxes/{id}"),
            Some(r#"{"setup":{"tap":false},"network":null}"#),
            200,
        )?;
        let net = NetctlSandbox {
            api: self.netctl.clone(),
            id: id.to_owned(),
        };
        let setup = &view["setup"];
        let ipv4: Ipv4Addr = setup["ipv4"]
            .as_str()
            .and_then(|s| s.split('/').next())
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("netctl's answer has no setup.ipv4: {view}"))?;
        let netns_path = setup["netns_path"]
            .as_str()
            .with_context(|| format!("netctl's answer has no setup.netns_path: {view}"))?;
        // nsenter execs the agent in place: the PID is the agent's. The
        // flags and environment of host/src/runtime/process.rs.
        let proc = Spawned::start_with_env(
            "sbx-agent (floor)",
            self.nsenter,
            [
                format!("--net={netns_path}").into(),
                self.agent.as_os_str().to_owned(),
                "--config".into(),
                self.agent_config.as_os_str().to_owned(),
                "--sandbox-id".into(),
                id.into(),
                "--forwarded-auth-key-file".into(),
                self.key_file.as_os_str().to_owned(),
                "--listen".into(),
                format!("0.0.0.0:{AGENT_PORT}").into(),
            ],
            &[
                ("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
                ("HOME", "/tmp"),
                ("SBX_AGENT_LOG_FORMAT", "text"),
            ],
            &self.log,
        )?;
        let pid = proc.pid();
        let agent = FloorAgent {
            proc,
            _net: net,
            pid,
        };
        let took = rig::wait_healthy(
            self.host_ns,
            SocketAddr::new(ipv4.into(), AGENT_PORT),
            started,
            BOOT_TIMEOUT,
            move || rig::running(pid),
        )
        .with_context(|| format!("bare agent: log:\n{}", rig::tail(&self.log, 10)))?;
        Ok((agent, took))
    }
}

impl FloorAgent {
    pub fn ensure_running(&mut self) -> Result<()> {
        self.proc.ensure_running()
    }
}
