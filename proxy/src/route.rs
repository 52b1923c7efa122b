//! Which sandbox and port a request is for (SPEC 6), decided per request
//! from its host or its routing headers. Pure functions: the registry
//! lookup comes after.

use http::HeaderMap;

/// The agent's management API; a host label without a port prefix.
pub const AGENT_PORT: u16 = 9501;

/// Routing headers the Tensorlake SDK sends when its proxy URL is not local.
pub const SANDBOX_ID_HEADER: &str = "x-tensorlake-sandbox-id";
pub const SANDBOX_PORT_HEADER: &str = "x-tensorlake-sandbox-port";

/// Longest DNS label, and so the longest sandbox id or name.
const MAX_LABEL: usize = 63;
/// Longest host name (RFC 1035).
const MAX_HOST: usize = 253;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// A sandbox id or name, lowercase; resolved by the registry.
    pub sandbox: String,
    pub port: u16,
    /// The target came from the routing headers (they are removed before
    /// forwarding).
    pub by_header: bool,
}

/// Why a request's routing could not be read: 400 `BAD_REQUEST`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the request names no host")]
    NoHost,
    #[error("host {0:?} is not a sandbox address under this proxy's domains")]
    ForeignHost(String),
    #[error("malformed host {0:?}")]
    BadHost(String),
    #[error("malformed {SANDBOX_ID_HEADER} header")]
    BadIdHeader,
    #[error(
        "malformed {SANDBOX_PORT_HEADER} header: a port is a number 1-65535 without leading zeros"
    )]
    BadPortHeader,
    #[error("malformed port {0:?} in the host: a port is a number 1-65535 without leading zeros")]
    BadPort(String),
    #[error("{0}")]
    BadName(#[from] NameError),
}

/// Why an id or name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_LABEL} characters")]
    TooLong,
    #[error("may hold only lowercase letters, digits and '-', and must start and end with a letter or digit")]
    Charset,
    #[error("starts with <digits>-, which reads as a port prefix")]
    PortPrefix,
}

/// Checks a sandbox id or name: one lowercase DNS label that cannot be
/// mistaken for `<port>-<rest>`, so a host label parses one way only.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_LABEL {
        return Err(NameError::TooLong);
    }
    let bytes = name.as_bytes();
    let ok_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.iter().all(ok_char) || !edge(bytes[0]) || !edge(bytes[bytes.len() - 1]) {
        return Err(NameError::Charset);
    }
    if let Some(dash) = name.find('-') {
        if name[..dash].bytes().all(|b| b.is_ascii_digit()) {
            return Err(NameError::PortPrefix);
        }
    }
    Ok(())
}

/// Checks a configured domain: dot-separated DNS labels.
pub fn validate_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() || domain.len() > MAX_HOST {
        return Err("a domain is 1-253 characters".into());
    }
    for label in domain.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_LABEL
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-';
        if !ok {
            return Err(format!("label {label:?} is not a lowercase DNS label"));
        }
    }
    Ok(())
}

/// Parses a port the strict way: `1..=65535`, digits only, no leading zero
/// (`08080` is refused rather than guessed at).
pub fn parse_port(raw: &str) -> Option<u16> {
    let b = raw.as_bytes();
    if b.is_empty() || b.len() > 5 || b[0] == b'0' || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    raw.parse::<u32>()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .map(|p| p as u16)
}

