//! Soak: the agent and netctl under load at the same time, for
//! `SBX_SOAK_SECS` (default 120 s; `scripts/soak.sh [minutes]` for longer).
//!
//! Agent: WebSocket and raw tunnels carrying up to 256 KiB each to an echo
//! server and closing, processes run to their end or killed, files
//! uploaded, downloaded and deleted, PTY sessions opened, written and
//! closed. netctl: policies naming domains swapped through its API (the
//! sandbox removed and put back now and then) while dnsmasq's answers for
//! those domains change every half second (SIGHUP).
//!
//! Every operation checks its result; resident memory and open file
//! descriptors of both daemons are sampled from /proc. The test fails on
//! any failed operation, on more than 10% growth from the warm-up to the
//! end, or on descriptors left open once the load stops.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sbx_tests::agent::Agent;
use sbx_tests::netctl_support::World;
use sbx_tests::netns::require_netns;
use sbx_tests::soak::agent_ops::{self, AgentTarget};
use sbx_tests::soak::netctl_ops::{self, NetctlTarget};
use sbx_tests::soak::samples::{self, Sample, Usage, Watched, MAX_GROWTH};
use sbx_tests::soak::{repeat, repeat_blocking, Plan, Tally};

/// Pause between two operations of one worker.
const PACE: Duration = Duration::from_millis(10);
const DNS_PACE: Duration = Duration::from_millis(500);
/// Time for closed connections and ended sessions to be let go.
const SETTLE: Duration = Duration::from_secs(3);

fn usage_of(watched: &[Watched]) -> Vec<Usage> {
    watched
        .iter()
        .map(|w| samples::usage(w.pid).unwrap_or_else(|e| panic!("{}: {e:#}", w.name)))
        .collect()
}

#[test]
fn agent_and_netctl_hold_steady_under_load() {
    if !require_netns() {
        return;
    }
    let plan = Plan::from_env().unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "soak: {:?}, warm-up {:?}, a sample every {:?}",
        plan.duration, plan.warm_up, plan.period
    );
    let world = World::new();
    netctl_ops::dns_change(&world.dns, 0).expect("first DNS records");
    let netctl = NetctlTarget {
        socket: world.socket(),
        netns: world.sandbox.name().to_owned(),
    };
    netctl_ops::policy_churn(&netctl, 0).expect("first policy");
    let agent = Agent::start(&[]);
    let scratch = tempfile::tempdir().expect("scratch dir");
    let watched = vec![
        Watched {
            name: "agent",
            pid: agent.process.pid(),
        },
        Watched {
            name: "netctl",
            pid: world.daemon.as_ref().expect("daemon").child.pid(),
        },
    ];
    let idle_before = usage_of(&watched);

    let tally = Tally::default();
    let taken: Mutex<Vec<Sample>> = Mutex::default();
    let started = Instant::now();
    let until = started + plan.duration;
    std::thread::scope(|s| {
        s.spawn(|| {
            repeat_blocking(&tally, "netctl policy", until, PACE, |i| {
                netctl_ops::policy_churn(&netctl, i + 1)
            })
        });
        s.spawn(|| {
            repeat_blocking(&tally, "dns change", until, DNS_PACE, |i| {
                netctl_ops::dns_change(&world.dns, i + 1)
            })
        });
        s.spawn(|| {
            while Instant::now() < until {
                let at = started.elapsed();
                match watched
                    .iter()
                    .map(|w| samples::usage(w.pid))
                    .collect::<anyhow::Result<Vec<_>>>()
                {
                    Ok(usage) => taken
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Sample { at, usage }),
                    Err(e) => tally.record("sample", Duration::ZERO, Err(e)),
                }
                std::thread::sleep(plan.period);
            }
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let echo_port = agent_ops::start_echo_server().await.expect("echo server");
            let t = AgentTarget {
                http: agent_ops::http(agent.addr, agent.bearer()),
                echo_port,
                scratch: scratch.path().to_owned(),
            };
            let t = &t;
            let tally = &tally;
            tokio::join!(
                repeat(tally, "ws tunnel", until, PACE, |i| agent_ops::ws_tunnel(
                    t, i
                )),
                repeat(tally, "ws tunnel", until, PACE, |i| {
                    agent_ops::ws_tunnel(t, i + (1 << 32))
                }),
                repeat(tally, "raw tunnel", until, PACE, |i| agent_ops::raw_tunnel(
                    t, i
                )),
                repeat(tally, "process", until, PACE, |i| agent_ops::process(t, i)),
                repeat(tally, "file", until, PACE, |i| agent_ops::file(t, i)),
                repeat(tally, "pty", until, PACE, |i| agent_ops::pty(t, i)),
            );
        });
    });
    std::thread::sleep(SETTLE);
    let idle_after = usage_of(&watched);

    let taken = taken.into_inner().unwrap_or_else(|p| p.into_inner());
    eprintln!(
        "\nsoak: samples\n{}",
        samples::table(&watched, &taken, plan.warm_up)
    );
    eprintln!("soak: operations\n{}", tally.summary());
    let growth = samples::growth(&watched, &taken, plan.warm_up);
    let mut problems = Vec::new();
    for g in &growth {
        eprintln!(
            "soak: {} {}: {} at the warm-up's end (highest), {} at the end (lowest of the last 3): {:+.1}%",
            g.daemon,
            g.figure,
            g.baseline,
            g.end,
            g.ratio() * 100.0
        );
        if g.too_much() {
            problems.push(format!(
                "{} {} grew {:+.1}% ({} -> {}), more than {:.0}%",
                g.daemon,
                g.figure,
                g.ratio() * 100.0,
                g.baseline,
                g.end,
                MAX_GROWTH * 100.0
            ));
        }
    }
    if growth.is_empty() {
        problems.push(format!("too few samples to judge: {}", taken.len()));
    }
    for ((w, before), after) in watched.iter().zip(&idle_before).zip(&idle_after) {
        eprintln!(
            "soak: {} idle: {} fds and {} KiB before the load, {} fds and {} KiB after",
            w.name, before.fds, before.rss_kib, after.fds, after.rss_kib
        );
        if after.fds > before.fds {
            problems.push(format!(
                "{} kept {} more descriptors open after the load",
                w.name,
                after.fds - before.fds
            ));
        }
    }
    let failures = tally.failures();
    if !failures.is_empty() {
        problems.push(format!(
            "{} operations failed (listed above)",
            failures.len()
        ));
    }
    assert!(problems.is_empty(), "soak failed:\n{}", problems.join("\n"));
}
