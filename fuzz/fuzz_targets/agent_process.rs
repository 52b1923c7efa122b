//! The agent's process and PTY request bodies (`POST /processes`,
//! `/processes/run`, `/pty`), checked as the routes check them before
//! anything is spawned.
//!
//! Properties: an accepted body has a non-empty command and no NUL in the
//! command, arguments or environment; environment names are non-empty
//! without '='; item counts are bounded; a timeout is finite, positive and
//! at most a day; a PTY spec always sets TERM. A body that parses survives
//! a serialize/parse round trip (what `sbx` sends is what the agent reads).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sbx_agent::fuzzing::{create_process, create_pty, CommandSpec};
use sbx_proto::api::{CreateProcess, CreatePty};

const MAX_ITEMS: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<CreateProcess>(data) {
        assert!(is_object(data));
        let json = serde_json::to_vec(&body).expect("serializes");
        let again: CreateProcess = serde_json::from_slice(&json).expect("re-parses");
        assert_eq!(
            again,
            body,
            "round trip through {}",
            String::from_utf8_lossy(&json)
        );
    }
    if let Ok(body) = serde_json::from_slice::<CreatePty>(data) {
        assert!(is_object(data));
        let json = serde_json::to_vec(&body).expect("serializes");
        let again: CreatePty = serde_json::from_slice(&json).expect("re-parses");
        assert_eq!(again, body);
    }
    if let Ok(checked) = create_process(data) {
        check_spec(&checked.spec);
        // A positive timeout under a nanosecond rounds to zero: harmless.
        if let Some(t) = checked.timeout {
            assert!(t <= Duration::from_secs(86_400), "{t:?}");
        }
    }
    if let Ok(spec) = create_pty(data) {
        check_spec(&spec);
        assert!(
            spec.env.iter().any(|(k, _)| k == "TERM"),
            "TERM is always set"
        );
        assert!(spec.user.is_none());
    }
});

fn check_spec(spec: &CommandSpec) {
    assert!(!spec.command.is_empty());
    assert!(!spec.command.contains('\0'));
    assert!(spec.args.len() <= MAX_ITEMS);
    assert!(spec.args.iter().all(|a| !a.contains('\0')));
    assert!(spec.env.len() <= MAX_ITEMS + 1);
    for (key, value) in &spec.env {
        assert!(!key.is_empty() && !key.contains(['=', '\0']), "{key:?}");
        assert!(!value.contains('\0'));
    }
    if let Some(dir) = &spec.working_dir {
        assert!(dir.is_dir(), "{dir:?}");
    }
}

/// serde's derive would also take an array of the fields; bodies are
/// objects only (proto/src/json.rs).
fn is_object(data: &[u8]) -> bool {
    data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}
