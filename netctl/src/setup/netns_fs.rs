//! Named network namespaces as `ip netns` keeps them: a namespace is kept
//! alive by bind-mounting its nsfs file onto `<netns_dir>/<name>`, and the
//! directory is a shared mount so the mounts are seen from every mount
//! namespace that has it (and `ip netns exec` works on them).
//!
//! Everything here blocks and some of it changes the calling thread's
//! network namespace: call it only from a dedicated thread that ends
//! afterwards (see [`super::worker`]).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};

#[derive(Debug, thiserror::Error)]
pub enum NetnsFsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {path}: {source}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        source: Errno,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NetnsFsError + 'a {
    move |source| NetnsFsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn sys_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> NetnsFsError + 'a {
    move |source| NetnsFsError::Sys {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes `dir` exist and be a shared mount, as `ip netns add` does: if it
/// is not a mount point yet, it is bind-mounted onto itself first.
pub fn prepare_dir(dir: &Path) -> Result<(), NetnsFsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err("create", dir))?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point.
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys_err("bind-mount", dir))?;
            shared().map_err(sys_err("make shared", dir))
        }
        Err(e) => Err(sys_err("make shared", dir)(e)),
    }
}

/// Whether `path` is a mounted namespace (and not, say, the empty file a
/// crash left between creating the file and mounting onto it).
pub fn is_mounted(path: &Path) -> Result<bool, NetnsFsError> {
    match statfs(path) {
        Ok(s) => Ok(s.filesystem_type() == NSFS_MAGIC),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(sys_err("statfs", path)(e)),
    }
}

/// Moves the calling thread into a new network namespace and pins it at
/// `path`. The thread must end afterwards (or be used only for work meant
/// for that namespace).
pub fn create_here(path: &Path) -> Result<(), NetnsFsError> {
    // The mount point: an empty file, as iproute2 makes it. One left by a
    // crash is reused.
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o444)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("create", path))?;
    unshare(CloneFlags::CLONE_NEWNET).map_err(sys_err("unshare network namespace for", path))?;
    mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys_err("bind-mount namespace onto", path))
}

/// Moves the calling thread into the namespace mounted at `path`.
pub fn enter(path: &Path) -> Result<(), NetnsFsError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    // CLONE_NEWNET makes the kernel refuse anything but a network namespace.
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(sys_err("enter", path))
}

/// Unpins and removes the namespace at `path`; whatever of it is already
/// gone is fine. The namespace itself dies with its last user.
pub fn remove(path: &Path) -> Result<(), NetnsFsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not mounted (a crash between file and mount).
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(sys_err("unmount", path)(e)),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Writes `1` to a sysctl under /proc/sys/net. The file resolves to the
/// network namespace of the *calling thread*, so a thread that entered a
/// sandbox's namespace sets that namespace's value.
pub fn enable_sysctl(relative: &'static str) -> Result<(), NetnsFsError> {
    let path = Path::new("/proc/sys/net").join(relative);
    fs::write(&path, b"1").map_err(io_err("write", &path))
}
