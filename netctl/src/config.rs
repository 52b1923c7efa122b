//! The daemon's TOML configuration (`/etc/netctl/config.toml`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::ingress::IngressConfig;
use crate::ruleset::{MarkBits, Refusal};

/// Link-local (including cloud metadata at 169.254.169.254): a sandbox
/// never needs it and it is the classic way out of one.
pub const DEFAULT_ALWAYS_DENY: [&str; 2] = ["169.254.0.0/16", "fe80::/10"];

/// Where a microVM guest lives behind its tap: a /30 outside the default
/// pool (QEMU's user networking uses 10.0.2.0/24 the same way: a private
/// network every guest sees alike).
pub const DEFAULT_GUEST_IPV4: &str = "10.0.2.2/30";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Destinations refused whatever a policy says. CIDRs or addresses.
    #[serde(default = "default_always_deny")]
    pub always_deny: Vec<String>,
    /// `reject` (fast failure, the default) or `drop`.
    #[serde(default)]
    pub refusal: Refusal,
    /// The nft binary.
    #[serde(default = "default_nft")]
    pub nft: String,
    /// Seconds a sandbox namespace's long-lived `nft` stays open unused
    /// (it makes applies several times faster; see `nft::session`). 0:
    /// one `nft` per change instead.
    #[serde(default = "default_nft_session_idle_secs")]
    pub nft_session_idle_secs: u64,
    /// The most sandbox namespaces with such an nft at once (each holds
    /// about 2 MB once used); the least recently used beyond it are closed.
    #[serde(default = "default_nft_sessions_max")]
    pub nft_sessions_max: usize,
    #[serde(default)]
    pub dns: DnsConfig,
    /// Sandboxes re-applied at once on start.
    #[serde(default = "default_reconcile_concurrency")]
    pub reconcile_concurrency: usize,
    /// Namespaces, veth pairs and addresses netctl makes for sandboxes
    /// created with a `setup` section.
    #[serde(default)]
    pub setup: SetupConfig,
    /// Who may open connections into a sandbox, and to which port.
    #[serde(default)]
    pub ingress: IngressConfig,
    /// Judging each connection once per policy generation.
    #[serde(default)]
    pub fast_path: FastPathConfig,
}

/// `[fast_path]`: see `ruleset::generation`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastPathConfig {
    /// The ct mark bits netctl records generations in (contiguous, at
    /// least 2). Narrow it if something else in the sandboxes' namespaces
    /// uses ct marks; fewer bits wrap (and sweep) sooner.
    #[serde(default = "default_ct_mark_mask")]
    pub ct_mark_mask: u32,
    /// The conntrack binary (conntrack-tools), which clears the marks when
    /// generations wrap.
    #[serde(default = "default_conntrack")]
    pub conntrack: String,
}

impl Default for FastPathConfig {
    fn default() -> Self {
        Self {
            ct_mark_mask: default_ct_mark_mask(),
            conntrack: default_conntrack(),
        }
    }
}

impl FastPathConfig {
    pub fn mark_bits(&self) -> Result<MarkBits, String> {
        MarkBits::new(self.ct_mark_mask).map_err(|e| format!("fast_path.{e}"))
    }
}

fn default_ct_mark_mask() -> u32 {
    u32::MAX
}
fn default_conntrack() -> String {
    "conntrack".to_owned()
}

/// `[setup]`; validated into a [`crate::setup::Layout`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupConfig {
    /// Namespace name = prefix + sandbox id.
    #[serde(default = "default_netns_prefix")]
    pub netns_prefix: String,
    /// Where namespaces are bind-mounted (`ip netns` looks in /run/netns).
    #[serde(default = "default_netns_dir")]
    pub netns_dir: PathBuf,
    /// Host end of a veth = prefix + slot number.
    #[serde(default = "default_host_iface_prefix")]
    pub host_iface_prefix: String,
    /// One /30 per sandbox.
    #[serde(default = "default_ipv4_pool")]
    pub ipv4_pool: String,
    /// One /64 per sandbox; empty disables IPv6.
    #[serde(default = "default_ipv6_pool")]
    pub ipv6_pool: String,
    /// Host interface the pools are masqueraded out of; empty: none (the
    /// sandboxes then reach only the host).
    #[serde(default)]
    pub uplink: String,
    /// Name of the tap device made inside a namespace on request.
    #[serde(default = "default_tap_name")]
    pub tap_name: String,
    /// The address (and prefix) of the microVM guest behind a tap: the
    /// same in every sandbox, so a guest snapshot runs in any of them. The
    /// tap gets the other host address of that network (the guest's
    /// gateway); the sandbox's namespace translates to and from its own
    /// address (see `setup::guest_table`).
    #[serde(default = "default_guest_ipv4")]
    pub guest_ipv4: String,
}

