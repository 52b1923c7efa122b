//! The writers behind `sbx-proxy credentials`: each appends one entry to
//! the file under a lock and returns the new secret, if any, which is
//! stored nowhere; and the listing of what the file holds.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use nix::fcntl::{Flock, FlockArg};

use super::{file_error, parse, read_text, sha256_hex, unix_now, Document, ProjectEntry};
use crate::auth::{AuthError, Principal};

/// Longest id or label the writers accept.
const MAX_ID_LEN: usize = 128;

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
