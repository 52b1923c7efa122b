//! Bad input at sbx-proxy's front door: malformed and oversized Host and
//! routing headers (400 BAD_REQUEST, never a guess), port labels that are
//! not a canonical 1..65535, slow clients cut after the header timeout, the
//! per-sandbox concurrency cap (429), and an upstream that never answers.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use sbx_tests::proxy_support::{ProxyWorld, WorldOptions};

fn world(opts: WorldOptions) -> Option<ProxyWorld> {
    let mut w = ProxyWorld::with(opts)?;
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "echo", 8080);
    w.expose(&[8080], true);
    Some(w)
}

/// Sends `request` raw on the plain listener; returns (status, response text).
fn raw(w: &ProxyWorld, request: &[u8]) -> (u16, String) {
    let mut s = w.connect(w.listeners.http.expect("http listener"));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // The proxy may answer (and close) before it has read all of a bad head.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    // Read the head and whatever body arrives before the peer closes or
    // goes quiet (keep-alive).
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok());
                    if len.is_some_and(|len| body.len() >= len) {
                        break;
                    }
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A request on the TLS listener that must be a 400 BAD_REQUEST; returns
/// what went wrong instead.
fn bad_request(w: &ProxyWorld, what: &str, headers: &[&str]) -> Option<String> {
    let url = w.https("sbx.test", "/");
    let mut args = vec!["--http1.1"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(&url);
    let r = w.curl(&args);
    let code = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .map(|v| v["code"].clone());
    if r.status == 400 && code == Some("BAD_REQUEST".into()) {
        return None;
    }
    Some(format!("{what}: {} {}", r.status, r.text()))
}

#[test]
fn malformed_hosts_and_routing_headers_are_400() {
    let Some(w) = world(WorldOptions::default()) else {
        return;
    };
    let key = w.bearer();
    let mut errors = Vec::new();
    // Port labels: zero, out of range, not canonical.
    for label in [
        "0-web",
        "65536-web",
        "08080-web",
        "99999999999999999999-web",
        "-8080-web",
        "8080--web",
    ] {
        let host = format!("Host: {label}.sbx.test");
        errors.extend(bad_request(&w, label, &[&host, &key]));
    }
    // The canonical spelling of the same port works.
    w.get("8080-web.sbx.test", "/", &[]).echo();
    // Malformed host names, and one far longer than any DNS name.
    let long_label = format!("Host: {}.sbx.test", "a".repeat(300));
    let long_name = format!("Host: {}sbx.test", "abcdefghi.".repeat(30));
    for (what, host) in [
        ("empty label", "Host: .sbx.test"),
        ("double dot", "Host: web..sbx.test"),
        ("underscore", "Host: we_b.sbx.test"),
        ("bad port", "Host: web.sbx.test:99999"),
        ("label of 300", long_label.as_str()),
        ("name of 300", long_name.as_str()),
    ] {
        errors.extend(bad_request(&w, what, &[host, &key]));
    }
    // Routing headers.
    let long_id = format!("X-Tensorlake-Sandbox-Id: {}", "b".repeat(300));
    for (what, headers) in [
        (
            "port abc",
            vec![
                "X-Tensorlake-Sandbox-Id: web",
                "X-Tensorlake-Sandbox-Port: abc",
            ],
        ),
        (
            "port 0",
            vec![
                "X-Tensorlake-Sandbox-Id: web",
                "X-Tensorlake-Sandbox-Port: 0",
            ],
        ),
        (
            "port 65536",
            vec![
                "X-Tensorlake-Sandbox-Id: web",
                "X-Tensorlake-Sandbox-Port: 65536",
            ],
        ),
        (
            "port 08080",
            vec![
                "X-Tensorlake-Sandbox-Id: web",
                "X-Tensorlake-Sandbox-Port: 08080",
            ],
        ),
        (
            "port with space",
            vec![
                "X-Tensorlake-Sandbox-Id: web",
                "X-Tensorlake-Sandbox-Port: 80 80",
            ],
        ),
        ("id with !", vec!["X-Tensorlake-Sandbox-Id: Web!"]),
        ("id of 300", vec![long_id.as_str()]),
        (
            "two ids",
            vec![
                "X-Tensorlake-Sandbox-Id: web",
                "X-Tensorlake-Sandbox-Id: sbx-alpha",
            ],
        ),
    ] {
        let mut all = headers.clone();
        all.push(&key);
        errors.extend(bad_request(&w, what, &all));
    }
    // Raw requests curl would not send.
    for (what, req) in [
        ("no Host", "GET / HTTP/1.1\r\n\r\n".to_owned()),
        ("empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n".to_owned()),
        (
            "two Hosts",
            "GET / HTTP/1.1\r\nHost: web.sbx.test\r\nHost: other.sbx.test\r\n\r\n".to_owned(),
        ),
        (
            "space in Host",
            "GET / HTTP/1.1\r\nHost: we b.sbx.test\r\n\r\n".to_owned(),
        ),
    ] {
        let (status, text) = raw(&w, req.as_bytes());
        if status != 400 {
            errors.push(format!("{what}: {text}"));
        }
    }
    // A head larger than max_header_bytes is refused, not buffered.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: 8080-web.sbx.test\r\nX-Big: {}\r\n\r\n",
        "x".repeat(100 * 1024)
    );
    let (status, text) = raw(&w, huge.as_bytes());
    if !(status == 400 || status == 431) {
        errors.push(format!("oversized head: {}", &text[..text.len().min(300)]));
    }
    assert!(errors.is_empty(), "not 400 BAD_REQUEST: {errors:#?}");
    // The proxy is still fine.
    w.get("8080-web.sbx.test", "/", &[]).echo();
}

