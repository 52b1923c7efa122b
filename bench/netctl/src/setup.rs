//! Sandbox network setup figures: netctl creating and deleting whole
//! sandbox networks (namespace, veth, addresses, routes, policy) in a host
//! namespace the bench made, against the same objects made by a shell of
//! `ip` and `nft` commands in the same run.
//!
//! ```text
//!  sandboxes (netctl-made) ─veth─ host (netctl) 192.0.2.130 ─veth─ 192.0.2.129 internet
//! ```
//!
//! The host's only uplink leads to the bench's own "internet" namespace,
//! so nothing is forwarded or masqueraded toward the machine's real uplink.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::rig::{self, link, Daemon, Netns};
use crate::{ms, percentile, small_policy};
use sbx_bench_support::netns::{namespaces_with_prefix, PrefixCleanup};

/// Sandboxes timed at each end of the run for the growth figure.
const WINDOW: usize = 20;
/// Runs of the shell baseline (each makes and removes one sandbox network).
const BASELINE_RUNS: usize = 20;

pub fn setup_figures(netctl: &Path, dir: &Path, count: usize) -> Result<()> {
    ensure!(count >= 2, "--setups must be at least 2");
    let host = Netns::new("nbh")?;
    let internet = Netns::new("nbn")?;
    let (uplink, _) = link(&host, "192.0.2.130/25", &internet, "192.0.2.129/25")?;
    host.ip(&["route", "add", "default", "via", "192.0.2.129"])?;
    let prefix = format!("nbx{}x-", std::process::id() % 100_000);
    // Removes whatever netctl (or the baseline) left, after the daemon is
    // gone (locals drop in reverse order).
    let _leftovers = PrefixCleanup(prefix.clone());
    let _baseline_leftovers = PrefixCleanup(format!("{prefix}b"));

    let baseline = shell_baseline(&host, &format!("{prefix}b"))?;

    let config = format!(
        "[dns]\nupstreams = [\"192.0.2.129\"]\n\
         [setup]\nnetns_prefix = \"{prefix}\"\nhost_iface_prefix = \"nbsh\"\nuplink = \"{uplink}\"\n"
    );
    let (daemon, _) = Daemon::start_with(netctl, dir, &config, Some(&host))?;
    let mut creates = Vec::with_capacity(count);
    for i in 0..count {
        let body = format!(
            r#"{{"setup":{{"tap":false}},"network":{}}}"#,
            small_policy(i % 2)
        );
        let t = Instant::now();
        let (status, answer) = daemon.call("PUT", &format!("/v1/sandboxes/s{i}"), &body)?;
        let took = t.elapsed();
        if status != 200 {
            bail!(
                "PUT s{i} with setup: {status} {}",
                answer.chars().take(300).collect::<String>()
            );
        }
        creates.push(took);
    }
    let alive = namespaces_with_prefix(&prefix)
        .iter()
        .filter(|n| !n.starts_with(&format!("{prefix}b")))
        .count();
    ensure!(
        alive == count,
        "{alive} namespaces exist after {count} creates"
    );
    let mut deletes = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        let (status, answer) = daemon.call("DELETE", &format!("/v1/sandboxes/s{i}"), "")?;
        let took = t.elapsed();
        ensure!(status == 204, "DELETE s{i}: {status} {answer}");
        deletes.push(took);
    }
    drop(daemon);
    let left = namespaces_with_prefix(&prefix);
    let host_links = host.ip(&["-o", "link"])?.lines().count();

    let window = WINDOW.min(count / 2).max(1);
    let growth = |v: &[Duration]| -> (Duration, Duration, f64) {
        let first = mean(&v[..window]);
        let last = mean(&v[v.len() - window..]);
        (first, last, last.as_secs_f64() / first.as_secs_f64())
    };
    let (c_first, c_last, c_ratio) = growth(&creates);
    let (d_first, d_last, d_ratio) = growth(&deletes);
    let mut baseline = baseline;
    let bc50 = percentile(&mut baseline.creates, 0.5);
    let bd50 = percentile(&mut baseline.deletes, 0.5);
    let bl50 = percentile(&mut baseline.link_dels, 0.5);
    let c50 = percentile(&mut creates, 0.5);
    let d50 = percentile(&mut deletes, 0.5);

    println!();
    println!(
        "sandbox network setup (netns + veth + IPv4/IPv6 addresses + routes + 10-entry policy), \
         {count} creates in a row, then {count} deletes:"
    );
    println!(
        "  baseline: shell of ip + nft -f commands, create  p50 {}  ({BASELINE_RUNS} runs)",
        ms(bc50)
    );
    println!(
        "  baseline: ip link del + ip netns del, delete     p50 {}  (of which ip link del of the veth: {})",
        ms(bd50),
        ms(bl50)
    );
    println!(
        "  create (PUT with setup -> 200)   p50 {}  p90 {}  p99 {}  max {}  = {:.2}x the shell   target p50 < 50 ms",
        ms(c50),
        ms(percentile(&mut creates, 0.9)),
        ms(percentile(&mut creates, 0.99)),
        ms(percentile(&mut creates, 1.0)),
        c50.as_secs_f64() / bc50.as_secs_f64()
    );
    println!(
        "  delete (DELETE -> 204)           p50 {}  p90 {}  p99 {}  max {}  = {:.2}x the shell   target p50 < 30 ms",
        ms(d50),
        ms(percentile(&mut deletes, 0.9)),
        ms(percentile(&mut deletes, 0.99)),
        ms(percentile(&mut deletes, 1.0)),
        d50.as_secs_f64() / bd50.as_secs_f64()
    );
    println!(
        "  growth, mean of first {window} vs last {window}: create {} -> {} ({c_ratio:.2}x), \
         delete {} -> {} ({d_ratio:.2}x)   target: no growth (~1.0x)",
        ms(c_first),
        ms(c_last),
        ms(d_first),
        ms(d_last)
    );
    println!(
        "  left behind: {} namespaces, {} host links besides lo and the uplink",
        left.len(),
        host_links.saturating_sub(2)
    );
    Ok(())
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / u32::try_from(v.len()).unwrap_or(u32::MAX).max(1)
}

