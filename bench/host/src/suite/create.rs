//! Create to healthy, for each runtime, beside its floor.

use super::*;

impl Suite<'_> {
    /// Create to healthy through sbx-host's API, and the bare agent floor.
    pub fn process_create(&self, rows: &mut Vec<Row>) -> Result<()> {
        let s = &self.settings;
        let floor = self.agent_floor();
        for _ in 0..s.warmup {
            let c = self.create_process("hb-wp")?;
            self.world.delete(&c.id)?;
            drop(floor.start(&Self::id("hbfw"))?);
        }
        let mut host = Vec::with_capacity(s.process_runs);
        let mut bare = Vec::with_capacity(s.process_runs);
        for i in 0..s.process_runs {
            for lane in lanes(i) {
                match lane {
                    Lane::Host => {
                        let c = self.create_process("hb-p")?;
                        host.push(c.took);
                        self.world.delete(&c.id)?;
                    }
                    Lane::Floor => {
                        let (agent, took) = floor.start(&Self::id("hbfp"))?;
                        bare.push(took);
                        drop(agent);
                    }
                }
            }
            eprintln!(
                "host-bench: process create {}/{}: sbx-host {}, floor {}",
                i + 1,
                s.process_runs,
                ms(host[i]),
                ms(bare[i])
            );
        }
        let (h50, f50) = (p(&host, 50.0), p(&bare, 50.0));
        let met = h50.map(|h| h < PROCESS_CREATE_TARGET);
        rows.push(
            Row::new(
                format!("process: create -> healthy p50 ({} runs)", host.len()),
                "-",
                Unit::Time,
                secs(h50),
                secs(f50),
            )
            .target("p50 < 150 ms", met),
        );
        rows.push(Row::new(
            "process: create -> healthy p95",
            "-",
            Unit::Time,
            secs(p(&host, 95.0)),
            secs(p(&bare, 95.0)),
        ));
        if let (Some(h), Some(f)) = (h50, f50) {
            self.verdicts.borrow_mut().push(format!(
                "process create p50 < 150 ms: {} -- sbx-host p50 {} (p95 {}), floor p50 {} (sbx-host adds {})",
                if h < PROCESS_CREATE_TARGET { "MET" } else { "NOT MET" },
                ms(h),
                p(&host, 95.0).map(ms).unwrap_or_default(),
                ms(f),
                signed_ms(h, f),
            ));
        }
        Ok(())
    }

    /// Create to healthy of a microVM through sbx-host's API, and a bare
    /// QEMU boot of the same image with the same command line.
    pub fn microvm_create(&self, rows: &mut Vec<Row>) -> Result<()> {
        let s = &self.settings;
        for w in 0..s.warmup.max(1) {
            // Also what tells the floor which accelerator to use.
            let c = self.create_vm("hb-wvm")?;
            eprintln!(
                "host-bench: microvm warm-up {}: sbx-host {} ({})",
                w + 1,
                ms(c.took),
                c.accel().unwrap_or_default()
            );
            self.world.delete(&c.id)?;
        }
        let floor = self.vm_floor()?;
        for _ in 0..s.warmup {
            drop(floor.boot(IDS.fetch_add(1, Ordering::Relaxed) as usize)?);
        }
        let mut host = Vec::with_capacity(s.microvm_runs);
        let mut bare = Vec::with_capacity(s.microvm_runs);
        // The guest's own uptime when its init started the agent (console),
        // and the create time less that: what is spent outside the guest's
        // boot (host side, agent start, health polling), which the guest's
        // own boot-time noise does not blur.
        let (mut host_guest, mut bare_guest) = (Vec::new(), Vec::new());
        let (mut host_out, mut bare_out) = (Vec::new(), Vec::new());
        for i in 0..s.microvm_runs {
            for lane in lanes(i) {
                match lane {
                    Lane::Host => {
                        let c = self.create_vm("hb-vm")?;
                        host.push(c.took);
                        let up =
                            agent_started_at(&self.world.sandbox_dir(&c.id).join("console.log"));
                        host_guest.extend(up);
                        host_out.extend(up.map(|u| c.took.saturating_sub(u)));
                        self.world.delete(&c.id)?;
                    }
                    Lane::Floor => {
                        let (vm, took) = floor.boot(IDS.fetch_add(1, Ordering::Relaxed) as usize)?;
                        bare.push(took);
                        let up = agent_started_at(&vm.console);
                        bare_guest.extend(up);
                        bare_out.extend(up.map(|u| took.saturating_sub(u)));
                        drop(vm);
                    }
                }
            }
            eprintln!(
                "host-bench: microvm create {}/{}: sbx-host {} (guest: agent started at {}), floor {} (at {})",
                i + 1,
                s.microvm_runs,
                ms(host[i]),
                host_guest.last().map_or("?".into(), |d| ms(*d)),
                ms(bare[i]),
                bare_guest.last().map_or("?".into(), |d| ms(*d)),
            );
        }
        let accel = self.accel_label();
        let limit = |f: Duration| f.mul_f64(1.0 + MICROVM_OVER_FLOOR) + MICROVM_OVER_FLOOR_FIXED;
        let (h50, f50) = (p(&host, 50.0), p(&bare, 50.0));
        let (h95, f95) = (p(&host, 95.0), p(&bare, 95.0));
        let met = h50.zip(f50).map(|(h, f)| h <= limit(f));
        rows.push(
            Row::new(
                format!("microvm: create -> healthy p50 ({} runs)", host.len()),
                &accel,
                Unit::Time,
                secs(h50),
                secs(f50),
            )
            .target("<= floor x1.10 + 50 ms", met),
        );
        rows.push(Row::new(
            "microvm: create -> healthy p95",
            &accel,
            Unit::Time,
            secs(h95),
            secs(f95),
        ));
        rows.push(Row::new(
            "microvm: guest uptime at agent start p50 (console)",
            &accel,
            Unit::Time,
            secs(p(&host_guest, 50.0)),
            secs(p(&bare_guest, 50.0)),
        ));
        rows.push(Row::new(
            "microvm: create less that uptime, p50 (outside the guest's boot)",
            &accel,
            Unit::Time,
            secs(p(&host_out, 50.0)),
            secs(p(&bare_out, 50.0)),
        ));
        if host_guest.len() < host.len() || bare_guest.len() < bare.len() {
            self.note(format!(
                "no `sbx-init: ready in` console line for {} of sbx-host's and {} of the floor's guests",
                host.len() - host_guest.len(),
                bare.len() - bare_guest.len()
            ));
        }
        if let (Some(h), Some(f), Some(h95), Some(f95)) = (h50, f50, h95, f95) {
            let outside = match (p(&host_out, 50.0), p(&bare_out, 50.0)) {
                (Some(a), Some(b)) => format!(
                    "; outside the guest's boot: {} vs {} ({})",
                    ms(a),
                    ms(b),
                    signed_ms(a, b)
                ),
                _ => String::new(),
            };
            self.verdicts.borrow_mut().push(format!(
                "microvm create, sbx-host adds <= 10% + 50 ms over a bare QEMU boot ({accel}): {} -- \
                 p50 {} vs floor {} (limit {}; sbx-host adds {}, {:+.1}%); p95 {} vs floor {} (limit {}: {}){outside}",
                if h <= limit(f) { "MET" } else { "NOT MET" },
                ms(h),
                ms(f),
                ms(limit(f)),
                signed_ms(h, f),
                (h.as_secs_f64() / f.as_secs_f64() - 1.0) * 100.0,
                ms(h95),
                ms(f95),
                ms(limit(f95)),
                if h95 <= limit(f95) { "within" } else { "over" },
            ));
        }
        Ok(())
    }
}
