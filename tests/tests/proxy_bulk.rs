//! 1 GiB each way through sbx-proxy with the SHA-256 equal at both ends,
//! while the proxy's resident memory stays bounded: uploads and downloads
//! through the agent's files API (HTTP/1.1 over TLS) and through a user port
//! (HTTP/2 over TLS: a python upload sink and `python -m http.server`).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use sbx_tests::proxy_support::{output_within, ProxyWorld, RssSampler};
use sbx_tests::servers::Noise;
use sha2::{Digest, Sha256};

const GIB: u64 = 1 << 30;
/// The proxy may hold buffers, not bodies.
const MAX_RSS_KIB: u64 = 100 * 1024;
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);

/// Writes `len` bytes of noise to `path`; returns their SHA-256.
fn write_noise(path: &Path, len: u64) -> String {
    let mut file =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("create"));
    let mut noise = Noise::new(42);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(left as usize);
        noise.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    file.flush().expect("flush");
    hex::encode(hasher.finalize())
}

fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).expect("open");
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).expect("hash");
    hex::encode(hasher.finalize())
}

/// `curl ... URL | sha256sum` in the host namespace: the digest of the body.
fn download_digest(w: &ProxyWorld, flag: &str, host: &str, path: &str) -> String {
    let url = w.https(host, path);
    let script = format!(
        "set -o pipefail 2>/dev/null; curl -sS --fail {flag} --cacert '{ca}' --resolve {host}:{port}:127.0.0.1 \
         -H 'Authorization: Bearer {key}' '{url}' | sha256sum",
        ca = w.tls.ca.display(),
        port = w.https_port(),
        key = w.creds.api_key,
    );
    let out = output_within(w.host_cmd("bash").args(["-c", &script]), TRANSFER_TIMEOUT);
    assert!(
        out.status.success(),
        "download {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn one_gib_each_way_with_bounded_proxy_memory() {
    let Some(mut w) = ProxyWorld::start() else {
        return;
    };
    let serve = w.path("serve");
    std::fs::create_dir_all(&serve).expect("mkdir");
    let py = w.python.clone();
    let py_s = py.display().to_string();
    let serve_s = serve.display().to_string();
    // Its tracebacks for clients that leave early (the slow reader) are noise.
    let script = format!(
        "exec '{py_s}' -m http.server 8080 --bind 127.0.0.1 --directory '{serve_s}' 2>/dev/null"
    );
    w.sandbox_mut()
        .spawn("http.server", "sh", &["-c", &script], None);
    w.sandbox_mut().service(&py, "echo", 8081);
    w.sandbox().wait_port(8080);
    w.expose(&[8080, 8081], false);

    let started = Instant::now();
    let big = serve.join("big.bin");
    let digest = write_noise(&big, GIB);
    eprintln!("1 GiB of noise written in {:?}", started.elapsed());
    let key = w.bearer();
    let sampler = RssSampler::start(w.proxy_pid());
    let at = big.display().to_string();

    // Upload to the agent's files API, HTTP/1.1 over TLS.
    let t = Instant::now();
    let dest = w.path("uploaded.bin");
    let url = w.https(
        "web.sbx.test",
        &format!("/api/v1/files?path={}", dest.display()),
    );
    let r = w.curl_within(
        &["--http1.1", "-H", &key, "-T", &at, &url],
        TRANSFER_TIMEOUT,
    );
    r.assert_status(204);
    assert_eq!(sha256_file(&dest), digest, "files API upload differs");
    eprintln!("upload via files API: {:?}", t.elapsed());
    std::fs::remove_file(&dest).expect("rm");

    // Upload to a user port, HTTP/2 over TLS (the sink hashes what it reads).
    let t = Instant::now();
    let url = w.https("8081-web.sbx.test", "/_/upload");
    let e = w
        .curl_within(&["--http2", "-H", &key, "-T", &at, &url], TRANSFER_TIMEOUT)
        .echo();
    assert_eq!(
        (e.body_len, e.body_sha256.as_str()),
        (GIB, digest.as_str()),
        "user-port upload"
    );
    eprintln!("upload via user port (h2): {:?}", t.elapsed());

    // Download from a user port over HTTP/2, and from the files API.
    let t = Instant::now();
    assert_eq!(
        download_digest(&w, "--http2", "8080-web.sbx.test", "/big.bin"),
        digest
    );
    eprintln!("download via user port (h2): {:?}", t.elapsed());
    let t = Instant::now();
    let path = format!("/api/v1/files?path={}", big.display());
    assert_eq!(
        download_digest(&w, "--http1.1", "web.sbx.test", &path),
        digest
    );
    eprintln!("download via files API: {:?}", t.elapsed());

    // Without credentials a 1 GiB upload is refused up front: the proxy
    // answers 401 without reading (or forwarding) the body. HTTP/1.1 with
    // curl (Expect: 100-continue); HTTP/2 with the h2 client, which keeps
    // sending until the response ends (curl 7.88 reports the proxy's
    // RST_STREAM(NO_ERROR) after the 401 as an error).
    let url = w.https("8080-web.sbx.test", "/_/upload");
    let t = Instant::now();
    let r = w.curl_within(&["--http1.1", "-T", &at, &url], TRANSFER_TIMEOUT);
    r.assert_error(401, "UNAUTHORIZED");
    let sent = r.transfers[0]["size_upload"].as_u64().unwrap_or(u64::MAX);
    assert!(
        sent < 64 << 20 && t.elapsed() < Duration::from_secs(10),
        "HTTP/1.1: 401 after uploading {sent} bytes in {:?}",
        t.elapsed()
    );
    let port = w.https_port();
    let spec = serde_json::json!({
        "port": port, "tls": true, "ca": w.tls.ca, "sni": "8080-web.sbx.test",
        "requests": [{"authority": format!("8080-web.sbx.test:{port}"), "path": "/_/upload",
                      "method": "PUT", "body_len": GIB}],
    });
    let out = w.py(
        "proxy_h2_client.py",
        &[&spec.to_string()],
        Duration::from_secs(60),
    );
    let out: serde_json::Value = serde_json::from_str(out.trim()).expect("h2 client JSON");
    let resp = &out["responses"][0];
    assert_eq!(resp["status"], 401, "{resp}");
    assert!(
        resp["sent"].as_u64().unwrap_or(u64::MAX) < 64 << 20,
        "HTTP/2: {resp}"
    );

    // Eight 64 MiB downloads multiplexed on one HTTP/2 connection.
    let t = Instant::now();
    let small = serve.join("small.bin");
    let small_len = 64u64 << 20;
    write_noise(&small, small_len);
    let url = w.https("8080-web.sbx.test", "/small.bin");
    let mut args = vec!["--http2", "-Z", "--parallel-max", "8", "-H", &key];
    for _ in 0..8 {
        args.extend(["-o", "/dev/null", &url]);
    }
    let r = w.curl_within(&args, TRANSFER_TIMEOUT);
    assert_eq!(r.transfers.len(), 8, "{r:?}");
    for t in &r.transfers {
        assert_eq!(t["http_code"], 200, "{t}");
        assert_eq!(t["size_download"].as_u64(), Some(small_len), "{t}");
    }
    let connects: u64 = r
        .transfers
        .iter()
        .filter_map(|t| t["num_connects"].as_u64())
        .sum();
    assert_eq!(
        connects, 1,
        "8 parallel HTTP/2 downloads used {connects} connections"
    );
    eprintln!("8 x 64 MiB multiplexed: {:?}", t.elapsed());

    // A client that reads slowly (1 MiB/s) while the sandbox could send at
    // full speed: the proxy must apply backpressure, not buffer the body.
    let t = Instant::now();
    let slow_url = w.https("8080-web.sbx.test", "/big.bin");
    let (mut slow, _lines) = w.curl_lines(&[
        "--http2",
        "--limit-rate",
        "1M",
        "-o",
        "/dev/null",
        "-H",
        &key,
        &slow_url,
    ]);
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        slow.child_mut().try_wait().expect("try_wait").is_none(),
        "the slow download ended early"
    );
    drop(slow);
    eprintln!("slow reader for {:?}", t.elapsed());
    // After the slow client left, the proxy still serves.
    w.get("web.sbx.test", "/api/v1/health", &[&key])
        .assert_status(200);

    let peak = sampler.stop();
    eprintln!("proxy peak RSS {peak} KiB; total {:?}", started.elapsed());
    assert!(
        peak < MAX_RSS_KIB,
        "proxy RSS peaked at {peak} KiB moving 1 GiB bodies (limit {MAX_RSS_KIB} KiB)"
    );
}
