//! sbx-host with the process runtime (the agent as a process in netctl's
//! namespace): create to healthy, the agent reached over the link,
//! suspend by freezing, delete leaving nothing, restart safety, capacity,
//! and bad requests that make nothing.

use std::time::{Duration, Instant};

use sbx_tests::host_support::{guest_sh, HostOptions, HostWorld};
use sbx_tests::netns::require_netns;
use serde_json::json;

fn world() -> Option<HostWorld> {
    require_netns().then(|| HostWorld::new(HostOptions::default()))
}

#[test]
fn create_runs_the_agent_and_delete_leaves_nothing() {
    let Some(w) = world() else { return };
    let created = w.create("p1", json!({"cpus": 1, "memory_mb": 256}));
    assert_eq!(created["state"], "running", "{created}");
    assert_eq!(created["runtime"], "process");
    assert_eq!(
        created["forwarded_auth_key"].as_str().map(str::len),
        Some(64)
    );
    // The list and show never carry the key.
    let (_, shown) = w.api().get("p1");
    assert!(shown.get("forwarded_auth_key").is_none(), "{shown}");
    let key_path = w.sandbox_dir("p1").join("forwarded-auth.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let (out, code) = guest_sh(
        &w,
        &created,
        "echo hello from $(cat /proc/self/net/dev | grep -c eth0) eth0",
    );
    assert_eq!((out.trim(), code), ("hello from 1 eth0", 0));

    let vmm = created["vmm_pid"].as_u64().unwrap() as u32;
    assert!(w.cgroup_pids("p1").contains(&vmm));
    let netns = created["netns"].as_str().unwrap().to_owned();
    assert_eq!(w.api().delete("p1"), 204);
    w.assert_gone("p1", &netns, Some(vmm));
    assert_eq!(w.api().get("p1").0, 404);
    assert_eq!(w.api().delete("p1"), 404);
}

