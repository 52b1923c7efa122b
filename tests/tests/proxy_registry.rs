//! sbx-proxy's sandbox registry: the admin API on its unix socket and the
//! `sbx-proxy sandbox` CLI, bad bodies refused with a 400 naming the field
//! (and nothing changed), the registry surviving a restart, the socket's
//! mode, and configurations the proxy must refuse to start with.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sbx_tests::bins::bin;
use sbx_tests::proxy_support::{output_within, ProxyWorld, WorldOptions};
use serde_json::{json, Value};

/// None when `r` is a 400 BAD_REQUEST whose message names `field`.
fn names(r: &sbx_tests::proxy_support::HttpResponse, field: &str, what: &str) -> Option<String> {
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let msg = body["error"].as_str().unwrap_or("");
    if r.status == 400 && body["code"] == "BAD_REQUEST" && msg.contains(field) {
        return None;
    }
    Some(format!(
        "{what}: expected 400 BAD_REQUEST naming {field:?}, got {} {}",
        r.status,
        r.text()
    ))
}

#[test]
fn bad_registry_bodies_are_400_naming_the_field() {
    let opts = WorldOptions {
        sandboxes: vec![
            ("sbx-alpha".into(), Some("web".into())),
            ("sbx-beta".into(), None),
        ],
        ..WorldOptions::default()
    };
    let Some(w) = ProxyWorld::with(opts) else {
        return;
    };
    let mode = std::fs::metadata(w.admin_socket())
        .expect("admin socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {:o}", mode & 0o777);
    let before = w.admin("GET", "/v1/sandboxes/sbx-alpha", None).json();
    let base = w.default_entry(0);
    let with = |field: &str, value: Value| {
        let mut e = base.clone();
        e[field] = value;
        e
    };
    let without = |field: &str| {
        let mut e = base.clone();
        e.as_object_mut().expect("object").remove(field);
        e
    };
    let cases: Vec<(&str, &str, Value)> = vec![
        ("name", "name with digits-", with("name", json!("123-web"))),
        (
            "name",
            "name = another sandbox's id",
            with("name", json!("sbx-beta")),
        ),
        ("name", "upper-case name", with("name", json!("Web"))),
        ("exposed_ports", "port 0", with("exposed_ports", json!([0]))),
        (
            "exposed_ports",
            "port 65536",
            with("exposed_ports", json!([65536])),
        ),
        (
            "exposed_ports",
            "port 9501",
            with("exposed_ports", json!([8080, 9501])),
        ),
        (
            "exposed_ports",
            "port as a string",
            with("exposed_ports", json!(["8080"])),
        ),
        (
            "organization_id",
            "no organization",
            without("organization_id"),
        ),
        ("project_id", "no project", without("project_id")),
        (
            "agent",
            "agent not an address",
            with("agent", json!("not an address")),
        ),
        ("agent", "no agent", without("agent")),
        (
            "status",
            "unknown status",
            with("status", json!("sleeping")),
        ),
        (
            "allow_unauthenticated_access",
            "not a bool",
            with("allow_unauthenticated_access", json!("yes")),
        ),
        (
            "forwarded_auth_key_file",
            "missing key file",
            with("forwarded_auth_key_file", json!("/nonexistent/key")),
        ),
        ("colour", "unknown field", with("colour", json!("blue"))),
    ];
    let mut errors = Vec::new();
    for (field, what, entry) in &cases {
        errors.extend(names(&w.put(entry), field, what));
    }
    let mut key = without("forwarded_auth_key_file");
    key["forwarded_auth_key"] = json!("xyz");
    errors.extend(names(
        &w.put(&key),
        "forwarded_auth_key",
        "short inline key",
    ));
    // Ids: in the path.
    let mut bad_id = without("name");
    for id in ["Bad-Id", "sbx_alpha", "-x", "8080-x"] {
        bad_id["id"] = json!(id);
        errors.extend(names(&w.put(&bad_id), "id", &format!("id {id:?}")));
    }
    // Not JSON at all.
    let r = w.admin("PUT", "/v1/sandboxes/sbx-alpha", Some("{not json"));
    if r.status != 400 {
        errors.push(format!("not JSON: {} {}", r.status, r.text()));
    }
    // PATCH: same validation, and 404 for an unknown sandbox.
    errors.extend(names(
        &w.patch("sbx-alpha", json!({"exposed_ports": [9501]})),
        "exposed_ports",
        "patch 9501",
    ));
    errors.extend(names(
        &w.patch("sbx-alpha", json!({"name": "sbx-beta"})),
        "name",
        "patch name = id",
    ));
    // An id equal to another sandbox's name is the same ambiguity.
    let mut clash = without("name");
    clash["id"] = json!("web");
    errors.extend(names(&w.put(&clash), "web", "id = another sandbox's name"));
    assert!(errors.is_empty(), "registry input: {errors:#?}");
    let r = w.patch("nope", json!({"exposed_ports": [8080]}));
    assert_eq!(r.status, 404, "{}", r.text());
    // Nothing changed.
    assert_eq!(
        w.admin("GET", "/v1/sandboxes/sbx-alpha", None).json(),
        before
    );
    // The key never shows.
    let text = w.admin("GET", "/v1/sandboxes", None).text();
    assert!(
        !text.contains(&w.sandbox().secrets.key.to_hex()),
        "key leaked: {text}"
    );
}

