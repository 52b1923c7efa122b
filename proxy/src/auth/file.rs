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
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::future::BoxFuture;
use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::credential::valid_context_value;
use super::{AuthError, Context, Credential, CredentialKind, CredentialStore, Principal, Verdict};

/// A credentials file larger than this is a mistake, not a credentials file.
const MAX_FILE_LEN: u64 = 16 << 20;
/// Longest id or label the writers accept.
const MAX_ID_LEN: usize = 128;

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
        let digest: Digest32 = Sha256::digest(credential.secret().as_bytes()).into();
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

/// Whether `s` may be written as an id or label: 1 to 128 of
/// `[A-Za-z0-9._-]`. Stricter than what a hand-written file may hold, so
/// that what the CLI writes is always safe to print and to match.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One entry of the file, as `sbx-proxy credentials list` shows it. Only
/// hashes: the file holds no secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    ApiKey {
        label: Option<String>,
        principal: Principal,
        sha256: String,
    },
    User {
        id: String,
        projects: Vec<Principal>,
    },
    PersonalAccessToken {
        user: String,
        label: Option<String>,
        sha256: String,
    },
    Session {
        user: String,
        expires_at: u64,
        sha256: String,
    },
}

/// The file's entries in file order (kind by kind); a missing file is empty.
pub fn list(path: &Path) -> Result<Vec<Entry>, AuthError> {
    let Some(text) = read_text(path)? else {
        return Ok(Vec::new());
    };
    let (doc, _) = parse(path, &text)?;
    let project = |p: &ProjectEntry| Principal {
        organization_id: p.organization_id.clone(),
        project_id: p.project_id.clone(),
    };
    let mut entries = Vec::new();
    entries.extend(doc.api_keys.iter().map(|e| Entry::ApiKey {
        label: e.label.clone(),
        principal: Principal {
            organization_id: e.organization_id.clone(),
            project_id: e.project_id.clone(),
        },
        sha256: e.sha256.to_ascii_lowercase(),
    }));
    entries.extend(doc.users.iter().map(|u| Entry::User {
        id: u.id.clone(),
        projects: u.projects.iter().map(project).collect(),
    }));
    entries.extend(doc.pats.iter().map(|p| Entry::PersonalAccessToken {
        user: p.user.clone(),
        label: p.label.clone(),
        sha256: p.sha256.to_ascii_lowercase(),
    }));
    entries.extend(doc.sessions.iter().map(|s| Entry::Session {
        user: s.user.clone(),
        expires_at: s.expires_at,
        sha256: s.sha256.to_ascii_lowercase(),
    }));
    Ok(entries)
}

/// Adds an API key for one project and returns the key, which is stored
/// nowhere: only its hash is written.
pub fn add_api_key(
    path: &Path,
    organization_id: &str,
    project_id: &str,
    label: Option<&str>,
) -> Result<String, AuthError> {
    check_ids(
        path,
        &[
            ("organization id", organization_id),
            ("project id", project_id),
        ],
    )?;
    check_label(path, label)?;
    let key = format!("sbx_key_{}", new_secret());
    append(path, |_| {
        let mut entry = format!(
            "[[api_key]]\nsha256 = {}\norganization_id = {}\nproject_id = {}\n",
            quote(&sha256_hex(&key)),
            quote(organization_id),
            quote(project_id),
        );
        push_label(&mut entry, label);
        Ok(entry)
    })?;
    Ok(key)
}

/// Adds a user who may act in `projects` with their PATs and sessions.
pub fn add_user(path: &Path, id: &str, projects: &[Principal]) -> Result<(), AuthError> {
    check_ids(path, &[("user", id)])?;
    for p in projects {
        check_ids(
            path,
            &[
                ("organization id", &p.organization_id),
                ("project id", &p.project_id),
            ],
        )?;
    }
    append(path, |doc| {
        if doc.users.iter().any(|u| u.id == id) {
            return Err(format!(
                "user {id} already exists; edit the file to change their projects"
            ));
        }
        let projects: Vec<String> = projects
            .iter()
            .map(|p| {
                format!(
                    "{{ organization_id = {}, project_id = {} }}",
                    quote(&p.organization_id),
                    quote(&p.project_id)
                )
            })
            .collect();
        Ok(format!(
            "[[user]]\nid = {}\nprojects = [{}]\n",
            quote(id),
            projects.join(", ")
        ))
    })
}

/// Adds a personal access token for an existing user and returns it.
pub fn add_pat(path: &Path, user: &str, label: Option<&str>) -> Result<String, AuthError> {
    check_ids(path, &[("user", user)])?;
    check_label(path, label)?;
    let token = format!("tl_pat_{}", new_secret());
    append(path, |doc| {
        require_user(doc, user)?;
        let mut entry = format!(
            "[[personal_access_token]]\nsha256 = {}\nuser = {}\n",
            quote(&sha256_hex(&token)),
            quote(user)
        );
        push_label(&mut entry, label);
        Ok(entry)
    })?;
    Ok(token)
}

