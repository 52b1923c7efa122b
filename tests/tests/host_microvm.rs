//! sbx-host with real QEMU microVM guests (TCG in CI: each boot costs
//! seconds, so the guests of a test boot in parallel and the tests are
//! few). The guest image comes from `scripts/build-image.sh`.

use std::process::Command;
use std::time::{Duration, Instant};

use sbx_tests::bins::bin;
use sbx_tests::host_support::{guest_sh, image_with_init, running, HostOptions, HostWorld};
use sbx_tests::netns::{link, require_netns};
use sbx_tests::process::{piped, ChildGuard};
use sbx_tests::proxy_support::{py_script, ProxyWorld, WorldOptions, DOMAIN, ORG, PROJECT};
use sbx_tests::setup_support::{probe_from, Outcome};
use serde_json::{json, Value};

/// The fake control plane's port in the proxy's namespace.
const HOOK_PORT: u16 = 18080;

/// The proxy's namespace reaches the sandboxes through this link to the
/// host namespace; netctl lets it in on 9501.
const PROXY_LINK: &str = "10.251.0";

fn vm_options() -> HostOptions {
    HostOptions {
        runtime: "microvm",
        netctl_extra: "[ingress]\nallow_from = [\"10.200.0.0/16\", \"10.251.0.0/16\"]\n".into(),
        // QEMU parses what the guest sends: it runs as nobody once its
        // files, tap and sockets are open.
        vmm_user: "nobody",
        ..HostOptions::default()
    }
}

/// Creates `specs` at once; panics unless every one is 201.
fn create_all(w: &HostWorld, specs: &[(&str, Value)]) -> Vec<Value> {
    let started = Instant::now();
    let out: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = specs
            .iter()
            .map(|(id, extra)| {
                let api = w.api();
                let (id, extra) = (id.to_string(), extra.clone());
                s.spawn(move || (id.clone(), api.create(&id, extra)))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    })
    .into_iter()
    .map(|(id, (status, v))| {
        assert_eq!(status, 201, "create {id}: {v}\nlog:\n{}", w.log_tail(60));
        v
    })
    .collect();
    eprintln!(
        "{} microVMs created concurrently in {:?}",
        specs.len(),
        started.elapsed()
    );
    out
}

