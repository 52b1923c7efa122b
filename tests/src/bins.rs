//! Locating the workspace's binaries from the integration tests.
//!
//! The tests live in their own crate, so cargo's `CARGO_BIN_EXE_*` is not
//! set for them; they look next to their own test executable
//! (`target/<profile>/deps/..`), or in `SBX_BIN_DIR` when set.

use std::path::PathBuf;

/// Path to a workspace binary such as `sbx-agent`, `sbx` or `netctl`.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SBX_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            // target/<profile>/deps/<test-binary>
            exe.parent()
                .and_then(|deps| deps.parent())
                .expect("test binary lives in target/<profile>/deps")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (cargo build --profile ci --bins), or set SBX_BIN_DIR",
        path.display()
    );
    path
}

/// Root of the source tree (for scripts and fixtures).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}
