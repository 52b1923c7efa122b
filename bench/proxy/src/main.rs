//! `proxy-bench`: sbx-proxy (client → proxy → agent raw tunnel → service)
//! against the service direct, nginx as a one-hop reverse proxy, and nginx
//! in front of a plain TCP forwarder (the same hop count as sbx-proxy with
//! no tunnel protocol), all measured in the same run on this machine.
//!
//! Everything runs on 127.0.0.1: the service lives in this process; the
//! agent, the proxy, nginx and the forwarder are children stopped by PID
//! when their guards drop (at the end or on any error); if the bench itself
//! is killed the kernel kills them via `PR_SET_PDEATHSIG`. The load
//! generators are `wrk` and `h2load`, the same for every target.
//!
//! The control-plane sections (`api`, `resume`, `fleet`; see `control.rs`)
//! start proxies of their own in front of the same agent: a change through
//! the sandbox API until it is in force (the admin socket beside it), the
//! wait of a request for a suspended sandbox with a fake control plane
//! (`hook.rs`), and a change on one proxy of a Redis-backed pair until it
//! is in force on the other. See `scripts/bench-proxy.sh`.

mod client;
mod control;
mod hook;
mod load;
mod report;
mod rig;
mod serve;
mod service;
mod suite;
mod ws;

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;
use sbx_bench_support::child::{find_on_path, Spawned};
use sbx_bench_support::report::{write_json, Verdict};
use sbx_bench_support::scratch::Scratch;
use sbx_bench_support::{hop, limits, machine, usage};

use crate::control::{Control, ControlSettings};
use crate::load::Shape;
use crate::report::{Row, DIRECT, FLOOR, LABELS, NGINX, PROXY};
use crate::suite::{Bench, Lane, Settings};

/// Payload of each WebSocket round trip.
pub const WS_SMALL: usize = 64;

#[derive(Debug, Parser)]
#[command(
    name = "proxy-bench",
    about = "Benchmark sbx-proxy against direct and nginx"
)]
struct Cli {
    /// The proxy binary; when it does not exist the run measures the
    /// baselines only.
    #[arg(long, default_value = "target/release/sbx-proxy")]
    proxy_bin: PathBuf,
    /// The agent binary.
    #[arg(long, default_value = "target/release/sbx-agent")]
    agent_bin: PathBuf,
    /// nginx binary [default: nginx on PATH or /usr/sbin/nginx].
    #[arg(long)]
    nginx_bin: Option<PathBuf>,
    /// wrk binary [default: wrk on PATH].
    #[arg(long)]
    wrk_bin: Option<PathBuf>,
    /// h2load binary [default: h2load on PATH].
    #[arg(long)]
    h2load_bin: Option<PathBuf>,
    /// Measure the baselines only, even when the proxy binary exists.
    #[arg(long)]
    no_proxy: bool,
    /// Access logs of nginx and sbx-proxy: both log every request (their
    /// defaults: nginx's combined format to a file, sbx-proxy's info-level
    /// line to its stderr, a file here), or neither.
    #[arg(long, value_enum, default_value_t = AccessLogs::On)]
    access_logs: AccessLogs,
    /// A short smoke run (under a minute): 2 s load runs, one each, and at
    /// most 2,000 latency and sequential requests, 500 WebSocket round
    /// trips, 16 MB echoed and 1,000 idle connections (so the 10k memory
    /// target is not judged).
    #[arg(long)]
    quick: bool,
    /// Seconds per load run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Load runs (and WebSocket throughput runs) per target; the median is
    /// reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
    repeat: u16,
    /// wrk connections (HTTP/1.1 keep-alive).
    #[arg(long, default_value_t = 32)]
    h1_connections: u32,
    /// h2load connections.
    #[arg(long, default_value_t = 4)]
    h2_connections: u32,
    /// h2load concurrent streams per connection.
    #[arg(long, default_value_t = 64)]
    h2_streams: u32,
    /// Load generator threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Timed sequential requests per target for the latency rows.
    #[arg(long, default_value_t = 20_000)]
    latency_count: usize,
    /// Sequential requests per target for the upstream-connect rows.
    #[arg(long, default_value_t = 10_000)]
    seq_requests: usize,
    /// Timed WebSocket round trips per target.
    #[arg(long, default_value_t = 5_000)]
    ws_rtt_count: usize,
    /// Size of the large WebSocket messages, in KiB.
    #[arg(long, default_value_t = 1024)]
    ws_message_kib: usize,
    /// MB echoed per WebSocket throughput run.
    #[arg(long, default_value_t = 128)]
    ws_mb: usize,
    /// Idle client connections held for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    idle_conns: usize,
    /// PATCHes of exposed_ports through the sandbox API (and as many through
    /// the admin socket) timed until in force (`api`).
    #[arg(long, default_value_t = 500)]
    api_iterations: usize,
    /// Requests for a suspended sandbox, one at a time (`resume`).
    #[arg(long, default_value_t = 50)]
    resume_iterations: usize,
    /// What the fake control plane takes to resume a sandbox, in ms.
    #[arg(long, default_value_t = 200)]
    resume_delay_ms: u64,
    /// Requests sent at once for one suspended sandbox (`resume`).
    #[arg(long, default_value_t = 50)]
    resume_concurrency: usize,
    /// PATCHes on one proxy of the Redis fleet watched on the other (`fleet`).
    #[arg(long, default_value_t = 200)]
    fleet_iterations: usize,
    /// redis-server binary [default: redis-server on PATH or /usr/bin].
    #[arg(long)]
    redis_bin: Option<PathBuf>,
    /// Run only these parts (for quick experiments); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
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
    Memory,
    H1,
    H2,
    Latency,
    Connects,
    Websocket,
    /// Sandbox API PATCH until in force on the data plane.
    Api,
    /// Auto-resume through the lifecycle hook.
    Resume,
    /// Two proxies on a Redis registry.
    Fleet,
}

