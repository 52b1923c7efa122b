//! Forwarded auth between the sandbox proxy and the agent (SPEC section 3).
//!
//! Token: `v1.<expiry-unix-seconds>.<base64url(HMAC-SHA256(key, "v1.<expiry>.<sandbox-id>"))>`.
//! The sandbox id is not in the token: the agent checks the MAC against its
//! own id, so a token minted for another sandbox simply fails to verify.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Header the proxy sets on every request it forwards to an agent.
pub const FORWARDED_AUTH_HEADER: &str = "x-sandbox-forwarded-auth";

/// Token format version.
pub const TOKEN_VERSION: &str = "v1";

/// Clock skew tolerated between proxy and agent when checking expiry.
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 30;

/// Length of the shared key in bytes.
pub const KEY_LEN: usize = 32;

/// Longest token we even look at; anything longer is garbage or an attack.
const MAX_TOKEN_LEN: usize = 256;

/// The 32-byte shared secret between the proxy and one agent.
#[derive(Clone)]
pub struct ForwardedAuthKey([u8; KEY_LEN]);

impl std::fmt::Debug for ForwardedAuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardedAuthKey(<redacted>)")
    }
}

impl ForwardedAuthKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses a key file's content: 64 hex characters, one trailing newline allowed.
    pub fn from_hex_file_content(content: &str) -> Result<Self, KeyError> {
        let trimmed = content
            .strip_suffix("\r\n")
            .or_else(|| content.strip_suffix('\n'))
            .unwrap_or(content);
        if trimmed.len() != KEY_LEN * 2 {
            return Err(KeyError::Length(trimmed.len()));
        }
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(trimmed, &mut bytes).map_err(|_| KeyError::NotHex)?;
        Ok(Self(bytes))
    }

    /// Hex form, as written to a key file (without the newline).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn mac(&self, expiry: u64, sandbox_id: &str) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(format!("{TOKEN_VERSION}.{expiry}.{sandbox_id}").as_bytes());
        mac
    }

    /// Mints a token for `sandbox_id` valid until `expiry` (unix seconds).
    pub fn mint(&self, sandbox_id: &str, expiry: u64) -> String {
        let tag = self.mac(expiry, sandbox_id).finalize().into_bytes();
        format!("{TOKEN_VERSION}.{expiry}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Verifies `token` for `sandbox_id` at time `now` (unix seconds).
    pub fn verify(
        &self,
        token: &str,
        sandbox_id: &str,
        now: u64,
        skew_secs: u64,
    ) -> Result<(), TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.splitn(3, '.');
        let (Some(version), Some(expiry), Some(sig)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if version != TOKEN_VERSION {
            return Err(TokenError::Version);
        }
        // Canonical decimal only: the MAC covers the expiry as a number, so
        // `v1.02000.<mac>` would otherwise verify as a second spelling of
        // `v1.2000.<mac>`, and a minter that MACs the text it sends would
        // disagree with us about leading zeros.
        let canonical = expiry == "0" || !expiry.starts_with('0');
        if expiry.is_empty()
            || expiry.len() > 20
            || !canonical
            || !expiry.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(TokenError::Malformed);
        }
        let expiry: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        // The MAC is checked before expiry so that an attacker learns nothing
        // about which expiries would be accepted without holding the key.
        self.mac(expiry, sandbox_id)
            .verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        if expiry.saturating_add(skew_secs) < now {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

/// Compares two secrets in constant time (for the direct bearer mode).
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Why a key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key must be {expected} hex characters, found {0}", expected = KEY_LEN * 2)]
    Length(usize),
    #[error("key is not valid hex")]
    NotHex,
}

/// Why a forwarded-auth token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token version is not {TOKEN_VERSION}")]
    Version,
    #[error("token signature does not match this sandbox")]
    BadSignature,
    #[error("token has expired")]
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ForwardedAuthKey {
        ForwardedAuthKey::from_hex_file_content(&format!("{}\n", "ab".repeat(32))).unwrap()
    }

    #[test]
    fn mint_then_verify() {
        let token = key().mint("sbx-1", 2_000);
        assert!(token.starts_with("v1.2000."));
        assert!(!token.contains('='));
        assert_eq!(key().verify(&token, "sbx-1", 1_000, 30), Ok(()));
        // Within skew.
        assert_eq!(key().verify(&token, "sbx-1", 2_020, 30), Ok(()));
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256(key=0xab*32, "v1.2000.sbx-1") computed independently with
        // python: hmac.new(bytes([0xab]*32), b"v1.2000.sbx-1", "sha256").
        let token = key().mint("sbx-1", 2_000);
        assert_eq!(token, "v1.2000.-BtbDuZmgMtQTi_67KRkFY1Ev9FJMCcyI-XwcC7kZUc");
    }

    #[test]
    fn refuses_wrong_sandbox_expired_and_garbage() {
        let token = key().mint("sbx-1", 2_000);
        assert_eq!(
            key().verify(&token, "sbx-2", 1_000, 30),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            key().verify(&token, "sbx-1", 2_031, 30),
            Err(TokenError::Expired)
        );
        let other = ForwardedAuthKey::from_bytes([7; 32]);
        assert_eq!(
            other.verify(&token, "sbx-1", 1_000, 30),
            Err(TokenError::BadSignature)
        );
        for bad in [
            "",
            "v1",
            "v1.",
            "v1.1.",
            "v2.2000.abc",
            "v1.-1.abc",
            "v1.x.abc",
            "v1.2000.***",
        ] {
            assert!(key().verify(bad, "sbx-1", 1_000, 30).is_err(), "{bad}");
        }
        // Tampered expiry.
        let forged = token.replacen("2000", "9000", 1);
        assert_eq!(
            key().verify(&forged, "sbx-1", 1_000, 30),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn one_token_per_expiry() {
        // Found by fuzz/fuzz_targets/forwarded_auth.rs: a leading zero in
        // the expiry verified with the MAC of the number without it.
        let token = key().mint("sbx-1", 2_000);
        let padded = token.replacen("v1.2000.", "v1.02000.", 1);
        assert_eq!(
            key().verify(&padded, "sbx-1", 1_000, 30),
            Err(TokenError::Malformed)
        );
        let zero = key().mint("sbx-1", 0);
        assert!(zero.starts_with("v1.0."));
        assert_eq!(key().verify(&zero, "sbx-1", 0, 30), Ok(()));
    }

    #[test]
    fn key_file_parsing() {
        assert!(ForwardedAuthKey::from_hex_file_content(&"00".repeat(32)).is_ok());
        assert_eq!(
            ForwardedAuthKey::from_hex_file_content("abc").unwrap_err(),
            KeyError::Length(3)
        );
        assert_eq!(
            ForwardedAuthKey::from_hex_file_content(&"zz".repeat(32)).unwrap_err(),
            KeyError::NotHex
        );
        assert!(
            ForwardedAuthKey::from_hex_file_content(&format!("{}\n\n", "00".repeat(32))).is_err()
        );
    }

    #[test]
    fn constant_time_compare() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
    }
}
