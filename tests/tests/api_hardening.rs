//! What the agent guarantees when things go wrong, against a real agent:
//! a process killed by the kernel's OOM killer is reported as such (and a
//! plain `kill -9` is not), a write to a stdin nobody reads is bounded in
//! time and says how much got through, and an upload is on disk (file and
//! directory fsynced, seen with strace) before it is acknowledged.

mod api_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api_support::Client;
use sbx_tests::agent::Agent;
use sbx_tests::process::ChildGuard;
use sbx_tests::proxy_support::in_ci;
use serde_json::json;

/// The agent's stall bound for stdin writes (`STDIN_STALL_TIMEOUT`).
const STDIN_STALL: Duration = Duration::from_secs(5);
/// The per-process memory limit the OOM test gives the agent.
const MEMORY_MAX: u64 = 32 << 20;

fn client(agent: &Agent) -> Client {
    Client::new(agent.addr, agent.bearer())
}

// ------------------------------------------------------------------ OOM

/// The memory cgroup directory `pid` is in: a v1 memory hierarchy at
/// `/sys/fs/cgroup/memory`, else cgroup v2 at `/sys/fs/cgroup` (the agent's
/// own leaf `sbx-agent` stripped: it makes its children beside it).
fn memory_cgroup_of(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Some(Path::new("/sys/fs/cgroup/memory").join(path));
        }
        if id == "0" && controllers.is_empty() {
            let path = path.strip_suffix("sbx-agent").unwrap_or(path);
            v2 = Some(Path::new("/sys/fs/cgroup").join(path));
        }
    }
    v2
}

