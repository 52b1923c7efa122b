//! netctl's DNS forwarder for one sandbox (SPEC 4, "Domains are enforced
//! through DNS"). The sandbox's port-53 traffic is redirected here (see
//! `ruleset::answers`); each query is judged by name, asked upstream if it
//! may be, and an allowed answer's addresses are put into the sandbox's
//! answer sets *before* the answer is released, so the connection that
//! follows it at once is accepted.

pub mod answer;
pub mod listen;
pub mod names;
pub mod stats;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::dns::Timing;
use crate::elements::{Element, ElementWriter};
use crate::ruleset::answers::{SET_V4, SET_V6};
use names::{normalise, NameRules, NameVerdict};
use stats::{DnsStats, Verdict};
use upstream::{Upstreams, MAX_MESSAGE};

/// How long an answer may be held for its set write (lock wait included);
/// past it the client gets SERVFAIL, never an answer whose addresses would
/// be refused.
pub const HOLD_LIMIT: Duration = Duration::from_millis(250);
/// Names whose answers serialise on one lock: a stripe per hash, so the
/// locks are bounded whatever the sandbox asks.
const LOCK_STRIPES: usize = 64;
/// Queries of one sandbox in flight at once; more UDP queries are dropped
/// (the client retries), more TCP connections wait.
const MAX_IN_FLIGHT: usize = 256;
/// Names remembered for `show`, per sandbox (the oldest go first).
const MAX_RECENT: usize = 256;
/// A TCP client that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The DNS payload a UDP client without EDNS accepts (RFC 1035).
const CLASSIC_UDP: usize = 512;

/// What a sandbox resolved recently, for `show`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resolved {
    pub name: String,
    /// Each address and when its element expires (ms since the epoch),
    /// unless traffic keeps it alive.
    pub addresses: Vec<(IpAddr, u64)>,
    pub at_ms: u64,
}

/// Everything a sandbox's forwarder tasks share.
struct Shared {
    sandbox: String,
    rules: RwLock<NameRules>,
    writer: Arc<ElementWriter>,
    upstreams: Upstreams,
    timing: Timing,
    locks: Vec<Mutex<()>>,
    in_flight: Arc<Semaphore>,
    recent: StdMutex<BTreeMap<String, Resolved>>,
    stats: Arc<DnsStats>,
}

/// A running forwarder; its sockets close when it is dropped.
pub struct Forwarder {
    shared: Arc<Shared>,
    _tasks: JoinSet<()>,
}

impl Forwarder {
    /// Binds the sockets inside `netns` and starts serving.
    pub async fn start(
        sandbox: &str,
        netns: &Path,
        port: u16,
        rules: NameRules,
        upstreams: Upstreams,
        timing: Timing,
        stats: Arc<DnsStats>,
    ) -> Result<Self, String> {
        let writer = ElementWriter::open(netns)
            .await
            .map_err(|e| e.to_string())?;
        let sockets = listen::bind(netns, port).await?;
        let shared = Arc::new(Shared {
            sandbox: sandbox.to_owned(),
            rules: RwLock::new(rules),
            writer: Arc::new(writer),
            upstreams,
            timing,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            recent: StdMutex::new(BTreeMap::new()),
            stats,
        });
        let mut tasks = JoinSet::new();
        for udp in sockets.udp {
            tasks.spawn(serve_udp(shared.clone(), Arc::new(udp)));
        }
        for tcp in sockets.tcp {
            tasks.spawn(serve_tcp(shared.clone(), tcp));
        }
        Ok(Self {
            shared,
            _tasks: tasks,
        })
    }

    /// A new policy's names take effect for the next query.
    pub fn set_rules(&self, rules: NameRules) {
        *self.shared.rules.write().unwrap_or_else(|p| p.into_inner()) = rules;
    }

    /// The names resolved recently, newest first.
    pub fn recent(&self) -> Vec<Resolved> {
        let recent = self.shared.recent.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<Resolved> = recent.values().cloned().collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
        all
    }

