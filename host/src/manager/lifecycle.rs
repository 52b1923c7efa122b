//! Delete, suspend, resume, and what happens when a guest stops on its
//! own. Each saves the state it is entering before acting, so a crash
//! half-way is finished or undone at the next start (restore.rs).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::{ApiError, Manager, Usage};
use crate::image;
use crate::logs::{self, CONSOLE_TAIL_LINES};
use crate::model::{self, Record, SandboxView, State};
use crate::procs::ProcId;
use crate::runtime::{Launch, KEY_FILE, SNAPSHOT};

impl Manager {
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let entry = self.entry(id)?;
        let mut rec = entry.record.lock().await;
        rec.state = State::Deleting;
        self.save(&rec)?;
        if !self.teardown(&rec).await {
            return Err(ApiError::new(
                502,
                "DELETE_INCOMPLETE",
                format!("sandbox {id:?}: not everything could be removed yet (see the log); DELETE again"),
            ));
        }
        drop(rec);
        self.forget(id);
        self.metrics.deleted();
        info!(id, "sandbox deleted");
        Ok(())
    }

    pub async fn suspend(&self, id: &str) -> Result<SandboxView, ApiError> {
        let entry = self.entry(id)?;
        let mut rec = entry.record.lock().await;
        match rec.state {
            State::Running => {}
            State::Suspended => return Ok(SandboxView::from(&*rec)),
            s => {
                return Err(ApiError::conflict(format!(
                    "sandbox {id:?} is {}",
                    s.as_str()
                )))
            }
        }
        let vmm = rec
            .vmm
            .ok_or_else(|| ApiError::internal("no VMM on record"))?;
        let started = Instant::now();
        rec.state = State::Suspending;
        self.save(&rec)?;
        let parts = self.parts(&rec)?;
        let launch = parts.launch();
        match self.suspend_guest(rec.runtime, &launch, vmm).await {
            Ok(s) => {
                rec.state = State::Suspended;
                rec.vmm = s.vmm;
                rec.snapshot_bytes = s.snapshot_bytes;
                rec.suspended_at = Some(model::now());
                rec.error = None;
                self.save(&rec)?;
                self.release(id);
                self.metrics.suspended(started.elapsed());
                Ok(SandboxView::from(&*rec))
            }
            Err(e) => {
                warn!(id, error = %e, "suspend failed; the guest keeps running");
                self.abort_suspend(rec.runtime, &launch).await;
                rec.state = State::Running;
                self.save(&rec)?;
                Err(ApiError::new(
                    502,
                    "SUSPEND_FAILED",
                    format!("suspend: {e}"),
                ))
            }
        }
    }

    pub async fn resume(self: &Arc<Self>, id: &str) -> Result<SandboxView, ApiError> {
        let entry = self.entry(id)?;
        let mut rec = entry.record.lock().await;
        match rec.state {
            State::Suspended => {}
            State::Running => return Ok(SandboxView::from(&*rec)),
            s => {
                return Err(ApiError::conflict(format!(
                    "sandbox {id:?} is {}",
                    s.as_str()
                )))
            }
        }
        self.reserve(
            id,
            Usage {
                cpus: rec.cpus,
                memory_mb: rec.memory_mb,
            },
        )?;
        let started = Instant::now();
        rec.state = State::Resuming;
        self.save(&rec)?;
        let parts = self.parts(&rec)?;
        let (launch, before, dir) = (parts.launch(), &parts.record, &parts.dir);
        let result = async {
            let s = self
                .resume_guest(before.runtime, &launch, before.vmm)
                .await
                .map_err(|e| ApiError::new(502, "RESUME_FAILED", format!("resume: {e}")))?;
            let agent = before
                .agent()
                .ok_or_else(|| ApiError::internal("no agent address"))?;
            let vmm = s.vmm;
            crate::agent::wait_healthy(agent, self.config.boot_timeout(), || vmm.alive())
                .await
                .map_err(|e| ApiError::new(504, "GUEST_NOT_HEALTHY", format!("resume: {e}")))?;
            Ok::<_, ApiError>(s)
        }
        .await;
        match result {
            Ok(s) => {
                rec.state = State::Running;
                rec.vmm = Some(s.vmm);
                rec.accel = s.accel.or(rec.accel.take());
                rec.suspended_at = None;
                rec.snapshot_bytes = None;
                rec.error = None;
                // Saved running before the snapshot goes: a crash between
                // the two leaves a stale file (removed with the sandbox,
                // replaced by the next suspend), never a record that points
                // at a snapshot that is gone.
                self.save(&rec)?;
                let _ = std::fs::remove_file(dir.join(SNAPSHOT));
                self.metrics.resumed(started.elapsed());
                info!(
                    id,
                    ms = started.elapsed().as_millis() as u64,
                    "sandbox resumed"
                );
                self.watch(id, &rec);
                Ok(SandboxView::from(&*rec))
            }
            Err(e) => {
                let console = logs::tail(&self.console(rec.runtime, id), CONSOLE_TAIL_LINES);
                warn!(id, error = %e.message, console = %console, "resume failed; still suspended");
                self.undo_resume(&mut rec).await;
                self.save(&rec)?;
                self.release(id);
                Err(e)
            }
        }
    }

    /// Back to suspended after a failed resume: a new VMM is ended (the
    /// snapshot is still there), a thawed agent frozen again.
    pub(crate) async fn undo_resume(&self, rec: &mut Record) {
        match rec.runtime {
            crate::config::RuntimeKind::Microvm => {
                for pid in self.cgroups.pids(&rec.id) {
                    if let Some(p) = ProcId::of(pid) {
                        p.signal(nix::sys::signal::Signal::SIGKILL);
                    }
                }
                rec.vmm = None;
            }
            crate::config::RuntimeKind::Process => {
                let _ = self.cgroups.set_frozen(&rec.id, true).await;
            }
        }
        rec.state = State::Suspended;
    }

    /// Watches a running guest's VMM: if it exits while the record says
    /// running (not through suspend or delete), the sandbox is stopped and
    /// its network released.
    pub(crate) fn watch(self: &Arc<Self>, id: &str, rec: &Record) {
        let Some(vmm) = rec.vmm else { return };
        let me = Arc::downgrade(self);
        let id = id.to_owned();
        tokio::spawn(async move {
            vmm.exited().await;
            if let Some(m) = me.upgrade() {
                m.guest_exited(&id, vmm).await;
            }
        });
    }

    async fn guest_exited(&self, id: &str, vmm: ProcId) {
        let Ok(entry) = self.entry(id) else { return };
        let mut rec = entry.record.lock().await;
        if rec.state != State::Running || rec.vmm != Some(vmm) {
            return;
        }
        let console = logs::tail(&self.console(rec.runtime, id), CONSOLE_TAIL_LINES);
        warn!(id, pid = vmm.pid, console = %console, "the guest stopped on its own");
        self.stop_record(&mut rec, "the guest stopped on its own")
            .await;
    }

    /// A sandbox whose guest is gone: its processes and network go, its
    /// record stays (state `stopped`) until DELETE.
    pub(crate) async fn stop_record(&self, rec: &mut Record, why: &str) {
        let _ = self.cgroups.destroy(&rec.id).await;
        if let Err(e) = self.netctl.delete(&rec.id).await {
            warn!(id = rec.id, error = %e, "network not deleted");
        }
        rec.state = State::Stopped;
        rec.vmm = None;
        rec.error = Some(why.to_owned());
        let _ = self.store.save(rec);
        self.release(&rec.id);
        self.metrics.guest_stopped();
    }

    pub(crate) fn key_hex(&self, id: &str) -> Result<String, ApiError> {
        std::fs::read_to_string(self.store.dir(id).join(KEY_FILE))
            .map(|s| s.trim().to_owned())
            .map_err(|e| ApiError::internal(format!("read the key: {e}")))
    }

    /// What a suspend or resume of `rec` runs with: its own copy of the
    /// record (the caller changes the original as it goes), the image it
    /// booted, its network, cgroup, directory and key.
    pub(crate) fn parts(&self, rec: &Record) -> Result<Parts, ApiError> {
        let dir = self.store.dir(&rec.id);
        let image = match image::pinned(&rec.image, &dir) {
            Some(pinned) => pinned,
            None => image::find(&self.config.images_dir, &rec.image)
                .map_err(|e| ApiError::internal(e.to_string()))?,
        };
        let network = rec
            .network
            .clone()
            .ok_or_else(|| ApiError::internal("no network on record"))?;
        let cgroup = self
            .cgroups
            .create(&rec.id)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Parts {
            key: self.key_hex(&rec.id)?,
            record: rec.clone(),
            image,
            network,
            cgroup,
            dir,
            dns: self.dns.clone(),
        })
    }
}

/// Everything a [`Launch`] borrows, owned.
pub(crate) struct Parts {
    pub record: Record,
    pub image: image::Image,
    pub network: crate::model::Network,
    pub cgroup: PathBuf,
    pub dir: PathBuf,
    pub key: String,
    pub dns: Vec<std::net::Ipv4Addr>,
}

impl Parts {
    pub fn launch(&self) -> Launch<'_> {
        Launch {
            id: &self.record.id,
            dir: &self.dir,
            cgroup: &self.cgroup,
            network: &self.network,
            cpus: self.record.cpus,
            memory_mb: self.record.memory_mb,
            disk_mb: self.record.disk_mb,
            image: &self.image,
            key_hex: &self.key,
            dns: &self.dns,
        }
    }
}