impl Cli {
    fn wants(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AccessLogs {
    On,
    Off,
}

fn main() -> ExitCode {
    // The bench re-runs itself as the plain forwarder of the floor route
    // and as the lone service of the memory rows; those modes have nothing
    // to do with the CLI below.
    let args: Vec<String> = std::env::args().collect();
    if let Some(result) = hop::maybe_run(&args).or_else(|| serve::maybe_run(&args)) {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("proxy-bench {}: {err:#}", args[1]);
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    match run(&cli) {
        Ok(all_met) if all_met || !cli.fail_on_miss => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(err) => {
            eprintln!("proxy-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli) -> Settings {
    let mut s = Settings {
        h1: Shape {
            threads: cli.threads,
            connections: cli.h1_connections,
            streams: 1,
            duration: Duration::from_secs(cli.duration),
        },
        h2: Shape {
            threads: cli.threads,
            connections: cli.h2_connections,
            streams: cli.h2_streams,
            duration: Duration::from_secs(cli.duration),
        },
        repeat: usize::from(cli.repeat),
        latency_count: cli.latency_count,
        latency_warmup: 1_000,
        seq_requests: cli.seq_requests,
        ws_rtt_count: cli.ws_rtt_count,
        ws_message: cli.ws_message_kib.max(1) * 1024,
        ws_bytes: cli.ws_mb.max(1) * 1_000_000,
        idle_conns: cli.idle_conns,
    };
    if cli.quick {
        s.h1.duration = Duration::from_secs(2);
        s.h2.duration = Duration::from_secs(2);
        s.repeat = 1;
        s.latency_count = s.latency_count.min(2_000);
        s.latency_warmup = 200;
        s.seq_requests = s.seq_requests.min(2_000);
        s.ws_rtt_count = s.ws_rtt_count.min(500);
        s.ws_bytes = s.ws_bytes.min(16_000_000);
        s.idle_conns = s.idle_conns.min(1_000);
    }
    s
}

fn control_settings(cli: &Cli) -> ControlSettings {
    let mut s = ControlSettings {
        api_iterations: cli.api_iterations.max(1),
        resume_iterations: cli.resume_iterations.max(1),
        resume_delay: Duration::from_millis(cli.resume_delay_ms),
        resume_concurrency: cli.resume_concurrency.max(1),
        fleet_iterations: cli.fleet_iterations.max(1),
    };
    if cli.quick {
        s.api_iterations = s.api_iterations.min(100);
        s.resume_iterations = s.resume_iterations.min(10);
        s.fleet_iterations = s.fleet_iterations.min(50);
    }
    s
}

fn run(cli: &Cli) -> Result<bool> {
    let started = Instant::now();
    let nofile = limits::raise_nofile_limit()?;
    let load_before = machine::loadavg();
    let settings = settings(cli);
    let mut notes: Vec<String> = Vec::new();
    let note = |notes: &mut Vec<String>, n: String| {
        eprintln!("proxy-bench: NOTE: {n}");
        notes.push(n);
    };

    // Two workers, like the proxy's and the agent's runtimes on this size
    // of machine; the service should cost what a real one would.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let service = runtime.block_on(service::start())?;
    let host = rig::service_host(service.addr.port());
    let scratch = Scratch::create("sbx-proxy-bench", cli.keep_logs)?;
    let exe = std::env::current_exe().context("locate this binary")?;

    let find = |given: &Option<PathBuf>, name: &str| {
        given
            .clone()
            .filter(|p| p.is_file())
            .or_else(|| find_on_path(name))
    };
    let access_log = cli.access_logs == AccessLogs::On;
    let wrk = find(&cli.wrk_bin, "wrk");
    let h2load = find(&cli.h2load_bin, "h2load");

    let (forwarder, forwarder_addr) = hop::start(&exe, service.addr, &scratch, "forwarder")?;
    let (plain, plain_addr) = serve::start(&exe, &scratch)?;
    let nginx = match rig::find_nginx(cli.nginx_bin.as_deref()) {
        Ok(bin) => Some(rig::start_nginx(
            &bin,
            &scratch,
            service.addr,
            forwarder_addr,
            access_log,
        )?),
        Err(why) => {
            note(&mut notes, format!("nginx columns left out: {why}"));
            None
        }
    };
    let (agent, proxy) = if cli.no_proxy {
        note(&mut notes, "sbx-proxy column left out (--no-proxy)".into());
        (None, None)
    } else if !cli.proxy_bin.is_file() {
        note(
            &mut notes,
            format!(
            "sbx-proxy column left out: {} does not exist (build it: cargo build --profile release -p sbx-proxy)",
            cli.proxy_bin.display()
        ),
        );
        (None, None)
    } else {
        let agent = rig::start_agent(&cli.agent_bin, &scratch)?;
        let proxy = rig::start_proxy(
            &cli.proxy_bin,
            &scratch,
            &rig::ProxyOptions {
                register: Some(rig::sandbox_entry(
                    &scratch,
                    agent.addr,
                    &[service.addr.port()],
                    "running",
                    false,
                )),
                ..rig::ProxyOptions::plain("sbx-proxy", access_log)
            },
        )?;
        for n in &proxy.notes {
            notes.push(n.clone());
        }
        (Some(agent), Some(proxy))
    };

    let mut lanes: [Option<Lane>; 4] = Default::default();
    lanes[DIRECT] = Some(Lane {
        h1: service.addr,
        h2: service.addr,
        pids: Vec::new(),
    });
    if let Some(n) = &nginx {
        let pids = usage::with_children(n.proc.pid());
        lanes[NGINX] = Some(Lane {
            h1: n.direct_h1,
            h2: n.direct_h2,
            pids: pids.clone(),
        });
        let mut floor_pids = pids;
        floor_pids.push(forwarder.pid());
        lanes[FLOOR] = Some(Lane {
            h1: n.fwd_h1,
            h2: n.fwd_h2,
            pids: floor_pids,
        });
    }
    if let (Some(a), Some(p)) = (&agent, &proxy) {
        lanes[PROXY] = Some(Lane {
            h1: p.addr,
            h2: p.addr,
            pids: vec![p.proc.pid(), a.proc.pid()],
        });
    }

    let bench = Bench {
        lanes,
        host,
        settings: settings.clone(),
        service: service.clone(),
        proxy: proxy.as_ref(),
        nginx_pid: nginx.as_ref().map(|n| n.proc.pid()),
        plain_hyper: (plain.pid(), plain_addr),
        wrk,
        h2load,
        notes: RefCell::new(notes),
    };

    // Idle memory before any request has been proxied.
    std::thread::sleep(Duration::from_millis(300));
    let mut memory_rows: Vec<Row> = Vec::new();
    if cli.wants(Part::Memory) {
        bench.idle_rss(&mut memory_rows)?;
    }
    bench.sanity()?;
    if cli.wants(Part::Memory) {
        bench.loaded_rss(&mut memory_rows)?;
    }

    let mut rows: Vec<Row> = Vec::new();
    if cli.wants(Part::H1) {
        bench.throughput(false, &mut rows)?;
    }
    if cli.wants(Part::H2) {
        bench.throughput(true, &mut rows)?;
    }
    if cli.wants(Part::Latency) {
        bench.latency(&mut rows)?;
    }
    if cli.wants(Part::Connects) {
        bench.upstream_connects(&mut rows)?;
    }
    if cli.wants(Part::Websocket) {
        bench.websocket(&mut rows)?;
    }
    let control_parts = [Part::Api, Part::Resume, Part::Fleet];
    if control_parts.iter().any(|&p| cli.wants(p)) {
        match &agent {
            Some(agent) => {
                let control = Control {
                    proxy_bin: &cli.proxy_bin,
                    redis_bin: control::find_redis(cli.redis_bin.as_deref()),
                    scratch: &scratch,
                    runtime: &runtime,
                    agent: agent.addr,
                    service_port: service.addr.port(),
                    host: bench.host.clone(),
                    access_log,
                    settings: control_settings(cli),
                    notes: RefCell::default(),
                };
                if cli.wants(Part::Api) {
                    control.api(&mut rows)?;
                }
                if cli.wants(Part::Resume) {
                    control.resume(&mut rows)?;
                }
                if cli.wants(Part::Fleet) {
                    control.fleet(&mut rows)?;
                }
                bench.notes.borrow_mut().extend(control.notes.take());
            }
            None => {
                bench.note("api, resume and fleet rows left out: no sbx-proxy in this run".into())
            }
        }
    }
    rows.append(&mut memory_rows);
    if cli.wants(Part::Memory) {
        bench.rss_after(&mut rows)?;
    }
    let notes = bench.notes.take();
    drop(bench);

    // A figure measured against a process that died midway means nothing.
    let mut alive: Vec<&mut Spawned> = Vec::new();
    let mut forwarder = forwarder;
    alive.push(&mut forwarder);
    let mut plain = plain;
    alive.push(&mut plain);
    let mut nginx = nginx;
    let mut agent = agent;
    let mut proxy = proxy;
    if let Some(n) = nginx.as_mut() {
        alive.push(&mut n.proc);
    }
    if let Some(a) = agent.as_mut() {
        alive.push(&mut a.proc);
    }
    if let Some(p) = proxy.as_mut() {
        alive.push(&mut p.proc);
    }
    for p in alive {
        p.ensure_running()?;
    }

    let load_after = machine::loadavg();
    println!();
    print!("{}", report::table(&rows));
    println!();
    println!("{}", machine::summary(&load_before, &load_after));
    println!(
        "Binaries: sbx-proxy {}, sbx-agent {}; load: wrk -t{t} -c{c1}, h2load -t{t} -c{c2} -m{m}, {d} s per run, median of {r}",
        cli.proxy_bin.display(),
        cli.agent_bin.display(),
        t = settings.h1.threads,
        c1 = settings.h1.connections,
        c2 = settings.h2.connections,
        m = settings.h2.streams,
        d = settings.h1.duration.as_secs(),
        r = settings.repeat,
    );
    println!(
        "Latency: {} sequential GET / per target on one keep-alive connection (same request bytes and Host everywhere), \
         64-byte body; access logs {}; RLIMIT_NOFILE {nofile}; took {:.0} s",
        settings.latency_count,
        if access_log { "on (nginx and sbx-proxy)" } else { "off" },
        started.elapsed().as_secs_f64()
    );
    println!(
        "Routes: {} = bench service; {} = nginx proxy_pass (upstream keepalive); {} = proxy -> agent raw tunnel -> service; \
         {} = nginx -> plain TCP forwarder process -> service (sbx-proxy's hop count, no tunnel protocol). \
         CPU per request: user+sys of the route's processes (sbx-proxy+agent; nginx master+workers; +forwarder) over the timed load runs. \
         Service accepts: TCP connections the service accepted (direct: the client's own). \
         RSS rows, direct: the same hyper service (HTTP/1.1 + h2c builder, as sbx-proxy) alone in its own process.",
        LABELS[DIRECT], LABELS[NGINX], LABELS[PROXY], LABELS[FLOOR]
    );
    if control_parts.iter().any(|&p| cli.wants(p)) {
        let c = control_settings(cli);
        println!(
            "Control plane: api = {} PATCHes of exposed_ports via listen_api (unauthenticated namespace form) and as many via the admin socket, \
             timed from sending to the first GET through the proxy's http listener (one every 0.1 ms) with the new answer (200 vs 401); \
             resume = {} requests for a suspended sandbox (auto_resume, public port), hook answering at once and PATCHing status running \
             through the admin socket after D = {} ms, wait beyond D = request time - D - p50 of normal requests in the same run; \
             {} requests at once, then hook calls counted; fleet = redis-server on a unix socket, two sbx-proxy with registry = redis+unix://, \
             {} PATCHes on A's admin socket watched on B's data plane (and as many watched on A's). Columns other than sbx-proxy do not apply.",
            c.api_iterations,
            c.resume_iterations,
            c.resume_delay.as_millis(),
            c.resume_concurrency,
            c.fleet_iterations,
        );
    }
    for n in &notes {
        println!("NOTE: {n}");
    }
    if cli.keep_logs {
        println!("Logs kept in {}", scratch.dir().display());
    }

    if let Some(path) = &cli.json {
        let doc = serde_json::json!({
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "load_before": load_before,
            "load_after": load_after,
            "notes": notes,
        });
        write_json(path, &doc)?;
    }
    Ok(rows.iter().all(|r| r.verdict != Verdict::Miss))
}
