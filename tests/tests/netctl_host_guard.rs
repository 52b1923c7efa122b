//! netctl never puts a sandbox's rules into its own network namespace or
//! PID 1's (the host's): a 400 and nothing touched, on PUT and when a
//! saved sandbox points there at start.
//!
//! Safety of the machine: the daemon runs in test namespaces, and for the
//! PID 1 case inside a PID namespace of its own whose PID 1 is a shell in
//! another test namespace. So `/proc/1/ns/net` as netctl sees it is a test
//! namespace, and even a broken guard could only filter that.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sbx_tests::bins::bin;
use sbx_tests::netctl_support::*;
use sbx_tests::netns::{require_netns, Netns};
use sbx_tests::process::{piped, ChildGuard};

const POLICY: &str = r#"{"allow_internet_access": false}"#;

fn has_table(ns: &Netns) -> bool {
    ns.command("nft")
        .args(["list", "table", "inet", "sbx_netctl"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run nft")
        .success()
}

fn put_netns(w: &World, id: &str, netns: &str) -> Response {
    let body = format!(r#"{{"netns":"{netns}","network":{POLICY}}}"#);
    w.api()
        .call("PUT", &format!("/v1/sandboxes/{id}"), Some(&body))
}

#[test]
fn netctl_refuses_its_own_namespace() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    let pid = w.daemon.as_ref().expect("daemon").child.pid();
    let r = put_netns(&w, "evil", &format!("/proc/{pid}/ns/net"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("netctl's own network namespace"),
        "{}",
        r.body
    );
    assert!(
        !has_table(&w.host),
        "nothing was installed in netctl's namespace"
    );
    // Nothing is kept either.
    let r = w.api().call("GET", "/v1/sandboxes/evil", None);
    assert_eq!(r.status, 404, "{}", r.body);
    // A legitimate sandbox still works.
    w.put_ok("sb", POLICY);
    w.assert_refused(V4_A);
}

/// The daemon in `host`'s network namespace, in a PID namespace whose PID 1
/// is a shell in `init`'s. Killed by PID on drop (`--kill-child` takes the
/// whole PID namespace with it).
fn daemon_under_fake_init(w: &World, init: &Netns) -> Daemon {
    let state = w.dir.path().join("state");
    let serve = format!(
        "nsenter --net={host} {netctl} --socket {socket} serve --config {config} --state-dir {state} & wait",
        host = w.host.path(),
        netctl = bin("netctl").display(),
        socket = w.socket().display(),
        config = w.dir.path().join("config.toml").display(),
        state = state.display(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg("nsenter")
        .arg(format!("--net={}", init.path()))
        .args(["sh", "-c", &serve])
        .env("NETCTL_LOG", "netctl=info");
    piped(&mut cmd);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(w.dir.path().join("netctl-init.log"))
        .expect("log file");
    cmd.stderr(log);
    let mut child = ChildGuard::spawn("unshare netctl serve", &mut cmd);
    child.wait_for_stdout_line("listening", Duration::from_secs(30));
    Daemon { child }
}

#[test]
fn netctl_refuses_pid_1s_namespace_on_put_and_at_start() {
    if !require_netns() {
        return;
    }
    let mut w = World::new();
    let init = Netns::new("ncinit");
    w.daemon = None;
    w.daemon = Some(daemon_under_fake_init(&w, &init));

    let r = put_netns(&w, "evil", "/proc/1/ns/net");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("PID 1's network namespace"), "{}", r.body);
    assert!(
        !has_table(&init),
        "nothing was installed in PID 1's namespace"
    );

    // A sandbox saved while it pointed elsewhere, edited to point at PID
    // 1's namespace (a stale /proc path whose PID was reused, a bad
    // migration): refused at start, with a log line, nothing installed.
    w.put_ok("sb", "null");
    w.daemon = None;
    let saved = w.dir.path().join("state/sandboxes/sb.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&saved).expect("saved state")).expect("JSON");
    state["spec"]["netns"] = "/proc/1/ns/net".into();
    state["spec"]["network"] = serde_json::from_str(POLICY).expect("policy");
    fs::write(&saved, state.to_string()).expect("rewrite saved state");
    w.daemon = Some(daemon_under_fake_init(&w, &init));
    let view = w.api().call("GET", "/v1/sandboxes/sb", None).json();
    assert_eq!(view["applied"], false, "{view}");
    let error = view["error"].as_str().unwrap_or_default();
    assert!(error.contains("PID 1's network namespace"), "{view}");
    assert!(!has_table(&init), "nothing was installed at start");
    let log = fs::read_to_string(w.dir.path().join("netctl-init.log")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("sb") && l.contains("PID 1's network namespace")),
        "a log line names the refusal: {log}"
    );
    assert!(
        Path::new(&saved).exists(),
        "the saved state is kept for the operator"
    );
}
