//! Suspend and resume, for each runtime, beside its floor.

use super::*;

impl Suite<'_> {
    /// Suspend and resume: a microVM to a snapshot file and back (beside
    /// writing that many bytes with fsync, and reading the snapshot cold),
    /// and the process runtime's cgroup freeze and thaw (beside a bare
    /// freeze and thaw of a cgroup holding one idle agent).
    pub fn suspend(&self, rows: &mut Vec<Row>) -> Result<()> {
        let s = &self.settings;
        let n = s.suspend_runs;
        let vm = self.create_vm("hb-svm")?;
        let accel = self.accel_label();
        std::thread::sleep(s.settle);
        let snapshot = self.world.sandbox_dir(&vm.id).join("snapshot");
        let scratch_file = self.world.state_dir.join("floor-write.bin");
        let (mut sus, mut res, mut wr, mut rd) = (vec![], vec![], vec![], vec![]);
        let mut sizes: Vec<f64> = Vec::new();
        let mut cached_after_drop: f64 = 0.0;
        for i in 0..n {
            let (took, v) = self.world.lifecycle(&vm.id, "suspend")?;
            sus.push(took);
            let bytes = v["snapshot_bytes"]
                .as_u64()
                .with_context(|| format!("suspend answer without snapshot_bytes: {v}"))?;
            let on_disk = fs::metadata(&snapshot)
                .with_context(|| format!("{}", snapshot.display()))?
                .len();
            if on_disk != bytes {
                self.note(format!(
                    "snapshot_bytes {bytes} but the file has {on_disk} bytes"
                ));
            }
            sizes.push(bytes as f64);
            wr.push(write_fsync(&scratch_file, bytes)?);
            let (took, cached) = read_cold(&snapshot)?;
            rd.push(took);
            cached_after_drop = cached_after_drop.max(cached);
            // The resume reads the snapshot cold too, as one much later would.
            rig::drop_page_cache(&snapshot)?;
            let (took, _) = self.world.lifecycle(&vm.id, "resume")?;
            res.push(took);
            eprintln!(
                "host-bench: microvm suspend/resume {}/{n}: suspend {} (write+fsync {}), resume {} (cold read {}), snapshot {}",
                i + 1,
                ms(sus[i]),
                ms(wr[i]),
                ms(res[i]),
                ms(rd[i]),
                Unit::Bytes.show(bytes as f64)
            );
        }
        self.world.delete(&vm.id)?;
        if cached_after_drop > 0.05 {
            self.note(format!(
                "up to {:.0}% of a snapshot stayed in the page cache after POSIX_FADV_DONTNEED: the cold reads were partly warm",
                cached_after_drop * 100.0
            ));
        }
        let size = sbx_bench_support::stats::median(&sizes);
        rows.push(Row::new(
            format!("microvm: suspend p50 ({n} runs; floor: write+fsync of as many bytes)"),
            &accel,
            Unit::Time,
            secs(p(&sus, 50.0)),
            secs(p(&wr, 50.0)),
        ));
        rows.push(Row::new(
            "microvm: resume -> healthy p50 (floor: cold read of the snapshot)",
            &accel,
            Unit::Time,
            secs(p(&res, 50.0)),
            secs(p(&rd, 50.0)),
        ));
        rows.push(
            Row::new(
                "microvm: snapshot size (median)",
                &accel,
                Unit::Bytes,
                size,
                None,
            )
            .ratio_text(size.map_or(String::new(), |b| {
                format!(
                    "{:.0}% of the guest's {} MiB",
                    b / (s.memory_mb as f64 * 1024.0 * 1024.0) * 100.0,
                    s.memory_mb
                )
            })),
        );

        // The process runtime: freeze and thaw.
        let proc_sb = self.create_process("hb-sp")?;
        let (agent, _) = self.agent_floor().start(&Self::id("hbfs"))?;
        let cgroup = self.floors.child("freeze")?;
        cgroup.add(agent.pid)?;
        std::thread::sleep(s.settle);
        let (mut hs, mut hr, mut fs_, mut fr) = (vec![], vec![], vec![], vec![]);
        for i in 0..n {
            for lane in lanes(i) {
                match lane {
                    Lane::Host => {
                        hs.push(self.world.lifecycle(&proc_sb.id, "suspend")?.0);
                        hr.push(self.world.lifecycle(&proc_sb.id, "resume")?.0);
                    }
                    Lane::Floor => {
                        fs_.push(cgroup.set_frozen(true)?);
                        fr.push(cgroup.set_frozen(false)?);
                    }
                }
            }
        }
        drop(cgroup);
        drop(agent);
        self.world.delete(&proc_sb.id)?;
        rows.push(Row::new(
            format!("process: suspend p50 ({n} runs; floor: bare cgroup freeze)"),
            "-",
            Unit::Time,
            secs(p(&hs, 50.0)),
            secs(p(&fs_, 50.0)),
        ));
        rows.push(Row::new(
            "process: resume -> healthy p50 (floor: bare cgroup thaw)",
            "-",
            Unit::Time,
            secs(p(&hr, 50.0)),
            secs(p(&fr, 50.0)),
        ));
        Ok(())
    }
}
