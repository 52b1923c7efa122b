//! Policy changes are atomic: while 500 updates are applied back to back,
//! a prober in the sandbox never gets through to a destination every one of
//! those policies refuses, and never loses one every policy allows.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sbx_tests::netctl_support::*;
use sbx_tests::netns::require_netns;

const UPDATES: usize = 500;

#[test]
fn no_denied_connection_succeeds_during_500_updates() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", &format!(r#"{{"deny_out": ["{V4_B}", "{V6_B}"]}}"#));
    let stop = Arc::new(AtomicBool::new(false));
    let leaks = Arc::new(AtomicUsize::new(0));
    let losses = Arc::new(AtomicUsize::new(0));
    let probes = Arc::new(AtomicUsize::new(0));
    // Which update was being applied, so a failure names the transition.
    let current = Arc::new(AtomicUsize::new(0));
    let mut probers = Vec::new();
    for (target, must_pass) in [(V4_B, false), (V6_B, false), (V4_A, true)] {
        let (stop, leaks, losses, probes, current) = (
            stop.clone(),
            leaks.clone(),
            losses.clone(),
            probes.clone(),
            current.clone(),
        );
        let ns = w.sandbox.path();
        let addr = std::net::SocketAddr::new(target.parse().unwrap(), PORT);
        probers.push(std::thread::spawn(move || {
            in_netns(&ns, move || {
                while !stop.load(Ordering::Relaxed) {
                    let (outcome, _) = probe_tcp(addr, Duration::from_secs(2));
                    probes.fetch_add(1, Ordering::Relaxed);
                    match (must_pass, outcome.is_ok()) {
                        (false, true) => {
                            let i = current.load(Ordering::Relaxed);
                            eprintln!("{addr}: got through during update {i}");
                            leaks.fetch_add(1, Ordering::Relaxed);
                        }
                        (true, false) => {
                            let i = current.load(Ordering::Relaxed);
                            eprintln!("{addr}: lost during update {i}: {outcome:?}");
                            losses.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            })
        }));
    }
    for i in 0..UPDATES {
        // Every variant refuses V4_B and V6_B and allows V4_A, by different
        // routes: deny lists, CIDRs, an allowlist, a varying filler set.
        let filler = format!("203.0.113.{}/32", i % 200);
        let policy = match i % 4 {
            0 => format!(r#"{{"deny_out": ["{V4_B}", "{V6_B}", "{filler}"]}}"#),
            1 => format!(
                r#"{{"deny_out": ["198.51.100.16/28", "2001:db8:2::/112"], "allow_out": ["{V4_A}"]}}"#
            ),
            2 => format!(
                r#"{{"allow_internet_access": false, "allow_out": ["{V4_A}", "{filler}"]}}"#
            ),
            _ => format!(
                r#"{{"allow_internet_access": false, "allow_out": ["198.51.100.0/28", "{V6_A}"], "deny_out": ["{V4_B}"]}}"#
            ),
        };
        current.store(i, Ordering::Relaxed);
        w.put_ok("sb", &policy);
    }
    stop.store(true, Ordering::Relaxed);
    for p in probers {
        p.join().expect("prober");
    }
    let probes = probes.load(Ordering::Relaxed);
    assert!(probes > 100, "only {probes} probes ran");
    assert_eq!(
        leaks.load(Ordering::Relaxed),
        0,
        "denied connections got through"
    );
    assert_eq!(
        losses.load(Ordering::Relaxed),
        0,
        "allowed connections were lost"
    );
}
