//! A QEMU `-M microvm` guest, run inside the sandbox's network namespace
//! on netctl's tap, in the sandbox's cgroup, controlled over QMP.
//!
//! Suspend is a migration to a file: the guest is stopped, its RAM and
//! device state are written to `snapshot` through an fd handed over QMP
//! (so QEMU, once it has dropped to an unprivileged user, needs no access
//! to our directory), and the VMM exits: a suspended sandbox holds no RAM.
//! Resume starts a new VMM with the same command line and `-incoming`
//! from that file, on the same tap.

pub mod accel;
pub mod args;
mod guest_config;
pub mod qmp;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::OnceCell;
use tracing::{debug, info};

use self::args::{Accel, VmArgs, INCOMING_FD};
use self::qmp::Qmp;
use super::{
    io_err, Launch, Runtime, RuntimeError, Started, Suspended, CONSOLE_LOG, SNAPSHOT, VMM_LOG,
};
use crate::config::MicrovmConfig;
use crate::logs;
use crate::procs::{Placement, ProcId};

const QMP_SOCKET: &str = "qmp.sock";
const GUEST_CONFIG: &str = "guest.cfg";
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Writing a snapshot is bounded by the disk; this is a hang guard.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(300);

pub struct MicrovmRuntime {
    config: MicrovmConfig,
    accel: OnceCell<Accel>,
}

impl MicrovmRuntime {
    pub fn new(config: MicrovmConfig) -> Self {
        Self {
            config,
            accel: OnceCell::new(),
        }
    }

    /// The accelerator, probed once (with the first image's kernel).
    pub async fn accel(&self, kernel: &Path) -> Accel {
        *self
            .accel
            .get_or_init(|| {
                accel::decide(
                    self.config.accel,
                    &self.config.qemu,
                    kernel,
                    Duration::from_millis(self.config.kvm_probe_timeout_ms),
                )
            })
            .await
    }

    /// The accelerator if it was decided already.
    pub fn accel_known(&self) -> Option<Accel> {
        self.accel.get().copied()
    }

    /// The VMM's command, and its placement, which must outlive the spawn
    /// (its fds are what the child enters).
    fn command(
        &self,
        l: &Launch<'_>,
        accel: Accel,
        incoming: bool,
    ) -> Result<(std::process::Command, Placement), RuntimeError> {
        let tap = l
            .network
            .tap
            .as_deref()
            .ok_or_else(|| RuntimeError::Vmm("netctl made no tap for this sandbox".into()))?;
        for p in [l.dir, l.image.kernel.as_path(), l.image.initrd.as_path()] {
            if !args::option_safe(p) {
                return Err(RuntimeError::Vmm(format!(
                    "{}: QEMU cannot take a path with a comma",
                    p.display()
                )));
            }
        }
        let console = l.file(CONSOLE_LOG);
        let config = l.file(GUEST_CONFIG);
        let qmp = l.file(QMP_SOCKET);
        let argv = VmArgs {
            id: l.id,
            accel,
            cpus: vcpus(l.cpus),
            memory_mb: l.memory_mb,
            kernel: &l.image.kernel,
            initrd: &l.image.initrd,
            guest_config: &config,
            console_log: &console,
            qmp_socket: &qmp,
            tap,
            user: (!self.config.user.is_empty()).then_some(self.config.user.as_str()),
            seccomp: self.config.seccomp,
            incoming,
            tsc_khz: args::host_tsc_khz(),
        }
        .build();
        let log = logs::open_append(&l.file(VMM_LOG)).map_err(io_err("open vmm.log"))?;
        let log2 = log.try_clone().map_err(io_err("dup vmm.log"))?;
        let mut cmd = std::process::Command::new(&self.config.qemu);
        cmd.args(argv)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let placement =
            Placement::new(&l.network.netns_path, l.cgroup).map_err(io_err("place the VMM"))?;
        placement.apply(&mut cmd);
        Ok((cmd, placement))
    }

    async fn qmp<T: Send + 'static>(
        &self,
        dir: &Path,
        f: impl FnOnce(&mut Qmp) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let socket = dir.join(QMP_SOCKET);
        tokio::task::spawn_blocking(move || {
            let mut q = Qmp::connect_when_ready(&socket, QMP_TIMEOUT, QMP_TIMEOUT)?;
            f(&mut q)
        })
        .await
        .map_err(|e| RuntimeError::Vmm(format!("QMP task: {e}")))?
    }
}

/// QEMU takes whole vCPUs: a fractional share rounds up.
fn vcpus(cpus: f64) -> u32 {
    (cpus.ceil() as u32).max(1)
}

impl Runtime for MicrovmRuntime {
    async fn start(&self, l: &Launch<'_>) -> Result<Started, RuntimeError> {
        let accel = self.accel(&l.image.kernel).await;
        guest_config::write(&l.file(GUEST_CONFIG), l)?;
        let _ = std::fs::remove_file(l.file(QMP_SOCKET));
        let (cmd, _placement) = self.command(l, accel, false)?;
        // The child has entered its namespace and cgroup once spawned.
        let pid = crate::procs::spawn_detached(cmd)
            .map_err(io_err(format!("start {}", self.config.qemu.display())))?;
        let vmm = ProcId::of(pid)
            .ok_or_else(|| RuntimeError::Vmm(format!("QEMU (pid {pid}) exited at once")))?;
        debug!(id = l.id, pid, accel = accel.as_str(), "VMM started");
        Ok(Started {
            vmm,
            accel: Some(accel.as_str().into()),
        })
    }