#[test]
fn suspend_freezes_and_resume_thaws_with_processes_and_files_kept() {
    let Some(w) = world() else { return };
    let created = w.create("p2", json!({}));
    let (_, code) = guest_sh(&w, &created, "f=$(mktemp /tmp/sbx-p2.XXXXXX); echo kept > $f; echo $f > /tmp/sbx-p2-name; sleep 600 >/dev/null 2>&1 & echo $! > /tmp/sbx-p2-pid");
    assert_eq!(code, 0);
    let (s, v) = w.api().call("POST", "/v1/sandboxes/p2/suspend", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "suspended");
    // Frozen: the agent does not answer while suspended.
    let agent: std::net::SocketAddr = created["agent"].as_str().unwrap().parse().unwrap();
    let events = std::fs::read_to_string(w.cgroup.join("p2/cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    let probe =
        sbx_tests::setup_support::probe_from(&w.net.host.path(), agent, Duration::from_millis(500));
    assert!(
        !matches!(probe.0, sbx_tests::setup_support::Outcome::Ok),
        "a frozen agent answered: {probe:?}"
    );
    let (s, v) = w.api().call("POST", "/v1/sandboxes/p2/resume", None);
    assert_eq!(s, 200, "{v}");
    let (out, _) = guest_sh(&w, &created, "cat $(cat /tmp/sbx-p2-name); kill -0 $(cat /tmp/sbx-p2-pid) && echo alive; rm -f $(cat /tmp/sbx-p2-name) /tmp/sbx-p2-name; kill $(cat /tmp/sbx-p2-pid); rm -f /tmp/sbx-p2-pid");
    assert_eq!(out.trim(), "kept\nalive");
    assert_eq!(w.api().delete("p2"), 204);
}

#[test]
fn ten_concurrent_creates_and_capacity_is_never_overbooked() {
    let Some(w) = require_netns().then(|| {
        HostWorld::new(HostOptions {
            cpus: 10.0,
            ..HostOptions::default()
        })
    }) else {
        return;
    };
    let started = Instant::now();
    // Twelve asked for at once, room for ten: exactly two refused 503.
    let results: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let api = w.api();
                s.spawn(move || api.create(&format!("c{i}"), json!({"cpus": 1})))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = started.elapsed();
    let ok = results.iter().filter(|r| r.0 == 201).count();
    let full: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(ok, 10, "{results:?}");
    assert_eq!(full.len(), 2, "{results:?}");
    assert!(
        full.iter().all(|r| r.1["code"] == "NO_CAPACITY"),
        "{full:?}"
    );
    eprintln!("10 process sandboxes created concurrently in {took:?}");
    let (_, host) = w.api().call("GET", "/v1/host", None);
    assert_eq!(host["used_cpus"], 10.0, "{host}");
    // Every agent answers on its own address.
    let (_, list) = w.api().call("GET", "/v1/sandboxes", None);
    let agents: std::collections::HashSet<&str> = list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents.len(), 10);
    std::thread::scope(|s| {
        for i in 0..12 {
            let api = w.api();
            s.spawn(move || api.delete(&format!("c{i}")));
        }
    });
    let (_, host) = w.api().call("GET", "/v1/host", None);
    assert_eq!(host["sandboxes"], 0, "{host}");
}

#[test]
fn bad_requests_make_nothing() {
    let Some(w) = world() else { return };
    let before = w.net.api().call("GET", "/v1/sandboxes", None).body;
    for (body, want) in [
        (json!({"id": "../x"}), "sandbox id"),
        (
            json!({"id": "b1", "image": "nope"}),
            "image \"nope\" not found",
        ),
        (json!({"id": "b1", "image": "../etc"}), "image \"../etc\""),
        (json!({"id": "b1", "cpus": 0}), "cpus"),
        (json!({"id": "b1", "memory_mb": 1}), "memory_mb"),
        (json!({"id": "b1", "gpus": 1}), "unknown field `gpus`"),
        (
            json!({"id": "b1", "network": {"deny_out": ["10.0.0.1/8"]}}),
            "host bits",
        ),
        (
            json!({"id": "b1", "network": {"allow_out": ["nxdomain.invalid"]}}),
            "nxdomain.invalid",
        ),
        (json!({"id": "b1", "entrypoint": []}), "entrypoint"),
    ] {
        let (status, v) = w
            .api()
            .call("POST", "/v1/sandboxes", Some(&body.to_string()));
        assert_eq!(status, 400, "{body}: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(want),
            "{body}: {v}"
        );
    }
    assert_eq!(
        w.api().call("GET", "/v1/sandboxes", None).1["sandboxes"],
        json!([])
    );
    assert_eq!(w.net.api().call("GET", "/v1/sandboxes", None).body, before);
    assert!(std::fs::read_dir(w.state_dir().join("sandboxes"))
        .unwrap()
        .next()
        .is_none());
    // An id that exists is a conflict, not a second sandbox.
    w.create("b2", json!({}));
    assert_eq!(w.api().create("b2", json!({})).0, 409);
    assert_eq!(w.api().delete("b2"), 204);
}

#[test]
fn kill_9_in_steady_state_adopts_and_mid_create_leaves_nothing() {
    let Some(mut w) = world() else { return };
    let created = w.create("k1", json!({}));
    let vmm = created["vmm_pid"].as_u64().unwrap();
    w.kill();
    // The guest outlives sbx-host...
    assert!(std::path::Path::new(&format!("/proc/{vmm}")).exists());
    let (out, _) = guest_sh(&w, &created, "echo still");
    assert_eq!(out.trim(), "still");
    // ...and is adopted at start, then deleted like any other.
    w.start();
    let (_, v) = w.api().get("k1");
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["vmm_pid"].as_u64(), Some(vmm));

    // A guest that dies while sbx-host is down is found stopped.
    let (_, second) = (0, w.create("k2", json!({})));
    let vmm2 = second["vmm_pid"].as_u64().unwrap() as i32;
    w.kill();
    unsafe { libc::kill(vmm2, libc::SIGKILL) };
    w.start();
    let (_, v) = w.api().get("k2");
    assert_eq!(v["state"], "stopped", "{v}");
    assert!(!std::path::Path::new("/run/netns")
        .join(second["netns"].as_str().unwrap())
        .exists());
    assert_eq!(w.api().delete("k2"), 204);

    // Killed in the middle of a create: nothing is left after the restart.
    let api = w.api();
    let pending =
        std::thread::spawn(move || api.try_call("POST", "/v1/sandboxes", Some(r#"{"id": "k3"}"#)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w.sandbox_dir("k3").join("record.json").exists() {
        assert!(Instant::now() < deadline, "the create never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    w.kill();
    let _ = pending.join();
    w.start();
    assert_eq!(w.api().get("k3").0, 404, "{}", w.log_tail(20));
    w.assert_gone("k3", &format!("{}k3", w.net.netns_prefix), None);

    let netns = created["netns"].as_str().unwrap().to_owned();
    assert_eq!(w.api().delete("k1"), 204);
    w.assert_gone("k1", &netns, Some(vmm as u32));
}
