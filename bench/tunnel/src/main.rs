//! `tunnel-bench`: the TCP tunnel (`sbx tunnel` → `sbx-agent` → service)
//! against direct loopback TCP and a peer TCP-over-WebSocket tool, all
//! measured in the same run on this machine.
//!
//! Everything runs on 127.0.0.1: the services live in this process, the
//! agent, `sbx` and the peer tool are children stopped by PID when their
//! guards drop (at the end or on any error); if the bench itself is killed
//! (Ctrl-C, SIGTERM) the kernel kills them via `PR_SET_PDEATHSIG`. See
//! `scripts/bench-tunnel.sh`.

mod bearer;
mod load;
mod report;
mod rig;
mod servers;
mod suite;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;
use sbx_bench_support::report::{write_json, Verdict};
use sbx_bench_support::scratch::Scratch;
use sbx_bench_support::{hop, limits, machine, usage};

use crate::bearer::Bearer;
use crate::report::Row;
use crate::rig::Route;
use crate::suite::{IdleRss, Lane, Lanes, Settings};
use crate::ws::Endpoint;

const GB: u64 = 1_000_000_000;

#[derive(Debug, Parser)]
#[command(name = "tunnel-bench", about = "Benchmark the sbx TCP tunnel")]
struct Cli {
    /// The agent binary (build with `--profile release` for real figures).
    #[arg(long, default_value = "target/release/sbx-agent")]
    agent_bin: PathBuf,
    /// The `sbx` client binary.
    #[arg(long, default_value = "target/release/sbx")]
    sbx_bin: PathBuf,
    /// websocat binary for the peer column [default: websocat on PATH].
    #[arg(long)]
    peer_bin: Option<PathBuf>,
    /// Bytes per single-stream run.
    #[arg(long, default_value_t = 2 * GB)]
    bytes: u64,
    /// Total bytes per multi-stream run, split between the streams.
    #[arg(long, default_value_t = 2 * GB)]
    multi_bytes: u64,
    /// Concurrent streams in the multi-stream run.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    streams: u16,
    /// Throughput runs per route; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
    repeat: u16,
    /// Payload of each latency ping-pong (1-125 bytes).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=125))]
    rtt_size: u16,
    /// Timed round trips per route.
    #[arg(long, default_value_t = 20_000)]
    rtt_count: usize,
    /// Untimed round trips first.
    #[arg(long, default_value_t = 1_000)]
    rtt_warmup: usize,
    /// Tunnel opens timed per route.
    #[arg(long, default_value_t = 500)]
    open_count: usize,
    /// Idle tunnels held open for the memory figure.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=5_000))]
    idle_tunnels: u32,
    /// Run only these parts (for quick experiments); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Skip the hop-floor row (RTT through two plain TCP forwarders).
    #[arg(long)]
    no_floor: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the scratch directory with the children's logs.
    #[arg(long)]
    keep_logs: bool,
    /// Exit with status 1 if any target is missed.
    #[arg(long)]
    fail_on_miss: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Throughput,
    Multi,
    Latency,
    Open,
    Memory,
}

