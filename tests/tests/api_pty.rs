//! `/pty` against a real agent: sessions, the 1-byte-opcode WebSocket,
//! tokens, output held until READY (bounded), exit frames, resize, the
//! 64-session limit, and SIGHUP-then-SIGKILL on delete.

mod api_support;

use std::time::{Duration, Instant};

use api_support::Client;
use futures_util::{SinkExt as _, StreamExt as _};
use sbx_tests::agent::Agent;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn client(agent: &Agent) -> Client {
    Client::new(agent.addr, agent.bearer())
}

fn create(c: &Client, body: Value) -> (String, String) {
    let r = c.post_json("/api/v1/pty", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (
        v["session_id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

async fn connect(
    agent: &Agent,
    id: &str,
    header_token: Option<&str>,
    query: &str,
) -> Result<Ws, u16> {
    let url = format!("ws://{}/api/v1/pty/{id}/ws{query}", agent.addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&agent.bearer()).unwrap(),
    );
    if let Some(t) = header_token {
        req.headers_mut()
            .insert("X-PTY-Token", HeaderValue::from_str(t).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("ws connect: {e}"),
    }
}

/// Output and exit collected from a session until it closes.
#[derive(Default, Debug)]
struct Collected {
    data: Vec<u8>,
    exit: Option<i32>,
    close_reason: Option<String>,
}

async fn collect(ws: &mut Ws, until: impl Fn(&Collected) -> bool) -> Collected {
    let mut c = Collected::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !until(&c) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("PTY output in time");
        match msg {
            Some(Ok(Message::Binary(b))) => match b[0] {
                0 => c.data.extend_from_slice(&b[1..]),
                3 => c.exit = Some(i32::from_be_bytes([b[1], b[2], b[3], b[4]])),
                op => panic!("unexpected opcode {op}"),
            },
            Some(Ok(Message::Close(frame))) => {
                c.close_reason = frame.map(|f| f.reason.to_string());
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    c
}

fn text(c: &Collected) -> String {
    String::from_utf8_lossy(&c.data).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lifecycle_ready_input_resize_exit() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let (id, token) = create(
        &c,
        json!({"command": "sh", "args": ["-c", "echo early-$((1+1)); read line; stty size; echo got:$line; exit 7"], "rows": 30, "cols": 100}),
    );
    assert_eq!(id.len(), 32);

    let listed = c.get("/api/v1/pty").json();
    assert!(listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["session_id"] == id.as_str()));
    let one = c.get(&format!("/api/v1/pty/{id}")).json();
    assert_eq!(
        (
            one["rows"].clone(),
            one["cols"].clone(),
            one["alive"].clone()
        ),
        (json!(30), json!(100), json!(true))
    );
    assert!(one.get("token").is_none(), "the token is never listed");

    // Output printed before anyone listened is held until READY.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ws = connect(&agent, &id, Some(&token), "").await.expect("ws");
    ws.send(Message::Binary(vec![2u8].into())).await.unwrap();
    let got = collect(&mut ws, |c| text(c).contains("early-2")).await;
    assert!(text(&got).contains("early-2"));

    // Resize by frame (cols, rows big-endian), then by HTTP.
    let mut resize = vec![1u8];
    resize.extend_from_slice(&120u16.to_be_bytes());
    resize.extend_from_slice(&40u16.to_be_bytes());
    ws.send(Message::Binary(resize.into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        c.post_json(
            &format!("/api/v1/pty/{id}/resize"),
            &json!({"rows": 50, "cols": 132})
        )
        .status,
        204
    );
    let mut input = vec![0u8];
    input.extend_from_slice(b"hello\n");
    ws.send(Message::Binary(input.into())).await.unwrap();
    let done = collect(&mut ws, |c| c.close_reason.is_some()).await;
    let out = text(&done);
    assert!(out.contains("50 132"), "{out:?}");
    assert!(out.contains("got:hello"), "{out:?}");
    assert_eq!(done.exit, Some(7));
    assert_eq!(done.close_reason.as_deref(), Some("exit:7"));
    let after = c.get(&format!("/api/v1/pty/{id}")).json();
    assert_eq!(after["alive"], false);
    assert_eq!(after["exit_code"], 7);
    assert_eq!(c.delete(&format!("/api/v1/pty/{id}")).status, 204);
    c.get(&format!("/api/v1/pty/{id}"))
        .assert_error(404, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_bad_requests() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let (id, token) = create(&c, json!({"command": "sleep", "args": ["30"]}));
    assert_eq!(connect(&agent, &id, None, "").await.err(), Some(403));
    assert_eq!(
        connect(&agent, &id, Some("wrong"), "").await.err(),
        Some(403)
    );
    assert_eq!(
        connect(&agent, &id, None, "?token=wrong").await.err(),
        Some(403)
    );
    assert_eq!(
        connect(&agent, "nope", Some(&token), "").await.err(),
        Some(404)
    );
    // The token in the query works as well as the header.
    let mut ws = connect(&agent, &id, None, &format!("?token={token}"))
        .await
        .expect("ws");
    ws.close(None).await.ok();
    let r = c.get(&format!("/api/v1/pty/{id}/ws?token=wrong"));
    r.assert_error(403, "INVALID_TOKEN");

    for body in [
        json!({"command": "sh", "rows": 0}),
        json!({"command": "sh", "rows": 501}),
        json!({"command": "sh", "cols": 0}),
        json!({"command": "sh", "cols": 1001}),
        json!({"command": "sh", "rows": -1}),
        json!({"rows": 10}),
        json!({"command": ""}),
        json!({"command": "/no/such/shell"}),
    ] {
        c.post_json("/api/v1/pty", &body)
            .assert_error(400, "BAD_REQUEST");
    }
    c.post_json(
        &format!("/api/v1/pty/{id}/resize"),
        &json!({"rows": 0, "cols": 10}),
    )
    .assert_error(400, "BAD_REQUEST");
    c.post_json("/api/v1/pty/nope/resize", &json!({"rows": 10, "cols": 10}))
        .assert_error(404, "NOT_FOUND");
    c.delete("/api/v1/pty/nope").assert_error(404, "NOT_FOUND");
    assert_eq!(c.delete(&format!("/api/v1/pty/{id}")).status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_before_ready_is_bounded() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let rss_before = agent.rss_kib();
    // 200 MiB of output with nobody listening.
    let (id, token) = create(
        &c,
        json!({"command": "sh", "args": ["-c", "head -c 209715200 /dev/zero | tr '\\0' x; echo; echo END-OF-FLOOD"]}),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.get(&format!("/api/v1/pty/{id}")).json()["alive"] == true {
        assert!(Instant::now() < deadline, "flood did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = agent.rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "agent RSS grew by {grown} KiB");
    let mut ws = connect(&agent, &id, Some(&token), "").await.expect("ws");
    ws.send(Message::Binary(vec![2u8].into())).await.unwrap();
    let got = collect(&mut ws, |c| c.close_reason.is_some()).await;
    assert!(
        got.data.len() <= 1024 * 1024,
        "pending output bounded: {}",
        got.data.len()
    );
    assert!(
        text(&got).contains("END-OF-FLOOD"),
        "the newest output is kept"
    );
    assert_eq!(got.exit, Some(0));
    assert_eq!(got.close_reason.as_deref(), Some("exit:0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_sessions_then_429_and_delete_hangs_up() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let mut ids = Vec::new();
    for _ in 0..64 {
        ids.push(create(&c, json!({"command": "sleep", "args": ["60"]})).0);
    }
    c.post_json("/api/v1/pty", &json!({"command": "sleep", "args": ["60"]}))
        .assert_error(429, "TOO_MANY_SESSIONS");
    let pids: Vec<u64> = ids
        .iter()
        .map(|id| {
            c.get(&format!("/api/v1/pty/{id}")).json()["pid"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(c.delete(&format!("/api/v1/pty/{}", ids[0])).status, 204);
    ids.remove(0);
    ids.push(create(&c, json!({"command": "sleep", "args": ["60"]})).0);
    for id in &ids {
        assert_eq!(c.delete(&format!("/api/v1/pty/{id}")).status, 204);
    }
    // A program that ignores SIGHUP is killed after the grace period.
    let (stubborn, _) = create(
        &c,
        json!({"command": "sh", "args": ["-c", "trap '' HUP; while :; do sleep 1; done"]}),
    );
    let stubborn_pid = c.get(&format!("/api/v1/pty/{stubborn}")).json()["pid"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.delete(&format!("/api/v1/pty/{stubborn}")).status, 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids.iter().chain(std::iter::once(&stubborn_pid)) {
        while alive(*pid) {
            assert!(
                Instant::now() < deadline,
                "PTY program {pid} survived delete"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(c.get("/api/v1/pty").json()["sessions"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_paste_into_cat_flows_both_ways() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let (id, token) = create(&c, json!({"command": "cat"}));
    let mut ws = connect(&agent, &id, Some(&token), "").await.expect("ws");
    ws.send(Message::Binary(vec![2u8].into())).await.unwrap();
    // 2 MB of lines: the terminal echoes them and cat prints them again, far
    // more than the terminal and the agent's queues hold, so input and
    // output must keep flowing at the same time.
    let (mut sink, mut stream) = ws.split();
    let sender = tokio::spawn(async move {
        for i in 0..20_000u32 {
            let mut frame = vec![0u8];
            frame.extend_from_slice(format!("{i:08} {}\n", "x".repeat(90)).as_bytes());
            sink.send(Message::Binary(frame.into())).await.unwrap();
        }
        sink.send(Message::Binary(vec![0u8, 4].into()))
            .await
            .unwrap(); // ^D
        sink
    });
    let mut seen = 0usize;
    let mut tail = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("PTY output keeps flowing");
        match msg {
            Some(Ok(Message::Binary(b))) if b[0] == 0 => {
                seen += b.len() - 1;
                tail.extend_from_slice(&b[1..]);
                if tail.len() > 4096 {
                    tail.drain(..tail.len() - 4096);
                }
            }
            Some(Ok(Message::Binary(b))) if b[0] == 3 => break,
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    let _sink = sender.await.unwrap();
    assert!(seen >= 2 * 20_000 * 100, "saw {seen} bytes");
    assert!(String::from_utf8_lossy(&tail).contains("00019999"));
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}
