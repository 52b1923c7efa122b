//! sbx-proxy's sandbox API (SPEC 7) driven by the public Tensorlake SDK's
//! `SandboxClient`, in the cloud form (an API key scopes `/sandboxes`) and
//! the namespace form of `for_localhost` (no credential, loopback only):
//! list and get, expose and unexpose ports with the result in force at the
//! proxy at once, 400 for port 9501, another project seeing nothing, and
//! suspend/resume through the lifecycle hook (a fake control plane).

use std::time::Duration;

use sbx_tests::agent::READY_TIMEOUT;
use sbx_tests::process::{piped, ChildGuard};
use sbx_tests::proxy_support::{py_script, ProxyWorld, WorldOptions};

const HOOK_PORT: u16 = 18080;

#[test]
fn tensorlake_sandbox_client_drives_the_routing_settings() {
    let opts = WorldOptions {
        extra_config: vec![
            "\n[api]".into(),
            "allow_unauthenticated_namespaces = true".into(),
            "\n[lifecycle]".into(),
            format!("hook_url = \"http://127.0.0.1:{HOOK_PORT}/hook\""),
            "resume_deadline_secs = 10".into(),
        ],
        ..WorldOptions::default()
    };
    let Some(mut w) = ProxyWorld::with(opts) else {
        return;
    };
    let py = w.python.clone();
    w.sandbox_mut().service(&py, "echo", 8080);
    let mut cmd = w.host_cmd(py.to_str().expect("utf-8"));
    cmd.arg(py_script("proxy_hook.py"))
        .arg(HOOK_PORT.to_string())
        .arg(w.admin_socket())
        .arg("300");
    let mut hook = ChildGuard::spawn("lifecycle hook", piped(&mut cmd));
    hook.wait_for_stdout_line("ready", READY_TIMEOUT);

    let api = w
        .listeners
        .api
        .expect("the proxy announced its API listener");
    let out = w.py(
        "proxy_sdk_api.py",
        &[
            &format!("http://{api}"),
            &w.creds.api_key,
            &w.creds.other_api_key,
            &format!("http://127.0.0.1:{}", w.http_port()),
        ],
        Duration::from_secs(120),
    );
    for check in [
        "ok list and get (cloud)",
        "ok list and get (namespace)",
        "ok cloud form without a credential: 401",
        "ok another project's key",
        "ok expose, refuse 9501, 0 and 70000, unexpose one",
        "ok suspend and resume",
        "ok the resumed sandbox answers through the proxy",
        "ok unexposing the last port ends public access",
    ] {
        assert!(out.contains(check), "missing {check:?} in:\n{out}");
    }
    // What the SDK did is what the registry holds.
    let entry = w.admin("GET", "/v1/sandboxes/sbx-alpha", None).json();
    assert_eq!(entry["status"], "running", "{entry}");
    assert_eq!(entry["allow_unauthenticated_access"], false, "{entry}");
}
