//! `POST /v1/sandboxes`: validated whole before anything is made, then
//! each step in order, the record saved before the first one (so a crash
//! is rolled back at the next start), and every step undone when a later
//! one fails.

use std::sync::Arc;
use std::time::Instant;

use rand::RngCore;
use sbx_netctl_client::NetctlError;
use sbx_proto::auth::ForwardedAuthKey;
use tokio::sync::Mutex as AsyncMutex;
use tracing::{info, warn};

use super::{ApiError, Entry, Manager, Usage};
use crate::config::RuntimeKind;
use crate::image::{self, Image};
use crate::logs::{self, CONSOLE_TAIL_LINES};
use crate::model::{
    self, CreateRequest, Created, Network, Record, SandboxView, State, MAX_CPUS, MIN_MEMORY_MB,
};
use crate::runtime::{Launch, KEY_FILE};
use crate::store;

/// What the image's init prints when it will not start the agent
/// (packaging/image/init).
const GUEST_GAVE_UP: &[u8] = b"sbx-init: FATAL";
/// Longest entrypoint, in arguments and in bytes.
const MAX_ENTRYPOINT_ARGS: usize = 256;
const MAX_ENTRYPOINT_BYTES: usize = 64 * 1024;

/// A create request that passed validation.
struct Checked {
    req: CreateRequest,
    runtime: RuntimeKind,
    image: Image,
}

impl Manager {
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<Created, ApiError> {
        let started = Instant::now();
        let checked = self.check(req)?;
        let id = checked.req.id.clone();
        let usage = Usage {
            cpus: checked.req.cpus,
            memory_mb: checked.req.memory_mb,
        };
        let record = Record {
            id: id.clone(),
            state: State::Starting,
            runtime: checked.runtime,
            image: checked.image.name.clone(),
            cpus: checked.req.cpus,
            memory_mb: checked.req.memory_mb,
            disk_mb: checked.req.disk_mb,
            policy: checked.req.network.clone(),
            entrypoint: checked.req.entrypoint.clone(),
            network: None,
            vmm: None,
            accel: None,
            created_at: model::now(),
            started_at: None,
            suspended_at: None,
            snapshot_bytes: None,
            error: None,
        };
        let entry = Arc::new(Entry {
            record: AsyncMutex::new(record),
        });
        // Claim the id and the capacity in one step under the map's lock.
        {
            let mut reg = self.registry();
            if reg.entries.contains_key(&id) {
                return Err(ApiError::conflict(format!("sandbox {id:?} exists")));
            }
            reg.entries.insert(id.clone(), entry.clone());
        }
        if let Err(e) = self.reserve(&id, usage) {
            self.forget(&id);
            self.metrics.create_failed();
            return Err(e);
        }
        let mut rec = entry.record.lock().await;
        match self.build(&mut rec, &checked).await {
            Ok(key_hex) => {
                self.metrics.created(started.elapsed());
                info!(
                    id,
                    runtime = checked.runtime.as_str(),
                    accel = rec.accel.as_deref().unwrap_or("-"),
                    ms = started.elapsed().as_millis() as u64,
                    "sandbox running"
                );
                self.watch(&id, &rec);
                Ok(Created {
                    view: SandboxView::from(&*rec),
                    forwarded_auth_key: key_hex,
                })
            }
            Err(e) => {
                self.metrics.create_failed();
                warn!(id, error = %e.message, "create failed; undoing it");
                self.teardown(&rec).await;
                drop(rec);
                self.forget(&id);
                Err(e)
            }
        }
    }

    fn check(&self, req: CreateRequest) -> Result<Checked, ApiError> {
        sbx_proto::policy::validate_id(&req.id)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let runtime = req.runtime.unwrap_or(self.config.default_runtime);
        let name = req
            .image
            .clone()
            .unwrap_or_else(|| self.config.default_image.clone());
        let image = image::find(&self.config.images_dir, &name)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if !(req.cpus > 0.0 && req.cpus <= MAX_CPUS) {
            return Err(ApiError::bad_request(format!(
                "cpus {}: between 0 and {MAX_CPUS}",
                req.cpus
            )));
        }
        if req.memory_mb < MIN_MEMORY_MB || req.memory_mb > 1 << 20 {
            return Err(ApiError::bad_request(format!(
                "memory_mb {}: at least {MIN_MEMORY_MB}",
                req.memory_mb
            )));
        }
        if let Some(policy) = &req.network {
            policy
                .validate()
                .map_err(|e| ApiError::new(400, "INVALID_POLICY", format!("network: {e}")))?;
        }
        if let Some(argv) = &req.entrypoint {
            let bytes: usize = argv.iter().map(String::len).sum();
            if argv.is_empty()
                || argv[0].is_empty()
                || argv.len() > MAX_ENTRYPOINT_ARGS
                || bytes > MAX_ENTRYPOINT_BYTES
                || argv.iter().any(|a| a.contains('\0'))
            {
                return Err(ApiError::bad_request(format!(
                    "entrypoint: a command and up to {} arguments, {MAX_ENTRYPOINT_BYTES} bytes in all, no NUL",
                    MAX_ENTRYPOINT_ARGS - 1
                )));
            }
        }
        Ok(Checked {
            req,
            runtime,
            image,
        })
    }