/// Whether an agent started by this test can give its processes memory
/// cgroups: a v1 memory hierarchy where this process may make a cgroup, or
/// cgroup v2 at the root cgroup with the memory controller. (In a non-root
/// v2 cgroup shared with this test process the agent cannot enable the
/// controller, and says so.) Skips, or fails under `CI=true`, otherwise.
fn require_memory_cgroups() -> bool {
    let me = std::process::id();
    let usable = match memory_cgroup_of(me) {
        Some(dir) if dir.starts_with("/sys/fs/cgroup/memory") => {
            let probe = dir.join(format!("sbx-test-probe-{me}"));
            let made = std::fs::create_dir(&probe).is_ok();
            let _ = std::fs::remove_dir(&probe);
            made
        }
        Some(dir) => {
            dir == Path::new("/sys/fs/cgroup")
                && std::fs::read_to_string(dir.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        }
        None => false,
    };
    if !usable {
        assert!(
            !in_ci(),
            "CI=true but no memory cgroup can be made here (need root and a v1 memory hierarchy or the v2 root cgroup)"
        );
        eprintln!("skipping: no memory cgroup can be made here");
    }
    usable
}

fn leftover_cgroups(agent: &Agent) -> Vec<String> {
    let pid = agent.process.pid();
    let Some(dir) = memory_cgroup_of(pid) else {
        return Vec::new();
    };
    let prefix = format!("sbx-proc-{pid}-");
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_oom_kill_is_reported_and_a_plain_kill_9_is_not() {
    if !require_memory_cgroups() {
        return;
    }
    let agent = Agent::start(&["--process-memory-max-bytes", &MEMORY_MAX.to_string()]);
    let c = client(&agent);

    // dd's buffer is filled by read(2) from /dev/zero: 256 MiB touched, far
    // past the limit, so the OOM killer ends it.
    let hog =
        json!({"command": "dd", "args": ["if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]});
    let pid = c.start(hog.clone());
    let info = c.wait_exit(pid);
    assert_eq!(info["status"], "signaled", "{info}");
    assert_eq!(info["signal"], 9, "{info}");
    assert_eq!(info["oom_killed"], true, "{info}");
    assert_eq!(info["exit_code"], json!(null));

    // The same through `run`: the last frame says why.
    let events = c.post_json("/api/v1/processes/run", &hog).events();
    let (name, exit) = events.last().expect("frames");
    assert_eq!(name, "exit");
    assert_eq!(exit["signal"], 9, "{exit}");
    assert_eq!(exit["oom_killed"], true, "{exit}");
    assert_eq!(exit["reason"], "oom_killed", "{exit}");

    // Something it started being OOM-killed counts too: the shell survives
    // and reports dd's fate in its exit code.
    let pid = c.start(json!({"command": "sh", "args": ["-c", "dd if=/dev/zero of=/dev/null bs=256M count=1; exit 3"]}));
    let info = c.wait_exit(pid);
    assert_eq!(info["exit_code"], 3, "{info}");
    assert_eq!(info["oom_killed"], true, "{info}");

    // Under the limit: an ordinary exit.
    let pid = c.start(
        json!({"command": "dd", "args": ["if=/dev/zero", "of=/dev/null", "bs=1M", "count=4"]}),
    );
    let info = c.wait_exit(pid);
    assert_eq!(info["exit_code"], 0, "{info}");
    assert_eq!(info["oom_killed"], false, "{info}");

    // SIGKILL from the API, and from the process itself: not an OOM kill.
    let pid = c.start(json!({"command": "sleep", "args": ["1000"]}));
    let r = c.post_json(
        &format!("/api/v1/processes/{pid}/signal"),
        &json!({"signal": 9}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let info = c.wait_exit(pid);
    assert_eq!(info["signal"], 9, "{info}");
    assert_eq!(info["oom_killed"], false, "{info}");
    let events = c
        .post_json(
            "/api/v1/processes/run",
            &json!({"command": "sh", "args": ["-c", "kill -9 $$"]}),
        )
        .events();
    let (_, exit) = events.last().expect("frames");
    assert_eq!(exit["signal"], 9, "{exit}");
    assert_eq!(exit["oom_killed"], false, "{exit}");
    assert_eq!(exit["reason"], "signaled", "{exit}");

    // Every process's cgroup is gone once it ended.
    assert_eq!(leftover_cgroups(&agent), Vec::<String>::new());
}

// ------------------------------------------------------------------ stdin

fn accepted(r: &api_support::Response) -> u64 {
    r.header("x-stdin-accepted-bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no x-stdin-accepted-bytes header: {r:?}"))
}

#[test]
fn a_stdin_nobody_reads_blocks_a_write_for_seconds_not_forever() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let pid = c.start(json!({"command": "sleep", "args": ["1000"], "stdin_mode": "pipe"}));
    let path = format!("/api/v1/processes/{pid}/stdin");
    let big = vec![b'x'; 4 << 20];

    let started = Instant::now();
    let r = c.request("POST", &path, &[], &big);
    let took = started.elapsed();
    r.assert_error(409, "STDIN_BLOCKED");
    assert!(
        took >= STDIN_STALL - Duration::from_millis(500) && took < STDIN_STALL * 4,
        "answered after {took:?}"
    );
    // The pipe took what fits (64 KiB on Linux), and the answer says so.
    let first = accepted(&r);
    assert!(first > 0 && first <= 1 << 20, "accepted {first}");
    let message = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        message.contains(&format!("{first} bytes of this request were written"))
            && message.contains(&format!(
                "the other {} bytes were not",
                big.len() as u64 - first
            )),
        "{message}"
    );

    // Still running, stdin still open; the next write finds the pipe full.
    let info = c.get(&format!("/api/v1/processes/{pid}")).json();
    assert_eq!(info["status"], "running");
    assert_eq!(info["stdin_writable"], true);
    let r = c.request("POST", &path, &[], b"more");
    r.assert_error(409, "STDIN_BLOCKED");
    assert_eq!(accepted(&r), 0);

    // Other requests never waited on it.
    let started = Instant::now();
    assert_eq!(c.get("/api/v1/processes").status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(c.delete(&format!("/api/v1/processes/{pid}")).status, 204);
}

#[test]
fn bytes_refused_by_a_blocked_stdin_can_be_sent_again_and_none_are_lost() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let scratch = tempfile::tempdir().unwrap();
    let go = scratch.path().join("go");
    // Reads nothing until told to, then counts every byte.
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; exec wc -c",
        go.display()
    );
    let pid = c.start(json!({"command": "sh", "args": ["-c", script], "stdin_mode": "pipe"}));
    let path = format!("/api/v1/processes/{pid}/stdin");
    let total = 1usize << 20;
    let body: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();

    let r = c.request("POST", &path, &[], &body);
    r.assert_error(409, "STDIN_BLOCKED");
    let sent = accepted(&r) as usize;
    assert!(sent > 0 && sent < total, "accepted {sent}");

    std::fs::write(&go, b"").unwrap();
    let r = c.request("POST", &path, &[], &body[sent..]);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(accepted(&r) as usize, total - sent);
    assert_eq!(
        c.request("POST", &format!("{path}/close"), &[], b"").status,
        204
    );
    c.wait_exit(pid);
    let out = c.get(&format!("/api/v1/processes/{pid}/stdout")).json();
    assert_eq!(out["lines"], json!([total.to_string()]), "{out}");
}

// ------------------------------------------------------------------ files

/// `/api/v1/files?path=<p>`, percent-encoded.
fn files(p: &Path) -> String {
    let encoded: String = p
        .to_string_lossy()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/api/v1/files?path={encoded}")
}

/// The system calls strace saw, one per line (`-y`: descriptors with paths).
fn traced(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_upload_is_fsynced_file_then_directory_before_the_answer() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("new-dir").join("data.bin");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();

    // What a user sees: the content, no temporary file, bad paths refused.
    let r = c.request("PUT", &files(&target), &[], &body);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(std::fs::read(&target).unwrap(), body);
    let names: Vec<_> = std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["data.bin"]);
    c.request("PUT", "/api/v1/files?path=relative/x", &[], b"x")
        .assert_error(400, "BAD_REQUEST");
    c.request("PUT", &files(&scratch.path().join("a/../b")), &[], b"x")
        .assert_error(403, "PATH_TRAVERSAL");
    c.request("PUT", &files(scratch.path()), &[], b"x")
        .assert_error(400, "IS_DIRECTORY");

    // What only the kernel sees: fsync(file), rename, fsync(directory).
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(
            !in_ci(),
            "CI=true but strace is missing (scripts/install-deps.sh)"
        );
        eprintln!("skipping the strace part: strace is missing");
        return;
    }
    let log = scratch.path().join("strace.log");
    let mut strace = ChildGuard::spawn(
        "strace",
        Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-y",
                "-e",
                "trace=fsync,fdatasync,rename,renameat,renameat2",
            ])
            .arg("-o")
            .arg(&log)
            .args(["-p", &agent.process.pid().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // Attaching to every thread takes a moment: upload until a rename
    // shows up, then trace one more upload from its first system call.
    let warmup = scratch.path().join("warmup.bin");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.request("PUT", &files(&warmup), &[], &body);
        assert_eq!(r.status, 204, "{}", r.text());
        if traced(&log).iter().any(|l| l.contains("rename")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "strace saw no rename: {:?}",
            traced(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let target = scratch.path().join("traced.bin");
    let shown = target.to_string_lossy().into_owned();
    let r = c.request("PUT", &files(&target), &[], &body);
    assert_eq!(r.status, 204, "{}", r.text());
    strace.signal(libc::SIGTERM);
    strace.wait_timeout(Duration::from_secs(10));
    let lines = traced(&log);
    let rename = lines
        .iter()
        .rposition(|l| l.contains("rename") && l.contains(&format!("\"{shown}\"")))
        .expect("rename");
    let tmp_name = lines[rename]
        .split('"')
        .nth(1)
        .expect("rename's first path")
        .to_owned();
    assert!(
        tmp_name.contains(".traced.bin.sbx-upload-"),
        "{}",
        lines[rename]
    );
    let file_synced = lines[..rename]
        .iter()
        .any(|l| l.contains("fsync(") && l.contains(&format!("<{tmp_name}>")));
    let dir = scratch.path().to_string_lossy().into_owned();
    let dir_synced = lines[rename..]
        .iter()
        .any(|l| l.contains("fsync(") && l.contains(&format!("<{dir}>")));
    assert!(
        file_synced && dir_synced,
        "expected fsync of {tmp_name}, the rename, then fsync of {dir}:\n{}",
        lines.join("\n")
    );
}
