//! The measurements, each taken on every target in the same run and turned
//! into table rows with their targets.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use sbx_bench_support::report::ratio;
use sbx_bench_support::stats::{median, percentile};
use sbx_bench_support::usage;

use crate::client::{self, Conn};
use crate::load::{self, Shape};
use crate::report::{added_micros, Row, Unit, DIRECT, FLOOR, LABELS, LANES, NGINX, PROXY};
use crate::rig::Proxy;
use crate::service::Service;
use crate::ws::Ws;

/// Requests/s sbx-proxy must reach, as a share of nginx's one hop.
const MIN_SHARE_OF_NGINX: f64 = 0.70;
const MAX_ADDED_P50: Duration = Duration::from_micros(250);
/// Upstream connections allowed per 10,000 sequential requests.
const MAX_CONNECTS_PER_10K: f64 = 2.0;
const MAX_IDLE_RSS: f64 = 30e6;
const MAX_LOADED_RSS: f64 = 200e6;
/// Requests (or round trips) per target before the next one takes its
/// turn, so that a disturbance on the machine hits every column alike.
const BATCH: usize = 500;
/// Requests in flight at once while idle connections are opened.
const IDLE_WAVE: usize = 128;

#[derive(Debug, Clone)]
pub struct Settings {
    pub h1: Shape,
    pub h2: Shape,
    pub repeat: usize,
    pub latency_count: usize,
    pub latency_warmup: usize,
    pub seq_requests: usize,
    pub ws_rtt_count: usize,
    pub ws_message: usize,
    pub ws_bytes: usize,
    pub idle_conns: usize,
}

/// How to reach the service through one target.
pub struct Lane {
    /// HTTP/1.1 (and WebSocket) entry point.
    pub h1: SocketAddr,
    /// h2c entry point (the same as `h1` where one listener speaks both).
    pub h2: SocketAddr,
    /// The processes that carry this route, for CPU time.
    pub pids: Vec<u32>,
}

pub struct Bench<'a> {
    pub lanes: [Option<Lane>; LANES],
    pub host: String,
    pub settings: Settings,
    pub service: Service,
    pub proxy: Option<&'a Proxy>,
    /// nginx's master PID, for the RSS of it and its workers.
    pub nginx_pid: Option<u32>,
    /// The service alone in its own process: the direct column of the
    /// memory rows.
    pub plain_hyper: (u32, SocketAddr),
    pub wrk: Option<PathBuf>,
    pub h2load: Option<PathBuf>,
    /// Why figures are missing where they are.
    pub notes: RefCell<Vec<String>>,
}

type Figures = [Option<f64>; LANES];

fn progress(what: &str) {
    eprintln!("proxy-bench: {what}");
}

