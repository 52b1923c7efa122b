//! One request through the proxy: route, find the sandbox, decide access,
//! clean the headers, carry it through the agent, and answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sbx_proto::auth::FORWARDED_AUTH_HEADER;

use crate::access::{self, Access};
use crate::auth::CredentialStore;
use crate::body::{AccessRecord, ProxyBody, Tracked};
use crate::error::{prefers_html, Code, ProxyError};
use crate::headers;
use crate::metrics::Metrics;
use crate::registry::{Registry, Sandbox, Status};
use crate::resume::Resumer;
use crate::route::{self, AGENT_PORT};
use crate::server::Activity;
use crate::upstream::{mint, ConnectError, Upstream, UpstreamError};

/// Everything a request needs, shared by all connections.
pub struct Proxy {
    pub domains: Vec<String>,
    pub registry: Arc<dyn Registry>,
    pub credentials: Arc<dyn CredentialStore>,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    pub resumer: Arc<Resumer>,
    pub forwarded_auth_ttl: Duration,
    /// The largest request head passed on (`limits.max_header_bytes`).
    /// hyper's own limit is a buffer size it checks only while a head is
    /// incomplete, so a head that arrives whole can exceed it (seen: a
    /// 100 KiB header forwarded under a 64 KiB limit; hyperium/hyper#4081).
    pub max_header_bytes: usize,
}

/// The client side of one connection.
#[derive(Debug, Clone)]
pub struct ClientConn {
    pub peer: SocketAddr,
    pub tls: bool,
    pub activity: Arc<Activity>,
}

/// What a request was routed to, for the log and the metrics.
struct Routed {
    sandbox: Option<Arc<str>>,
    port: Option<u16>,
}

impl Proxy {
    pub async fn handle(
        self: Arc<Self>,
        conn: ClientConn,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let activity = conn.activity.begin();
        let method = request.method().clone();
        let html = prefers_html(request.headers());
        let mut routed = Routed {
            sandbox: None,
            port: None,
        };
        let outcome = self.forward(&conn, request, &mut routed).await;
        let status = match &outcome {
            Ok((response, _)) => response.status().as_u16(),
            Err(e) => e.code.status().as_u16(),
        };
        self.metrics
            .record_request(routed.port, status, started.elapsed());
        let mut record = AccessRecord {
            sandbox: routed.sandbox,
            port: routed.port,
            method,
            status,
            started,
            peer: conn.peer.ip(),
            bytes: 0,
            error: None,
        };
        Ok(match outcome {
            Ok((response, permit)) => {
                response.map(|body| Tracked::new(body, record, permit, activity).boxed())
            }
            Err(err) => {
                record.error = Some(err.code.as_str());
                let response = err.into_response(html);
                response.map(|body| Tracked::new(body, record, None, activity).boxed())
            }
        })
    }

