//! Per-process memory cgroups, so that a kill by the kernel's OOM killer can
//! be told apart from any other SIGKILL (`oom_killed` in process info).
//!
//! Each process started through the API gets a cgroup of its own, made under
//! the agent's cgroup before the spawn and joined by the child between fork
//! and exec, so everything it starts is inside from its first instruction.
//! The kernel counts OOM kills per cgroup (`oom_kill` in `memory.events` on
//! cgroup v2, in `memory.oom_control` on v1) and raises the count *before* it
//! sends the SIGKILL, so reading it once the process is reaped is exact,
//! whether the kill came from the process's own limit
//! (`limits.process_memory_max_bytes`) or from the whole VM running out of
//! memory.
//!
//! On cgroup v2 a cgroup may not hold processes and enable controllers for
//! children at once, so the agent first moves itself into a leaf
//! (`sbx-agent`) of its own cgroup; under systemd that needs `Delegate=`.
//! Where the agent cannot make cgroups (no memory controller, not root, a
//! tree not delegated to it) processes run in the agent's cgroup and
//! `oom_killed` is always false; the caller says so once at startup.
//!
//! Parsing `/proc/self/cgroup` and `mountinfo` is a few lines, so it is done
//! here rather than by pulling in the `procfs` crate.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The leaf a cgroup v2 agent moves itself into.
const AGENT_LEAF: &str = "sbx-agent";
/// Per-process cgroups are `<prefix><agent pid>-<n>`.
const PROCESS_PREFIX: &str = "sbx-proc-";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent is in no memory cgroup (/proc/self/cgroup lists neither a v1 memory hierarchy nor a v2 one)")]
    NoMembership,
    #[error("no {0} hierarchy is mounted (/proc/self/mountinfo)")]
    NotMounted(&'static str),
    #[error("the agent's cgroup {cgroup} is outside the mounted hierarchy (root {root})")]
    OutsideMount { cgroup: String, root: String },
    #[error("the memory controller is not available in {0} (cgroup.controllers)")]
    NoMemoryController(PathBuf),
    #[error("cannot enable the memory controller below {dir}: {source}; the agent needs a cgroup of its own (systemd: Delegate=memory)")]
    Delegation {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has no oom_kill counter")]
    NoCounter { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// The unified hierarchy (`memory.events`, `memory.max`).
    V2,
    /// A v1 memory hierarchy (`memory.oom_control`, `memory.limit_in_bytes`).
    V1,
}

impl Flavor {
    fn counter_file(self) -> &'static str {
        match self {
            Self::V2 => "memory.events",
            Self::V1 => "memory.oom_control",
        }
    }

    /// The limit files, in the order they must be written: on v1 the
    /// memory+swap limit may not be below the memory limit.
    fn limit_files(self) -> [(&'static str, bool); 2] {
        match self {
            // No swap beyond the limit: it is a limit on what the process holds.
            Self::V2 => [("memory.max", true), ("memory.swap.max", false)],
            Self::V1 => [
                ("memory.limit_in_bytes", true),
                ("memory.memsw.limit_in_bytes", true),
            ],
        }
    }
}

/// Where the agent makes per-process cgroups.
#[derive(Debug)]
pub struct Cgroups {
    flavor: Flavor,
    dir: PathBuf,
    memory_max: Option<u64>,
    prefix: String,
    next: AtomicU64,
    /// Cgroups still populated when their process ended (it left something
    /// running in the background); removed once they empty.
    stale: Mutex<Vec<PathBuf>>,
}

/// One process's cgroup; the child joins it through `join_fd`.
#[derive(Debug)]
pub struct ProcessCgroup {
    path: PathBuf,
    flavor: Flavor,
    /// `cgroup.procs`, opened by the agent: the child writes "0" to it. The
    /// kernel checks the opener's credentials, so this works after the child
    /// has switched to another user.
    procs: Option<File>,
}

impl Cgroups {
    /// Finds the agent's memory cgroup and makes it ready for children; the
    /// error says why OOM kills cannot be detected here.
    pub fn setup(memory_max: Option<u64>) -> Result<Self, CgroupError> {
        let membership = read(Path::new("/proc/self/cgroup"))?;
        let mountinfo = read(Path::new("/proc/self/mountinfo"))?;
        let (flavor, own) = locate(&membership, &mountinfo)?;
        let dir = match flavor {
            Flavor::V1 => own,
            Flavor::V2 => {
                prepare_v2(&own)?;
                own
            }
        };
        let cgroups = Self {
            flavor,
            dir,
            memory_max,
            prefix: format!("{PROCESS_PREFIX}{}-", std::process::id()),
            next: AtomicU64::new(0),
            stale: Mutex::new(Vec::new()),
        };
        cgroups.remove_leftovers();
        // Fail now, not on every spawn, when cgroups cannot be made.
        let probe = cgroups.create()?;
        cgroups.release(probe);
        Ok(cgroups)
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes a cgroup for one process, with the memory limit applied.
    pub fn create(&self) -> Result<ProcessCgroup, CgroupError> {
        self.retry_stale();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}{n}", self.prefix));
        std::fs::create_dir(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        let mut cgroup = ProcessCgroup {
            path,
            flavor: self.flavor,
            procs: None,
        };
        // On error `cgroup` drops here and its directory goes with it.
        if let Some(max) = self.memory_max {
            for (file, required) in self.flavor.limit_files() {
                let value = if file == "memory.swap.max" {
                    "0".to_owned()
                } else {
                    max.to_string()
                };
                let target = cgroup.path.join(file);
                if !required && !target.exists() {
                    continue;
                }
                write(&target, &value)?;
            }
        }
        let procs = cgroup.path.join("cgroup.procs");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|source| CgroupError::Write {
                path: procs,
                source,
            })?;
        cgroup.procs = Some(file);
        Ok(cgroup)
    }

    /// Removes a process's cgroup, or keeps it for later while something the
    /// process started still runs in it.
    pub fn release(&self, mut cgroup: ProcessCgroup) {
        cgroup.procs = None;
        let path = std::mem::take(&mut cgroup.path);
        match std::fs::remove_dir(&path) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                tracing::debug!(cgroup = %path.display(), "cgroup still populated; removed later");
                self.lock_stale().push(path);
            }
            Err(err) => {
                tracing::warn!(cgroup = %path.display(), error = %err, "cannot remove cgroup")
            }
        }
    }

    fn lock_stale(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.stale.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the cgroups of finished processes that have emptied since.
    fn retry_stale(&self) {
        self.lock_stale()
            .retain(|path| match std::fs::remove_dir(path) {
                Ok(()) => false,
                Err(err) => err.kind() != ErrorKind::NotFound,
            });
    }

    /// Removes empty per-process cgroups left by an agent that is gone (a
    /// crash, a restart outside systemd). A live agent's are left alone.
    fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(owner) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PROCESS_PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
            else {
                continue;
            };
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(owner), None).is_ok();
            if !alive && std::fs::remove_dir(entry.path()).is_ok() {
                tracing::info!(cgroup = %entry.path().display(), "removed a cgroup left by an earlier agent");
            }
        }
    }
}

