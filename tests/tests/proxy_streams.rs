//! Long-lived streams through sbx-proxy with clients that are not ours:
//! WebSocket echo (python `websockets`) up to a 16 MiB message, the agent's
//! TCP tunnel and a PTY session through the proxy's management route, and
//! gRPC (grpcio, generic handlers) over TLS and h2c with server streaming,
//! error statuses and trailing metadata.

use std::time::Duration;

use sbx_tests::proxy_support::ProxyWorld;

#[test]
fn websocket_echo_with_a_16_mib_message() {
    let Some(mut w) = ProxyWorld::start() else {
        return;
    };
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "ws", 8765);
    w.expose(&[8765], false);
    let ca = w.tls.ca.display().to_string();
    let key = w.bearer();
    let wss = w
        .https("8765-web.sbx.test", "/echo?q=1")
        .replace("https:", "wss:");
    let ws = w
        .http("8765-web.sbx.test", "/echo?q=1")
        .replace("http:", "ws:");
    for url in [&wss, &ws] {
        let out = w.py(
            "proxy_ws_client.py",
            &[
                "echo",
                url,
                "--ca",
                &ca,
                "--header",
                &key,
                "--big-mib",
                "16",
            ],
            Duration::from_secs(120),
        );
        assert!(out.contains("ok 16 MiB message echoed"), "{out}");
        let seen: serde_json::Value =
            serde_json::from_str(out.lines().last().expect("output")).expect("json");
        assert_eq!(seen["path"], "/echo?q=1", "{seen}");
        let has = |name: &str| {
            seen["headers"]
                .as_array()
                .expect("headers")
                .iter()
                .any(|h| h[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
        };
        assert!(
            !has("authorization"),
            "the API key reached the service: {seen}"
        );
        assert!(has("sec-websocket-key") && has("upgrade"), "{seen}");
    }
    // Clients that die with their WebSockets open (no close frame, the
    // kernel closes the sockets): the proxy closes the service's side too.
    for url in [&wss, &ws] {
        let out = w.py(
            "proxy_ws_client.py",
            &[
                "abandon", url, "--ca", &ca, "--header", &key, "--count", "5",
            ],
            Duration::from_secs(60),
        );
        assert!(out.contains("ok 5 connections open"), "{out}");
        let out = w.py(
            "proxy_ws_client.py",
            &["open", url, "--ca", &ca, "--header", &key, "--expect", "1"],
            Duration::from_secs(60),
        );
        assert_eq!(
            out.trim(),
            "1",
            "connections left open at the service by dead clients"
        );
    }

    // Public port: no credentials needed for the upgrade either.
    w.expose(&[8765], true);
    w.py(
        "proxy_ws_client.py",
        &["echo", &wss, "--ca", &ca],
        Duration::from_secs(60),
    );
}

#[test]
fn agent_tunnel_and_pty_through_the_proxy() {
    let Some(mut w) = ProxyWorld::start() else {
        return;
    };
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "tcp-upper", 7000);
    let ca = w.tls.ca.display().to_string();
    let key = w.bearer();
    // The tunnel is the agent's endpoint: port 7000 need not be exposed.
    for base in [
        w.https("sbx-alpha.sbx.test", ""),
        w.https("web.sbx.test", ""),
        w.http("sbx-alpha.local", ""),
    ] {
        let url = format!("{base}/api/v1/tunnels/tcp?port=7000")
            .replacen("https:", "wss:", 1)
            .replacen("http:", "ws:", 1);
        let out = w.py(
            "proxy_ws_client.py",
            &["tunnel", &url, "--ca", &ca, "--header", &key],
            Duration::from_secs(60),
        );
        assert!(out.contains("ok tunnel closed"), "{out}");
        // Without credentials: 401 before any upgrade.
        w.py(
            "proxy_ws_client.py",
            &["status", &url, "--ca", &ca, "--expect", "401"],
            Duration::from_secs(30),
        );
    }
    // The agent's own refusal (nothing on the port) comes through as is.
    let refused = w
        .https("web.sbx.test", "/api/v1/tunnels/tcp?port=7001")
        .replace("https:", "wss:");
    let out = w.py(
        "proxy_ws_client.py",
        &[
            "status", &refused, "--ca", &ca, "--header", &key, "--expect", "502",
        ],
        Duration::from_secs(30),
    );
    assert!(out.contains("CONNECTION_REFUSED"), "{out}");

    let out = w.py(
        "proxy_ws_client.py",
        &[
            "pty",
            &w.https("web.sbx.test", ""),
            "--ca",
            &ca,
            "--header",
            &key,
        ],
        Duration::from_secs(60),
    );
    assert!(out.contains("ok pty exit 3"), "{out}");
}

#[test]
fn grpc_over_tls_and_h2c() {
    let Some(mut w) = ProxyWorld::start() else {
        return;
    };
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "grpc", 50051);
    w.expose(&[50051], false);
    let ca = w.tls.ca.display().to_string();
    let key = w.creds.api_key.clone();
    for (mode, port) in [("tls", w.https_port()), ("h2c", w.http_port())] {
        let out = w.py(
            "proxy_grpc_client.py",
            &[mode, &port.to_string(), "50051-web.sbx.test", &ca, &key],
            Duration::from_secs(90),
        );
        for check in [
            "ok unary with trailing metadata",
            "ok server streaming",
            "ok error status, details and trailers",
            "ok 8 MiB response",
            "ok bidirectional streaming, one message at a time",
            "ok no credentials: UNAUTHENTICATED",
        ] {
            assert!(out.contains(check), "{mode}: missing {check:?} in {out}");
        }
    }
}