/// Decides the target of one request. `host` is the `Host` header or the
/// HTTP/2 `:authority`; the routing headers win when present.
pub fn target(
    host: Option<&str>,
    headers: &HeaderMap,
    domains: &[String],
) -> Result<Target, RouteError> {
    if let Some(id) = headers.get(SANDBOX_ID_HEADER) {
        if headers.get_all(SANDBOX_ID_HEADER).iter().count() > 1 {
            return Err(RouteError::BadIdHeader);
        }
        let id = id
            .to_str()
            .map_err(|_| RouteError::BadIdHeader)?
            .trim()
            .to_ascii_lowercase();
        validate_name(&id)?;
        let port = match headers.get(SANDBOX_PORT_HEADER) {
            None => AGENT_PORT,
            Some(_) if headers.get_all(SANDBOX_PORT_HEADER).iter().count() > 1 => {
                return Err(RouteError::BadPortHeader)
            }
            Some(raw) => raw
                .to_str()
                .ok()
                .and_then(|s| parse_port(s.trim()))
                .ok_or(RouteError::BadPortHeader)?,
        };
        return Ok(Target {
            sandbox: id,
            port,
            by_header: true,
        });
    }
    let host = host.ok_or(RouteError::NoHost)?;
    let name = strip_port(host).ok_or_else(|| RouteError::BadHost(shorten(host)))?;
    if name.len() > MAX_HOST {
        return Err(RouteError::BadHost(shorten(host)));
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    // The label is everything before the first dot and the domain all of
    // the rest, so with nested domains (`example.com` and
    // `sbx.example.com`) a host matches one of them at most, whatever
    // order they are configured in.
    let (label, domain) = name
        .split_once('.')
        .ok_or_else(|| RouteError::ForeignHost(shorten(host)))?;
    if !domains.iter().any(|d| d == domain) {
        let under_ours = domains.iter().any(|d| {
            name.strip_suffix(d.as_str())
                .is_some_and(|rest| rest.ends_with('.'))
        });
        return Err(if under_ours {
            RouteError::BadHost(shorten(host))
        } else {
            RouteError::ForeignHost(shorten(host))
        });
    }
    if label.is_empty() {
        return Err(RouteError::BadHost(shorten(host)));
    }
    let (port, sandbox) = split_label(label)?;
    validate_name(sandbox)?;
    Ok(Target {
        sandbox: sandbox.to_owned(),
        port,
        by_header: false,
    })
}

/// `8080-web` → (8080, "web"); `web` → (9501, "web"). A label whose part
/// before the first '-' is all digits is a port prefix; names never look so.
fn split_label(label: &str) -> Result<(u16, &str), RouteError> {
    match label.split_once('-') {
        Some((digits, rest))
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            let port = parse_port(digits).ok_or_else(|| RouteError::BadPort(shorten(digits)))?;
            Ok((port, rest))
        }
        _ => Ok((AGENT_PORT, label)),
    }
}

/// `host[:port]` → `host`; IPv6 literals, bad ports and junk are not
/// sandbox hosts.
fn strip_port(host: &str) -> Option<&str> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if parse_port(port).is_some() => name,
        Some(_) => return None,
        None => host,
    };
    (!name.is_empty() && !name.contains([':', '[', ']', '@', '/'])).then_some(name)
}

