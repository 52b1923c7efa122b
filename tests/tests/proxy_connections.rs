//! Decisions are per request, never per connection (SPEC 6): on one
//! HTTP/1.1 keep-alive connection and on one HTTP/2 connection, requests for
//! different sandboxes and with and without credentials each get their own
//! routing and their own access decision; and a request whose target and
//! Host disagree never reaches one sandbox while telling it another's name.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sbx_tests::proxy_support::{ProxyWorld, WorldOptions};
use serde_json::{json, Value};

fn world() -> Option<ProxyWorld> {
    let opts = WorldOptions {
        sandboxes: vec![
            ("sbx-alpha".into(), Some("web".into())),
            ("sbx-beta".into(), Some("api".into())),
        ],
        ..WorldOptions::default()
    };
    let mut w = ProxyWorld::with(opts)?;
    let py = w.python.clone();
    for i in 0..2 {
        w.sandboxes[i].service(&py, "echo", 8080);
        let id = w.sandboxes[i].id.clone();
        w.patch_ok(&id, json!({"exposed_ports": [8080]}));
    }
    Some(w)
}

/// One response read off a keep-alive connection: status and body.
fn read_response(r: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut status_line = String::new();
    r.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {status_line:?}"));
    let (mut len, mut chunked) = (0usize, false);
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("header");
        if line.trim().is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().expect("content-length");
        }
        chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .expect("chunk size");
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).expect("chunk");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(len, 0);
        r.read_exact(&mut body).expect("body");
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn one_keep_alive_connection_decides_each_request_on_its_own() {
    let Some(w) = world() else { return };
    let port = w.http_port();
    let stream = w.connect(w.listeners.http.expect("http"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let key = w.creds.api_key.clone();
    let other = w.creds.other_api_key.clone();
    let auth = |k: &str| format!("Authorization: Bearer {k}\r\n");
    // (host label, extra header lines, expected status, expected server)
    let steps: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("8080-web", auth(&key), 200, Some("sbx-alpha")),
        ("8080-web", String::new(), 401, None),
        ("8080-api", auth(&key), 200, Some("sbx-beta")),
        ("8080-api", auth(&other), 404, None),
        ("web", auth(&key), 404, None), // the agent: no route for /who
        ("8080-web", auth(&key), 200, Some("sbx-alpha")),
        ("web", String::new(), 401, None),
        ("8080-api", auth(&key), 200, Some("sbx-beta")),
    ];
    for (i, (label, extra, status, server)) in steps.into_iter().enumerate() {
        let req = format!(
            "GET /who HTTP/1.1\r\nHost: {label}.sbx.test:{port}\r\n{extra}Accept: application/json\r\n\r\n"
        );
        writer.write_all(req.as_bytes()).expect("write");
        let (got, body) = read_response(&mut reader);
        assert_eq!(got, status, "request {i} to {label}: {body}");
        if let Some(server) = server {
            let v: Value = serde_json::from_str(&body).expect("echo JSON");
            assert_eq!(v["server"], server, "request {i} to {label}");
        }
    }
}

#[test]
fn one_http2_connection_decides_each_stream_on_its_own() {
    let Some(w) = world() else { return };
    let key = format!("Bearer {}", w.creds.api_key);
    for tls in [true, false] {
        let port = if tls { w.https_port() } else { w.http_port() };
        let req = |authority: &str, auth: Option<&str>| {
            let headers: Vec<[&str; 2]> =
                auth.map(|a| vec![["authorization", a]]).unwrap_or_default();
            json!({"authority": format!("{authority}:{port}"), "path": "/who", "headers": headers})
        };
        let mut upload = req("8080-api.sbx.test", Some(&key));
        upload["method"] = json!("PUT");
        upload["body_len"] = json!(8 << 20);
        let spec = json!({
            "port": port, "tls": tls, "ca": w.tls.ca, "sni": "web.sbx.test",
            "requests": [
                req("8080-web.sbx.test", Some(&key)),
                req("8080-web.sbx.test", None),
                req("8080-api.sbx.test", Some(&key)),
                req("8080-api.sbx.test", None),
                req("8080-nope.sbx.test", Some(&key)),
                upload,
            ],
        });
        let out = w.py(
            "proxy_h2_client.py",
            &[&spec.to_string()],
            Duration::from_secs(60),
        );
        let out: Value = serde_json::from_str(out.trim()).expect("h2 client JSON");
        let statuses: Vec<i64> = out["responses"]
            .as_array()
            .expect("responses")
            .iter()
            .map(|r| r["status"].as_i64().unwrap_or(0))
            .collect();
        assert_eq!(statuses, [200, 401, 200, 401, 404, 200], "tls={tls}: {out}");
        let upload: Value =
            serde_json::from_str(out["responses"][5]["body"].as_str().unwrap_or("")).expect("echo");
        assert_eq!(
            (upload["server"].as_str(), upload["body_len"].as_u64()),
            (Some("sbx-beta"), Some(8 << 20))
        );
    }
}

#[test]
fn target_and_host_never_disagree_at_the_service() {
    let Some(w) = world() else { return };
    let port = w.http_port();
    let key = format!("Authorization: Bearer {}", w.creds.api_key);
    // Host names are case-insensitive.
    let url = w.https("8080-WEB.SBX.TEST", "/who");
    let r = w.curl(&["-H", &key, &url]);
    assert_eq!(r.echo().server, "sbx-alpha");
    // Absolute-form target naming one sandbox, Host naming the other.
    let req = format!(
        "GET http://8080-web.sbx.test:{port}/who HTTP/1.1\r\nHost: 8080-api.sbx.test:{port}\r\n{key}\r\nConnection: close\r\n\r\n"
    );
    let stream = w.connect(w.listeners.http.expect("http"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    writer.write_all(req.as_bytes()).expect("write");
    let (status, body) = read_response(&mut BufReader::new(stream));
    match status {
        400 => {}
        200 => {
            let v: Value = serde_json::from_str(&body).expect("echo JSON");
            let host = v["headers"]
                .as_array()
                .expect("headers")
                .iter()
                .find(|h| {
                    h[0].as_str()
                        .is_some_and(|k| k.eq_ignore_ascii_case("host"))
                })
                .and_then(|h| h[1].as_str())
                .unwrap_or("")
                .to_owned();
            let named = if host.starts_with("8080-web.") {
                "sbx-alpha"
            } else {
                "sbx-beta"
            };
            assert_eq!(
                v["server"], named,
                "the service of one sandbox got a Host naming another: {host}"
            );
        }
        other => panic!("absolute-form vs Host: {other} {body}"),
    }
}
