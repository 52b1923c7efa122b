//! The embedded credential store: a TOML file of SHA-256 hashes, for one
//! proxy or a fleet that shares the file through configuration management.
//!
//! ```toml
//! [[api_key]]
//! sha256 = "<64 hex of SHA-256(key)>"
//! organization_id = "org-1"
//! project_id = "proj-1"
//! label = "ci"            # optional
//!
//! [[user]]
//! id = "alice"
//! projects = [{ organization_id = "org-1", project_id = "proj-1" }]
//!
//! [[personal_access_token]]
//! sha256 = "<hex>"
//! user = "alice"
//! label = "laptop"        # optional
//!
//! [[session]]
//! sha256 = "<hex>"
//! user = "alice"
//! expires_at = 1767225600 # unix seconds
//! ```
//!
//! Only hashes are stored, so the file does not hand out credentials if it
//! leaks; `sbx-proxy credentials` writes it and prints each new secret once.
//! An API key acts in its own project whatever the request says; a PAT or a
//! session acts in the project the request names, if its user is a member.
//! Unknown keys are an error, so a misspelt field cannot silently widen or
//! narrow access.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::credential::valid_context_value;
use super::{AuthError, Context, Credential, CredentialKind, CredentialStore, Principal, Verdict};

mod write;

pub use write::{add_api_key, add_pat, add_session, add_user, list, valid_id, Entry};

/// A credentials file larger than this is a mistake, not a credentials file.
const MAX_FILE_LEN: u64 = 16 << 20;

type Digest32 = [u8; 32];

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default, rename = "api_key")]
    api_keys: Vec<ApiKeyEntry>,
    #[serde(default, rename = "user")]
    users: Vec<UserEntry>,
    #[serde(default, rename = "personal_access_token")]
    pats: Vec<PatEntry>,
    #[serde(default, rename = "session")]
    sessions: Vec<SessionEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyEntry {
    sha256: String,
    organization_id: String,
    project_id: String,
    label: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    id: String,
    #[serde(default)]
    projects: Vec<ProjectEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectEntry {
    organization_id: String,
    project_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatEntry {
    sha256: String,
    user: String,
    label: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionEntry {
    sha256: String,
    user: String,
    expires_at: u64,
}

/// A stored record with the digest it is keyed by, so the lookup can
/// confirm the match in constant time.
struct Keyed<T> {
    digest: Digest32,
    value: T,
}

/// The parsed file, immutable once built: a reload builds a new one.
#[derive(Default)]
struct Tables {
    api_keys: HashMap<Digest32, Keyed<Principal>>,
    pats: HashMap<Digest32, Keyed<String>>,
    sessions: HashMap<Digest32, Keyed<(String, u64)>>,
    users: HashMap<String, HashSet<Principal>>,
}

/// The credentials file loaded in memory; [`CredentialStore::reload`]
/// re-reads it and swaps the tables atomically.
pub struct FileStore {
    path: PathBuf,
    tables: RwLock<Arc<Tables>>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let tables = read_tables(path)?;
        Ok(FileStore {
            path: path.to_owned(),
            tables: RwLock::new(Arc::new(tables)),
        })
    }

    fn snapshot(&self) -> Arc<Tables> {
        // A poisoned lock still holds a complete Arc: the swap is one store.
        Arc::clone(&self.tables.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn check(&self, credential: &Credential, context: &Context, now: u64) -> Verdict {
        let tables = self.snapshot();
        let digest = digest(credential.secret());
        let user = match credential.kind {
            CredentialKind::ApiKey => {
                return match find(&tables.api_keys, &digest) {
                    Some(principal) => Verdict::Granted(principal.clone()),
                    None => Verdict::Invalid,
                }
            }
            CredentialKind::PersonalAccessToken => match find(&tables.pats, &digest) {
                Some(user) => user,
                None => return Verdict::Invalid,
            },
            CredentialKind::Session => match find(&tables.sessions, &digest) {
                Some((user, expires_at)) if *expires_at > now => user,
                _ => return Verdict::Invalid,
            },
        };
        let (Some(org), Some(project)) = (&context.organization_id, &context.project_id) else {
            return Verdict::Invalid;
        };
        let wanted = Principal {
            organization_id: org.clone(),
            project_id: project.clone(),
        };
        match tables.users.get(user) {
            Some(projects) if projects.contains(&wanted) => Verdict::Granted(wanted),
            _ => Verdict::OutOfScope,
        }
    }
}

impl CredentialStore for FileStore {
    fn verify<'a>(
        &'a self,
        credential: &'a Credential,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<Verdict, AuthError>> {
        let verdict = self.check(credential, context, unix_now());
        Box::pin(std::future::ready(Ok(verdict)))
    }

    fn reload(&self) -> Result<(), AuthError> {
        let tables = read_tables(&self.path)?;
        tracing::info!(
            path = %self.path.display(),
            api_keys = tables.api_keys.len(),
            users = tables.users.len(),
            personal_access_tokens = tables.pats.len(),
            sessions = tables.sessions.len(),
            "credentials file reloaded"
        );
        *self.tables.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tables);
        Ok(())
    }
}

/// Looks a digest up. The map is keyed by SHA-256 of the secret, so probing
/// it (and its timing) tells an attacker only about digests of values they
/// chose, and steering a digest toward a stored one needs a preimage; the
/// final constant-time compare keeps the confirmation itself uniform.
fn find<'t, T>(map: &'t HashMap<Digest32, Keyed<T>>, digest: &Digest32) -> Option<&'t T> {
    let entry = map.get(digest)?;
    bool::from(entry.digest.ct_eq(digest)).then_some(&entry.value)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// SHA-256 of a secret: what the tables are keyed by.
fn digest(secret: &str) -> Digest32 {
    Sha256::digest(secret.as_bytes()).into()
}

/// SHA-256 of a secret in hex, as the file stores it.
fn sha256_hex(secret: &str) -> String {
    hex::encode(digest(secret))
}

fn file_error(path: &Path, reason: impl Into<String>) -> AuthError {
    AuthError::File {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Reads the file; `Ok(None)` when it does not exist.
fn read_text(path: &Path) -> Result<Option<String>, AuthError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(path, e.to_string())),
    };
    let meta = file
        .metadata()
        .map_err(|e| file_error(path, e.to_string()))?;
    if meta.mode() & 0o077 != 0 {
        // Hashes are not secrets, so operators may share the file; but it
        // still says who may act where, so say so.
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", meta.mode() & 0o777),
            "credentials file is readable or writable by group or others; 0600 is advised"
        );
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(file_error(
            path,
            format!("larger than {MAX_FILE_LEN} bytes"),
        ));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| file_error(path, e.to_string()))?;
    Ok(Some(text))
}

