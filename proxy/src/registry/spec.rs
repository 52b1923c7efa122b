//! A sandbox entry as the admin API takes it, validated field by field.

use std::net::SocketAddr;
use std::path::PathBuf;

use sbx_proto::auth::ForwardedAuthKey;
use sbx_proto::policy::NetworkPolicy;
use serde::{Deserialize, Serialize};

use crate::route::{validate_name, AGENT_PORT};

/// Longest namespace, organization or project id.
const MAX_SCOPE_ID: usize = 128;

/// Lifecycle state, as the control plane reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    #[default]
    Running,
    Suspending,
    Suspended,
    Terminated,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Suspending => "suspending",
            Self::Suspended => "suspended",
            Self::Terminated => "terminated",
        }
    }
}

/// What an entry holds; also its form in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct SandboxSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub organization_id: String,
    pub project_id: String,
    /// The agent's management API, `<ip>:9501`.
    pub agent: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_auth_key_file: Option<PathBuf>,
    /// 64 hex characters; kept only in the state file (mode 0600), never
    /// shown by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_auth_key: Option<String>,
    #[serde(default)]
    pub exposed_ports: Vec<u16>,
    #[serde(default)]
    pub allow_unauthenticated_access: bool,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub auto_resume: bool,
    /// What the control plane gave the sandbox; shown by the sandbox API.
    #[serde(default)]
    pub resources: Resources,
    /// The egress policy in force, as netctl last accepted it through the
    /// sandbox API (`null`: none, all egress allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicy>,
    /// netctl's socket on this sandbox's host, when it is not the one in
    /// the proxy's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netctl_socket: Option<PathBuf>,
}

/// A sandbox's size, as the SDK's `SandboxInfo.resources` has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Resources {
    pub cpus: f64,
    pub memory_mb: i64,
    pub disk_mb: i64,
}

// `cpus` is a float, so equality is by value; NaN never gets in (serde_json
// has no NaN, and validate() refuses negative sizes).
impl Eq for Resources {}

// Bodies are objects, never arrays of fields (see `sbx_proto::json`).
sbx_proto::object_only!(SandboxSpec, Resources);

fn default_namespace() -> String {
    "default".into()
}

/// A field that failed validation: 400 naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        field,
        message: message.into(),
    }
}

impl SandboxSpec {
    /// Parses a PUT body; the error names the field at fault.
    pub fn from_json(body: &[u8]) -> Result<Self, SpecError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(&mut de).map_err(path_error)
    }

    /// Checks every field and puts `exposed_ports` in order. `id` is the
    /// entry's own id (it must be a valid name too).
    pub fn validate(&mut self, id: &str) -> Result<(), SpecError> {
        validate_name(id).map_err(|e| bad("id", format!("{id:?} {e}")))?;
        if let Some(name) = &self.name {
            validate_name(name).map_err(|e| bad("name", format!("{name:?} {e}")))?;
        }
        for (field, value) in [
            ("namespace", &self.namespace),
            ("organization_id", &self.organization_id),
            ("project_id", &self.project_id),
        ] {
            scope_id(field, value)?;
        }
        let ip = self.agent.ip();
        if ip.is_unspecified() || ip.is_multicast() || self.agent.port() == 0 {
            return Err(bad(
                "agent",
                format!("{} is not an address an agent can listen on", self.agent),
            ));
        }
        match (&self.forwarded_auth_key_file, &self.forwarded_auth_key) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "forwarded_auth_key",
                    "give forwarded_auth_key_file or forwarded_auth_key, not both",
                ))
            }
            (None, None) => {
                return Err(bad(
                    "forwarded_auth_key_file",
                    "one of forwarded_auth_key_file or forwarded_auth_key is required",
                ))
            }
            (None, Some(hex)) => {
                ForwardedAuthKey::from_hex_file_content(hex)
                    .map_err(|e| bad("forwarded_auth_key", e.to_string()))?;
            }
            (Some(path), None) => {
                if !path.is_absolute() {
                    return Err(bad("forwarded_auth_key_file", "must be an absolute path"));
                }
                read_key_file(path).map_err(|e| bad("forwarded_auth_key_file", e))?;
            }
        }
        let r = &self.resources;
        if !(r.cpus.is_finite() && r.cpus >= 0.0) || r.memory_mb < 0 || r.disk_mb < 0 {
            return Err(bad("resources", "sizes are zero or more"));
        }
        if let Some(policy) = &self.network_policy {
            policy
                .validate()
                .map_err(|e| bad("network_policy", e.to_string()))?;
        }
        if let Some(path) = &self.netctl_socket {
            if !path.is_absolute() {
                return Err(bad("netctl_socket", "must be an absolute path"));
            }
        }
        if let Some(port) = self.exposed_ports.iter().find(|p| **p == 0) {
            return Err(bad(
                "exposed_ports",
                format!("port {port} is out of range 1-65535"),
            ));
        }
        if self.exposed_ports.contains(&AGENT_PORT) {
            return Err(bad(
                "exposed_ports",
                format!("{AGENT_PORT} is the agent's port; it is never exposed"),
            ));
        }
        self.exposed_ports.sort_unstable();
        self.exposed_ports.dedup();
        Ok(())
    }

    /// The key, read now (a key file may be rotated; SIGHUP re-reads).
    pub fn load_key(&self) -> Result<ForwardedAuthKey, String> {
        match (&self.forwarded_auth_key, &self.forwarded_auth_key_file) {
            (Some(hex), _) => {
                ForwardedAuthKey::from_hex_file_content(hex).map_err(|e| e.to_string())
            }
            (None, Some(path)) => read_key_file(path),
            (None, None) => Err("no forwarded-auth key configured".into()),
        }
    }
}

