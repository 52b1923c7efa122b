//! Each sandbox's directory, `<state_dir>/sandboxes/<id>/` (mode 0700):
//! its record, key, guest config, logs, QMP socket and snapshot. A record
//! is replaced whole (write, fsync, rename, fsync the directory), so after
//! a crash it is either the old one or the new one.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::model::Record;

const RECORD: &str = "record.json";

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct StoreError {
    what: &'static str,
    path: String,
    source: io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError {
        what,
        path: path.display().to_string(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let root = state_dir.join("sandboxes");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(err("create", &root))?;
        Ok(Self { root })
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn create_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        let dir = self.dir(id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .or_else(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(err("create", &dir))?;
        Ok(dir)
    }

    pub fn save(&self, record: &Record) -> Result<(), StoreError> {
        let dir = self.dir(&record.id);
        let path = dir.join(RECORD);
        let tmp = dir.join("record.json.tmp");
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| err("encode", &path)(io::Error::other(e)))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err("create", &tmp))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(err("rename", &path))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(err("fsync", &dir))
    }

    /// Removes the sandbox's directory and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("remove", &dir)(e)),
        }
    }

    /// Every sandbox directory with its record (or why it cannot be read).
    pub fn load_all(&self) -> Vec<(String, Result<Option<Record>, String>)> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Ok(id) = e.file_name().into_string() else {
                continue;
            };
            if sbx_proto::policy::validate_id(&id).is_err() || !e.path().is_dir() {
                continue;
            }
            let path = e.path().join(RECORD);
            let rec = match fs::read(&path) {
                Ok(b) => serde_json::from_slice::<Record>(&b)
                    .map(Some)
                    .map_err(|e| format!("{}: {e}", path.display())),
                // A directory without a record: a create that crashed
                // before its first save.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", path.display())),
            };
            out.push((id, rec));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Writes the 32-byte key as 64 hex characters, mode 0600.
pub fn write_key(path: &Path, hex: &str) -> Result<(), StoreError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err("create", path))?;
    f.write_all(hex.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(err("write", path))
}
