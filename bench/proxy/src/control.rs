//! The control-plane rows: how soon a registry change is in force on the
//! data plane (through the sandbox API, with the admin socket beside it as
//! the same-run baseline), what a request for a suspended sandbox waits
//! beyond the control plane's own resume time, and how soon a change made
//! on one proxy of a Redis-backed fleet is in force on another.
//!
//! Each section starts its own sbx-proxy (or two, and a redis-server) in
//! front of the bench's agent and service, and stops them by PID when it
//! ends. "In force" is observed, never assumed: once the PATCH is sent, the
//! bench sends `GET /` for the sandbox's port through a data plane every
//! 0.1 ms until the answer flips between the service's 200 (port exposed)
//! and the proxy's 401/403 (not exposed).
//!
//! The embedded registry writes its file (fsync included) before a change
//! is in force, so a figure through it is bounded below by the disk; the
//! bench times the same write of its own in the same file system ("disk
//! floor") beside it.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use sbx_bench_support::child::{find_on_path, Spawned};
use sbx_bench_support::scratch::Scratch;
use sbx_bench_support::stats::percentile;

use crate::client::{self, Conn, Response};
use crate::hook;
use crate::report::{Row, Unit, LANES, PROXY};
use crate::rig::{self, Proxy, ProxyOptions, SANDBOX_ID};

/// A port kept exposed throughout, so that unexposing the service's port
/// never unexposes the last one (which would also end public access).
const SPARE_PORT: u16 = 1;
/// A change not in force after this is a failure, not a sample.
const IN_FORCE_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two polls: busy polling would hold both CPUs of a small
/// machine and delay the very write it waits for (the embedded registry
/// fsyncs its file before a change is in force, and the kernel's journal
/// thread needs a CPU for that).
const POLL_GAP: Duration = Duration::from_micros(100);
/// Targets.
const MAX_API_IN_FORCE_P50: Duration = Duration::from_millis(5);
const MAX_RESUME_ADDED_P50: Duration = Duration::from_millis(20);
const MAX_FLEET_IN_FORCE_P99: Duration = Duration::from_secs(1);
/// Normal requests timed after each resume, for the figure subtracted.
const NORMAL_PER_RESUME: usize = 5;

#[derive(Debug, Clone)]
pub struct ControlSettings {
    pub api_iterations: usize,
    pub resume_iterations: usize,
    pub resume_delay: Duration,
    pub resume_concurrency: usize,
    pub fleet_iterations: usize,
}

/// What every section needs: the binaries, the agent and service the
/// proxies forward to, and where to put files.
pub struct Control<'a> {
    pub proxy_bin: &'a Path,
    pub redis_bin: Option<PathBuf>,
    pub scratch: &'a Scratch,
    pub runtime: &'a tokio::runtime::Runtime,
    pub agent: SocketAddr,
    pub service_port: u16,
    pub host: String,
    pub access_log: bool,
    pub settings: ControlSettings,
    pub notes: RefCell<Vec<String>>,
}

fn progress(what: &str) {
    eprintln!("proxy-bench: {what}");
}

/// The sbx-proxy column only: these rows have no nginx or direct
/// counterpart; their baselines are named in the ratio column.
fn only_proxy(v: Option<Duration>) -> [Option<f64>; LANES] {
    let mut values = [None; LANES];
    values[PROXY] = v.map(|d| d.as_secs_f64());
    values
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "n/a".into())
}

fn p(samples: &[Duration], q: f64) -> Option<Duration> {
    percentile(samples, q)
}

/// Where a PATCH goes: the sandbox API or an admin socket, on one
/// keep-alive connection.
struct Patcher {
    conn: Conn,
    /// `path` and `Host` of the requests.
    path: String,
    host: &'static str,
    what: &'static str,
}

impl Patcher {
    fn api(proxy: &Proxy) -> Result<Self> {
        Ok(Self {
            conn: Conn::connect(proxy.api)?,
            path: format!("/v1/namespaces/default/sandboxes/{SANDBOX_ID}"),
            host: "127.0.0.1",
            what: "the sandbox API",
        })
    }

