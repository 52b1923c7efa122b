//! The measurements, each taken on every route in the same run and turned
//! into table rows with their targets.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use sbx_bench_support::child::Spawned;
use sbx_bench_support::report::ratio;
use sbx_bench_support::stats::{median, percentile};
use sbx_bench_support::usage;

use crate::load;
use crate::report::{Row, Unit};
use crate::rig::Route;
use crate::ws::{Conn, Endpoint};

/// Single-stream throughput the tunnel must reach, as a share of direct.
const MIN_SHARE_OF_DIRECT: f64 = 0.60;
const MAX_ADDED_RTT_P50: Duration = Duration::from_micros(50);
const MAX_OPEN_P50: Duration = Duration::from_millis(1);
const MAX_IDLE_RSS: f64 = 10e6;
const MAX_LOADED_RSS: f64 = 64e6;
/// Round trips per route before the next route takes its turn.
const RTT_BATCH: usize = 500;
/// Opens per route before the next route takes its turn.
const OPEN_BATCH: usize = 25;

#[derive(Debug, Clone)]
pub struct Settings {
    pub bytes: u64,
    pub multi_bytes: u64,
    pub streams: usize,
    pub repeat: usize,
    pub rtt_size: usize,
    pub rtt_warmup: usize,
    pub rtt_count: usize,
    pub open_count: usize,
    pub idle_tunnels: usize,
}

/// One route with the processes that carry it (none for direct).
pub struct Lane<'a> {
    pub route: Route,
    pub procs: Vec<&'a Spawned>,
}

pub struct Lanes<'a> {
    pub tunnel: Lane<'a>,
    pub direct: Lane<'a>,
    pub peer: Option<Lane<'a>>,
    /// Echo through two plain TCP forwarders: the latency floor of any
    /// design with two extra processes (see `sbx_bench_support::hop`).
    pub floor_echo: Option<SocketAddr>,
    /// Why the peer's figures are missing where they are.
    pub peer_notes: RefCell<Vec<String>>,
}

impl Lanes<'_> {
    /// Passes errors on; except on the peer's lane, where a failure is the
    /// peer tool's, not the bench's: it is noted and `false` returned, so
    /// the caller leaves that figure out instead of ending the run.
    fn tolerate(&self, lane: usize, what: &str, result: Result<()>) -> Result<bool> {
        match result {
            Ok(()) => Ok(true),
            Err(err) if lane == PEER => {
                let note = format!("{what}: peer tool failed, figure left out: {err:#}");
                eprintln!("tunnel-bench: NOTE: {note}");
                self.peer_notes.borrow_mut().push(note);
                Ok(false)
            }
            Err(err) => Err(err.context(format!("{what} via {}", LABELS[lane]))),
        }
    }
}

/// A figure per route.
#[derive(Debug, Clone, Copy, Default)]
struct Trio {
    tunnel: Option<f64>,
    direct: Option<f64>,
    peer: Option<f64>,
}

fn progress(what: &str) {
    eprintln!("tunnel-bench: {what}");
}

/// Throughput rows: median over `repeat` interleaved runs per route, plus
/// the CPU both tunnel ends burn per GB (the relay's cost, whatever the
/// machine's load).
pub fn throughput(lanes: &Lanes, s: &Settings, streams: usize, rows: &mut Vec<Row>) -> Result<()> {
    let total = if streams == 1 { s.bytes } else { s.multi_bytes };
    progress(&format!(
        "throughput, {streams} stream(s), {} MB per run, {} runs per route",
        total / 1_000_000,
        s.repeat
    ));
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut cpu: [Vec<f64>; 3] = Default::default();
    let mut cpu_all: [Vec<f64>; 3] = Default::default();
    let me = std::process::id();
    let gb = total as f64 / 1e9;
    let mut peer_ok = true;
    for _ in 0..s.repeat {
        for (i, lane) in lane_list(lanes) {
            if i == PEER && !peer_ok {
                continue;
            }
            let before = cpu_of(&lane.procs)?;
            let before_me = usage::cpu_time(me)?.as_secs_f64();
            let mut rate = 0.0;
            let result = load::throughput(lane.route.sink, total, streams).map(|r| rate = r);
            if !lanes.tolerate(i, &format!("throughput, {streams} stream(s)"), result)? {
                peer_ok = false;
                rates[i].clear();
                cpu[i].clear();
                cpu_all[i].clear();
                continue;
            }
            let spent = cpu_of(&lane.procs)? - before;
            let spent_me = usage::cpu_time(me)?.as_secs_f64() - before_me;
            rates[i].push(rate);
            cpu[i].push(spent / gb);
            cpu_all[i].push((spent + spent_me) / gb);
        }
    }
    let t = trio(&rates);
    let label = if streams == 1 {
        "throughput, 1 stream".to_owned()
    } else {
        format!("throughput, {streams} streams")
    };
    let mut ratios = vec![
        ratio("/direct", t.tunnel, t.direct),
        ratio("/peer", t.tunnel, t.peer),
    ];
    ratios.retain(Option::is_some);
    let mut row = Row::info(label, Unit::Throughput)
        .values(t.tunnel, t.direct, t.peer)
        .ratios(ratios.into_iter().flatten().collect::<Vec<_>>().join(", "));
    if streams == 1 {
        let met = match (t.tunnel, t.direct) {
            (Some(tun), Some(dir)) => {
                Some(tun >= MIN_SHARE_OF_DIRECT * dir && t.peer.is_none_or(|p| tun > p))
            }
            _ => None,
        };
        row = row.target(">= 60% direct, > peer", met);
    }
    rows.push(row);
    let c = trio(&cpu);
    rows.push(
        Row::info(
            format!("  CPU of tunnel ends, {streams} stream(s)"),
            Unit::CpuPerGb,
        )
        .values(c.tunnel, None, c.peer)
        .ratios(ratio("/peer", c.tunnel, c.peer).unwrap_or_default()),
    );
    // With the bench's own client and server: on a machine with N idle
    // cores no route can beat N / (this figure) GB/s.
    let c = trio(&cpu_all);
    rows.push(
        Row::info(
            format!("  CPU of all processes, {streams} stream(s)"),
            Unit::CpuPerGb,
        )
        .values(c.tunnel, c.direct, c.peer)
        .ratios(ratio("/direct", c.tunnel, c.direct).unwrap_or_default()),
    );
    Ok(())
}

