//! At start: every sandbox on disk is adopted again (its VMM still runs:
//! `kill -9` of sbx-host leaves guests running), finished (a delete or a
//! suspend that a crash interrupted), rolled back (a create or resume that
//! never answered), or marked stopped (its guest died meanwhile). Cgroups
//! that belong to no record are ended.

use std::sync::Arc;

use tokio::sync::Mutex as AsyncMutex;
use tracing::{error, info, warn};

use super::{Entry, Manager, Usage};
use crate::config::RuntimeKind;
use crate::model::{Record, State};
use crate::runtime::SNAPSHOT;

impl Manager {
    pub async fn restore(self: &Arc<Self>) {
        let mut known = Vec::new();
        for (id, loaded) in self.store.load_all() {
            let mut rec = match loaded {
                Ok(Some(r)) if r.id == id => r,
                Ok(Some(r)) => {
                    error!(
                        dir = id,
                        record = r.id,
                        "record names another sandbox; left alone"
                    );
                    continue;
                }
                Ok(None) => {
                    // Crashed before the first save: nothing was made but
                    // the directory.
                    info!(id, "removing a create that never started");
                    let _ = self.store.remove(&id);
                    continue;
                }
                Err(e) => {
                    error!(id, error = %e, "unreadable record; left alone");
                    continue;
                }
            };
            if !self.restore_one(&mut rec).await {
                continue;
            }
            known.push(id.clone());
            let holds = rec.holds_capacity();
            let usage = Usage {
                cpus: rec.cpus,
                memory_mb: rec.memory_mb,
            };
            let running = rec.state == State::Running;
            let snapshot = rec.clone();
            {
                let mut reg = self.registry();
                reg.entries.insert(
                    id.clone(),
                    Arc::new(Entry {
                        record: AsyncMutex::new(rec),
                    }),
                );
                if holds {
                    reg.usage.insert(id.clone(), usage);
                }
            }
            if running {
                self.watch(&id, &snapshot);
            }
        }
        for id in self.cgroups.ids() {
            if !known.contains(&id) {
                warn!(id, "ending the processes of a cgroup with no sandbox");
                let _ = self.cgroups.destroy(&id).await;
            }
        }
    }

    /// Brings one record to a settled state; false when it is gone.
    async fn restore_one(&self, rec: &mut Record) -> bool {
        let id = rec.id.clone();
        let alive = rec.vmm.is_some_and(|v| v.alive());
        match rec.state {
            State::Starting | State::Deleting => {
                info!(
                    id,
                    state = rec.state.as_str(),
                    "finishing an interrupted create or delete: removing it"
                );
                if !self.teardown(rec).await {
                    warn!(id, "not fully removed; will try again at the next start");
                }
                false
            }
            State::Running if alive => {
                info!(id, pid = rec.vmm.map(|v| v.pid), "adopted a running guest");
                true
            }
            State::Running => {
                warn!(id, "the guest died while sbx-host was down");
                self.stop_record(rec, "the guest stopped while sbx-host was down")
                    .await;
                true
            }
            State::Suspending => {
                let snapshot = self.store.dir(&id).join(SNAPSHOT).exists();
                match rec.runtime {
                    RuntimeKind::Microvm if snapshot => {
                        if let Some(v) = rec.vmm.filter(|v| v.alive()) {
                            v.signal(nix::sys::signal::Signal::SIGKILL);
                        }
                        rec.vmm = None;
                        rec.state = State::Suspended;
                    }
                    _ if alive => {
                        // Not written yet (or a frozen agent): run it again.
                        if let Ok(parts) = self.parts(rec) {
                            self.abort_suspend(rec.runtime, &parts.launch()).await;
                        }
                        rec.state = State::Running;
                    }
                    _ => {
                        self.stop_record(rec, "the guest died while being suspended")
                            .await;
                        return true;
                    }
                }
                let _ = self.store.save(rec);
                true
            }
            State::Resuming => {
                self.undo_resume(rec).await;
                let _ = self.store.save(rec);
                true
            }
            State::Suspended => {
                let ok = match rec.runtime {
                    RuntimeKind::Microvm => self.store.dir(&id).join(SNAPSHOT).exists(),
                    RuntimeKind::Process => alive,
                };
                if !ok {
                    self.stop_record(rec, "the suspended guest's state is gone")
                        .await;
                }
                true
            }
            State::Stopped | State::Failed => true,
        }
    }
}
