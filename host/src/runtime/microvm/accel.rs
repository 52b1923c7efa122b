//! KVM or TCG, decided by booting, not by opening `/dev/kvm`: on some
//! machines the device opens and `KVM_CREATE_VM` works, yet a vCPU never
//! runs (nested virtualization off: QEMU spins in the kernel). The probe
//! boots the image's kernel under KVM with no devices and waits for its
//! first console line.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use super::args::Accel;
use crate::config::AccelChoice;

/// What the kernel prints first on its console.
const FIRST_LINE: &[u8] = b"Linux version";

pub async fn decide(choice: AccelChoice, qemu: &Path, kernel: &Path, timeout: Duration) -> Accel {
    match choice {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => {
            info!("accelerator: tcg (configured)");
            Accel::Tcg
        }
        AccelChoice::Auto => {
            let started = Instant::now();
            match probe_kvm(qemu, kernel, timeout).await {
                Ok(()) => {
                    info!(
                        probe_ms = started.elapsed().as_millis() as u64,
                        "accelerator: kvm (a probe guest ran)"
                    );
                    Accel::Kvm
                }
                Err(why) => {
                    warn!(%why, "accelerator: tcg (software emulation, much slower): KVM cannot run a guest here");
                    Accel::Tcg
                }
            }
        }
    }
}

async fn probe_kvm(qemu: &Path, kernel: &Path, timeout: Duration) -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("no /dev/kvm".into());
    }
    let mut child = tokio::process::Command::new(qemu)
        .args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=on",
            "-accel",
            "kvm",
            "-cpu",
            "host",
        ])
        .args([
            "-m",
            "128M",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
        ])
        .args(["-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start {}: {e}", qemu.display()))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let seen = tokio::time::timeout(timeout, async {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 1024];
        loop {
            let n = out.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the probe guest exited without output".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(FIRST_LINE.len()).any(|w| w == FIRST_LINE) {
                return Ok(());
            }
            if buf.len() > 64 * 1024 {
                return Err("no kernel banner in 64 KiB of output".into());
            }
        }
    })
    .await;
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    match seen {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the probe guest printed nothing in {} ms",
            timeout.as_millis()
        )),
    }
}
