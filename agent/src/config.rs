//! Agent configuration: defaults, then the TOML file, then environment
//! variables and flags (clap merges those two), each overriding the last.
//!
//! Secrets are read from files at startup; a named file that is missing,
//! unreadable, malformed or readable by others is a startup error, never a
//! silent "no auth".

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sbx_proto::auth::{ForwardedAuthKey, DEFAULT_CLOCK_SKEW_SECS};
use sbx_proto::tunnel::{DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_TUNNELS};
use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/sbx-agent/config.toml";
pub const DEFAULT_KEY_FILE: &str = "/etc/sbx-agent/forwarded-auth.key";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9501";

/// Shortest direct bearer token accepted: shorter ones are guessable.
const MIN_BEARER_TOKEN_LEN: usize = 16;
/// Largest secret file read; anything bigger is not one of ours.
const MAX_SECRET_FILE_LEN: u64 = 4096;
/// Sandbox ids are embedded in signed strings and logs: keep them tame.
const MAX_SANDBOX_ID_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Command line; every option may also come from the environment.
#[derive(Debug, Parser)]
#[command(
    name = "sbx-agent",
    version,
    about = "Sandbox agent: management API and TCP tunnel"
)]
pub struct Cli {
    /// TOML configuration file. The default path may be absent; a path given
    /// explicitly must exist.
    #[arg(long, env = "SBX_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:9501].
    #[arg(long, env = "SBX_AGENT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// This sandbox's id, bound into every forwarded-auth token.
    #[arg(long, env = "SBX_AGENT_SANDBOX_ID")]
    pub sandbox_id: Option<String>,
    /// File with the 32-byte forwarded-auth key as 64 hex characters.
    #[arg(long, env = "SBX_AGENT_FORWARDED_AUTH_KEY_FILE")]
    pub forwarded_auth_key_file: Option<PathBuf>,
    /// File with a token for direct `Authorization: Bearer` access (opt-in).
    #[arg(long, env = "SBX_AGENT_BEARER_TOKEN_FILE")]
    pub bearer_token_file: Option<PathBuf>,
    /// Most tunnels open at once; more are refused with 429.
    #[arg(long, env = "SBX_AGENT_MAX_TUNNELS")]
    pub max_tunnels: Option<usize>,
    /// Largest WebSocket frame payload accepted, in bytes.
    #[arg(long, env = "SBX_AGENT_MAX_FRAME_SIZE")]
    pub max_frame_size: Option<usize>,
    /// Most processes running at once; more are refused with 429.
    #[arg(long, env = "SBX_AGENT_MAX_PROCESSES")]
    pub max_processes: Option<usize>,
    /// Most PTY sessions at once; more are refused with 429.
    #[arg(long, env = "SBX_AGENT_MAX_PTY_SESSIONS")]
    pub max_pty_sessions: Option<usize>,
    /// Memory limit of each process started through the API, in bytes
    /// (its own cgroup; beyond it the OOM killer ends it). Default: none.
    #[arg(long, env = "SBX_AGENT_PROCESS_MEMORY_MAX_BYTES")]
    pub process_memory_max_bytes: Option<u64>,
    /// Log format.
    #[arg(long, env = "SBX_AGENT_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The TOML file. Unknown keys are refused so a typo never goes unnoticed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    sandbox_id: Option<String>,
    forwarded_auth_key_file: Option<PathBuf>,
    bearer_token_file: Option<PathBuf>,
    clock_skew_secs: Option<u64>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    tunnel: FileTunnel,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_tunnels: Option<usize>,
    max_frame_size: Option<usize>,
    max_connections: Option<usize>,
    max_processes: Option<usize>,
    max_finished_processes: Option<usize>,
    finished_retention_secs: Option<u64>,
    output_max_lines: Option<usize>,
    output_max_bytes: Option<usize>,
    max_pty_sessions: Option<usize>,
    pty_pending_bytes: Option<usize>,
    process_memory_max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTunnel {
    ping_interval_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    connect_timeout_ms: Option<u64>,
}

/// Resolved configuration with secrets loaded.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub sandbox_id: String,
    pub forwarded_auth_key: ForwardedAuthKey,
    pub bearer_token: Option<String>,
    pub clock_skew_secs: u64,
    pub log_format: LogFormat,
    pub max_tunnels: usize,
    pub max_frame_size: usize,
    pub max_connections: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub limits: Limits,
}

