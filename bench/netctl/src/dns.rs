//! DNS through netctl's forwarder (issue 12), each figure next to its
//! baseline from the same run:
//!
//! - answer latency: the same query from the sandbox straight to dnsmasq
//!   (no policy) and through netctl's forwarder (a policy naming the
//!   domain, so every answer waits for its set write);
//! - set write: one element through the open netlink socket against
//!   `nft add element` spawned per answer (what it replaced);
//! - many sandboxes with domain rules on one host: netctl's RSS before and
//!   after, and queries per second across them.
//!
//! Everything runs in namespaces the bench makes; the resolver is a dnsmasq
//! in the bench's "internet" namespace.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use netctl::elements::{Element, ElementWriter};

use crate::rig::{in_netns, link, Daemon, Netns};
use crate::{ms, percentile};

const RESOLVER: &str = "10.99.0.2";
const QUERIES: usize = 400;

fn query(name: &str, id: u16) -> Result<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name)?, RecordType::A));
    Ok(m.to_vec()?)
}

/// `count` queries for `name(i)` from inside `ns`, one at a time; the
/// latency of each.
fn ask_many(
    ns: std::path::PathBuf,
    server: SocketAddr,
    count: usize,
    name: impl Fn(usize) -> String + Send + 'static,
) -> Result<Vec<Duration>> {
    in_netns(&ns, move || -> Result<Vec<Duration>> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = vec![0u8; 4096];
        let mut took = Vec::with_capacity(count);
        for i in 0..count {
            let q = query(&name(i), i as u16)?;
            let t = Instant::now();
            sock.send_to(&q, server)?;
            let n = sock.recv(&mut buf).context("no answer")?;
            took.push(t.elapsed());
            let m = Message::from_vec(&buf[..n])?;
            if m.metadata.response_code != ResponseCode::NoError || m.answers.is_empty() {
                bail!("{}: {:?}", name(i), m.metadata.response_code);
            }
        }
        Ok(took)
    })?
}

fn dnsmasq(internet: &Netns, hosts: &Path) -> Result<std::process::Child> {
    let mut lines = String::from("10.99.0.2 bench.test\n");
    for i in 0..4000u32 {
        lines.push_str(&format!(
            "198.18.{}.{} n{i}.wild.test\n",
            i / 250,
            i % 250 + 1
        ));
    }
    std::fs::write(hosts, lines)?;
    let child = Command::new("ip")
        .args(["netns", "exec", &internet.name, "/usr/sbin/dnsmasq"])
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--group=root",
            "--pid-file",
            "--port=53",
            "--local-ttl=60",
            "--cache-size=10000",
        ])
        .arg(format!("--listen-address={RESOLVER}"))
        .arg("--listen-address=192.0.2.1")
        .arg(format!("--addn-hosts={}", hosts.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start dnsmasq (dnsmasq-base)")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

pub fn dns_figures(netctl: &Path, dir: &Path, sandboxes: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let host = Netns::new("ndh")?;
    let internet = Netns::new("ndi")?;
    let sandbox = Netns::new("nds")?;
    link(&host, "10.99.0.1/30", &internet, &format!("{RESOLVER}/30"))?;
    link(&sandbox, "192.0.2.2/24", &internet, "192.0.2.1/24")?;
    sandbox.ip(&["route", "add", "default", "via", "192.0.2.1"])?;
    let mut resolver = dnsmasq(&internet, &dir.join("hosts"))?;
    let result = measure(netctl, dir, sandboxes, &host, &sandbox);
    let _ = resolver.kill();
    let _ = resolver.wait();
    result
}

fn measure(
    netctl: &Path,
    dir: &Path,
    sandboxes: usize,
    host: &Netns,
    sandbox: &Netns,
) -> Result<()> {
    let (daemon, _) = Daemon::start_with(
        netctl,
        &dir.join("dns"),
        &format!("[dns]\nupstreams = [\"{RESOLVER}\"]\nmin_ttl = 5\nmax_ttl = 300\n"),
        Some(host),
    )?;
    let server: SocketAddr = "192.0.2.1:53".parse()?;

    // Baseline: no policy, the sandbox asks dnsmasq itself. Warm its cache.
    ask_many(sandbox.path(), server, 50, |i| format!("n{i}.wild.test"))?;
    let mut direct = ask_many(sandbox.path(), server, QUERIES, |i| {
        format!("n{i}.wild.test")
    })?;
    // Through netctl: each answer is held until its element is written.
    daemon.put(
        "dns",
        &sandbox.name,
        r#"{"allow_internet_access": false, "allow_out": ["*.wild.test"]}"#,
    )?;
    let mut forwarded = ask_many(sandbox.path(), server, QUERIES, |i| {
        format!("n{i}.wild.test")
    })?;
    let (d50, d99) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.99));
    let (f50, f99) = (
        percentile(&mut forwarded, 0.5),
        percentile(&mut forwarded, 0.99),
    );
    println!();
    println!("DNS answer latency from the sandbox ({QUERIES} queries, one at a time):");
    println!(
        "  baseline: straight to dnsmasq (no policy)    p50 {}  p99 {}",
        ms(d50),
        ms(d99)
    );
    println!(
        "  through netctl's forwarder (set write held)  p50 {}  p99 {}   added p50 {}  p99 {}   target added p50 < 1 ms",
        ms(f50),
        ms(f99),
        ms(f50.saturating_sub(d50)),
        ms(f99.saturating_sub(d99))
    );

    set_write_figures(sandbox)?;

    // Many sandboxes with domain rules: only a namespace each (the
    // forwarder lives inside; upstream queries leave from netctl's side).
    let pid = daemon.pid();
    let rss_before = sbx_bench_support::usage::rss_bytes(pid)?;
    let mut many = Vec::with_capacity(sandboxes);
    let started = Instant::now();
    for i in 0..sandboxes {
        let ns = Netns::new("ndm")?;
        daemon.put(
            &format!("m{i}"),
            &ns.name,
            r#"{"allow_internet_access": false, "allow_out": ["*.wild.test"]}"#,
        )?;
        many.push(ns);
    }
    let put_took = started.elapsed();
    let rss_after = sbx_bench_support::usage::rss_bytes(pid)?;
    let (sessions, sessions_pss) = nft_sessions(pid);
    // Queries from 8 of them at once, each a different slice of names.
    let server: SocketAddr = "127.0.0.1:53".parse()?;
    let per = 250;
    let t = Instant::now();
    let handles: Vec<_> = many
        .iter()
        .step_by((sandboxes / 8).max(1))
        .take(8)
        .enumerate()
        .map(|(k, ns)| {
            let path = ns.path();
            std::thread::spawn(move || {
                ask_many(path, server, per, move |i| {
                    format!("n{}.wild.test", k * per + i)
                })
            })
        })
        .collect();
    let mut answered = 0;
    for h in handles {
        answered += h
            .join()
            .map_err(|_| anyhow::anyhow!("query thread"))??
            .len();
    }
    let qps = answered as f64 / t.elapsed().as_secs_f64();
    println!();
    println!("{sandboxes} sandboxes with domain rules on one host (a forwarder each):");
    println!(
        "  netctl RSS {:.1} MB before, {:.1} MB after ({:.1} KB per sandbox); {} PUTs in {:.1} s",
        rss_before as f64 / 1e6,
        rss_after as f64 / 1e6,
        (rss_after.saturating_sub(rss_before)) as f64 / 1e3 / sandboxes.max(1) as f64,
        sandboxes,
        put_took.as_secs_f64()
    );
    println!(
        "  nft sessions alive after the PUTs: {sessions} (nft_sessions_max 16), {:.1} MB PSS in all",
        sessions_pss as f64 / 1e6
    );
    println!("  {answered} queries from 8 sandboxes at once (each held for its set write): {qps:.0} queries/s");
    for i in 0..sandboxes {
        let _ = daemon.call("DELETE", &format!("/v1/sandboxes/m{i}"), "");
    }
    Ok(())
}

