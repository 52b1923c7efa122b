//! Suspended sandboxes (SPEC 6): with `auto_resume`, the first request that
//! passes the access decision makes one call to the control plane's
//! lifecycle hook however many requests wait, and they all go on once the
//! sandbox runs; without a resume in time, 503 SANDBOX_NOT_RUNNING with
//! Retry-After. The control plane is a small fake (tests/py/proxy_hook.py)
//! that marks the sandbox running through the admin socket.

use std::time::{Duration, Instant};

use sbx_tests::agent::READY_TIMEOUT;
use sbx_tests::process::{piped, ChildGuard};
use sbx_tests::proxy_support::{py_script, ProxyWorld, WorldOptions};
use serde_json::{json, Value};

const HOOK_PORT: u16 = 18080;

fn world(deadline_secs: u64) -> Option<ProxyWorld> {
    let opts = WorldOptions {
        extra_config: vec![
            "\n[lifecycle]".into(),
            format!("hook_url = \"http://127.0.0.1:{HOOK_PORT}/hook\""),
            format!("resume_deadline_secs = {deadline_secs}"),
        ],
        ..WorldOptions::default()
    };
    let mut w = ProxyWorld::with(opts)?;
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "echo", 8080);
    w.patch_ok(
        "sbx-alpha",
        json!({"exposed_ports": [8080], "status": "suspended", "auto_resume": true}),
    );
    Some(w)
}

/// The fake control plane in the host namespace, in `mode` (see the script).
fn hook(w: &ProxyWorld, mode: &str) -> ChildGuard {
    let mut cmd = w.host_cmd(w.python.to_str().expect("utf-8"));
    cmd.arg(py_script("proxy_hook.py"))
        .arg(HOOK_PORT.to_string())
        .arg(w.admin_socket())
        .arg(mode);
    let mut guard = ChildGuard::spawn("lifecycle hook", piped(&mut cmd));
    guard.wait_for_stdout_line("ready", READY_TIMEOUT);
    guard
}

fn hook_calls(w: &ProxyWorld) -> Vec<Value> {
    let r = w.curl(&[&format!("http://127.0.0.1:{HOOK_PORT}/calls")]);
    r.assert_status(200);
    r.json()["calls"].as_array().cloned().unwrap_or_default()
}

#[test]
fn auto_resume_wakes_a_suspended_sandbox_with_one_call() {
    let Some(w) = world(15) else { return };
    let _hook = hook(&w, "1500");
    // The access decision comes first: no credential, or another project's,
    // wakes nothing.
    w.get("8080-web.sbx.test", "/", &[])
        .assert_error(401, "UNAUTHORIZED");
    let other = format!("Authorization: Bearer {}", w.creds.other_api_key);
    w.get("8080-web.sbx.test", "/", &[&other])
        .assert_error(404, "SANDBOX_NOT_FOUND");
    assert!(hook_calls(&w).is_empty(), "{:?}", hook_calls(&w));

    // Twelve requests at once, to a user port and to the agent: all wait
    // for the same resume and all succeed.
    let key = w.bearer();
    let port_url = w.https("8080-web.sbx.test", "/woken");
    let agent_url = w.https("web.sbx.test", "/api/v1/health");
    let mut args = vec!["-Z", "--parallel-max", "12", "-H", &key];
    for i in 0..12 {
        args.extend([
            "-o",
            "/dev/null",
            if i % 3 == 0 { &agent_url } else { &port_url },
        ]);
    }
    let started = Instant::now();
    let r = w.curl(&args);
    let took = started.elapsed();
    assert_eq!(r.transfers.len(), 12, "{r:?}");
    let codes: Vec<u64> = r
        .transfers
        .iter()
        .map(|t| t["http_code"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        codes.iter().all(|c| *c == 200),
        "after the resume: {codes:?}"
    );
    assert!(
        took >= Duration::from_millis(1200) && took < Duration::from_secs(10),
        "the requests did not wait for the resume: {took:?}"
    );
    let calls = hook_calls(&w);
    assert_eq!(
        calls,
        [json!({"sandbox_id": "sbx-alpha", "action": "resume"})],
        "one hook call for every waiting request"
    );
    let entry = w.admin("GET", "/v1/sandboxes/sbx-alpha", None).json();
    assert_eq!(entry["status"], "running");
    // Running now: no more calls.
    w.get("8080-web.sbx.test", "/", &[&key]).echo();
    assert_eq!(hook_calls(&w).len(), 1);
}

#[test]
fn no_resume_in_time_is_503_with_retry_after() {
    let Some(w) = world(2) else { return };
    let key = w.bearer();
    {
        let _hook = hook(&w, "never");
        let started = Instant::now();
        let r = w.get("8080-web.sbx.test", "/", &[&key]);
        r.assert_error(503, "SANDBOX_NOT_RUNNING");
        assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
            "503 after {took:?}, the deadline is 2 s"
        );
        assert_eq!(hook_calls(&w).len(), 1);
    }
    {
        // The control plane refuses: 503 without waiting for the deadline.
        let _hook = hook(&w, "fail");
        let started = Instant::now();
        let r = w.get("8080-web.sbx.test", "/", &[&key]);
        r.assert_error(503, "SANDBOX_NOT_RUNNING");
        assert!(
            started.elapsed() < Duration::from_millis(1800),
            "{:?}",
            started.elapsed()
        );
    }
    // Suspended without auto_resume: 503 at once, no call.
    let _hook = hook(&w, "never");
    w.patch_ok("sbx-alpha", json!({"auto_resume": false}));
    let started = Instant::now();
    w.get("8080-web.sbx.test", "/", &[&key])
        .assert_error(503, "SANDBOX_NOT_RUNNING");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(hook_calls(&w).is_empty());
}
