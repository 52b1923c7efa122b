//! The daemon's TOML configuration (`/etc/sbx-proxy/config.toml`).
//!
//! Unknown keys are an error, as in the agent and netctl: a misspelt limit
//! silently left at its default is worse than a refusal to start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/sbx-proxy/config.toml";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/sbx-proxy/admin.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sbx-proxy";
pub const DEFAULT_CREDENTIALS_FILE: &str = "/etc/sbx-proxy/credentials.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Domains sandboxes are reachable under (`<id>.<domain>`); `local` is
    /// what the Tensorlake SDK sends when its proxy URL is localhost.
    pub domains: Vec<String>,
    /// Plain HTTP/1.1 and h2c with prior knowledge: behind a load balancer
    /// that terminates TLS, or locally.
    #[serde(default)]
    pub listen_http: Option<SocketAddr>,
    /// TLS with ALPN `h2` and `http/1.1`.
    #[serde(default)]
    pub listen_https: Option<SocketAddr>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The sandbox API (SPEC 7), plain HTTP: meant for loopback or a private
    /// network behind the control plane's own TLS.
    #[serde(default = "default_listen_api")]
    pub listen_api: SocketAddr,
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// `embedded` (a file in `state_dir`, the default) or a Redis URL
    /// (`redis://host:6379/0`, `redis+unix:///run/redis.sock`): a registry
    /// shared by a fleet of proxies.
    #[serde(default = "default_registry")]
    pub registry: String,
    /// Key prefix in a shared Redis.
    #[serde(default = "default_registry_prefix")]
    pub registry_prefix: String,
    /// A shared registry's local cache re-reads an entry this often even if
    /// no change notice came (a safety net; notices apply at once).
    #[serde(default = "default_registry_cache_ttl")]
    pub registry_cache_ttl_secs: u64,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    #[serde(default)]
    pub api: ApiConfig,
}

/// `[api]`: the sandbox API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `SandboxClient.for_localhost` sends no credential: allow the
    /// `/v1/namespaces/{ns}` form without one. Refused at start unless
    /// `listen_api` is a loopback address.
    #[serde(default)]
    pub allow_unauthenticated_namespaces: bool,
    /// netctl's socket on this host, for sandboxes whose entry names none.
    #[serde(default)]
    pub netctl_socket: Option<PathBuf>,
    /// The public base of sandbox URLs (`https://sandbox.example.com`);
    /// default: https and the first domain that is not `local`, with the
    /// HTTPS listener's port when it is not 443.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// `[lifecycle]`: how suspended sandboxes are woken (SPEC 6).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// The control plane's hook: POST `{"sandbox_id", "action": "resume"|"suspend"}`.
    /// Without it, a suspended sandbox answers 503 at once.
    #[serde(default)]
    pub hook_url: Option<String>,
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_ms: u64,
    /// How long requests wait for a resume before 503 with `Retry-After`.
    #[serde(default = "default_resume_deadline")]
    pub resume_deadline_secs: u64,
    #[serde(default = "default_waiters_per_sandbox")]
    pub max_waiters_per_sandbox: usize,
    #[serde(default = "default_waiters")]
    pub max_waiters: usize,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            hook_url: None,
            hook_timeout_ms: default_hook_timeout(),
            resume_deadline_secs: default_resume_deadline(),
            max_waiters_per_sandbox: default_waiters_per_sandbox(),
            max_waiters: default_waiters(),
        }
    }
}

