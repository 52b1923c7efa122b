//! What a child does between fork and exec when it must join its cgroup
//! first (see `cgroup`).
//!
//! std's `Command` switches user and directory *before* it runs `pre_exec`
//! hooks, and before Linux 5.16 a process that is no longer root may not
//! move itself between cgroup v2 groups it does not own. So when a cgroup is
//! joined, the join, the identity switch and the directory change are all
//! done here, in that order, and std is asked for none of them.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;

use sbx_proto::ErrorCode;

use crate::error::ApiError;

/// Everything the hook needs, prepared by the parent: the child may not
/// allocate between fork and exec.
#[derive(Debug)]
pub struct ChildSetup {
    join_fd: RawFd,
    /// `(uid, gid)` to switch to; None to stay who the agent is.
    identity: Option<(libc::uid_t, libc::gid_t)>,
    cwd: Option<CString>,
}

impl ChildSetup {
    pub fn new(
        join_fd: RawFd,
        identity: Option<(u32, u32)>,
        cwd: Option<&Path>,
    ) -> Result<Self, ApiError> {
        let cwd = cwd
            .map(|dir| {
                CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| {
                    ApiError::new(
                        ErrorCode::BadRequest,
                        "working_dir must not contain NUL bytes",
                    )
                })
            })
            .transpose()?;
        Ok(Self {
            join_fd,
            identity,
            cwd,
        })
    }

    /// Runs in the child. Any error fails the spawn with that errno.
    pub fn run(&self) -> io::Result<()> {
        fn check(result: libc::c_int) -> io::Result<()> {
            if result < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        // SAFETY: write, getuid, setgroups, setgid, setuid and chdir are
        // async-signal-safe system calls on memory prepared before the fork;
        // nothing here allocates or takes a lock.
        unsafe {
            if libc::write(self.join_fd, b"0".as_ptr().cast(), 1) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid)) = self.identity {
                // As std does when root drops to another user: no
                // supplementary groups are kept.
                if libc::getuid() == 0 {
                    check(libc::setgroups(0, std::ptr::null()))?;
                }
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
            }
            if let Some(dir) = &self.cwd {
                check(libc::chdir(dir.as_ptr()))?;
            }
        }
        Ok(())
    }
}