/// The same objects netctl makes for one sandbox, made and removed by a
/// shell of `ip` commands and one `nft -f` of a comparable table; times of
/// each create and each delete.
/// Times of the shell baseline, one entry per run.
struct Baseline {
    creates: Vec<Duration>,
    /// `ip link del` of the veth, then `ip netns del`.
    deletes: Vec<Duration>,
    /// The `ip link del` alone: the kernel's veth teardown (RCU grace
    /// periods), a floor no delete can go under while it removes the link.
    link_dels: Vec<Duration>,
}

fn shell_baseline(host: &Netns, prefix: &str) -> Result<Baseline> {
    let table = std::env::temp_dir().join(format!("netctl-bench-setup-{}.nft", std::process::id()));
    std::fs::write(&table, comparable_table())?;
    let _remove = RemoveFile(table.clone());
    let table = table.to_str().context("temp path is not UTF-8")?.to_owned();
    let mut creates = Vec::with_capacity(BASELINE_RUNS);
    for k in 0..BASELINE_RUNS {
        let ns = format!("{prefix}{k}");
        let hif = format!("nbq{k}");
        let (h4, s4) = (
            format!("10.201.{}.{}", k / 64, (k % 64) * 4 + 1),
            format!("10.201.{}.{}", k / 64, (k % 64) * 4 + 2),
        );
        let (h6, s6) = (format!("fd00:5c:0:{k:x}::1"), format!("fd00:5c:0:{k:x}::2"));
        let h = &host.name;
        let script = format!(
            "set -e\n\
             ip netns add {ns}\n\
             ip -n {h} link add {hif} type veth peer name eth0 netns {ns}\n\
             ip -n {h} addr add {h4}/30 dev {hif}\n\
             ip -n {h} -6 addr add {h6}/64 dev {hif} nodad\n\
             ip -n {h} link set {hif} up\n\
             ip -n {ns} link set lo up\n\
             ip -n {ns} addr add {s4}/30 dev eth0\n\
             ip -n {ns} -6 addr add {s6}/64 dev eth0 nodad\n\
             ip -n {ns} link set eth0 up\n\
             ip -n {ns} route add default via {h4}\n\
             ip -n {ns} -6 route add default via {h6}\n\
             nsenter --net=/run/netns/{ns} nft -f {table}\n"
        );
        let t = Instant::now();
        sh(&script)?;
        creates.push(t.elapsed());
    }
    let mut deletes = Vec::with_capacity(BASELINE_RUNS);
    let mut link_dels = Vec::with_capacity(BASELINE_RUNS);
    for k in 0..BASELINE_RUNS {
        let t = Instant::now();
        host.ip(&["link", "del", &format!("nbq{k}")])?;
        let link_del = t.elapsed();
        rig::run(Command::new("ip").args(["netns", "del", &format!("{prefix}{k}")]))?;
        deletes.push(t.elapsed());
        link_dels.push(link_del);
    }
    Ok(Baseline {
        creates,
        deletes,
        link_dels,
    })
}

fn sh(script: &str) -> Result<()> {
    rig::run(Command::new("sh").args(["-c", script])).map(|_| ())
}

/// About what netctl sends for a 10-entry deny policy: interval sets per
/// family, the always-deny list, a named counter and the policy chain.
fn comparable_table() -> String {
    let deny4: Vec<String> = (0..6).map(|i| format!("198.51.100.{}", i * 2)).collect();
    let deny6: Vec<String> = (0..4)
        .map(|i| format!("2001:db8:{:x}::/48", i * 2))
        .collect();
    format!(
        "table inet bench_setup {{\n\
         \tcounter refused {{ }}\n\
         \tset always4 {{ type ipv4_addr; flags interval; elements = {{ 169.254.0.0/16 }} }}\n\
         \tset always6 {{ type ipv6_addr; flags interval; elements = {{ fe80::/10 }} }}\n\
         \tset deny4 {{ type ipv4_addr; flags interval; elements = {{ {} }} }}\n\
         \tset deny6 {{ type ipv6_addr; flags interval; elements = {{ {} }} }}\n\
         \tchain output {{\n\t\ttype filter hook output priority filter; policy accept;\n\t\tjump judge\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t}}\n\
         \tchain judge {{\n\
         \t\toif lo accept\n\
         \t\tct state established,related ct direction reply accept\n\
         \t\tip daddr @always4 counter name refused reject\n\
         \t\tip6 daddr @always6 counter name refused reject\n\
         \t\tip daddr @deny4 counter name refused reject\n\
         \t\tip6 daddr @deny6 counter name refused reject\n\
         \t}}\n\
         }}\n",
        deny4.join(", "),
        deny6.join(", ")
    )
}

struct RemoveFile(std::path::PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