    fn admin(proxy: &Proxy) -> Result<Self> {
        Ok(Self {
            conn: Conn::connect_unix(&proxy.admin_socket)?,
            path: format!("/v1/sandboxes/{SANDBOX_ID}"),
            host: "localhost",
            what: "the admin socket",
        })
    }

    fn request(&self, body: &str) -> Vec<u8> {
        client::json_request("PATCH", &self.path, self.host, body)
    }

    fn answer(&mut self) -> Result<()> {
        let response = self.conn.read_response()?;
        if response.status != 200 {
            bail!(
                "PATCH {} through {} answered {}: {}",
                self.path,
                self.what,
                response.status,
                String::from_utf8_lossy(&response.body)
            );
        }
        if response.close {
            bail!("{} closed a keep-alive connection", self.what);
        }
        Ok(())
    }

    /// One PATCH, answered; its round trip.
    fn round_trip(&mut self, body: &str) -> Result<Duration> {
        let request = self.request(body);
        let start = Instant::now();
        self.conn.send(&request)?;
        self.answer()?;
        Ok(start.elapsed())
    }
}

/// A data plane that is watched for a change: one keep-alive connection,
/// reopened if the proxy closes it.
struct Observer {
    addr: SocketAddr,
    conn: Conn,
    request: Vec<u8>,
    reconnects: usize,
}

impl Observer {
    fn new(addr: SocketAddr, host: &str) -> Result<Self> {
        Ok(Self {
            addr,
            conn: Conn::connect(addr)?,
            request: client::get_request(host),
            reconnects: 0,
        })
    }

    /// Whether the port is exposed, by the answer: the service's 200, or
    /// the proxy's 401/403. Anything else is an error.
    fn exposed(&mut self) -> Result<bool> {
        let response = self.conn.exchange(&self.request)?;
        if response.close {
            self.conn = Conn::connect(self.addr)?;
            self.reconnects += 1;
        }
        classify(&response)
    }

    /// Polls until the answer says `exposed`.
    fn until(&mut self, exposed: bool, since: Instant) -> Result<Duration> {
        loop {
            if self.exposed()? == exposed {
                return Ok(since.elapsed());
            }
            if since.elapsed() > IN_FORCE_TIMEOUT {
                bail!(
                    "a PATCH to exposed={exposed} was not in force on {} after {IN_FORCE_TIMEOUT:?}",
                    self.addr
                );
            }
            std::thread::sleep(POLL_GAP);
        }
    }
}

fn classify(response: &Response) -> Result<bool> {
    match response.status {
        200 => client::check(response, "the exposed port").map(|()| true),
        401 | 403 => Ok(false),
        other => Err(anyhow!(
            "answered {other} (neither the service's 200 nor 401/403): {}",
            String::from_utf8_lossy(&response.body)
                .chars()
                .take(200)
                .collect::<String>()
        )),
    }
}

/// Sends the PATCH, watches `observer` until it is in force, then reads the
/// PATCH's answer (the change may be in force before it arrives); the time
/// to in force, and to the answer (to within one poll when it came first).
fn patch_in_force(
    patcher: &mut Patcher,
    body: &str,
    observer: &mut Observer,
    exposed: bool,
) -> Result<(Duration, Duration)> {
    let request = patcher.request(body);
    let start = Instant::now();
    patcher.conn.send(&request)?;
    let took = observer.until(exposed, start)?;
    patcher.answer()?;
    Ok((took, start.elapsed()))
}

/// What the embedded registry's write costs the disk, done here the same
/// way (temp file, fsync, rename, fsync of the directory) in the same file
/// system: the floor under a PATCH's round trip.
fn disk_floor(dir: &Path, bytes: &[u8]) -> Result<Duration> {
    use std::io::Write as _;
    let start = Instant::now();
    let tmp = dir.join("floor.json.tmp");
    let mut file = std::fs::File::create(&tmp).context("create floor file")?;
    file.write_all(bytes)?;
    file.sync_all().context("fsync floor file")?;
    std::fs::rename(&tmp, dir.join("floor.json")).context("rename floor file")?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .context("fsync scratch directory")?;
    Ok(start.elapsed())
}

