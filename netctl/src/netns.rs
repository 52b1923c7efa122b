//! Running work inside another network namespace.
//!
//! setns(2) changes the namespace of the calling *thread* only, so the work
//! runs on a fresh OS thread that enters the namespace and then ends: a
//! tokio worker (or any pooled thread) never changes namespace. Processes
//! spawned from that thread (such as `nft`) inherit its namespace.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} not found")]
    NotFound { path: PathBuf },
    #[error("open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("netns worker thread: {0}")]
    Thread(String),
}

/// Runs `work` on a dedicated thread inside the namespace at `path` and
/// waits for it without blocking the async runtime.
pub async fn run_in<T, F>(path: &Path, work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let path_owned = path.to_path_buf();
    std::thread::Builder::new()
        .name("netctl-netns".into())
        .spawn(move || {
            let _ = tx.send(enter(&path_owned).map(|()| work()));
        })
        .map_err(|e| NetnsError::Thread(e.to_string()))?;
    rx.await
        .map_err(|_| NetnsError::Thread("worker ended without an answer".into()))?
}

/// Enters the namespace on the current thread. Only for threads that end
/// afterwards (see [`run_in`]).
fn enter(path: &Path) -> Result<(), NetnsError> {
    let file = File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            NetnsError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            NetnsError::Open {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    // CLONE_NEWNET makes the kernel refuse anything that is not a network
    // namespace, so a wrong path cannot switch some other namespace.
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        path: path.to_path_buf(),
        source,
    })
}

/// The namespaces a sandbox's rules must never go into: netctl's own and
/// PID 1's (the host's, when netctl runs in a namespace of its own). A
/// policy there would filter the hypervisor host itself, and one wrong PID
/// from a control plane must not cut a host off. Read once at start, by
/// inode, so any path naming them (a /proc path, a bind mount) matches.
#[derive(Debug, Clone, Default)]
pub struct HostNamespaces {
    own: Option<(u64, u64)>,
    init: Option<(u64, u64)>,
}

impl HostNamespaces {
    pub fn read() -> Self {
        Self {
            own: identity(Path::new("/proc/self/ns/net")),
            init: identity(Path::new("/proc/1/ns/net")),
        }
    }

    /// Why `path` may not hold a sandbox's rules, if it may not.
    pub fn refusal(&self, path: &Path) -> Option<&'static str> {
        let target = identity(path)?;
        if Some(target) == self.own {
            Some("is netctl's own network namespace")
        } else if Some(target) == self.init {
            Some("is PID 1's network namespace (the host's)")
        } else {
            None
        }
    }
}

/// Device and inode of a namespace file: what makes two paths the same
/// namespace.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}