/// Adds a session for an existing user, valid for `ttl`, and returns its
/// token (the value of the `tl.session_token` cookie).
pub fn add_session(path: &Path, user: &str, ttl: Duration) -> Result<String, AuthError> {
    check_ids(path, &[("user", user)])?;
    let expires_at = unix_now()
        .checked_add(ttl.as_secs())
        .ok_or_else(|| file_error(path, "session ttl too large"))?;
    let token = new_secret();
    append(path, |doc| {
        require_user(doc, user)?;
        Ok(format!(
            "[[session]]\nsha256 = {}\nuser = {}\nexpires_at = {expires_at}\n",
            quote(&sha256_hex(&token)),
            quote(user)
        ))
    })?;
    Ok(token)
}

fn check_ids(path: &Path, ids: &[(&str, &str)]) -> Result<(), AuthError> {
    match ids.iter().find(|(_, id)| !valid_id(id)) {
        Some((what, id)) => Err(file_error(
            path,
            format!("{what} {id:?} must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 . _ -"),
        )),
        None => Ok(()),
    }
}

fn check_label(path: &Path, label: Option<&str>) -> Result<(), AuthError> {
    label.map_or(Ok(()), |l| check_ids(path, &[("label", l)]))
}

fn require_user(doc: &Document, user: &str) -> Result<(), String> {
    if doc.users.iter().any(|u| u.id == user) {
        Ok(())
    } else {
        Err(format!("no user {user}; add it first with add-user"))
    }
}

fn push_label(entry: &mut String, label: Option<&str>) {
    if let Some(label) = label {
        entry.push_str(&format!("label = {}\n", quote(label)));
    }
}

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// 32 random bytes from the thread's CSPRNG (seeded from the OS), base64url.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Appends one entry to the file, keeping what is there (comments
/// included), under an exclusive lock on the directory so two concurrent
/// writers cannot lose each other's entry. The file must parse before and
/// after: a broken file is never made worse.
fn append(
    path: &Path,
    entry: impl FnOnce(&Document) -> Result<String, String>,
) -> Result<(), AuthError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let io = |e: std::io::Error| file_error(path, e.to_string());
    let _lock = Flock::lock(File::open(dir).map_err(io)?, FlockArg::LockExclusive)
        .map_err(|(_, errno)| file_error(path, format!("locking {}: {errno}", dir.display())))?;
    let existing = read_text(path)?;
    let mut text = existing.clone().unwrap_or_default();
    let (doc, _) = parse(path, &text)?;
    let entry = entry(&doc).map_err(|reason| file_error(path, reason))?;
    if !text.is_empty() {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push('\n');
    }
    text.push_str(&entry);
    parse(path, &text)?;
    write_atomic(path, dir, &text, existing.is_some()).map_err(io)
}

