//! The DNS refresh: first lookups of new names, and the per-sandbox task
//! that keeps names fresh.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tracing::{debug, warn};

use super::{target, Entry, Manager};
use crate::apply;
use crate::dns::{self, NameState};
use crate::store::Saved;

impl Manager {
    /// Looks up names we know nothing about yet (all at once); names with
    /// history keep it and are left to the refresher.
    pub(super) async fn resolve_new(&self, names: &mut BTreeMap<String, NameState>) {
        let todo: Vec<String> = names
            .iter()
            .filter(|(_, s)| s.resolved_at_ms.is_none() && s.addrs.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        if todo.is_empty() {
            return;
        }
        let answers = join_all(todo.iter().map(|n| self.resolver.resolve(n))).await;
        let now = dns::now_ms();
        for (name, answer) in todo.iter().zip(answers) {
            self.count_lookup(answer.is_ok());
            if let Some(state) = names.get_mut(name) {
                state.update(answer, now, self.timing);
            }
        }
    }

    fn count_lookup(&self, ok: bool) {
        let counter = if ok {
            &self.metrics.refresh_ok
        } else {
            &self.metrics.refresh_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps one sandbox's names fresh until it is removed. Lookups run without
/// the sandbox lock; the result is applied only if no PUT/PATCH happened
/// meanwhile (that one resolved and applied for itself).
pub(super) async fn refresher(manager: Arc<Manager>, entry: Arc<Entry>) {
    loop {
        let (due, generation) = {
            let sb = entry.state.lock().await;
            if sb.removed {
                return;
            }
            let due = sb.names.values().map(|s| s.next_refresh_ms).min();
            (if sb.applied.is_some() { due } else { None }, sb.generation)
        };
        match due {
            None => {
                entry.wake.notified().await;
                continue;
            }
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(dns::now_ms()));
                if !wait.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = entry.wake.notified() => continue,
                    }
                }
            }
        }
        let todo: Vec<String> = {
            let sb = entry.state.lock().await;
            let now = dns::now_ms();
            sb.names
                .iter()
                .filter(|(_, s)| s.next_refresh_ms <= now)
                .map(|(n, _)| n.clone())
                .collect()
        };
        let answers = join_all(todo.iter().map(|n| manager.resolver.resolve(n))).await;
        let mut sb = entry.state.lock().await;
        if sb.removed {
            return;
        }
        if sb.generation != generation {
            continue;
        }
        let now = dns::now_ms();
        let mut changed = false;
        for (name, answer) in todo.iter().zip(answers) {
            manager.count_lookup(answer.is_ok());
            if let Err(e) = &answer {
                debug!(sandbox = %entry.id, name = %name, error = %e, "lookup failed; keeping last known addresses");
            }
            if let Some(state) = sb.names.get_mut(name) {
                changed |= state.update(answer, now, manager.timing);
            }
        }
        if !changed {
            continue;
        }
        let desired = manager.desired(
            &sb.spec,
            sb.setup.as_ref(),
            sb.policy.as_ref(),
            &sb.names,
            &sb.inbound,
        );
        let Ok(path) = target(&sb.spec, sb.setup.as_ref()) else {
            continue;
        };
        // A /proc/<pid> target whose PID was reused by a host process.
        if let Err(e) = manager.check_not_host(&path) {
            warn!(sandbox = %entry.id, error = %e, "set refresh refused");
            sb.error = Some(e.message);
            continue;
        }
        let saved = Saved {
            id: entry.id.clone(),
            spec: sb.spec.clone(),
            names: sb.names.clone(),
            setup: sb.setup.clone(),
        };
        if let Err(e) = manager.store.save(&saved) {
            warn!(sandbox = %entry.id, error = %e, "could not save refreshed names");
        }
        let known = sb.applied.clone();
        if let Some(applied) = sb.applied.as_mut() {
            applied.distrust();
        }
        let applied = apply::apply(&manager.tools, &path, known.as_ref(), &desired).await;
        match applied {
            Ok(applied) => {
                manager.metrics.set_updates.fetch_add(1, Ordering::Relaxed);
                debug!(sandbox = %entry.id, "sets refreshed");
                sb.applied = Some(applied);
                sb.error = None;
            }
            Err(e) => {
                manager
                    .metrics
                    .set_updates_failed
                    .fetch_add(1, Ordering::Relaxed);
                warn!(sandbox = %entry.id, error = %e, "set refresh failed");
                sb.error = Some(e.to_string());
            }
        }
    }
}
