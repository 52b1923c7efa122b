//! `host-bench`: sbx-host's figures, each beside a floor measured in the
//! same run on this machine:
//!
//! - create to healthy, p50/p95, for each runtime, through sbx-host's API
//!   (`POST /v1/sandboxes` on its unix socket until the 201), each sandbox
//!   deleted after; the microVM's floor is a bare `qemu-system-x86_64` boot
//!   of the same image with sbx-host's exact command line, in a namespace
//!   of the bench's own with a tap (no sbx-host, no netctl); the process
//!   runtime's is netctl's namespace create plus an agent started in it;
//! - suspend and resume: a microVM to its snapshot and back, beside writing
//!   as many bytes with fsync and reading the snapshot cold; the process
//!   runtime's cgroup freeze and thaw, beside a bare freeze and thaw;
//! - host memory per idle sandbox (PSS of its VMM or agent), beside as
//!   many bare ones, and what a suspended microVM leaves (no process, its
//!   snapshot on disk);
//! - the accelerator each microVM figure ran on, from sbx-host's answers.
//!
//! Needs root. Everything runs in namespaces the bench makes (netctl and
//! sbx-host in a "host" namespace whose only uplink leads to an empty
//! "internet" namespace); every namespace, process and cgroup it made is
//! removed when it ends, also on an error or Ctrl-C. See
//! `scripts/bench-host.sh`.

mod floor;
mod report;
mod rig;
mod suite;
mod world;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use sbx_bench_support::child::find_on_path;
use sbx_bench_support::machine;
use sbx_bench_support::report::{write_json, Verdict};
use sbx_bench_support::scratch::Scratch;
use sha2::{Digest as _, Sha256};

use crate::report::Row;
use crate::suite::{Settings, Suite};
use crate::world::{Bins, World};

#[derive(Debug, Parser)]
#[command(
    name = "host-bench",
    about = "Benchmark sbx-host against bare QEMU, agent and cgroup floors measured in the same run"
)]
struct Cli {
    /// Where sbx-host, netctl and sbx-agent are [default: beside this binary].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where `scripts/build-image.sh` put the images [default: <bin-dir>/../images].
    #[arg(long)]
    images_dir: Option<PathBuf>,
    /// The image every microVM (sbx-host's and the floor's) boots.
    #[arg(long, default_value = "default")]
    image: String,
    /// The QEMU binary, for sbx-host and the floor alike.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Run only these parts; all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Runs of every repeated figure (overrides the three counts below).
    #[arg(long)]
    runs: Option<usize>,
    /// Process sandboxes created (and floors started) for the create figure.
    #[arg(long, default_value_t = 30)]
    process_runs: usize,
    /// microVMs created (and bare ones booted) for the create figure.
    #[arg(long, default_value_t = 8)]
    microvm_runs: usize,
    /// Suspend/resume cycles of each runtime.
    #[arg(long, default_value_t = 5)]
    suspend_runs: usize,
    /// microVMs held at once for the memory figure (and as many bare ones).
    #[arg(long, default_value_t = 3)]
    hold_microvm: usize,
    /// Process sandboxes held at once for the memory figure.
    #[arg(long, default_value_t = 10)]
    hold_process: usize,
    /// cpus of every sandbox (QEMU gets whole vCPUs, rounded up).
    #[arg(long, default_value_t = 1.0)]
    cpus: f64,
    /// memory_mb of every sandbox (sbx-host's default).
    #[arg(long, default_value_t = 512)]
    memory_mb: u64,
    /// Idle time before memory is read (and before suspends), in ms.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Uncounted runs of each lane before the create figures.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the scratch directory (configs, logs of every daemon and floor).
    #[arg(long)]
    keep_logs: bool,
    /// Exit with status 1 if a target is missed.
    #[arg(long)]
    fail_on_miss: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Create to healthy, process runtime.
    Process,
    /// Create to healthy, microVM runtime.
    Microvm,
    /// Suspend and resume, both runtimes.
    Suspend,
    /// Host memory per idle and per suspended sandbox.
    Memory,
}

impl Cli {
    fn wants(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }

