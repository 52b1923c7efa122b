//! The agent's address as given on the command line.

use std::fmt;

/// An agent base URL such as `http://127.0.0.1:9501`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUrl {
    pub host: String,
    pub port: u16,
    /// Path prefix before `/api/v1`, without a trailing slash (often empty).
    pub prefix: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("agent URL {0:?} must start with http:// or ws://")]
    Scheme(String),
    #[error("agent URL {0:?} uses TLS, which this build of sbx does not speak yet; reach the agent over http:// (for example through an SSH or kubectl port-forward)")]
    Tls(String),
    #[error("agent URL {0:?} has no host")]
    NoHost(String),
    #[error("agent URL {0:?} has an invalid port")]
    BadPort(String),
    #[error("agent URL {0:?} must not carry a query or fragment")]
    Query(String),
}

impl AgentUrl {
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        let lower = raw.to_ascii_lowercase();
        let rest = if lower.starts_with("http://") || lower.starts_with("ws://") {
            &raw[raw.find("://").map(|i| i + 3).unwrap_or(0)..]
        } else if lower.starts_with("https://") || lower.starts_with("wss://") {
            return Err(UrlError::Tls(raw.to_owned()));
        } else {
            return Err(UrlError::Scheme(raw.to_owned()));
        };
        if rest.contains(['?', '#']) {
            return Err(UrlError::Query(raw.to_owned()));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') || authority.is_empty() {
            return Err(UrlError::NoHost(raw.to_owned()));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError::NoHost(raw.to_owned()))?;
            (host.to_owned(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(UrlError::NoHost(raw.to_owned()));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| UrlError::BadPort(raw.to_owned()))?,
        };
        Ok(Self {
            host,
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The value of the `Host` header.
    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for AgentUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.host_header(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = AgentUrl::parse("http://127.0.0.1:9501").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("127.0.0.1", 9501, "")
        );
        let u = AgentUrl::parse("ws://[::1]:9501/sbx/abc/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("::1", 9501, "/sbx/abc")
        );
        assert_eq!(u.host_header(), "[::1]:9501");
        assert_eq!(AgentUrl::parse("http://agent").unwrap().port, 80);
    }

    #[test]
    fn refuses_bad_urls() {
        assert!(matches!(
            AgentUrl::parse("ftp://x"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            AgentUrl::parse("https://x"),
            Err(UrlError::Tls(_))
        ));
        assert!(matches!(
            AgentUrl::parse("http://:80"),
            Err(UrlError::NoHost(_))
        ));
        assert!(matches!(
            AgentUrl::parse("http://x:0"),
            Err(UrlError::BadPort(_))
        ));
        assert!(matches!(
            AgentUrl::parse("http://x:99999"),
            Err(UrlError::BadPort(_))
        ));
        assert!(matches!(
            AgentUrl::parse("http://x/?a=1"),
            Err(UrlError::Query(_))
        ));
        assert!(matches!(
            AgentUrl::parse("http://u@x"),
            Err(UrlError::NoHost(_))
        ));
    }
}
