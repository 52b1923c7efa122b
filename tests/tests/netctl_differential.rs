//! Differential test of the egress policy: random policies (seeded) applied
//! by the real netctl daemon to a real namespace, and for each one a batch
//! of destinations probed with real TCP connects from the sandbox; the
//! kernel's verdict must equal the one `sbx_tests::egress_reference` reads
//! out of SPEC 4.
//!
//! Every destination is answered when nothing refuses it: the "internet"
//! namespace owns whole ranges through `ip route add local` (AnyIP) and a
//! listener takes every connection there, as one does in the sandbox for
//! its loopback and own addresses. So a connect that completes means
//! "accepted by the policy", and ECONNREFUSED can only be netctl's TCP
//! reset; anything else (a timeout, an ICMP error) is a mismatch too.
//!
//! `SBX_DIFF_SEED=<n>` replays a run; the seed is printed at the start.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use sbx_tests::egress_gen::{Gen, ANSWERED_V4, ANSWERED_V6};
use sbx_tests::egress_reference::{Host, Policy, Verdict};
use sbx_tests::netctl_support::*;
use sbx_tests::netns::require_netns;

/// Always-deny lists tried (one daemon start each).
const ROUNDS: usize = 10;
const POLICIES_PER_ROUND: usize = 50;
const DESTINATIONS_PER_POLICY: usize = 20;
/// Not the echo servers' port: only the answerers below listen here.
const PROBE_PORT: u16 = 8099;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A refusal must be a fast failure (SPEC 4), not a timeout in disguise.
const FAST: Duration = Duration::from_secs(1);
/// Mismatches printed in full; the rest are counted.
const SHOWN: usize = 25;

const OWN_V4: &str = "192.0.2.2";
const OWN_V6: &str = "2001:db8:1::2";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Accepted,
    Refused(Duration),
    Other(String),
}

impl Got {
    fn matches(&self, expected: Verdict) -> bool {
        match (self, expected) {
            (Got::Accepted, Verdict::Accept) => true,
            (Got::Refused(took), Verdict::Refuse) => *took < FAST,
            _ => false,
        }
    }
}

/// Accepts every connection to `[::]:PROBE_PORT` in a namespace and closes
/// it at once; stopped on drop by shutting the listener down, which wakes
/// the blocked accept.
struct Answerer {
    listener: TcpListener,
    handle: Option<JoinHandle<()>>,
}

impl Answerer {
    fn start(ns_path: &str) -> Self {
        let listener = in_netns(ns_path, || TcpListener::bind(("::", PROBE_PORT)))
            .unwrap_or_else(|e| panic!("bind [::]:{PROBE_PORT}: {e}"));
        let accepting = listener.try_clone().expect("clone listener");
        let handle = std::thread::spawn(move || {
            for conn in accepting.incoming() {
                if conn.is_err() {
                    return;
                }
            }
        });
        Self {
            listener,
            handle: Some(handle),
        }
    }
}

impl Drop for Answerer {
    fn drop(&mut self) {
        // SAFETY: shutdown(2) on a socket this struct owns.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects to every destination at once (from the calling thread's
/// namespace) and says how each attempt ended.
fn probe_all(dests: Vec<IpAddr>) -> Vec<Got> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(futures_util::future::join_all(dests.into_iter().map(
        |dest| async move {
            let started = Instant::now();
            let addr = SocketAddr::new(dest, PROBE_PORT);
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
            {
                Ok(Ok(_)) => Got::Accepted,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Got::Refused(started.elapsed())
                }
                Ok(Err(e)) => Got::Other(e.to_string()),
                Err(_) => Got::Other(format!("no answer in {CONNECT_TIMEOUT:?}")),
            }
        },
    )))
}

fn seed() -> u64 {
    match std::env::var("SBX_DIFF_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("SBX_DIFF_SEED={s:?} is not a u64: {e}")),
        Err(_) => rand::random(),
    }
}

/// Rewrites the daemon's config with this always-deny list (a top-level
/// key, so it goes first) and restarts the daemon, which re-applies what
/// it had from its state.
fn restart_with_always_deny(w: &mut World, always_deny: &[IpNet]) {
    let path = w.dir.path().join("config.toml");
    let old = std::fs::read_to_string(&path).expect("read config");
    let list: Vec<String> = always_deny.iter().map(|n| format!("\"{n}\"")).collect();
    let mut config = format!("always_deny = [{}]\n", list.join(", "));
    for line in old.lines().filter(|l| !l.starts_with("always_deny")) {
        config.push_str(line);
        config.push('\n');
    }
    std::fs::write(&path, config).expect("write config");
    w.start_daemon();
}

