//! What the sandbox sees (SPEC 6): hop-by-hop headers removed (RFC 9110
//! 7.6.1), routing headers removed, consumed platform credentials removed,
//! any client-sent forwarded auth removed, `X-Forwarded-*` set. Path and
//! query pass byte for byte, except the organization/project pairs when
//! they served as the credential's context.

use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::HeaderMap;
use sbx_proto::auth::FORWARDED_AUTH_HEADER;

use crate::auth::credential::{
    ORG_HEADER, ORG_QUERY, PROJECT_HEADER, PROJECT_QUERY, SESSION_COOKIES,
};
use crate::route::{SANDBOX_ID_HEADER, SANDBOX_PORT_HEADER};

/// Hop-by-hop headers that are not named in `Connection` (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// The size of a request's head as it would be sent in HTTP/1.1: the
/// request line and every `name: value\r\n` (HTTP/2 sizes its header list
/// the same way, RFC 9113 6.5.2, plus 32 per field, left out here).
pub fn head_bytes<B>(request: &http::Request<B>) -> usize {
    // The target as written: origin form, or absolute form (HTTP/2's
    // :scheme and :authority), measured without writing it out.
    let uri = request.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    // Two spaces, "HTTP/1.1" and CRLF around the method and target.
    let line = request.method().as_str().len() + target + 12;
    request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// Whether the request asks to switch protocols (a WebSocket, say).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes hop-by-hop headers. An upgrade keeps `Connection: upgrade` and
/// its `Upgrade`; an HTTP/2 hop keeps `TE: trailers` (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>, to_http2: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if to_http2 && trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
}

/// Removes what only the proxy may read or write: routing headers, and a
/// forwarded-auth token a client made up.
pub fn strip_proxy_headers(headers: &mut HeaderMap) {
    headers.remove(SANDBOX_ID_HEADER);
    headers.remove(SANDBOX_PORT_HEADER);
    headers.remove(FORWARDED_AUTH_HEADER);
}

/// Removes the platform credential the proxy consumed, with its context.
pub fn strip_credentials(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    headers.remove(ORG_HEADER);
    headers.remove(PROJECT_HEADER);
    strip_session_cookies(headers);
}

/// Platform session cookies never reach sandbox code, whether or not the
/// proxy used them: a public port serves code that is not the platform's.
/// Other cookies stay; split `cookie` headers (HTTP/2) are joined into one,
/// as RFC 9113 8.2.3 asks before an HTTP/1.1 hop.
pub fn strip_session_cookies(headers: &mut HeaderMap) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n).trim();
            !SESSION_COOKIES.contains(&name)
        })
        .map(str::to_owned)
        .collect();
    let non_text = headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| v.to_str().is_err());
    if non_text {
        // Not text: we cannot tell which pairs are ours, so none pass.
        headers.remove(header::COOKIE);
        return;
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, value);
        }
    }
}

/// Removes the `organizationId` / `projectId` pairs from a query; every
/// other byte stays as it was.
pub fn strip_context_query(path: &PathAndQuery) -> PathAndQuery {
    let Some(query) = path.query() else {
        return path.clone();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            key != ORG_QUERY && key != PROJECT_QUERY
        })
        .collect();
    let mut text = path.path().to_owned();
    if !kept.is_empty() {
        text.push('?');
        text.push_str(&kept.join("&"));
    }
    // Removing whole pairs of a valid query cannot make it invalid.
    PathAndQuery::try_from(text).unwrap_or_else(|_| path.clone())
}

/// Sets `X-Forwarded-For` (the client appended to what a balancer in front
/// already said), `-Proto` and `-Host`.
pub fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, tls: bool, host: Option<&str>) {
    let prior = headers
        .get(X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let value = match prior {
        Some(prior) => format!("{prior}, {client}"),
        None => client.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(value) => {
            headers.insert(X_FORWARDED_HOST, value);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_bytes_counts_the_request_line_and_every_field() {
        let request = http::Request::get("/a?b=c")
            .header("host", "8080-web.sbx.test")
            .header("x-big", "x".repeat(1000))
            .body(())
            .unwrap();
        // "GET /a?b=c HTTP/1.1\r\n" + "host: 8080-web.sbx.test\r\n" + "x-big: " 1000 "\r\n"
        assert_eq!(head_bytes(&request), 21 + 25 + 1009);
        let absolute = http::Request::get("https://web.sbx.test/a?b=c")
            .body(())
            .unwrap();
        assert_eq!(
            head_bytes(&absolute),
            "GET https://web.sbx.test/a?b=c HTTP/1.1\r\n".len()
        );
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop() {
        let mut h = map(&[
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, None, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        let mut h = map(&[("te", "trailers"), ("connection", "te")]);
        strip_hop_by_hop(&mut h, None, true);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let protocol = upgrade_protocol(&h);
        assert!(protocol.is_some());
        strip_hop_by_hop(&mut h, protocol.as_ref(), false);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn cookies() {
        let mut h = map(&[
            ("cookie", "a=1; tl.session_token=secret"),
            ("cookie", "tl-session=old;b=2"),
        ]);
        strip_session_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut h = map(&[("cookie", "tl.session_token=secret")]);
        strip_session_cookies(&mut h);
        assert!(!h.contains_key("cookie"));
    }

    #[test]
    fn query_pairs() {
        let pq = |s: &str| PathAndQuery::try_from(s).unwrap();
        assert_eq!(
            strip_context_query(&pq("/a%2Fb//c?x=1&organizationId=o&x=2&projectId=p&y=%20"))
                .as_str(),
            "/a%2Fb//c?x=1&x=2&y=%20"
        );
        assert_eq!(
            strip_context_query(&pq("/ws?organizationId=o&projectId=p")).as_str(),
            "/ws"
        );
        assert_eq!(strip_context_query(&pq("/p?a&&b=")).as_str(), "/p?a&&b=");
        assert_eq!(strip_context_query(&pq("/p")).as_str(), "/p");
    }

    #[test]
    fn forwarded() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-host", "evil"),
        ]);
        set_forwarded(
            &mut h,
            "192.0.2.1".parse().unwrap(),
            true,
            Some("web.sbx.test"),
        );
        assert_eq!(h[X_FORWARDED_FOR], "203.0.113.9, 192.0.2.1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "web.sbx.test");
    }
}
