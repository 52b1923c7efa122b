//! The sandboxes this proxy routes to: what the admin API writes and every
//! request reads.
//!
//! A trait, because one proxy keeps its registry in a file of its own while
//! a fleet behind a load balancer needs a shared store; both hand out the
//! same [`Sandbox`] values, so the request path does not know which it has.

pub mod embedded;
pub mod names;
pub mod redis;
mod spec;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sbx_proto::auth::ForwardedAuthKey;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use spec::{apply_patch, Resources, SandboxSpec, SandboxView, SpecError, Status};

/// One sandbox as the request path sees it: immutable; a change replaces it.
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    pub spec: SandboxSpec,
    /// The key forwarded-auth tokens are minted with, or why it is missing
    /// (an unreadable key file): requests then fail closed with 502.
    pub key: Result<ForwardedAuthKey, String>,
    pub live: Live,
}

/// Runtime state that outlives one version of a sandbox's entry.
#[derive(Debug, Clone)]
pub struct Live {
    /// Requests in flight to this sandbox (SPEC 6 per-sandbox cap).
    pub inflight: Arc<Semaphore>,
    /// The pooled upstream connections of the current agent address and key.
    pub upstream: Arc<UpstreamEpoch>,
}

/// Pooled connections belong to one epoch; when a sandbox is removed or its
/// agent address or key changes, the epoch is cancelled and every
/// connection opened in it closes, idle or not.
#[derive(Debug)]
pub struct UpstreamEpoch {
    /// Unique across the process; part of the pool key.
    pub generation: u64,
    pub cancelled: CancellationToken,
}

static GENERATIONS: AtomicU64 = AtomicU64::new(1);

impl UpstreamEpoch {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            cancelled: CancellationToken::new(),
        })
    }
}

impl Drop for UpstreamEpoch {
    fn drop(&mut self) {
        self.cancelled.cancel();
    }
}

impl Sandbox {
    /// Builds the new version of a sandbox, carrying over from `old` what
    /// must survive: the in-flight count always, the pooled connections only
    /// while they still lead to the same agent with the same key.
    pub fn build(
        id: String,
        spec: SandboxSpec,
        old: Option<&Sandbox>,
        max_inflight: usize,
    ) -> Self {
        let key = spec.load_key();
        let inflight = old.map_or_else(
            || Arc::new(Semaphore::new(max_inflight)),
            |o| o.live.inflight.clone(),
        );
        let same_upstream = old.is_some_and(|o| {
            o.spec.agent == spec.agent
                && match (&o.key, &key) {
                    (Ok(a), Ok(b)) => a.to_hex() == b.to_hex(),
                    _ => false,
                }
        });
        let upstream = match old {
            Some(o) if same_upstream => o.live.upstream.clone(),
            Some(o) => {
                o.live.upstream.cancelled.cancel();
                UpstreamEpoch::new()
            }
            None => UpstreamEpoch::new(),
        };
        Self {
            id,
            spec,
            key,
            live: Live { inflight, upstream },
        }
    }

    /// Called when the sandbox leaves the registry.
    pub fn retire(&self) {
        self.live.upstream.cancelled.cancel();
    }

    pub fn view(&self) -> SandboxView {
        SandboxView::new(&self.id, &self.spec, self.key.as_ref().err().cloned())
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Bad input: 400 naming the field.
    #[error("{0}")]
    Invalid(#[from] SpecError),
    #[error("no sandbox {0:?}")]
    NotFound(String),
    /// Name clashes: 409.
    #[error("{0}")]
    Conflict(String),
    #[error("saving the registry: {0}")]
    Store(String),
}

/// A place that knows the sandboxes.
pub trait Registry: Send + Sync {
    /// The sandbox with this id or name (names resolve to their id).
    fn resolve<'a>(
        &'a self,
        id_or_name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Sandbox>>, RegistryError>>;

    fn list(&self) -> BoxFuture<'_, Result<Vec<Arc<Sandbox>>, RegistryError>>;

    /// Creates or replaces the entry of `id`.
    fn put<'a>(
        &'a self,
        id: &'a str,
        spec: SandboxSpec,
    ) -> BoxFuture<'a, Result<Arc<Sandbox>, RegistryError>>;

    /// Changes some fields of an existing entry (JSON merge patch: a key
    /// set to null returns to its default).
    fn patch<'a>(
        &'a self,
        id_or_name: &'a str,
        patch: serde_json::Map<String, serde_json::Value>,
    ) -> BoxFuture<'a, Result<Arc<Sandbox>, RegistryError>>;

    /// Removes the entry; false when there was none.
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>>;
}
