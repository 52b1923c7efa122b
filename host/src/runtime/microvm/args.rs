//! QEMU's command line for one guest, as a pure function so the exact
//! arguments are unit-tested. Nothing secret is on it: `ps` shows it to
//! every user of the host. The key reaches the guest in a fw_cfg file
//! (only its path is here, and the file is root's, mode 0600).

use std::ffi::OsString;
use std::path::Path;

use crate::config::GUEST_CMDLINE;

/// The name the guest's init reads its config from
/// (`/sys/firmware/qemu_fw_cfg/by_name/opt/sbx/guest/raw`).
pub const FW_CFG_NAME: &str = "opt/sbx/guest";
/// One MAC for every guest: each is alone on its tap, and a snapshot
/// restores the NIC it was taken with.
pub const GUEST_MAC: &str = "52:54:00:5b:00:02";
/// QEMU's seccomp filter: no exec or fork of other programs, no obsolete
/// system calls.
pub const SECCOMP: &str = "on,obsolete=deny,spawn=deny";
/// The fd a resumed VMM reads its snapshot from (`-incoming fd:3`).
pub const INCOMING_FD: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

pub struct VmArgs<'a> {
    pub id: &'a str,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mb: u64,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub guest_config: &'a Path,
    pub console_log: &'a Path,
    pub qmp_socket: &'a Path,
    pub tap: &'a str,
    /// `-runas`: QEMU drops to this user once its files are open.
    pub user: Option<&'a str>,
    pub seccomp: bool,
    pub incoming: bool,
    /// Host TSC frequency, for a TCG guest (see [`cmdline`]).
    pub tsc_khz: Option<u64>,
}

/// The guest's kernel command line. Under TCG the guest's TSC is the
/// host's (QEMU passes rdtsc through), but the guest cannot calibrate it:
/// on a loaded host its PIT comparison fails, the TSC is marked unstable
/// and the boot stalls with no clock (seen here: three guests booting at
/// once on two cores). So a TCG guest is told the host's TSC frequency and
/// that it is reliable. Under KVM the guest gets both from the hypervisor.
pub fn cmdline(accel: Accel, tsc_khz: Option<u64>) -> String {
    match (accel, tsc_khz) {
        (Accel::Tcg, Some(khz)) => format!("{GUEST_CMDLINE} tsc_early_khz={khz} tsc=reliable"),
        _ => GUEST_CMDLINE.to_owned(),
    }
}

/// The host's TSC frequency in kHz, from /proc/cpuinfo's `cpu MHz` (on
/// x86 the TSC rate the kernel detected).
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

impl VmArgs<'_> {
    pub fn build(&self) -> Vec<OsString> {
        let cpu = match self.accel {
            Accel::Kvm => "host",
            // TCG: `max` gives the guest RDRAND, so its RNG is ready at once.
            Accel::Tcg => "max",
        };
        let mut a: Vec<OsString> = Vec::with_capacity(48);
        for s in [
            "-name".to_owned(),
            format!("sbx-{},debug-threads=on", self.id),
            // microvm: no PCI, no firmware; virtio-mmio devices described
            // by ACPI, so the guest's modules find them without parameters.
            "-M".into(),
            "microvm,x-option-roms=off,rtc=on,isa-serial=on".into(),
            "-accel".into(),
            self.accel.as_str().into(),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            format!("{}M", self.memory_mb),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-append".into(),
            cmdline(self.accel, self.tsc_khz),
            "-netdev".into(),
            format!("tap,id=net0,ifname={},script=no,downscript=no", self.tap),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={GUEST_MAC}"),
        ] {
            a.push(s.into());
        }
        for (flag, value) in [
            ("-kernel", path(self.kernel)),
            ("-initrd", path(self.initrd)),
            (
                "-chardev",
                joined("file,id=console,append=on,path=", self.console_log, ""),
            ),
            (
                "-fw_cfg",
                joined(&format!("name={FW_CFG_NAME},file="), self.guest_config, ""),
            ),
            (
                "-qmp",
                joined("unix:", self.qmp_socket, ",server=on,wait=off"),
            ),
        ] {
            a.push(flag.into());
            a.push(value);
        }
        // After the chardev it names: QEMU resolves `chardev:` when it
        // reads the option, and an unknown name leaves the UART unwired.
        a.push("-serial".into());
        a.push("chardev:console".into());
        if self.seccomp {
            // `elevateprivileges=deny` and `resourcecontrol=deny` leave a
            // QEMU 7.2 TCG guest halted before its first console line
            // (seen with Debian 12's build), so they are not used.
            a.push("-sandbox".into());
            a.push(SECCOMP.into());
        }
        if let Some(user) = self.user {
            a.push("-runas".into());
            a.push(user.into());
        }
        if self.incoming {
            a.push("-incoming".into());
            a.push(format!("fd:{INCOMING_FD}").into());
        }
        a
    }
}

