//! `netctl-bench`: netctl's targets, each printed next to a baseline
//! measured in the same run on this machine:
//!
//! - apply of a 10-entry policy and of 10,000 CIDRs (PUT → rules in the
//!   kernel), against a bare `nft` transaction and an API round trip;
//! - TCP throughput from a sandbox through a 10,000-prefix deny set
//!   (connections judged once per policy generation), against the same
//!   path with no table and with a conntrack-only table;
//! - the time from a tightening PUT to an open connection being cut;
//! - daemon start with 200 saved sandboxes, against a start with none;
//! - sandbox network setup: 100 creates in a row (namespace, veth,
//!   addresses, routes, 10-entry policy) then 100 deletes, by netctl running
//!   in a host namespace the bench made: p50/p90/p99/max, and the mean of
//!   the first 20 against the last 20 (no growth), against a shell of `ip`
//!   and `nft -f` commands making the same objects.
//!
//! Needs root (namespaces); everything it makes is removed when it ends.

mod dns;
mod rig;
mod setup;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

use crate::rig::{in_netns, link, Daemon, Netns};

#[derive(Debug, Parser)]
#[command(
    name = "netctl-bench",
    about = "Benchmark netctl against same-run baselines"
)]
struct Cli {
    /// The netctl binary (default: next to this one).
    #[arg(long)]
    netctl: Option<PathBuf>,
    /// Seconds per throughput run (three runs each way, interleaved).
    #[arg(long, default_value_t = 2)]
    seconds: u64,
    /// Saved sandboxes for the reconcile figure.
    #[arg(long, default_value_t = 200)]
    sandboxes: usize,
    /// Only the throughput figures.
    #[arg(long)]
    throughput_only: bool,
    /// Applies measured per policy size.
    #[arg(long, default_value_t = 40)]
    applies: usize,
    /// Only the sandbox network setup figures.
    #[arg(long, conflicts_with = "throughput_only")]
    setup_only: bool,
    /// Sandbox networks created (then deleted) in a row.
    #[arg(long, default_value_t = 100)]
    setups: usize,
    /// Only the apply figures (and the tightening-to-cut time).
    #[arg(long, conflicts_with_all = ["throughput_only", "setup_only", "dns_only"])]
    apply_only: bool,
    /// Only the DNS forwarder figures.
    #[arg(long, conflicts_with_all = ["throughput_only", "setup_only"])]
    dns_only: bool,
    /// Sandboxes with domain rules for the many-sandboxes DNS figure.
    #[arg(long, default_value_t = 1000)]
    dns_sandboxes: usize,
}

const SINK: &str = "192.0.2.1";
const SINK_PORT: u16 = 5201;
/// Throughput runs per lane.
const ROUNDS: usize = 5;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netctl-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn netctl_path(cli: &Cli) -> Result<PathBuf> {
    if let Some(p) = &cli.netctl {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name("netctl"))
}