impl SandboxSpec {
    /// A valid entry for unit tests: inline key, port 8080 exposed.
    #[cfg(test)]
    pub(crate) fn sample(name: Option<&str>, agent: &str) -> Self {
        Self {
            name: name.map(str::to_owned),
            namespace: "default".into(),
            organization_id: "o".into(),
            project_id: "p".into(),
            agent: agent.parse().expect("test address"),
            forwarded_auth_key_file: None,
            forwarded_auth_key: Some("ab".repeat(32)),
            exposed_ports: vec![8080],
            allow_unauthenticated_access: false,
            status: Status::Running,
            auto_resume: false,
            resources: Resources::default(),
            network_policy: None,
            netctl_socket: None,
        }
    }
}

/// A key file is 64 hex digits and a newline; the path comes from an admin
/// request, so a longer read is refused rather than let `/dev/zero` fill
/// the proxy's memory.
const MAX_KEY_FILE: u64 = 1024;

fn read_key_file(path: &std::path::Path) -> Result<ForwardedAuthKey, String> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_string(&mut text))
        .map_err(cannot)?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(format!(
            "{}: longer than {MAX_KEY_FILE} bytes, not a key file",
            path.display()
        ));
    }
    ForwardedAuthKey::from_hex_file_content(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn scope_id(field: &'static str, value: &str) -> Result<(), SpecError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_SCOPE_ID
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("{value:?} must be 1-{MAX_SCOPE_ID} characters of letters, digits, '-', '_' and '.'"),
        ))
    }
}

/// Applies a JSON merge patch (RFC 7386, top level) to a spec: a key set to
/// `null` returns to its default, others replace. The result is validated
/// by the caller like a PUT body.
pub fn apply_patch(
    spec: &SandboxSpec,
    patch: serde_json::Map<String, serde_json::Value>,
) -> Result<SandboxSpec, SpecError> {
    let mut value = serde_json::to_value(spec).map_err(|e| bad("body", e.to_string()))?;
    let serde_json::Value::Object(object) = &mut value else {
        return Err(bad("body", "internal: a spec is an object"));
    };
    for (key, new) in patch {
        // The two key sources exclude each other: setting one drops the other.
        match key.as_str() {
            "forwarded_auth_key_file" if !new.is_null() => {
                object.remove("forwarded_auth_key");
            }
            "forwarded_auth_key" if !new.is_null() => {
                object.remove("forwarded_auth_key_file");
            }
            _ => {}
        }
        if new.is_null() {
            object.remove(&key);
        } else {
            object.insert(key, new);
        }
    }
    serde_path_to_error::deserialize(value).map_err(path_error)
}

/// Serde's error with the path of the field it was reading.
fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> SpecError {
    let path = e.path().to_string();
    let message = e.into_inner().to_string();
    if path == "." || path.is_empty() {
        bad("body", message)
    } else {
        SpecError {
            field: "body",
            message: format!("`{path}`: {message}"),
        }
    }
}

/// An entry as the admin API shows it: never the key itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxView {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub namespace: String,
    pub organization_id: String,
    pub project_id: String,
    pub agent: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_auth_key_file: Option<PathBuf>,
    /// "file", "inline"; which source the key comes from.
    pub forwarded_auth_key_source: String,
    /// Why the key cannot be used, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_auth_key_error: Option<String>,
    pub exposed_ports: Vec<u16>,
    pub allow_unauthenticated_access: bool,
    pub status: Status,
    pub auto_resume: bool,
    pub resources: Resources,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netctl_socket: Option<PathBuf>,
}

