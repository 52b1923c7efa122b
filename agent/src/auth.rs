//! Request authentication: the proxy's forwarded-auth token, or the opt-in
//! direct bearer token. Being on loopback or a private address earns nothing.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sbx_proto::auth::{secrets_equal, ForwardedAuthKey, FORWARDED_AUTH_HEADER};
use sbx_proto::ErrorCode;

use crate::error::ApiError;

/// Checks credentials against this sandbox's key, id and optional token.
#[derive(Debug)]
pub struct Authenticator {
    key: ForwardedAuthKey,
    sandbox_id: String,
    bearer_token: Option<String>,
    clock_skew_secs: u64,
}

/// Why a request was refused; logged, never sent to the client in detail.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    Missing,
    #[error("forwarded-auth token refused: {0}")]
    Forwarded(#[from] sbx_proto::auth::TokenError),
    #[error("bearer token refused")]
    Bearer,
    #[error("credentials header is not valid text")]
    Encoding,
}

impl Authenticator {
    pub fn new(
        key: ForwardedAuthKey,
        sandbox_id: String,
        bearer_token: Option<String>,
        clock_skew_secs: u64,
    ) -> Self {
        Self {
            key,
            sandbox_id,
            bearer_token,
            clock_skew_secs,
        }
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        if let Some(value) = headers.get(FORWARDED_AUTH_HEADER) {
            let token = value.to_str().map_err(|_| AuthError::Encoding)?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            return Ok(self.key.verify(
                token.trim(),
                &self.sandbox_id,
                now,
                self.clock_skew_secs,
            )?);
        }
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.to_str().map_err(|_| AuthError::Encoding)?;
            let presented = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or(AuthError::Bearer)?
                .trim();
            return match &self.bearer_token {
                Some(expected) if secrets_equal(presented.as_bytes(), expected.as_bytes()) => {
                    Ok(())
                }
                _ => Err(AuthError::Bearer),
            };
        }
        Err(AuthError::Missing)
    }
}

/// Middleware that refuses unauthenticated requests with 401.
pub async fn require_auth(
    State(auth): State<Arc<Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(err) => {
            tracing::info!(path = %request.uri().path(), reason = %err, "request refused");
            ApiError::new(
                ErrorCode::Unauthorized,
                "valid forwarded auth or bearer token required",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth() -> Authenticator {
        Authenticator::new(
            ForwardedAuthKey::from_bytes([1; 32]),
            "sbx-a".into(),
            Some("0123456789abcdef".into()),
            30,
        )
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn accepts_valid_credentials() {
        let far = 4_000_000_000;
        let token = ForwardedAuthKey::from_bytes([1; 32]).mint("sbx-a", far);
        assert!(auth()
            .check(&headers(FORWARDED_AUTH_HEADER, &token))
            .is_ok());
        assert!(auth()
            .check(&headers("authorization", "Bearer 0123456789abcdef"))
            .is_ok());
    }

    #[test]
    fn refuses_bad_credentials() {
        let far = 4_000_000_000;
        let other = ForwardedAuthKey::from_bytes([1; 32]).mint("sbx-b", far);
        assert!(auth().check(&HeaderMap::new()).is_err());
        assert!(auth()
            .check(&headers(FORWARDED_AUTH_HEADER, &other))
            .is_err());
        assert!(auth()
            .check(&headers("authorization", "Bearer nope"))
            .is_err());
        assert!(auth()
            .check(&headers("authorization", "Basic 0123456789abcdef"))
            .is_err());
        let no_bearer = Authenticator::new(
            ForwardedAuthKey::from_bytes([1; 32]),
            "sbx-a".into(),
            None,
            30,
        );
        assert!(no_bearer
            .check(&headers("authorization", "Bearer "))
            .is_err());
    }
}