impl Bench<'_> {
    pub fn note(&self, note: String) {
        eprintln!("proxy-bench: NOTE: {note}");
        self.notes.borrow_mut().push(note);
    }

    /// Passes errors on for the direct lane (the bench's own fault); on the
    /// others the failure is the target's: noted, and `None` returned so
    /// that the figure is left out instead of ending the run.
    fn tolerate<T>(&self, lane: usize, what: &str, result: Result<T>) -> Result<Option<T>> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(err) if lane != DIRECT => {
                self.note(format!(
                    "{what} via {}: failed, figure left out: {err:#}",
                    LABELS[lane]
                ));
                Ok(None)
            }
            Err(err) => Err(err.context(format!("{what} via {}", LABELS[lane]))),
        }
    }

    fn active(&self) -> impl Iterator<Item = (usize, &Lane)> {
        self.lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.as_ref().map(|l| (i, l)))
    }

    /// Whether a target on sbx-proxy's figure `v` is met: `None` when the
    /// proxy is not part of this run or `baseline` (needed) is missing; a
    /// proxy that could not be measured misses.
    fn verdict(
        &self,
        v: Option<f64>,
        baseline: Option<Option<f64>>,
        ok: impl Fn(f64) -> bool,
    ) -> Option<bool> {
        self.lanes[PROXY].as_ref()?;
        if let Some(None) = baseline {
            return None;
        }
        Some(v.is_some_and(ok))
    }

    /// Every `GET /` through every lane is the service's answer; any other
    /// answer ends the run (nothing else would be measurable).
    pub fn sanity(&self) -> Result<()> {
        let request = client::get_request(&self.host);
        for (i, lane) in self.active() {
            let mut conn = Conn::connect(lane.h1).with_context(|| LABELS[i])?;
            for _ in 0..3 {
                let response = conn.exchange(&request).with_context(|| LABELS[i])?;
                client::check(&response, LABELS[i])?;
            }
        }
        Ok(())
    }

    /// RSS of nginx (master and workers) and sbx-proxy (the agent beside).
    fn rss(&self) -> Result<(Figures, Option<f64>)> {
        let mut v: Figures = [None; LANES];
        v[DIRECT] = Some(usage::rss_bytes(self.plain_hyper.0)? as f64);
        if let Some(pid) = self.nginx_pid {
            v[NGINX] = Some(usage::rss_sum(&usage::with_children(pid))? as f64);
        }
        let mut agent = None;
        if let (Some(proxy), Some(lane)) = (self.proxy, &self.lanes[PROXY]) {
            v[PROXY] = Some(usage::rss_bytes(proxy.proc.pid())? as f64);
            agent = lane
                .pids
                .iter()
                .find(|&&p| p != proxy.proc.pid())
                .map(|&p| usage::rss_bytes(p))
                .transpose()?
                .map(|b| b as f64);
        }
        Ok((v, agent))
    }

    pub fn idle_rss(&self, rows: &mut Vec<Row>) -> Result<()> {
        progress("RSS, idle");
        let (v, agent) = self.rss()?;
        rows.push(
            Row::new("RSS idle (nginx: master+workers)", Unit::Megabytes, v)
                .ratios([
                    ratio("sbx/nginx", v[PROXY], v[NGINX]),
                    agent.map(|a| format!("agent {:.1} MB", a / 1e6)),
                ])
                .target(
                    "sbx-proxy < 30 MB",
                    self.verdict(v[PROXY], None, |x| x < MAX_IDLE_RSS),
                ),
        );
        Ok(())
    }

    /// RSS with `idle_conns` keep-alive HTTP/1.1 client connections open,
    /// each having carried one request; then they are closed.
    pub fn loaded_rss(&self, rows: &mut Vec<Row>) -> Result<()> {
        let n = self.settings.idle_conns;
        progress(&format!("RSS with {n} idle client connections"));
        let request = client::get_request(&self.host);
        let mut v: Figures = [None; LANES];
        let mut opened: Figures = [None; LANES];
        let idle = self.rss()?.0;
        let per_conn = |label: &str, with: Option<f64>, without: Option<f64>| {
            let (w, o) = (with?, without?);
            Some(format!("{label} {:.1} KB/conn", (w - o) / n as f64 / 1e3))
        };
        for lane in [DIRECT, PROXY, NGINX] {
            let addr = match (lane, &self.lanes[lane]) {
                (DIRECT, _) => self.plain_hyper.1,
                (_, Some(l)) => l.h1,
                (_, None) => continue,
            };
            let held = self.tolerate(lane, "idle connections", open_idle(addr, n, &request))?;
            let Some((held, took)) = held else { continue };
            opened[lane] = Some(took.as_secs_f64());
            std::thread::sleep(Duration::from_millis(500));
            v[lane] = self.rss()?.0[lane];
            if let (PROXY, Some(p)) = (lane, self.proxy) {
                // The figure is only meaningful if the proxy still holds
                // them all (it closes idle ones after its header timeout).
                match p.client_connections() {
                    Ok(Some(open)) if open + 0.5 < n as f64 => self.note(format!(
                        "sbx-proxy reported {open:.0} open client connections while the bench held {n}"
                    )),
                    Ok(Some(_)) => {}
                    Ok(None) => self.note("sbx-proxy exports no sbx_proxy_client_connections".into()),
                    Err(err) => self.note(format!("sbx-proxy /metrics: {err:#}")),
                }
            }
            drop(held);
            // Let the target notice the closes before the next one.
            std::thread::sleep(Duration::from_millis(500));
        }
        rows.push(
            Row::new(
                format!("RSS with {n} idle client conns"),
                Unit::Megabytes,
                v,
            )
            .ratios([
                ratio("sbx/nginx", v[PROXY], v[NGINX]),
                per_conn("sbx", v[PROXY], idle[PROXY]),
                per_conn("hyper", v[DIRECT], idle[DIRECT]),
                per_conn("nginx", v[NGINX], idle[NGINX]),
                opened[PROXY].map(|t| format!("opened in {t:.1} s")),
                opened[NGINX].map(|t| format!("nginx {t:.1} s")),
            ])
            .target(
                "sbx-proxy < 200 MB at 10k",
                // Fewer connections (--quick) say nothing about the target.
                self.verdict(v[PROXY], None, |x| x < MAX_LOADED_RSS)
                    .filter(|_| n >= 10_000),
            ),
        );
        Ok(())
    }

    pub fn rss_after(&self, rows: &mut Vec<Row>) -> Result<()> {
        let (v, agent) = self.rss()?;
        rows.push(Row::new("RSS after all runs", Unit::Megabytes, v).ratios([
            ratio("sbx/nginx", v[PROXY], v[NGINX]),
            agent.map(|a| format!("agent {:.1} MB", a / 1e6)),
        ]));
        Ok(())
    }

    /// Service-side accepts (and sbx-proxy's own counter) over sequential
    /// requests: on one keep-alive client connection, then on a fresh
    /// client connection each.
    pub fn upstream_connects(&self, rows: &mut Vec<Row>) -> Result<()> {
        let n = self.settings.seq_requests;
        let request = client::get_request(&self.host);
        let allowed = MAX_CONNECTS_PER_10K * (n as f64 / 10_000.0).max(1.0);
        let mut per_conn: Figures = [None; LANES];
        for fresh in [false, true] {
            let how = if fresh {
                "new client conn each"
            } else {
                "1 keep-alive client conn"
            };
            progress(&format!(
                "upstream connects over {n} sequential requests, {how}"
            ));
            let mut v: Figures = [None; LANES];
            let mut metric = None;
            for (i, lane) in self.active() {
                std::thread::sleep(Duration::from_millis(100));
                let before = self.service.accepted();
                let metric_before = match (i, self.proxy) {
                    (PROXY, Some(p)) => p.upstream_connects().unwrap_or(None),
                    _ => None,
                };
                let run = sequential(lane.h1, n, fresh, &request);
                let Some(took) = self.tolerate(i, how, run)? else {
                    continue;
                };
                if fresh {
                    per_conn[i] = Some(took.as_secs_f64() / n as f64);
                }
                std::thread::sleep(Duration::from_millis(100));
                v[i] = Some((self.service.accepted() - before) as f64);
                if let (PROXY, Some(p), Some(b)) = (i, self.proxy, metric_before) {
                    metric = p.upstream_connects().unwrap_or(None).map(|a| a - b);
                }
            }
            let metric_note = match (&self.lanes[PROXY], metric) {
                (None, _) => None,
                (Some(_), Some(m)) => Some(format!("sbx_proxy_upstream_connects_total +{m:.0}")),
                (Some(_), None) => Some("no sbx_proxy_upstream_connects_total".to_owned()),
            };
            rows.push(
                Row::new(
                    format!("service accepts / {n} seq. req, {how}"),
                    Unit::Count,
                    v,
                )
                .ratios([metric_note])
                .target(
                    "sbx-proxy ≤ 2 per 10k",
                    self.verdict(v[PROXY], None, |x| x <= allowed),
                ),
            );
        }
        rows.push(
            Row::new(
                "HTTP/1.1 new conn + 1 request, mean",
                Unit::Micros,
                per_conn,
            )
            .ratios([
                added_micros("sbx", per_conn[PROXY], per_conn[DIRECT]),
                added_micros("nginx", per_conn[NGINX], per_conn[DIRECT]),
                added_micros("floor", per_conn[FLOOR], per_conn[DIRECT]),
            ]),
        );
        Ok(())
    }

    /// HTTP/1.1 request latency: one connection per target, sequential
    /// requests, interleaved in batches.
    pub fn latency(&self, rows: &mut Vec<Row>) -> Result<()> {
        let s = &self.settings;
        progress(&format!(
            "HTTP/1.1 latency, {} sequential requests per target",
            s.latency_count
        ));
        let request = client::get_request(&self.host);
        let mut conns: Vec<(usize, Conn)> = Vec::new();
        for (i, lane) in self.active() {
            let opened = Conn::connect(lane.h1).and_then(|mut c| {
                for _ in 0..s.latency_warmup {
                    client::check(&c.exchange(&request)?, LABELS[i])?;
                }
                Ok(c)
            });
            if let Some(c) = self.tolerate(i, "latency warm-up", opened)? {
                conns.push((i, c));
            }
        }
        let mut samples: [Vec<Duration>; LANES] = Default::default();
        let mut failed = [false; LANES];
        let mut done = 0;
        while done < s.latency_count {
            let batch = BATCH.min(s.latency_count - done);
            for (i, conn) in conns.iter_mut() {
                if failed[*i] {
                    continue;
                }
                let run = (|| -> Result<()> {
                    for _ in 0..batch {
                        let start = Instant::now();
                        let response = conn.exchange(&request)?;
                        samples[*i].push(start.elapsed());
                        client::check(&response, LABELS[*i])?;
                        if response.close {
                            return Err(anyhow!("the target closed a keep-alive connection"));
                        }
                    }
                    Ok(())
                })();
                if self.tolerate(*i, "latency", run)?.is_none() {
                    failed[*i] = true;
                    samples[*i].clear();
                }
            }
            done += batch;
        }
        let pick = |p: f64| -> Figures {
            std::array::from_fn(|i| percentile(&samples[i], p).map(|d| d.as_secs_f64()))
        };
        let p50 = pick(50.0);
        let p99 = pick(99.0);
        let added = |v: &Figures| {
            [
                added_micros("sbx", v[PROXY], v[DIRECT]),
                added_micros("nginx", v[NGINX], v[DIRECT]),
                added_micros("floor", v[FLOOR], v[DIRECT]),
            ]
        };
        let max_added = MAX_ADDED_P50.as_secs_f64();
        rows.push(
            Row::new("HTTP/1.1 latency p50, 1 conn", Unit::Micros, p50)
                .ratios(added(&p50))
                .target(
                    "sbx-proxy adds < 250 µs",
                    self.verdict(p50[PROXY], Some(p50[DIRECT]), |x| {
                        p50[DIRECT].is_some_and(|d| x - d < max_added)
                    }),
                ),
        );
        rows.push(Row::new("HTTP/1.1 latency p99, 1 conn", Unit::Micros, p99).ratios(added(&p99)));
        Ok(())
    }

    /// Requests/s under `wrk` (HTTP/1.1) or `h2load` (h2c), the median of
    /// `repeat` interleaved runs after an untimed one, and the CPU each
    /// route's processes spend per request (on 2 cores the load generator
    /// competes with the route for CPU, so this is the figure that explains
    /// the rate).
    pub fn throughput(&self, h2: bool, rows: &mut Vec<Row>) -> Result<()> {
        let s = &self.settings;
        let (tool, shape, name) = if h2 {
            (&self.h2load, s.h2, "h2load")
        } else {
            (&self.wrk, s.h1, "wrk")
        };
        let label = if h2 {
            format!(
                "h2c req/s, {} conns x {} streams",
                shape.connections, shape.streams
            )
        } else {
            format!("HTTP/1.1 req/s, {} conns", shape.connections)
        };
        let Some(tool) = tool else {
            self.note(format!("{label}: {name} not installed, row left out"));
            return Ok(());
        };
        progress(&format!(
            "{label} ({name}), {} s per run, {} run(s) per target",
            shape.duration.as_secs(),
            s.repeat
        ));
        let run = |addr: SocketAddr, shape: Shape| {
            if h2 {
                load::h2load(tool, addr, &self.host, shape)
            } else {
                load::wrk(tool, addr, &self.host, shape)
            }
        };
        let mut rates: [Vec<f64>; LANES] = Default::default();
        let mut cpu: [Vec<f64>; LANES] = Default::default();
        let mut cpu_hop2: [Vec<f64>; LANES] = Default::default();
        let mut failed = [false; LANES];
        // Untimed: connections, pools and caches warm on every route.
        let warm = Shape {
            duration: Duration::from_secs(1),
            ..shape
        };
        for (i, lane) in self.active() {
            let addr = if h2 { lane.h2 } else { lane.h1 };
            if self.tolerate(i, "warm-up", run(addr, warm))?.is_none() {
                failed[i] = true;
            }
        }
        for _ in 0..s.repeat {
            for (i, lane) in self.active() {
                if failed[i] {
                    continue;
                }
                let before = usage::cpu_sum(&lane.pids)?;
                // The agent (sbx-proxy's lane) or the forwarder (the
                // floor's): the second hop comes last.
                let hop2 = lane
                    .pids
                    .last()
                    .copied()
                    .filter(|_| i == PROXY || i == FLOOR);
                let hop2_before = hop2.map(usage::cpu_time).transpose()?;
                let addr = if h2 { lane.h2 } else { lane.h1 };
                match self.tolerate(i, &label, run(addr, shape))? {
                    Some(outcome) => {
                        rates[i].push(outcome.per_sec);
                        if !lane.pids.is_empty() {
                            let spent = usage::cpu_sum(&lane.pids)? - before;
                            cpu[i].push(spent.as_secs_f64() / outcome.requests as f64);
                        }
                        if let (Some(pid), Some(b)) = (hop2, hop2_before) {
                            let spent = usage::cpu_time(pid)? - b;
                            cpu_hop2[i].push(spent.as_secs_f64() / outcome.requests as f64);
                        }
                    }
                    None => {
                        failed[i] = true;
                        rates[i].clear();
                        cpu[i].clear();
                        cpu_hop2[i].clear();
                    }
                }
            }
        }
        let v: Figures = std::array::from_fn(|i| median(&rates[i]));
        rows.push(
            Row::new(label, Unit::Rate, v)
                .ratios([
                    ratio("sbx/nginx", v[PROXY], v[NGINX]),
                    ratio("floor/nginx", v[FLOOR], v[NGINX]),
                    ratio("sbx/floor", v[PROXY], v[FLOOR]),
                    ratio("nginx/direct", v[NGINX], v[DIRECT]),
                ])
                .target(
                    "sbx-proxy ≥ 70% of nginx",
                    self.verdict(v[PROXY], Some(v[NGINX]), |x| {
                        v[NGINX].is_some_and(|n| x >= MIN_SHARE_OF_NGINX * n)
                    }),
                ),
        );
        let c: Figures = std::array::from_fn(|i| median(&cpu[i]));
        let hop2 = |label: &str, i: usize| {
            median(&cpu_hop2[i]).map(|v| format!("{label} {:.1} µs", v * 1e6))
        };
        rows.push(
            Row::new("  CPU per request (route's procs)", Unit::Micros, c).ratios([
                ratio("sbx/nginx", c[PROXY], c[NGINX]),
                ratio("sbx/floor", c[PROXY], c[FLOOR]),
                hop2("of which agent", PROXY),
                hop2("forwarder", FLOOR),
            ]),
        );
        Ok(())
    }

    /// WebSocket echo: round trips of small messages (interleaved batches)
    /// and MB/s with large messages, one at a time.
    pub fn websocket(&self, rows: &mut Vec<Row>) -> Result<()> {
        let s = &self.settings;
        progress(&format!(
            "WebSocket echo, {} x {} B round trips and {} MB of {} KiB messages per target",
            s.ws_rtt_count,
            crate::WS_SMALL,
            s.ws_bytes / 1_000_000,
            s.ws_message / 1024
        ));
        let small = vec![0x5au8; crate::WS_SMALL];
        let mut sockets: Vec<(usize, Ws)> = Vec::new();
        for (i, lane) in self.active() {
            let opened = Ws::open(lane.h1, &self.host).and_then(|mut ws| {
                for _ in 0..200 {
                    ws.round_trip(&small)?;
                }
                Ok(ws)
            });
            if let Some(ws) = self.tolerate(i, "websocket open", opened)? {
                sockets.push((i, ws));
            }
        }
        let mut samples: [Vec<Duration>; LANES] = Default::default();
        let mut failed = [false; LANES];
        let mut done = 0;
        while done < s.ws_rtt_count {
            let batch = BATCH.min(s.ws_rtt_count - done);
            for (i, ws) in sockets.iter_mut() {
                if failed[*i] {
                    continue;
                }
                let run = (0..batch)
                    .map(|_| ws.timed_round_trip(&small))
                    .collect::<Result<Vec<_>>>();
                match self.tolerate(*i, "websocket RTT", run)? {
                    Some(mut d) => samples[*i].append(&mut d),
                    None => {
                        failed[*i] = true;
                        samples[*i].clear();
                    }
                }
            }
            done += batch;
        }
        let big = vec![0xa5u8; s.ws_message];
        let messages = s.ws_bytes.div_ceil(s.ws_message).max(1);
        let mut rates: [Vec<f64>; LANES] = Default::default();
        for _ in 0..s.repeat {
            for (i, ws) in sockets.iter_mut() {
                if failed[*i] {
                    continue;
                }
                let start = Instant::now();
                let run = (0..messages).try_for_each(|_| ws.round_trip(&big));
                let secs = start.elapsed().as_secs_f64();
                if self.tolerate(*i, "websocket MB/s", run)?.is_none() {
                    failed[*i] = true;
                    rates[*i].clear();
                    continue;
                }
                rates[*i].push((messages * s.ws_message) as f64 / secs);
            }
        }
        for (_, ws) in sockets {
            ws.close();
        }
        let p50: Figures =
            std::array::from_fn(|i| percentile(&samples[i], 50.0).map(|d| d.as_secs_f64()));
        rows.push(
            Row::new(
                format!("WebSocket RTT p50, {} B", crate::WS_SMALL),
                Unit::Micros,
                p50,
            )
            .ratios([
                added_micros("sbx", p50[PROXY], p50[DIRECT]),
                added_micros("nginx", p50[NGINX], p50[DIRECT]),
                added_micros("floor", p50[FLOOR], p50[DIRECT]),
            ]),
        );
        let mbs: Figures = std::array::from_fn(|i| median(&rates[i]));
        rows.push(
            Row::new(
                format!("WebSocket echo, {} KiB msgs", s.ws_message / 1024),
                Unit::Throughput,
                mbs,
            )
            .ratios([
                ratio("sbx/direct", mbs[PROXY], mbs[DIRECT]),
                ratio("sbx/nginx", mbs[PROXY], mbs[NGINX]),
                ratio("sbx/floor", mbs[PROXY], mbs[FLOOR]),
            ]),
        );
        Ok(())
    }
}