fn path(p: &Path) -> OsString {
    p.as_os_str().to_owned()
}

/// `prefix` + path. QEMU splits option strings on commas: a path with a
/// comma would be read as further options, so such paths are refused
/// where sandbox directories are made (ids and config paths).
fn joined(prefix: &str, p: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(p.as_os_str());
    s.push(suffix);
    s
}

/// Whether QEMU can take `p` inside an option string.
pub fn option_safe(p: &Path) -> bool {
    !p.as_os_str().as_encoded_bytes().contains(&b',')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(incoming: bool, user: Option<&str>) -> Vec<String> {
        VmArgs {
            id: "a1",
            accel: Accel::Tcg,
            cpus: 2,
            memory_mb: 256,
            kernel: Path::new("/img/vmlinuz"),
            initrd: Path::new("/img/initrd.img"),
            guest_config: Path::new("/s/a1/guest.cfg"),
            console_log: Path::new("/s/a1/console.log"),
            qmp_socket: Path::new("/s/a1/qmp.sock"),
            tap: "tap0",
            user,
            seccomp: true,
            incoming,
            tsc_khz: Some(2_599_998),
        }
        .build()
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect()
    }

    fn after<'a>(a: &'a [String], flag: &str) -> &'a str {
        let i = a.iter().position(|x| x == flag).unwrap();
        &a[i + 1]
    }

    #[test]
    fn the_command_line() {
        let a = args(false, None);
        assert_eq!(after(&a, "-accel"), "tcg");
        assert_eq!(after(&a, "-cpu"), "max");
        assert_eq!(after(&a, "-smp"), "2");
        assert_eq!(after(&a, "-m"), "256M");
        assert_eq!(
            after(&a, "-append"),
            "console=ttyS0 reboot=k panic=-1 quiet cryptomgr.notests tsc_early_khz=2599998 tsc=reliable"
        );
        assert_eq!(
            after(&a, "-fw_cfg"),
            "name=opt/sbx/guest,file=/s/a1/guest.cfg"
        );
        assert_eq!(after(&a, "-qmp"), "unix:/s/a1/qmp.sock,server=on,wait=off");
        assert_eq!(
            after(&a, "-chardev"),
            "file,id=console,append=on,path=/s/a1/console.log"
        );
        assert_eq!(
            after(&a, "-netdev"),
            "tap,id=net0,ifname=tap0,script=no,downscript=no"
        );
        assert!(!a.contains(&"-incoming".to_string()));
        assert!(!a.contains(&"-runas".to_string()));
        let a = args(true, Some("sbx-vmm"));
        assert_eq!(after(&a, "-incoming"), "fd:3");
        assert_eq!(after(&a, "-runas"), "sbx-vmm");
    }

    #[test]
    fn commas_are_not_option_safe() {
        assert!(option_safe(Path::new("/var/lib/sbx-host/sandboxes/a")));
        assert!(!option_safe(Path::new("/var/lib/x,y")));
    }
}
