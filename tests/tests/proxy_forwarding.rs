//! What a service inside the sandbox receives through sbx-proxy (SPEC 6,
//! "What the sandbox sees"): an echo service answers with the request line
//! and headers exactly as they arrived, so the test sees the platform
//! credentials the proxy consumed are gone (and nothing else is), the
//! X-Forwarded-* headers, the original Host, and the path and query byte for
//! byte, over HTTP/1.1, HTTP/2 and h2c.

use sbx_tests::proxy_support::{Echo, ProxyWorld, ORG, PROJECT};

const PATH: &str = "/a%2Fb/./c//d?x=1&x=2&y=%20";
/// With organization/project query parameters that are not the context.
const PATH_WITH_CONTEXT: &str = "/a%2Fb/./c//d?x=1&x=2&y=%20&organizationId=o&projectId=p";

fn world(public: bool) -> Option<ProxyWorld> {
    let mut w = ProxyWorld::start()?;
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "echo", 8080);
    w.expose(&[8080], public);
    Some(w)
}

/// GET `PATH` on 8080-web with `--path-as-is` (curl would squash `/./`).
fn echo(w: &ProxyWorld, proto: &str, headers: &[&str]) -> Echo {
    echo_path(w, proto, PATH, headers)
}

fn echo_path(w: &ProxyWorld, proto: &str, path: &str, headers: &[&str]) -> Echo {
    let url = match proto {
        "h2c" => w.http("8080-web.sbx.test", path),
        _ => w.https("8080-web.sbx.test", path),
    };
    let mut args = vec!["--path-as-is"];
    match proto {
        "h2" => args.push("--http2"),
        "h2c" => args.push("--http2-prior-knowledge"),
        _ => args.push("--http1.1"),
    }
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(&url);
    let r = w.curl(&args);
    let expected = if proto == "h1" { "1.1" } else { "2" };
    assert_eq!(
        r.version, expected,
        "{proto}: curl spoke HTTP/{}",
        r.version
    );
    r.echo()
}

#[track_caller]
fn assert_absent(e: &Echo, names: &[&str]) {
    for name in names {
        assert!(
            e.get(name).is_none(),
            "{name} reached the service: {:?}",
            e.headers
        );
    }
}

