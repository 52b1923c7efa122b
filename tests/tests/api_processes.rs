//! `/processes` against a real agent: lifecycle, output, SSE streams, stdin,
//! signals, every error code, limits and abuse (1 GiB of output, a 10,000
//! request burst, clients that vanish mid-stream).

mod api_support;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use api_support::{parse_sse, read_head, Client};
use sbx_tests::agent::Agent;
use serde_json::json;

fn client(agent: &Agent) -> Client {
    Client::new(agent.addr, agent.bearer())
}

#[test]
fn run_streams_started_output_and_exit() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let r = c.request(
        "POST",
        "/api/v1/processes/run",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "text/event-stream"),
        ],
        json!({"command": "sh", "args": ["-c", "echo one; echo two >&2; echo three; exit 3"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let events = r.events();
    assert_eq!(events[0].0, "started");
    assert!(events[0].1["pid"].as_u64().unwrap() > 0);
    assert!(events[0].1["started_at"].as_u64().unwrap() > 1_600_000_000_000);
    let outputs: Vec<_> = events
        .iter()
        .filter(|(e, _)| e == "output")
        .map(|(_, d)| {
            (
                d["line"].as_str().unwrap().to_owned(),
                d["stream"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let stdout: Vec<_> = outputs
        .iter()
        .filter(|(_, s)| s == "stdout")
        .map(|(l, _)| l.as_str())
        .collect();
    assert_eq!(stdout, ["one", "three"]);
    assert!(outputs.contains(&("two".into(), "stderr".into())));
    let (name, exit) = events.last().unwrap();
    assert_eq!(name, "exit");
    assert_eq!(exit["exit_code"], 3);
    assert_eq!(exit["signal"], json!(null));
    assert_eq!(exit["oom_killed"], false);
    assert_eq!(exit["reason"], "exited");
}

#[test]
fn run_timeout_kills_and_reports_the_signal() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let started = Instant::now();
    let r = c.post_json(
        "/api/v1/processes/run",
        &json!({"command": "sleep", "args": ["30"], "timeout": 0.3}),
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let events = r.events();
    let (name, exit) = events.last().unwrap();
    assert_eq!(name, "exit");
    assert_eq!(exit["signal"], 9);
    assert_eq!(exit["exit_code"], json!(null));
    assert_eq!(exit["reason"], "timed_out");
    for bad in [json!(0), json!(-1), json!("x"), json!(1e9)] {
        c.post_json(
            "/api/v1/processes/run",
            &json!({"command": "true", "timeout": bad}),
        )
        .assert_error(400, "BAD_REQUEST");
    }
}

#[test]
fn lifecycle_output_follow_and_info_counts() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let before = c.info();
    assert_eq!(before["running_processes"], 0);

    let r = c.post_json(
        "/api/v1/processes",
        &json!({"command": "sh", "args": ["-c", "echo out1; echo err1 >&2; sleep 1; echo out2"],
                "env": {"A": "1"}, "working_dir": "/tmp"}),
    );
    assert_eq!(r.status, 201);
    let info = r.json();
    let pid = info["pid"].as_u64().unwrap();
    for field in [
        "pid",
        "status",
        "exit_code",
        "signal",
        "oom_killed",
        "stdin_writable",
        "command",
        "args",
        "started_at",
        "ended_at",
    ] {
        assert!(info.get(field).is_some(), "{field} missing from {info}");
    }
    assert_eq!(info["status"], "running");
    assert_eq!(info["command"], "sh");
    assert_eq!(info["stdin_writable"], false);
    let during = c.info();
    assert_eq!(during["running_processes"], 1);
    assert_eq!(
        during["total_processes"].as_u64().unwrap(),
        before["total_processes"].as_u64().unwrap() + 1
    );

    // Follow replays what was captured, streams the rest, then eof.
    let events = c
        .get(&format!("/api/v1/processes/{pid}/output/follow"))
        .events();
    let (last, _) = events.last().unwrap();
    assert_eq!(last, "eof");
    let lines: Vec<_> = events
        .iter()
        .filter(|(e, _)| e == "output")
        .map(|(_, d)| d["line"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.contains(&"err1".to_owned()));
    assert_eq!(lines.last().unwrap(), "out2");
    for (_, d) in events.iter().filter(|(e, _)| e == "output") {
        assert!(d["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    }
    let stdout_events = c
        .get(&format!("/api/v1/processes/{pid}/stdout/follow"))
        .events();
    let stdout_lines: Vec<_> = stdout_events
        .iter()
        .filter(|(e, _)| e == "output")
        .map(|(_, d)| d["line"].clone())
        .collect();
    assert_eq!(stdout_lines, [json!("out1"), json!("out2")]);
    let stderr_events = c
        .get(&format!("/api/v1/processes/{pid}/stderr/follow"))
        .events();
    assert_eq!(stderr_events[0].1["stream"], "stderr");
    assert_eq!(stderr_events.last().unwrap().0, "eof");

    let done = c.wait_exit(pid);
    assert_eq!(done["status"], "exited");
    assert_eq!(done["exit_code"], 0);
    assert!(done["ended_at"].as_u64().unwrap() >= done["started_at"].as_u64().unwrap());

    let out = c.get(&format!("/api/v1/processes/{pid}/stdout")).json();
    assert_eq!(
        out,
        json!({"pid": pid, "lines": ["out1", "out2"], "line_count": 2})
    );
    let err = c.get(&format!("/api/v1/processes/{pid}/stderr")).json();
    assert_eq!(err["lines"], json!(["err1"]));
    assert_eq!(
        c.get(&format!("/api/v1/processes/{pid}/output")).json()["line_count"],
        3
    );

    let list = c.get("/api/v1/processes").json();
    assert!(list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["pid"] == pid));
    assert_eq!(c.info()["running_processes"], 0);
}

/// A process that has exited shows its whole output: the exit is not
/// reported before the pipes are drained (the soak caught about one in 150
/// short processes showing `exited` with empty stdout).
#[test]
fn an_exited_process_shows_all_its_output() {
    let agent = Agent::start(&[]);
    // Several clients at once: the race needs the agent busy.
    std::thread::scope(|s| {
        for t in 0..4 {
            let c = client(&agent);
            s.spawn(move || {
                for i in 0..150 {
                    let marker = format!("line-{t}-{i}");
                    let pid = c.start(
                        json!({"command": "sh", "args": ["-c", format!("printf {marker}")]}),
                    );
                    c.wait_exit(pid);
                    let out = c.get(&format!("/api/v1/processes/{pid}/stdout")).json();
                    assert_eq!(out["lines"], json!([marker]), "process {marker} ({pid})");
                    assert_eq!(c.delete(&format!("/api/v1/processes/{pid}")).status, 204);
                }
            });
        }
    });
}

#[test]
fn stdin_pipe_write_and_close() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let pid = c.start(json!({"command": "cat", "stdin_mode": "pipe"}));
    assert_eq!(
        c.get(&format!("/api/v1/processes/{pid}")).json()["stdin_writable"],
        true
    );
    let r = c.request(
        "POST",
        &format!("/api/v1/processes/{pid}/stdin"),
        &[],
        b"hello\nworld\n",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        c.request(
            "POST",
            &format!("/api/v1/processes/{pid}/stdin/close"),
            &[],
            b""
        )
        .status,
        204
    );
    c.wait_exit(pid);
    assert_eq!(
        c.get(&format!("/api/v1/processes/{pid}/stdout")).json()["lines"],
        json!(["hello", "world"])
    );
    c.request(
        "POST",
        &format!("/api/v1/processes/{pid}/stdin"),
        &[],
        b"late",
    )
    .assert_error(400, "STDIN_NOT_WRITABLE");
    c.request(
        "POST",
        &format!("/api/v1/processes/{pid}/stdin/close"),
        &[],
        b"",
    )
    .assert_error(400, "STDIN_NOT_WRITABLE");

    // stdin closed (the default): not writable.
    let pid = c.start(json!({"command": "sleep", "args": ["5"]}));
    c.request("POST", &format!("/api/v1/processes/{pid}/stdin"), &[], b"x")
        .assert_error(400, "STDIN_NOT_WRITABLE");
    assert_eq!(c.delete(&format!("/api/v1/processes/{pid}")).status, 204);

    // Discarded output is not captured.
    let pid = c.start(json!({"command": "sh", "args": ["-c", "echo gone; echo kept >&2"], "stdout_mode": "discard"}));
    c.wait_exit(pid);
    assert_eq!(
        c.get(&format!("/api/v1/processes/{pid}/output")).json()["lines"],
        json!(["kept"])
    );
}

#[test]
fn signals_kill_and_not_found() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let pid = c.start(json!({"command": "sleep", "args": ["30"]}));
    let r = c.post_json(
        &format!("/api/v1/processes/{pid}/signal"),
        &json!({"signal": 15}),
    );
    assert_eq!(r.json(), json!({"success": true}));
    let info = c.wait_exit(pid);
    assert_eq!(info["status"], "signaled");
    assert_eq!(info["signal"], 15);
    assert_eq!(info["exit_code"], json!(null));
    c.post_json(
        &format!("/api/v1/processes/{pid}/signal"),
        &json!({"signal": 15}),
    )
    .assert_error(400, "BAD_REQUEST");

    // The signal reaches the whole process group.
    let pid = c.start(json!({"command": "sh", "args": ["-c", "sleep 30 & sleep 30 & wait"]}));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.delete(&format!("/api/v1/processes/{pid}")).status, 204);
    let info = c.wait_exit(pid);
    assert_eq!(info["signal"], 9);
    let deadline = Instant::now() + Duration::from_secs(5);
    while group_members(pid) > 0 {
        assert!(
            Instant::now() < deadline,
            "children of {pid} survived the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // DELETE of a finished process forgets it.
    assert_eq!(c.delete(&format!("/api/v1/processes/{pid}")).status, 204);
    c.get(&format!("/api/v1/processes/{pid}"))
        .assert_error(404, "NOT_FOUND");

    let pid = c.start(json!({"command": "sleep", "args": ["30"]}));
    for bad in [
        json!({"signal": 0}),
        json!({"signal": 999}),
        json!({"signal": "TERM"}),
        json!({}),
    ] {
        c.post_json(&format!("/api/v1/processes/{pid}/signal"), &bad)
            .assert_error(400, "BAD_REQUEST");
    }
    c.delete(&format!("/api/v1/processes/{pid}"));

    for path in [
        "/api/v1/processes/999999999",
        "/api/v1/processes/abc",
        "/api/v1/processes/999999999/stdout",
        "/api/v1/processes/999999999/output/follow",
    ] {
        c.get(path).assert_error(404, "NOT_FOUND");
    }
    c.delete("/api/v1/processes/999999999")
        .assert_error(404, "NOT_FOUND");
    c.post_json("/api/v1/processes/999999999/signal", &json!({"signal": 9}))
        .assert_error(404, "NOT_FOUND");
    c.request("POST", "/api/v1/processes/999999999/stdin", &[], b"x")
        .assert_error(404, "NOT_FOUND");
}

#[test]
fn bad_requests_are_400_with_a_code() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let p = "/api/v1/processes";
    c.post_json(p, &json!({})).assert_error(400, "BAD_REQUEST");
    c.post_json(p, &json!({"command": ""}))
        .assert_error(400, "BAD_REQUEST");
    c.post_json(p, &json!({"command": "/no/such/binary"}))
        .assert_error(400, "BAD_REQUEST");
    c.post_json(p, &json!({"command": "true", "args": "notalist"}))
        .assert_error(400, "BAD_REQUEST");
    c.post_json(p, &json!({"command": "true", "stdin_mode": "maybe"}))
        .assert_error(400, "BAD_REQUEST");
    c.post_json(p, &json!({"command": "true", "env": {"A=B": "x"}}))
        .assert_error(400, "BAD_REQUEST");
    c.post_json(
        p,
        &json!({"command": "true", "working_dir": "/no/such/dir"}),
    )
    .assert_error(400, "BAD_REQUEST");
    c.post_json(p, &json!({"command": "true", "user": "no-such-user-sbx"}))
        .assert_error(400, "BAD_REQUEST");
    c.post_json(
        p,
        &json!({"command": "true", "user": {"name": "root", "uid": 0}}),
    )
    .assert_error(400, "BAD_REQUEST");
    c.request(
        "POST",
        p,
        &[("Content-Type", "application/json")],
        b"{\"command\":",
    )
    .assert_error(400, "BAD_REQUEST");
    for managed in [
        json!({"command": "true", "name": "web"}),
        json!({"command": "true", "restart": {"policy": "always"}}),
        json!({"command": "true", "health_check": {"type": "tcp", "port": 80}}),
    ] {
        c.post_json(p, &managed).assert_error(400, "BAD_REQUEST");
    }
    c.request("POST", p, &[], b"{\"command\":\"true\"}")
        .assert_error(400, "BAD_REQUEST");
}

#[test]
fn runs_as_another_user_when_root() {
    if !nix_is_root() {
        eprintln!("not root: user switching is refused with 403, checked instead");
        let agent = Agent::start(&[]);
        client(&agent)
            .post_json(
                "/api/v1/processes",
                &json!({"command": "true", "user": "0:0"}),
            )
            .assert_error(403, "FORBIDDEN");
        return;
    }
    let agent = Agent::start(&[]);
    let c = client(&agent);
    for (user, want) in [
        (json!("nobody"), "65534"),
        (json!("65534"), "65534"),
        (json!("1234:4321"), "1234 4321"),
        (json!({"uid": 1234, "gid": 4321}), "1234 4321"),
    ] {
        let script = if want.contains(' ') {
            "echo $(id -u) $(id -g)"
        } else {
            "id -u"
        };
        let events = c
            .post_json(
                "/api/v1/processes/run",
                &json!({"command": "sh", "args": ["-c", script], "user": user}),
            )
            .events();
        let line = events
            .iter()
            .find(|(e, _)| e == "output")
            .map(|(_, d)| d["line"].clone());
        assert_eq!(line, Some(json!(want)), "user {user}: {events:?}");
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn process_limit_and_a_10000_request_burst() {
    let agent = Agent::start(&["--max-processes", "50"]);
    let c = client(&agent);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                let (mut ok, mut limited) = (0u32, 0u32);
                for _ in 0..1250 {
                    let r = c.post_json(
                        "/api/v1/processes",
                        &json!({"command": "sleep", "args": ["2"]}),
                    );
                    match r.status {
                        201 => ok += 1,
                        429 => {
                            assert_eq!(r.json()["code"], "TOO_MANY_PROCESSES");
                            limited += 1
                        }
                        503 => limited += 1,
                        s => panic!("unexpected {s}: {}", r.text()),
                    }
                }
                (ok, limited)
            })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for t in threads {
        let (o, l) = t.join().expect("burst thread");
        ok += o;
        limited += l;
    }
    assert_eq!(ok + limited, 10_000);
    assert!(ok >= 50, "at least the limit was started: {ok}");
    assert!(limited > 0);
    assert!(c.info()["running_processes"].as_u64().unwrap() <= 50);
    // Everything is reaped and the slots come back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.info()["running_processes"] != 0 {
        assert!(
            Instant::now() < deadline,
            "processes not reaped: {}",
            c.info()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(zombies_of(agent.process.pid()), 0);
    c.start(json!({"command": "true"}));
    assert_eq!(c.get("/api/v1/health").json()["healthy"], true);
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: u64) -> usize {
    proc_stats()
        .iter()
        .filter(|(state, _, pgrp)| state != "Z" && *pgrp == pgid as u32)
        .count()
}

/// `(state, ppid, pgrp)` of every process.
fn proc_stats() -> Vec<(String, u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| {
            let rest = stat.rsplit_once(')')?.1.to_owned();
            let mut f = rest.split_whitespace();
            let state = f.next()?.to_owned();
            let ppid = f.next()?.parse().ok()?;
            let pgrp = f.next()?.parse().ok()?;
            Some((state, ppid, pgrp))
        })
        .collect()
}

fn zombies_of(parent: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
            state == Some("Z") && ppid == Some(parent)
        })
        .count()
}

#[test]
fn a_gibibyte_of_output_stays_bounded() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let rss_before = agent.rss_kib();
    // 1 GiB of 100-byte lines.
    let pid = c.start(json!({"command": "sh", "args": ["-c",
        "yes 012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678 | head -c 1073741824"]}));
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        peak = peak.max(agent.rss_kib());
        let info = c.get(&format!("/api/v1/processes/{pid}")).json();
        if info["status"] != "running" {
            break;
        }
        assert!(Instant::now() < deadline, "1 GiB of output took too long");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = c.get(&format!("/api/v1/processes/{pid}/output")).json();
    assert_eq!(out["line_count"], 10_000, "the line bound holds");
    assert_eq!(out["lines"][0].as_str().unwrap().len(), 99);
    let grown = peak.saturating_sub(rss_before);
    assert!(
        grown < 150 * 1024,
        "agent RSS grew by {grown} KiB for 1 GiB of output"
    );
    assert_eq!(c.get("/api/v1/health").json()["healthy"], true);
}

#[test]
fn a_client_leaving_mid_stream_leaves_the_process_running() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let pid = c
        .start(json!({"command": "sh", "args": ["-c", "while :; do echo tick; sleep 0.05; done"]}));
    for _ in 0..20 {
        let mut s = c.connect();
        c.send_head(
            &mut s,
            "GET",
            &format!("/api/v1/processes/{pid}/output/follow"),
            &[],
            None,
        );
        let mut reader = BufReader::new(s);
        let (status, _) = read_head(&mut reader);
        assert_eq!(status, 200);
        let mut line = String::new();
        while !line.contains("tick") {
            line.clear();
            reader.read_line(&mut line).expect("sse line");
        }
        drop(reader);
    }
    // And a run whose client goes away: the process lives on until it ends.
    let mut s = c.connect();
    let body = json!({"command": "sleep", "args": ["1"]}).to_string();
    c.send_head(
        &mut s,
        "POST",
        "/api/v1/processes/run",
        &[("Content-Type", "application/json")],
        Some(body.len() as u64),
    );
    s.write_all(body.as_bytes()).unwrap();
    let mut reader = BufReader::new(s);
    let (status, _) = read_head(&mut reader);
    assert_eq!(status, 200);
    let mut text = String::new();
    while !text.contains("started") {
        reader.read_line(&mut text).unwrap();
    }
    let started: Vec<_> = parse_sse(&format!("{text}\n"));
    drop(reader);
    let run_pid = started
        .iter()
        .find(|(e, _)| e == "started")
        .map(|(_, d)| d["pid"].as_u64().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        c.get(&format!("/api/v1/processes/{pid}")).json()["status"],
        "running"
    );
    if let Some(run_pid) = run_pid {
        let info = c.wait_exit(run_pid);
        assert_eq!(info["exit_code"], 0);
    }
    assert_eq!(c.delete(&format!("/api/v1/processes/{pid}")).status, 204);
    assert_eq!(c.get("/api/v1/health").json()["healthy"], true);
}

#[test]
fn routes_need_auth() {
    let agent = Agent::start(&[]);
    let anon = Client::new(agent.addr, "Bearer wrong-token-0000000000".into());
    anon.get("/api/v1/processes")
        .assert_error(401, "UNAUTHORIZED");
    anon.post_json("/api/v1/processes/run", &json!({"command": "true"}))
        .assert_error(401, "UNAUTHORIZED");
    anon.get("/api/v1/files?path=/etc/passwd")
        .assert_error(401, "UNAUTHORIZED");
    anon.get("/api/v1/pty").assert_error(401, "UNAUTHORIZED");
}

#[test]
fn finished_processes_are_forgotten_beyond_the_configured_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[limits]\nmax_finished_processes = 3\n").unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()]);
    let c = client(&agent);
    let mut pids = Vec::new();
    for _ in 0..6 {
        let pid = c.start(json!({"command": "true"}));
        c.wait_exit(pid);
        pids.push(pid);
    }
    let listed: Vec<u64> = c.get("/api/v1/processes").json()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for newest in &pids[3..] {
        assert!(listed.contains(newest), "newest kept: {listed:?}");
    }
    c.get(&format!("/api/v1/processes/{}", pids[0]))
        .assert_error(404, "NOT_FOUND");
    assert_eq!(c.info()["total_processes"], 6);
}
