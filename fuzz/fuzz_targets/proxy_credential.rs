//! sbx-proxy's credential parsing (proxy/src/auth/credential.rs): the
//! bearer token, session cookies, and the organization/project context from
//! headers or the query; and the stripping that keeps them from sandbox
//! code (proxy/src/headers.rs).
//!
//! Input: newline-separated `Authorization`, `Cookie` (twice), organization
//! header, project header, and the request's path and query.
//!
//! Properties: a credential found is a bounded printable secret (a cookie's
//! without quotes, commas, semicolons or backslashes); context ids are
//! bounded and free of control characters; after the proxy strips what it
//! consumed, no credential and no query context can be found again.
#![no_main]

use http::header::{AUTHORIZATION, COOKIE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sbx_proxy::auth::credential::{presented, CredentialKind, ORG_HEADER, PROJECT_HEADER};
use sbx_proxy::headers::{strip_context_query, strip_credentials};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == b'\n');
    let mut headers = HeaderMap::new();
    let names = [
        AUTHORIZATION,
        COOKIE,
        COOKIE,
        HeaderName::from_static(ORG_HEADER),
        HeaderName::from_static(PROJECT_HEADER),
    ];
    for name in names {
        let Some(raw) = parts.next() else { break };
        if raw.is_empty() {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(raw) {
            headers.append(name, value);
        }
    }
    let path = parts
        .next()
        .and_then(|raw| std::str::from_utf8(raw).ok())
        .and_then(|raw| PathAndQuery::try_from(format!("/p?{raw}")).ok());
    let query = path.as_ref().and_then(|p| p.query());

    if let Some((credential, context)) = presented(&headers, query) {
        let secret = credential.secret();
        assert!(!secret.is_empty() && secret.len() <= 4096);
        assert!(secret.bytes().all(|b| b.is_ascii_graphic()), "{secret:?}");
        if credential.kind == CredentialKind::Session {
            assert!(!secret.contains(['"', ',', ';', '\\']), "{secret:?}");
        }
        for id in [&context.organization_id, &context.project_id]
            .into_iter()
            .flatten()
        {
            assert!(!id.is_empty() && id.len() <= 256);
            assert!(!id.chars().any(char::is_control), "{id:?}");
        }
        assert_eq!(
            format!("{credential:?}"),
            format!(
                "Credential {{ kind: {:?}, secret: \"<redacted>\" }}",
                credential.kind
            )
        );
    }

    let mut stripped = headers.clone();
    strip_credentials(&mut stripped);
    let stripped_path = path.as_ref().map(strip_context_query);
    let stripped_query = stripped_path.as_ref().and_then(|p| p.query());
    assert!(
        presented(&stripped, stripped_query).is_none(),
        "a credential survives stripping: {stripped:?}"
    );
    // Anything but the context pairs passes byte for byte.
    if let (Some(before), Some(after)) = (&path, &stripped_path) {
        assert_eq!(before.path(), after.path());
        let kept: Vec<&str> = before
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|pair| {
                let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
                key != "organizationId" && key != "projectId"
            })
            .collect();
        assert_eq!(after.query().unwrap_or(""), kept.join("&"));
    }
});
