//! Schemathesis (PyPI, pinned, in `target/schemathesis-venv`) against a real
//! agent's `/api/v1/openapi.json`, authenticated as the sandbox proxy would
//! be (`X-Sandbox-Forwarded-Auth`): every operation (health, info, files,
//! processes, output streams, PTY, the tunnels' HTTP refusals) gets
//! generated valid and invalid requests, and every response must be no 5xx,
//! of a documented status, content type and headers, with a body matching
//! its schema; invalid input must be refused, valid input accepted, auth
//! enforced. Fixed seed (printed), bounded examples and per-request timeout.
//!
//! Random input must not harm this machine, so three fences:
//! * the agent runs as `nobody` in a network namespace of its own (loopback
//!   only), and so does schemathesis;
//! * `tests/py/schemathesis_hooks.py` moves every absolute `path` under a
//!   scratch directory and makes every process or PTY command `/bin/true`;
//! * nothing else the API does reaches beyond what `nobody` may touch.
//!
//! Checks: all but `use_after_free`, which expects a DELETE to make the
//! resource vanish; DELETE of a running process kills it and keeps its
//! record so its exit can be read (the Tensorlake SDK reads it after
//! `kill_process`), as the operation's 204 says. Per-operation settings are
//! in `tests/py/schemathesis.toml`.
//!
//! Without python3/venv/PyPI the test is skipped, except under `CI=true`.
//! Costs about 20-40 s (2 shared cores), plus the venv once (~10 s).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sbx_tests::agent::Agent;
use sbx_tests::bins::workspace_root;
use sbx_tests::netns::{require_netns, Netns};
use sbx_tests::proxy_support::output_within;
use sbx_tests::python::venv_python_with;

/// The pinned release (also installed by scripts/install-deps.sh).
const REQUIREMENTS: &str = include_str!("../py/schemathesis-requirements.txt");
/// `nobody` on Debian.
const NOBODY: u32 = 65534;
/// Same seed, same requests: a failure here reproduces with it.
const SEED: u64 = 20_261_203;
/// Test cases per operation and phase.
const MAX_EXAMPLES: u32 = 40;
/// Longest one request may take; nothing the agent does should come close.
const REQUEST_TIMEOUT_SECS: u32 = 10;
/// The whole run, generously: it takes about 20 s here.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn the_agent_answers_as_its_openapi_document_says() {
    if !require_netns() {
        return;
    }
    let pins: Vec<&str> = REQUIREMENTS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let Some(python) = venv_python_with("schemathesis-venv", "schemathesis", &pins) else {
        return;
    };
    let schemathesis = python.with_file_name("schemathesis");

    let ns = Netns::new("sbxst");
    // The scratch directory is the only place `nobody` may write besides
    // the world-writable ones; its parent must be passable.
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod work dir");
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).expect("scratch");
    std::os::unix::fs::chown(&scratch, Some(NOBODY), Some(NOBODY)).expect("chown scratch");

    let mut agent = Agent::start_as(&ns, NOBODY, NOBODY, "127.0.0.1:0", &[]);
    let token = agent.secrets.forwarded_token(
        &agent.secrets.sandbox_id,
        RUN_TIMEOUT.as_secs() as i64 + 300,
    );
    let py = |name: &str| workspace_root().join("tests").join("py").join(name);
    let setpriv_ids = [format!("--reuid={NOBODY}"), format!("--regid={NOBODY}")];

    println!("schemathesis seed {SEED}, {MAX_EXAMPLES} examples per operation and phase");
    let mut cmd = ns.command("setpriv");
    cmd.args(&setpriv_ids)
        .args(["--clear-groups", "--"])
        .arg(&schemathesis)
        .arg("--config-file")
        .arg(py("schemathesis.toml"))
        .arg("--no-color")
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", agent.url()))
        .args(["--header", &format!("X-Sandbox-Forwarded-Auth: {token}")])
        .args(["--checks", "all", "--exclude-checks", "use_after_free"])
        .args(["--seed", &SEED.to_string()])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--request-timeout", &REQUEST_TIMEOUT_SECS.to_string()])
        .args(["--workers", "1"])
        .current_dir(work.path())
        .env("SBX_SCRATCH", &scratch)
        .env("SCHEMATHESIS_HOOKS", py("schemathesis_hooks.py"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let started = std::time::Instant::now();
    let out = output_within(&mut cmd, RUN_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The summary (and, on failure, every finding with a curl to replay it).
    let from = stdout.find("SUMMARY").map_or(0, |i| i.saturating_sub(4000));
    println!("{}", &stdout[from..]);
    println!("schemathesis took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis found problems (seed {SEED}):\n{stdout}\n{stderr}"
    );
    // Every operation in the document was exercised, none filtered away.
    let (selected, tested) = operation_counts(&stdout);
    assert!(
        selected > 0 && tested == selected,
        "tested {tested} of {selected} operations:\n{stdout}"
    );

    // The agent lived through it.
    assert!(
        agent
            .process
            .child_mut()
            .try_wait()
            .expect("try_wait")
            .is_none(),
        "the agent died"
    );
    let health = ns.sh(&format!("curl -sf {}/api/v1/health", agent.url()));
    assert!(String::from_utf8_lossy(&health.stdout).contains("true"));
}

/// `Selected: N/M` and `Tested: T` from the summary: (M, T).
fn operation_counts(summary: &str) -> (u32, u32) {
    let value = |key: &str| {
        summary
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key:?} in the summary:\n{summary}"))
    };
    let selected = value("Selected:")
        .rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("Selected: N/M");
    let tested = value("Tested:").parse().expect("Tested: N");
    (selected, tested)
}