impl LifecycleConfig {
    pub fn hook_timeout(&self) -> Duration {
        Duration::from_millis(self.hook_timeout_ms)
    }
    pub fn resume_deadline(&self) -> Duration {
        Duration::from_secs(self.resume_deadline_secs)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[auth]`: where credentials are checked, and the forwarded auth minted
/// toward agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The embedded store: SHA-256 hashes of API keys, PATs and sessions.
    #[serde(default = "default_credentials_file")]
    pub credentials_file: PathBuf,
    /// When set, credentials are checked by this HTTP service instead.
    #[serde(default)]
    pub introspection_url: Option<String>,
    #[serde(default = "default_positive_ttl")]
    pub introspection_positive_ttl_secs: u64,
    #[serde(default = "default_negative_ttl")]
    pub introspection_negative_ttl_secs: u64,
    #[serde(default = "default_introspection_timeout")]
    pub introspection_timeout_ms: u64,
    #[serde(default = "default_introspection_cache")]
    pub introspection_cache_entries: usize,
    /// Lifetime of a forwarded-auth token; short, because each request gets
    /// a fresh one anyway.
    #[serde(default = "default_forwarded_ttl")]
    pub forwarded_auth_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            credentials_file: default_credentials_file(),
            introspection_url: None,
            introspection_positive_ttl_secs: default_positive_ttl(),
            introspection_negative_ttl_secs: default_negative_ttl(),
            introspection_timeout_ms: default_introspection_timeout(),
            introspection_cache_entries: default_introspection_cache(),
            forwarded_auth_ttl_secs: default_forwarded_ttl(),
        }
    }
}

/// `[limits]`: every buffer, queue and wait is bounded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Client connections across all listeners; more are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests in flight to one sandbox; more get 429.
    #[serde(default = "default_per_sandbox")]
    pub max_concurrent_requests_per_sandbox: usize,
    /// A request head (line and headers) larger than this is refused.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// A client must send a request's headers within this time, counted
    /// from when its connection waits for the next request: for HTTP/1.1
    /// this is also how long an idle keep-alive connection is kept.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// Connecting to an agent (TCP and the tunnel handshake).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Waiting for an upstream's response head; 504 after it.
    #[serde(default = "default_response_header_timeout")]
    pub response_header_timeout_secs: u64,
    /// Idle pooled upstream connections are closed after this. Short, and
    /// shorter than the client side: services often close idle keep-alive
    /// connections after about 5 s (Node.js, uvicorn), and a reconnect
    /// through a nearby agent costs well under a millisecond.
    #[serde(default = "default_upstream_idle")]
    pub upstream_idle_timeout_secs: u64,
    /// Client connections with no request in flight are closed after this
    /// (HTTP/2 mostly; HTTP/1.1 ones go at `header_read_timeout_secs`).
    #[serde(default = "default_client_idle")]
    pub client_idle_timeout_secs: u64,
    /// How long SIGTERM waits for requests in flight.
    #[serde(default = "default_drain")]
    pub drain_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_concurrent_requests_per_sandbox: default_per_sandbox(),
            max_header_bytes: default_max_header_bytes(),
            header_read_timeout_secs: default_header_read_timeout(),
            connect_timeout_ms: default_connect_timeout(),
            response_header_timeout_secs: default_response_header_timeout(),
            upstream_idle_timeout_secs: default_upstream_idle(),
            client_idle_timeout_secs: default_client_idle(),
            drain_timeout_secs: default_drain(),
        }
    }
}

impl Limits {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn response_header_timeout(&self) -> Duration {
        Duration::from_secs(self.response_header_timeout_secs)
    }
    pub fn upstream_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_idle_timeout_secs)
    }
    pub fn client_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.client_idle_timeout_secs)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// How sandbox URLs are spelled in API answers.
    pub fn public_urls(&self) -> Result<crate::api::PublicUrls, String> {
        if let Some(url) = &self.api.public_url {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| format!("`api.public_url` {url:?}: {e}"))?;
            let scheme = match uri.scheme_str() {
                Some("https") => "https",
                Some("http") => "http",
                _ => return Err(format!("`api.public_url` {url:?}: use http:// or https://")),
            };
            let domain = uri
                .host()
                .filter(|h| crate::route::validate_domain(h).is_ok())
                .ok_or_else(|| format!("`api.public_url` {url:?}: the host must be a domain"))?;
            return Ok(crate::api::PublicUrls {
                scheme,
                domain: domain.to_owned(),
                port: uri.port_u16(),
            });
        }
        let domain = self
            .domains
            .iter()
            .find(|d| d.as_str() != "local")
            .or_else(|| self.domains.first())
            .cloned()
            .unwrap_or_default();
        let (scheme, port) = match (self.listen_https, self.listen_http) {
            (Some(a), _) => ("https", (a.port() != 443).then_some(a.port())),
            (None, Some(a)) => ("http", (a.port() != 80).then_some(a.port())),
            (None, None) => ("https", None),
        };
        Ok(crate::api::PublicUrls {
            scheme,
            domain,
            port,
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.domains.is_empty() {
            return Err("`domains` must name at least one domain".into());
        }
        for domain in &self.domains {
            crate::route::validate_domain(domain)
                .map_err(|e| format!("`domains`: {domain:?}: {e}"))?;
        }
        if self.listen_http.is_none() && self.listen_https.is_none() {
            return Err("set `listen_http`, `listen_https` or both".into());
        }
        let registry = self.registry.as_str();
        if registry != "embedded"
            && !registry.starts_with("redis://")
            && !registry.starts_with("redis+unix://")
        {
            return Err(format!(
                "`registry` is \"embedded\" or a redis:// or redis+unix:// URL, not {:?}",
                registry.split('@').next_back().unwrap_or_default()
            ));
        }
        if self.registry_cache_ttl_secs == 0 {
            return Err("`registry_cache_ttl_secs` must be greater than 0".into());
        }
        if self.api.allow_unauthenticated_namespaces && !self.listen_api.ip().is_loopback() {
            return Err(format!(
                "`api.allow_unauthenticated_namespaces` is honoured only on a loopback `listen_api`, not {}",
                self.listen_api
            ));
        }
        if let Some(path) = &self.api.netctl_socket {
            if !path.is_absolute() {
                return Err("`api.netctl_socket` must be an absolute path".into());
            }
        }
        self.public_urls()?;
        if self.listen_https.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err("`listen_https` needs `tls_cert` and `tls_key`".into());
        }
        let l = &self.limits;
        let positive = [
            ("limits.max_connections", l.max_connections as u64),
            (
                "limits.max_concurrent_requests_per_sandbox",
                l.max_concurrent_requests_per_sandbox as u64,
            ),
            ("limits.max_header_bytes", l.max_header_bytes as u64),
            (
                "limits.header_read_timeout_secs",
                l.header_read_timeout_secs,
            ),
            ("limits.connect_timeout_ms", l.connect_timeout_ms),
            (
                "limits.response_header_timeout_secs",
                l.response_header_timeout_secs,
            ),
            (
                "limits.upstream_idle_timeout_secs",
                l.upstream_idle_timeout_secs,
            ),
            (
                "limits.client_idle_timeout_secs",
                l.client_idle_timeout_secs,
            ),
            (
                "auth.forwarded_auth_ttl_secs",
                self.auth.forwarded_auth_ttl_secs,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{name}` must be greater than 0"));
        }
        if l.max_header_bytes < 4096 {
            return Err("`limits.max_header_bytes` must be at least 4096".into());
        }
        if l.upstream_idle_timeout_secs >= l.client_idle_timeout_secs {
            return Err(
                "`limits.upstream_idle_timeout_secs` must be shorter than `limits.client_idle_timeout_secs`"
                    .into(),
            );
        }
        Ok(())
    }
}