fn run(cli: &Cli) -> Result<()> {
    let netctl = netctl_path(cli)?;
    let dir = std::env::temp_dir().join(format!("netctl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    println!(
        "netctl-bench: {} (nft {})",
        netctl.display(),
        rig::run(std::process::Command::new("nft").arg("--version"))?.trim()
    );
    if cli.setup_only {
        return setup::setup_figures(&netctl, &dir.join("setup"), cli.setups);
    }
    if cli.dns_only {
        return dns::dns_figures(&netctl, &dir.join("dns"), cli.dns_sandboxes);
    }

    let sandbox = Netns::new("nbs")?;
    let internet = Netns::new("nbi")?;
    link(&sandbox, "192.0.2.2/24", &internet, &format!("{SINK}/24"))?;
    let (daemon, _) = Daemon::start(&netctl, &dir.join("apply"))?;

    if !cli.throughput_only {
        apply_figures(cli, &daemon, &sandbox, &netctl, &dir)?;
    }
    if cli.apply_only {
        start_sink(&internet)?;
        return cut_figures(&daemon, &sandbox);
    }
    throughput_figures(cli, &daemon, &sandbox, &internet)?;
    cut_figures(&daemon, &sandbox)?;
    drop(daemon);
    let _ = std::fs::remove_file(sandbox_ct_file());
    if !cli.throughput_only {
        reconcile_figures(cli, &netctl, &dir)?;
        setup::setup_figures(&netctl, &dir.join("setup"), cli.setups)?;
        dns::dns_figures(&netctl, &dir.join("dns"), cli.dns_sandboxes)?;
    }
    Ok(())
}

struct RemoveDir(PathBuf);
impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// 10 entries: addresses, CIDRs of both families.
fn small_policy(variant: usize) -> String {
    let mut entries: Vec<String> = (0..6)
        .map(|i| format!("\"198.51.100.{}\"", i * 2 + variant))
        .collect();
    entries.extend((0..4).map(|i| format!("\"2001:db8:{:x}::/48\"", i * 2 + variant)));
    format!(r#"{{"deny_out": [{}]}}"#, entries.join(","))
}

/// `count` non-adjacent IPv4 /25s in 10.0.0.0/8 (nothing to merge), so the
/// set really holds that many intervals.
fn big_policy(count: usize, variant: usize) -> String {
    let entries: Vec<String> = (0..count)
        .map(|i| {
            let n = i * 2 + variant;
            format!("\"10.{}.{}.0/25\"", (n >> 8) & 0xff, n & 0xff)
        })
        .collect();
    format!(r#"{{"deny_out": [{}]}}"#, entries.join(","))
}

fn apply_figures(
    cli: &Cli,
    daemon: &Daemon,
    sandbox: &Netns,
    netctl: &Path,
    dir: &Path,
) -> Result<()> {
    let ns = sandbox.name.clone();
    // Baseline: the same applies with one `nft` per change (no session),
    // through a second daemon that has the namespace to itself meanwhile.
    let mut one_shot = Vec::new();
    {
        let (plain, _) = Daemon::start_with(
            netctl,
            &dir.join("apply-one-shot"),
            "nft_session_idle_secs = 0\n[dns]\nupstreams = [\"192.0.2.53\"]\n",
            None,
        )?;
        for i in 0..cli.applies {
            let policy = small_policy(i % 2);
            let t = Instant::now();
            plain.put("bench", &ns, &policy)?;
            one_shot.push(t.elapsed());
        }
        let (status, body) = plain.call("DELETE", "/v1/sandboxes/bench", "")?;
        anyhow::ensure!(status == 204, "DELETE: {status} {body}");
    }
    // Baselines: an API round trip, and a bare nft transaction in the netns.
    let mut health = Vec::new();
    for _ in 0..cli.applies {
        let t = Instant::now();
        daemon.call("GET", "/v1/health", "")?;
        health.push(t.elapsed());
    }
    let mut bare = Vec::new();
    for _ in 0..cli.applies.min(20) {
        let t = Instant::now();
        sandbox.exec("nft", &["add", "table", "inet", "bench_noop"])?;
        bare.push(t.elapsed());
    }
    sandbox.exec("nft", &["delete", "table", "inet", "bench_noop"])?;
    // The floor of a real change: one nft transaction that swaps the
    // contents of an interval set, as a file (bench-made text, fixed).
    let floor_file =
        std::env::temp_dir().join(format!("netctl-bench-floor-{}.nft", std::process::id()));
    sandbox.exec("nft", &["add", "table", "inet", "bench_floor"])?;
    sandbox.exec(
        "nft",
        &[
            "add",
            "set",
            "inet",
            "bench_floor",
            "s",
            "{ type ipv4_addr; flags interval; }",
        ],
    )?;
    let mut floor = Vec::new();
    for i in 0..cli.applies.min(20) {
        let v = i % 2;
        std::fs::write(
            &floor_file,
            format!("flush set inet bench_floor s\nadd element inet bench_floor s {{ 198.51.100.{v}, 198.51.100.{}, 203.0.113.0/2{} }}\n", v + 2, 4 + v),
        )?;
        let t = Instant::now();
        sandbox.exec("nft", &["-f", floor_file.to_str().unwrap_or_default()])?;
        floor.push(t.elapsed());
    }
    sandbox.exec("nft", &["delete", "table", "inet", "bench_floor"])?;
    let _ = std::fs::remove_file(&floor_file);

    let mut small = Vec::new();
    for i in 0..cli.applies {
        let policy = small_policy(i % 2);
        let t = Instant::now();
        daemon.put("bench", &ns, &policy)?;
        small.push(t.elapsed());
    }
    let bigs = [big_policy(10_000, 0), big_policy(10_000, 1)];
    let mut big = Vec::new();
    for i in 0..(cli.applies / 4).max(4) {
        let t = Instant::now();
        daemon.put("bench", &ns, &bigs[i % 2])?;
        big.push(t.elapsed());
    }
    println!();
    println!(
        "apply (PUT until the rules are in the kernel), {} runs each:",
        cli.applies
    );
    println!(
        "  baseline: API round trip (GET /v1/health)     p50 {}",
        ms(percentile(&mut health, 0.5))
    );
    println!(
        "  baseline: bare `nft add table` in the netns    p50 {}",
        ms(percentile(&mut bare, 0.5))
    );
    println!(
        "  baseline: bare set swap (flush + add) via nft  p50 {}",
        ms(percentile(&mut floor, 0.5))
    );
    println!(
        "  baseline: 10-entry policy, one nft per change p50 {}  p95 {}",
        ms(percentile(&mut one_shot, 0.5)),
        ms(percentile(&mut one_shot, 0.95))
    );
    println!(
        "  10-entry policy (session)                     p50 {}  p95 {}   target p50 < 12 ms ({:.1}x faster)",
        ms(percentile(&mut small, 0.5)),
        ms(percentile(&mut small, 0.95)),
        percentile(&mut one_shot, 0.5).as_secs_f64() / percentile(&mut small, 0.5).as_secs_f64()
    );
    println!(
        "  10,000 CIDRs                                  p50 {}  p95 {}   target < 300 ms",
        ms(percentile(&mut big, 0.5)),
        ms(percentile(&mut big, 0.95))
    );
    Ok(())
}

/// Bytes per second from the sandbox to the sink for `secs` seconds.
fn measure_throughput(sandbox: &Netns, secs: u64) -> Result<f64> {
    let addr: SocketAddr = format!("{SINK}:{SINK_PORT}").parse()?;
    in_netns(&sandbox.path(), move || -> Result<f64> {
        let mut s = TcpStream::connect(addr).context("connect to sink")?;
        let buf = vec![0x5au8; 256 * 1024];
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(secs) {
            s.write_all(&buf)?;
            sent += buf.len() as u64;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        // Wait for the sink's one-byte ack so every byte was delivered.
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
        Ok(sent as f64 / started.elapsed().as_secs_f64())
    })?
}

/// A table with nothing but a conntrack match, to isolate conntrack's cost.
const CT_ONLY: &str = "table inet bench_ct {\n chain output {\n  type filter hook output priority filter; policy accept;\n  ct state established,related ct direction reply accept\n }\n}\n";

fn sandbox_ct_file() -> PathBuf {
    std::env::temp_dir().join(format!("netctl-bench-ct-{}.nft", std::process::id()))
}

fn start_sink(internet: &Netns) -> Result<()> {
    let listener = in_netns(&internet.path(), || TcpListener::bind((SINK, SINK_PORT)))??;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                let _ = conn.write_all(b"k");
            });
        }
    });
    Ok(())
}