/// Bounds on what API clients can make the agent hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Processes running at once (429 `TOO_MANY_PROCESSES` beyond).
    pub max_processes: usize,
    /// Finished processes remembered for `GET /processes`; oldest forgotten first.
    pub max_finished_processes: usize,
    /// How long a finished process is remembered.
    pub finished_retention: Duration,
    /// Captured lines kept per process; oldest dropped first.
    pub output_max_lines: usize,
    /// Captured bytes kept per process; oldest lines dropped first.
    pub output_max_bytes: usize,
    /// PTY sessions at once (429 `TOO_MANY_SESSIONS` beyond).
    pub max_pty_sessions: usize,
    /// PTY output kept while no client is attached and ready.
    pub pty_pending_bytes: usize,
    /// Memory limit of each process's cgroup; None for no limit but the
    /// VM's. A limit that cannot be enforced stops the agent at startup.
    pub process_memory_max: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_processes: 1024,
            max_finished_processes: 256,
            finished_retention: Duration::from_secs(3600),
            output_max_lines: 10_000,
            output_max_bytes: 8 * 1024 * 1024,
            max_pty_sessions: 64,
            pty_pending_bytes: 1024 * 1024,
            process_memory_max: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    ParseConfig {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("sandbox_id is required (config file, --sandbox-id or SBX_AGENT_SANDBOX_ID)")]
    MissingSandboxId,
    #[error("sandbox_id {0:?} is invalid: use 1-128 characters from [A-Za-z0-9._-]")]
    BadSandboxId(String),
    #[error("cannot read {what} {path}: {source}")]
    ReadSecret {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is accessible by group or others (mode {mode:o}); chmod 600 it")]
    SecretPermissions {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{what} {path} is larger than {MAX_SECRET_FILE_LEN} bytes")]
    SecretTooLarge { what: &'static str, path: PathBuf },
    #[error("forwarded-auth key file {path}: {source}")]
    BadKey {
        path: PathBuf,
        source: sbx_proto::auth::KeyError,
    },
    #[error("bearer token in {path} must be at least {MIN_BEARER_TOKEN_LEN} characters of visible ASCII")]
    WeakBearerToken { path: PathBuf },
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

impl Config {
    /// Builds the configuration from the command line, the environment and
    /// the config file, and loads the secrets it names.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file_config(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                read_file_config(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => FileConfig::default(),
        };

        let sandbox_id = cli
            .sandbox_id
            .clone()
            .or(file.sandbox_id)
            .ok_or(ConfigError::MissingSandboxId)?;
        validate_sandbox_id(&sandbox_id)?;

        let key_path = cli
            .forwarded_auth_key_file
            .clone()
            .or(file.forwarded_auth_key_file)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE));
        let key_text = read_secret("forwarded-auth key file", &key_path)?;
        let forwarded_auth_key =
            ForwardedAuthKey::from_hex_file_content(&key_text).map_err(|source| {
                ConfigError::BadKey {
                    path: key_path.clone(),
                    source,
                }
            })?;

        let bearer_token = match cli.bearer_token_file.clone().or(file.bearer_token_file) {
            Some(path) => Some(load_bearer_token(&path)?),
            None => None,
        };

        let max_tunnels = cli
            .max_tunnels
            .or(file.limits.max_tunnels)
            .unwrap_or(DEFAULT_MAX_TUNNELS);
        let max_frame_size = cli
            .max_frame_size
            .or(file.limits.max_frame_size)
            .unwrap_or(DEFAULT_MAX_FRAME_SIZE);
        let max_connections = file.limits.max_connections.unwrap_or(max_tunnels + 1024);
        let ping_interval = Duration::from_secs(file.tunnel.ping_interval_secs.unwrap_or(30));
        let idle_timeout = Duration::from_secs(file.tunnel.idle_timeout_secs.unwrap_or(90));
        let connect_timeout =
            Duration::from_millis(file.tunnel.connect_timeout_ms.unwrap_or(10_000));
        let defaults = Limits::default();
        let limits = Limits {
            max_processes: cli
                .max_processes
                .or(file.limits.max_processes)
                .unwrap_or(defaults.max_processes),
            max_finished_processes: file
                .limits
                .max_finished_processes
                .unwrap_or(defaults.max_finished_processes),
            finished_retention: file
                .limits
                .finished_retention_secs
                .map(Duration::from_secs)
                .unwrap_or(defaults.finished_retention),
            output_max_lines: file
                .limits
                .output_max_lines
                .unwrap_or(defaults.output_max_lines),
            output_max_bytes: file
                .limits
                .output_max_bytes
                .unwrap_or(defaults.output_max_bytes),
            max_pty_sessions: cli
                .max_pty_sessions
                .or(file.limits.max_pty_sessions)
                .unwrap_or(defaults.max_pty_sessions),
            pty_pending_bytes: file
                .limits
                .pty_pending_bytes
                .unwrap_or(defaults.pty_pending_bytes),
            process_memory_max: cli
                .process_memory_max_bytes
                .or(file.limits.process_memory_max_bytes),
        };
        for (name, value) in [
            ("limits.max_processes", limits.max_processes as u128),
            ("limits.output_max_lines", limits.output_max_lines as u128),
            ("limits.output_max_bytes", limits.output_max_bytes as u128),
            ("limits.max_pty_sessions", limits.max_pty_sessions as u128),
            ("limits.pty_pending_bytes", limits.pty_pending_bytes as u128),
            (
                "limits.process_memory_max_bytes",
                limits.process_memory_max.map_or(1, u128::from),
            ),
            ("limits.max_tunnels", max_tunnels as u128),
            ("limits.max_frame_size", max_frame_size as u128),
            ("limits.max_connections", max_connections as u128),
            ("tunnel.ping_interval_secs", ping_interval.as_millis()),
            ("tunnel.idle_timeout_secs", idle_timeout.as_millis()),
            ("tunnel.connect_timeout_ms", connect_timeout.as_millis()),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }

        Ok(Self {
            listen: cli
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().unwrap_or_else(|_| unreachable!())),
            sandbox_id,
            forwarded_auth_key,
            bearer_token,
            clock_skew_secs: file.clock_skew_secs.unwrap_or(DEFAULT_CLOCK_SKEW_SECS),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            max_tunnels,
            max_frame_size,
            max_connections,
            ping_interval,
            idle_timeout,
            connect_timeout,
            limits,
        })
    }
}