    /// The steps of a create; returns the key. On error the caller undoes
    /// whatever `rec` says was made.
    async fn build(&self, rec: &mut Record, c: &Checked) -> Result<String, ApiError> {
        let id = rec.id.clone();
        let dir = self
            .store
            .create_dir(&id)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.save(rec)?;

        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let key = ForwardedAuthKey::from_bytes(key);
        let key_hex = key.to_hex();
        store::write_key(&dir.join(KEY_FILE), &key_hex)
            .map_err(|e| ApiError::internal(e.to_string()))?;

        let tap = c.runtime == RuntimeKind::Microvm;
        let net = self
            .netctl
            .create_network(&id, tap, c.req.network.as_ref())
            .await
            .map_err(|e| match e {
                NetctlError::Refused(why) => {
                    ApiError::new(400, "INVALID_POLICY", format!("network: {why}"))
                }
                e => ApiError::new(502, "NETWORK_FAILED", format!("network: {e}")),
            })?;
        rec.network = Some(Network {
            netns: net.netns,
            netns_path: net.netns_path,
            ipv4: net.ipv4,
            tap: net.tap,
            guest_ipv4: net.guest.as_ref().map(|g| g.ipv4),
            guest_gateway4: net.guest.as_ref().map(|g| g.gateway4),
        });
        self.save(rec)?;

        let cgroup = self
            .cgroups
            .create(&id)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let image = match c.runtime {
            RuntimeKind::Microvm => image::pin(&c.image, &dir)
                .map_err(|e| ApiError::internal(format!("pin the image: {e}")))?,
            RuntimeKind::Process => c.image.clone(),
        };
        let network = rec
            .network
            .clone()
            .ok_or_else(|| ApiError::internal("no network"))?;
        let launch = Launch {
            id: &id,
            dir: &dir,
            cgroup: &cgroup,
            network: &network,
            cpus: rec.cpus,
            memory_mb: rec.memory_mb,
            disk_mb: rec.disk_mb,
            image: &image,
            key_hex: &key_hex,
            dns: &self.dns,
        };
        let started = self.start(c.runtime, &launch).await.map_err(|e| {
            ApiError::new(502, "GUEST_START_FAILED", format!("start the guest: {e}"))
        })?;
        rec.vmm = Some(started.vmm);
        rec.accel = started.accel;
        self.save(rec)?;

        let agent = rec
            .agent()
            .ok_or_else(|| ApiError::internal("no agent address"))?;
        let vmm = started.vmm;
        let console_path = self.console(c.runtime, &id);
        // A guest whose init gave up (bad configuration) idles rather than
        // powering off: its console says so, and the create fails at once.
        let up = || vmm.alive() && !logs::tail_contains(&console_path, GUEST_GAVE_UP);
        if let Err(e) = crate::agent::wait_healthy(agent, self.config.boot_timeout(), up).await {
            let console = logs::tail(&self.console(c.runtime, &id), CONSOLE_TAIL_LINES);
            warn!(id, error = %e, console = %console, "the guest did not come up");
            let status = match e {
                crate::agent::HealthError::Timeout { .. } => 504,
                crate::agent::HealthError::GuestGone => 502,
            };
            return Err(ApiError::new(
                status,
                "GUEST_NOT_HEALTHY",
                format!("wait for the agent: {e}"),
            ));
        }
        if let Some(argv) = &c.req.entrypoint {
            crate::agent::start_entrypoint(agent, &id, &key, argv)
                .await
                .map_err(|e| {
                    ApiError::new(
                        502,
                        "ENTRYPOINT_FAILED",
                        format!("start the entrypoint: {e}"),
                    )
                })?;
        }
        rec.state = State::Running;
        rec.started_at = Some(model::now());
        self.save(rec)?;
        Ok(key_hex)
    }

    pub(crate) fn save(&self, rec: &Record) -> Result<(), ApiError> {
        self.store
            .save(rec)
            .map_err(|e| ApiError::internal(format!("save the record: {e}")))
    }

    /// Removes everything a sandbox has on this host, whatever of it
    /// exists: its processes (the whole cgroup), its network (netctl), its
    /// directory. Every step runs even if an earlier one fails, and each
    /// is a no-op when there is nothing to remove, so an interrupted
    /// teardown can always be run again.
    pub(crate) async fn teardown(&self, rec: &Record) -> bool {
        let id = &rec.id;
        let mut clean = true;
        if let Err(e) = self.cgroups.destroy(id).await {
            warn!(id, error = %e, "processes not ended");
            clean = false;
        }
        if let Err(e) = self.netctl.delete(id).await {
            warn!(id, error = %e, "network not deleted");
            clean = false;
        }
        if clean {
            if let Err(e) = self.store.remove(id) {
                warn!(id, error = %e, "directory not removed");
                clean = false;
            }
        }
        clean
    }
}
