//! The proxy's own answers: `{"error", "code"}` JSON (SPEC 6), or a small
//! HTML page for a browser that asks for one.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::body::ProxyBody;

/// Every error the proxy itself answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    Unauthorized,
    PortNotExposed,
    SandboxNotFound,
    TooManyRequests,
    PortNotListening,
    SandboxUnreachable,
    SandboxNotRunning,
    UpstreamTimeout,
    AuthUnavailable,
    Internal,
}

impl Code {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "BAD_REQUEST",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::PortNotExposed => "PORT_NOT_EXPOSED",
            Self::SandboxNotFound => "SANDBOX_NOT_FOUND",
            Self::TooManyRequests => "TOO_MANY_REQUESTS",
            Self::PortNotListening => "PORT_NOT_LISTENING",
            Self::SandboxUnreachable => "SANDBOX_UNREACHABLE",
            Self::SandboxNotRunning => "SANDBOX_NOT_RUNNING",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::AuthUnavailable => "AUTH_UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }

    pub const fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::PortNotExposed => StatusCode::FORBIDDEN,
            Self::SandboxNotFound => StatusCode::NOT_FOUND,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::PortNotListening | Self::SandboxUnreachable => StatusCode::BAD_GATEWAY,
            Self::SandboxNotRunning | Self::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer with its message (shown to the caller: never a secret).
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub code: Code,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ProxyError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Renders the answer, as HTML when the client asked for it first
    /// (see [`prefers_html`]).
    pub fn into_response(self, html: bool) -> Response<ProxyBody> {
        let (content_type, body) = if html {
            ("text/html; charset=utf-8", self.html())
        } else {
            let body = sbx_proto::ErrorBody {
                error: self.message.clone(),
                code: Some(self.code.as_str().to_owned()),
            };
            (
                "application/json",
                serde_json::to_string(&body).unwrap_or_default(),
            )
        };
        let mut response = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = self.code.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.code == Code::Unauthorized {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sandbox\""),
            );
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }

    fn html(&self) -> String {
        let status = self.code.status();
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\
             <body><h1>{code} {reason}</h1><p>{message}</p><p><code>{name}</code></p></body></html>\n",
            code = status.as_u16(),
            reason = status.canonical_reason().unwrap_or(""),
            message = escape_html(&self.message),
            name = self.code.as_str(),
        )
    }
}

/// A browser navigating asks for `text/html` before anything else; API
/// clients (`*/*`, JSON) get JSON.
pub fn prefers_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| first.trim().starts_with("text/html"))
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_html() {
        let err = ProxyError::new(Code::Unauthorized, "no <credential>");
        let json = err.clone().into_response(prefers_html(&HeaderMap::new()));
        assert_eq!(json.status(), 401);
        assert!(json.headers().contains_key(header::WWW_AUTHENTICATE));
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml"),
        );
        let html = err.into_response(prefers_html(&h));
        assert_eq!(
            html.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let retry = ProxyError::new(Code::SandboxNotRunning, "x").retry_after(2);
        assert_eq!(
            retry.into_response(false).headers()[header::RETRY_AFTER],
            "2"
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(
            escape_html("<a href='x'>&"),
            "&lt;a href=&#39;x&#39;&gt;&amp;"
        );
    }
}