    /// Addresses handed out whose elements have not expired yet.
    pub fn live_elements(&self) -> usize {
        let now = now_ms();
        let recent = self.shared.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .values()
            .flat_map(|r| &r.addresses)
            .filter(|(_, expires)| *expires > now)
            .count()
    }
}

async fn serve_udp(shared: Arc<Shared>, socket: Arc<AsyncFd<UdpSocket>>) {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let datagram = match listen::recv(&socket, &mut buffer).await {
            Ok(d) => d,
            Err(e) => {
                debug!(sandbox = %shared.sandbox, error = %e, "DNS datagram not read");
                continue;
            }
        };
        let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
            shared
                .stats
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        };
        let query = buffer[..datagram.len].to_vec();
        let shared = shared.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(answer) = shared.answer(&query, false).await {
                if let Err(e) = listen::send(&socket, &answer, datagram.from, datagram.to).await {
                    debug!(sandbox = %shared.sandbox, error = %e, "DNS answer not sent");
                }
            }
        });
    }
}

async fn serve_tcp(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = shared.in_flight.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = serve_tcp_client(&shared, stream).await;
        });
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2), answered in order.
async fn serve_tcp_client(
    shared: &Shared,
    mut stream: tokio::net::TcpStream,
) -> std::io::Result<()> {
    loop {
        let length = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(n)) => usize::from(n),
            _ => return Ok(()),
        };
        let mut query = vec![0u8; length];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let Some(answer) = shared.answer(&query, true).await else {
            return Ok(());
        };
        let Ok(length) = u16::try_from(answer.len()) else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&answer);
        stream.write_all(&framed).await?;
    }
}