/// Replaces the file in one rename, so the proxy (or a reload) only ever
/// sees the old or the new whole file. Keeps the owner of the file it
/// replaces, so root adding a key does not lock out a proxy running as
/// its own user.
fn write_atomic(path: &Path, dir: &Path, text: &str, existed: bool) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let result = (|| {
        if existed {
            let old = std::fs::metadata(path)?;
            let new = file.metadata()?;
            if (old.uid(), old.gid()) != (new.uid(), new.gid()) {
                if let Err(e) = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid())) {
                    tracing::warn!(path = %path.display(), "could not keep the file's owner: {e}");
                }
            }
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn hash(secret: &str) -> String {
        sha256_hex(secret)
    }

    fn store_with(text: &str) -> (tempfile::TempDir, PathBuf, Result<FileStore, AuthError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credentials.toml");
        std::fs::write(&path, text).expect("write");
        let store = FileStore::load(&path);
        (dir, path, store)
    }

    fn sample() -> String {
        format!(
            r#"# hand-written
[[api_key]]
sha256 = "{}"
organization_id = "org-1"
project_id = "proj-1"
label = "ci"

[[user]]
id = "alice"
projects = [{{ organization_id = "org-1", project_id = "proj-1" }}]

[[personal_access_token]]
sha256 = "{}"
user = "alice"

[[personal_access_token]]
sha256 = "{}"
user = "ghost"

[[session]]
sha256 = "{}"
user = "alice"
expires_at = {NOW}
"#,
            hash("sbx_key_a").to_uppercase(),
            hash("tl_pat_a"),
            hash("tl_pat_ghost"),
            hash("sess"),
        )
    }

    fn ctx(org: Option<&str>, project: Option<&str>) -> Context {
        Context {
            organization_id: org.map(str::to_owned),
            project_id: project.map(str::to_owned),
            from_query: false,
        }
    }

    fn granted(org: &str, project: &str) -> Verdict {
        Verdict::Granted(Principal {
            organization_id: org.into(),
            project_id: project.into(),
        })
    }

    #[test]
    fn verdicts() {
        let (_dir, _, store) = store_with(&sample());
        let store = store.expect("load");
        let key = |k, s: &str| Credential::new(k, s);
        let (api, pat, session) = (
            CredentialKind::ApiKey,
            CredentialKind::PersonalAccessToken,
            CredentialKind::Session,
        );
        let mine = ctx(Some("org-1"), Some("proj-1"));
        let other = ctx(Some("org-1"), Some("proj-2"));
        let none = ctx(None, None);
        let check = |c: &Credential, x: &Context, now| store.check(c, x, now);
        // An API key acts in its own project whatever the context says.
        assert_eq!(
            check(&key(api, "sbx_key_a"), &other, NOW),
            granted("org-1", "proj-1")
        );
        assert_eq!(check(&key(api, "sbx_key_b"), &none, NOW), Verdict::Invalid);
        // The right secret under another kind is not found.
        assert_eq!(check(&key(pat, "sbx_key_a"), &mine, NOW), Verdict::Invalid);
        assert_eq!(
            check(&key(pat, "tl_pat_a"), &mine, NOW),
            granted("org-1", "proj-1")
        );
        assert_eq!(
            check(&key(pat, "tl_pat_a"), &other, NOW),
            Verdict::OutOfScope
        );
        assert_eq!(
            check(&key(pat, "tl_pat_a"), &ctx(Some("org-1"), None), NOW),
            Verdict::Invalid
        );
        assert_eq!(
            check(&key(pat, "tl_pat_ghost"), &mine, NOW),
            Verdict::OutOfScope
        );
        assert_eq!(check(&key(pat, "tl_pat_b"), &mine, NOW), Verdict::Invalid);
        assert_eq!(
            check(&key(session, "sess"), &mine, NOW - 1),
            granted("org-1", "proj-1")
        );
        assert_eq!(
            check(&key(session, "sess"), &other, NOW - 1),
            Verdict::OutOfScope
        );
        assert_eq!(
            check(&key(session, "sess"), &none, NOW - 1),
            Verdict::Invalid
        );
        assert_eq!(check(&key(session, "sess"), &mine, NOW), Verdict::Invalid);
    }

    #[tokio::test]
    async fn verify_through_the_trait() {
        let (_dir, _, store) = store_with(&sample());
        let store: Box<dyn CredentialStore> = Box::new(store.expect("load"));
        let got = store
            .verify(
                &Credential::new(CredentialKind::ApiKey, "sbx_key_a"),
                &Context::default(),
            )
            .await;
        assert_eq!(got.expect("verdict"), granted("org-1", "proj-1"));
    }

    #[test]
    fn malformed_files_are_refused_with_the_reason() {
        let h = hash("x");
        for (text, wanted) in [
            ("[[api_key]]\nsha256 = \"ab\"\norganization_id = \"o\"\nproject_id = \"p\"\n", "64 hex"),
            ("\n\n[[user]]\nid = \"a\"\nrole = \"admin\"\n", "line 5"),
            ("[[users]]\nid = \"a\"\n", "unknown field"),
            ("[[user]]\nid = \"a\"\n[[user]]\nid = \"a\"\n", "duplicate user"),
            (&format!("[[session]]\nsha256 = \"{h}\"\nuser = \"a\"\nexpires_at = 1\n[[session]]\nsha256 = \"{h}\"\nuser = \"b\"\nexpires_at = 2\n"), "[[session]] #2: duplicate"),
            ("[[api_key]]\nsha256 = \"\"\norganization_id = \"\"\nproject_id = \"p\"\n", "organization_id"),
            ("[[user\n", "line 1"),
        ] {
            let (_dir, path, store) = store_with(text);
            let err = store.expect_err(text).to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(wanted), "{wanted:?} not in {err:?}");
            assert!(!err.contains('\n'), "{err:?}");
        }
        let err = FileStore::load(Path::new("/nonexistent/credentials.toml")).expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/credentials.toml"),
            "{err}"
        );
    }

    #[test]
    fn reload_swaps_or_keeps() {
        let (_dir, path, store) = store_with("");
        let store = store.expect("an empty file is an empty store");
        let a = Credential::new(CredentialKind::ApiKey, "sbx_key_a");
        assert_eq!(store.check(&a, &Context::default(), NOW), Verdict::Invalid);
        std::fs::write(&path, sample()).expect("write");
        store.reload().expect("reload");
        assert_eq!(
            store.check(&a, &Context::default(), NOW),
            granted("org-1", "proj-1")
        );
        std::fs::write(&path, "garbage").expect("write");
        assert!(store.reload().is_err());
        assert_eq!(
            store.check(&a, &Context::default(), NOW),
            granted("org-1", "proj-1")
        );
        assert!(!format!("{store:?}").contains("sha256"));
    }
}