fn default_registry() -> String {
    "embedded".into()
}
fn default_registry_prefix() -> String {
    "sbx-proxy".into()
}
fn default_registry_cache_ttl() -> u64 {
    30
}
fn default_listen_api() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8900))
}
fn default_hook_timeout() -> u64 {
    5000
}
fn default_resume_deadline() -> u64 {
    30
}
fn default_waiters_per_sandbox() -> usize {
    1000
}
fn default_waiters() -> usize {
    10_000
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ADMIN_SOCKET)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_credentials_file() -> PathBuf {
    PathBuf::from(DEFAULT_CREDENTIALS_FILE)
}
fn default_positive_ttl() -> u64 {
    30
}
fn default_negative_ttl() -> u64 {
    5
}
fn default_introspection_timeout() -> u64 {
    2000
}
fn default_introspection_cache() -> usize {
    100_000
}
fn default_forwarded_ttl() -> u64 {
    60
}
fn default_max_connections() -> usize {
    100_000
}
fn default_per_sandbox() -> usize {
    1024
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_header_read_timeout() -> u64 {
    10
}
fn default_connect_timeout() -> u64 {
    3000
}
fn default_response_header_timeout() -> u64 {
    120
}
fn default_upstream_idle() -> u64 {
    4
}
fn default_client_idle() -> u64 {
    75
}
fn default_drain() -> u64 {
    10
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse("domains = [\"sbx.example.com\"]\nlisten_http = \"127.0.0.1:8080\"").unwrap();
        assert_eq!(c.limits.max_header_bytes, 65536);
        assert_eq!(c.admin_socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
    }

    #[test]
    fn refuses_bad_configs() {
        let cases = [
            ("domains = []\nlisten_http = \"127.0.0.1:1\"", "domains"),
            ("domains = [\"a\"]", "listen_http"),
            ("domains = [\"a\"]\nlisten_https = \"127.0.0.1:1\"", "tls_cert"),
            ("domains = [\"a\"]\nlisten_http = \"127.0.0.1:1\"\nbogus = 1", "bogus"),
            (
                "domains = [\"a\"]\nlisten_http = \"127.0.0.1:1\"\n[limits]\nconnect_timeout_ms = 0",
                "connect_timeout_ms",
            ),
            (
                "domains = [\"a\"]\nlisten_http = \"127.0.0.1:1\"\n[limits]\nupstream_idle_timeout_secs = 200",
                "upstream_idle_timeout_secs",
            ),
            ("domains = [\"-bad\"]\nlisten_http = \"127.0.0.1:1\"", "domains"),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