impl SandboxView {
    pub fn new(id: &str, spec: &SandboxSpec, key_error: Option<String>) -> Self {
        Self {
            id: id.to_owned(),
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            organization_id: spec.organization_id.clone(),
            project_id: spec.project_id.clone(),
            agent: spec.agent,
            forwarded_auth_key_file: spec.forwarded_auth_key_file.clone(),
            forwarded_auth_key_source: if spec.forwarded_auth_key.is_some() {
                "inline".into()
            } else {
                "file".into()
            },
            forwarded_auth_key_error: key_error,
            exposed_ports: spec.exposed_ports.clone(),
            allow_unauthenticated_access: spec.allow_unauthenticated_access,
            status: spec.status,
            auto_resume: spec.auto_resume,
            resources: spec.resources,
            network_policy: spec.network_policy.clone(),
            netctl_socket: spec.netctl_socket.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Result<SandboxSpec, SpecError> {
        let body = format!(
            r#"{{"organization_id":"o","project_id":"p","agent":"10.0.0.2:9501","forwarded_auth_key":"{}"{extra}}}"#,
            "ab".repeat(32)
        );
        let mut s = SandboxSpec::from_json(body.as_bytes())?;
        s.validate("sbx-1")?;
        Ok(s)
    }

    #[test]
    fn objects_only_and_bounded_key_files() {
        // serde's derive also read an array of the fields in order.
        assert!(SandboxSpec::from_json(br#"["web"]"#).is_err());
        let err = spec(r#","resources":[1,2,3]"#).unwrap_err().to_string();
        assert!(err.contains("resources"), "{err}");
        let body = br#"{"organization_id":"o","project_id":"p","agent":"10.0.0.2:9501","forwarded_auth_key_file":"/dev/zero"}"#;
        let mut zero = SandboxSpec::from_json(body).unwrap();
        let err = zero.validate("sbx-1").unwrap_err().to_string();
        assert!(err.contains("not a key file"), "{err}");
    }

    #[test]
    fn stored_form_reads_back_exactly() {
        // Found by fuzz/fuzz_targets/proxy_spec.rs: without serde_json's
        // `float_roundtrip`, `cpus` came back from the state file one ULP off.
        let mut s = spec("").unwrap();
        s.resources.cpus = 1.111_111_111_111_111e44;
        let stored = serde_json::to_vec(&s).unwrap();
        assert_eq!(SandboxSpec::from_json(&stored).unwrap(), s);
    }

    #[test]
    fn accepts_and_normalises() {
        let s = spec(r#","exposed_ports":[8080,3000,8080],"name":"web""#).unwrap();
        assert_eq!(s.exposed_ports, vec![3000, 8080]);
        assert_eq!(s.namespace, "default");
        assert_eq!(s.status, Status::Running);
    }

    #[test]
    fn names_the_field() {
        let cases = [
            (r#","exposed_ports":[9501]"#, "exposed_ports"),
            (r#","exposed_ports":[0]"#, "exposed_ports"),
            (r#","exposed_ports":[65536]"#, "exposed_ports"),
            (r#","name":"8080-web""#, "name"),
            (r#","name":"Web""#, "name"),
            (r#","status":"sleeping""#, "status"),
            (r#","bogus":1"#, "bogus"),
            (r#","namespace":"a b""#, "namespace"),
            (r#","forwarded_auth_key_file":"/x""#, "forwarded_auth_key"),
        ];
        for (extra, field) in cases {
            let err = spec(extra).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
        let body = br#"{"organization_id":"o","project_id":"p","agent":"10.0.0.2:9501"}"#;
        let mut s = SandboxSpec::from_json(body).unwrap();
        assert_eq!(
            s.validate("x").unwrap_err().field,
            "forwarded_auth_key_file"
        );
        let body = br#"{"organization_id":"o","project_id":"p","agent":"0.0.0.0:9501","forwarded_auth_key_file":"/nonexistent"}"#;
        let mut s = SandboxSpec::from_json(body).unwrap();
        assert_eq!(s.validate("x").unwrap_err().field, "agent");
        let body = br#"{"organization_id":"o","project_id":"p","agent":"10.0.0.1:9501","forwarded_auth_key_file":"/nonexistent"}"#;
        let mut s = SandboxSpec::from_json(body).unwrap();
        assert_eq!(
            s.validate("x").unwrap_err().field,
            "forwarded_auth_key_file"
        );
        assert_eq!(spec("").unwrap().validate("9-x").unwrap_err().field, "id");
    }

    #[test]
    fn merge_patch() {
        let s = spec(r#","exposed_ports":[8080],"name":"web""#).unwrap();
        let patch = serde_json::json!({"exposed_ports": [3000], "name": null});
        let patched = apply_patch(&s, patch.as_object().unwrap().clone()).unwrap();
        assert_eq!(patched.exposed_ports, vec![3000]);
        assert_eq!(patched.name, None);
        assert_eq!(patched.agent, s.agent);
        let patch = serde_json::json!({"forwarded_auth_key_file": "/k"});
        let patched = apply_patch(&s, patch.as_object().unwrap().clone()).unwrap();
        assert_eq!(patched.forwarded_auth_key, None);
        let patch = serde_json::json!({"nope": 1});
        assert!(apply_patch(&s, patch.as_object().unwrap().clone()).is_err());
    }
}
