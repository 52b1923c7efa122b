//! The figures: each sbx-host measurement and its floor, taken in the same
//! run and, where both are repeated, interleaved (sbx-host first on even
//! runs, the floor first on odd ones) so that a drift in the machine's load
//! weighs on both alike.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use sbx_bench_support::scratch::Scratch;
use sbx_bench_support::stats::percentile;
use sbx_host::image::Image;
use sbx_host::runtime::microvm::args::Accel;

use crate::floor::{AgentFloor, VmFloor};
use crate::report::{secs, Row, Unit};
use crate::rig::{self, Cgroup};
use crate::world::{Bins, Created, World};

static IDS: AtomicU32 = AtomicU32::new(0);

/// The process runtime's target: create to healthy, p50.
pub const PROCESS_CREATE_TARGET: Duration = Duration::from_millis(150);
/// The microVM target: sbx-host adds at most this share of the floor ...
pub const MICROVM_OVER_FLOOR: f64 = 0.10;
/// ... plus this much.
pub const MICROVM_OVER_FLOOR_FIXED: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct Settings {
    pub process_runs: usize,
    pub microvm_runs: usize,
    pub suspend_runs: usize,
    pub hold_microvm: usize,
    pub hold_process: usize,
    pub cpus: f64,
    pub memory_mb: u64,
    pub settle: Duration,
    pub warmup: usize,
}

pub struct Suite<'a> {
    pub world: &'a World,
    pub bins: &'a Bins,
    pub image: Image,
    pub settings: Settings,
    pub notes: RefCell<Vec<String>>,
    /// One line per target: met or not, with the numbers.
    pub verdicts: RefCell<Vec<String>>,
    floors: Cgroup,
    floor_dir: PathBuf,
    agent_config: PathBuf,
    key_file: PathBuf,
    agent_log: PathBuf,
    host_ns_path: PathBuf,
    /// The accelerator of sbx-host's first microVM; the floors boot on it.
    accel: Cell<Option<Accel>>,
    accels_seen: RefCell<BTreeSet<String>>,
}

#[derive(Clone, Copy)]
enum Lane {
    Host,
    Floor,
}

/// sbx-host first on even runs, the floor first on odd ones.
fn lanes(i: usize) -> [Lane; 2] {
    if i.is_multiple_of(2) {
        [Lane::Host, Lane::Floor]
    } else {
        [Lane::Floor, Lane::Host]
    }
}

fn ms(d: Duration) -> String {
    Unit::Time.show(d.as_secs_f64())
}

fn p(samples: &[Duration], q: f64) -> Option<Duration> {
    percentile(samples, q)
}

impl<'a> Suite<'a> {
    pub fn new(
        world: &'a World,
        bins: &'a Bins,
        image: Image,
        scratch: &Scratch,
        settings: Settings,
    ) -> Result<Self> {
        let agent_config = scratch.path("agent.toml");
        fs::write(&agent_config, "")?;
        let floor_dir = scratch.path("floors");
        fs::create_dir_all(&floor_dir)?;
        Ok(Self {
            world,
            bins,
            image,
            settings,
            notes: RefCell::default(),
            verdicts: RefCell::default(),
            floors: world.cgroups.child("floor")?,
            floor_dir,
            agent_config,
            key_file: scratch.key_file.clone(),
            agent_log: scratch.log("sbx-agent-floor"),
            host_ns_path: world.host_ns.path(),
            accel: Cell::new(None),
            accels_seen: RefCell::default(),
        })
    }

    pub fn note(&self, n: String) {
        eprintln!("host-bench: NOTE: {n}");
        self.notes.borrow_mut().push(n);
    }

    fn id(prefix: &str) -> String {
        format!("{prefix}-{}", IDS.fetch_add(1, Ordering::Relaxed))
    }

    /// The accelerators sbx-host's microVMs ran on, as the table shows.
    pub fn accel_label(&self) -> String {
        let seen = self.accels_seen.borrow();
        if seen.is_empty() {
            "?".into()
        } else {
            seen.iter().cloned().collect::<Vec<_>>().join("+")
        }
    }

