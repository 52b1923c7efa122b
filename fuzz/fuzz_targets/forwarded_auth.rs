//! Forwarded-auth tokens (SPEC 3): minting and verification in sbx-proto,
//! the agent's header check, and the key file format.
//!
//! Properties: a minted token verifies for its sandbox until it expires
//! (plus skew) and for no other sandbox; no edit of a valid token (one byte
//! changed, inserted or removed) verifies; a token that verifies is exactly
//! the one `mint` produces, so each (sandbox, expiry) has one token; a key
//! file that parses is 64 hex digits of exactly that key.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sbx_agent::fuzzing::Authenticator;
use sbx_proto::auth::{ForwardedAuthKey, TokenError, FORWARDED_AUTH_HEADER};

const SANDBOX: &str = "sbx-1";
const BEARER: &str = "direct-bearer-secret";

fuzz_target!(|data: &[u8]| {
    raw_token(data);
    key_file(data);
    agent_headers(data);
    let _ = minted(&mut Unstructured::new(data));
});

fn key() -> ForwardedAuthKey {
    ForwardedAuthKey::from_bytes([0x5a; 32])
}

/// The input as a token: if it verifies, it is the canonical token.
fn raw_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if key().verify(token, SANDBOX, 0, 0).is_ok() {
        let expiry = token.split('.').nth(1).and_then(|e| e.parse::<u64>().ok());
        let expiry = expiry.expect("an accepted token has a decimal expiry");
        assert_eq!(
            token,
            key().mint(SANDBOX, expiry),
            "non-canonical token accepted"
        );
    }
}

fn key_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = ForwardedAuthKey::from_hex_file_content(text) {
        let body = text.trim_end_matches(['\n', '\r']);
        assert_eq!(parsed.to_hex(), body.to_ascii_lowercase());
        assert_eq!(body.len(), 64);
    }
}

/// The agent's check of both headers, with the input as their values.
fn agent_headers(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let auth = Authenticator::new(key(), SANDBOX.into(), Some(BEARER.into()), 30);
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value.clone());
    if auth.check(&headers).is_ok() {
        let text = value.to_str().expect("accepted means text");
        assert_eq!(
            text[7..].trim(),
            BEARER,
            "{text:?} accepted as the bearer token"
        );
    }
    headers.insert(FORWARDED_AUTH_HEADER, value);
    // The forwarded header takes precedence; random bytes never verify.
    assert!(auth.check(&headers).is_err());
}

fn minted(u: &mut Unstructured<'_>) -> Result<()> {
    let id: String = u.arbitrary()?;
    let expiry: u64 = u.arbitrary()?;
    let now: u64 = u.arbitrary()?;
    let skew = u64::from(u.arbitrary::<u16>()?);
    let token = key().mint(&id, expiry);
    assert!(
        token.len() <= 256,
        "minted tokens must fit the verifier's cap"
    );
    let verdict = key().verify(&token, &id, now, skew);
    if expiry.saturating_add(skew) < now {
        assert_eq!(verdict, Err(TokenError::Expired));
    } else {
        assert_eq!(verdict, Ok(()));
    }
    let other = format!("{id}x");
    assert_eq!(
        key().verify(&token, &other, 0, 0),
        Err(TokenError::BadSignature)
    );
    assert!(ForwardedAuthKey::from_bytes([0xa5; 32])
        .verify(&token, &id, 0, 0)
        .is_err());

    let mut edited = token.clone().into_bytes();
    let at = u.choose_index(edited.len())?;
    match u.int_in_range(0..=2u8)? {
        0 => {
            let byte = u.arbitrary::<u8>()?;
            if edited[at] == byte {
                return Ok(());
            }
            edited[at] = byte;
        }
        1 => edited.insert(at, u.arbitrary::<u8>()?),
        _ => {
            edited.remove(at);
        }
    }
    if let Ok(edited) = String::from_utf8(edited) {
        assert!(
            key().verify(&edited, &id, 0, 0).is_err(),
            "{edited:?} verifies as well as {token:?}"
        );
    }
    Ok(())
}
