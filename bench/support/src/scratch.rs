//! A private scratch directory holding a bench's secrets, the children's
//! configuration, and the logs of every child; removed when the bench ends.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};

pub struct Scratch {
    dir: PathBuf,
    keep: bool,
    /// The sandbox's forwarded-auth key (64 hex chars and a newline, 0600),
    /// for the agent and whatever else signs its requests.
    pub key_file: PathBuf,
}

impl Scratch {
    /// Creates `<tmp>/<prefix>-<pid>-<nanos>` (0700; children such as nginx
    /// workers run as the same user) with a random forwarded-auth key. With
    /// `keep` the directory, and so the children's logs, outlive the run.
    pub fn create(prefix: &str, keep: bool) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos:08x}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("create {}", dir.display()))?;
        let scratch = Self {
            key_file: dir.join("forwarded-auth.key"),
            dir,
            keep,
        };
        scratch.write_secret("forwarded-auth.key", &format!("{}\n", random_hex(32)))?;
        Ok(scratch)
    }

    /// Writes `contents` to a new file `name` readable by this user only
    /// (0600, as the agent insists for its secrets); returns its path.
    pub fn write_secret(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.path(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        file.write_all(contents.as_bytes())
            .with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Where the child `name` appends its stderr.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `len` random bytes as lowercase hex, for keys and tokens.
pub fn random_hex(len: usize) -> String {
    (0..len)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn key_is_private_and_dir_goes_away() {
        let scratch = Scratch::create("sbx-bench-support-test", false).unwrap();
        let dir = scratch.dir().to_owned();
        let key = fs::read_to_string(&scratch.key_file).unwrap();
        assert_eq!(key.len(), 65);
        assert!(key.ends_with('\n'));
        let mode = fs::metadata(&scratch.key_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(scratch);
        assert!(!dir.exists());
    }
}