fn throughput_figures(cli: &Cli, daemon: &Daemon, sandbox: &Netns, internet: &Netns) -> Result<()> {
    start_sink(internet)?;
    let mut bare = Vec::new();
    let mut tracked = Vec::new();
    let mut filtered = Vec::new();
    let policy = big_policy(10_000, 0);
    // Lanes run in a rotating order so drift in the machine's load (other
    // jobs, CPU frequency) does not favour one of them.
    for round in 0..ROUNDS {
        for lane in 0..3 {
            match (lane + round) % 3 {
                0 => {
                    let (status, body) = daemon.call("DELETE", "/v1/sandboxes/bench", "")?;
                    anyhow::ensure!(status == 204 || status == 404, "DELETE: {status} {body}");
                    bare.push(measure_throughput(sandbox, cli.seconds)?);
                }
                1 => {
                    let (status, body) = daemon.call("DELETE", "/v1/sandboxes/bench", "")?;
                    anyhow::ensure!(status == 204 || status == 404, "DELETE: {status} {body}");
                    // Conntrack alone: what any reply-direction rule costs.
                    std::fs::write(sandbox_ct_file(), CT_ONLY)?;
                    sandbox.exec(
                        "nft",
                        &["-f", sandbox_ct_file().to_str().unwrap_or_default()],
                    )?;
                    tracked.push(measure_throughput(sandbox, cli.seconds)?);
                    sandbox.exec("nft", &["delete", "table", "inet", "bench_ct"])?;
                }
                _ => {
                    daemon.put("bench", &sandbox.name, &policy)?;
                    filtered.push(measure_throughput(sandbox, cli.seconds)?);
                }
            }
        }
    }
    daemon.put("bench", &sandbox.name, &policy)?;
    // The deny set lives in one of two slots (deny4_0, deny4_1).
    let table = sandbox.exec("nft", &["list", "table", "inet", "sbx_netctl"])?;
    let elements = table.matches("/25").count();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, t, f) = (
        median(&mut bare),
        median(&mut tracked),
        median(&mut filtered),
    );
    println!();
    println!(
        "TCP throughput sandbox -> internet (veth), median of {ROUNDS} x {} s, lanes interleaved:",
        cli.seconds
    );
    println!(
        "  baseline: no table                            {:.2} Gbit/s",
        b * 8.0 / 1e9
    );
    println!(
        "  baseline: conntrack only (one ct state rule)  {:.2} Gbit/s = {:.1}% of no table",
        t * 8.0 / 1e9,
        t / b * 100.0
    );
    println!(
        "  through a {elements}-prefix deny set (judged once per generation) {:.2} Gbit/s = {:.1}% of no table   target >= 98%",
        f * 8.0 / 1e9,
        f / b * 100.0
    );
    Ok(())
}

