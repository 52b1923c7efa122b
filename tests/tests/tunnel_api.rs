//! The tunnel endpoint's contract against a real agent process, driven by
//! tungstenite (a WebSocket implementation that is not ours): status codes,
//! auth, text frames, ping/pong, frame cap, tunnel limit and shutdown.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sbx_proto::auth::FORWARDED_AUTH_HEADER;
use sbx_tests::agent::Agent;
use sbx_tests::servers::{echo_server, free_port};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the tunnel with the given auth header; returns the socket or the
/// refusal's status, code and message.
async fn open(
    agent: &Agent,
    query: &str,
    auth: Option<(&str, String)>,
) -> Result<Ws, (u16, Option<String>, String)> {
    let mut request = agent.ws_url(query).into_client_request().expect("request");
    if let Some((name, value)) = auth {
        request
            .headers_mut()
            .insert(http_name(name), value.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, response)) => {
            assert_eq!(response.status(), 101);
            Ok(ws)
        }
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().clone().unwrap_or_default();
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
                panic!(
                    "error body is not JSON: {:?}",
                    String::from_utf8_lossy(&body)
                )
            });
            let code = parsed["code"].as_str().map(str::to_owned);
            let message = parsed["error"].as_str().expect("error message").to_owned();
            Err((status, code, message))
        }
        Err(other) => panic!("unexpected handshake failure: {other}"),
    }
}

fn http_name(name: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    name.parse().expect("header name")
}

