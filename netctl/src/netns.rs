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