    /// Records the accelerator of a microVM sbx-host made.
    fn saw(&self, c: &Created) -> Result<Accel> {
        let accel = match c.accel().as_deref() {
            Some("kvm") => Accel::Kvm,
            Some("tcg") => Accel::Tcg,
            other => bail!("{}: sbx-host answered accel {other:?}", c.id),
        };
        self.accels_seen
            .borrow_mut()
            .insert(accel.as_str().to_owned());
        match self.accel.get() {
            None => self.accel.set(Some(accel)),
            Some(first) if first != accel => self.note(format!(
                "sbx-host ran {} on {}, an earlier microVM on {} (the floors use {})",
                c.id,
                accel.as_str(),
                first.as_str(),
                first.as_str()
            )),
            Some(_) => {}
        }
        Ok(accel)
    }

    fn create_vm(&self, prefix: &str) -> Result<Created> {
        let s = &self.settings;
        let c = self
            .world
            .create(&Self::id(prefix), "microvm", s.cpus, s.memory_mb)?;
        self.saw(&c)?;
        Ok(c)
    }

    fn create_process(&self, prefix: &str) -> Result<Created> {
        let s = &self.settings;
        self.world
            .create(&Self::id(prefix), "process", s.cpus, s.memory_mb)
    }

    fn vm_floor(&self) -> Result<VmFloor<'_>> {
        let accel = match self.accel.get() {
            Some(a) => a,
            None => bail!("no microVM made by sbx-host yet: its accelerator is unknown"),
        };
        Ok(VmFloor {
            qemu: &self.bins.qemu,
            image: &self.image,
            accel,
            // sbx-host gives QEMU whole vCPUs, a fraction rounded up.
            cpus: (self.settings.cpus.ceil() as u32).max(1),
            memory_mb: self.settings.memory_mb,
            dir: self.floor_dir.clone(),
            cgroups: &self.floors,
        })
    }

    fn agent_floor(&self) -> AgentFloor<'_> {
        AgentFloor {
            nsenter: &self.bins.nsenter,
            agent: &self.bins.agent,
            netctl: &self.world.netctl_api,
            host_ns: &self.host_ns_path,
            agent_config: &self.agent_config,
            key_file: &self.key_file,
            log: self.agent_log.clone(),
        }
    }

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

/// The guest's uptime when its init started the agent: the console's
/// `sbx-init: ready in 1.13 s` line.
fn agent_started_at(console: &Path) -> Option<Duration> {
    let text = fs::read_to_string(console).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("sbx-init: ready in "))
        .and_then(|rest| rest.trim().trim_end_matches(" s").parse::<f64>().ok())
        .map(Duration::from_secs_f64)
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn signed_ms(a: Duration, b: Duration) -> String {
    let d = a.as_secs_f64() - b.as_secs_f64();
    format!(
        "{}{}",
        if d < 0.0 { "-" } else { "+" },
        Unit::Time.show(d.abs())
    )
}

/// Writes `bytes` bytes (incompressible, 1 MiB at a time) to a new file at
/// `path` and fsyncs it: the floor of writing a snapshot. Removes the file.
fn write_fsync(path: &Path, bytes: u64) -> Result<Duration> {
    let mut buf = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in buf.chunks_mut(8) {
        // xorshift64: data no layer below can compress or deduplicate.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let started = Instant::now();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    let took = started.elapsed();
    fs::remove_file(path)?;
    Ok(took)
}

/// Drops `path` from the page cache, then reads it whole with a plain
/// read loop: the floor of loading a snapshot. Returns the time and the
/// share of its pages still cached after the drop.
fn read_cold(path: &Path) -> Result<(Duration, f64)> {
    rig::drop_page_cache(path)?;
    let cached = rig::cached_fraction(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let took = started.elapsed();
    if total == 0 {
        bail!("{}: empty", path.display());
    }
    Ok((took, cached))
}