fn bearer(agent: &Agent) -> Option<(&'static str, String)> {
    Some(("authorization", agent.bearer()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_ports_with_400_invalid_port() {
    let agent = Agent::start(&[]);
    for query in [
        "",
        "?",
        "?port=",
        "?port=abc",
        "?port=0",
        "?port=-1",
        "?port=65536",
        "?port=99999999999999999999",
        "?port=1.5",
        "?port=%2080",
        "?port=80&port=81",
    ] {
        let err = open(&agent, query, bearer(&agent))
            .await
            .err()
            .unwrap_or_else(|| panic!("{query} was accepted"));
        assert_eq!(err.0, 400, "{query}: {err:?}");
        assert_eq!(err.1.as_deref(), Some("INVALID_PORT"), "{query}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_missing_and_bad_credentials_with_401() {
    let agent = Agent::start(&[]);
    let (echo, _h) = echo_server().await;
    let query = format!("?port={}", echo.port());
    let other_sandbox = agent.secrets.forwarded_token("sbx-someone-else", 300);
    let expired = agent
        .secrets
        .forwarded_token(&agent.secrets.sandbox_id, -3600);
    let other_key = sbx_proto::auth::ForwardedAuthKey::from_bytes([9; 32])
        .mint(&agent.secrets.sandbox_id, 4_000_000_000);
    let cases: Vec<(&str, Option<(&str, String)>)> = vec![
        ("no credentials", None),
        (
            "wrong bearer",
            Some(("authorization", "Bearer not-the-token-at-all".into())),
        ),
        (
            "basic scheme",
            Some(("authorization", format!("Basic {}", agent.secrets.token))),
        ),
        (
            "token for another sandbox",
            Some((FORWARDED_AUTH_HEADER, other_sandbox)),
        ),
        ("expired token", Some((FORWARDED_AUTH_HEADER, expired))),
        (
            "token from another key",
            Some((FORWARDED_AUTH_HEADER, other_key)),
        ),
        (
            "garbage token",
            Some((FORWARDED_AUTH_HEADER, "v1.123.abc".into())),
        ),
    ];
    for (what, auth) in cases {
        let err = open(&agent, &query, auth)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what} was accepted"));
        assert_eq!(err.0, 401, "{what}: {err:?}");
        assert_eq!(err.1.as_deref(), Some("UNAUTHORIZED"), "{what}");
    }
    // Auth comes before anything else: a bad port without credentials is 401.
    let Err(err) = open(&agent, "?port=0", None).await else {
        panic!("a bad port without credentials was accepted");
    };
    assert_eq!(err.0, 401);

    // Both good credential kinds work.
    let valid = agent
        .secrets
        .forwarded_token(&agent.secrets.sandbox_id, 300);
    open(&agent, &query, Some((FORWARDED_AUTH_HEADER, valid)))
        .await
        .expect("forwarded auth");
    open(&agent, &query, bearer(&agent)).await.expect("bearer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_public_and_everything_else_needs_auth() {
    let agent = Agent::start(&[]);
    let get = |path: &str, auth: bool| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
        if auth {
            cmd.args(["-H", &format!("Authorization: {}", agent.bearer())]);
        }
        let out = cmd
            .arg(format!("{}{path}", agent.url()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get("/api/v1/health", false), "200");
    assert_eq!(get("/api/v1/info", false), "401");
    assert_eq!(get("/api/v1/info", true), "200");
    assert_eq!(get("/api/v1/no-such-route", false), "401");
    assert_eq!(get("/api/v1/no-such-route", true), "404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_502_before_any_upgrade() {
    let agent = Agent::start(&[]);
    let port = free_port();
    let Err(err) = open(&agent, &format!("?port={port}"), bearer(&agent)).await else {
        panic!("a port with nothing listening was accepted");
    };
    assert_eq!(err.0, 502, "{err:?}");
    assert_eq!(err.1.as_deref(), Some("CONNECTION_REFUSED"));
    assert!(
        err.2.contains(&port.to_string()),
        "message names the port: {}",
        err.2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_relay_verbatim_and_pings_get_pongs() {
    let agent = Agent::start(&[]);
    let (echo, _h) = echo_server().await;
    let mut ws = open(&agent, &format!("?port={}", echo.port()), bearer(&agent))
        .await
        .expect("open");
    let payload: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    ws.send(Message::Binary(payload.clone().into()))
        .await
        .expect("send");
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let mut echoed = Vec::new();
    let mut ponged = false;
    while echoed.len() < payload.len() || !ponged {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no stall")
        {
            Some(Ok(Message::Binary(b))) => echoed.extend_from_slice(&b),
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"are you there");
                ponged = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, payload);
    ws.close(None).await.expect("close");
    // After our Close the agent half-closes the echo server, which finishes,
    // and the agent answers with its own Close.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("closes")
        {
            Some(Ok(Message::Close(frame))) => {
                assert_eq!(frame.map(|f| f.code), Some(CloseCode::Normal));
                break;
            }
            Some(Ok(Message::Binary(b))) => panic!("unexpected data {} bytes", b.len()),
            None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_frame_closes_with_1003() {
    let agent = Agent::start(&[]);
    let (echo, _h) = echo_server().await;
    let mut ws = open(&agent, &format!("?port={}", echo.port()), bearer(&agent))
        .await
        .expect("open");
    ws.send(Message::Text("hello".into())).await.expect("send");
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("answer")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(Message::Binary(b))) => panic!("text was relayed: {b:?}"),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Unsupported));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_with_1009() {
    let agent = Agent::start(&["--max-frame-size", "65536"]);
    let (echo, _h) = echo_server().await;
    let mut ws = open(&agent, &format!("?port={}", echo.port()), bearer(&agent))
        .await
        .expect("open");
    ws.send(Message::Binary(vec![1u8; 65536].into()))
        .await
        .expect("at the cap");
    ws.send(Message::Binary(vec![2u8; 65537].into()))
        .await
        .expect("over the cap");
    let mut echoed = 0usize;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("answer")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(Message::Binary(b))) => {
                assert!(
                    b.iter().all(|&x| x == 1),
                    "bytes of the oversized frame were relayed"
                );
                echoed += b.len();
            }
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert!(echoed <= 65536);
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Size));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_limit_answers_429() {
    let agent = Agent::start(&["--max-tunnels", "2"]);
    let (echo, _h) = echo_server().await;
    let query = format!("?port={}", echo.port());
    let a = open(&agent, &query, bearer(&agent)).await.expect("first");
    let _b = open(&agent, &query, bearer(&agent)).await.expect("second");
    let Err(err) = open(&agent, &query, bearer(&agent)).await else {
        panic!("a third tunnel beyond --max-tunnels 2 was accepted");
    };
    assert_eq!(err.0, 429);
    assert_eq!(err.1.as_deref(), Some("TOO_MANY_TUNNELS"));
    drop(a);
    // The slot comes back once the agent sees the first tunnel end.
    let mut reopened = false;
    for _ in 0..50 {
        if open(&agent, &query, bearer(&agent)).await.is_ok() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened, "tunnel slot was not released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_tunnels_with_1001_and_exits() {
    let mut agent = Agent::start(&[]);
    let (echo, _h) = echo_server().await;
    let mut ws = open(&agent, &format!("?port={}", echo.port()), bearer(&agent))
        .await
        .expect("open");
    agent.process.signal(15);
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("answer")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    let status = agent
        .process
        .wait_timeout(Duration::from_secs(10))
        .expect("agent exits");
    assert!(status.success(), "agent exit status {status:?}");
}