#[test]
fn consumed_credentials_are_removed_and_the_rest_arrives_intact() {
    let Some(w) = world(false) else { return };
    let port = w.https_port();
    let key = w.bearer();
    let [org, project] = w.context_headers();
    let forged = format!(
        "X-Sandbox-Forwarded-Auth: {}",
        w.sandbox().secrets.forwarded_token("sbx-alpha", 60)
    );
    for proto in ["h1", "h2", "h2c"] {
        // API key: Authorization consumed, the target untouched.
        let e = echo(
            &w,
            proto,
            &[&key, &forged, "X-Custom: kept", "Cookie: a=1; b=2"],
        );
        assert_eq!(e.server, "sbx-alpha");
        assert_eq!(e.target, PATH, "{proto}: the target changed");
        assert_absent(&e, &["authorization", "x-sandbox-forwarded-auth"]);
        assert_eq!(e.get("x-custom"), Some("kept"));
        assert_eq!(
            e.cookies(),
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        let listener_port = if proto == "h2c" { w.http_port() } else { port };
        let host = format!("8080-web.sbx.test:{listener_port}");
        assert_eq!(e.all("host"), [host.as_str()], "{proto}: Host not kept");
        let xff = e.get("x-forwarded-for").unwrap_or_default();
        assert!(
            xff.ends_with("127.0.0.1"),
            "{proto}: X-Forwarded-For {xff:?}"
        );
        let scheme = if proto == "h2c" { "http" } else { "https" };
        assert_eq!(e.get("x-forwarded-proto"), Some(scheme), "{proto}");
        let xfh = e.get("x-forwarded-host").unwrap_or_default();
        assert!(
            xfh.starts_with("8080-web.sbx.test"),
            "{proto}: X-Forwarded-Host {xfh:?}"
        );

        // PAT plus context headers; platform cookies among others.
        let pat = format!("Authorization: Bearer {}", w.creds.pat);
        let cookie = "Cookie: a=1; tl.session_token=zzz; b=2; tl-session=yyy; c=3";
        let e = echo(&w, proto, &[&pat, &org, &project, cookie]);
        assert_eq!(e.target, PATH, "{proto}");
        assert_absent(
            &e,
            &[
                "authorization",
                "x-forwarded-organization-id",
                "x-forwarded-project-id",
            ],
        );
        let cookies: Vec<String> = e
            .cookies()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(cookies, ["a=1", "b=2", "c=3"], "{proto}: cookies");

        // Session cookie plus context headers: the cookie goes, others stay.
        let cookie = format!("Cookie: keep=me; tl.session_token={}", w.creds.session);
        let e = echo(&w, proto, &[&cookie, &org, &project]);
        assert_absent(
            &e,
            &[
                "authorization",
                "x-forwarded-organization-id",
                "x-forwarded-project-id",
            ],
        );
        assert_eq!(e.cookies(), [("keep".into(), "me".into())], "{proto}");
        let e = echo(
            &w,
            proto,
            &[
                &format!("Cookie: tl-session={}", w.creds.session),
                &org,
                &project,
            ],
        );
        assert!(e.cookies().is_empty(), "{proto}: {:?}", e.headers);
    }
}

#[test]
fn hop_by_hop_headers_go_and_bodies_arrive_whole() {
    let Some(w) = world(false) else { return };
    let key = w.bearer();
    let url = w.https("8080-web.sbx.test", "/upload");
    // Headers named in Connection are hop-by-hop.
    let e = w
        .curl(&[
            "--http1.1",
            "-H",
            &key,
            "-H",
            "Connection: X-Hop",
            "-H",
            "X-Hop: secret",
            &url,
        ])
        .echo();
    assert_absent(&e, &["x-hop"]);

    // Bodies: fixed length and chunked over HTTP/1.1, and over HTTP/2.
    let body = w.path("body.bin");
    let data: Vec<u8> = (0..(3 << 20) as u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&body, &data).expect("write body");
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    let at = format!("@{}", body.display());
    for extra in [
        vec!["--http1.1"],
        vec!["--http1.1", "-H", "Transfer-Encoding: chunked"],
        vec!["--http2"],
    ] {
        let mut args = extra.clone();
        args.extend(["-H", &key, "-X", "POST", "--data-binary", &at, &url]);
        let e = w.curl(&args).echo();
        assert_eq!(
            (e.body_len, e.body_sha256.as_str()),
            (data.len() as u64, digest.as_str()),
            "{extra:?}"
        );
        assert_eq!(e.method, "POST");
    }
}

#[test]
fn public_ports_forward_the_request_as_sent() {
    let Some(w) = world(true) else { return };
    let forged = format!(
        "X-Sandbox-Forwarded-Auth: {}",
        w.sandbox().secrets.forwarded_token("sbx-alpha", 60)
    );
    let e = echo(
        &w,
        "h1",
        &[
            "Authorization: Basic dXNlcjpwYXNz",
            "Cookie: sid=app-cookie",
            &forged,
        ],
    );
    // Not the platform's credentials: the application's own, kept as sent.
    assert_eq!(e.get("authorization"), Some("Basic dXNlcjpwYXNz"));
    assert_eq!(e.cookies(), [("sid".into(), "app-cookie".into())]);
    assert_eq!(e.target, PATH);
    // A forwarded-auth header from a client never passes.
    assert_absent(&e, &["x-sandbox-forwarded-auth"]);

    // X-Forwarded-* from the client cannot stand in for the proxy's own.
    let e = echo(
        &w,
        "h1",
        &[
            "X-Forwarded-For: 203.0.113.9",
            "X-Forwarded-Proto: http",
            "X-Forwarded-Host: evil.example",
        ],
    );
    let xff = e.all("x-forwarded-for").join(", ");
    assert!(xff.ends_with("127.0.0.1"), "X-Forwarded-For {xff:?}");
    assert_eq!(e.all("x-forwarded-proto"), ["https"], "{:?}", e.headers);
    let xfh = e.all("x-forwarded-host");
    assert!(
        xfh.len() == 1 && xfh[0].starts_with("8080-web.sbx.test"),
        "X-Forwarded-Host {xfh:?}"
    );

    // Routing headers are removed even when they route.
    let url = w.http("elsewhere.example", PATH);
    let e = w
        .curl(&[
            "--path-as-is",
            "-H",
            "X-Tensorlake-Sandbox-Id: web",
            "-H",
            "X-Tensorlake-Sandbox-Port: 8080",
            &url,
        ])
        .echo();
    assert_absent(
        &e,
        &["x-tensorlake-sandbox-id", "x-tensorlake-sandbox-port"],
    );
    assert_eq!(e.target, PATH);
}

#[test]
fn forged_forwarded_auth_never_opens_the_agent() {
    let Some(w) = world(true) else { return };
    // A token minted with the sandbox's real key, sent by a client: without
    // platform credentials it is refused (the proxy removes it, then 401).
    let forged = format!(
        "X-Sandbox-Forwarded-Auth: {}",
        w.sandbox().secrets.forwarded_token("sbx-alpha", 60)
    );
    w.get("web.sbx.test", "/api/v1/info", &[&forged])
        .assert_error(401, "UNAUTHORIZED");
    // With an API key and an expired forged token, the proxy's own fresh
    // token is what the agent sees.
    let expired = format!(
        "X-Sandbox-Forwarded-Auth: {}",
        w.sandbox().secrets.forwarded_token("sbx-alpha", -3600)
    );
    w.get("web.sbx.test", "/api/v1/info", &[&w.bearer(), &expired])
        .assert_status(200);
}

#[test]
fn context_query_parameters_are_removed_only_when_used() {
    let Some(w) = world(false) else { return };
    let key = w.bearer();
    for proto in ["h1", "h2"] {
        // A session cookie with the context in the query: those two pairs
        // go, the rest stays byte for byte.
        let cookie = format!("Cookie: tl.session_token={}", w.creds.session);
        let used = format!("{PATH}&organizationId={ORG}&projectId={PROJECT}");
        let e = echo_path(&w, proto, &used, &[&cookie]);
        assert_eq!(e.target, PATH, "{proto}: context parameters");
        let middle = format!("/p?organizationId={ORG}&z=%2F&projectId={PROJECT}&q");
        let e = echo_path(&w, proto, &middle, &[&cookie]);
        assert_eq!(
            e.target, "/p?z=%2F&q",
            "{proto}: context parameters in the middle"
        );
        // An API key carries its own context: organizationId/projectId in
        // the query are the application's, forwarded byte for byte.
        let e = echo_path(&w, proto, PATH_WITH_CONTEXT, &[&key]);
        assert_eq!(
            e.target, PATH_WITH_CONTEXT,
            "{proto}: parameters not used as context were removed"
        );
    }
}

#[test]
fn platform_credentials_never_reach_a_public_port() {
    let Some(w) = world(true) else { return };
    // A browser logged in to the platform sends its session cookie to every
    // sandbox under the domain; a caller may send its API key anywhere.
    // "Code in a sandbox never receives its caller's platform credential."
    let [org, project] = w.context_headers();
    let cookie = format!(
        "Cookie: a=1; tl.session_token={}; tl-session={}; b=2",
        w.creds.session, w.creds.session
    );
    // The application's own bearer tokens are not the platform's: kept.
    let e = echo(&w, "h1", &["Authorization: Bearer app-token-123"]);
    assert_eq!(e.get("authorization"), Some("Bearer app-token-123"));
    for proto in ["h1", "h2"] {
        let e = echo(&w, proto, &[&w.bearer(), &cookie, &org, &project]);
        let leaked: Vec<&str> = [&w.creds.api_key, &w.creds.session]
            .into_iter()
            .filter(|secret| e.headers.iter().any(|(_, v)| v.contains(secret.as_str())))
            .map(|s| s.as_str())
            .collect();
        assert!(
            leaked.is_empty(),
            "{proto}: public port received {leaked:?}: {:?}",
            e.headers
        );
        let cookies: Vec<String> = e
            .cookies()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(cookies, ["a=1", "b=2"], "{proto}");
    }
}
