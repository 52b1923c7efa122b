//! Taking a platform credential and its organization/project context out of
//! a request (SPEC section 6, access decision step 4).
//!
//! Everything here is pure: no store is consulted. A source that is present
//! but malformed (non-UTF-8, an unknown scheme, an absurd value) is treated
//! as absent, so a garbled `Authorization` header cannot shadow a valid
//! session cookie, and the store never sees input no client could
//! legitimately send.

use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;

/// Header naming the organization a PAT or session acts in.
pub const ORG_HEADER: &str = "x-forwarded-organization-id";
/// Header naming the project a PAT or session acts in.
pub const PROJECT_HEADER: &str = "x-forwarded-project-id";
/// Query parameter for the organization, for browser WebSocket clients that
/// cannot set headers. Matched on the raw (undecoded) name, so the proxy can
/// strip exactly what was consumed by comparing raw names too.
pub const ORG_QUERY: &str = "organizationId";
/// Query parameter for the project; see [`ORG_QUERY`].
pub const PROJECT_QUERY: &str = "projectId";
/// Session cookie names, the current one first: it wins when both are sent.
pub const SESSION_COOKIES: [&str; 2] = ["tl.session_token", "tl-session"];

/// Bearer tokens with this prefix are personal access tokens.
const PAT_PREFIX: &str = "tl_pat";
/// Longest organization or project id accepted from a request.
const MAX_CONTEXT_LEN: usize = 256;
/// Longest secret accepted from a request; real ones are well under 100
/// bytes, and this keeps a hostile header from being hashed or forwarded to
/// an introspection service.
const MAX_SECRET_LEN: usize = 4096;

/// Which kind of platform credential a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    ApiKey,
    PersonalAccessToken,
    Session,
}

impl CredentialKind {
    /// The wire name, as used by the introspection protocol and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "api_key",
            CredentialKind::PersonalAccessToken => "pat",
            CredentialKind::Session => "session",
        }
    }
}

impl std::fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret presented by a caller. The secret is only reachable through
/// [`Credential::secret`] and never through `Debug`, so a stray `{:?}` in a
/// log line cannot leak it.
#[derive(Clone)]
pub struct Credential {
    pub kind: CredentialKind,
    secret: String,
}

impl Credential {
    pub fn new(kind: CredentialKind, secret: impl Into<String>) -> Self {
        Credential {
            kind,
            secret: secret.into(),
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("kind", &self.kind)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The organization/project a request says it acts in. Ids are not secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub organization_id: Option<String>,
    pub project_id: Option<String>,
    /// Some of it came from the query string (the proxy then strips those
    /// parameters before forwarding).
    pub from_query: bool,
}

/// The credential a request presents, with its context; `None` when it
/// carries no usable credential.
///
/// A bearer token wins over a session cookie. Context is taken per field
/// from its header, else from its query parameter; a value that is
/// repeated or absurd counts as absent, so two parsers can never disagree
/// about which one was meant.
pub fn presented(headers: &HeaderMap, query: Option<&str>) -> Option<(Credential, Context)> {
    let credential = bearer(headers).or_else(|| session_cookie(headers))?;
    Some((credential, context(headers, query)))
}

/// Whether an organization or project id is plausible. Shared with the
/// credentials file so that every id it lists could be matched by a request.
pub(crate) fn valid_context_value(value: &str) -> bool {
    !value.is_empty() && value.len() <= MAX_CONTEXT_LEN && !value.chars().any(char::is_control)
}

fn bearer(headers: &HeaderMap) -> Option<Credential> {
    let value = single(headers, AUTHORIZATION.as_str())?;
    let value = value.to_str().ok()?.trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim_matches([' ', '\t']);
    if !valid_secret(token) {
        return None;
    }
    let kind = if token.starts_with(PAT_PREFIX) {
        CredentialKind::PersonalAccessToken
    } else {
        CredentialKind::ApiKey
    };
    Some(Credential::new(kind, token))
}

fn session_cookie(headers: &HeaderMap) -> Option<Credential> {
    SESSION_COOKIES.iter().find_map(|name| {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(key, _)| key.trim() == *name)
            .find_map(|(_, value)| {
                let value = value.trim();
                // RFC 6265 allows a cookie value wrapped in double quotes.
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                valid_cookie_value(value).then(|| Credential::new(CredentialKind::Session, value))
            })
    })
}

fn context(headers: &HeaderMap, query: Option<&str>) -> Context {
    let mut ctx = Context::default();
    for (header, param, slot) in [
        (ORG_HEADER, ORG_QUERY, &mut ctx.organization_id),
        (PROJECT_HEADER, PROJECT_QUERY, &mut ctx.project_id),
    ] {
        if let Some(value) = header_value(headers, header) {
            *slot = Some(value);
        } else if let Some(value) = query.and_then(|q| query_value(q, param)) {
            *slot = Some(value);
            ctx.from_query = true;
        }
    }
    ctx
}

/// The header's only value; `None` when absent or repeated.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a http::HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = single(headers, name)?.to_str().ok()?.trim();
    valid_context_value(value).then(|| value.to_owned())
}

