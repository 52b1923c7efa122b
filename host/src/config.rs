//! `/etc/sbx-host/config.toml`: every key optional, unknown keys an error
//! (a typo must not silently fall back to a default on a root daemon).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/sbx-host/config.toml";
pub const DEFAULT_SOCKET: &str = "/run/sbx-host/sbx-host.sock";

/// The kernel command line every guest gets (`cryptomgr.notests`: the
/// crypto self-tests cost 0.4 s of a TCG boot). Nothing secret goes here:
/// it is readable by every process in the guest and in `ps` on the host.
pub const GUEST_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet cryptomgr.notests";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Which runtime runs a sandbox's guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// A QEMU `-M microvm` guest on netctl's tap.
    Microvm,
    /// The agent as a process in the sandbox's namespace (no VM at all).
    Process,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Microvm => "microvm",
            Self::Process => "process",
        }
    }
}

/// How QEMU accelerates guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when a probe guest runs on it, else TCG (logged).
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub netctl_socket: PathBuf,
    /// Where `scripts/build-image.sh --out` put the images: `<dir>/<name>/`.
    pub images_dir: PathBuf,
    /// The image a create without `image` gets.
    pub default_image: String,
    /// The runtime a create without `runtime` gets.
    pub default_runtime: RuntimeKind,
    /// A cgroup v2 directory of our own; each sandbox gets a child. Empty:
    /// `sbx-host` under the machine's cgroup v2 mount (`/sys/fs/cgroup`, or
    /// `/sys/fs/cgroup/unified` on a hybrid layout).
    pub cgroup_dir: PathBuf,
    /// From the VMM's start to the agent's first health answer.
    pub boot_timeout_secs: u64,
    /// Resolvers the guest is told to use. Empty: the host's
    /// `/etc/resolv.conf` (loopback resolvers skipped: a guest cannot reach
    /// them). With domain rules netctl answers the guest's DNS whatever
    /// address it asks.
    pub guest_dns: Vec<Ipv4Addr>,
    /// Console and agent logs are cut to their last half past this size.
    pub log_max_bytes: u64,
    pub log_format: LogFormat,
    pub capacity: Capacity,
    pub microvm: MicrovmConfig,
    pub process: ProcessConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            state_dir: "/var/lib/sbx-host".into(),
            netctl_socket: "/run/netctl/netctl.sock".into(),
            images_dir: "/var/lib/sbx-host/images".into(),
            default_image: "default".into(),
            default_runtime: RuntimeKind::Microvm,
            cgroup_dir: PathBuf::new(),
            boot_timeout_secs: 60,
            guest_dns: Vec::new(),
            log_max_bytes: 1 << 20,
            log_format: LogFormat::Text,
            capacity: Capacity::default(),
            microvm: MicrovmConfig::default(),
            process: ProcessConfig::default(),
        }
    }
}

/// What this host offers sandboxes. 0: measured from the machine.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    pub cpus: f64,
    pub memory_mb: u64,
    /// At most this many sandboxes, whatever their size (0: no bound but
    /// cpus and memory).
    pub max_sandboxes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MicrovmConfig {
    pub qemu: PathBuf,
    pub accel: AccelChoice,
    /// How long the KVM probe guest may take to print its first line.
    pub kvm_probe_timeout_ms: u64,
    /// QEMU drops to this user after opening its files, tap and /dev/kvm
    /// (`-runas`). Empty: it stays root (development only).
    pub user: String,
    /// QEMU's seccomp filter (`-sandbox on,obsolete=deny,spawn=deny`): no
    /// exec or fork of other programs, no obsolete system calls.
    pub seccomp: bool,
}

impl Default for MicrovmConfig {
    fn default() -> Self {
        Self {
            qemu: "qemu-system-x86_64".into(),
            accel: AccelChoice::Auto,
            kvm_probe_timeout_ms: 3000,
            user: String::new(),
            seccomp: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    pub agent: PathBuf,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            agent: "/usr/sbin/sbx-agent".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path`; a missing file is the defaults only when the path was
    /// not asked for explicitly.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (key, p) in [
            ("state_dir", &self.state_dir),
            ("images_dir", &self.images_dir),
            ("socket", &self.socket),
            ("netctl_socket", &self.netctl_socket),
        ] {
            if !p.is_absolute() {
                return bad(format!("{key} {}: must be an absolute path", p.display()));
            }
        }
        if !self.cgroup_dir.as_os_str().is_empty() && !self.cgroup_dir.is_absolute() {
            return bad(format!(
                "cgroup_dir {}: must be an absolute path",
                self.cgroup_dir.display()
            ));
        }
        if crate::image::validate_name(&self.default_image).is_err() {
            return bad(format!(
                "default_image {:?}: not an image name",
                self.default_image
            ));
        }
        if !(1..=3600).contains(&self.boot_timeout_secs) {
            return bad("boot_timeout_secs: 1..3600".into());
        }
        if self.log_max_bytes < 4096 {
            return bad("log_max_bytes: at least 4096".into());
        }
        if self.capacity.cpus < 0.0 || !self.capacity.cpus.is_finite() {
            return bad("capacity.cpus: a non-negative number".into());
        }
        if !self.microvm.user.is_empty()
            && !self
                .microvm
                .user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad(format!(
                "microvm.user {:?}: not a user name",
                self.microvm.user
            ));
        }
        Ok(())
    }

    pub fn boot_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.boot_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_an_error() {
        let e = toml::from_str::<Config>("sokcet = \"/x\"").unwrap_err();
        assert!(e.to_string().contains("sokcet"), "{e}");
        let e = toml::from_str::<Config>("[microvm]\naccell = \"kvm\"").unwrap_err();
        assert!(e.to_string().contains("accell"), "{e}");
    }

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
        let c: Config =
            toml::from_str("default_runtime = \"process\"\n[microvm]\naccel = \"tcg\"").unwrap();
        assert_eq!(c.default_runtime, RuntimeKind::Process);
        assert_eq!(c.microvm.accel, AccelChoice::Tcg);
    }

    #[test]
    fn relative_paths_and_bad_values_are_refused() {
        let c: Config = toml::from_str("state_dir = \"var/lib\"").unwrap();
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("boot_timeout_secs = 0").unwrap();
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("[microvm]\nuser = \"a b\"").unwrap();
        assert!(c.validate().is_err());
    }
}