/// Applies through the API, and every fourth time through the CLI.
fn apply(w: &World, index: usize, policy: &Policy) -> Result<(), String> {
    let json = policy.to_json().to_string();
    if index % 4 == 3 {
        let (code, _, err) = netctl_cli(
            &w.socket(),
            &["set-policy", "sb", "--policy", "-"],
            Some(&json),
        );
        return (code == 0)
            .then_some(())
            .ok_or_else(|| format!("netctl set-policy exited {code}: {err}"));
    }
    let r = w.put("sb", &json);
    (r.status == 200)
        .then_some(())
        .ok_or_else(|| format!("PUT answered {}: {}", r.status, r.body))
}

#[test]
fn kernel_verdicts_match_the_spec_reference() {
    if !require_netns() {
        return;
    }
    let seed = seed();
    eprintln!("netctl_differential: seed {seed} (replay with SBX_DIFF_SEED={seed})");
    let started = Instant::now();

    let mut w = World::new();
    for net in ANSWERED_V4 {
        w.internet.ip(&["route", "add", "local", net, "dev", "lo"]);
    }
    w.internet
        .ip(&["-6", "route", "add", "local", ANSWERED_V6, "dev", "lo"]);
    let _peer = Answerer::start(&w.internet.path());
    let _own = Answerer::start(&w.sandbox.path());
    // The sandbox must exist before the CLI can change its policy.
    w.put_ok("sb", "{}");

    let own: Vec<IpAddr> = vec![OWN_V4.parse().unwrap(), OWN_V6.parse().unwrap()];
    let mut gen = Gen::new(seed, own.clone());
    let (mut probes, mut accepted, mut mismatches) = (0usize, 0usize, 0usize);
    let mut report = String::new();
    let mut slowest_refusal = Duration::ZERO;
    for round in 0..ROUNDS {
        let always_deny = gen.always_deny();
        restart_with_always_deny(&mut w, &always_deny);
        let host = Host {
            always_deny: always_deny.clone(),
            own_addresses: own.clone(),
        };
        for i in 0..POLICIES_PER_ROUND {
            let policy = gen.policy(&always_deny);
            let dests = gen.destinations(&policy, &always_deny, DESTINATIONS_PER_POLICY);
            let index = round * POLICIES_PER_ROUND + i;
            if let Err(e) = apply(&w, index, &policy) {
                panic!(
                    "seed {seed}, policy #{index} {} was not applied: {e}",
                    policy.to_json()
                );
            }
            let got = w.probe.run({
                let dests = dests.clone();
                move || probe_all(dests)
            });
            for (dest, got) in dests.iter().zip(got) {
                probes += 1;
                let expected = host.verdict(&policy, *dest);
                match &got {
                    Got::Accepted => accepted += 1,
                    Got::Refused(took) => slowest_refusal = slowest_refusal.max(*took),
                    Got::Other(_) => {}
                }
                if got.matches(expected) {
                    continue;
                }
                mismatches += 1;
                if mismatches <= SHOWN {
                    let _ = writeln!(
                        report,
                        "policy #{index} {}\n  always_deny {:?}\n  destination {dest}: expected {expected}, got {got:?}",
                        policy.to_json(),
                        always_deny.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    );
                }
                if mismatches == 1 {
                    let _ = writeln!(
                        report,
                        "  rules in force:\n{}",
                        w.nft_table().unwrap_or_default()
                    );
                }
            }
        }
    }
    eprintln!(
        "netctl_differential: {probes} probes, {} policies, {accepted} accepted, {} refused or failed, slowest refusal {slowest_refusal:?}, {mismatches} mismatches, {:.1?}",
        ROUNDS * POLICIES_PER_ROUND,
        probes - accepted,
        started.elapsed()
    );
    assert!(
        mismatches == 0,
        "seed {seed} (replay with SBX_DIFF_SEED={seed}): {mismatches} of {probes} probes disagree with SPEC 4:\n{report}"
    );
    // Both verdicts must be well represented or the comparison proves little.
    assert!(
        accepted > probes / 5 && probes - accepted > probes / 5,
        "seed {seed}: lopsided run, {accepted} of {probes} accepted"
    );
}
