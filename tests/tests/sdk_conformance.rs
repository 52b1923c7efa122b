//! The public Tensorlake SDK (`pip install tensorlake`) against a real agent:
//! processes, output streaming, stdin, signals, files, the TCP tunnel helper
//! and a PTY, all through the SDK's own client code.
//!
//! The SDK is installed into `target/sdk-venv` on first use. Without
//! python3/venv/network the test is skipped, except under `CI=true`, where
//! missing prerequisites are a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sbx_tests::agent::Agent;
use sbx_tests::bins::workspace_root;

/// The SDK release this agent was checked against; override with
/// `SBX_TENSORLAKE_SPEC` (e.g. `tensorlake` for the newest).
const DEFAULT_SDK_SPEC: &str = "tensorlake==0.5.163";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn unavailable(why: &str) -> Option<PathBuf> {
    if in_ci() {
        panic!("SDK conformance prerequisites missing under CI=true: {why}");
    }
    eprintln!("skipping SDK conformance: {why}");
    None
}

/// Returns the venv's python with `tensorlake` installed, creating it if needed.
fn sdk_python() -> Option<PathBuf> {
    let venv = workspace_root().join("target").join("sdk-venv");
    let python = venv.join("bin").join("python");
    let spec = std::env::var("SBX_TENSORLAKE_SPEC").unwrap_or_else(|_| DEFAULT_SDK_SPEC.into());
    let marker = venv.join(format!(
        ".installed-{}",
        spec.replace(['=', '<', '>', ' '], "_")
    ));
    if python.exists() && marker.exists() {
        return Some(python);
    }
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => return unavailable(&format!("python3 -m venv failed: {s}")),
            Err(e) => return unavailable(&format!("cannot run python3: {e}")),
        }
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &spec,
        ])
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return unavailable(&format!("pip install {spec} failed: {s}")),
        Err(e) => return unavailable(&format!("cannot run pip: {e}")),
    }
    let _ = std::fs::write(&marker, b"");
    Some(python)
}

fn script() -> PathBuf {
    workspace_root().join("tests/py/sdk_conformance.py")
}

fn run_checks(python: &Path, agent: &Agent, scratch: &Path) {
    let mut child = Command::new(python)
        .arg(script())
        .arg(agent.url())
        .arg(&agent.secrets.sandbox_id)
        .arg(&agent.secrets.token)
        .arg(scratch)
        .spawn()
        .expect("spawn SDK script");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = child.try_wait().expect("wait SDK script") {
            assert!(status.success(), "SDK conformance script failed: {status}");
            return;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("SDK conformance script timed out");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tensorlake_sdk_drives_the_agent() {
    let Some(python) = sdk_python() else {
        return;
    };
    let agent = Agent::start(&[]);
    let scratch = tempfile::tempdir().expect("tempdir");
    run_checks(&python, &agent, scratch.path());
}
