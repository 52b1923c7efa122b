//! JSON over HTTP(S) to the control plane: the credential introspection
//! service and the lifecycle (resume/suspend) hook share this client.
//!
//! HTTPS trusts the system's CA store, so a service with an internal CA
//! works once that CA is installed there. One call is bounded in time
//! (connection included) and in the size of its answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;

/// An answer is a few fields; more is a misconfigured URL.
const MAX_ANSWER_LEN: usize = 64 * 1024;
/// Idle pooled connections to the control plane are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// A configured control-plane endpoint.
pub struct Webhook {
    url: Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Checks the URL (http or https, a host, no credentials in it) and
    /// builds the client; errors say what is wrong with the URL.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let bad = |why: &str| format!("url {url:?}: {why}");
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("must start with http:// or https://")),
        };
        match uri.authority() {
            None => return Err(bad("has no host")),
            // The client would silently drop them.
            Some(a) if a.as_str().contains('@') => {
                return Err(bad("credentials in the URL are not supported"))
            }
            Some(_) => {}
        }
        let roots = if https {
            system_roots().map_err(|e| bad(&e))?
        } else {
            rustls::RootCertStore::empty()
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            url: uri,
            // Without a timer the pool never closes idle connections.
            client: Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE)
                .build(connector),
            timeout,
        })
    }

    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// POSTs `body` as JSON; returns the status and the (bounded) answer.
    /// The error is one line, with its causes, never the body sent.
    pub async fn post<T: Serialize>(&self, body: &T) -> Result<(StatusCode, Bytes), String> {
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let request = Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_LEN)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

/// The error with its causes: hyper-util's own message is only
/// "client error (Connect)".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("loading system CA certificates: {e}");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err("no CA certificates found in the system store".into());
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_refused() {
        for url in ["ftp://x/", "http://", "http://u:p@host/", "not a url"] {
            assert!(Webhook::new(url, Duration::from_secs(1)).is_err(), "{url}");
        }
        assert!(Webhook::new("http://127.0.0.1:1/introspect", Duration::from_secs(1)).is_ok());
    }
}
