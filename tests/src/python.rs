//! Python virtualenvs under `target/` with pinned PyPI packages, made on
//! first use under a file lock (test binaries and tests run in parallel).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use crate::bins::workspace_root;
use crate::proxy_support::in_ci;

/// `target/<name>/bin/python` with `packages` installed. None (skip) when it
/// cannot be made, except under `CI=true` (panic naming `who` needs it).
/// A marker file per package list makes a change of pins reinstall.
pub fn venv_python_with(name: &str, who: &str, packages: &[&str]) -> Option<PathBuf> {
    let venv = workspace_root().join("target").join(name);
    let python = venv.join("bin").join("python");
    let marker = venv.join(
        format!(".installed-{who}-{}", packages.join("+")).replace(['=', '<', '>', ' '], "_"),
    );
    if python.exists() && marker.exists() {
        return Some(python);
    }
    let _ = std::fs::create_dir_all(workspace_root().join("target"));
    let lock = std::fs::File::create(workspace_root().join(format!("target/.{name}.lock"))).ok()?;
    // SAFETY: flock on an fd we own; released when `lock` is closed.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if python.exists() && marker.exists() {
        return Some(python);
    }
    let fail = |why: String| -> Option<PathBuf> {
        assert!(!in_ci(), "{who} tests need {}: {why}", venv.display());
        eprintln!("skipping: {why}");
        None
    };
    if !python.exists() {
        match Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
        {
            Ok(s) if s.success() => {}
            other => return fail(format!("python3 -m venv: {other:?}")),
        }
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(packages)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => return fail(format!("pip install {packages:?}: {other:?}")),
    }
    let _ = std::fs::write(&marker, b"");
    Some(python)
}