/// Tightenings measured for the time-to-cut figure.
const CUTS: usize = 30;

/// From sending a PUT that denies an open connection's destination to the
/// sandbox's next write failing on it (the write loop sends one byte per
/// packet, so the first packet judged after the switch is refused).
fn cut_figures(daemon: &Daemon, sandbox: &Netns) -> Result<()> {
    let addr: SocketAddr = format!("{SINK}:{SINK_PORT}").parse()?;
    let allow = r#"{"deny_out": ["203.0.113.0/24"]}"#;
    let deny = format!(r#"{{"deny_out": ["203.0.113.0/24", "{SINK}"]}}"#);
    let mut cut = Vec::with_capacity(CUTS);
    for _ in 0..CUTS {
        daemon.put("bench", &sandbox.name, allow)?;
        let mut conn = in_netns(&sandbox.path(), move || TcpStream::connect(addr))??;
        conn.set_nodelay(true)?;
        conn.write_all(b"x")?;
        let started = Instant::now();
        daemon.put("bench", &sandbox.name, &deny)?;
        loop {
            if conn.write_all(b"x").is_err() {
                cut.push(started.elapsed());
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(5),
                "the connection survived a tightening"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let mut put_only = Vec::with_capacity(CUTS);
    for i in 0..CUTS {
        let started = Instant::now();
        daemon.put(
            "bench",
            &sandbox.name,
            if i % 2 == 0 { allow } else { &deny },
        )?;
        put_only.push(started.elapsed());
    }
    println!();
    println!("Tightening PUT -> open connection cut ({CUTS} runs):");
    println!(
        "  baseline: the PUT alone (API round trip)     p50 {}",
        ms(percentile(&mut put_only, 0.5))
    );
    println!(
        "  PUT -> next write on the connection refused  p50 {}  p99 {}",
        ms(percentile(&mut cut, 0.5)),
        ms(percentile(&mut cut, 0.99))
    );
    Ok(())
}

fn reconcile_figures(cli: &Cli, netctl: &std::path::Path, dir: &std::path::Path) -> Result<()> {
    let state = dir.join("reconcile");
    std::fs::create_dir_all(&state)?;
    let (empty_daemon, empty_start) = Daemon::start(netctl, &state)?;
    let mut namespaces = Vec::with_capacity(cli.sandboxes);
    for _ in 0..cli.sandboxes {
        namespaces.push(Netns::new("nbr")?);
    }
    for (i, ns) in namespaces.iter().enumerate() {
        empty_daemon.put(&format!("sb{i}"), &ns.name, &small_policy(i % 2))?;
    }
    drop(empty_daemon);
    // Lose the rules too, so the restart has real work to do.
    for ns in &namespaces {
        ns.exec("nft", &["delete", "table", "inet", "sbx_netctl"])?;
    }
    let (daemon, full_start) = Daemon::start(netctl, &state)?;
    let (_, list) = daemon.call("GET", "/v1/sandboxes", "")?;
    let listed: serde_json::Value = serde_json::from_str(&list)?;
    let applied = listed
        .as_array()
        .map(|a| a.iter().filter(|s| s["applied"] == true).count())
        .unwrap_or(0);
    let present = namespaces
        .iter()
        .filter(|ns| {
            ns.exec("nft", &["list", "tables"])
                .map(|t| t.contains("sbx_netctl"))
                .unwrap_or(false)
        })
        .count();
    println!();
    println!("daemon start until listening:");
    println!(
        "  baseline: no saved sandboxes                  {}",
        ms(empty_start)
    );
    println!(
        "  {} saved sandboxes (tables re-created: {present}, applied: {applied})  {}   target < 5 s",
        cli.sandboxes,
        ms(full_start)
    );
    drop(daemon);
    // The same restart with one nft per change (no sessions).
    for ns in &namespaces {
        ns.exec("nft", &["delete", "table", "inet", "sbx_netctl"])?;
    }
    let (plain, plain_start) = Daemon::start_with(
        netctl,
        &state,
        "reconcile_concurrency = 8\nnft_session_idle_secs = 0\n[dns]\nupstreams = [\"192.0.2.53\"]\n",
        None,
    )?;
    println!(
        "  baseline: the same, one nft per change          {}",
        ms(plain_start)
    );
    drop(plain);
    Ok(())
}