impl Cli {
    fn wants(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

fn main() -> ExitCode {
    // The bench re-runs itself as the plain forwarders of the hop-floor
    // measurement; that mode has nothing to do with the CLI below.
    let args: Vec<String> = std::env::args().collect();
    if let Some(result) = hop::maybe_run(&args) {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("tunnel-bench forwarder: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    match run(&cli) {
        Ok(all_met) if all_met || !cli.fail_on_miss => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(err) => {
            eprintln!("tunnel-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<bool> {
    let started = Instant::now();
    let nofile = limits::raise_nofile_limit()?;
    let load_before = machine::loadavg();
    let settings = Settings {
        bytes: cli.bytes,
        multi_bytes: cli.multi_bytes,
        streams: usize::from(cli.streams),
        repeat: usize::from(cli.repeat),
        rtt_size: usize::from(cli.rtt_size),
        rtt_warmup: cli.rtt_warmup,
        rtt_count: cli.rtt_count,
        open_count: cli.open_count,
        idle_tunnels: cli.idle_tunnels as usize,
    };

    // Two workers: the services should not take more of the two cores than
    // a real service would.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let servers = runtime.block_on(servers::start())?;

    let scratch = Scratch::create("sbx-tunnel-bench", cli.keep_logs)?;
    let bearer = Bearer::create(&scratch)?;
    let mut agent = rig::start_agent(&cli.agent_bin, &scratch, &bearer)?;
    let (sbx_sink, tunnel_sink) = rig::start_sbx_tunnel(
        &cli.sbx_bin,
        agent.addr,
        servers.sink.port(),
        &scratch,
        &bearer,
        "sink",
    )?;
    let (sbx_echo, tunnel_echo) = rig::start_sbx_tunnel(
        &cli.sbx_bin,
        agent.addr,
        servers.echo.port(),
        &scratch,
        &bearer,
        "echo",
    )?;
    let (peer, peer_note) = match rig::find_peer(cli.peer_bin.as_deref()) {
        Ok(bin) => match rig::start_websocat(&bin, servers, &scratch) {
            Ok(p) => (Some(p), format!("peer tool: websocat ({})", bin.display())),
            Err(err) => (
                None,
                format!("peer column skipped: websocat failed to start: {err:#}"),
            ),
        },
        Err(why) => (None, format!("peer column skipped: {why}")),
    };
    if peer.is_none() {
        eprintln!("tunnel-bench: NOTE: {peer_note}");
    }

    let floor = if cli.wants(Part::Latency) && !cli.no_floor {
        let exe = std::env::current_exe().context("locate this binary")?;
        let (far, far_addr) = hop::start(&exe, servers.echo, &scratch, "forwarder-far")?;
        let (near, near_addr) = hop::start(&exe, far_addr, &scratch, "forwarder-near")?;
        Some((near, far, near_addr))
    } else {
        None
    };

    // Idle memory before any tunnel has ever been opened.
    std::thread::sleep(Duration::from_millis(300));
    let idle = IdleRss {
        agent: usage::rss_bytes(agent.proc.pid())? as f64,
        peer: match &peer {
            Some(p) => Some(usage::rss_bytes(p.echo.server.pid())? as f64),
            None => None,
        },
    };

    let lanes = Lanes {
        tunnel: Lane {
            route: Route {
                sink: tunnel_sink,
                echo: tunnel_echo,
            },
            procs: vec![&agent.proc, &sbx_sink, &sbx_echo],
        },
        direct: Lane {
            route: Route {
                sink: servers.sink,
                echo: servers.echo,
            },
            procs: Vec::new(),
        },
        peer: peer.as_ref().map(|p| Lane {
            route: p.route(),
            procs: vec![
                &p.sink.server,
                &p.sink.client,
                &p.echo.server,
                &p.echo.client,
            ],
        }),
        floor_echo: floor.as_ref().map(|(_, _, addr)| *addr),
        peer_notes: Default::default(),
    };
    let agent_ws = Endpoint {
        addr: agent.addr,
        path: format!("/api/v1/tunnels/tcp?port={}", servers.echo.port()),
        auth_header: Some(format!("Authorization: Bearer {}", bearer.token)),
    };
    let peer_ws = peer.as_ref().map(|p| Endpoint {
        addr: p.echo.ws_addr,
        path: "/".into(),
        auth_header: None,
    });

    let mut rows: Vec<Row> = Vec::new();
    // Memory goes first, on the fresh agent, but is printed last.
    let mut memory_rows: Vec<Row> = Vec::new();
    if cli.wants(Part::Memory) {
        let peer_server = peer
            .as_ref()
            .zip(peer_ws.as_ref())
            .map(|(p, ep)| (&p.echo.server, ep));
        suite::memory(
            &lanes,
            &settings,
            &agent.proc,
            &agent_ws,
            idle,
            peer_server,
            &mut memory_rows,
        )?;
    }
    if cli.wants(Part::Throughput) {
        suite::throughput(&lanes, &settings, 1, &mut rows)?;
    }
    if cli.wants(Part::Multi) {
        suite::throughput(&lanes, &settings, settings.streams, &mut rows)?;
    }
    if cli.wants(Part::Latency) {
        suite::latency(&lanes, &settings, &mut rows)?;
    }
    if cli.wants(Part::Open) {
        suite::open_time(&lanes, &settings, &agent_ws, peer_ws.as_ref(), &mut rows)?;
    }
    rows.append(&mut memory_rows);
    if cli.wants(Part::Memory) {
        let peer_server = peer.as_ref().map(|p| &p.echo.server);
        suite::rss_after_runs(&agent.proc, peer_server, &mut rows)?;
    }
    let peer_notes = lanes.peer_notes.take();
    drop(lanes);
    // A figure measured against a process that died midway means nothing.
    agent.proc.ensure_running()?;

    let load_after = machine::loadavg();
    let peer_name = peer
        .as_ref()
        .map(|p| p.name.as_str())
        .unwrap_or("peer tool");
    println!();
    print!("{}", report::table(&rows, peer_name));
    println!();
    println!("{}", machine::summary(&load_before, &load_after));
    println!(
        "Binaries: agent {}, sbx {}; {peer_note}",
        cli.agent_bin.display(),
        cli.sbx_bin.display()
    );
    println!(
        "Throughput: median of {} runs, MB = 10^6 B; RTT over {} round trips; open over {} opens; RLIMIT_NOFILE {nofile}; took {:.0} s",
        settings.repeat,
        settings.rtt_count,
        settings.open_count,
        started.elapsed().as_secs_f64()
    );
    println!(
        "CPU rows: user+sys CPU seconds per GB moved (/proc/PID/stat); \"all processes\" adds the bench's own client and server, \
         so with C idle cores no route can exceed C / value GB/s. Direct in the open rows: TCP connect -> 1st echo."
    );
    for note in &peer_notes {
        println!("NOTE: {note}");
    }
    if cli.keep_logs {
        println!("Logs kept in {}", scratch.dir().display());
    }

    if let Some(path) = &cli.json {
        let doc = serde_json::json!({
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "load_before": load_before,
            "load_after": load_after,
            "peer": peer_note,
            "peer_notes": peer_notes,
        });
        write_json(path, &doc)?;
    }
    Ok(rows.iter().all(|r| r.verdict != Verdict::Miss))
}
