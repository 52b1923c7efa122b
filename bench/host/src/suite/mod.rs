//! The figures: each sbx-host measurement and its floor, taken in the same
//! run and, where both are repeated, interleaved (sbx-host first on even
//! runs, the floor first on odd ones) so that a drift in the machine's load
//! weighs on both alike. One file per family of figures: creates,
//! suspend and resume, memory.

mod create;
mod memory;
mod suspend;

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
