//! sbx-proxy's protocols with real clients (SPEC 6, "Protocols"): curl over
//! TLS with HTTP/1.1 and HTTP/2 (ALPN) and h2c with prior knowledge on the
//! plain listener, keep-alive, one HTTP/2 connection carrying requests for
//! two sandboxes, Server-Sent Events delivered as they happen, a TLS
//! certificate reloaded on SIGHUP without dropping a stream, the metrics
//! endpoint, and a SIGTERM that lets requests in flight finish.

use std::time::{Duration, Instant};

use sbx_tests::proxy_support::{metric_sum, ProxyWorld, Tls, WorldOptions};
use serde_json::{json, Value};

fn world() -> Option<ProxyWorld> {
    let mut w = ProxyWorld::start()?;
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "echo", 8080);
    w.expose(&[8080], false);
    Some(w)
}

#[test]
fn https_http2_and_h2c_reach_the_agent_and_a_service() {
    let Some(w) = world() else { return };
    let key = w.bearer();
    // (curl flags, expected HTTP version, plain listener?)
    let cases: [(&[&str], &str, bool); 4] = [
        (&["--http1.1"], "1.1", false),
        (&["--http2"], "2", false),
        (&["--http2-prior-knowledge"], "2", true),
        (&["--http1.1"], "1.1", true),
    ];
    for (flags, version, plain) in cases {
        let url = |host: &str, path: &str| {
            if plain {
                w.http(host, path)
            } else {
                w.https(host, path)
            }
        };
        let call = |host: &str, path: &str, auth: bool| {
            let u = url(host, path);
            let mut args: Vec<&str> = flags.to_vec();
            if auth {
                args.extend(["-H", &key]);
            }
            args.push(&u);
            let r = w.curl(&args);
            assert_eq!(r.version, version, "{flags:?} {u}: {r:?}");
            r
        };
        let health = call("web.sbx.test", "/api/v1/health", true);
        health.assert_status(200);
        assert_eq!(health.json()["healthy"], true, "{flags:?}");
        call("web.sbx.test", "/api/v1/info", false).assert_error(401, "UNAUTHORIZED");
        let info = call("web.sbx.test", "/api/v1/info", true);
        info.assert_status(200);
        assert!(info.json()["uptime_secs"].is_u64(), "{}", info.text());
        let e = call("8080-web.sbx.test", "/hello?a=b", true).echo();
        assert_eq!(
            (e.server.as_str(), e.target.as_str()),
            ("sbx-alpha", "/hello?a=b")
        );
    }

    // HTTP/1.1 keep-alive: three requests, one connection (curl reuses a
    // connection for the same host name only).
    for (a, b, c) in [
        (
            w.https("8080-web.sbx.test", "/1"),
            w.https("8080-web.sbx.test", "/2"),
            w.https("8080-web.sbx.test", "/3"),
        ),
        (
            w.https("web.sbx.test", "/api/v1/health"),
            w.https("web.sbx.test", "/api/v1/info"),
            w.https("web.sbx.test", "/api/v1/health"),
        ),
    ] {
        let r = w.curl(&["--http1.1", "-H", &key, &a, &b, &c]);
        let connects: Vec<u64> = r
            .transfers
            .iter()
            .map(|t| t["num_connects"].as_u64().unwrap_or(9))
            .collect();
        assert_eq!(connects, [1, 0, 0], "HTTP/1.1 keep-alive: {a}");
        assert!(
            r.transfers.iter().all(|t| t["http_code"] == 200),
            "{:?}",
            r.transfers
        );
    }

    // The proxy's metrics are Prometheus text on the admin socket; requests
    // are counted, and connections into the sandbox are reused across
    // requests from separate client connections.
    let before = w.metrics();
    assert!(before.contains("# TYPE"), "metrics: {before}");
    let requests = |t: &str| metric_sum(t, "sbx_proxy_requests_total", &["kind=\"port\""]);
    let connects = |t: &str| metric_sum(t, "sbx_proxy_upstream_connects_total", &["kind=\"port\""]);
    let url = w.https("8080-web.sbx.test", "/again");
    for _ in 0..10 {
        w.curl(&["-H", &key, &url]).echo();
    }
    let after = w.metrics();
    assert!(
        requests(&after) - requests(&before) >= 10.0,
        "requests not counted:\n{after}"
    );
    let opened = connects(&after) - connects(&before);
    assert!(
        opened <= 2.0,
        "{opened} upstream connections for 10 sequential requests: no reuse"
    );
}

