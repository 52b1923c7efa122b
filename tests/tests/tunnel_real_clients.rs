//! Real clients through the tunnel: redis-server inside a sandbox network
//! namespace with the agent, redis-cli and redis-benchmark in a separate
//! client namespace through `sbx tunnel`; and python-websockets against the
//! tunnel endpoint.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sbx_tests::agent::{Agent, SbxTunnel};
use sbx_tests::bins::workspace_root;
use sbx_tests::netns::{link, require_netns, Netns};
use sbx_tests::process::ChildGuard;
use sbx_tests::servers::echo_server;

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Whether `program` can run; under CI a missing tool is a failure.
fn require_tool(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok || !in_ci(), "CI=true but {program} is not usable");
    if !ok {
        eprintln!("skipping: {program} is not installed");
    }
    ok
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn redis_in_a_sandbox_namespace_through_sbx_tunnel() {
    if !require_netns()
        || !require_tool("redis-server", &["--version"])
        || !require_tool("redis-benchmark", &["--version"])
    {
        return;
    }
    // Namespaces are declared first so that they are dropped last, after
    // every process inside them has been ended.
    let sandbox = Netns::new("rsb");
    let client = Netns::new("rcl");
    link(
        &sandbox,
        &["198.51.100.2/24"],
        &client,
        &["198.51.100.1/24"],
    );

    let _redis = ChildGuard::spawn(
        "redis-server",
        sandbox
            .command("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while sandbox
        .command("redis-cli")
        .args(["-p", "6379", "ping"])
        .output()
        .map(|o| !o.stdout.starts_with(b"PONG"))
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let agent = Agent::start_with(Some(&sandbox), "198.51.100.2:9501", &[]);

    // Redis listens on the sandbox's loopback only: not reachable directly.
    let direct = client
        .command("redis-cli")
        .args(["-h", "198.51.100.2", "-p", "6379", "ping"])
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli");
    assert!(
        !String::from_utf8_lossy(&direct.stdout).contains("PONG"),
        "redis reachable without the tunnel"
    );

    // The client authenticates as the sandbox proxy would (forwarded auth).
    let tunnel = SbxTunnel::start_with(
        Some(&client),
        "http://198.51.100.2:9501",
        6379,
        &agent.secrets,
        true,
    );
    let port = tunnel.local.port().to_string();
    let cli = |args: &[&str]| output(client.command("redis-cli").args(["-p", &port]).args(args));

    assert_eq!(cli(&["ping"]).trim(), "PONG");
    assert_eq!(cli(&["set", "greeting", "hello from outside"]).trim(), "OK");
    assert_eq!(cli(&["get", "greeting"]).trim(), "hello from outside");
    // A value larger than one relay chunk survives the round trip.
    let big: String = (0..100_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert_eq!(cli(&["set", "big", &big]).trim(), "OK");
    assert_eq!(cli(&["get", "big"]).trim(), big);
    // And the value really lives in the sandbox's redis.
    let inside = output(
        sandbox
            .command("redis-cli")
            .args(["-p", "6379", "get", "greeting"]),
    );
    assert_eq!(inside.trim(), "hello from outside");

    let bench = output(client.command("redis-benchmark").args([
        "-p", &port, "-n", "20000", "-c", "16", "-t", "set,get", "--csv",
    ]));
    eprintln!("redis-benchmark through the tunnel:\n{bench}");
    for test in ["SET", "GET"] {
        let line = bench
            .lines()
            .find(|l| l.starts_with(&format!("\"{test}\"")))
            .unwrap_or_else(|| panic!("no {test} result in {bench}"));
        let rps: f64 = line
            .split(',')
            .nth(1)
            .and_then(|v| v.trim_matches('"').parse().ok())
            .expect("rps");
        assert!(rps > 0.0, "{test}: {rps} requests per second");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_client_gets_binary_relay_and_1003_for_text() {
    let python = "/usr/bin/python3";
    if !require_tool(python, &["-c", "import websockets"]) {
        return;
    }
    let agent = Agent::start(&[]);
    let (echo, _e) = echo_server().await;
    let script = workspace_root().join("tests/py/ws_tunnel_client.py");
    let url = agent.ws_url(&format!("?port={}", echo.port()));
    let token = agent.secrets.token.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(url)
            .arg(token)
            .stdin(Stdio::null())
            .output()
    })
    .await
    .expect("join")
    .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("binary echo ok 1048576"), "{stdout}");
    assert!(stdout.contains("text frame closed with 1003"), "{stdout}");
}
