//! The credential store for a fleet backed by the control plane: each
//! credential is checked by POSTing it to an introspection URL, and the
//! answer is cached briefly so a busy caller costs one call per TTL.
//!
//! Protocol: the request body is
//! `{"kind": "api_key"|"pat"|"session", "token": "...", "organization_id": "..."|null, "project_id": "..."|null}`;
//! a 200 answer `{"active": false}` means invalid, `{"active": true,
//! "organization_id": "o", "project_id": "p"}` granted in that project, and
//! `{"active": true}` without a project a valid credential outside the
//! project it named. Anything else (another status, a timeout, a body that
//! does not parse) is an error: the proxy fails closed, and errors are not
//! cached so the next request asks again.
//!
//! The HTTP(S) side is the shared control-plane client, [`crate::webhook`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::credential::valid_context_value;
use super::{AuthError, Context, Credential, CredentialStore, Principal, Verdict};
use crate::webhook::Webhook;

#[derive(Serialize)]
struct Question<'a> {
    kind: &'a str,
    token: &'a str,
    organization_id: Option<&'a str>,
    project_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct Answer {
    active: bool,
    #[serde(default)]
    organization_id: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
}

struct Cached {
    verdict: Verdict,
    until: Instant,
}

/// Checks credentials against an HTTP introspection service.
pub struct IntrospectionStore {
    hook: Webhook,
    positive_ttl: Duration,
    negative_ttl: Duration,
    max_entries: usize,
    /// Keyed by a digest of the question, never by the raw token, so a heap
    /// dump of the cache does not hold credentials.
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl std::fmt::Debug for IntrospectionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionStore")
            .field("hook", &self.hook)
            .field("positive_ttl", &self.positive_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl IntrospectionStore {
    /// Positive answers are cached for `positive_ttl`, invalid and
    /// out-of-scope ones for `negative_ttl` (zero: not cached); `timeout`
    /// bounds one whole call, connection included.
    pub fn new(
        url: &str,
        positive_ttl: Duration,
        negative_ttl: Duration,
        timeout: Duration,
        max_entries: usize,
    ) -> Result<Self, AuthError> {
        let hook = Webhook::new(url, timeout).map_err(AuthError::Introspection)?;
        Ok(IntrospectionStore {
            hook,
            positive_ttl,
            negative_ttl,
            max_entries,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn cached(&self, key: &[u8; 32], now: Instant) -> Option<Verdict> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(key) {
            Some(hit) if hit.until > now => Some(hit.verdict.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: [u8; 32], verdict: &Verdict, now: Instant) {
        let ttl = match verdict {
            Verdict::Granted(_) => self.positive_ttl,
            Verdict::OutOfScope | Verdict::Invalid => self.negative_ttl,
        };
        if ttl.is_zero() || self.max_entries == 0 {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.max_entries && !cache.contains_key(&key) {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= self.max_entries {
                tracing::debug!(entries = cache.len(), "introspection cache full; cleared");
                cache.clear();
            }
        }
        let verdict = verdict.clone();
        cache.insert(
            key,
            Cached {
                verdict,
                until: now + ttl,
            },
        );
    }

    async fn ask(&self, credential: &Credential, context: &Context) -> Result<Verdict, String> {
        let question = Question {
            kind: credential.kind.as_str(),
            token: credential.secret(),
            organization_id: context.organization_id.as_deref(),
            project_id: context.project_id.as_deref(),
        };
        let (status, body) = self.hook.post(&question).await?;
        if status != StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        parse_answer(&body)
    }
}

impl CredentialStore for IntrospectionStore {
    fn verify<'a>(
        &'a self,
        credential: &'a Credential,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<Verdict, AuthError>> {
        Box::pin(async move {
            let key = cache_key(credential, context);
            if let Some(verdict) = self.cached(&key, Instant::now()) {
                return Ok(verdict);
            }
            let verdict = self.ask(credential, context).await.map_err(|e| {
                tracing::warn!(url = %self.hook.url(), kind = %credential.kind, "introspection failed: {e}");
                AuthError::Introspection(format!("{}: {e}", self.hook.url()))
            })?;
            self.remember(key, &verdict, Instant::now());
            Ok(verdict)
        })
    }

    /// Forgets every cached answer, so a revoked credential stops working
    /// at once.
    fn reload(&self) -> Result<(), AuthError> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }
}

fn parse_answer(body: &[u8]) -> Result<Verdict, String> {
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| format!("unparsable answer: {e}"))?;
    if !answer.active {
        return Ok(Verdict::Invalid);
    }
    Ok(match (answer.organization_id, answer.project_id) {
        (Some(org), Some(project))
            if valid_context_value(&org) && valid_context_value(&project) =>
        {
            Verdict::Granted(Principal {
                organization_id: org,
                project_id: project,
            })
        }
        _ => Verdict::OutOfScope,
    })
}

/// A digest of everything the answer depends on; each field is length
/// prefixed so no two questions share a key.
fn cache_key(credential: &Credential, context: &Context) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut field = |value: Option<&str>| match value {
        Some(v) => {
            hash.update([1]);
            hash.update((v.len() as u64).to_be_bytes());
            hash.update(v.as_bytes());
        }
        None => hash.update([0]),
    };
    field(Some(credential.kind.as_str()));
    field(Some(credential.secret()));
    field(context.organization_id.as_deref());
    field(context.project_id.as_deref());
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::CredentialKind;
    use bytes::Bytes;
    use http::Request;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Default)]
    struct Backend {
        calls: AtomicUsize,
        flaky: AtomicUsize,
        last: Mutex<Option<serde_json::Value>>,
    }

    impl Backend {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        /// Answers by token: the test names the behaviour it wants.
        async fn answer(&self, req: Request<Incoming>) -> (StatusCode, &'static str) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let body = req.into_body().collect().await.expect("body").to_bytes();
            let question: serde_json::Value = serde_json::from_slice(&body).expect("json");
            let token = question["token"].as_str().unwrap_or_default().to_owned();
            *self.last.lock().expect("lock") = Some(question);
            let granted = r#"{"active": true, "organization_id": "o", "project_id": "p", "x": 1}"#;
            match token.as_str() {
                "granted" => (StatusCode::OK, granted),
                "invalid" => (StatusCode::OK, r#"{"active": false}"#),
                "scoped" => (StatusCode::OK, r#"{"active": true, "project_id": null}"#),
                "boom" => (StatusCode::INTERNAL_SERVER_ERROR, granted),
                "garbage" => (StatusCode::OK, "<html>"),
                "flaky" if self.flaky.fetch_add(1, Ordering::SeqCst) == 0 => {
                    (StatusCode::BAD_GATEWAY, "")
                }
                "flaky" => (StatusCode::OK, granted),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    (StatusCode::OK, granted)
                }
                _ => (StatusCode::NOT_FOUND, ""),
            }
        }
    }

    async fn backend() -> (String, Arc<Backend>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Backend::default());
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move {
                            let (status, body) = state.answer(req).await;
                            let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let io = TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        (format!("http://{addr}/v1/introspect"), state)
    }

    fn store(url: &str, positive: u64, negative: u64) -> IntrospectionStore {
        let ms = Duration::from_millis;
        IntrospectionStore::new(url, ms(positive), ms(negative), ms(500), 100).expect("store")
    }

    fn key(token: &str) -> Credential {
        Credential::new(CredentialKind::ApiKey, token)
    }

    #[tokio::test]
    async fn verdicts_and_question() {
        let (url, backend) = backend().await;
        let store = store(&url, 60_000, 60_000);
        let none = Context::default();
        let granted = store.verify(&key("granted"), &none).await.expect("granted");
        let principal = Principal {
            organization_id: "o".into(),
            project_id: "p".into(),
        };
        assert_eq!(granted, Verdict::Granted(principal));
        let last = backend.last.lock().expect("lock").take().expect("question");
        assert_eq!(
            last,
            serde_json::json!({"kind": "api_key", "token": "granted", "organization_id": null, "project_id": null})
        );
        assert_eq!(
            store.verify(&key("invalid"), &none).await.expect("ok"),
            Verdict::Invalid
        );
        let session = Credential::new(CredentialKind::Session, "scoped");
        let ctx = Context {
            organization_id: Some("org".into()),
            project_id: Some("proj".into()),
            from_query: true,
        };
        assert_eq!(
            store.verify(&session, &ctx).await.expect("ok"),
            Verdict::OutOfScope
        );
        let last = backend.last.lock().expect("lock").take().expect("question");
        assert_eq!(
            last,
            serde_json::json!({"kind": "session", "token": "scoped", "organization_id": "org", "project_id": "proj"})
        );
    }

    #[tokio::test]
    async fn answers_are_cached_by_question() {
        let (url, backend) = backend().await;
        let store = store(&url, 60_000, 60_000);
        let none = Context::default();
        for _ in 0..3 {
            store.verify(&key("granted"), &none).await.expect("granted");
            store.verify(&key("invalid"), &none).await.expect("invalid");
        }
        assert_eq!(backend.calls(), 2);
        // Another context or kind is another question.
        let ctx = Context {
            organization_id: Some("o".into()),
            ..Context::default()
        };
        store.verify(&key("granted"), &ctx).await.expect("granted");
        let pat = Credential::new(CredentialKind::PersonalAccessToken, "granted");
        store.verify(&pat, &none).await.expect("granted");
        assert_eq!(backend.calls(), 4);
        store.reload().expect("reload");
        store.verify(&key("granted"), &none).await.expect("granted");
        assert_eq!(backend.calls(), 5);
    }

    #[tokio::test]
    async fn entries_expire() {
        let (url, backend) = backend().await;
        let store = store(&url, 100, 0);
        let none = Context::default();
        store.verify(&key("granted"), &none).await.expect("granted");
        store.verify(&key("granted"), &none).await.expect("granted");
        assert_eq!(backend.calls(), 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        store.verify(&key("granted"), &none).await.expect("granted");
        assert_eq!(backend.calls(), 2);
        // A zero negative TTL caches nothing.
        store.verify(&key("invalid"), &none).await.expect("invalid");
        store.verify(&key("invalid"), &none).await.expect("invalid");
        assert_eq!(backend.calls(), 4);
    }

    #[tokio::test]
    async fn errors_fail_closed_and_are_not_cached() {
        let (url, backend) = backend().await;
        let store = store(&url, 60_000, 60_000);
        let none = Context::default();
        for token in ["boom", "garbage", "slow", "unknown"] {
            let err = store.verify(&key(token), &none).await.expect_err(token);
            let shown = err.to_string();
            assert!(matches!(err, AuthError::Introspection(_)), "{shown}");
            assert!(!shown.contains(token) || token == "slow", "{shown}");
        }
        let err = store.verify(&key("flaky"), &none).await.expect_err("first");
        assert!(err.to_string().contains("502"), "{err}");
        assert_eq!(store.verify(&key("flaky"), &none).await.expect("second"), {
            Verdict::Granted(Principal {
                organization_id: "o".into(),
                project_id: "p".into(),
            })
        });
        assert_eq!(backend.calls(), 6);
    }

    #[tokio::test]
    async fn unreachable_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        drop(listener);
        let store = store(&url, 1000, 1000);
        let err = store.verify(&key("granted"), &Context::default()).await;
        assert!(matches!(err, Err(AuthError::Introspection(_))), "{err:?}");
    }

    #[test]
    fn cache_stays_bounded() {
        let ms = Duration::from_millis;
        let store = IntrospectionStore::new("http://127.0.0.1:1/", ms(1000), ms(10), ms(10), 3)
            .expect("store");
        let now = Instant::now();
        store.remember([1; 32], &Verdict::Invalid, now);
        store.remember([2; 32], &Verdict::OutOfScope, now);
        store.remember([3; 32], &Verdict::Invalid, now + ms(20));
        // Full: the two expired by then go, the fresh one stays.
        store.remember([4; 32], &Verdict::Invalid, now + ms(25));
        assert_eq!(store.cache.lock().expect("lock").len(), 2);
        store.remember([5; 32], &Verdict::Invalid, now + ms(25));
        // Full of live entries: cleared, then the new one kept.
        store.remember([6; 32], &Verdict::Invalid, now + ms(25));
        let cache = store.cache.lock().expect("lock");
        assert_eq!(cache.len(), 1);
        assert!(cache.contains_key(&[6; 32]));
    }

    #[test]
    fn bad_urls_are_refused() {
        let ms = Duration::from_millis;
        for url in ["", "ftp://h/", "/path", "http://user:pw@h/", "http://"] {
            let got = IntrospectionStore::new(url, ms(1), ms(1), ms(1), 1);
            assert!(matches!(got, Err(AuthError::Introspection(_))), "{url:?}");
        }
    }

    #[test]
    fn cache_key_separates_fields() {
        let c = key("ab");
        let with = |org: Option<&str>, project: Option<&str>| Context {
            organization_id: org.map(str::to_owned),
            project_id: project.map(str::to_owned),
            from_query: false,
        };
        let a = cache_key(&c, &with(Some("x"), None));
        let b = cache_key(&c, &with(None, Some("x")));
        let d = cache_key(&c, &with(Some(""), None));
        assert_ne!(a, b);
        assert_ne!(a, d);
        assert_ne!(cache_key(&c, &with(None, None)), d);
    }
}