#[test]
fn one_http2_connection_carries_requests_for_two_sandboxes() {
    let opts = WorldOptions {
        sandboxes: vec![
            ("sbx-alpha".into(), Some("web".into())),
            ("sbx-beta".into(), Some("api".into())),
        ],
        ..WorldOptions::default()
    };
    let Some(mut w) = ProxyWorld::with(opts) else {
        return;
    };
    let py = w.python.clone();
    for i in 0..2 {
        w.sandboxes[i].service(&py, "echo", 8080);
        let id = w.sandboxes[i].id.clone();
        w.patch_ok(&id, json!({"exposed_ports": [8080]}));
    }
    let auth = ["authorization", &format!("Bearer {}", w.creds.api_key)];
    for tls in [true, false] {
        let port = if tls { w.https_port() } else { w.http_port() };
        let req = |authority: &str, extra: Vec<[&str; 2]>| {
            let mut headers = vec![auth];
            headers.extend(extra);
            json!({"authority": format!("{authority}:{port}"), "path": "/who", "headers": headers})
        };
        let spec = json!({
            "port": port, "tls": tls, "ca": w.tls.ca, "sni": "web.sbx.test",
            "requests": [
                req("8080-web.sbx.test", vec![]),
                req("8080-api.sbx.test", vec![]),
                req("8080-sbx-beta.sbx.test", vec![]),
                req("web.sbx.test", vec![["x-tensorlake-sandbox-id", "sbx-beta"], ["x-tensorlake-sandbox-port", "8080"]]),
                req("8080-sbx-alpha.sbx.test", vec![]),
                req("api.sbx.test", vec![]),
            ],
        });
        let out = w.py(
            "proxy_h2_client.py",
            &[&spec.to_string()],
            Duration::from_secs(60),
        );
        let out: Value = serde_json::from_str(out.trim()).expect("h2 client JSON");
        let servers: Vec<String> = out["responses"]
            .as_array()
            .expect("responses")
            .iter()
            .map(|r| {
                if r["status"] != 200 {
                    return format!("{} {}", r["status"], r["body"]);
                }
                let body: Value =
                    serde_json::from_str(r["body"].as_str().unwrap_or("")).unwrap_or(Value::Null);
                body["server"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| {
                        // The management API answers without a server field:
                        // the last request went to api's agent.
                        format!("agent {}", r["body"])
                    })
            })
            .collect();
        assert_eq!(
            &servers[..5],
            ["sbx-alpha", "sbx-beta", "sbx-beta", "sbx-beta", "sbx-alpha"],
            "tls={tls}: each stream must reach its own sandbox"
        );
        // api.sbx.test without a port: sandbox beta's management API
        // (no route there for /who, but the agent answered, not alpha's service).
        let last = &out["responses"][5];
        assert_ne!(last["status"], 401, "{last}");
        assert!(
            !last["body"].as_str().unwrap_or("").contains("sbx-alpha"),
            "{last}"
        );
    }
}