impl ProcessCgroup {
    /// The descriptor the child writes "0" to between fork and exec.
    pub fn join_fd(&self) -> Option<RawFd> {
        self.procs.as_ref().map(|f| f.as_raw_fd())
    }

    /// Closes the agent's handle on `cgroup.procs` once the child has joined.
    pub fn joined(&mut self) {
        self.procs = None;
    }

    /// How many processes in this cgroup the OOM killer has killed.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let path = self.path.join(self.flavor.counter_file());
        let text = read(&path)?;
        oom_kill_count(&text).ok_or(CgroupError::NoCounter { path })
    }
}

impl Drop for ProcessCgroup {
    fn drop(&mut self) {
        // Only reached for a cgroup never handed to `Cgroups::release` (an
        // error right after creating it): it is empty.
        if !self.path.as_os_str().is_empty() {
            self.procs = None;
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// Enables the memory controller for children of `dir`, moving the agent
/// into a leaf first when it sits in `dir` itself.
fn prepare_v2(dir: &Path) -> Result<(), CgroupError> {
    let controllers = read(&dir.join("cgroup.controllers"))?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(CgroupError::NoMemoryController(dir.to_owned()));
    }
    let subtree = dir.join("cgroup.subtree_control");
    let enable = || std::fs::write(&subtree, "+memory");
    match enable() {
        Ok(()) => return Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {}
        Err(source) => {
            return Err(CgroupError::Delegation {
                dir: dir.to_owned(),
                source,
            })
        }
    }
    // "No internal processes": the agent leaves `dir` for a leaf of its own.
    let leaf = dir.join(AGENT_LEAF);
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::AlreadyExists => {}
        Err(source) => return Err(CgroupError::Create { path: leaf, source }),
    }
    write(&leaf.join("cgroup.procs"), "0")?;
    tracing::info!(cgroup = %leaf.display(), "agent moved into its own leaf cgroup");
    enable().map_err(|source| CgroupError::Delegation {
        dir: dir.to_owned(),
        source,
    })
}

/// The agent's memory cgroup directory from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`: a v1 memory hierarchy when there is one (the
/// controller is then not available on v2), else the unified hierarchy.
fn locate(membership: &str, mountinfo: &str) -> Result<(Flavor, PathBuf), CgroupError> {
    let mut v1 = None;
    let mut v2 = None;
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path);
        } else if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        }
    }
    let (flavor, cgroup) = match (v1, v2) {
        (Some(path), _) => (Flavor::V1, path),
        (None, Some(path)) => (Flavor::V2, path),
        (None, None) => return Err(CgroupError::NoMembership),
    };
    let (root, mount_point) = mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let fields: Vec<&str> = mount.split(' ').collect();
            let fs: Vec<&str> = fs.split(' ').collect();
            let wanted = match flavor {
                Flavor::V2 => fs.first() == Some(&"cgroup2"),
                Flavor::V1 => {
                    fs.first() == Some(&"cgroup")
                        && fs
                            .get(2)
                            .is_some_and(|o| o.split(',').any(|o| o == "memory"))
                }
            };
            wanted.then(|| Some((*fields.get(3)?, *fields.get(4)?)))?
        })
        .ok_or(CgroupError::NotMounted(match flavor {
            Flavor::V2 => "cgroup2",
            Flavor::V1 => "cgroup v1 memory",
        }))?;
    let relative = if root == "/" {
        Some(cgroup)
    } else {
        cgroup
            .strip_prefix(root)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    }
    .ok_or_else(|| CgroupError::OutsideMount {
        cgroup: cgroup.to_owned(),
        root: root.to_owned(),
    })?;
    Ok((
        flavor,
        Path::new(mount_point).join(relative.trim_start_matches('/')),
    ))
}

