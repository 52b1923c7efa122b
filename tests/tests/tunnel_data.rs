//! Bytes through `sbx tunnel` and the agent: integrity at volume, many
//! tunnels at once, half-close in both directions, and bounded memory when
//! a reader stalls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sbx_tests::agent::{rss_kib, Agent, SbxTunnel};
use sbx_tests::servers::{
    digest_server, digest_to_eof, echo_server, noise_digest, noise_server, send_noise, serve, Noise,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_arrives_intact() {
    let agent = Agent::start(&[]);
    let (sink, _s) = digest_server().await;
    let (source, _n) = noise_server(GIB, 0xD0_11_A4).await;
    let up = SbxTunnel::start(&agent, sink.port());
    let down = SbxTunnel::start(&agent, source.port());

    let upload = async {
        let mut conn = TcpStream::connect(up.local).await.expect("connect up");
        let sent = send_noise(&mut conn, GIB, 0x5EED).await.expect("upload");
        conn.shutdown().await.expect("half-close");
        let mut answer = String::new();
        conn.read_to_string(&mut answer)
            .await
            .expect("digest answer");
        (sent, answer)
    };
    let download = async {
        let mut conn = TcpStream::connect(down.local).await.expect("connect down");
        digest_to_eof(&mut conn).await.expect("download")
    };
    let ((sent, answer), (got, got_len)) = tokio::join!(upload, download);
    assert_eq!(
        answer,
        format!("{sent} {GIB}"),
        "upload: server saw other bytes"
    );
    assert_eq!(got_len, GIB, "download length");
    assert_eq!(
        got,
        noise_digest(GIB, 0xD0_11_A4),
        "download: client saw other bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_tunnels_each_move_one_mib() {
    let agent = Agent::start(&[]);
    let (echo, _e) = echo_server().await;
    let tunnel = SbxTunnel::start(&agent, echo.port());
    let local = tunnel.local;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000u64 {
        tasks.spawn(async move {
            let conn = TcpStream::connect(local)
                .await
                .map_err(|e| format!("{i}: connect: {e}"))?;
            let (mut r, mut w) = conn.into_split();
            let writer = async move {
                let sent = send_noise(&mut w, MIB, i + 1).await?;
                w.shutdown().await?;
                Ok::<_, std::io::Error>(sent)
            };
            let (sent, got) = tokio::join!(writer, digest_to_eof(&mut r));
            let sent = sent.map_err(|e| format!("{i}: send: {e}"))?;
            let (got, len) = got.map_err(|e| format!("{i}: receive: {e}"))?;
            if len != MIB || got != sent {
                return Err(format!(
                    "{i}: got {len} bytes, digest match {}",
                    got == sent
                ));
            }
            Ok(())
        });
    }
    let mut failures = Vec::new();
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result.expect("task panicked") {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 1000 failed, first: {:?}",
        failures.len(),
        failures.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_still_gets_whole_response() {
    let agent = Agent::start(&[]);
    // Request/response: read the request to EOF, then answer with 4 MiB.
    let (server, _s) = serve(|mut conn| async move {
        let mut request = Vec::new();
        if conn.read_to_end(&mut request).await.is_err() || request != b"GET everything" {
            return;
        }
        let _ = send_noise(&mut conn, 4 * MIB, 77).await;
        let _ = conn.shutdown().await;
    })
    .await;
    let tunnel = SbxTunnel::start(&agent, server.port());
    let mut conn = TcpStream::connect(tunnel.local).await.expect("connect");
    conn.write_all(b"GET everything").await.expect("request");
    conn.shutdown().await.expect("half-close");
    let (digest, len) = tokio::time::timeout(Duration::from_secs(20), digest_to_eof(&mut conn))
        .await
        .expect("response in time")
        .expect("response");
    assert_eq!(len, 4 * MIB);
    assert_eq!(digest, noise_digest(4 * MIB, 77));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_half_close_still_gets_whole_upload() {
    let agent = Agent::start(&[]);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64)>();
    // The service sends a banner, closes its write side, then reads the upload.
    let (server, _s) = serve(move |mut conn| {
        let tx = tx.clone();
        async move {
            let _ = conn.write_all(b"banner, then I only listen").await;
            let _ = conn.shutdown().await;
            if let Ok(result) = digest_to_eof(&mut conn).await {
                let _ = tx.send(result);
            }
        }
    })
    .await;
    let tunnel = SbxTunnel::start(&agent, server.port());
    let mut conn = TcpStream::connect(tunnel.local).await.expect("connect");
    let mut banner = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut banner))
        .await
        .expect("banner and EOF in time")
        .expect("banner");
    assert_eq!(banner, b"banner, then I only listen");
    let sent = send_noise(&mut conn, 8 * MIB, 99)
        .await
        .expect("upload after EOF");
    conn.shutdown().await.expect("half-close");
    let mut rx = rx;
    let (got, len) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("server finished in time")
        .expect("server result");
    assert_eq!(len, 8 * MIB);
    assert_eq!(got, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_keeps_agent_and_client_memory_bounded() {
    const STREAMS: usize = 8;
    let agent = Agent::start(&[]);
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    // A service that writes as fast as it is allowed to, forever.
    let (flood, _f) = serve(move |mut conn| {
        let counter = counter.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            Noise::new(5).fill(&mut buf);
            while conn.write_all(&buf).await.is_ok() {
                counter.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
        }
    })
    .await;
    let tunnel = SbxTunnel::start(&agent, flood.port());
    let agent_before = agent.rss_kib();
    let sbx_before = rss_kib(tunnel.process.pid());

    let mut conns = Vec::new();
    for _ in 0..STREAMS {
        conns.push(TcpStream::connect(tunnel.local).await.expect("connect"));
    }
    // Nobody reads: the flood must stall once the socket buffers are full.
    let mut last = 0;
    let mut stalled = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = written.load(Ordering::Relaxed);
        if now > 0 && now == last {
            stalled = true;
            break;
        }
        last = now;
    }
    let total = written.load(Ordering::Relaxed);
    assert!(
        stalled,
        "service kept writing with no reader: {} MiB",
        total / MIB
    );
    let agent_growth = agent.rss_kib().saturating_sub(agent_before);
    let sbx_growth = rss_kib(tunnel.process.pid()).saturating_sub(sbx_before);
    eprintln!(
        "stalled after {} MiB in socket buffers; agent RSS +{agent_growth} KiB, sbx RSS +{sbx_growth} KiB",
        total / MIB
    );
    // Only kernel socket buffers hold the backlog; the relays hold at most
    // a chunk per direction per tunnel.
    assert!(agent_growth < 16 * 1024, "agent grew {agent_growth} KiB");
    assert!(sbx_growth < 16 * 1024, "sbx grew {sbx_growth} KiB");
    assert!(
        total < (STREAMS as u64) * 64 * MIB,
        "{} MiB buffered",
        total / MIB
    );

    // Reading again resumes the flow.
    let mut buf = vec![0u8; 1024 * 1024];
    let mut got = 0usize;
    while got < 32 * MIB as usize {
        let n = tokio::time::timeout(Duration::from_secs(10), conns[0].read(&mut buf))
            .await
            .expect("flow resumes")
            .expect("read");
        assert!(n > 0, "tunnel ended");
        got += n;
    }
}