/// How many `nft` children netctl (`pid`) runs, and their proportional
/// set size in all (shared libraries counted once across them).
fn nft_sessions(pid: u32) -> (usize, u64) {
    let mut count = 0;
    let mut pss = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // comm is in parentheses; the parent PID is the second field after it.
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let parent = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if !comm.ends_with("(nft") || parent != Some(pid) {
            continue;
        }
        count += 1;
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{child}/smaps_rollup")) {
            pss += rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
        }
    }
    (count, pss)
}

/// One element through the open socket, against `nft add element` run per
/// answer.
fn set_write_figures(sandbox: &Netns) -> Result<()> {
    sandbox.exec("nft", &["add", "table", "inet", "bench_elems"])?;
    sandbox.exec(
        "nft",
        &[
            "add",
            "set",
            "inet",
            "bench_elems",
            "s",
            "{ type ipv4_addr; flags timeout; }",
        ],
    )?;
    let mut spawned = Vec::new();
    for i in 0..100u32 {
        let elem = format!("{{ 198.19.{}.{} timeout 60s }}", i / 250, i % 250 + 1);
        let t = Instant::now();
        sandbox.exec(
            "nft",
            &["add", "element", "inet", "bench_elems", "s", &elem],
        )?;
        spawned.push(t.elapsed());
    }
    sandbox.exec("nft", &["delete", "table", "inet", "bench_elems"])?;
    // Our own table and set name (the bench writes into its own table).
    sandbox.exec("nft", &["add", "table", "inet", netctl::ruleset::TABLE])?;
    let _ = sandbox.exec(
        "nft",
        &[
            "add",
            "set",
            "inet",
            netctl::ruleset::TABLE,
            "bench_s",
            "{ type ipv4_addr; flags timeout; }",
        ],
    );
    let path = sandbox.path();
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let writer = runtime.block_on(ElementWriter::open(&path))?;
    let mut netlink = Vec::new();
    for i in 0..1000u32 {
        let e = Element {
            addr: std::net::IpAddr::from([198, 20, (i / 250) as u8, (i % 250 + 1) as u8]),
            timeout: Duration::from_secs(60),
        };
        let t = Instant::now();
        writer.add("bench_s", &[e])?;
        netlink.push(t.elapsed());
    }
    let _ = sandbox.exec(
        "nft",
        &["delete", "set", "inet", netctl::ruleset::TABLE, "bench_s"],
    );
    println!();
    println!("set write (one answer's element into the kernel):");
    println!(
        "  baseline: `nft add element` spawned per answer  p50 {}",
        ms(percentile(&mut spawned, 0.5))
    );
    println!(
        "  netctl: netlink batch on an open socket          p50 {}  p99 {}",
        ms(percentile(&mut netlink, 0.5)),
        ms(percentile(&mut netlink, 0.99))
    );
    Ok(())
}
