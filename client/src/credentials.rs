//! How the client proves itself to the agent: a direct bearer token, or a
//! forwarded-auth token minted from the shared key as the proxy would.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sbx_proto::auth::{ForwardedAuthKey, FORWARDED_AUTH_HEADER};

#[derive(Debug, Clone)]
pub enum Credentials {
    /// Nothing: the sandbox API's unauthenticated localhost mode.
    Anonymous,
    Bearer(String),
    /// Through sbx-proxy: an API key, and the sandbox named in the routing
    /// header (the URL is the proxy's).
    ViaProxy {
        api_key: String,
        sandbox: String,
    },
    Forwarded {
        key: ForwardedAuthKey,
        sandbox_id: String,
        ttl_secs: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path}: {source}")]
    Key {
        path: String,
        source: sbx_proto::auth::KeyError,
    },
    #[error("give either --token/--token-file, or --key-file with --sandbox-id")]
    Missing,
    #[error("--key-file needs --sandbox-id")]
    NoSandboxId,
    #[error("token must be visible ASCII without spaces")]
    BadToken,
    #[error("--via-proxy takes a sandbox id or name (lowercase letters, digits, '-')")]
    BadSandbox,
}

impl Credentials {
    pub fn from_args(
        token: Option<String>,
        token_file: Option<&Path>,
        key_file: Option<&Path>,
        sandbox_id: Option<String>,
        ttl_secs: u64,
    ) -> Result<Self, CredentialsError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        if let Some(path) = key_file {
            let key = ForwardedAuthKey::from_hex_file_content(&read(path)?).map_err(|source| {
                CredentialsError::Key {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            let sandbox_id = sandbox_id.ok_or(CredentialsError::NoSandboxId)?;
            return Ok(Self::Forwarded {
                key,
                sandbox_id,
                ttl_secs,
            });
        }
        let token = match (token, token_file) {
            (Some(t), _) => t,
            (None, Some(path)) => read(path)?.trim_end_matches(['\n', '\r']).to_owned(),
            (None, None) => return Err(CredentialsError::Missing),
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CredentialsError::BadToken);
        }
        Ok(Self::Bearer(token))
    }

    /// Sends the bearer token as an API key to sbx-proxy, routed to
    /// `sandbox` by header.
    pub fn via_proxy(self, sandbox: Option<String>) -> Result<Self, CredentialsError> {
        let Some(sandbox) = sandbox else {
            return Ok(self);
        };
        let valid = !sandbox.is_empty()
            && sandbox.len() <= 63
            && sandbox
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        match self {
            Self::Bearer(api_key) if valid => Ok(Self::ViaProxy { api_key, sandbox }),
            Self::Bearer(_) => Err(CredentialsError::BadSandbox),
            other => Ok(other),
        }
    }

    /// One request header line (`Name: value\r\n`), minted fresh.
    pub fn header_line(&self) -> String {
        match self {
            Self::Anonymous => String::new(),
            Self::Bearer(token) => format!("Authorization: Bearer {token}\r\n"),
            Self::ViaProxy { api_key, sandbox } => {
                format!("Authorization: Bearer {api_key}\r\nX-Tensorlake-Sandbox-Id: {sandbox}\r\n")
            }
            Self::Forwarded {
                key,
                sandbox_id,
                ttl_secs,
            } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let token = key.mint(sandbox_id, now + ttl_secs);
                format!("{FORWARDED_AUTH_HEADER}: {token}\r\n")
            }
        }
    }
}