/// Round-trip latency of small ping-pongs on one connection per route.
pub fn latency(lanes: &Lanes, s: &Settings, rows: &mut Vec<Row>) -> Result<()> {
    progress(&format!(
        "latency, {} round trips of {} bytes per route",
        s.rtt_count, s.rtt_size
    ));
    let mut conns = Vec::new();
    for (i, lane) in lane_list(lanes) {
        let warm = load::PingPong::connect(lane.route.echo, s.rtt_size).and_then(|mut pp| {
            pp.run(s.rtt_warmup, None)?;
            Ok(pp)
        });
        let (pp, result) = match warm {
            Ok(pp) => (Some(pp), Ok(())),
            Err(err) => (None, Err(err)),
        };
        if lanes.tolerate(i, "ping-pong warm-up", result)? {
            conns.extend(pp.map(|pp| (i, pp)));
        }
    }
    if let Some(addr) = lanes.floor_echo {
        let mut pp =
            load::PingPong::connect(addr, s.rtt_size).context("ping-pong via forwarders")?;
        pp.run(s.rtt_warmup, None)
            .context("ping-pong warm-up via forwarders")?;
        conns.push((FLOOR, pp));
    }
    let mut samples: [Vec<Duration>; 4] = Default::default();
    // Routes take turns in batches, so a burst of load from elsewhere on
    // the machine falls on all of them rather than on one.
    let mut left = s.rtt_count;
    while left > 0 {
        let batch = left.min(RTT_BATCH);
        let mut failed = None;
        for (i, pp) in &mut conns {
            let result = pp.run(batch, Some(&mut samples[*i]));
            if !lanes.tolerate(*i, "ping-pong", result)? {
                failed = Some(*i);
            }
        }
        if let Some(i) = failed {
            conns.retain(|(lane, _)| *lane != i);
            samples[i].clear();
        }
        left -= batch;
    }
    let [tunnel, direct, peer, floor] = samples;
    let samples = [tunnel, direct, peer];
    let p50 = percentiles(&samples, 50.0);
    let p99 = percentiles(&samples, 99.0);
    let added = |t: Trio| t.tunnel.zip(t.direct).map(|(a, b)| a - b);
    let added_peer = |t: Trio| t.peer.zip(t.direct).map(|(a, b)| a - b);
    let describe = |t: Trio| {
        let mut parts = Vec::new();
        if let Some(a) = added(t) {
            parts.push(format!("tunnel +{:.1} µs", a * 1e6));
        }
        if let Some(a) = added_peer(t) {
            parts.push(format!("peer +{:.1} µs", a * 1e6));
        }
        parts.join(", ")
    };
    let size = s.rtt_size;
    rows.push(
        Row::info(format!("RTT {size} B ping-pong, p50"), Unit::Micros)
            .values(p50.tunnel, p50.direct, p50.peer)
            .ratios(describe(p50))
            .target(
                "added p50 < 50 µs",
                added(p50).map(|a| a < MAX_ADDED_RTT_P50.as_secs_f64()),
            ),
    );
    rows.push(
        Row::info(format!("RTT {size} B ping-pong, p99"), Unit::Micros)
            .values(p99.tunnel, p99.direct, p99.peer)
            .ratios(describe(p99)),
    );
    if lanes.floor_echo.is_some() {
        let floor = percentile(&floor, 50.0).map(|d| d.as_secs_f64());
        let added = floor.zip(p50.direct).map(|(f, d)| f - d);
        rows.push(
            Row::info("  RTT p50, 2 plain TCP forwarders", Unit::Micros)
                .values(floor, p50.direct, None)
                .ratios(
                    added
                        .map(|a| format!("floor +{:.1} µs for 2 extra processes", a * 1e6))
                        .unwrap_or_default(),
                ),
        );
    }
    Ok(())
}