#[test]
fn server_sent_events_arrive_as_they_happen() {
    let Some(w) = world() else { return };
    let key = w.bearer();
    let body =
        json!({"command": "sh", "args": ["-c", "echo first; sleep 3; echo last"]}).to_string();
    let run = w.https("web.sbx.test", "/api/v1/processes/run");
    let sse = w.https("8080-web.sbx.test", "/_/sse?n=2&gap_ms=3000");
    let h2c = w.http("web.sbx.test", "/api/v1/processes/run");
    let mut streams = Vec::new();
    for (flag, url, post) in [
        ("--http1.1", &run, true),
        ("--http2", &run, true),
        ("--http2-prior-knowledge", &h2c, true),
        ("--http2", &sse, false),
    ] {
        let mut args = vec![flag, "-H", &key, "-H", "Accept: text/event-stream"];
        if post {
            args.extend([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body,
            ]);
        }
        args.push(url);
        let started = Instant::now();
        streams.push((flag, url.clone(), started, w.curl_lines(&args)));
    }
    for (flag, url, started, (_curl, lines)) in streams {
        let (mut first, mut last) = (None, None);
        while let Ok((at, line)) = lines.recv_timeout(Duration::from_secs(20)) {
            if line.contains("first") || line.contains("event-0") {
                first = Some(at);
            }
            if line.contains("last") || line.contains("event-1") {
                last = Some(at);
            }
        }
        let first = first.unwrap_or_else(|| panic!("{flag} {url}: no first line"));
        let last = last.unwrap_or_else(|| panic!("{flag} {url}: no last line"));
        assert!(
            last.duration_since(first) >= Duration::from_secs(2),
            "{flag} {url}: first line held back until the end ({:?} after start, {:?} before last)",
            first.duration_since(started),
            last.duration_since(first)
        );
    }
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_a_stream() {
    let Some(w) = world() else { return };
    let key = w.bearer();
    let body =
        json!({"command": "sh", "args": ["-c", "echo first; sleep 4; echo last"]}).to_string();
    let run = w.https("web.sbx.test", "/api/v1/processes/run");
    let (_curl, lines) = w.curl_lines(&[
        "--http2",
        "-H",
        &key,
        "-H",
        "Accept: text/event-stream",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        &run,
    ]);
    let (_, line) = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("stream started");
    assert!(!line.is_empty());

    // A certificate from another CA, written over the configured files.
    let new = Tls::generate(w.dir.path(), "new-");
    std::fs::copy(&new.cert, &w.tls.cert).expect("copy cert");
    std::fs::copy(&new.key, &w.tls.key).expect("copy key");
    w.reload();
    let health = w.https("web.sbx.test", "/api/v1/health");
    let new_ca = new.ca.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = w.curl(&["--cacert", &new_ca, "-H", &key, &health]);
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate not served after SIGHUP: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let old = w.curl(&["-H", &key, &health]);
    assert_eq!(
        (old.status, old.exit_code),
        (0, 60),
        "the old CA still verifies: {old:?}"
    );

    // The stream opened before the reload finishes.
    let mut saw_last = false;
    while let Ok((_, line)) = lines.recv_timeout(Duration::from_secs(15)) {
        saw_last |= line.contains("last");
    }
    assert!(saw_last, "the stream was cut by the reload");
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let Some(mut w) = world() else { return };
    let key = w.bearer();
    let slow = w.https("8080-web.sbx.test", "/_/slow?ms=2500");
    let (_curl, lines) = w.curl_lines(&["-H", &key, "-w", "\nstatus=%{http_code}\n", &slow]);
    std::thread::sleep(Duration::from_millis(800));
    let port = w.https_port();
    w.stop_proxy(Duration::from_secs(20));
    let got: Vec<String> = lines.iter().map(|(_, l)| l).collect();
    assert!(
        got.iter().any(|l| l == "status=200"),
        "the request in flight was dropped on SIGTERM: {got:?}"
    );
    // Nothing listens any more.
    let gone = w.curl_within(
        &[&format!("https://web.sbx.test:{port}/")],
        Duration::from_secs(3),
    );
    assert_eq!(gone.status, 0, "{gone:?}");
}
