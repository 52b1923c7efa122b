//! Restore on start: every saved sandbox is re-applied (or its interrupted
//! setup rolled back).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::{target, Manager};
use crate::apply;
use crate::setup::Phase;
use crate::store::Saved;

impl Manager {
    /// Re-applies every saved sandbox (rules may have survived in the
    /// kernel; re-applying the same state is harmless). Names keep their
    /// saved addresses and are refreshed when due.
    pub async fn reconcile(self: &Arc<Self>) -> anyhow::Result<ReconcileReport> {
        let started = Instant::now();
        let (saved, problems) = self.store.load_all()?;
        for p in &problems {
            warn!(problem = %p, "saved state skipped");
        }
        let mut report = ReconcileReport {
            skipped: problems.len(),
            ..ReconcileReport::default()
        };
        // Every saved slot is taken before anything runs, so no restore and
        // no new PUT can be handed a slot that is still in use.
        let mut restorable = Vec::with_capacity(saved.len());
        for s in saved {
            if let Some(setup) = &s.setup {
                if !self.setup.layout().owns(&s.id, &setup.plan) {
                    warn!(sandbox = %s.id, netns = %setup.plan.netns, host_iface = %setup.plan.host_iface,
                        "saved setup does not match the [setup] config (changed since?); left alone");
                    report.skipped += 1;
                    continue;
                }
                if let Err(e) = self.setup.claim(&s.id, setup.plan.slot).await {
                    warn!(sandbox = %s.id, error = %e, "saved setup left alone");
                    report.skipped += 1;
                    continue;
                }
            }
            restorable.push(s);
        }
        let limit = Arc::new(Semaphore::new(self.config.reconcile_concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for s in restorable {
            let me = self.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                me.restore(s).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Restored::Applied) => report.applied += 1,
                Ok(Restored::RolledBack) => report.rolled_back += 1,
                _ => report.failed += 1,
            }
        }
        self.setup.remove_stale_host_table().await;
        report.took = started.elapsed();
        info!(
            applied = report.applied,
            failed = report.failed,
            skipped = report.skipped,
            rolled_back = report.rolled_back,
            took_ms = report.took.as_millis() as u64,
            "reconciled saved sandboxes"
        );
        Ok(report)
    }

    /// Re-applies one saved sandbox. A setup that a crash interrupted
    /// while it was being made or removed is rolled back (its request never
    /// got an answer); a complete one is checked and repaired first.
    async fn restore(self: &Arc<Self>, mut saved: Saved) -> Restored {
        let policy = match saved.spec.validate() {
            Ok(p) => p,
            Err(_) => return Restored::Failed,
        };
        if let Some(setup) = &saved.setup {
            if setup.phase != Phase::Ready {
                info!(sandbox = %saved.id, phase = ?setup.phase, "interrupted setup found; rolling it back");
                if let Err(e) = self.setup.teardown(&setup.plan).await {
                    warn!(sandbox = %saved.id, error = %e, "interrupted setup not rolled back");
                    return Restored::Failed;
                }
                if let Err(e) = self.store.remove(&saved.id) {
                    warn!(sandbox = %saved.id, error = %e, "saved state not removed");
                }
                self.setup.release(&saved.id, setup.plan.slot).await;
                return Restored::RolledBack;
            }
        }
        if let Some(setup) = saved.setup.as_mut() {
            // A tap saved before guests had addressing gets it now (saved
            // with the sandbox's next change).
            self.setup.layout().complete_guest(&mut setup.plan);
        }
        let (entry, _) = self.entry_or_insert(&saved.id, &saved.spec);
        if let Ok(path) = target(&saved.spec, saved.setup.as_ref()) {
            self.set_target(&saved.id, Some(path));
        }
        let mut sb = entry.state.lock().await;
        sb.spec = saved.spec.clone();
        sb.policy = policy.clone();
        sb.names = saved.names;
        sb.setup = saved.setup.clone();
        sb.generation += 1;
        let built = match &saved.setup {
            Some(setup) => match self.setup.ensure_host().await {
                Ok(()) => self
                    .setup
                    .create(&setup.plan, None)
                    .await
                    .map_err(|e| format!("network setup: {e}")),
                Err(e) => Err(format!("network setup: {e}")),
            },
            None => Ok(()),
        };
        let result = match built
            .and_then(|()| target(&saved.spec, saved.setup.as_ref()).map_err(|e| e.message))
            .and_then(|path| {
                self.check_not_host(&path)
                    .map(|()| path)
                    .map_err(|e| e.message)
            }) {
            Ok(path) => {
                let inbound = self.inbound(&saved.id, sb.setup.as_ref(), &path).await;
                let desired = self.desired(
                    &saved.spec,
                    sb.setup.as_ref(),
                    policy.as_ref(),
                    &sb.names,
                    &inbound,
                );
                sb.inbound = inbound;
                // DNS is answered again as soon as the daemon is back.
                match self
                    .forwarder_for(&saved.id, &sb, &path, false, policy.as_ref())
                    .await
                {
                    Ok(forwarder) => sb.forwarder = forwarder,
                    Err(e) => {
                        warn!(sandbox = %saved.id, error = %e.message, "DNS forwarder not started")
                    }
                }
                let started = Instant::now();
                let r = apply::apply(&self.tools, &path, None, &desired).await;
                self.metrics.record_apply(r.is_ok(), started.elapsed());
                r.map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        let ok = if result.is_ok() {
            Restored::Applied
        } else {
            Restored::Failed
        };
        match result {
            Ok(applied) => {
                sb.applied = Some(applied);
                sb.error = None;
            }
            Err(e) => {
                warn!(sandbox = %saved.id, error = %e, "saved sandbox not applied");
                sb.applied = None;
                sb.error = Some(e);
            }
        }
        entry.wake.notify_one();
        ok
    }
}

/// How restoring one saved sandbox ended.
enum Restored {
    Applied,
    Failed,
    RolledBack,
}

#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub applied: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Setups a crash interrupted while they were made or removed.
    pub rolled_back: usize,
    pub took: Duration,
}