    async fn suspend(&self, l: &Launch<'_>, vmm: ProcId) -> Result<Suspended, RuntimeError> {
        let started = Instant::now();
        let tmp = l.file("snapshot.tmp");
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("create snapshot.tmp"))?
        };
        let fd = file.as_raw_fd();
        // `file` stays open in this task until QEMU has its own copy.
        let file = std::sync::Arc::new(file);
        let held = file.clone();
        self.qmp(l.dir, move |q| {
            let _held = held;
            q.execute("stop", None)?;
            // The default cap (32 MiB/s) is for live migration over a
            // network; a stopped guest to a local file goes at disk speed.
            q.execute(
                "migrate-set-parameters",
                Some(json!({"max-bandwidth": 1u64 << 40})),
            )?;
            q.send_fd("snapshot", fd)?;
            q.execute("migrate", Some(json!({"uri": "fd:snapshot"})))?;
            let deadline = Instant::now() + MIGRATE_TIMEOUT;
            loop {
                let st = q.execute("query-migrate", None)?;
                match st.get("status").and_then(|s| s.as_str()) {
                    Some("completed") => break,
                    Some("failed") | Some("cancelled") => {
                        let why = st
                            .get("error-desc")
                            .and_then(|s| s.as_str())
                            .unwrap_or("no reason given");
                        return Err(RuntimeError::Vmm(format!("snapshot failed: {why}")));
                    }
                    _ if Instant::now() > deadline => {
                        return Err(RuntimeError::Vmm("snapshot did not finish in time".into()));
                    }
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            Ok(())
        })
        .await?;
        file.sync_all().map_err(io_err("fsync snapshot"))?;
        drop(file);
        let snapshot = l.file(SNAPSHOT);
        std::fs::rename(&tmp, &snapshot).map_err(io_err("rename snapshot"))?;
        let bytes = std::fs::metadata(&snapshot).map(|m| m.len()).ok();
        // The memory is on disk: the VMM goes, and with it the RAM.
        let _ = self
            .qmp(l.dir, |q| {
                q.execute("quit", None).map(|_| ()).map_err(Into::into)
            })
            .await;
        if !vmm.wait_exit(Duration::from_secs(10)).await {
            vmm.signal(nix::sys::signal::Signal::SIGKILL);
            vmm.wait_exit(Duration::from_secs(5)).await;
        }
        info!(
            id = l.id,
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "suspended to disk"
        );
        Ok(Suspended {
            vmm: None,
            snapshot_bytes: bytes,
        })
    }

    async fn resume(&self, l: &Launch<'_>, _vmm: Option<ProcId>) -> Result<Started, RuntimeError> {
        let accel = self.accel(&l.image.kernel).await;
        let snapshot = std::fs::File::open(l.file(SNAPSHOT)).map_err(io_err("open snapshot"))?;
        let _ = std::fs::remove_file(l.file(QMP_SOCKET));
        let (mut cmd, placement) = self.command(l, accel, true)?;
        let fd = snapshot.as_raw_fd();
        // SAFETY: runs in the child before exec; dup2 is async-signal-safe
        // and the fd was opened before the fork. dup2 clears CLOEXEC on
        // the copy, so QEMU finds the snapshot at INCOMING_FD.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, INCOMING_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let pid = crate::procs::spawn_detached(cmd)
            .map_err(io_err(format!("start {}", self.config.qemu.display())))?;
        drop((snapshot, placement));
        let vmm = ProcId::of(pid)
            .ok_or_else(|| RuntimeError::Vmm(format!("QEMU (pid {pid}) exited at once")))?;
        // Wait for the socket, then for the load to finish, then run.
        let socket = l.file(QMP_SOCKET);
        let deadline = Instant::now() + MIGRATE_TIMEOUT;
        while !socket.exists() {
            if !vmm.alive() {
                return Err(RuntimeError::Vmm("QEMU exited while restoring".into()));
            }
            if Instant::now() > deadline {
                return Err(RuntimeError::Vmm("QEMU never opened its QMP socket".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.qmp(l.dir, move |q| {
            loop {
                let st = q.execute("query-status", None)?;
                match st.get("status").and_then(|s| s.as_str()) {
                    Some("paused") | Some("postmigrate") => break,
                    Some("running") => return Ok(()),
                    Some("inmigrate") | Some("prelaunch") | Some("restore-vm") => {}
                    other => {
                        return Err(RuntimeError::Vmm(format!(
                            "restore ended in state {other:?}"
                        )))
                    }
                }
                if Instant::now() > deadline {
                    return Err(RuntimeError::Vmm("restore did not finish in time".into()));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            q.execute("cont", None)?;
            Ok(())
        })
        .await?;
        Ok(Started {
            vmm,
            accel: Some(accel.as_str().into()),
        })
    }

    async fn abort_suspend(&self, l: &Launch<'_>) {
        let _ = std::fs::remove_file(l.file("snapshot.tmp"));
        let _ = self
            .qmp(l.dir, |q| {
                let _ = q.execute("migrate_cancel", None);
                q.execute("cont", None).map(|_| ()).map_err(Into::into)
            })
            .await;
    }

    fn console(&self, dir: &Path) -> PathBuf {
        dir.join(CONSOLE_LOG)
    }
}