impl Shared {
    /// The answer to one query (`None`: not a DNS query; nothing is sent).
    async fn answer(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let [question] = request.queries.as_slice() else {
            return refusal(&request, ResponseCode::FormErr);
        };
        let qname = normalise(&question.name.to_ascii());
        let rules = self.rules.read().unwrap_or_else(|p| p.into_inner()).clone();
        let verdict = rules.judge(&qname);
        match verdict {
            NameVerdict::Denied => {
                self.stats.count(Verdict::NxdomainDenied);
                debug!(sandbox = %self.sandbox, name = %qname, "denied name: NXDOMAIN");
                return refusal(&request, ResponseCode::NXDomain);
            }
            NameVerdict::Unlisted if !rules.allow_internet_access => {
                self.stats.count(Verdict::NxdomainNotAllowed);
                return refusal(&request, ResponseCode::NXDomain);
            }
            _ => {}
        }
        let reply = match self.upstreams.ask(query, request.metadata.id, tcp).await {
            Ok(reply) => reply,
            Err(e) => {
                debug!(sandbox = %self.sandbox, name = %qname, error = %e, "upstream failed: SERVFAIL");
                self.stats.count(Verdict::Servfail);
                return refusal(&request, ResponseCode::ServFail);
            }
        };
        let Ok(response) = Message::from_vec(&reply.full) else {
            self.stats.count(Verdict::Servfail);
            return refusal(&request, ResponseCode::ServFail);
        };
        let read = answer::read(&qname, &response);
        if read
            .chain
            .iter()
            .skip(1)
            .any(|name| rules.judge(name) == NameVerdict::Denied)
        {
            self.stats.count(Verdict::NxdomainDenied);
            debug!(sandbox = %self.sandbox, name = %qname, chain = ?read.chain, "denied name in the CNAME chain: NXDOMAIN");
            return refusal(&request, ResponseCode::NXDomain);
        }
        if verdict == NameVerdict::Allowed && !read.addrs.is_empty() {
            let started = Instant::now();
            let held = tokio::time::timeout(HOLD_LIMIT, self.admit(&qname, &read.addrs)).await;
            self.stats.hold(started.elapsed());
            match held {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(sandbox = %self.sandbox, name = %qname, error = %e, "answer's addresses not written: SERVFAIL");
                    self.stats.count(Verdict::Servfail);
                    return refusal(&request, ResponseCode::ServFail);
                }
                Err(_) => {
                    warn!(sandbox = %self.sandbox, name = %qname, "answer held past {HOLD_LIMIT:?}: SERVFAIL");
                    self.stats.count(Verdict::Servfail);
                    return refusal(&request, ResponseCode::ServFail);
                }
            }
        }
        self.stats.count(Verdict::Forwarded);
        Some(match reply.udp_answer {
            Some(truncated) if !tcp && reply.full.len() > udp_limit(&request) => truncated,
            _ => reply.full,
        })
    }

    /// Puts an allowed answer's addresses into the sets (under the name's
    /// lock) and remembers them for `show`.
    async fn admit(&self, qname: &str, addrs: &[(IpAddr, u32)]) -> Result<(), String> {
        let _locked = self.locks[stripe(qname)].lock().await;
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut seen = HashMap::new();
        for (addr, ttl) in addrs {
            let addr = sbx_proto::policy::fold_mapped_addr(*addr);
            let life = self.life(*ttl);
            let entry = seen.entry(addr).or_insert(life);
            *entry = (*entry).max(life);
        }
        for (addr, timeout) in &seen {
            let element = Element {
                addr: *addr,
                timeout: *timeout,
            };
            if addr.is_ipv4() {
                v4.push(element);
            } else {
                v6.push(element);
            }
        }
        // Both writes finish before the answer goes. They run on a blocking
        // thread: the kernel makes a write wait while another transaction
        // in the namespace holds nf_tables' lock (a big policy apply can
        // hold it for most of a second), and only a task that yields lets
        // the caller's HOLD_LIMIT fire. A write that outlives its answer's
        // SERVFAIL still lands; its elements expire like any other.
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            writer.add(SET_V4, &v4)?;
            writer.add(SET_V6, &v6)
        })
        .await
        .map_err(|e| format!("set write task: {e}"))?
        .map_err(|e| e.to_string())?;
        let now = now_ms();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= MAX_RECENT && !recent.contains_key(qname) {
            if let Some(oldest) = recent
                .iter()
                .min_by_key(|(_, r)| r.at_ms)
                .map(|(n, _)| n.clone())
            {
                recent.remove(&oldest);
            }
        }
        let mut addresses: Vec<(IpAddr, u64)> = seen
            .iter()
            .map(|(a, t)| (*a, now + t.as_millis() as u64))
            .collect();
        addresses.sort();
        recent.insert(
            qname.to_owned(),
            Resolved {
                name: qname.to_owned(),
                addresses,
                at_ms: now,
            },
        );
        Ok(())
    }

    /// An element's life: the TTL clamped to `[min_ttl, max_ttl]`, plus
    /// the grace during which clients still use a cached answer.
    fn life(&self, ttl: u32) -> Duration {
        let t = &self.timing;
        let ms = (u64::from(ttl) * 1000).clamp(t.min_ttl_ms, t.max_ttl_ms) + t.grace_ms;
        Duration::from_millis(ms)
    }
}

/// An answer we make ourselves: the question echoed, no records.
fn refusal(request: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut response = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.queries = request.queries.clone();
    if request.edns.is_some() {
        response.edns = Some(Edns::new());
    }
    response.to_vec().ok()
}

/// The largest UDP answer the client said it accepts.
fn udp_limit(request: &Message) -> usize {
    request.edns.as_ref().map_or(CLASSIC_UDP, |e| {
        usize::from(e.max_payload()).max(CLASSIC_UDP)
    })
}

fn stripe(name: &str) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    (hasher.finish() % LOCK_STRIPES as u64) as usize
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The upstream resolvers as socket addresses (port 53).
pub fn upstream_addrs(servers: &[IpAddr]) -> Vec<SocketAddr> {
    servers.iter().map(|ip| SocketAddr::new(*ip, 53)).collect()
}
