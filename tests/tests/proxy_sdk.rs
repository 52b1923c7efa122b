//! The public Tensorlake SDK (PyPI `tensorlake`, in target/sdk-venv) talking
//! to a sandbox through sbx-proxy with an API key, in both of its modes:
//! a localhost proxy URL (the SDK sends `Host: <id>.local`) and any other
//! URL (it sends `X-Tensorlake-Sandbox-Id`). Commands, output streaming,
//! files, the TCP tunnel helper and a PTY, all through the SDK's own code.

use std::time::Duration;

use sbx_tests::proxy_support::{ProxyWorld, WorldOptions};

#[test]
fn tensorlake_sdk_through_the_proxy_in_both_routing_modes() {
    let opts = WorldOptions {
        // Reachable on the host's veth address too (the "non-local" URL).
        listen_http: Some("0.0.0.0:0".into()),
        listen_https: None,
        ..WorldOptions::default()
    };
    let Some(mut w) = ProxyWorld::with(opts) else {
        return;
    };
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "tcp-upper", 7000);
    let port = w.http_port();
    let scratch = w.path("sdk");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let scratch = scratch.display().to_string();
    let key = w.creds.api_key.clone();
    let local = format!("http://localhost:{port}");
    let remote = format!("http://{}:{port}", w.sandbox().host_ip);
    for (url, ident) in [
        (&local, "sbx-alpha"),
        (&remote, "sbx-alpha"),
        (&remote, "web"),
    ] {
        let out = w.py(
            "proxy_sdk.py",
            &[url, ident, &key, &scratch, "7000"],
            Duration::from_secs(120),
        );
        assert!(
            out.contains("all SDK-through-proxy checks passed"),
            "{url} {ident}: {out}"
        );
        eprintln!("{url} as {ident}:\n{out}");
    }
    // Another project's key: the SDK gets 404s, never the sandbox.
    let other = w.py_output(
        "proxy_sdk.py",
        &[
            &remote,
            "sbx-alpha",
            &w.creds.other_api_key,
            &scratch,
            "7000",
        ],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success(),
        "another project's key drove the sandbox"
    );
    assert!(
        stderr.contains("404") || stderr.contains("SANDBOX_NOT_FOUND"),
        "another project's key: not a 404: {stderr}"
    );
}
