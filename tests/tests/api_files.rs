//! `/files` against a real agent: round trips, listings, every error code,
//! atomic replacement, aborted uploads, and 2 GiB streamed each way with
//! the agent's memory watched.

mod api_support;

use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use api_support::{read_head, read_response, Client};
use sbx_tests::agent::Agent;
use sbx_tests::servers::{noise_digest, Noise};
use serde_json::json;
use sha2::{Digest, Sha256};

fn client(agent: &Agent) -> Client {
    Client::new(agent.addr, agent.bearer())
}

/// `/api/v1/files?path=<p>` with the path percent-encoded.
fn files(p: &Path) -> String {
    format!("/api/v1/files?path={}", encode(&p.to_string_lossy()))
}

fn list(p: &Path) -> String {
    format!("/api/v1/files/list?path={}", encode(&p.to_string_lossy()))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn write_read_list_delete() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a b/nested/deep/data.bin");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(c.request("PUT", &files(&file), &[], &payload).status, 204);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        payload,
        "parents created, content exact"
    );
    let r = c.get(&files(&file));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, payload);
    assert_eq!(r.header("content-length"), Some("300000"));

    // Overwrite keeps the mode of the file it replaces.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(c.request("PUT", &files(&file), &[], b"short").status, 204);
    assert_eq!(std::fs::read(&file).unwrap(), b"short");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // Empty files are files too.
    let empty = dir.path().join("empty");
    assert_eq!(c.request("PUT", &files(&empty), &[], b"").status, 204);
    assert_eq!(c.get(&files(&empty)).body, b"");

    std::fs::create_dir(dir.path().join("zdir")).unwrap();
    std::fs::write(dir.path().join("Afile"), b"12345").unwrap();
    let listing = c.get(&list(dir.path())).json();
    assert_eq!(listing["path"], dir.path().to_string_lossy().as_ref());
    let names: Vec<_> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["is_dir"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("a b".into(), true),
            ("zdir".into(), true),
            ("Afile".into(), false),
            ("empty".into(), false)
        ]
    );
    let afile = &listing["entries"][2];
    assert_eq!(afile["size"], 5);
    assert!(afile["modified_at"].as_u64().unwrap() > 1_600_000_000_000);

    assert_eq!(c.delete(&files(&file)).status, 204);
    assert!(!file.exists());
    c.get(&files(&file)).assert_error(404, "NOT_FOUND");
    c.delete(&files(&file)).assert_error(404, "NOT_FOUND");
    let sub = dir.path().join("a b");
    c.delete(&files(&sub)).assert_error(400, "IS_DIRECTORY");
    assert_eq!(
        c.delete(&format!("{}&recursive=true", files(&sub))).status,
        204
    );
    assert!(!sub.exists());
    // No temporary files left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().contains("sbx-upload")),
        "{left:?}"
    );
}

#[test]
fn error_codes() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();

    c.get("/api/v1/files").assert_error(400, "BAD_REQUEST");
    c.get("/api/v1/files?path=")
        .assert_error(400, "BAD_REQUEST");
    c.request("PUT", "/api/v1/files", &[], b"x")
        .assert_error(400, "BAD_REQUEST");
    c.delete("/api/v1/files").assert_error(400, "BAD_REQUEST");
    c.get("/api/v1/files/list").assert_error(400, "BAD_REQUEST");
    c.get("/api/v1/files?path=relative/path")
        .assert_error(400, "BAD_REQUEST");

    for traversal in ["/tmp/../etc/passwd", "/..", "/tmp/x/../../etc"] {
        let q = format!("/api/v1/files?path={}", encode(traversal));
        c.get(&q).assert_error(403, "PATH_TRAVERSAL");
        c.request("PUT", &q, &[], b"x")
            .assert_error(403, "PATH_TRAVERSAL");
        c.delete(&q).assert_error(403, "PATH_TRAVERSAL");
        c.get(&format!("/api/v1/files/list?path={}", encode(traversal)))
            .assert_error(403, "PATH_TRAVERSAL");
    }
    assert!(!Path::new("/etc/x").exists());

    c.get(&files(&dir.path().join("missing")))
        .assert_error(404, "NOT_FOUND");
    c.get(&list(&dir.path().join("missing")))
        .assert_error(404, "NOT_FOUND");
    c.get(&files(dir.path())).assert_error(400, "IS_DIRECTORY");
    c.request("PUT", &files(dir.path()), &[], b"x")
        .assert_error(400, "IS_DIRECTORY");
    c.get(&list(&file)).assert_error(400, "NOT_A_DIRECTORY");
    c.request("PUT", &files(&file.join("below")), &[], b"x")
        .assert_error(400, "NOT_A_DIRECTORY");
    c.get(&files(&file.join("below")))
        .assert_error(400, "NOT_A_DIRECTORY");
}

/// Sends a PUT head announcing `len` bytes and returns the open socket.
fn start_upload(c: &Client, path: &Path, len: u64) -> std::net::TcpStream {
    let mut s = c.connect();
    c.send_head(&mut s, "PUT", &files(path), &[], Some(len));
    s
}

#[test]
fn readers_never_see_half_a_file_and_aborted_uploads_leave_nothing() {
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config");
    std::fs::write(&file, b"old content").unwrap();

    let new = vec![b'n'; 4 * 1024 * 1024];
    let mut s = start_upload(&c, &file, new.len() as u64);
    s.write_all(&new[..new.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Half-way through the upload, readers still see the old file whole.
    assert_eq!(c.get(&files(&file)).body, b"old content");
    assert_eq!(std::fs::read(&file).unwrap(), b"old content");
    s.write_all(&new[new.len() / 2..]).unwrap();
    let r = read_response(s);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(std::fs::read(&file).unwrap(), new);

    // A client that vanishes mid-upload changes nothing.
    let mut s = start_upload(&c, &file, 10 * 1024 * 1024);
    s.write_all(&[b'x'; 1024 * 1024]).unwrap();
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if names == ["config"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partial upload left behind: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(&file).unwrap(), new);
}

#[test]
fn two_gibibytes_stream_both_ways_in_bounded_memory() {
    const LEN: u64 = 2 << 30;
    const SEED: u64 = 42;
    let agent = Agent::start(&[]);
    let c = client(&agent);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    let rss_before = agent.rss_kib();

    let mut s = start_upload(&c, &file, LEN);
    let mut noise = Noise::new(SEED);
    let mut buf = vec![0u8; 1024 * 1024];
    let mut sent = 0;
    let mut peak = 0;
    while sent < LEN {
        noise.fill(&mut buf);
        s.write_all(&buf).unwrap();
        sent += buf.len() as u64;
        if sent % (256 << 20) == 0 {
            peak = peak.max(agent.rss_kib());
        }
    }
    let r = read_response(s);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), LEN);

    let mut s = c.connect();
    c.send_head(&mut s, "GET", &files(&file), &[], None);
    let mut reader = BufReader::with_capacity(1024 * 1024, s);
    let (status, headers) = read_head(&mut reader);
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("content-length") && v == &LEN.to_string()));
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        got += n as u64;
        if got % (256 << 20) < n as u64 {
            peak = peak.max(agent.rss_kib());
        }
    }
    assert_eq!(got, LEN);
    assert_eq!(hex::encode(hasher.finalize()), noise_digest(LEN, SEED));
    let grown = peak.saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "agent RSS grew by {grown} KiB moving 2 GiB"
    );
    assert_eq!(c.get("/api/v1/health").json(), json!({"healthy": true}));
}
