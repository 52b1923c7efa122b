//! sbx-proxy's access decision (SPEC 6), step by step and in order, with
//! real credentials minted by its CLI, curl as the client and a real agent
//! and services inside a sandbox namespace: 404 before 401, 9501 always
//! authenticated, public exposed ports open to anyone, the three credential
//! kinds with their organization/project context, 403 for ports not exposed,
//! and every error code a sandbox in trouble produces.

use sbx_tests::proxy_support::{ProxyWorld, ORG, OTHER_ORG, OTHER_PROJECT, PROJECT};
use serde_json::json;

/// A sandbox with echo services on 8080 and 8082; 8080 and 8083 (where
/// nothing listens) exposed, not public.
fn world() -> Option<ProxyWorld> {
    let mut w = ProxyWorld::start()?;
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "echo", 8080);
    w.sandbox_mut().service(&py, "echo", 8082);
    w.expose(&[8080, 8083], false);
    Some(w)
}

#[track_caller]
fn assert_unauthorized(r: &sbx_tests::proxy_support::HttpResponse) {
    r.assert_error(401, "UNAUTHORIZED");
    assert!(
        r.header("www-authenticate").is_some(),
        "401 without WWW-Authenticate: {:?}",
        r.headers
    );
}

#[test]
fn access_decision_follows_the_spec_order() {
    let Some(w) = world() else { return };
    let key = w.bearer();
    let other_key = format!("Authorization: Bearer {}", w.creds.other_api_key);
    let [org, project] = w.context_headers();

    // 1. Unknown id or name: 404, whatever the credentials.
    for host in ["nope.sbx.test", "8080-nope.sbx.test"] {
        w.get(host, "/api/v1/health", &[])
            .assert_error(404, "SANDBOX_NOT_FOUND");
        w.get(host, "/", &[&key])
            .assert_error(404, "SANDBOX_NOT_FOUND");
    }

    // 2. The agent's port needs auth, even for a health check.
    assert_unauthorized(&w.get("web.sbx.test", "/api/v1/health", &[]));
    assert_unauthorized(&w.get("web.sbx.test", "/api/v1/info", &[]));
    let info = w.get("web.sbx.test", "/api/v1/info", &[&key]);
    info.assert_status(200);
    assert!(info.json()["version"].is_string(), "{}", info.text());
    w.get("web.sbx.test", "/api/v1/health", &[&key])
        .assert_status(200);

    // 4. A private exposed port: 401 without, 200 with an API key.
    assert_unauthorized(&w.get("8080-web.sbx.test", "/", &[]));
    let bad_key = "Authorization: Bearer not-a-key";
    assert_unauthorized(&w.get("8080-web.sbx.test", "/", &[bad_key]));
    assert_eq!(
        w.get("8080-web.sbx.test", "/", &[&key]).echo().server,
        "sbx-alpha"
    );

    // The name and the id reach the same sandbox, on both kinds of port.
    assert_eq!(
        w.get("8080-sbx-alpha.sbx.test", "/", &[&key]).echo().server,
        "sbx-alpha"
    );
    w.get("sbx-alpha.sbx.test", "/api/v1/info", &[&key])
        .assert_status(200);

    // A valid key of another project: 404, the sandbox is not revealed.
    w.get("8080-web.sbx.test", "/", &[&other_key])
        .assert_error(404, "SANDBOX_NOT_FOUND");
    w.get("web.sbx.test", "/api/v1/info", &[&other_key])
        .assert_error(404, "SANDBOX_NOT_FOUND");

    // A PAT needs the organization/project context.
    let pat = format!("Authorization: Bearer {}", w.creds.pat);
    assert_unauthorized(&w.get("8080-web.sbx.test", "/", &[&pat]));
    w.get("8080-web.sbx.test", "/", &[&pat, &org, &project])
        .echo();
    w.get("web.sbx.test", "/api/v1/info", &[&pat, &org, &project])
        .assert_status(200);
    // Another user's PAT in its own project: valid, but not this sandbox's.
    let bob = format!("Authorization: Bearer {}", w.creds.other_pat);
    let bob_org = format!("X-Forwarded-Organization-Id: {OTHER_ORG}");
    let bob_project = format!("X-Forwarded-Project-Id: {OTHER_PROJECT}");
    w.get("8080-web.sbx.test", "/", &[&bob, &bob_org, &bob_project])
        .assert_error(404, "SANDBOX_NOT_FOUND");
    // ... and claiming a project he is not a member of gets him nowhere.
    let r = w.get("8080-web.sbx.test", "/", &[&bob, &org, &project]);
    assert!(
        r.status == 401 || r.status == 404,
        "non-member PAT with our context: {} {}",
        r.status,
        r.text()
    );

    // A session cookie (current and legacy name) plus the context.
    let cookie = format!("Cookie: tl.session_token={}", w.creds.session);
    let legacy = format!("Cookie: tl-session={}", w.creds.session);
    assert_unauthorized(&w.get("8080-web.sbx.test", "/", &[&cookie]));
    w.get("8080-web.sbx.test", "/", &[&cookie, &org, &project])
        .echo();
    w.get("8080-web.sbx.test", "/", &[&legacy, &org, &project])
        .echo();
    let forged = "Cookie: tl.session_token=forged-session";
    assert_unauthorized(&w.get("8080-web.sbx.test", "/", &[forged, &org, &project]));

    // 5. Authenticated, but the port is not exposed: 403 (unauthenticated: 401).
    w.get("8082-web.sbx.test", "/", &[&key])
        .assert_error(403, "PORT_NOT_EXPOSED");
    assert_unauthorized(&w.get("8082-web.sbx.test", "/", &[]));

    // Exposed but nothing listens inside the sandbox.
    w.get("8083-web.sbx.test", "/", &[&key])
        .assert_error(502, "PORT_NOT_LISTENING");

    // 3. Public: the exposed port answers anyone; 9501 and unexposed ports do not.
    w.expose(&[8080, 8083], true);
    assert_eq!(
        w.get("8080-web.sbx.test", "/", &[]).echo().server,
        "sbx-alpha"
    );
    assert_unauthorized(&w.get("web.sbx.test", "/api/v1/info", &[]));
    assert_unauthorized(&w.get("web.sbx.test", "/api/v1/health", &[]));
    assert_unauthorized(&w.get("8082-web.sbx.test", "/", &[]));
    w.get("8082-web.sbx.test", "/", &[&key])
        .assert_error(403, "PORT_NOT_EXPOSED");
    w.get("8080-nope.sbx.test", "/", &[])
        .assert_error(404, "SANDBOX_NOT_FOUND");
    // The agent's port spelled as a user port never slips past auth.
    for r in [
        w.get("9501-web.sbx.test", "/api/v1/info", &[]),
        w.get(
            "sbx.test",
            "/api/v1/info",
            &[
                "X-Tensorlake-Sandbox-Id: web",
                "X-Tensorlake-Sandbox-Port: 9501",
            ],
        ),
    ] {
        assert!(
            [400, 401, 403].contains(&r.status),
            "9501 as a user port without credentials: {} {}",
            r.status,
            r.text()
        );
    }
}

