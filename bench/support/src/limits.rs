//! The open-file limit. Thousands of idle connections or tunnels need as
//! many descriptors in the bench and again in each child, which inherit the
//! limit; the default soft limit (1,024) would make a bench fail on that
//! rather than measure.

use anyhow::{Context as _, Result};

/// Open-file limit asked for: 10,000 idle connections on both ends of each
/// process under test plus everything else, with room to spare.
const WANTED_NOFILE: u64 = 65_536;

/// Raises the open-file limit: to [`WANTED_NOFILE`] when allowed (root may
/// raise the hard limit), else the soft limit to the hard one. Returns the
/// soft limit now in force, for the report.
pub fn raise_nofile_limit() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(NOFILE)");
        }
        if lim.rlim_max < WANTED_NOFILE {
            let wanted = libc::rlimit {
                rlim_cur: WANTED_NOFILE,
                rlim_max: WANTED_NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return Ok(WANTED_NOFILE);
            }
        }
        // An unlimited hard limit still cannot exceed fs.nr_open.
        lim.rlim_cur = lim.rlim_max.min(1 << 20);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(NOFILE)");
        }
    }
    Ok(lim.rlim_cur)
}