/// Open time: through each route from connect() to the first echoed byte,
/// and the agent's own cost (upgrade + local connect) seen by a raw client.
pub fn open_time(
    lanes: &Lanes,
    s: &Settings,
    agent_ws: &Endpoint,
    peer_ws: Option<&Endpoint>,
    rows: &mut Vec<Row>,
) -> Result<()> {
    progress(&format!("open time, {} opens per route", s.open_count));
    let mut via: [Vec<Duration>; 3] = Default::default();
    let mut upgrade: [Vec<Duration>; 3] = Default::default();
    let mut first: [Vec<Duration>; 3] = Default::default();
    // In turns, in batches, like the latency runs.
    let mut left = s.open_count;
    let mut peer_ok = true;
    while left > 0 {
        let batch = left.min(OPEN_BATCH);
        for (i, lane) in lane_list(lanes) {
            if i == PEER && !peer_ok {
                continue;
            }
            let result = load::open_to_first_byte(lane.route.echo, batch, &mut via[i]);
            peer_ok &= lanes.tolerate(i, "open", result)?;
        }
        raw_opens(agent_ws, batch, &mut upgrade[0], &mut first[0])
            .context("raw opens to the agent")?;
        if let (Some(ep), true) = (peer_ws, peer_ok) {
            let result = raw_opens(ep, batch, &mut upgrade[PEER], &mut first[PEER]);
            peer_ok &= lanes.tolerate(PEER, "raw WebSocket opens", result)?;
        }
        left -= batch;
    }
    if !peer_ok {
        via[PEER].clear();
        upgrade[PEER].clear();
        first[PEER].clear();
    }
    // A raw client has no direct counterpart but a plain connect.
    upgrade[1].clone_from(&via[1]);
    first[1].clone_from(&via[1]);

    let slower = |t: Trio| {
        t.tunnel
            .zip(t.direct)
            .map(|(a, b)| format!("tunnel +{:.0} µs", (a - b) * 1e6))
            .unwrap_or_default()
    };
    for p in [50.0, 99.0] {
        let t = percentiles(&via, p);
        rows.push(
            Row::info(format!("open: connect -> 1st echo, p{p}"), Unit::Micros)
                .values(t.tunnel, t.direct, t.peer)
                .ratios(slower(t)),
        );
    }
    for p in [50.0, 99.0] {
        let t = percentiles(&upgrade, p);
        let mut row = Row::info(format!("open: raw WS upgrade -> 101, p{p}"), Unit::Micros)
            .values(t.tunnel, t.direct, t.peer)
            .ratios("direct: TCP connect -> 1st echo".into());
        if p == 50.0 {
            row = row.target(
                "p50 < 1 ms",
                t.tunnel.map(|v| v < MAX_OPEN_P50.as_secs_f64()),
            );
        }
        rows.push(row);
    }
    let t = percentiles(&first, 50.0);
    rows.push(
        Row::info("open: raw WS upgrade -> 1st echo, p50", Unit::Micros)
            .values(t.tunnel, t.direct, t.peer)
            .ratios(slower(t)),
    );
    Ok(())
}

/// The `p`-th percentile of each route's samples, in seconds.
fn percentiles(samples: &[Vec<Duration>; 3], p: f64) -> Trio {
    let get = |v: &Vec<Duration>| percentile(v, p).map(|d| d.as_secs_f64());
    Trio {
        tunnel: get(&samples[0]),
        direct: get(&samples[1]),
        peer: get(&samples[2]),
    }
}

/// Times `count` raw WebSocket opens: to the 101, and to the first byte
/// echoed back through the tunnel.
fn raw_opens(
    ep: &Endpoint,
    count: usize,
    upgrade: &mut Vec<Duration>,
    first: &mut Vec<Duration>,
) -> Result<()> {
    for _ in 0..count {
        let start = Instant::now();
        let mut conn = ep.open()?;
        upgrade.push(start.elapsed());
        conn.send_small_binary(b"x")?;
        let back = conn.recv_small_binary()?;
        first.push(start.elapsed());
        anyhow::ensure!(back == b"x", "echo through raw WebSocket returned {back:?}");
    }
    Ok(())
}

