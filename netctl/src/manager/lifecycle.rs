//! The sandbox lifecycle: PUT, PATCH and DELETE, with or without a network
//! netctl makes (setup).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use sbx_proto::policy::{self, SandboxPatch, SandboxSpec, ValidPolicy};
use sbx_proto::ErrorCode;
use tracing::{debug, info, warn};

use super::{netns_path, not_found, same_file, target, ApiError, Entry, Manager, Sandbox};
use crate::apply;
use crate::dns::NameState;
use crate::forwarder::names::NameRules;
use crate::ruleset;
use crate::setup::{Phase, Plan, SavedSetup};
use crate::store::Saved;
use crate::view::SandboxView;

impl Manager {
    /// `PUT /v1/sandboxes/{id}`.
    pub async fn put(
        self: &Arc<Self>,
        id: &str,
        spec: SandboxSpec,
    ) -> Result<SandboxView, ApiError> {
        let policy = self.validate(id, &spec)?;
        let (entry, created) = self.entry_or_insert(id, &spec);
        let mut sb = entry.state.lock().await;
        if sb.removed {
            // Lost a race with DELETE: start over with a fresh entry.
            drop(sb);
            return Box::pin(self.put(id, spec)).await;
        }
        let fresh = created || sb.applied.is_none() && sb.generation == 0;
        let result = if spec.setup.is_some() || sb.setup.is_some() {
            // On failure of a new one, `sb.setup` stays only if the
            // rollback was incomplete: the entry then stays too, so a GET
            // shows the error and a DELETE or PUT finishes the job.
            self.put_setup(&entry, &mut sb, spec, policy, fresh).await
        } else {
            match netns_path(&spec) {
                Ok(netns) => self.set(&entry, &mut sb, spec, policy, netns, None).await,
                Err(e) => Err(e),
            }
        };
        if result.is_err() && fresh && sb.setup.is_none() {
            sb.removed = true;
            self.forget(id, &entry);
        }
        result?;
        Ok(self.view(&entry.id, &sb, false).await)
    }

    /// `PATCH /v1/sandboxes/{id}`: `network` absent keeps, null clears, an
    /// object replaces.
    pub async fn patch(
        self: &Arc<Self>,
        id: &str,
        patch: SandboxPatch,
    ) -> Result<SandboxView, ApiError> {
        policy::validate_id(id).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let mut sb = entry.state.lock().await;
        if sb.removed {
            return Err(not_found(id));
        }
        if let Some(network) = patch.network {
            let mut spec = sb.spec.clone();
            spec.network = network;
            let policy = self.validate(id, &spec)?;
            let netns = target(&sb.spec, sb.setup.as_ref())?;
            let setup = sb.setup.clone();
            self.set(&entry, &mut sb, spec, policy, netns, setup)
                .await?;
        }
        Ok(self.view(&entry.id, &sb, false).await)
    }