/// Hosts are echoed in errors: keep them short.
fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn domains() -> Vec<String> {
        vec!["sbx.example.com".into(), "local".into()]
    }

    fn by_host(host: &str) -> Result<Target, RouteError> {
        target(Some(host), &HeaderMap::new(), &domains())
    }

    fn t(sandbox: &str, port: u16) -> Target {
        Target {
            sandbox: sandbox.into(),
            port,
            by_header: false,
        }
    }

    #[test]
    fn host_labels() {
        assert_eq!(by_host("web.sbx.example.com").unwrap(), t("web", 9501));
        assert_eq!(by_host("8080-web.sbx.example.com").unwrap(), t("web", 8080));
        assert_eq!(
            by_host("8080-web.sbx.example.com:443").unwrap(),
            t("web", 8080)
        );
        assert_eq!(
            by_host("8080-Web.SBX.example.com.").unwrap(),
            t("web", 8080)
        );
        assert_eq!(by_host("sbx-123.local").unwrap(), t("sbx-123", 9501));
        assert_eq!(
            by_host("3000-sbx-1-2.local:9000").unwrap(),
            t("sbx-1-2", 3000)
        );
    }

    #[test]
    fn bad_hosts() {
        for host in [
            "0-web.local",
            "65536-web.local",
            "08080-web.local",
            "99999999-web.local",
        ] {
            assert!(
                matches!(by_host(host), Err(RouteError::BadPort(_))),
                "{host}"
            );
        }
        assert!(matches!(by_host("a.b.local"), Err(RouteError::BadHost(_))));
        assert!(matches!(by_host("local"), Err(RouteError::ForeignHost(_))));
        assert!(matches!(by_host(".local"), Err(RouteError::BadHost(_))));
        assert!(matches!(
            by_host("web.example.org"),
            Err(RouteError::ForeignHost(_))
        ));
        assert!(matches!(by_host("xlocal"), Err(RouteError::ForeignHost(_))));
        assert!(matches!(by_host("[::1]:80"), Err(RouteError::BadHost(_))));
        assert!(matches!(
            by_host("web.local:99999"),
            Err(RouteError::BadHost(_))
        ));
        assert!(matches!(by_host("web.local:"), Err(RouteError::BadHost(_))));
        assert!(matches!(
            by_host("web.local:0"),
            Err(RouteError::BadHost(_))
        ));
        assert!(matches!(
            by_host("u@web.local"),
            Err(RouteError::BadHost(_))
        ));
        assert!(matches!(
            by_host("8080-.local"),
            Err(RouteError::BadName(_))
        ));
        assert!(matches!(by_host("we_b.local"), Err(RouteError::BadName(_))));
        let long = format!("{}.local", "a".repeat(64));
        assert!(matches!(
            by_host(&long),
            Err(RouteError::BadName(NameError::TooLong))
        ));
        let huge = format!("{}.local", "a.".repeat(200));
        assert!(by_host(&huge).is_err());
        assert_eq!(
            target(None, &HeaderMap::new(), &domains()),
            Err(RouteError::NoHost)
        );
    }

    #[test]
    fn nested_domains_route_whatever_their_order() {
        // Found by fuzz/fuzz_targets/proxy_route.rs: with `example.com`
        // listed before `sbx.example.com`, hosts under the latter were
        // refused as `BadHost("web.sbx")`.
        let nested = ["example.com", "sbx.example.com"].map(String::from);
        let reversed = ["sbx.example.com", "example.com"].map(String::from);
        for domains in [&nested, &reversed] {
            let route = |host: &str| target(Some(host), &HeaderMap::new(), domains.as_slice());
            assert_eq!(route("8080-web.sbx.example.com").unwrap(), t("web", 8080));
            assert_eq!(route("web.example.com").unwrap(), t("web", 9501));
            assert!(matches!(
                route("a.b.example.com"),
                Err(RouteError::BadHost(_))
            ));
            assert!(matches!(
                route("example.com"),
                Err(RouteError::ForeignHost(_))
            ));
        }
    }

    #[test]
    fn routing_headers_win() {
        let mut h = HeaderMap::new();
        h.insert(SANDBOX_ID_HEADER, HeaderValue::from_static("Web"));
        let got = target(Some("anything.example.org"), &h, &domains()).unwrap();
        assert_eq!(
            (got.sandbox.as_str(), got.port, got.by_header),
            ("web", 9501, true)
        );
        h.insert(SANDBOX_PORT_HEADER, HeaderValue::from_static("8080"));
        assert_eq!(target(None, &h, &domains()).unwrap().port, 8080);
        for bad in ["0", "65536", "08080", "x", ""] {
            h.insert(SANDBOX_PORT_HEADER, HeaderValue::from_str(bad).unwrap());
            assert_eq!(
                target(None, &h, &domains()),
                Err(RouteError::BadPortHeader),
                "{bad}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(SANDBOX_ID_HEADER, HeaderValue::from_static("8080-web"));
        assert!(target(None, &h, &domains()).is_err());
        let mut h = HeaderMap::new();
        h.append(SANDBOX_ID_HEADER, HeaderValue::from_static("a"));
        h.append(SANDBOX_ID_HEADER, HeaderValue::from_static("b"));
        assert_eq!(target(None, &h, &domains()), Err(RouteError::BadIdHeader));
    }

    #[test]
    fn names() {
        assert!(validate_name("web").is_ok());
        assert!(validate_name("sbx-123").is_ok());
        assert!(validate_name("123").is_ok());
        assert!(validate_name("1a-b").is_ok());
        assert_eq!(validate_name("123-web"), Err(NameError::PortPrefix));
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("-a"), Err(NameError::Charset));
        assert_eq!(validate_name("a-"), Err(NameError::Charset));
        assert_eq!(validate_name("A"), Err(NameError::Charset));
        assert_eq!(validate_name("a.b"), Err(NameError::Charset));
    }

    #[test]
    fn strict_ports() {
        assert_eq!(parse_port("1"), Some(1));
        assert_eq!(parse_port("65535"), Some(65535));
        for bad in ["0", "00", "080", "65536", "-1", "+1", "", "1 ", "123456"] {
            assert_eq!(parse_port(bad), None, "{bad}");
        }
    }
}