/// Memory of the tunnel's server end: idle (measured by the caller before
/// any load) and with `n` idle tunnels open at once. Run before any
/// transfer, so that buffers freed by earlier runs (which the allocator
/// keeps) are not counted as the cost of idle tunnels.
pub fn memory(
    lanes: &Lanes,
    s: &Settings,
    agent: &Spawned,
    agent_ws: &Endpoint,
    idle: IdleRss,
    peer: Option<(&Spawned, &Endpoint)>,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let n = s.idle_tunnels;
    progress(&format!("memory with {n} idle tunnels"));
    let loaded_agent = rss_with_tunnels(agent, agent_ws, n).context("agent with idle tunnels")?;
    let loaded_peer = match peer {
        Some((p, ep)) => {
            let mut rss = None;
            let result = rss_with_tunnels(p, ep, n).map(|r| rss = Some(r));
            lanes.tolerate(PEER, "idle tunnels", result)?;
            rss
        }
        None => None,
    };
    rows.push(
        Row::info("server-end RSS, idle", Unit::Megabytes)
            .values(Some(idle.agent), None, idle.peer)
            .ratios(ratio("/peer", Some(idle.agent), idle.peer).unwrap_or_default())
            .target("< 10 MB", Some(idle.agent < MAX_IDLE_RSS)),
    );
    rows.push(
        Row::info(format!("server-end RSS, {n} idle tunnels"), Unit::Megabytes)
            .values(Some(loaded_agent), None, loaded_peer)
            .ratios(ratio("/peer", Some(loaded_agent), loaded_peer).unwrap_or_default())
            .target("< 64 MB", Some(loaded_agent < MAX_LOADED_RSS)),
    );
    Ok(())
}

/// RSS of the server ends once every run is over and every tunnel closed:
/// what the allocator kept of the buffers the transfers used.
pub fn rss_after_runs(agent: &Spawned, peer: Option<&Spawned>, rows: &mut Vec<Row>) -> Result<()> {
    // Give the last closed tunnels a moment to be torn down.
    std::thread::sleep(Duration::from_secs(1));
    let agent = usage::rss_bytes(agent.pid())? as f64;
    let peer = match peer {
        Some(p) => Some(usage::rss_bytes(p.pid())? as f64),
        None => None,
    };
    rows.push(
        Row::info("server-end RSS, idle after all runs", Unit::Megabytes)
            .values(Some(agent), None, peer)
            .ratios(ratio("/peer", Some(agent), peer).unwrap_or_default()),
    );
    Ok(())
}

/// Idle RSS of the agent and of the peer's server end, read before load.
#[derive(Debug, Clone, Copy)]
pub struct IdleRss {
    pub agent: f64,
    pub peer: Option<f64>,
}

/// Opens `n` tunnels to the echo server, checks a sample of them carries
/// data, reads the server end's RSS, then closes them all.
fn rss_with_tunnels(server: &Spawned, ep: &Endpoint, n: usize) -> Result<f64> {
    let mut conns: Vec<Conn> = Vec::with_capacity(n);
    for i in 0..n {
        let conn = ep
            .open()
            .with_context(|| format!("tunnel {} of {n} to {}", i + 1, server.name()))?;
        conns.push(conn);
    }
    let step = (n / 10).max(1);
    for conn in conns.iter_mut().step_by(step) {
        conn.send_small_binary(b"live")?;
        anyhow::ensure!(
            conn.recv_small_binary()? == b"live",
            "idle tunnel lost data"
        );
    }
    // Let the server settle after the burst of opens.
    std::thread::sleep(Duration::from_millis(500));
    let rss = usage::rss_bytes(server.pid())? as f64;
    drop(conns);
    Ok(rss)
}

const LABELS: [&str; 4] = ["sbx tunnel", "direct TCP", "peer tool", "forwarders"];
/// Index of the hop-floor lane in [`LABELS`].
const FLOOR: usize = 3;
/// Index of the peer lane in [`LABELS`].
const PEER: usize = 2;

/// The lanes in measuring order with their index into [`LABELS`].
fn lane_list<'a>(lanes: &'a Lanes<'a>) -> Vec<(usize, &'a Lane<'a>)> {
    let mut list = vec![(1, &lanes.direct), (0, &lanes.tunnel)];
    if let Some(p) = &lanes.peer {
        list.push((2, p));
    }
    list
}

fn trio(per_lane: &[Vec<f64>; 3]) -> Trio {
    Trio {
        tunnel: median(&per_lane[0]),
        direct: median(&per_lane[1]),
        peer: median(&per_lane[2]),
    }
}

/// Total CPU seconds of `procs` so far.
fn cpu_of(procs: &[&Spawned]) -> Result<f64> {
    procs
        .iter()
        .map(|p| usage::cpu_time(p.pid()).map(|d| d.as_secs_f64()))
        .sum()
}
