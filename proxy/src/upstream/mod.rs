//! Requests into sandboxes. Everything enters through the agent on 9501:
//! the management API directly, a user port over the agent's raw tunnel.
//!
//! HTTP/1.1 goes through hyper-util's pooling client, keyed by sandbox,
//! port and upstream epoch, so connections are reused across requests and
//! never cross sandboxes. gRPC (and any request the caller wants on HTTP/2)
//! goes over one multiplexed HTTP/2 connection per sandbox port, kept here
//! by hand because the pooling client would take `:authority` from its pool
//! key, while the service must see the caller's host.

mod connect;
mod stream;

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

pub use connect::{mint, ConnectError};
use stream::EvictableStream;

use crate::metrics::Metrics;
use crate::registry::{Registry, Sandbox};
use crate::webhook::error_chain;

/// The suffix of the internal pool keys; `.invalid` can never be a real host.
const KEY_SUFFIX: &str = "invalid";

/// Why a request could not be carried.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the sandbox did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the connection to the sandbox failed: {0}")]
    Failed(String),
}

#[derive(Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub forwarded_auth_ttl: Duration,
}

pub struct Upstream {
    http1: Client<AgentConnector, Incoming>,
    http2: Mutex<HashMap<(u64, u16), http2::SendRequest<Incoming>>>,
    connector: AgentConnector,
    config: UpstreamConfig,
}

impl Upstream {
    pub fn new(registry: Arc<dyn Registry>, metrics: Arc<Metrics>, config: UpstreamConfig) -> Self {
        let connector = AgentConnector {
            registry,
            metrics,
            config: config.clone(),
        };
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(256)
            // The caller's Host is forwarded as sent; the URI only names
            // the pool.
            .set_host(false)
            .build(connector.clone());
        Self {
            http1,
            http2: Mutex::new(HashMap::new()),
            connector,
            config,
        }
    }

    /// Sends `request` (its headers already cleaned) to `port` inside
    /// `sandbox`. `authority` is what an HTTP/2 service sees as `:authority`.
    pub async fn send(
        &self,
        sandbox: &Sandbox,
        port: u16,
        http2: bool,
        authority: Option<Authority>,
        mut request: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let timeout = self.config.response_header_timeout;
        let result = if http2 {
            let authority = match authority {
                Some(a) => a,
                None => pool_authority(sandbox, port)?,
            };
            *request.uri_mut() = uri(authority, path)?;
            *request.version_mut() = http::Version::HTTP_2;
            tokio::time::timeout(timeout, self.send_http2(sandbox, port, request)).await
        } else {
            *request.uri_mut() = uri(pool_authority(sandbox, port)?, path)?;
            *request.version_mut() = http::Version::HTTP_11;
            let sent = async { self.http1.request(request).await.map_err(classify_legacy) };
            tokio::time::timeout(timeout, sent).await
        };
        result.map_err(|_| UpstreamError::Timeout(timeout))?
    }

    async fn send_http2(
        &self,
        sandbox: &Sandbox,
        port: u16,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let key = (sandbox.live.upstream.generation, port);
        let existing = self.lock_http2().get(&key).cloned();
        let mut sender = match existing {
            Some(s) if !s.is_closed() => s,
            _ => {
                let fresh = self.open_http2(sandbox, port).await?;
                // Two requests may have raced to connect: keep the first.
                self.lock_http2()
                    .entry(key)
                    .and_modify(|s| {
                        if s.is_closed() {
                            *s = fresh.clone();
                        }
                    })
                    .or_insert(fresh)
                    .clone()
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| UpstreamError::Failed(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| UpstreamError::Failed(error_chain(&e)))
    }

    async fn open_http2(
        &self,
        sandbox: &Sandbox,
        port: u16,
    ) -> Result<http2::SendRequest<Incoming>, UpstreamError> {
        let stream = self.connector.open(sandbox, port).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Failed(format!("HTTP/2 handshake: {e}")))?;
        let id = sandbox.id.clone();
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(sandbox = %id, port, error = %err, "upstream HTTP/2 connection ended");
            }
        });
        Ok(sender)
    }

    fn lock_http2(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(u64, u16), http2::SendRequest<Incoming>>> {
        let mut map = self.http2.lock().unwrap_or_else(|e| e.into_inner());
        // Closed senders (evicted sandboxes, idle timeouts) are dropped as
        // they are met, so the map stays as large as the live connections.
        if map.len() > 64 {
            map.retain(|_, s| !s.is_closed());
        }
        map
    }
}