#[test]
fn registry_crud_cli_and_restart() {
    let Some(mut w) = ProxyWorld::start() else {
        return;
    };
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "echo", 8080);
    // The CLI: put from stdin, show, list, patch, rm.
    let entry = w.default_entry(0);
    let mut body = entry.clone();
    body.as_object_mut().expect("object").remove("id");
    body["exposed_ports"] = json!([8080, 3000]);
    body["allow_unauthenticated_access"] = json!(true);
    let out = w.sandbox_cli(
        &["put", "sbx-alpha", "--json", "-"],
        Some(&body.to_string()),
    );
    assert!(
        out.status.success(),
        "put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w.sandbox_cli(&["show", "sbx-alpha"], None);
    assert!(
        out.status.success(),
        "show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).expect("show prints JSON");
    assert_eq!(
        shown["exposed_ports"],
        json!([3000, 8080]),
        "sorted: {shown}"
    );
    assert_eq!(shown["name"], "web");
    let out = w.sandbox_cli(&["list"], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("sbx-alpha"));
    let out = w.sandbox_cli(
        &["patch", "sbx-alpha", "--json", "-"],
        Some(r#"{"exposed_ports": [8080]}"#),
    );
    assert!(
        out.status.success(),
        "patch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w.sandbox_cli(
        &["put", "sbx-alpha", "--json", "-"],
        Some(r#"{"exposed_ports": [0]}"#),
    );
    assert!(!out.status.success(), "a bad put through the CLI succeeded");
    assert_eq!(
        w.get("8080-web.sbx.test", "/", &[]).echo().server,
        "sbx-alpha"
    );
    let listed = w.admin("GET", "/v1/sandboxes", None).json();
    assert_eq!(
        listed["sandboxes"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    // A restart keeps the registry: same entry, same routing.
    let before = w.admin("GET", "/v1/sandboxes/sbx-alpha", None).json();
    w.restart_proxy();
    assert_eq!(
        w.admin("GET", "/v1/sandboxes/sbx-alpha", None).json(),
        before
    );
    assert_eq!(
        w.get("8080-web.sbx.test", "/", &[]).echo().server,
        "sbx-alpha"
    );
    w.get("web.sbx.test", "/api/v1/info", &[&w.bearer()])
        .assert_status(200);

    // Delete: 204, then gone for the API and for routing (also after a restart).
    let r = w.admin("DELETE", "/v1/sandboxes/sbx-alpha", None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(w.admin("GET", "/v1/sandboxes/sbx-alpha", None).status, 404);
    w.get("8080-web.sbx.test", "/", &[])
        .assert_error(404, "SANDBOX_NOT_FOUND");
    let out = w.sandbox_cli(&["rm", "sbx-alpha"], None);
    assert!(!out.status.success(), "rm of a deleted sandbox succeeded");
    w.restart_proxy();
    w.get("8080-web.sbx.test", "/", &[])
        .assert_error(404, "SANDBOX_NOT_FOUND");
}

#[test]
fn bad_configurations_stop_the_proxy_at_startup() {
    let Some(w) = ProxyWorld::start() else { return };
    // Its own admin socket and state: the running proxy's are not touched.
    let good = w
        .config_text()
        .replace("admin.sock", "bad-admin.sock")
        .replace("/state\"", "/bad-state\"");
    let cases = [
        (
            "unknown key",
            format!("{good}colour = \"blue\"\n"),
            "colour",
        ),
        (
            "https without a cert",
            good.replace("tls_cert", "# tls_cert"),
            "tls_cert",
        ),
        (
            "unreadable key",
            good.replace(&w.tls.key.display().to_string(), "/nonexistent/key.pem"),
            "/nonexistent/key.pem",
        ),
        (
            "bad listen address",
            good.replace("listen_http = \"127.0.0.1:0\"", "listen_http = \"nowhere\""),
            "listen_http",
        ),
    ];
    for (what, text, needle) in cases {
        let file = w.path("bad.toml");
        std::fs::write(&file, text).expect("write");
        let out = output_within(
            w.host_cmd(bin("sbx-proxy").to_str().expect("utf-8"))
                .args(["serve", "--config"])
                .arg(&file),
            Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: started anyway");
        assert!(
            stderr.contains(needle),
            "{what}: stderr does not name {needle:?}: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("ready"),
            "{what}: said ready"
        );
    }
}