/// Opens `n` connections to `addr`, one request answered on each, and
/// returns them open with the time it took. In phases (connect all, then
/// [`IDLE_WAVE`] requests at a time), so that 10,000 are open well within a
/// proxy's keep-alive timeout even where opening one is slow, with fewer
/// requests in flight than a per-sandbox concurrency cap.
fn open_idle(addr: SocketAddr, n: usize, request: &[u8]) -> Result<(Vec<Conn>, Duration)> {
    let start = Instant::now();
    let mut held = Vec::with_capacity(n);
    for k in 0..n {
        held.push(Conn::connect(addr).with_context(|| format!("connection {k}"))?);
    }
    for (w, wave) in held.chunks_mut(IDLE_WAVE).enumerate() {
        for (k, conn) in wave.iter_mut().enumerate() {
            conn.send(request)
                .with_context(|| format!("request on connection {}", w * IDLE_WAVE + k))?;
        }
        for (k, conn) in wave.iter_mut().enumerate() {
            let response = conn
                .read_response()
                .with_context(|| format!("response on connection {}", w * IDLE_WAVE + k))?;
            client::check(&response, "idle connection")?;
        }
    }
    Ok((held, start.elapsed()))
}

/// `n` sequential requests: on one connection, or each on a new one that
/// the client closes after the answer.
/// Returns the time it took.
fn sequential(addr: SocketAddr, n: usize, fresh: bool, request: &[u8]) -> Result<Duration> {
    let start = Instant::now();
    let mut conn = Conn::connect(addr)?;
    for k in 0..n {
        if fresh && k > 0 {
            conn = Conn::connect(addr)?;
        }
        let response = conn.exchange(request)?;
        client::check(&response, "sequential request")?;
        if response.close && !fresh {
            conn = Conn::connect(addr)?;
        }
    }
    Ok(start.elapsed())
}