#[test]
fn microvm_guests_boot_answer_through_the_proxy_enforce_egress_and_suspend_to_disk() {
    if !require_netns() {
        return;
    }
    let mut w = HostWorld::new(vm_options());
    let vms = create_all(
        &w,
        &[
            ("vm-open", json!({"memory_mb": 256})),
            (
                "vm-closed",
                json!({"memory_mb": 256, "network": {"allow_internet_access": false}}),
            ),
            (
                "vm-deny",
                json!({"memory_mb": 256, "network": {"deny_out": ["denied.test"]}}),
            ),
        ],
    );
    for v in &vms {
        assert_eq!(v["state"], "running", "{v}");
        assert_eq!(v["runtime"], "microvm");
        assert_eq!(v["accel"], "tcg");
    }
    let (open, closed, deny) = (&vms[0], &vms[1], &vms[2]);
    // QEMU dropped to `nobody` after opening its files.
    let status = std::fs::read_to_string(format!("/proc/{}/status", open["vmm_pid"])).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid}"
    );

    // The guest runs its own kernel, not the host's.
    let (uname, code) = guest_sh(&w, open, "uname -r");
    assert_eq!(code, 0);
    let host_kernel =
        String::from_utf8_lossy(&Command::new("uname").arg("-r").output().unwrap().stdout)
            .trim()
            .to_owned();
    assert!(uname.contains("cloud-amd64"), "{uname}");
    assert_ne!(uname.trim(), host_kernel);

    // Egress on the tap path, through netctl's rules in the namespace.
    let (out, _) = guest_sh(
        &w,
        closed,
        "nslookup allowed.test >/dev/null 2>&1 && echo resolved || echo failed",
    );
    assert_eq!(
        out.trim(),
        "failed",
        "allow_internet_access=false must stop DNS"
    );
    let (out, _) = guest_sh(
        &w,
        deny,
        "nslookup denied.test 2>&1 | grep -q 198.51.100.20 && echo denied-resolved; \
         nslookup denied.test 2>&1 | grep -q NXDOMAIN && echo denied-nxdomain; \
         nslookup allowed.test 2>&1 | grep -q 198.51.100.10 && echo allowed-resolved",
    );
    if out.trim() != "denied-nxdomain\nallowed-resolved" {
        let (diag, _) = guest_sh(
            &w,
            deny,
            "cat /etc/resolv.conf; nslookup allowed.test 2>&1; nslookup denied.test 2>&1; ip route",
        );
        panic!("deny_out of a domain: {out:?}\n{diag}");
    }
    let (out, _) = guest_sh(
        &w,
        open,
        "nslookup allowed.test 2>&1 | grep -c 198.51.100.10",
    );
    assert_eq!(
        out.trim(),
        "1",
        "an open guest resolves through the test internet"
    );

    // Through the proxy: a namespace of its own, linked to the host.
    let proxy = ProxyWorld::with(WorldOptions {
        sandboxes: Vec::new(),
        register: false,
        extra_config: vec![
            "\n[lifecycle]".into(),
            format!("hook_url = \"http://127.0.0.1:{HOOK_PORT}/hook\""),
            "resume_deadline_secs = 60".into(),
        ],
        ..WorldOptions::default()
    })
    .expect("proxy world");
    // The control plane between them: the proxy's lifecycle hook asks
    // sbx-host to resume, then marks the sandbox running in the proxy.
    let mut hook_cmd = proxy.host_cmd(proxy.python.to_str().unwrap());
    hook_cmd
        .arg(py_script("proxy_hook.py"))
        .arg(HOOK_PORT.to_string())
        .arg(proxy.admin_socket())
        .arg(format!("sbx-host={}", w.socket().display()));
    let mut hook = ChildGuard::spawn("lifecycle hook", piped(&mut hook_cmd));
    hook.wait_for_stdout_line("ready", Duration::from_secs(30));
    link(
        &proxy.host,
        &[&format!("{PROXY_LINK}.1/30")],
        &w.net.host,
        &[&format!("{PROXY_LINK}.2/30")],
    );
    proxy.host.ip(&[
        "route",
        "add",
        "10.200.0.0/16",
        "via",
        &format!("{PROXY_LINK}.2"),
    ]);
    let id = open["id"].as_str().unwrap();
    proxy.put_ok(&json!({
        "id": id, "namespace": "default", "organization_id": ORG, "project_id": PROJECT,
        "agent": open["agent"], "forwarded_auth_key": open["forwarded_auth_key"],
        "exposed_ports": [], "allow_unauthenticated_access": false, "status": "running",
    }));
    let sbx = Command::new("ip")
        .args(["netns", "exec", proxy.host.name()])
        .arg(bin("sbx"))
        .args(["exec", "--via-proxy", id, "--token", &proxy.creds.api_key])
        .arg(format!("http://127.0.0.1:{}", proxy.http_port()))
        .args(["--", "uname", "-a"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&sbx.stdout);
    assert!(
        sbx.status.success() && text.contains("cloud-amd64"),
        "sbx exec: {text} {}",
        String::from_utf8_lossy(&sbx.stderr)
    );

    // A service bound to 127.0.0.1 in the guest: through the proxy once
    // exposed, never from the host directly.
    let (_, code) = guest_sh(&w, open, "mkdir -p /tmp/www && echo guest-page > /tmp/www/index.html && httpd -p 127.0.0.1:8080 -h /tmp/www");
    assert_eq!(code, 0);
    proxy.patch_ok(
        id,
        json!({"exposed_ports": [8080], "allow_unauthenticated_access": true}),
    );
    let url = proxy.http(&format!("8080-{id}.{DOMAIN}"), "/index.html");
    let r = proxy.curl(&[&url]);
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).trim()),
        (200, "guest-page"),
        "{}",
        r.stderr
    );
    let ip: std::net::IpAddr = open["agent"]
        .as_str()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .ip();
    let (direct, _) = probe_from(
        &w.net.host.path(),
        (ip, 8080).into(),
        Duration::from_secs(2),
    );
    assert!(
        matches!(direct, Outcome::Refused(_)),
        "port 8080 reached from the host: {direct:?}"
    );

    // kill -9 of sbx-host leaves the guests running; the restart adopts them.
    let pids: Vec<u64> = vms.iter().map(|v| v["vmm_pid"].as_u64().unwrap()).collect();
    w.kill();
    w.start();
    for (v, pid) in vms.iter().zip(&pids) {
        let (_, now) = w.api().get(v["id"].as_str().unwrap());
        assert_eq!(
            (now["state"].as_str(), now["vmm_pid"].as_u64()),
            (Some("running"), Some(*pid)),
            "{now}"
        );
    }

    // Suspend to disk: the VMM exits (no RAM held), the snapshot is on
    // disk; resume brings back the processes and files.
    let (_, code) = guest_sh(
        &w,
        open,
        "echo kept > /home/note; sleep 3600 >/dev/null 2>&1 & echo $! > /tmp/sleeper",
    );
    assert_eq!(code, 0);
    let t = Instant::now();
    let (s, v) = w
        .api()
        .call("POST", &format!("/v1/sandboxes/{id}/suspend"), None);
    assert_eq!(s, 200, "{v}\n{}", w.log_tail(30));
    eprintln!(
        "suspend took {:?}, snapshot {} bytes",
        t.elapsed(),
        v["snapshot_bytes"]
    );
    assert_eq!(v["state"], "suspended");
    assert!(v["snapshot_bytes"].as_u64().unwrap() > 1_000_000, "{v}");
    assert!(
        w.cgroup_pids(id).is_empty(),
        "a suspended microVM still has processes"
    );
    assert!(!running(pids[0] as u32), "the suspended VMM still runs");
    // A request for the guest's exposed service wakes it: the proxy's
    // auto-resume calls the hook, sbx-host restores the snapshot, and the
    // httpd started before the suspend answers.
    proxy.patch_ok(id, json!({"status": "suspended", "auto_resume": true}));
    let t = Instant::now();
    let r = proxy.curl(&[&url]);
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).trim()),
        (200, "guest-page"),
        "auto-resume: {}\n{}",
        r.stderr,
        w.log_tail(30)
    );
    eprintln!("a request woke the suspended guest in {:?}", t.elapsed());
    assert_eq!(w.api().get(id).1["state"], "running");
    let (out, _) = guest_sh(
        &w,
        open,
        "cat /home/note; kill -0 $(cat /tmp/sleeper) && echo sleeper-alive",
    );
    assert_eq!(out.trim(), "kept\nsleeper-alive");
    // The policy of the closed guest is still in force after all that.
    let (out, _) = guest_sh(
        &w,
        closed,
        "nslookup allowed.test >/dev/null 2>&1 && echo resolved || echo failed",
    );
    assert_eq!(out.trim(), "failed");

    // Delete leaves nothing.
    for (v, pid) in vms.iter().zip(&pids) {
        let vid = v["id"].as_str().unwrap();
        let vmm = w.api().get(vid).1["vmm_pid"].as_u64().unwrap_or(*pid) as u32;
        assert_eq!(w.api().delete(vid), 204);
        w.assert_gone(vid, v["netns"].as_str().unwrap(), Some(vmm));
    }
    let left = Command::new("pgrep")
        .args(["-f", "-name sbx-vm-open,"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "a QEMU is left");
    drop(proxy);
}