/// `oom_kill N` from `memory.events` (v2) or `memory.oom_control` (v1).
fn oom_kill_count(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
40 35 0:35 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,memory
41 35 0:36 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,pids
42 35 0:37 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:19 - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_hosts_use_the_v1_memory_hierarchy() {
        let membership = "8:pids:/\n4:memory:/jobs/a1\n0::/\n";
        let (flavor, dir) = locate(membership, MOUNTINFO).unwrap();
        assert_eq!(flavor, Flavor::V1);
        assert_eq!(dir, Path::new("/sys/fs/cgroup/memory/jobs/a1"));
    }

    #[test]
    fn unified_hosts_use_v2() {
        let mountinfo =
            "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let (flavor, dir) = locate("0::/system.slice/sbx-agent.service\n", mountinfo).unwrap();
        assert_eq!(flavor, Flavor::V2);
        assert_eq!(
            dir,
            Path::new("/sys/fs/cgroup/system.slice/sbx-agent.service")
        );
        let (_, dir) = locate("0::/\n", mountinfo).unwrap();
        assert_eq!(dir, Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn a_mount_of_a_subtree_is_resolved_or_refused() {
        let mountinfo = "30 1 0:26 /ns /cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            locate("0::/ns/x\n", mountinfo).unwrap().1,
            Path::new("/cg/x")
        );
        assert!(matches!(
            locate("0::/nsother\n", mountinfo),
            Err(CgroupError::OutsideMount { .. })
        ));
        assert!(matches!(
            locate("0::/\n", "1 1 0:1 / / rw - ext4 /dev/vda rw\n"),
            Err(CgroupError::NotMounted(_))
        ));
        assert!(matches!(
            locate("", MOUNTINFO),
            Err(CgroupError::NoMembership)
        ));
    }

    #[test]
    fn counters() {
        assert_eq!(
            oom_kill_count("low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n"),
            Some(1)
        );
        assert_eq!(
            oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n"),
            Some(4)
        );
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\n"), None);
    }
}
