//! The agent as a process in the sandbox's namespace: no VM, so no
//! isolation beyond the network namespace and the cgroup (the processes it
//! starts see the host's files). For machines that can run no VM at all,
//! and for the fastest tests. Suspend freezes the cgroup.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{io_err, Launch, Runtime, RuntimeError, Started, Suspended, KEY_FILE, VMM_LOG};
use crate::cgroup::Cgroups;
use crate::logs;
use crate::model::AGENT_PORT;
use crate::procs::{Placement, ProcId};

pub struct ProcessRuntime {
    agent: PathBuf,
    cgroups: Cgroups,
}

impl ProcessRuntime {
    pub fn new(agent: PathBuf, cgroups: Cgroups) -> Self {
        Self { agent, cgroups }
    }
}

impl Runtime for ProcessRuntime {
    async fn start(&self, l: &Launch<'_>) -> Result<Started, RuntimeError> {
        // An empty config of its own, so an /etc/sbx-agent/config.toml on
        // the host (from the sbx-agent package) is not picked up.
        let config = l.file("agent.toml");
        std::fs::write(&config, "").map_err(io_err("write agent.toml"))?;
        let log = logs::open_append(&l.file(VMM_LOG)).map_err(io_err("open vmm.log"))?;
        let log2 = log.try_clone().map_err(io_err("dup vmm.log"))?;
        let mut cmd = std::process::Command::new(&self.agent);
        cmd.arg("--config")
            .arg(&config)
            .arg("--sandbox-id")
            .arg(l.id)
            .arg("--forwarded-auth-key-file")
            .arg(l.file(KEY_FILE))
            .arg("--listen")
            .arg(format!("0.0.0.0:{AGENT_PORT}"))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", "/tmp")
            .env("SBX_AGENT_LOG_FORMAT", "text")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let placement =
            Placement::new(&l.network.netns_path, l.cgroup).map_err(io_err("place the agent"))?;
        placement.apply(&mut cmd);
        let pid = crate::procs::spawn_detached(cmd)
            .map_err(io_err(format!("start {}", self.agent.display())))?;
        let vmm = ProcId::of(pid)
            .ok_or_else(|| RuntimeError::Vmm(format!("the agent (pid {pid}) exited at once")))?;
        Ok(Started { vmm, accel: None })
    }

    async fn suspend(&self, l: &Launch<'_>, vmm: ProcId) -> Result<Suspended, RuntimeError> {
        self.cgroups.set_frozen(l.id, true).await?;
        Ok(Suspended {
            vmm: Some(vmm),
            snapshot_bytes: None,
        })
    }

    async fn resume(&self, l: &Launch<'_>, vmm: Option<ProcId>) -> Result<Started, RuntimeError> {
        self.cgroups.set_frozen(l.id, false).await?;
        let vmm = vmm
            .filter(ProcId::alive)
            .ok_or_else(|| RuntimeError::Vmm("the frozen agent is gone".into()))?;
        Ok(Started { vmm, accel: None })
    }

    async fn abort_suspend(&self, l: &Launch<'_>) {
        let _ = self.cgroups.set_frozen(l.id, false).await;
    }

    fn console(&self, dir: &Path) -> PathBuf {
        dir.join(VMM_LOG)
    }
}