impl Default for SetupConfig {
    fn default() -> Self {
        Self {
            netns_prefix: default_netns_prefix(),
            netns_dir: default_netns_dir(),
            host_iface_prefix: default_host_iface_prefix(),
            ipv4_pool: default_ipv4_pool(),
            ipv6_pool: default_ipv6_pool(),
            uplink: String::new(),
            tap_name: default_tap_name(),
            guest_ipv4: default_guest_ipv4(),
        }
    }
}

fn default_netns_prefix() -> String {
    "sbx-".to_owned()
}
fn default_netns_dir() -> PathBuf {
    PathBuf::from("/run/netns")
}
fn default_host_iface_prefix() -> String {
    "sbxh".to_owned()
}
fn default_ipv4_pool() -> String {
    "10.200.0.0/16".to_owned()
}
fn default_ipv6_pool() -> String {
    "fd00:5b::/48".to_owned()
}
fn default_tap_name() -> String {
    "tap0".to_owned()
}
fn default_guest_ipv4() -> String {
    DEFAULT_GUEST_IPV4.to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Upstream servers netctl resolves names with. Empty: the host's
    /// resolv.conf.
    #[serde(default)]
    pub upstreams: Vec<IpAddr>,
    /// TTL clamps, in seconds: a record is re-resolved no sooner than
    /// `min_ttl` and no later than `max_ttl` after the last answer.
    #[serde(default = "default_min_ttl")]
    pub min_ttl: u64,
    #[serde(default = "default_max_ttl")]
    pub max_ttl: u64,
    /// Seconds an address stays in a set after it dropped out of the
    /// answers: clients keep using cached answers for a while.
    #[serde(default = "default_grace")]
    pub grace: u64,
    /// Timeout of one lookup, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Resolvers the sandbox may query on port 53 when its `allow_out`
    /// names a domain (so it can resolve the names it is allowed to reach).
    /// Empty: the same servers netctl uses.
    #[serde(default)]
    pub sandbox_resolvers: Vec<IpAddr>,
    /// Whether to open port 53 to those resolvers at all (only without
    /// `forward`).
    #[serde(default = "default_true")]
    pub allow_sandbox_queries: bool,
    /// Answer a sandbox's DNS with netctl's forwarder when its policy names
    /// a domain (SPEC 4): answers drive the allow sets, denied names get
    /// NXDOMAIN, DNS over TLS is refused.
    #[serde(default = "default_true")]
    pub forward: bool,
    /// The forwarder's port inside each sandbox's namespace (the sandbox's
    /// port-53 traffic is redirected there).
    #[serde(default = "default_forwarder_port")]
    pub forwarder_port: u16,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
            grace: default_grace(),
            timeout_ms: default_timeout_ms(),
            sandbox_resolvers: Vec::new(),
            allow_sandbox_queries: true,
            forward: true,
            forwarder_port: default_forwarder_port(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            always_deny: default_always_deny(),
            refusal: Refusal::default(),
            nft: default_nft(),
            nft_session_idle_secs: default_nft_session_idle_secs(),
            nft_sessions_max: default_nft_sessions_max(),
            dns: DnsConfig::default(),
            reconcile_concurrency: default_reconcile_concurrency(),
            setup: SetupConfig::default(),
            ingress: IngressConfig::default(),
            fast_path: FastPathConfig::default(),
        }
    }
}

