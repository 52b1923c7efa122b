//! The redis registry with two proxies on one real redis-server (a unix
//! socket in a temp dir): propagation of writes, the name index, removals,
//! an outage and the recovery after it.
//!
//! Skipped with a message when redis-server is not installed, except in CI
//! (CI=true), where that is a failure.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sbx_proxy::registry::redis::RedisRegistry;
use sbx_proxy::registry::{Registry, RegistryError, Sandbox, SandboxSpec};

const PROPAGATION: Duration = Duration::from_secs(1);

/// A redis-server of our own, ended by its PID.
struct RedisServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// None when redis-server is missing and this is not CI.
    fn start() -> Option<Self> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is not installed (scripts/install-deps.sh installs it)"
            );
            eprintln!("SKIPPED: redis-server is not installed");
            return None;
        }
        let mut server = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        server.run();
        Some(server)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Starts (again) on the same socket, with the data written so far
    /// (append-only file, fsynced on every write).
    fn run(&mut self) {
        let dir = self.dir.path();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        wait_for(&self.socket(), &self.dir.path().join("redis.log"));
    }

    /// SIGTERM by PID, then reaped.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as libc::pid_t;
            // SAFETY: kill(2) on our own child's PID, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for(socket: &Path, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("redis-server did not start:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spec(json: &str) -> SandboxSpec {
    let body = format!(
        r#"{{"organization_id":"o","project_id":"p","forwarded_auth_key":"{}",{json}}}"#,
        "ab".repeat(32)
    );
    SandboxSpec::from_json(body.as_bytes()).expect("spec")
}

fn patch(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    json.as_object().expect("object").clone()
}

async fn pair(server: &RedisServer, ttl: Duration) -> (RedisRegistry, RedisRegistry) {
    let a = RedisRegistry::connect(&server.url(), "sbx-proxy", 16, ttl)
        .await
        .expect("proxy A connects");
    let b = RedisRegistry::connect(&server.url(), "sbx-proxy", 16, ttl)
        .await
        .expect("proxy B connects");
    (a, b)
}

