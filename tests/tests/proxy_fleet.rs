//! A fleet: two sbx-proxy processes sharing one registry in Redis
//! (`registry = "redis://..."`), as behind a load balancer (SPEC 1). A
//! sandbox registered, changed or removed through either proxy's admin
//! socket is routed the same way by both at once, and a restarted proxy
//! finds the registry where it left it.

use std::time::{Duration, Instant};

use sbx_tests::agent::READY_TIMEOUT;
use sbx_tests::process::{piped, ChildGuard};
use sbx_tests::proxy_support::{HttpResponse, ProxyWorld, WorldOptions};
use serde_json::json;

/// Polls `f` until it returns true or 3 s pass; returns how long it took.
fn within(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: not seen by the other proxy within 3 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// GET 8080-web on proxy B's TLS listener, with or without the API key.
fn via_b(w: &ProxyWorld, port_b: u16, auth: bool) -> HttpResponse {
    let url = format!("https://8080-web.sbx.test:{port_b}/");
    if auth {
        w.curl(&["-H", &w.bearer(), &url])
    } else {
        w.curl(&[&url])
    }
}

fn redis_argv() -> Vec<String> {
    [
        "redis-server",
        "--port",
        "16379",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn two_proxies_share_one_registry() {
    let opts = WorldOptions {
        top_level: vec![
            "registry = \"redis://127.0.0.1:16379/0\"".into(),
            "registry_prefix = \"sbxtest\"".into(),
        ],
        host_services: vec![(redis_argv(), "Ready to accept connections".into())],
        ..WorldOptions::default()
    };
    let Some(mut w) = ProxyWorld::with(opts) else {
        return;
    };
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "echo", 8080);

    // Proxy B: same registry, its own admin socket and state directory.
    let config_b = w.path("proxy-b.toml");
    let text = w
        .config_text()
        .replace("admin.sock", "admin-b.sock")
        .replace("/state\"", "/state-b\"");
    std::fs::write(&config_b, text).expect("write config");
    let (_proxy_b, listeners_b) = w.spawn_proxy_with(&config_b, &[]);
    let admin_b = w.path("admin-b.sock");
    let port_b = listeners_b.https.expect("B's https").port();
    let key = w.bearer();

    // Registered through A (at world start): B knows it.
    let entry_a = w.admin("GET", "/v1/sandboxes/sbx-alpha", None).json();
    let entry_b = w.admin_at(&admin_b, "GET", "/v1/sandboxes/sbx-alpha", None);
    assert_eq!(entry_b.status, 200, "{}", entry_b.text());
    assert_eq!(entry_b.json(), entry_a);
    via_b(&w, port_b, true).assert_error(403, "PORT_NOT_EXPOSED");

    // Exposed (public) through B: A routes it so at once.
    let r = w.admin_at(
        &admin_b,
        "PATCH",
        "/v1/sandboxes/sbx-alpha",
        Some(&json!({"exposed_ports": [8080], "allow_unauthenticated_access": true}).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    within("expose through B", || {
        w.get("8080-web.sbx.test", "/", &[]).status == 200
    });
    assert_eq!(via_b(&w, port_b, false).echo().server, "sbx-alpha");

    // Made private through A: B asks for credentials at once.
    w.patch_ok("sbx-alpha", json!({"allow_unauthenticated_access": false}));
    within("private through A", || {
        via_b(&w, port_b, false).status == 401
    });
    assert_eq!(via_b(&w, port_b, true).echo().server, "sbx-alpha");

    // A restarted proxy finds the registry in Redis.
    w.restart_proxy();
    assert_eq!(
        w.get("8080-web.sbx.test", "/", &[&key]).echo().server,
        "sbx-alpha"
    );

    // Redis stops: both proxies keep routing from their caches, writes
    // are refused cleanly, and both catch up once it is back.
    let argv = redis_argv();
    let mut redis = w.host_services.remove(0);
    redis.signal(9);
    redis.wait_timeout(Duration::from_secs(5));
    drop(redis);
    assert_eq!(via_b(&w, port_b, true).echo().server, "sbx-alpha");
    assert_eq!(
        w.get("8080-web.sbx.test", "/", &[&key]).echo().server,
        "sbx-alpha"
    );
    let r = w.admin_at(
        &admin_b,
        "PATCH",
        "/v1/sandboxes/sbx-alpha",
        Some(&json!({"allow_unauthenticated_access": true}).to_string()),
    );
    assert!(
        r.status >= 500,
        "a write without Redis: {} {}",
        r.status,
        r.text()
    );
    let mut cmd = w.host.command(&argv[0]);
    cmd.args(&argv[1..]);
    let mut again = ChildGuard::spawn("redis-server", piped(&mut cmd));
    again.wait_for_stdout_line("Ready to accept connections", READY_TIMEOUT);
    w.host_services.push(again);
    // The data went with the old server (no persistence): re-register
    // through B, public; A routes it once its subscriber is back.
    let mut entry = entry_a.clone();
    for field in ["id", "forwarded_auth_key_source"] {
        entry.as_object_mut().expect("entry").remove(field);
    }
    entry["exposed_ports"] = json!([8080]);
    entry["allow_unauthenticated_access"] = json!(true);
    within("Redis back: a write through B", || {
        w.admin_at(
            &admin_b,
            "PUT",
            "/v1/sandboxes/sbx-alpha",
            Some(&entry.to_string()),
        )
        .status
            == 200
    });
    within("Redis back: in force on A", || {
        w.get("8080-web.sbx.test", "/", &[]).status == 200
    });

    // Removed through A: B forgets it at once.
    let r = w.admin("DELETE", "/v1/sandboxes/sbx-alpha", None);
    assert_eq!(r.status, 204, "{}", r.text());
    within("delete through A", || via_b(&w, port_b, true).status == 404);
    via_b(&w, port_b, true).assert_error(404, "SANDBOX_NOT_FOUND");
    assert_eq!(
        w.admin_at(&admin_b, "GET", "/v1/sandboxes/sbx-alpha", None)
            .status,
        404
    );
}