/// The percent-decoded value of the only `name=` pair in a query string.
fn query_value(query: &str, name: &str) -> Option<String> {
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != name {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some(value);
    }
    let decoded = percent_decode(found?)?;
    valid_context_value(&decoded).then_some(decoded)
}

/// Decodes `%XX` escapes and `+` (form encoding, as browsers'
/// `URLSearchParams` write a space). `None` for a broken escape or a result
/// that is not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_digit(*bytes.get(i + 1)?)?;
                let lo = hex_digit(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn valid_secret(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_SECRET_LEN
        && token.bytes().all(|b| b.is_ascii_graphic())
}

fn valid_cookie_value(value: &str) -> bool {
    valid_secret(value)
        && !value
            .bytes()
            .any(|b| matches!(b, b'"' | b',' | b';' | b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name = http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
            map.append(name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    fn kind_and_secret(h: &HeaderMap, q: Option<&str>) -> Option<(CredentialKind, String)> {
        presented(h, q).map(|(c, _)| (c.kind, c.secret().to_owned()))
    }

    #[test]
    fn bearer_api_key_and_pat() {
        let h = headers(&[("authorization", "Bearer sbx_key_abc")]);
        assert_eq!(
            kind_and_secret(&h, None),
            Some((CredentialKind::ApiKey, "sbx_key_abc".into()))
        );
        let h = headers(&[("authorization", "bEaReR   tl_pat_xyz ")]);
        assert_eq!(
            kind_and_secret(&h, None),
            Some((CredentialKind::PersonalAccessToken, "tl_pat_xyz".into()))
        );
    }

    #[test]
    fn malformed_authorization_is_absent() {
        for value in [
            "Bearer",
            "Bearer ",
            "Basic dXNlcjpwYXNz",
            "Bearer a b",
            "Bearerabc",
        ] {
            let h = headers(&[("authorization", value)]);
            assert_eq!(kind_and_secret(&h, None), None, "{value:?}");
        }
        let long = format!("Bearer {}", "a".repeat(MAX_SECRET_LEN + 1));
        assert_eq!(
            kind_and_secret(&headers(&[("authorization", &long)]), None),
            None
        );
        // Two Authorization headers are ambiguous.
        let h = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(kind_and_secret(&h, None), None);
        // Non-UTF-8 falls through to the cookie.
        let mut h = headers(&[("cookie", "tl-session=s1")]);
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff\xfe").expect("bytes"),
        );
        assert_eq!(
            kind_and_secret(&h, None),
            Some((CredentialKind::Session, "s1".into()))
        );
    }

    #[test]
    fn bearer_wins_over_cookie() {
        let h = headers(&[
            ("cookie", "tl.session_token=s"),
            ("authorization", "Bearer k"),
        ]);
        assert_eq!(
            kind_and_secret(&h, None),
            Some((CredentialKind::ApiKey, "k".into()))
        );
    }

    #[test]
    fn session_cookies() {
        let h = headers(&[("cookie", "a=1; tl.session_token=tok; b=2")]);
        assert_eq!(
            kind_and_secret(&h, None),
            Some((CredentialKind::Session, "tok".into()))
        );
        let h = headers(&[("cookie", "a=1"), ("cookie", "tl-session=\"legacy\"")]);
        assert_eq!(
            kind_and_secret(&h, None),
            Some((CredentialKind::Session, "legacy".into()))
        );
        // The current name wins, wherever it appears.
        let h = headers(&[
            ("cookie", "tl-session=old"),
            ("cookie", "x=y;tl.session_token=new"),
        ]);
        assert_eq!(
            kind_and_secret(&h, None),
            Some((CredentialKind::Session, "new".into()))
        );
        // An empty or bad value is skipped for the next candidate.
        let h = headers(&[("cookie", "tl.session_token=; tl-session=ok")]);
        assert_eq!(
            kind_and_secret(&h, None),
            Some((CredentialKind::Session, "ok".into()))
        );
        let h = headers(&[("cookie", "tl.session_tokenx=a; xtl-session=b; other=c")]);
        assert_eq!(kind_and_secret(&h, None), None);
        assert_eq!(
            kind_and_secret(&HeaderMap::new(), Some("organizationId=o")),
            None
        );
    }

    #[test]
    fn context_from_headers() {
        let h = headers(&[
            ("authorization", "Bearer tl_pat_1"),
            ("x-forwarded-organization-id", "org-1"),
            ("X-Forwarded-Project-Id", " proj-1 "),
        ]);
        let (_, ctx) = presented(&h, Some("organizationId=qo&projectId=qp")).expect("credential");
        assert_eq!(
            ctx,
            Context {
                organization_id: Some("org-1".into()),
                project_id: Some("proj-1".into()),
                from_query: false,
            }
        );
    }

    #[test]
    fn context_from_query() {
        let h = headers(&[("cookie", "tl.session_token=s")]);
        let (_, ctx) =
            presented(&h, Some("port=1&organizationId=org%2D1&projectId=my+proj")).expect("cred");
        assert_eq!(ctx.organization_id.as_deref(), Some("org-1"));
        assert_eq!(ctx.project_id.as_deref(), Some("my proj"));
        assert!(ctx.from_query);
        // Per field: the header wins, the query fills the gap.
        let h = headers(&[
            ("cookie", "tl.session_token=s"),
            ("x-forwarded-project-id", "p"),
        ]);
        let (_, ctx) = presented(&h, Some("organizationId=o&projectId=q")).expect("cred");
        assert_eq!(ctx.organization_id.as_deref(), Some("o"));
        assert_eq!(ctx.project_id.as_deref(), Some("p"));
        assert!(ctx.from_query);
    }

    #[test]
    fn absurd_context_is_absent() {
        let cookie = ("cookie", "tl.session_token=s");
        let long = "o".repeat(MAX_CONTEXT_LEN + 1);
        for (org, query) in [
            ("", "organizationId="),
            (long.as_str(), "organizationId=%0a"),
            ("ok", "organizationId=a&organizationId=b"),
            ("ok", "organizationId=%zz"),
            ("ok", "organizationId=%ff"),
            ("ok", "organizationId=%4"),
            ("ok", "OrganizationId=x"),
        ] {
            let mut h = headers(&[cookie]);
            if org != "ok" {
                h.append(ORG_HEADER, HeaderValue::from_str(org).expect("value"));
            }
            let (_, ctx) = presented(&h, Some(query)).expect("cred");
            assert_eq!(ctx.organization_id, None, "{org:?} {query:?}");
        }
        let h = headers(&[cookie, (ORG_HEADER, "a"), (ORG_HEADER, "b")]);
        let (_, ctx) = presented(&h, None).expect("cred");
        assert_eq!(ctx, Context::default());
    }

    #[test]
    fn debug_redacts_the_secret() {
        let c = Credential::new(CredentialKind::ApiKey, "sbx_key_supersecret");
        let shown = format!("{c:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("ApiKey"));
        assert_eq!(CredentialKind::PersonalAccessToken.as_str(), "pat");
        assert_eq!(CredentialKind::Session.to_string(), "session");
        assert_eq!(CredentialKind::ApiKey.as_str(), "api_key");
    }
}