fn read_file_config(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::ParseConfig {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

fn validate_sandbox_id(id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_SANDBOX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadSandboxId(id.chars().take(160).collect()))
    }
}

/// Reads a secret file that only its owner may access.
fn read_secret(what: &'static str, path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::ReadSecret {
        what,
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::SecretPermissions {
            what,
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_SECRET_FILE_LEN {
        return Err(ConfigError::SecretTooLarge {
            what,
            path: path.to_owned(),
        });
    }
    std::fs::read_to_string(path).map_err(read_err)
}

fn load_bearer_token(path: &Path) -> Result<String, ConfigError> {
    let text = read_secret("bearer token file", path)?;
    let token = text.trim_end_matches(['\n', '\r']);
    let visible = token.bytes().all(|b| b.is_ascii_graphic());
    if token.len() < MIN_BEARER_TOKEN_LEN || !visible {
        return Err(ConfigError::WeakBearerToken {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids() {
        assert!(validate_sandbox_id("sbx-01.a_b").is_ok());
        assert!(validate_sandbox_id("").is_err());
        assert!(validate_sandbox_id("a b").is_err());
        assert!(validate_sandbox_id("a.b\n").is_err());
        assert!(validate_sandbox_id(&"a".repeat(129)).is_err());
    }

    #[test]
    fn file_config_refuses_unknown_keys() {
        assert!(
            toml::from_str::<FileConfig>("sandbox_id = \"x\"\nlisten = \"127.0.0.1:1\"").is_ok()
        );
        assert!(toml::from_str::<FileConfig>("sandbox_idd = \"x\"").is_err());
        assert!(toml::from_str::<FileConfig>("[limits]\nmax_tunnel = 1").is_err());
        let limits: FileConfig = toml::from_str(
            "[limits]\nmax_processes = 10\nmax_pty_sessions = 2\noutput_max_lines = 5\npty_pending_bytes = 100\nprocess_memory_max_bytes = 1048576",
        )
        .unwrap();
        assert_eq!(limits.limits.process_memory_max_bytes, Some(1 << 20));
        assert_eq!(limits.limits.max_processes, Some(10));
        assert_eq!(limits.limits.max_pty_sessions, Some(2));
    }
}