#[test]
fn credentials_added_later_work_after_sighup_and_sessions_expire() {
    let Some(w) = world() else { return };
    let [org, project] = w.context_headers();
    let key = w.credentials(&["add-api-key", "--org", ORG, "--project", PROJECT]);
    let minted = std::time::Instant::now();
    let short = w.credentials(&["add-session", "--user", "alice", "--ttl-secs", "5"]);
    w.reload();
    let bearer = format!("Authorization: Bearer {key}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.get("8080-web.sbx.test", "/", &[&bearer]).status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "a key added before SIGHUP is not accepted"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The keys minted before the reload still work.
    w.get("8080-web.sbx.test", "/", &[&w.bearer()]).echo();
    // A session with a 5 s lifetime: accepted while young, refused once expired.
    let cookie = format!("Cookie: tl.session_token={short}");
    let r = w.get("8080-web.sbx.test", "/", &[&cookie, &org, &project]);
    if minted.elapsed() < std::time::Duration::from_secs(4) {
        r.echo();
    }
    std::thread::sleep(std::time::Duration::from_secs(6).saturating_sub(minted.elapsed()));
    assert_unauthorized(&w.get("8080-web.sbx.test", "/", &[&cookie, &org, &project]));
}

#[test]
fn routing_headers_and_local_domain_reach_the_same_sandbox() {
    let Some(w) = world() else { return };
    let key = w.bearer();
    // X-Tensorlake-Sandbox-Id with any Host: the management API by default,
    // a user port with X-Tensorlake-Sandbox-Port; by id or by name.
    for ident in ["sbx-alpha", "web"] {
        let id = format!("X-Tensorlake-Sandbox-Id: {ident}");
        // TLS on the domain's apex, and any Host at all on the plain listener.
        let info_plain = w.http("anything.example", "/api/v1/info");
        let root_plain = w.http("anything.example", "/");
        let via = |path: &str, plain: &str, extra: &[&str]| {
            let mut headers = vec![id.as_str(), key.as_str()];
            headers.extend(extra);
            let mut args = Vec::new();
            for h in &headers {
                args.extend(["-H", h]);
            }
            args.push(plain);
            [w.get("sbx.test", path, &headers), w.curl(&args)]
        };
        for r in via("/api/v1/info", &info_plain, &[]) {
            r.assert_status(200);
        }
        for r in via("/", &root_plain, &["X-Tensorlake-Sandbox-Port: 8080"]) {
            let echo = r.echo();
            assert_eq!(echo.server, "sbx-alpha");
            assert!(
                echo.get("x-tensorlake-sandbox-id").is_none()
                    && echo.get("x-tensorlake-sandbox-port").is_none(),
                "routing headers reached the service: {:?}",
                echo.headers
            );
        }
        for r in via("/", &root_plain, &["X-Tensorlake-Sandbox-Port: 8082"]) {
            r.assert_error(403, "PORT_NOT_EXPOSED");
        }
    }
    w.get(
        "sbx.test",
        "/api/v1/info",
        &["X-Tensorlake-Sandbox-Id: nope", &key],
    )
    .assert_error(404, "SANDBOX_NOT_FOUND");
    // Host: <id>.local (the SDK's localhost mode), plain listener.
    let url = w.http("sbx-alpha.local", "/api/v1/info");
    w.curl(&["-H", &key, &url]).assert_status(200);
    let url = w.http("8080-sbx-alpha.local", "/");
    assert_eq!(w.curl(&["-H", &key, &url]).echo().server, "sbx-alpha");
    // The same over the plain listener with the public domain.
    let url = w.http("8080-web.sbx.test", "/");
    assert_eq!(w.curl(&["-H", &key, &url]).echo().server, "sbx-alpha");
}

#[test]
fn sandboxes_in_trouble_get_their_error_codes() {
    let Some(mut w) = world() else { return };
    let key = w.bearer();
    let id = w.sandbox().id.clone();

    // Not running: 503 at once, for the agent and for user ports.
    for status in ["suspended", "pending", "terminated"] {
        w.patch_ok(&id, json!({"status": status}));
        for host in ["web.sbx.test", "8080-web.sbx.test"] {
            let started = std::time::Instant::now();
            w.get(host, "/api/v1/info", &[&key])
                .assert_error(503, "SANDBOX_NOT_RUNNING");
            assert!(
                started.elapsed().as_secs() < 5,
                "503 for {status} was not immediate"
            );
        }
    }
    w.patch_ok(&id, json!({"status": "running"}));
    w.get("web.sbx.test", "/api/v1/info", &[&key])
        .assert_status(200);

    // Browsers get a small HTML page instead of JSON.
    let html = w.get(
        "nope.sbx.test",
        "/",
        &["Accept: text/html,application/xhtml+xml"],
    );
    html.assert_status(404);
    assert!(
        html.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        html.headers
    );
    assert!(
        html.text().to_ascii_lowercase().contains("<html"),
        "{}",
        html.text()
    );
    let r = w.get("8080-web.sbx.test", "/", &["Accept: text/html"]);
    r.assert_status(401);
    assert!(
        r.text().to_ascii_lowercase().contains("<html"),
        "{}",
        r.text()
    );

    // The agent is gone: 502 SANDBOX_UNREACHABLE, promptly; back when it is.
    w.sandbox_mut().stop_agent();
    for host in ["web.sbx.test", "8080-web.sbx.test"] {
        let started = std::time::Instant::now();
        w.get(host, "/api/v1/info", &[&key])
            .assert_error(502, "SANDBOX_UNREACHABLE");
        assert!(started.elapsed().as_secs() < 5, "{host}: slow 502");
    }
    w.sandbox_mut().start_agent();
    w.get("web.sbx.test", "/api/v1/info", &[&key])
        .assert_status(200);
    w.get("8080-web.sbx.test", "/", &[&key]).echo();

    // An agent address the host has no route to.
    w.patch_ok(&id, json!({"agent": "10.77.255.254:9501"}));
    let started = std::time::Instant::now();
    w.get("web.sbx.test", "/api/v1/info", &[&key])
        .assert_error(502, "SANDBOX_UNREACHABLE");
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn websocket_with_session_cookie_and_query_context() {
    let Some(mut w) = ProxyWorld::start() else {
        return;
    };
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "ws", 8765);
    w.expose(&[8765], false);
    let ca = w.tls.ca.display().to_string();
    let url = w
        .https("8765-web.sbx.test", "/chat?room=1&organizationId=")
        .replace("https:", "wss:")
        + &format!("{ORG}&projectId={PROJECT}&x=2");
    let cookie = format!(
        "Cookie: theme=dark; tl.session_token={}; other=1",
        w.creds.session
    );
    let out = w.py(
        "proxy_ws_client.py",
        &["echo", &url, "--ca", &ca, "--header", &cookie],
        std::time::Duration::from_secs(60),
    );
    let seen: serde_json::Value =
        serde_json::from_str(out.lines().last().expect("output")).expect("json");
    // The context came from the query: it is removed, the rest stays as sent.
    assert_eq!(seen["path"], "/chat?room=1&x=2", "{seen}");
    let headers = seen["headers"].as_array().expect("headers");
    let cookies: Vec<&str> = headers
        .iter()
        .filter(|h| {
            h[0].as_str()
                .is_some_and(|k| k.eq_ignore_ascii_case("cookie"))
        })
        .map(|h| h[1].as_str().unwrap_or(""))
        .collect();
    let joined = cookies.join("; ");
    assert!(
        !joined.contains("tl.session_token"),
        "session cookie forwarded: {joined}"
    );
    assert!(
        joined.contains("theme=dark") && joined.contains("other=1"),
        "{joined}"
    );

    // Without the cookie the upgrade is refused with 401.
    w.py(
        "proxy_ws_client.py",
        &["status", &url, "--ca", &ca, "--expect", "401"],
        std::time::Duration::from_secs(30),
    );
    // With the cookie but no context anywhere: 401 too.
    let bare = w
        .https("8765-web.sbx.test", "/chat")
        .replace("https:", "wss:");
    w.py(
        "proxy_ws_client.py",
        &[
            "status", &bare, "--ca", &ca, "--header", &cookie, "--expect", "401",
        ],
        std::time::Duration::from_secs(30),
    );
}