fn read_tables(path: &Path) -> Result<Tables, AuthError> {
    let text = read_text(path)?.ok_or_else(|| file_error(path, "no such file"))?;
    let (_, tables) = parse(path, &text)?;
    Ok(tables)
}

fn parse(path: &Path, text: &str) -> Result<(Document, Tables), AuthError> {
    let doc: Document = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .and_then(|span| text.as_bytes().get(..span.start))
            .map(|before| {
                format!(
                    "line {}: ",
                    before.iter().filter(|&&b| b == b'\n').count() + 1
                )
            });
        file_error(
            path,
            format!("{}{}", line.unwrap_or_default(), e.message().trim()),
        )
    })?;
    let tables = compile(&doc).map_err(|reason| file_error(path, reason))?;
    for (what, user) in doc
        .pats
        .iter()
        .map(|p| ("personal_access_token", &p.user))
        .chain(doc.sessions.iter().map(|s| ("session", &s.user)))
    {
        if !tables.users.contains_key(user) {
            tracing::warn!(path = %path.display(), user = %user, "a {what} names an unknown user");
        }
    }
    Ok((doc, tables))
}

fn compile(doc: &Document) -> Result<Tables, String> {
    let mut tables = Tables::default();
    for (i, e) in doc.api_keys.iter().enumerate() {
        let at = || format!("[[api_key]] #{}", i + 1);
        let principal =
            principal(&e.organization_id, &e.project_id).map_err(|r| format!("{}: {r}", at()))?;
        insert(&mut tables.api_keys, &e.sha256, principal, at)?;
    }
    for (i, u) in doc.users.iter().enumerate() {
        let at = || format!("[[user]] #{}", i + 1);
        if !valid_context_value(&u.id) {
            return Err(format!("{}: invalid id {:?}", at(), u.id));
        }
        let mut projects = HashSet::new();
        for p in &u.projects {
            projects.insert(
                principal(&p.organization_id, &p.project_id)
                    .map_err(|r| format!("{}: {r}", at()))?,
            );
        }
        if tables.users.insert(u.id.clone(), projects).is_some() {
            return Err(format!("{}: duplicate user {:?}", at(), u.id));
        }
    }
    for (i, p) in doc.pats.iter().enumerate() {
        let at = || format!("[[personal_access_token]] #{}", i + 1);
        insert(&mut tables.pats, &p.sha256, p.user.clone(), at)?;
    }
    for (i, s) in doc.sessions.iter().enumerate() {
        let at = || format!("[[session]] #{}", i + 1);
        insert(
            &mut tables.sessions,
            &s.sha256,
            (s.user.clone(), s.expires_at),
            at,
        )?;
    }
    Ok(tables)
}

fn principal(org: &str, project: &str) -> Result<Principal, String> {
    for (what, value) in [("organization_id", org), ("project_id", project)] {
        if !valid_context_value(value) {
            return Err(format!("invalid {what} {value:?}"));
        }
    }
    Ok(Principal {
        organization_id: org.to_owned(),
        project_id: project.to_owned(),
    })
}

fn insert<T>(
    map: &mut HashMap<Digest32, Keyed<T>>,
    sha256: &str,
    value: T,
    at: impl Fn() -> String,
) -> Result<(), String> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(sha256, &mut digest)
        .map_err(|_| format!("{}: sha256 must be 64 hex characters", at()))?;
    if map.insert(digest, Keyed { digest, value }).is_some() {
        return Err(format!("{}: duplicate sha256", at()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