    fn validate(&self, id: &str, spec: &SandboxSpec) -> Result<Option<ValidPolicy>, ApiError> {
        let checked = policy::validate_id(id)
            .and_then(|()| spec.check_target())
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))
            .and_then(|()| {
                spec.validate()
                    .map_err(|e| ApiError::new(ErrorCode::InvalidPolicy, e))
            });
        if checked.is_err() {
            self.metrics
                .rejected_requests
                .fetch_add(1, Ordering::Relaxed);
        }
        checked
    }

    /// Resolves new names, saves, applies; on failure the saved state and
    /// the kernel both keep the previous version.
    async fn set(
        &self,
        entry: &Entry,
        sb: &mut Sandbox,
        spec: SandboxSpec,
        policy: Option<ValidPolicy>,
        netns: PathBuf,
        setup: Option<SavedSetup>,
    ) -> Result<(), ApiError> {
        // `exists()` would call a namespace we may not open "not found".
        match std::fs::metadata(&netns) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("network namespace {} not found", netns.display()),
                ));
            }
            Err(e) => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("network namespace {}: {e}", netns.display()),
                ));
            }
        }
        if let Err(e) = self.check_not_host(&netns) {
            self.metrics
                .rejected_requests
                .fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let previous_target = self.claim(&entry.id, &netns)?;
        let result = self
            .set_claimed(entry, sb, spec, policy, netns, setup)
            .await;
        if result.is_err() {
            self.set_target(&entry.id, previous_target);
        }
        result
    }

    async fn set_claimed(
        &self,
        entry: &Entry,
        sb: &mut Sandbox,
        spec: SandboxSpec,
        policy: Option<ValidPolicy>,
        netns: PathBuf,
        setup: Option<SavedSetup>,
    ) -> Result<(), ApiError> {
        let wanted: Vec<String> = policy
            .as_ref()
            .map(ValidPolicy::domains)
            .unwrap_or_default();
        let mut names: BTreeMap<String, NameState> = wanted
            .iter()
            .map(|n| (n.clone(), sb.names.get(n).cloned().unwrap_or_default()))
            .collect();
        let first_seen: Vec<String> = names
            .iter()
            .filter(|(_, s)| s.resolved_at_ms.is_none() && s.addrs.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        self.resolve_new(&mut names).await;
        // SPEC 4: a domain that does not resolve when the policy is set is
        // refused, naming it, before anything is saved or applied, so the
        // previous policy stays in force. Names the policy already had keep
        // their history and are left to the refresher.
        if let Some((name, why)) = first_seen.iter().find_map(|n| {
            let state = names.get(n)?;
            match (&state.error, state.addrs.is_empty()) {
                (Some(why), true) => Some((n, why)),
                _ => None,
            }
        }) {
            self.metrics
                .rejected_requests
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                ErrorCode::InvalidPolicy,
                format!("domain {name:?} does not resolve: {why}"),
            ));
        }
        let inbound = self.inbound(&entry.id, setup.as_ref(), &netns).await;

        let desired = self.desired(&spec, setup.as_ref(), policy.as_ref(), &names, &inbound);
        let same_netns = target(&sb.spec, sb.setup.as_ref()).ok().as_ref() == Some(&netns);
        // Listening before any rule redirects the sandbox's DNS to it.
        let started_forwarder = self
            .forwarder_for(&entry.id, sb, &netns, same_netns, policy.as_ref())
            .await?;
        let previous = Saved {
            id: entry.id.clone(),
            spec: sb.spec.clone(),
            names: sb.names.clone(),
            setup: sb.setup.clone(),
        };
        let next = Saved {
            id: entry.id.clone(),
            spec: spec.clone(),
            names: names.clone(),
            setup: setup.clone(),
        };
        let saving = Instant::now();
        self.store
            .save(&next)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let save_us = saving.elapsed().as_micros() as u64;
        let started = Instant::now();
        let known = sb.applied.clone().filter(|_| same_netns);
        // Until this change completes the kernel may hold part of it; if
        // the request is dropped half-way this stays, and the next change
        // reads the kernel first.
        if let Some(applied) = sb.applied.as_mut() {
            applied.distrust();
        }
        let applied = apply::apply(&self.tools, &netns, known.as_ref(), &desired).await;
        self.metrics
            .record_apply(applied.is_ok(), started.elapsed());
        let applied = match applied {
            Ok(applied) => applied,
            Err(e) => {
                warn!(sandbox = %entry.id, error = %e, "apply failed; previous rules stay in force");
                let restored = if sb.generation == 0 && sb.applied.is_none() && sb.setup.is_none() {
                    self.store.remove(&entry.id)
                } else {
                    self.store.save(&previous)
                };
                if let Err(e) = restored {
                    warn!(sandbox = %entry.id, error = %e, "could not restore saved state");
                }
                return Err(ApiError::new(ErrorCode::Internal, e.to_string()));
            }
        };
        info!(sandbox = %entry.id, netns = %netns.display(), save_us, nft_us = started.elapsed().as_micros() as u64, "applied");
        let old_netns = target(&sb.spec, sb.setup.as_ref()).ok();
        if sb.applied.is_some() && old_netns.as_ref() != Some(&netns) {
            // A namespace reached by another path (a name and a /proc path)
            // holds the table just applied.
            if let Some(old) = old_netns.filter(|old| !same_file(old, &netns)) {
                // The sandbox moved: our table in the old namespace is stale.
                if let Err(e) = self.tools.nft.apply(&old, &ruleset::remove()).await {
                    debug!(sandbox = %entry.id, error = %e, "old namespace not cleaned");
                }
                self.tools.nft.release(&old).await;
            }
        }
        match (started_forwarder, policy.as_ref()) {
            (Some(forwarder), _) => sb.forwarder = Some(forwarder),
            (None, Some(p)) if self.intercepts(Some(p)) => {
                if let Some(forwarder) = &sb.forwarder {
                    forwarder.set_rules(NameRules::from_policy(p));
                }
            }
            _ => sb.forwarder = None,
        }
        sb.spec = spec;
        sb.policy = policy;
        sb.names = names;
        sb.setup = setup;
        sb.applied = Some(applied);
        sb.inbound = inbound;
        sb.error = None;
        sb.generation += 1;
        entry.wake.notify_one();
        Ok(())
    }
    /// `DELETE /v1/sandboxes/{id}`: our table leaves the namespace; the
    /// namespace itself is not ours, unless netctl made it (setup), and
    /// then it goes with everything in it.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        policy::validate_id(id).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let mut sb = entry.state.lock().await;
        if sb.removed {
            return Err(not_found(id));
        }
        // Its sockets and our nft session hold the namespace: they go first.
        sb.forwarder = None;
        if let Some(setup) = sb.setup.clone() {
            if let Ok(netns) = target(&sb.spec, Some(&setup)) {
                self.tools.nft.release(&netns).await;
            }
            self.delete_setup(id, &mut sb, setup).await?;
            sb.removed = true;
            self.forget(id, &entry);
            info!(sandbox = %id, "removed with its network");
            return Ok(());
        }
        let netns = netns_path(&sb.spec)?;
        if netns.exists() {
            if let Err(e) = self.tools.nft.apply(&netns, &ruleset::remove()).await {
                // A namespace that vanished meanwhile took our table with it.
                if netns.exists() {
                    return Err(ApiError::new(ErrorCode::Internal, e.to_string()));
                }
            }
        }
        self.tools.nft.release(&netns).await;
        self.store
            .remove(id)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        sb.removed = true;
        self.forget(id, &entry);
        info!(sandbox = %id, "removed");
        Ok(())
    }

    /// Marks the setup as being deleted (so a crash half-way is finished on
    /// start, not undone), removes it, then forgets the sandbox. Our rules
    /// inside are not removed first: they die with the namespace.
    async fn delete_setup(
        &self,
        id: &str,
        sb: &mut Sandbox,
        setup: SavedSetup,
    ) -> Result<(), ApiError> {
        let internal = |e: String| ApiError::new(ErrorCode::Internal, e);
        let deleting = SavedSetup {
            phase: Phase::Deleting,
            ..setup
        };
        self.store
            .save_quick(&Saved {
                id: id.to_owned(),
                spec: sb.spec.clone(),
                names: sb.names.clone(),
                setup: Some(deleting.clone()),
            })
            .map_err(|e| internal(e.to_string()))?;
        sb.setup = Some(deleting.clone());
        let started = Instant::now();
        let (torn, ()) = tokio::join!(
            self.setup.teardown(&deleting.plan),
            self.setup.drop_table_if_last(id)
        );
        torn.map_err(|e| internal(format!("sandbox {id}: network teardown failed: {e}")))?;
        let teardown_us = started.elapsed().as_micros() as u64;
        self.store.remove(id).map_err(|e| internal(e.to_string()))?;
        let unlink_us = started.elapsed().as_micros() as u64 - teardown_us;
        self.setup.release(id, deleting.plan.slot).await;
        debug!(sandbox = %id, teardown_us, unlink_us, total_us = started.elapsed().as_micros() as u64, "network removed");
        Ok(())
    }

    /// PUT of a sandbox whose network netctl makes: a free slot is taken
    /// and saved (`creating`) before anything is made; a failure on a new
    /// sandbox removes whatever was made and the saved state with it.
    async fn put_setup(
        &self,
        entry: &Entry,
        sb: &mut Sandbox,
        spec: SandboxSpec,
        policy: Option<ValidPolicy>,
        fresh: bool,
    ) -> Result<(), ApiError> {
        let id = entry.id.as_str();
        let bad = |m: String| ApiError::new(ErrorCode::BadRequest, m);
        let Some(wanted) = spec.setup.clone() else {
            return Err(bad(format!(
                "sandbox {id:?} was made with \"setup\": PUT it with \"setup\" again, or DELETE it first"
            )));
        };
        if !fresh && sb.setup.is_none() {
            return Err(bad(format!(
                "sandbox {id:?} uses a namespace given as \"netns\": DELETE it before asking for \"setup\""
            )));
        }
        let layout = self.setup.layout();
        if let Some(iface) = &spec.iface {
            if !wanted.tap || *iface != layout.tap_name {
                return Err(bad(format!(
                    "iface {iface:?}: with \"setup\" the judged interface is the tap ({:?}, with \"tap\": true); leave iface out",
                    layout.tap_name
                )));
            }
        }
        let (plan, stale_tap) = match &sb.setup {
            Some(existing) => {
                let mut plan = existing.plan.clone();
                let old_tap = plan.tap.clone();
                plan.tap = wanted
                    .tap
                    .then(|| old_tap.clone().unwrap_or_else(|| layout.tap_name.clone()));
                layout.complete_guest(&mut plan);
                (plan, old_tap)
            }
            None => {
                let slot = self.setup.reserve(id).await.map_err(|e| {
                    ApiError::new(ErrorCode::Unavailable, format!("sandbox {id}: {e}"))
                })?;
                let plan = layout.plan(id, slot, wanted.tap);
                let creating = SavedSetup {
                    plan: plan.clone(),
                    phase: Phase::Creating,
                };
                let marked = self.store.save_quick(&Saved {
                    id: id.to_owned(),
                    spec: spec.clone(),
                    names: BTreeMap::new(),
                    setup: Some(creating.clone()),
                });
                if let Err(e) = marked {
                    self.setup.release(id, slot).await;
                    return Err(ApiError::new(ErrorCode::Internal, e.to_string()));
                }
                sb.setup = Some(creating);
                (plan, None)
            }
        };

        let started = Instant::now();
        let built = match self.setup.ensure_host().await {
            Ok(()) => self.setup.create(&plan, stale_tap).await,
            Err(e) => Err(e),
        };
        if let Err(e) = built {
            warn!(sandbox = %id, error = %e, "network setup failed");
            if fresh && self.roll_back(id, &plan).await {
                sb.setup = None;
            } else {
                sb.error = Some(e.to_string());
            }
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("sandbox {id}: network setup failed: {e}"),
            ));
        }
        debug!(sandbox = %id, setup_us = started.elapsed().as_micros() as u64, "network in place");
        let netns = plan.netns_path.clone();
        let ready = SavedSetup {
            plan: plan.clone(),
            phase: Phase::Ready,
        };
        let result = self.set(entry, sb, spec, policy, netns, Some(ready)).await;
        if let Err(e) = &result {
            if fresh && self.roll_back(id, &plan).await {
                sb.setup = None;
            } else {
                sb.error = Some(e.message.clone());
            }
        }
        result
    }

    /// Undoes a setup that did not complete; false if it could not. Then
    /// the saved state and the slot stay, so the next PUT or DELETE of the
    /// id, or the next start, tries again.
    async fn roll_back(&self, id: &str, plan: &Plan) -> bool {
        // Our nft session there (the guest table's, the policy's) would
        // keep the namespace, and the tap in it, alive.
        self.tools.nft.release(&plan.netns_path).await;
        if let Err(e) = self.setup.teardown(plan).await {
            warn!(sandbox = %id, error = %e, "rollback incomplete; retried on the next request or start");
            return false;
        }
        if let Err(e) = self.store.remove(id) {
            warn!(sandbox = %id, error = %e, "saved state not removed");
        }
        self.setup.release(id, plan.slot).await;
        info!(sandbox = %id, "network setup rolled back");
        true
    }
}
