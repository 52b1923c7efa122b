//! A persistent tap device for a microVM. The kernel does not create tun
//! or tap devices over rtnetlink, so this is the TUNSETIFF ioctl on
//! /dev/net/tun; the device lands in the network namespace of the thread
//! that opened /dev/net/tun, so call it from a thread inside the sandbox's
//! namespace.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

#[derive(Debug, thiserror::Error)]
#[error("tap {name}: {what}: {source}")]
pub struct TapError {
    name: String,
    what: &'static str,
    source: io::Error,
}

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Makes `name` exist as a persistent tap device (single queue, no packet
/// information header: what Firecracker and QEMU open). An existing tap of
/// that name is kept, also while its VMM has it open; a different kind of
/// device of that name is an error.
pub fn ensure(name: &str) -> Result<(), TapError> {
    let fail = |what: &'static str| {
        move |source| TapError {
            name: name.to_owned(),
            what,
            source,
        }
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(fail("bad name")(io::Error::from(
            io::ErrorKind::InvalidInput,
        )));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(fail("open /dev/net/tun"))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `req` is a properly sized, initialised ifreq that outlives the
    // call, and the fd is open for the duration of the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        // A single-queue tap takes one user at a time, so EBUSY means the
        // device exists, is a tap (another kind would be EINVAL) and its
        // VMM has it open: the tap in use, which a repair or a restart
        // must keep, not fail on.
        if err.raw_os_error() == Some(libc::EBUSY) {
            return Ok(());
        }
        return Err(fail("TUNSETIFF")(err));
    }
    // SAFETY: TUNSETPERSIST takes its argument by value; the fd is open.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if rc < 0 {
        return Err(fail("TUNSETPERSIST")(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<super::IfReq>(), 40);
    }
}
