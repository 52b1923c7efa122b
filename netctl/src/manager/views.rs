//! What the API and the metrics see of the sandboxes.

use super::{not_found, target, ApiError, Manager, Sandbox};
use crate::metrics::SandboxSample;
use crate::view::{AddressView, NameView, SandboxView};

impl Manager {
    /// `GET /v1/sandboxes/{id}`.
    pub async fn get(&self, id: &str) -> Result<SandboxView, ApiError> {
        let entry = self.entry(id).ok_or_else(|| not_found(id))?;
        let sb = entry.state.lock().await;
        if sb.removed {
            return Err(not_found(id));
        }
        Ok(self.view(id, &sb, true).await)
    }

    /// `GET /v1/sandboxes`.
    pub async fn list(&self) -> Vec<SandboxView> {
        let mut out = Vec::new();
        for entry in self.entries() {
            let sb = entry.state.lock().await;
            if !sb.removed && (sb.applied.is_some() || sb.generation > 0 || sb.error.is_some()) {
                out.push(self.view(&entry.id, &sb, false).await);
            }
        }
        out
    }

    pub(super) async fn view(&self, id: &str, sb: &Sandbox, with_counters: bool) -> SandboxView {
        let counters = if with_counters {
            match target(&sb.spec, sb.setup.as_ref()) {
                Ok(path) => self.tools.nft.counters(&path).await.ok().flatten(),
                Err(_) => None,
            }
        } else {
            None
        };
        SandboxView {
            id: id.to_owned(),
            netns: match (&sb.setup, &sb.spec.netns) {
                (Some(s), _) => s.plan.netns_path.display().to_string(),
                (None, Some(netns)) => netns.clone(),
                (None, None) => String::new(),
            },
            setup: sb.setup.as_ref().map(|s| s.plan.clone()),
            // The interface whose forwarded traffic the rules judge: the
            // tap netctl made, or the one the caller named.
            iface: match &sb.setup {
                Some(s) => s.plan.tap.clone(),
                None => sb.spec.iface.clone(),
            },
            network: sb.spec.network.clone(),
            ingress: sb.applied.is_some().then(|| sb.inbound.clone()),
            applied: sb.applied.is_some(),
            policy_generation: sb.applied.as_ref().map(|a| a.generation.get()),
            error: sb.error.clone(),
            names: sb
                .names
                .iter()
                .map(|(name, s)| NameView {
                    name: name.clone(),
                    addresses: s
                        .addrs
                        .iter()
                        .map(|(a, e)| AddressView {
                            address: *a,
                            expires_at_ms: *e,
                        })
                        .collect(),
                    resolved_at_ms: s.resolved_at_ms,
                    next_refresh_ms: s.next_refresh_ms,
                    error: s.error.clone(),
                })
                .collect(),
            answers: sb
                .forwarder
                .as_ref()
                .map(|f| f.recent())
                .unwrap_or_default(),
            counters,
        }
    }

    pub async fn samples(&self) -> Vec<SandboxSample> {
        let mut out = Vec::new();
        for entry in self.entries() {
            let sb = entry.state.lock().await;
            if sb.removed {
                continue;
            }
            let counters = match target(&sb.spec, sb.setup.as_ref()) {
                Ok(path) if sb.applied.is_some() => {
                    self.tools.nft.counters(&path).await.ok().flatten()
                }
                _ => None,
            };
            out.push(SandboxSample {
                id: entry.id.clone(),
                applied: sb.applied.is_some(),
                names: sb.names.len(),
                failing_names: sb.names.values().filter(|s| s.error.is_some()).count(),
                accepted: counters.map(|c| c.accepted),
                accepted_fast: counters.map(|c| c.accepted_fast),
                refused: counters.map(|c| c.refused),
                inbound_refused: counters.map(|c| c.inbound_refused),
                answer_elements: sb.forwarder.as_ref().map(|f| f.live_elements()),
            });
        }
        out
    }

    pub fn count(&self) -> usize {
        self.sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}