    async fn forward(
        &self,
        conn: &ClientConn,
        mut request: Request<Incoming>,
        routed: &mut Routed,
    ) -> Result<
        (
            Response<ProxyBody>,
            Option<tokio::sync::OwnedSemaphorePermit>,
        ),
        ProxyError,
    > {
        let head = headers::head_bytes(&request);
        if head > self.max_header_bytes {
            return Err(ProxyError::new(
                Code::BadRequest,
                format!(
                    "the request head is {head} bytes, over the limit of {}",
                    self.max_header_bytes
                ),
            ));
        }
        let host = request_host(&request)?;
        let target = route::target(host.as_deref(), request.headers(), &self.domains)
            .map_err(|e| ProxyError::new(Code::BadRequest, e.to_string()))?;
        routed.port = Some(target.port);
        let sandbox = self
            .registry
            .resolve(&target.sandbox)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "registry unavailable");
                ProxyError::new(
                    Code::SandboxUnreachable,
                    "the sandbox registry is unavailable",
                )
            })?
            .ok_or_else(|| access::not_found(&target.sandbox))?;
        routed.sandbox = Some(Arc::from(sandbox.id.as_str()));
        let access = access::decide(
            &sandbox,
            &target.sandbox,
            target.port,
            request.headers(),
            request.uri().query(),
            self.credentials.as_ref(),
        )
        .await?;
        let sandbox = match sandbox.spec.status {
            Status::Running => sandbox,
            Status::Suspended if sandbox.spec.auto_resume => {
                self.resumer.wait_running(&sandbox).await?
            }
            other => {
                return Err(ProxyError::new(
                    Code::SandboxNotRunning,
                    format!("the sandbox is {}", other.as_str()),
                )
                .retry_after(5))
            }
        };
        let permit = sandbox
            .live
            .inflight
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ProxyError::new(
                    Code::TooManyRequests,
                    "too many requests in flight to this sandbox",
                )
                .retry_after(1)
            })?;

        let upgrade = match request.version() {
            http::Version::HTTP_2 => None,
            _ => headers::upgrade_protocol(request.headers()),
        };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
        let http2 = is_grpc(request.headers());
        self.clean(
            &mut request,
            &sandbox,
            target.port,
            &access,
            upgrade.as_ref(),
            http2,
            conn,
            host.as_deref(),
        )?;
        let authority = host.as_deref().and_then(|h| Authority::try_from(h).ok());

        let mut response = self
            .upstream
            .send(&sandbox, target.port, http2, authority, request)
            .await
            .map_err(|e| upstream_error(&sandbox, target.port, e))?;

        let response_upgrade = if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            client_upgrade.map(|client| (client, hyper::upgrade::on(&mut response)))
        } else {
            None
        };
        let keep = response_upgrade
            .as_ref()
            .and_then(|_| response.headers().get(header::UPGRADE).cloned());
        headers::strip_hop_by_hop(response.headers_mut(), keep.as_ref(), false);
        let mut permit = Some(permit);
        if let Some((client, upstream)) = response_upgrade {
            // The tunnel counts against the sandbox's cap while it is open.
            let held = permit.take();
            let id = sandbox.id.clone();
            let port = target.port;
            tokio::spawn(async move {
                let _held = held;
                splice_upgrades(client, upstream, &id, port).await;
            });
        }
        Ok((response.map(|b| b.boxed()), permit))
    }

    /// SPEC 6 "What the sandbox sees".
    #[allow(clippy::too_many_arguments)]
    fn clean(
        &self,
        request: &mut Request<Incoming>,
        sandbox: &Sandbox,
        port: u16,
        access: &Access,
        upgrade: Option<&HeaderValue>,
        http2: bool,
        conn: &ClientConn,
        host: Option<&str>,
    ) -> Result<(), ProxyError> {
        let h = request.headers_mut();
        headers::strip_hop_by_hop(h, upgrade, http2);
        headers::strip_proxy_headers(h);
        headers::strip_session_cookies(h);
        let (consumed, context_from_query) = match access {
            Access::Authenticated { context_from_query } => (true, *context_from_query),
            Access::Public {
                platform_credential,
            } => (*platform_credential, false),
        };
        if consumed {
            headers::strip_credentials(h);
            if context_from_query {
                let path = request
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                let cleaned = headers::strip_context_query(&path);
                let mut parts = request.uri().clone().into_parts();
                parts.path_and_query = Some(cleaned);
                *request.uri_mut() = http::Uri::from_parts(parts)
                    .map_err(|e| ProxyError::new(Code::BadRequest, e.to_string()))?;
            }
        }
        let h = request.headers_mut();
        headers::set_forwarded(h, conn.peer.ip(), conn.tls, host);
        // The service sees the host that routed the request: an HTTP/2
        // client's `:authority`, or an absolute-form target's authority,
        // which wins over a `Host` field (RFC 9112 3.2.2). An HTTP/2
        // service gets it as `:authority` instead.
        h.remove(header::HOST);
        if !http2 {
            if let Some(value) = host.and_then(|v| HeaderValue::from_str(v).ok()) {
                h.insert(header::HOST, value);
            }
        }
        if port == AGENT_PORT {
            let key = sandbox.key.as_ref().map_err(|why| {
                tracing::error!(sandbox = %sandbox.id, error = %why, "no forwarded-auth key");
                ProxyError::new(
                    Code::SandboxUnreachable,
                    "the proxy has no usable key for this sandbox",
                )
            })?;
            let token = mint(key, &sandbox.id, self.forwarded_auth_ttl);
            let value = HeaderValue::from_str(&token)
                .map_err(|e| ProxyError::new(Code::Internal, e.to_string()))?;
            h.insert(FORWARDED_AUTH_HEADER, value);
        }
        Ok(())
    }
}

/// `Host`, or the authority of an HTTP/2 (or absolute-form) request. Two
/// `Host` fields are a 400 (RFC 9112 3.2): which one a sandbox sees must
/// never differ from the one that routed the request.
fn request_host(request: &Request<Incoming>) -> Result<Option<String>, ProxyError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::new(
            Code::BadRequest,
            "more than one Host header",
        ));
    }
    if let Some(authority) = request.uri().authority() {
        return Ok(Some(authority.as_str().to_owned()));
    }
    Ok(first.and_then(|v| v.to_str().ok()).map(str::to_owned))
}

/// gRPC must reach the service over HTTP/2 (trailers); gRPC-Web need not.
fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim().to_ascii_lowercase();
            ct == "application/grpc"
                || ct.starts_with("application/grpc+")
                || ct.starts_with("application/grpc;")
        })
}

fn upstream_error(sandbox: &Sandbox, port: u16, err: UpstreamError) -> ProxyError {
    tracing::warn!(sandbox = %sandbox.id, port, error = %err, "upstream failed");
    match err {
        UpstreamError::Connect(ConnectError::PortNotListening { port }) => ProxyError::new(
            Code::PortNotListening,
            format!("nothing is listening on port {port} inside the sandbox"),
        ),
        UpstreamError::Connect(ConnectError::AgentBusy) => ProxyError::new(
            Code::TooManyRequests,
            "the sandbox has too many open connections",
        )
        .retry_after(1),
        UpstreamError::Connect(_) | UpstreamError::Failed(_) => {
            ProxyError::new(Code::SandboxUnreachable, "the sandbox cannot be reached")
        }
        UpstreamError::Timeout(after) => ProxyError::new(
            Code::UpstreamTimeout,
            format!("the sandbox did not answer within {} s", after.as_secs()),
        ),
    }
}

/// Joins a client's upgraded connection to the sandbox's, both ways, until
/// either side closes.
async fn splice_upgrades(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    sandbox: &str,
    port: u16,
) {
    let (client, upstream) = tokio::join!(client, upstream);
    let (client, upstream) = match (client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(sandbox, port, error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::debug!(
                sandbox,
                port,
                bytes_up = up,
                bytes_down = down,
                "upgraded connection closed"
            )
        }
        Err(e) => tracing::debug!(sandbox, port, error = %e, "upgraded connection ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        let mut h = http::HeaderMap::new();
        for (ct, want) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC", true),
            ("application/grpc-web", false),
            ("application/grpc-web+proto", false),
            ("application/json", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), want, "{ct}");
        }
    }
}