#[test]
fn slow_clients_are_cut_after_the_header_timeout() {
    let opts = WorldOptions {
        header_read_timeout_secs: 2,
        ..WorldOptions::default()
    };
    let Some(w) = world(opts) else { return };
    let http = w.listeners.http.expect("http");
    let https = w.listeners.https.expect("https");
    let cases: [(&str, std::net::SocketAddr, &[u8]); 4] = [
        ("half a request line", http, b"GET /slow HT"),
        (
            "half the headers",
            http,
            b"GET / HTTP/1.1\r\nHost: 8080-web.sbx.test\r\nX-A: 1\r\n",
        ),
        ("nothing at all", http, b""),
        ("a TLS handshake never started", https, b""),
    ];
    let mut threads = Vec::new();
    for (what, addr, bytes) in cases {
        let mut s = w.connect(addr);
        threads.push(std::thread::spawn(move || -> Result<Duration, String> {
            let started = Instant::now();
            s.set_read_timeout(Some(Duration::from_secs(40)))
                .expect("timeout");
            s.write_all(bytes).expect("write");
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(e) => {
                        return Err(format!(
                            "{what}: still open after {:?} ({e})",
                            started.elapsed()
                        ))
                    }
                }
            }
            let took = started.elapsed();
            if took < Duration::from_millis(1500) || took > Duration::from_secs(12) {
                return Err(format!(
                    "{what}: cut after {took:?}, the header timeout is 2 s"
                ));
            }
            let text = String::from_utf8_lossy(&got);
            if !(got.is_empty()
                || text.starts_with("HTTP/1.1 408")
                || text.starts_with("HTTP/1.1 400"))
            {
                return Err(format!("{what}: answered {text}"));
            }
            Ok(took)
        }));
    }
    let errors: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().expect("slow client thread").err())
        .collect();
    assert!(errors.is_empty(), "slow clients: {errors:#?}");
    // A complete request on a fresh connection still works.
    w.get("8080-web.sbx.test", "/", &[]).echo();
}

#[test]
fn per_sandbox_concurrency_cap_answers_429() {
    let opts = WorldOptions {
        sandboxes: vec![
            ("sbx-alpha".into(), Some("web".into())),
            ("sbx-beta".into(), Some("api".into())),
        ],
        max_concurrent_requests_per_sandbox: 2,
        ..WorldOptions::default()
    };
    let Some(mut w) = world(opts) else { return };
    let py = w.python.clone();
    w.sandboxes[1].service(&py, "echo", 8080);
    w.patch_ok(
        "sbx-beta",
        serde_json::json!({"exposed_ports": [8080], "allow_unauthenticated_access": true}),
    );
    let slow = w.https("8080-web.sbx.test", "/_/slow?ms=6000");
    let held: Vec<_> = (0..2)
        .map(|_| w.curl_lines(&["-w", "\nstatus=%{http_code}\n", &slow]))
        .collect();
    // Both are in flight well before they end (6 s).
    std::thread::sleep(Duration::from_millis(2000));
    let third = w.get("8080-web.sbx.test", "/", &[]);
    third.assert_error(429, "TOO_MANY_REQUESTS");
    // The management API of the same sandbox counts too.
    w.get("web.sbx.test", "/api/v1/health", &[&w.bearer()])
        .assert_error(429, "TOO_MANY_REQUESTS");
    // Another sandbox is not affected.
    assert_eq!(
        w.get("8080-api.sbx.test", "/", &[]).echo().server,
        "sbx-beta"
    );
    for (_curl, lines) in held {
        let got: Vec<String> = lines.iter().map(|(_, l)| l).collect();
        assert!(
            got.iter().any(|l| l == "status=200"),
            "held request: {got:?}"
        );
    }
    // The slots are free again.
    w.get("8080-web.sbx.test", "/", &[]).echo();
    w.get("8080-web.sbx.test", "/", &[]).echo();
}

#[test]
fn an_upstream_that_never_answers_gets_504() {
    let opts = WorldOptions {
        extra_limits: vec!["response_header_timeout_secs = 2".into()],
        ..WorldOptions::default()
    };
    let Some(w) = world(opts) else { return };
    let started = Instant::now();
    w.get("8080-web.sbx.test", "/_/slow?ms=8000", &[])
        .assert_error(504, "UPSTREAM_TIMEOUT");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    w.get("8080-web.sbx.test", "/", &[]).echo();
}