impl Control<'_> {
    fn note(&self, note: String) {
        eprintln!("proxy-bench: NOTE: {note}");
        self.notes.borrow_mut().push(note);
    }

    fn ports_body(&self, exposed: bool) -> String {
        let ports: Vec<u16> = if exposed {
            vec![self.service_port, SPARE_PORT]
        } else {
            vec![SPARE_PORT]
        };
        serde_json::json!({ "exposed_ports": ports }).to_string()
    }

    fn entry(&self, status: &str, auto_resume: bool) -> serde_json::Value {
        rig::sandbox_entry(
            self.scratch,
            self.agent,
            &[self.service_port, SPARE_PORT],
            status,
            auto_resume,
        )
    }

    /// A failed section leaves its figures out (so its targets miss) and
    /// says why; the other sections still run.
    fn section(
        &self,
        name: &str,
        rows: &mut Vec<Row>,
        run: impl FnOnce(&mut Vec<Row>) -> Result<()>,
    ) -> Result<()> {
        let mut mine = Vec::new();
        if let Err(err) = run(&mut mine) {
            self.note(format!("{name}: failed, figures left out: {err:#}"));
            mine.clear();
            self.failed_rows(name, &mut mine);
        }
        rows.append(&mut mine);
        Ok(())
    }

    fn failed_rows(&self, name: &str, rows: &mut Vec<Row>) {
        let (metric, target) = match name {
            "api" => ("api PATCH exposed_ports → in force, p50", "p50 < 5 ms"),
            "resume" => ("resume: added wait p50", "p50 < 20 ms"),
            _ => ("fleet: PATCH on A → in force on B, p99", "p99 < 1 s"),
        };
        rows.push(Row::new(metric, Unit::Millis, only_proxy(None)).target(target, Some(false)));
    }

    /// `api`: exposed_ports PATCHed through the sandbox API until the data
    /// plane answers accordingly; the same through the admin socket.
    pub fn api(&self, rows: &mut Vec<Row>) -> Result<()> {
        self.section("api", rows, |rows| self.api_inner(rows))
    }

    fn api_inner(&self, rows: &mut Vec<Row>) -> Result<()> {
        let n = self.settings.api_iterations;
        progress(&format!(
            "api: {n} PATCHes of exposed_ports through the sandbox API and {n} through the admin socket, until in force"
        ));
        let mut proxy = rig::start_proxy(
            self.proxy_bin,
            self.scratch,
            &ProxyOptions {
                open_api: true,
                register: Some(self.entry("running", false)),
                ..ProxyOptions::plain("sbx-proxy-api", self.access_log)
            },
        )?;
        let mut observer = Observer::new(proxy.addr, &self.host)?;
        let mut api = Patcher::api(&proxy)?;
        let mut admin = Patcher::admin(&proxy)?;
        // Warm: both paths, and the data plane's connection into the
        // sandbox; ends exposed.
        let mut exposed = true;
        for _ in 0..20 {
            for patcher in [&mut api, &mut admin] {
                exposed = !exposed;
                patch_in_force(patcher, &self.ports_body(exposed), &mut observer, exposed)?;
            }
        }
        let mut in_force: [Vec<Duration>; 2] = Default::default();
        let mut answered: [Vec<Duration>; 2] = Default::default();
        let mut rtt: [Vec<Duration>; 2] = Default::default();
        let mut floor: Vec<Duration> = Vec::with_capacity(n);
        // A state file of about the proxy's size.
        let state = std::fs::read(self.scratch.path("sbx-proxy-api.state/sandboxes.json"))
            .unwrap_or_else(|_| vec![b' '; 600]);
        // Interleaved, so a disturbance on the machine hits every figure
        // alike.
        // Each way round in turn: the first PATCH of a pair unexposes the
        // port (polls go all the way to the service until it is in force),
        // the second exposes it again (polls get the proxy's own 401).
        for i in 0..n {
            let pair = if i % 2 == 0 {
                [(0, &mut api), (1, &mut admin)]
            } else {
                [(1, &mut admin), (0, &mut api)]
            };
            for (k, patcher) in pair {
                exposed = !exposed;
                let (took, answer) =
                    patch_in_force(patcher, &self.ports_body(exposed), &mut observer, exposed)?;
                in_force[k].push(took);
                answered[k].push(answer);
            }
            for (k, patcher) in [&mut api, &mut admin].into_iter().enumerate() {
                exposed = !exposed;
                rtt[k].push(patcher.round_trip(&self.ports_body(exposed))?);
            }
            floor.push(disk_floor(self.scratch.dir(), &state)?);
        }
        if observer.reconnects > 0 {
            self.note(format!(
                "api: sbx-proxy closed the data-plane connection {} times (reopened, within the figures)",
                observer.reconnects
            ));
        }
        proxy.proc.ensure_running()?;
        let [api_in, admin_in] = &in_force;
        let [api_rtt, admin_rtt] = &rtt;
        let base = |label: &str, v: &[Duration], q: f64, a: &[Duration]| {
            Some(format!(
                "{label} {}, api/admin {:.2}",
                ms(p(v, q)),
                ratio_of(p(a, q), p(v, q))
            ))
        };
        rows.push(
            Row::new(
                format!("api PATCH exposed_ports → in force, p50 ({n})"),
                Unit::Millis,
                only_proxy(p(api_in, 50.0)),
            )
            .ratios([
                base("admin socket", admin_in, 50.0, api_in),
                Some(format!("disk floor {}", ms(p(&floor, 50.0)))),
            ])
            .target(
                "p50 < 5 ms",
                Some(p(api_in, 50.0).is_some_and(|v| v < MAX_API_IN_FORCE_P50)),
            ),
        );
        rows.push(
            Row::new(
                "api PATCH exposed_ports → in force, p99",
                Unit::Millis,
                only_proxy(p(api_in, 99.0)),
            )
            .ratios([
                Some(format!("max {}", ms(api_in.iter().max().copied()))),
                base("admin socket", admin_in, 99.0, api_in),
                Some(format!("disk floor {}", ms(p(&floor, 99.0)))),
            ]),
        );
        let [api_answered, _] = &answered;
        for q in [50.0, 99.0] {
            rows.push(
                Row::new(
                    format!("api PATCH round trip alone, p{q}"),
                    Unit::Millis,
                    only_proxy(p(api_rtt, q)),
                )
                .ratios([
                    base("admin socket", admin_rtt, q, api_rtt),
                    Some(format!("disk floor {}", ms(p(&floor, q)))),
                    Some(format!("while polled {}", ms(p(api_answered, q)))),
                ]),
            );
        }
        Ok(())
    }

    /// `resume`: requests for a suspended sandbox with auto_resume, a fake
    /// control plane that takes a fixed delay to resume it.
    pub fn resume(&self, rows: &mut Vec<Row>) -> Result<()> {
        self.section("resume", rows, |rows| self.resume_inner(rows))
    }

    fn resume_inner(&self, rows: &mut Vec<Row>) -> Result<()> {
        let s = &self.settings;
        let (n, delay, c) = (s.resume_iterations, s.resume_delay, s.resume_concurrency);
        progress(&format!(
            "resume: {n} requests for a suspended sandbox, control plane resuming after {} ms; then {c} at once",
            delay.as_millis()
        ));
        let name = "sbx-proxy-resume";
        let admin_socket = rig::admin_socket(self.scratch, name);
        let hook = self
            .runtime
            .block_on(hook::start(admin_socket.clone(), delay))?;
        let mut proxy = rig::start_proxy(
            self.proxy_bin,
            self.scratch,
            &ProxyOptions {
                hook_url: Some(hook.url()),
                register: Some(self.entry("running", true)),
                ..ProxyOptions::plain(name, self.access_log)
            },
        )?;
        let mut admin = Patcher::admin(&proxy)?;
        let suspended = r#"{"status":"suspended"}"#;
        let request = client::get_request(&self.host);
        let mut conn = Conn::connect(proxy.addr)?;
        for _ in 0..200 {
            client::check(&conn.exchange(&request)?, "the running sandbox")?;
        }

        let mut total: Vec<Duration> = Vec::with_capacity(n);
        let mut normal: Vec<Duration> = Vec::with_capacity(n * NORMAL_PER_RESUME);
        // Where the time went, per iteration.
        let mut to_hook = Vec::with_capacity(n);
        let mut slack = Vec::with_capacity(n);
        let mut patch = Vec::with_capacity(n);
        let mut after_patch = Vec::with_capacity(n);
        for i in 0..n {
            admin.round_trip(suspended)?;
            let calls = hook.resumes();
            let start = Instant::now();
            let response = conn.exchange(&request)?;
            let took = start.elapsed();
            let end = start + took;
            client::check(&response, "the resumed sandbox")
                .with_context(|| format!("resume {i}"))?;
            if response.close {
                conn = Conn::connect(proxy.addr)?;
            }
            total.push(took);
            let call = hook
                .finished(calls, Duration::from_secs(2))
                .ok_or_else(|| anyhow!("resume {i}: answered, but the hook saw no resume call"))?;
            let (sent, done) = (
                call.patch_sent.unwrap_or(call.received),
                call.patch_done.unwrap_or(call.received),
            );
            to_hook.push(call.received.saturating_duration_since(start));
            slack.push(sent.saturating_duration_since(call.received + delay));
            patch.push(done.saturating_duration_since(sent));
            after_patch.push(end.saturating_duration_since(done));
            for _ in 0..NORMAL_PER_RESUME {
                let start = Instant::now();
                let response = conn.exchange(&request)?;
                normal.push(start.elapsed());
                client::check(&response, "the running sandbox")?;
            }
        }
        let extra_calls = hook.resumes().saturating_sub(n);

        // Many at once: one hook call however many wait.
        let mut conns = (0..c)
            .map(|_| {
                let mut conn = Conn::connect(proxy.addr)?;
                client::check(&conn.exchange(&request)?, "the running sandbox")?;
                Ok(conn)
            })
            .collect::<Result<Vec<_>>>()?;
        admin.round_trip(suspended)?;
        let calls_before = hook.resumes();
        let barrier = Arc::new(Barrier::new(c));
        let request = Arc::new(request);
        let waits: Vec<Result<Duration>> = std::thread::scope(|scope| {
            let handles: Vec<_> = conns
                .iter_mut()
                .map(|conn| {
                    let barrier = barrier.clone();
                    let request = request.clone();
                    scope.spawn(move || -> Result<Duration> {
                        barrier.wait();
                        let start = Instant::now();
                        let response = conn.exchange(&request)?;
                        let took = start.elapsed();
                        client::check(&response, "a concurrent resume")?;
                        Ok(took)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("a client panicked")))
                })
                .collect()
        });
        // A second call, if any, would come right after the first resume.
        std::thread::sleep(Duration::from_millis(100));
        let concurrent_calls = hook.resumes() - calls_before;
        let answered = waits.iter().filter(|w| w.is_ok()).count();
        let slowest = waits.iter().filter_map(|w| w.as_ref().ok()).max().copied();
        if let Some(Err(err)) = waits.iter().find(|w| w.is_err()) {
            self.note(format!(
                "resume: {} of {c} concurrent requests failed, e.g.: {err:#}",
                c - answered
            ));
        }
        for problem in hook.problems() {
            self.note(format!("resume: {problem}"));
        }
        if extra_calls > 0 {
            self.note(format!(
                "resume: {extra_calls} hook calls beyond one per resume in the sequential part"
            ));
        }
        proxy.proc.ensure_running()?;

        let normal_p50 = p(&normal, 50.0).unwrap_or_default();
        let added: Vec<Duration> = total
            .iter()
            .map(|t| t.saturating_sub(delay).saturating_sub(normal_p50))
            .collect();
        let med = |v: &[Duration]| ms(p(v, 50.0));
        let d = delay.as_millis();
        rows.push(
            Row::new(
                format!("resume: wait beyond D={d} ms, p50 ({n})"),
                Unit::Millis,
                only_proxy(p(&added, 50.0)),
            )
            .ratios([
                Some(format!(
                    "request {} - D - normal request {}",
                    med(&total),
                    ms(Some(normal_p50))
                )),
                Some(format!(
                    "medians: to hook {}, hook's timer {}, admin PATCH {}, PATCH → answer {}",
                    med(&to_hook),
                    med(&slack),
                    med(&patch),
                    med(&after_patch)
                )),
            ])
            .target(
                "p50 < 20 ms",
                Some(p(&added, 50.0).is_some_and(|v| v < MAX_RESUME_ADDED_P50)),
            ),
        );
        rows.push(
            Row::new(
                format!("resume: wait beyond D={d} ms, p99"),
                Unit::Millis,
                only_proxy(p(&added, 99.0)),
            )
            .ratios([
                Some(format!("max {}", ms(added.iter().max().copied()))),
                Some(format!("p99 PATCH → answer {}", ms(p(&after_patch, 99.0)))),
            ]),
        );
        let mut count = [None; LANES];
        count[PROXY] = Some(concurrent_calls as f64);
        rows.push(
            Row::new(
                format!("resume: hook calls for {c} concurrent requests"),
                Unit::Count,
                count,
            )
            .ratios([
                Some(format!("{answered}/{c} answered 200")),
                slowest.map(|s| format!("slowest {}", ms(Some(s)))),
            ])
            .target("exactly 1", Some(concurrent_calls == 1 && answered == c)),
        );
        Ok(())
    }

    /// `fleet`: two proxies on one redis-server; PATCH on A's admin socket,
    /// watched on B's data plane (and on A's, the same-run baseline).
    pub fn fleet(&self, rows: &mut Vec<Row>) -> Result<()> {
        let Some(redis_bin) = self.redis_bin.as_deref() else {
            self.note(
                "fleet: redis-server not found (apt-get install redis-server, or --redis-bin); rows left out"
                    .into(),
            );
            rows.push(
                Row::new(
                    "fleet: PATCH on A → in force on B, p99",
                    Unit::Millis,
                    only_proxy(None),
                )
                .target("p99 < 1 s", None),
            );
            return Ok(());
        };
        self.section("fleet", rows, |rows| self.fleet_inner(redis_bin, rows))
    }

    fn fleet_inner(&self, redis_bin: &Path, rows: &mut Vec<Row>) -> Result<()> {
        let n = self.settings.fleet_iterations;
        progress(&format!(
            "fleet: {n} PATCHes on proxy A's admin socket watched on proxy B (Redis registry), {n} watched on A"
        ));
        let (mut redis, socket) = start_redis(redis_bin, self.scratch)?;
        let registry = Some(format!("redis+unix://{}", socket.display()));
        let mut a = rig::start_proxy(
            self.proxy_bin,
            self.scratch,
            &ProxyOptions {
                registry: registry.clone(),
                register: Some(self.entry("running", false)),
                ..ProxyOptions::plain("sbx-proxy-fleet-a", self.access_log)
            },
        )?;
        let mut b = rig::start_proxy(
            self.proxy_bin,
            self.scratch,
            &ProxyOptions {
                registry,
                ..ProxyOptions::plain("sbx-proxy-fleet-b", self.access_log)
            },
        )?;
        // B learns of the sandbox from Redis alone.
        let mut on_b = Observer::new(b.addr, &self.host)?;
        let start = Instant::now();
        loop {
            let response = on_b.conn.exchange(&on_b.request)?;
            if response.close {
                on_b.conn = Conn::connect(b.addr)?;
            }
            if response.status == 200 {
                client::check(&response, "proxy B")?;
                break;
            }
            if start.elapsed() > IN_FORCE_TIMEOUT {
                bail!(
                    "proxy B still answers {} for the sandbox registered on A {IN_FORCE_TIMEOUT:?} ago",
                    response.status
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut on_a = Observer::new(a.addr, &self.host)?;
        let mut admin = Patcher::admin(&a)?;
        let mut exposed = true;
        for _ in 0..10 {
            for observer in [&mut on_b, &mut on_a] {
                exposed = !exposed;
                patch_in_force(&mut admin, &self.ports_body(exposed), observer, exposed)?;
            }
        }
        let mut in_force: [Vec<Duration>; 2] = Default::default();
        let mut rtt = Vec::with_capacity(n);
        for _ in 0..n {
            for (k, observer) in [&mut on_b, &mut on_a].into_iter().enumerate() {
                exposed = !exposed;
                let (took, _) =
                    patch_in_force(&mut admin, &self.ports_body(exposed), observer, exposed)?;
                in_force[k].push(took);
            }
            exposed = !exposed;
            rtt.push(admin.round_trip(&self.ports_body(exposed))?);
        }
        for (proc, what) in [
            (&mut redis, "redis-server"),
            (&mut a.proc, "proxy A"),
            (&mut b.proc, "proxy B"),
        ] {
            proc.ensure_running().with_context(|| what.to_owned())?;
        }
        let [on_b, on_a] = &in_force;
        rows.push(
            Row::new(
                format!("fleet: PATCH on A → in force on B, p50 ({n})"),
                Unit::Millis,
                only_proxy(p(on_b, 50.0)),
            )
            .ratios([
                Some(format!("on A itself {}", ms(p(on_a, 50.0)))),
                Some(format!("PATCH round trip {}", ms(p(&rtt, 50.0)))),
            ]),
        );
        rows.push(
            Row::new(
                "fleet: PATCH on A → in force on B, p99",
                Unit::Millis,
                only_proxy(p(on_b, 99.0)),
            )
            .ratios([
                Some(format!("on A itself {}", ms(p(on_a, 99.0)))),
                Some(format!("max on B {}", ms(on_b.iter().max().copied()))),
            ])
            .target(
                "p99 < 1 s",
                Some(p(on_b, 99.0).is_some_and(|v| v < MAX_FLEET_IN_FORCE_P99)),
            ),
        );
        Ok(())
    }
}

fn ratio_of(a: Option<Duration>, b: Option<Duration>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => a.as_secs_f64() / b.as_secs_f64(),
        _ => f64::NAN,
    }
}

/// A redis-server of the bench's own: no TCP port, a unix socket in the
/// scratch directory, no persistence; ended by PID with its guard.
fn start_redis(bin: &Path, scratch: &Scratch) -> Result<(Spawned, PathBuf)> {
    let dir = scratch.path("redis");
    std::fs::create_dir_all(&dir).context("create redis dir")?;
    let socket = dir.join("redis.sock");
    let mut args: Vec<std::ffi::OsString> = vec!["--port".into(), "0".into()];
    args.extend(["--unixsocket".into(), socket.clone().into_os_string()]);
    args.extend(["--unixsocketperm".into(), "700".into()]);
    args.extend(["--dir".into(), dir.into_os_string()]);
    for (k, v) in [
        ("--save", ""),
        ("--appendonly", "no"),
        ("--daemonize", "no"),
    ] {
        args.extend([k.into(), v.into()]);
    }
    let mut proc = Spawned::start("redis-server", bin, args, &scratch.log("redis-server"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).is_err() {
        proc.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "redis-server did not listen on {} within 10 s",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((proc, socket))
}

/// redis-server from the flag, else on PATH or in /usr/bin.
pub fn find_redis(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_owned()).filter(|p| p.is_file());
    }
    find_on_path("redis-server")
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file()))
}
