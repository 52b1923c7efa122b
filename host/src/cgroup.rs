//! One cgroup v2 directory per sandbox under a directory of our own: every
//! process of a sandbox (the VMM, or the agent and what it starts) is in
//! it, so suspend freezes all of them at once (`cgroup.freeze`) and delete
//! ends all of them at once (`cgroup.kill`), including any a guest agent
//! forked off. Only core cgroup files are used, so no controller has to be
//! delegated and a hybrid (v1 + unified) machine works too.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {what}: {source}")]
pub struct CgroupError {
    path: String,
    what: &'static str,
    source: io::Error,
}

fn err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError {
        path: path.display().to_string(),
        what,
        source,
    }
}

/// Our directory in the cgroup v2 hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    /// `configured`, or `sbx-host` under wherever cgroup v2 is mounted.
    pub fn open(configured: &Path) -> Result<Self, CgroupError> {
        let root = if configured.as_os_str().is_empty() {
            let mount = v2_mount().ok_or_else(|| CgroupError {
                path: "/sys/fs/cgroup".into(),
                what: "find the cgroup v2 mount",
                source: io::Error::new(io::ErrorKind::NotFound, "no cgroup2 file system"),
            })?;
            mount.join("sbx-host")
        } else {
            configured.to_path_buf()
        };
        std::fs::create_dir_all(&root).map_err(err(&root, "create"))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn create(&self, id: &str) -> Result<PathBuf, CgroupError> {
        let path = self.path(id);
        match std::fs::create_dir(&path) {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(path),
            Err(e) => Err(err(&path, "create")(e)),
        }
    }

    /// Freezes (`true`) or thaws every process in the sandbox's cgroup and
    /// waits until the kernel says it is done.
    pub async fn set_frozen(&self, id: &str, frozen: bool) -> Result<(), CgroupError> {
        let path = self.path(id);
        let want = if frozen { "1" } else { "0" };
        std::fs::write(path.join("cgroup.freeze"), want)
            .map_err(err(&path, "write cgroup.freeze"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = std::fs::read_to_string(path.join("cgroup.events"))
                .map_err(err(&path, "read cgroup.events"))?;
            if events.lines().any(|l| l == format!("frozen {want}")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(err(&path, "wait for the freezer")(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "not settled in 10 s",
                )));
            }
            // The freezer settles in well under a millisecond when idle.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn pids(&self, id: &str) -> Vec<u32> {
        std::fs::read_to_string(self.path(id).join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Ends every process in it (thawed first: a frozen process cannot die)
    /// and removes the directory. A missing cgroup is already gone.
    pub async fn destroy(&self, id: &str) -> Result<(), CgroupError> {
        let path = self.path(id);
        if !path.exists() {
            return Ok(());
        }
        let _ = std::fs::write(path.join("cgroup.freeze"), "0");
        if let Err(e) = std::fs::write(path.join("cgroup.kill"), "1") {
            // Kernels before 5.14 have no cgroup.kill: signal each process.
            if e.kind() != io::ErrorKind::NotFound {
                return Err(err(&path, "write cgroup.kill")(e));
            }
            for pid in self.pids(id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::remove_dir(&path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                // EBUSY while the killed processes are still exiting.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(err(&path, "remove")(e)),
            }
        }
    }

    /// Sandbox cgroups that exist, for cleaning up after a crash.
    pub fn ids(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Where the cgroup2 file system is mounted: `/sys/fs/cgroup` on a unified
/// machine, `/sys/fs/cgroup/unified` on a hybrid one.
fn v2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(at))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found.into_iter().next()
}