#[test]
fn a_guest_that_never_comes_up_fails_the_create_and_leaves_nothing() {
    if !require_netns() {
        return;
    }
    let mut opts = vm_options();
    opts.boot_timeout_secs = 25;
    let images = tempfile::tempdir().unwrap();
    image_with_init(
        images.path(),
        "exits",
        "#!/bin/sh\necho 'broken-init: giving up'\nexit 3\n",
    );
    image_with_init(
        images.path(),
        "hangs",
        "#!/bin/sh\nexport PATH=/bin:/sbin:/usr/bin:/usr/sbin\necho 'hanging-init: never starting the agent'\nwhile :; do /bin/busybox sleep 60; done\n",
    );
    image_with_init(
        images.path(),
        "gives-up",
        "#!/bin/sh\necho 'sbx-init: FATAL: bad configuration (test)'\nwhile :; do /bin/busybox sleep 60; done\n",
    );
    let w = HostWorld::new(opts);
    // The test images live beside the default one.
    for name in NAMES {
        let dst = sbx_tests::host_support::image_dir()
            .join(format!("test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dst);
        copy_dir(&images.path().join(name), &dst);
    }
    let pid = std::process::id();
    let results: Vec<(u16, Value, Duration)> = std::thread::scope(|s| {
        NAMES
            .iter()
            .map(|name| {
                let api = w.api();
                s.spawn(move || {
                    let t = Instant::now();
                    let (st, v) = api.create(
                        &format!("bad-{name}"),
                        json!({"memory_mb": 256, "image": format!("test-{pid}-{name}")}),
                    );
                    (st, v, t.elapsed())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    for name in NAMES {
        let _ = std::fs::remove_dir_all(
            sbx_tests::host_support::image_dir().join(format!("test-{pid}-{name}")),
        );
    }
    let (st, v, took) = &results[0];
    assert_eq!(*st, 502, "{v}");
    assert!(
        took < &Duration::from_secs(25),
        "an init that exits must fail before the deadline ({took:?})"
    );
    let (st, v, took) = &results[1];
    assert_eq!(*st, 504, "{v} after {took:?}\n{}", w.log_tail(40));
    assert!(
        took >= &Duration::from_secs(25) && took < &Duration::from_secs(60),
        "{took:?}"
    );
    // An init that says it gave up fails the create at once too.
    let (st, v, took) = &results[2];
    assert_eq!(*st, 502, "{v}");
    assert!(took < &Duration::from_secs(25), "{took:?}");
    // The console's last lines are in sbx-host's log, never in the answer.
    let log = w.log_tail(200);
    assert!(log.contains("Attempted to kill init"), "{log}");
    assert!(log.contains("hanging-init"), "{log}");
    assert!(!v.to_string().contains("hanging-init"));
    for name in NAMES {
        let id = format!("bad-{name}");
        assert_eq!(w.api().get(&id).0, 404);
        w.assert_gone(&id, &format!("{}{id}", w.net.netns_prefix), None);
    }
}

/// Broken images: an init that exits, one that never starts the agent, one
/// that says it gave up.
const NAMES: [&str; 3] = ["exits", "hangs", "gives-up"];

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