fn default_always_deny() -> Vec<String> {
    DEFAULT_ALWAYS_DENY
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}
fn default_nft() -> String {
    "nft".to_owned()
}

fn default_nft_session_idle_secs() -> u64 {
    10
}

fn default_nft_sessions_max() -> usize {
    16
}
fn default_min_ttl() -> u64 {
    5
}
fn default_max_ttl() -> u64 {
    300
}
fn default_grace() -> u64 {
    120
}
fn default_timeout_ms() -> u64 {
    2_000
}
fn default_forwarder_port() -> u16 {
    53053
}
fn default_true() -> bool {
    true
}
fn default_reconcile_concurrency() -> usize {
    8
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("config {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Loads the file; a missing file at the default path means defaults.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: shown,
                    source,
                })
            }
        };
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: shown.clone(),
            source: Box::new(source),
        })?;
        config
            .always_deny_nets()
            .map_err(|message| ConfigError::Invalid {
                path: shown.clone(),
                message,
            })?;
        config
            .ingress
            .validated()
            .map_err(|message| ConfigError::Invalid {
                path: shown.clone(),
                message,
            })?;
        config
            .fast_path
            .mark_bits()
            .map_err(|message| ConfigError::Invalid {
                path: shown.clone(),
                message,
            })?;
        crate::setup::Layout::from_config(&config.setup).map_err(|message| {
            ConfigError::Invalid {
                path: shown.clone(),
                message,
            }
        })?;
        if config.dns.forwarder_port == 0 || config.dns.forwarder_port == 53 {
            return Err(ConfigError::Invalid {
                path: shown,
                message: "dns.forwarder_port must be a port other than 0 and 53".into(),
            });
        }
        if config.dns.min_ttl == 0 || config.dns.min_ttl > config.dns.max_ttl {
            return Err(ConfigError::Invalid {
                path: shown,
                message: "dns.min_ttl must be at least 1 and at most dns.max_ttl".into(),
            });
        }
        Ok(config)
    }

    /// The always-deny list, parsed with the same strict rules as policies.
    pub fn always_deny_nets(&self) -> Result<Vec<IpNet>, String> {
        parse_nets("always_deny", &self.always_deny)
    }

    pub fn lookup_timeout(&self) -> Duration {
        Duration::from_millis(self.dns.timeout_ms.max(1))
    }
}

/// A config list of addresses and CIDRs (`field[i]` named in errors),
/// parsed with the same strict rules as policy entries; names refused.
pub fn parse_nets(field: &str, entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .enumerate()
        .map(
            |(i, entry)| match sbx_proto::policy::parse_destination(entry) {
                Ok(sbx_proto::policy::Destination::Net(net)) => Ok(net),
                Ok(
                    sbx_proto::policy::Destination::Domain(_)
                    | sbx_proto::policy::Destination::Wildcard(_),
                ) => Err(format!(
                    "{field}[{i}] {entry:?}: only addresses and CIDRs are allowed"
                )),
                Err(e) => Err(format!("{field}[{i}] {entry:?}: {e}")),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.always_deny, DEFAULT_ALWAYS_DENY);
        assert!(toml::from_str::<Config>("always_dney = []").is_err());
        let c: Config =
            toml::from_str("refusal = \"drop\"\n[dns]\nmin_ttl = 1\ngrace = 2\n").unwrap();
        assert_eq!(c.refusal, Refusal::Drop);
        assert_eq!((c.dns.min_ttl, c.dns.grace), (1, 2));
    }

    #[test]
    fn fast_path_mask_is_checked() {
        let c: Config = toml::from_str("[fast_path]\nct_mark_mask = 0x00ff0000\n").unwrap();
        assert_eq!(c.fast_path.mark_bits().unwrap().max(), 255);
        let path = std::env::temp_dir().join(format!("netctl-config-{}.toml", std::process::id()));
        std::fs::write(&path, "[fast_path]\nct_mark_mask = 0x5\n").unwrap();
        let e = Config::load(&path, true).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(
            e.contains("fast_path.ct_mark_mask 0x5: the bits must be contiguous"),
            "{e}"
        );
    }
}