fn uri(authority: Authority, path: PathAndQuery) -> Result<Uri, UpstreamError> {
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| UpstreamError::Failed(format!("building the upstream URI: {e}")))
}

/// `<id>.p<port>.g<generation>.invalid`: one pool per sandbox, port and
/// upstream epoch. Ids are DNS labels, so this is a valid host.
fn pool_authority(sandbox: &Sandbox, port: u16) -> Result<Authority, UpstreamError> {
    let text = format!(
        "{}.p{port}.g{}.{KEY_SUFFIX}",
        sandbox.id, sandbox.live.upstream.generation
    );
    Authority::try_from(text).map_err(|e| UpstreamError::Failed(e.to_string()))
}

fn parse_pool_authority(host: &str) -> Option<(&str, u16, u64)> {
    let rest = host.strip_suffix(KEY_SUFFIX)?.strip_suffix('.')?;
    let (rest, generation) = rest.rsplit_once(".g")?;
    let (id, port) = rest.rsplit_once(".p")?;
    Some((id, port.parse().ok()?, generation.parse().ok()?))
}

/// Finds our own connect error inside hyper-util's, so the caller gets the
/// right status (a service not listening is not an agent unreachable).
fn classify_legacy(err: hyper_util::client::legacy::Error) -> UpstreamError {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(connect) = e.downcast_ref::<ConnectError>() {
            return UpstreamError::Connect(connect.clone());
        }
        source = e.source();
    }
    UpstreamError::Failed(error_chain(&err))
}

/// The pooling client's connector: the pool key names the sandbox, the
/// registry says where its agent is.
#[derive(Clone)]
struct AgentConnector {
    registry: Arc<dyn Registry>,
    metrics: Arc<Metrics>,
    config: UpstreamConfig,
}

impl AgentConnector {
    async fn open(&self, sandbox: &Sandbox, port: u16) -> Result<EvictableStream, ConnectError> {
        let key = sandbox
            .key
            .as_ref()
            .map_err(|why| ConnectError::NoKey(why.clone()))?;
        let ttl = self.config.forwarded_auth_ttl;
        let result = connect::open(
            sandbox.spec.agent,
            port,
            || mint(key, &sandbox.id, ttl),
            self.config.connect_timeout,
        )
        .await;
        self.metrics.record_connect(port, result.is_ok());
        let (tcp, early) = result?;
        Ok(EvictableStream::new(
            tcp,
            early,
            sandbox.live.upstream.cancelled.clone(),
        ))
    }
}

impl tower_service::Service<Uri> for AgentConnector {
    type Response = TokioIo<EvictableStream>;
    type Error = ConnectError;
    type Future = BoxFuture<'static, Result<Self::Response, ConnectError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let (id, port, generation) = parse_pool_authority(host)
                .ok_or_else(|| ConnectError::Protocol(format!("internal pool key {host:?}")))?;
            let sandbox = this
                .registry
                .resolve(id)
                .await
                .ok()
                .flatten()
                .filter(|s| s.live.upstream.generation == generation)
                .ok_or(ConnectError::Changed)?;
            this.open(&sandbox, port).await.map(TokioIo::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_keys_round_trip() {
        assert_eq!(
            parse_pool_authority("sbx-1.p8080.g42.invalid"),
            Some(("sbx-1", 8080, 42))
        );
        assert_eq!(parse_pool_authority("a.p.g1.invalid"), None);
        assert_eq!(parse_pool_authority("example.com"), None);
    }
}
