//! Host memory per idle sandbox, running and suspended.

use super::*;

impl Suite<'_> {
    /// Host memory per idle sandbox (PSS of its VMM or agent), sbx-host's
    /// against the same number of bare ones held at once; and what a
    /// suspended microVM holds (no process: its snapshot on disk).
    pub fn memory(&self, rows: &mut Vec<Row>) -> Result<()> {
        let s = &self.settings;
        let k = s.hold_microvm;
        if k > 0 {
            let mut vms = Vec::with_capacity(k);
            for _ in 0..k {
                vms.push(self.create_vm("hb-mvm")?);
            }
            let accel = self.accel_label();
            std::thread::sleep(s.settle);
            let mut pss = Vec::with_capacity(k);
            for c in &vms {
                pss.push(rig::pss_bytes(c.vmm_pid()?)? as f64);
            }
            let (mut snapshots, mut left_pss, mut left_procs) = (Vec::new(), 0u64, 0usize);
            for c in &vms {
                let (_, v) = self.world.lifecycle(&c.id, "suspend")?;
                snapshots.push(v["snapshot_bytes"].as_u64().unwrap_or(0) as f64);
                for pid in rig::cgroup_pids(&self.world.sandbox_cgroup(&c.id)) {
                    left_procs += 1;
                    left_pss += rig::pss_bytes(pid).unwrap_or(0);
                }
            }
            for c in &vms {
                self.world.delete(&c.id)?;
            }
            eprintln!("host-bench: memory: {k} sbx-host microVMs measured; booting {k} bare ones");
            let floor = self.vm_floor()?;
            let mut bare = Vec::with_capacity(k);
            for _ in 0..k {
                bare.push(floor.boot(IDS.fetch_add(1, Ordering::Relaxed) as usize)?.0);
            }
            std::thread::sleep(s.settle);
            let mut bare_pss = Vec::with_capacity(k);
            for vm in &bare {
                bare_pss.push(rig::pss_bytes(vm.pid)? as f64);
            }
            drop(bare);
            let running = mean(&pss);
            rows.push(Row::new(
                format!("microvm: idle PSS per sandbox ({k} held; floor: bare QEMU)"),
                &accel,
                Unit::Bytes,
                running,
                mean(&bare_pss),
            ));
            let held = left_pss as f64 / k as f64;
            rows.push(
                Row::new(
                    "microvm suspended: host RAM per sandbox (PSS left)",
                    &accel,
                    Unit::Bytes,
                    Some(held),
                    None,
                )
                .ratio_text(format!(
                    "{left_procs} processes left; running: {}",
                    running.map_or("n/a".into(), |r| Unit::Bytes.show(r))
                )),
            );
            let snap = mean(&snapshots);
            rows.push(
                Row::new(
                    "microvm suspended: snapshot on disk per sandbox",
                    &accel,
                    Unit::Bytes,
                    snap,
                    None,
                )
                .ratio_text(match (snap, running) {
                    (Some(d), Some(r)) if r > 0.0 => {
                        format!("x{:.2} of its running PSS", d / r)
                    }
                    _ => String::new(),
                }),
            );
        }
        let k = s.hold_process;
        if k > 0 {
            let mut sbs = Vec::with_capacity(k);
            for _ in 0..k {
                sbs.push(self.create_process("hb-mp")?);
            }
            std::thread::sleep(s.settle);
            let mut pss = Vec::with_capacity(k);
            for c in &sbs {
                pss.push(rig::pss_bytes(c.vmm_pid()?)? as f64);
            }
            for c in &sbs {
                self.world.delete(&c.id)?;
            }
            let floor = self.agent_floor();
            let mut bare = Vec::with_capacity(k);
            for _ in 0..k {
                bare.push(floor.start(&Self::id("hbfm"))?.0);
            }
            std::thread::sleep(s.settle);
            let mut bare_pss = Vec::with_capacity(k);
            for a in &mut bare {
                a.ensure_running()?;
                bare_pss.push(rig::pss_bytes(a.pid)? as f64);
            }
            drop(bare);
            rows.push(Row::new(
                format!("process: idle PSS per sandbox ({k} held; floor: bare agent)"),
                "-",
                Unit::Bytes,
                mean(&pss),
                mean(&bare_pss),
            ));
        }
        Ok(())
    }
}