    fn settings(&self) -> Settings {
        let runs = |n: usize| self.runs.unwrap_or(n).max(1);
        Settings {
            process_runs: runs(self.process_runs),
            microvm_runs: runs(self.microvm_runs),
            suspend_runs: runs(self.suspend_runs),
            hold_microvm: self.hold_microvm,
            hold_process: self.hold_process,
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            settle: Duration::from_millis(self.settle_ms),
            warmup: self.warmup,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    rig::install_signal_handlers();
    match run(&cli) {
        Ok(all_met) if all_met || !cli.fail_on_miss => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("host-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bins(cli: &Cli) -> Result<Bins> {
    let exe = std::env::current_exe().context("locate this binary")?;
    let dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => exe
            .parent()
            .context("this binary has no directory")?
            .to_owned(),
    };
    let need = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        if !p.is_file() {
            bail!(
                "{} missing (cargo build --profile <profile> -p {})",
                p.display(),
                match name {
                    "sbx-host" => "sbx-host",
                    "netctl" => "netctl",
                    _ => "sbx-agent",
                }
            );
        }
        // Absolute: sbx-host starts the agent and QEMU from `/`.
        p.canonicalize()
            .with_context(|| format!("resolve {}", p.display()))
    };
    let qemu = if cli.qemu.components().count() > 1 {
        cli.qemu
            .canonicalize()
            .with_context(|| format!("resolve {}", cli.qemu.display()))?
    } else {
        find_on_path(&cli.qemu.to_string_lossy())
            .with_context(|| format!("{} not on PATH", cli.qemu.display()))?
    };
    let images_dir = match &cli.images_dir {
        Some(d) => d.clone(),
        None => dir.join("../images"),
    };
    Ok(Bins {
        sbx_host: need("sbx-host")?,
        netctl: need("netctl")?,
        agent: need("sbx-agent")?,
        qemu,
        nsenter: find_on_path("nsenter").context("nsenter not on PATH (util-linux)")?,
        images_dir: images_dir
            .canonicalize()
            .with_context(|| format!("no images directory {}", images_dir.display()))?,
        image: cli.image.clone(),
    })
}

fn sha256_hex(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
}

fn run(cli: &Cli) -> Result<bool> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces, taps, cgroups, QEMU on a tap)");
    }
    let started = Instant::now();
    let bins = bins(cli)?;
    let image = sbx_host::image::find(&bins.images_dir, &bins.image).with_context(|| {
        format!(
            "build it: scripts/build-image.sh --name {} --out {} --agent {}",
            bins.image,
            bins.images_dir.display(),
            bins.agent.display()
        )
    })?;
    let settings = cli.settings();
    let scratch = Scratch::create("sbx-host-bench", cli.keep_logs)?;
    let load_before = machine::loadavg();
    let manifest: serde_json::Value =
        std::fs::read_to_string(bins.images_dir.join(&bins.image).join("manifest.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
    let qemu_version = first_line(Command::new(&bins.qemu).arg("--version"));
    println!(
        "host-bench: sbx-host {}, netctl {}, process agent {}; image {} (kernel {}); {qemu_version}",
        bins.sbx_host.display(),
        bins.netctl.display(),
        bins.agent.display(),
        image.kernel.parent().unwrap_or(Path::new("?")).display(),
        manifest["kernel"].as_str().unwrap_or("?"),
    );
    let mut early_notes = Vec::new();
    if let (Some(in_image), Ok(ours)) = (manifest["agent_sha256"].as_str(), sha256_hex(&bins.agent))
    {
        if in_image != ours {
            early_notes.push(format!(
                "the image's agent (sha256 {}…) is not {} ({}…): the microVM and process figures run different agent builds",
                &in_image[..12.min(in_image.len())],
                bins.agent.display(),
                &ours[..12]
            ));
        }
    }

    eprintln!("host-bench: starting netctl and sbx-host (sbx-host probes KVM first)");
    let world_started = Instant::now();
    let mut world = World::start(&bins, &scratch)?;
    let world_took = world_started.elapsed();
    let netctl_prefix = world.netctl_prefix.clone();
    let cgroup_root = world.cgroups.path.clone();
    let state_fs = rig::filesystem_of(&world.state_dir);

    let suite = Suite::new(&world, &bins, image, &scratch, settings.clone())?;
    for n in early_notes {
        suite.note(n);
    }
    let mut rows: Vec<Row> = Vec::new();
    let result = (|| -> Result<()> {
        if cli.wants(Part::Process) {
            suite.process_create(&mut rows)?;
        }
        if cli.wants(Part::Microvm) {
            suite.microvm_create(&mut rows)?;
        }
        if cli.wants(Part::Suspend) {
            suite.suspend(&mut rows)?;
        }
        if cli.wants(Part::Memory) {
            suite.memory(&mut rows)?;
        }
        Ok(())
    })();
    // sbx-host decides its accelerator beside serving, so its log line is
    // read once the figures are in (waiting for it when they came first).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut accel_line = world.accel_log_line();
    while accel_line.is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        accel_line = world.accel_log_line();
    }
    match accel_line {
        Some(l) => suite.note(format!("sbx-host at start (accel = \"auto\"): {l}")),
        None => suite.note("sbx-host logged no accelerator decision".into()),
    }
    let notes = suite.notes.take();
    let verdicts = suite.verdicts.take();
    drop(suite);
    if result.is_ok() {
        world.ensure_running()?;
    }
    let host_log = scratch.log("sbx-host");
    let host_errors: Vec<String> = rig::strip_ansi(&std::fs::read_to_string(&host_log)?)
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .filter(|l| !l.contains("accelerator:"))
        .map(str::to_owned)
        .collect();
    drop(world);
    result?;

    // Everything the bench made is gone?
    let pid = std::process::id() % 100_000;
    let mut left: Vec<String> = rig::namespaces_with_prefix(&netctl_prefix);
    for p in ["hbh", "hbi", "hbf"] {
        left.extend(rig::namespaces_with_prefix(&format!("{p}{pid}x")));
    }
    let mut notes = notes;
    if !left.is_empty() {
        notes.push(format!("namespaces left behind: {left:?}"));
    }
    if cgroup_root.exists() {
        notes.push(format!("cgroup left behind: {}", cgroup_root.display()));
    }
    if !host_errors.is_empty() {
        notes.push(format!(
            "sbx-host logged {} warnings/errors, the last: {}",
            host_errors.len(),
            host_errors.last().map(String::as_str).unwrap_or("")
        ));
    }

    let load_after = machine::loadavg();
    println!();
    print!("{}", report::table(&rows));
    println!();
    if !verdicts.is_empty() {
        println!("Targets:");
        for v in &verdicts {
            println!("  {v}");
        }
        println!();
    }
    println!("{}", machine::summary(&load_before, &load_after));
    let mut counts = Vec::new();
    if cli.wants(Part::Process) {
        counts.push(format!("process create {}", settings.process_runs));
    }
    if cli.wants(Part::Microvm) {
        counts.push(format!("microvm create {}", settings.microvm_runs));
    }
    if cli.wants(Part::Suspend) {
        counts.push(format!(
            "suspend/resume {} of each runtime",
            settings.suspend_runs
        ));
    }
    if cli.wants(Part::Memory) {
        counts.push(format!(
            "memory {} microVMs and {} process sandboxes held",
            settings.hold_microvm, settings.hold_process
        ));
    }
    println!(
        "Sandboxes: cpus {}, memory_mb {}; runs: {}; {} warm-up run(s) of each create lane not counted; \
         sbx-host and floor runs interleaved; world up in {:.1} s (sbx-host probes its accelerator beside serving); \
         took {:.0} s",
        settings.cpus,
        settings.memory_mb,
        counts.join(", "),
        settings.warmup,
        world_took.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    println!(
        "Create: sbx-host = POST /v1/sandboxes on its unix socket until the 201 (its agent answered \
         GET /api/v1/health; sbx-host polls every 20 ms), each deleted after. Floor (process) = netctl PUT \
         with setup (no tap, no policy) + nsenter --net sbx-agent with sbx-host's flags, until its first \
         health answer from the host namespace. Floor (microvm) = {} with sbx-host's argv (VmArgs::build: \
         same accel, kernel command line, tsc_early_khz under TCG, seccomp), placed like sbx-host \
         (procs::Placement) in a bench namespace with a tap at 10.0.2.1/30, until 10.0.2.2:9501 answers. \
         Floors poll every {} ms.",
        bins.qemu.display(),
        rig::FLOOR_POLL.as_millis()
    );
    println!(
        "Suspend: microVM snapshot in sbx-host's state dir ({state_fs}); its page cache dropped \
         (POSIX_FADV_DONTNEED) before the floor's read and before each resume. Process: sbx-host's \
         suspend and resume (resume includes a health check) vs writing cgroup.freeze and spinning on \
         cgroup.events of a cgroup holding one idle bare agent."
    );
    println!(
        "Memory: PSS (/proc/<pid>/smaps_rollup) of each VMM (QEMU) or agent process, {} ms after the \
         last of the held sandboxes answered, averaged; suspended: PSS of what is left in the \
         sandbox's cgroup, and the snapshot's bytes.",
        settings.settle.as_millis()
    );
    for n in &notes {
        println!("NOTE: {n}");
    }
    if cli.keep_logs {
        println!("Logs kept in {}", scratch.dir().display());
    }
    if let Some(path) = &cli.json {
        let doc = serde_json::json!({
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "targets": verdicts,
            "notes": notes,
            "load_before": load_before,
            "load_after": load_after,
            "settings": {
                "cpus": settings.cpus,
                "memory_mb": settings.memory_mb,
                "process_runs": settings.process_runs,
                "microvm_runs": settings.microvm_runs,
                "suspend_runs": settings.suspend_runs,
                "hold_microvm": settings.hold_microvm,
                "hold_process": settings.hold_process,
                "warmup": settings.warmup,
            },
        });
        write_json(path, &doc)?;
    }
    Ok(rows.iter().all(|r| r.verdict != Verdict::Miss))
}
