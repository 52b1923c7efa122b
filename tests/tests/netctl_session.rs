//! netctl applies a sandbox's rules through one long-lived `nft` inside
//! its namespace (no process start, no wait at exit for the kernel's grace
//! period): one per namespace, replaced if it dies, ended when the sandbox
//! goes or after `nft_session_idle_secs` unused, so it never keeps a
//! namespace alive. Real nft, real namespaces.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use sbx_tests::netctl_support::*;
use sbx_tests::netns::require_netns;

const DENY_A: &str = r#"{"deny_out": ["198.51.100.10"]}"#;
const DENY_B: &str = r#"{"deny_out": ["198.51.100.20"]}"#;

fn identity(path: &str) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// PIDs of `nft -i` sessions whose network namespace is the sandbox's.
fn sessions(w: &World) -> Vec<u32> {
    sessions_in(&w.sandbox.path())
}

/// PIDs of `nft -i` sessions in the namespace at `ns_path`.
fn sessions_in(ns_path: &str) -> Vec<u32> {
    let Some(target) = identity(ns_path) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_session =
            args.first().is_some_and(|a| a.ends_with(b"nft")) && args.iter().any(|a| *a == b"-i");
        if is_session && identity(&format!("/proc/{pid}/ns/net")) == Some(target) {
            found.push(pid);
        }
    }
    found
}

fn enforce_a(w: &World) {
    w.assert_refused(V4_A);
    w.assert_reachable(V4_B);
}

fn enforce_b(w: &World) {
    w.assert_refused(V4_B);
    w.assert_reachable(V4_A);
}

#[test]
fn one_session_per_namespace_serves_every_change_and_ends_with_the_sandbox() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", DENY_A);
    enforce_a(&w);
    let first = sessions(&w);
    assert_eq!(
        first.len(),
        1,
        "one nft session in the namespace: {first:?}"
    );
    for _ in 0..5 {
        w.put_ok("sb", DENY_B);
        w.put_ok("sb", DENY_A);
    }
    w.put_ok("sb", DENY_B);
    enforce_b(&w);
    assert_eq!(sessions(&w), first, "the same session served every change");
    // Closed by DELETE: it no longer holds the namespace moments later.
    let r = w.api().call("DELETE", "/v1/sandboxes/sb", None);
    assert_eq!(r.status, 204, "{}", r.body);
    w.wait_for(Duration::from_secs(2), || sessions(&w).is_empty())
        .expect("the session ends with its sandbox");
    assert!(w.nft_table().is_none(), "our table left with the sandbox");
}

#[test]
fn a_session_that_dies_is_replaced_without_failing_a_change() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", DENY_A);
    let before = sessions(&w);
    assert_eq!(before.len(), 1, "{before:?}");
    // The nft netctl started in our test namespace, by its PID.
    let pid = before[0];
    // SAFETY: kill(2) touches no memory of ours; the PID was just read
    // and checked to be an nft inside this test's namespace.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill nft {pid}");
    w.wait_for(Duration::from_secs(2), || !sessions(&w).contains(&pid))
        .expect("the killed session is gone");
    // The next change finds the session broken, reads the kernel and
    // rebuilds through a new one: the caller sees a plain success.
    w.put_ok("sb", DENY_B);
    enforce_b(&w);
    let after = sessions(&w);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before);
    let view = w.api().call("GET", "/v1/sandboxes/sb", None).json();
    assert!(view["error"].is_null(), "{view}");
}

#[test]
fn an_idle_session_ends_and_the_next_change_starts_one() {
    if !require_netns() {
        return;
    }
    let w = World::with(WorldOptions {
        extra_config: "nft_session_idle_secs = 1".into(),
        ..WorldOptions::default()
    });
    w.put_ok("sb", DENY_A);
    assert_eq!(sessions(&w).len(), 1);
    w.wait_for(Duration::from_secs(5), || sessions(&w).is_empty())
        .expect("an idle session ends within a few seconds");
    enforce_a(&w);
    w.put_ok("sb", DENY_B);
    enforce_b(&w);
}

#[test]
fn without_sessions_every_change_runs_its_own_nft() {
    if !require_netns() {
        return;
    }
    let w = World::with(WorldOptions {
        extra_config: "nft_session_idle_secs = 0".into(),
        ..WorldOptions::default()
    });
    w.put_ok("sb", DENY_A);
    enforce_a(&w);
    w.put_ok("sb", DENY_B);
    enforce_b(&w);
    assert!(sessions(&w).is_empty());
}

#[test]
fn beyond_the_limit_the_least_recently_used_session_is_closed() {
    if !require_netns() {
        return;
    }
    let w = World::with(WorldOptions {
        extra_config: "nft_sessions_max = 1".into(),
        ..WorldOptions::default()
    });
    let other = sbx_tests::netns::Netns::new("ncq");
    w.put_ok("sb", DENY_A);
    assert_eq!(sessions(&w).len(), 1);
    let body = format!(r#"{{"netns":"{}","network":{DENY_B}}}"#, other.name());
    let r = w.api().call("PUT", "/v1/sandboxes/sb2", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(sessions_in(&other.path()).len(), 1);
    w.wait_for(Duration::from_secs(2), || sessions(&w).is_empty())
        .expect("the older session is closed");
    // Its sandbox is still served: the next change starts a session again.
    enforce_a(&w);
    w.put_ok("sb", DENY_B);
    enforce_b(&w);
    let r = w.api().call("DELETE", "/v1/sandboxes/sb2", None);
    assert_eq!(r.status, 204, "{}", r.body);
}
