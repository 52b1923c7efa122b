//! The server side of the WebSocket opening handshake (RFC 6455 section 4.2).

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use sbx_proto::ErrorCode;

use crate::error::ApiError;

/// Checks the upgrade request and returns the `Sec-WebSocket-Accept` value.
pub fn accept_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let bad = |msg: &str| ApiError::new(ErrorCode::BadRequest, msg);
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(bad("expected a WebSocket upgrade (Connection: Upgrade)"));
    }
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        return Err(bad("expected a WebSocket upgrade (Upgrade: websocket)"));
    }
    let version = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok());
    if version.map(str::trim) != Some("13") {
        return Err(bad("unsupported WebSocket version: use 13"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad("missing Sec-WebSocket-Key"))?;
    // A key is 16 random bytes in base64: 24 characters ending in "==".
    let key = key.as_bytes();
    if key.len() != 24 || !key.ends_with(b"==") {
        return Err(bad("malformed Sec-WebSocket-Key"));
    }
    Ok(tungstenite::handshake::derive_accept_key(key))
}

/// The 101 answer that completes the handshake.
pub fn switching_protocols(accept_key: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(accept_key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

pub fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h
    }

    #[test]
    fn rfc_example_key() {
        assert_eq!(
            accept_key(&upgrade_headers()).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn refuses_non_upgrades() {
        let mut h = upgrade_headers();
        h.remove(header::UPGRADE);
        assert!(accept_key(&h).is_err());
        let mut h = upgrade_headers();
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(accept_key(&h).is_err());
        let mut h = upgrade_headers();
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("short"));
        assert!(accept_key(&h).is_err());
    }
}
