//! sbx-proxy's routing (SPEC 6, proxy/src/route.rs): the `Host` (or
//! `:authority`) label `<id>.<domain>` / `<port>-<id>.<domain>`, and the
//! `X-Tensorlake-Sandbox-Id` / `-Port` headers.
//!
//! Input: the host, then optionally a newline and the id header's value,
//! then optionally a newline and the port header's value.
//!
//! Properties: an accepted host names a valid sandbox and a port in
//! 1..=65535, and its canonical form under each configured domain routes to
//! the same target; the order in which domains are configured does not
//! matter; a header target is the header's value, trimmed and lower-cased.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sbx_proxy::route::{
    parse_port, target, validate_domain, validate_name, Target, AGENT_PORT, SANDBOX_ID_HEADER,
    SANDBOX_PORT_HEADER,
};

/// Nested on purpose: `sbx.example.com` lies under `example.com`.
const DOMAINS: [&str; 3] = ["example.com", "sbx.example.com", "local"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let host = parts.next().unwrap_or_default();
    let forward: Vec<String> = DOMAINS.iter().map(|d| d.to_string()).collect();
    let backward: Vec<String> = DOMAINS.iter().rev().map(|d| d.to_string()).collect();
    for d in &forward {
        assert!(validate_domain(d).is_ok());
    }

    let empty = HeaderMap::new();
    let routed = target(Some(host), &empty, &forward);
    assert_eq!(
        routed,
        target(Some(host), &empty, &backward),
        "{host:?}: domain order matters"
    );
    if let Ok(t) = &routed {
        assert!(!t.by_header);
        check_target(t);
        for domain in DOMAINS {
            let canonical = canonical(t, domain);
            assert_eq!(
                target(Some(&canonical), &empty, &forward).as_ref(),
                Ok(t),
                "{host:?} routes to {t:?}, but {canonical:?} does not"
            );
        }
    }

    let Some(id) = parts.next() else {
        return;
    };
    let Ok(id_value) = HeaderValue::from_str(id) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(SANDBOX_ID_HEADER, id_value);
    let port = parts.next();
    if let Some(port) = port {
        let Ok(port_value) = HeaderValue::from_str(port) else {
            return;
        };
        headers.insert(SANDBOX_PORT_HEADER, port_value);
    }
    if let Ok(t) = target(Some(host), &headers, &forward) {
        assert!(t.by_header);
        check_target(&t);
        assert_eq!(t.sandbox, id.trim().to_ascii_lowercase());
        let expected = port.map_or(Some(AGENT_PORT), |p| parse_port(p.trim()));
        assert_eq!(Some(t.port), expected);
    }
});

fn check_target(t: &Target) {
    assert!(validate_name(&t.sandbox).is_ok(), "{t:?}");
    assert!(t.port >= 1);
}

fn canonical(t: &Target, domain: &str) -> String {
    if t.port == AGENT_PORT {
        format!("{}.{domain}", t.sandbox)
    } else {
        format!("{}-{}.{domain}", t.port, t.sandbox)
    }
}