/// Polls `registry` until `check` holds for what `key` resolves to; the
/// time it took.
async fn until(
    registry: &RedisRegistry,
    key: &str,
    within: Duration,
    check: impl Fn(Option<&Arc<Sandbox>>) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let found = registry.resolve(key).await.ok().flatten();
        if check(found.as_ref()) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{key}: not in force within {within:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// p50, p99, max.
fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_one_registry() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = pair(&server, Duration::from_secs(30)).await;

    // A put on A is visible on B, by id and by name.
    a.put(
        "sbx-1",
        spec(r#""name":"web","agent":"10.0.0.2:9501","exposed_ports":[8080]"#),
    )
    .await
    .expect("put");
    let first = b.resolve("sbx-1").await.unwrap().expect("B sees sbx-1");
    assert_eq!(first.spec.exposed_ports, vec![8080]);
    assert_eq!(
        b.resolve("web").await.unwrap().expect("by name").id,
        "sbx-1"
    );
    assert!(b.resolve("nothing").await.unwrap().is_none());

    // The id/name rules hold across proxies, with the embedded store's words.
    for (id, body, words) in [
        (
            "sbx-2",
            r#""name":"web""#,
            r#"name "web" is taken by sandbox "sbx-1""#,
        ),
        (
            "sbx-2",
            r#""name":"sbx-1""#,
            r#"name "sbx-1" is the id of another sandbox"#,
        ),
        (
            "web",
            r#""name":"other""#,
            r#"id "web" is the name of sandbox "sbx-1""#,
        ),
    ] {
        let body = format!(r#"{body},"agent":"10.0.0.3:9501""#);
        match b.put(id, spec(&body)).await {
            Err(RegistryError::Conflict(message)) => assert_eq!(message, words),
            other => panic!("{id} {body}: {other:?}"),
        }
    }
    assert!(matches!(
        b.put(
            "sbx-2",
            spec(r#""agent":"10.0.0.3:9501","exposed_ports":[9501]"#)
        )
        .await,
        Err(RegistryError::Invalid(_))
    ));
    assert!(matches!(
        b.patch("nothing", patch(serde_json::json!({"status": "running"})))
            .await,
        Err(RegistryError::NotFound(_))
    ));

    // A negative answer on B gives way to a new entry made on A.
    assert!(b.resolve("newbie").await.unwrap().is_none());
    a.put("sbx-3", spec(r#""name":"newbie","agent":"10.0.0.4:9501""#))
        .await
        .unwrap();
    until(&b, "newbie", PROPAGATION, |s| {
        s.is_some_and(|s| s.id == "sbx-3")
    })
    .await;

    // Patches through A are in force on B within a second: the figure is
    // from the start of the PATCH on A (its read and its write included)
    // to B answering with the new version.
    let mut took = Vec::new();
    let mut calls = Vec::new();
    for i in 0..200u16 {
        let port = 10_000 + i;
        let start = Instant::now();
        a.patch("web", patch(serde_json::json!({"exposed_ports": [port]})))
            .await
            .expect("patch");
        calls.push(start.elapsed());
        until(&b, "sbx-1", PROPAGATION, |s| {
            s.is_some_and(|s| s.spec.exposed_ports == [port])
        })
        .await;
        took.push(start.elapsed());
    }
    let (took, calls) = (percentiles(took), percentiles(calls));
    println!(
        "redis registry: PATCH on A in force on B: p50 {:?}, p99 {:?}, max {:?} over 200 patches (the PATCH call itself: p50 {:?}, p99 {:?})",
        took.0, took.1, took.2, calls.0, calls.1
    );
    assert!(took.1 < PROPAGATION);

    // Same agent and key: B's pooled connections survived every patch.
    let now = b.resolve("sbx-1").await.unwrap().unwrap();
    assert_eq!(now.live.upstream.generation, first.live.upstream.generation);
    assert!(!first.live.upstream.cancelled.is_cancelled());
    assert!(Arc::ptr_eq(&now.live.inflight, &first.live.inflight));

    // A rename moves the name on B; a new agent closes B's old pool.
    a.patch(
        "sbx-1",
        patch(serde_json::json!({"name": "site", "agent": "10.0.0.9:9501"})),
    )
    .await
    .unwrap();
    until(&b, "site", PROPAGATION, |s| {
        s.is_some_and(|s| s.id == "sbx-1")
    })
    .await;
    assert!(b.resolve("web").await.unwrap().is_none());
    assert!(first.live.upstream.cancelled.is_cancelled());

    // A removal through A evicts on B and closes its pool.
    let cached = b.resolve("sbx-1").await.unwrap().unwrap();
    assert!(a.remove("sbx-1").await.unwrap());
    assert!(!a.remove("sbx-1").await.unwrap());
    until(&b, "sbx-1", PROPAGATION, |s| s.is_none()).await;
    assert!(cached.live.upstream.cancelled.is_cancelled());
    assert!(b.resolve("site").await.unwrap().is_none());

    let ids: Vec<String> = b
        .list()
        .await
        .unwrap()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(ids, ["sbx-3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_recovery() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let ttl = Duration::from_millis(300);
    let (a, b) = pair(&server, ttl).await;
    a.put("sbx-1", spec(r#""name":"web","agent":"10.0.0.2:9501""#))
        .await
        .unwrap();
    a.put("sbx-2", spec(r#""agent":"10.0.0.3:9501""#))
        .await
        .unwrap();
    for key in ["sbx-1", "web", "sbx-2"] {
        assert!(b.resolve(key).await.unwrap().is_some());
    }

    server.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.is_connected() || b.is_connected() {
        assert!(Instant::now() < deadline, "the outage went unnoticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Past the TTL, both still route from their caches.
    tokio::time::sleep(ttl * 2).await;
    for registry in [&a, &b] {
        for key in ["sbx-1", "web", "sbx-2"] {
            let found = registry
                .resolve(key)
                .await
                .expect("answered from the cache");
            assert!(found.is_some(), "{key}");
        }
        // What is not cached is an error, not a 404.
        assert!(matches!(
            registry.resolve("sbx-9").await,
            Err(RegistryError::Store(_))
        ));
    }
    // Writes fail cleanly, and soon.
    let start = Instant::now();
    match a
        .patch("sbx-1", patch(serde_json::json!({"exposed_ports": [3000]})))
        .await
    {
        Err(RegistryError::Store(message)) => assert!(message.contains("redis"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        b.put("sbx-4", spec(r#""agent":"10.0.0.4:9501""#)).await,
        Err(RegistryError::Store(_))
    ));
    assert!(matches!(
        a.remove("sbx-2").await,
        Err(RegistryError::Store(_))
    ));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );

    // Back, on the same socket, with its data: a write through A reaches B.
    server.run();
    let restarted = Instant::now();
    let written = loop {
        match a
            .patch("web", patch(serde_json::json!({"exposed_ports": [3000]})))
            .await
        {
            Ok(_) => break Instant::now(),
            Err(RegistryError::Store(_)) if restarted.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no write after the restart: {e}"),
        }
    };
    let took = until(&b, "sbx-1", Duration::from_secs(3), |s| {
        s.is_some_and(|s| s.spec.exposed_ports == [3000])
    })
    .await;
    println!(
        "redis registry: after a restart, first write accepted in {:?}, in force on B {:?} later",
        written - restarted,
        took
    );
    assert!(took < Duration::from_secs(2));
    assert!(matches!(b.resolve("sbx-9").await, Ok(None)));
}

/// A notice missed while B's subscription was down (redis itself up) is
/// recovered by the resync that follows the reconnection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_notices_are_recovered() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = pair(&server, Duration::from_secs(30)).await;
    a.put("sbx-1", spec(r#""agent":"10.0.0.2:9501""#))
        .await
        .unwrap();
    assert!(b.resolve("sbx-1").await.unwrap().is_some());

    // Drop every subscriber, then write before they are back.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 2, "{killed}");
    a.patch("sbx-1", patch(serde_json::json!({"status": "suspended"})))
        .await
        .unwrap();
    let took = until(&b, "sbx-1", Duration::from_secs(3), |s| {
        s.is_some_and(|s| s.spec.status.as_str() == "suspended")
    })
    .await;
    println!("redis registry: a missed notice recovered after {took:?}");

    // Redis loses its data (its version counter starts again): the next
    // write still wins over what B cached.
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    a.put("sbx-1", spec(r#""agent":"10.0.0.7:9501""#))
        .await
        .unwrap();
    until(&b, "sbx-1", PROPAGATION, |s| {
        s.is_some_and(|s| s.spec.agent.to_string() == "10.0.0.7:9501")
    })
    .await;
}
