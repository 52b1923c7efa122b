//! A private scratch directory holding the agent's key, the proxy's and
//! nginx's configuration, and the logs of every child; removed when the
//! bench ends.

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
    /// shared by the agent and the proxy.
    pub key_file: PathBuf,
}

impl Scratch {
    /// Creates the directory (0700 — nginx workers run as the same user)
    /// with a random forwarded-auth key. With `keep` the directory, and so
    /// the children's logs, outlive the run.
    pub fn create(keep: bool) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "sbx-proxy-bench-{}-{nanos:08x}",
            std::process::id()
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("create {}", dir.display()))?;
        let scratch = Self {
            key_file: dir.join("forwarded-auth.key"),
            dir,
            keep,
        };
        let key: [u8; 32] = rand::random();
        write_secret(&scratch.key_file, &format!("{}\n", hex(&key)))?;
        Ok(scratch)
    }

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

fn write_secret(path: &Path, contents: &str) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
