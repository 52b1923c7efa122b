//! netctl's daemon contract: validation leaves rules alone, state survives
//! kill -9, restart reconciles, remove cleans up, re-apply is idempotent,
//! and the CLI.

use std::time::Duration;

use sbx_tests::netctl_support::*;
use sbx_tests::netns::require_netns;

/// Which copy of `set` (e.g. "deny4") the rules point at: "deny4_0" or
/// "deny4_1".
fn copy_in_use(table: &str, set: &str) -> String {
    ["0", "1"]
        .iter()
        .map(|slot| format!("{set}_{slot}"))
        .find(|name| table.contains(&format!("@{name} ")))
        .unwrap_or_else(|| panic!("no rule names {set}: {table}"))
}

/// The table with set copies named alike (a re-apply moves every set to
/// its other copy).
fn copies_alike(table: &str) -> String {
    table.replace("_0 ", "_N ").replace("_1 ", "_N ")
}

/// All counters' packet counts, summed.
fn packets(table: &str) -> u64 {
    table
        .lines()
        .filter_map(|l| l.trim().strip_prefix("packets "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The table without counter values (they move with traffic).
fn rules_only(table: &str) -> String {
    table
        .lines()
        .filter(|l| !l.contains("packets"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn bad_policy_is_refused_and_old_rules_stay() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", &format!(r#"{{"deny_out": ["{V4_B}"]}}"#));
    let before = rules_only(&w.nft_table().expect("table"));
    for (body, needle) in [
        (
            r#"{"deny_out": ["198.51.100.1/24"]}"#.to_owned(),
            "deny_out[0]",
        ),
        (
            r#"{"allow_out": ["ok.test", "a.*.wild.test"]}"#.to_owned(),
            "allow_out[1]",
        ),
        (r#"{"deny_out": [], "allow_in": []}"#.to_owned(), "allow_in"),
        (r#"{"allow_out": ["bad name"]}"#.to_owned(), "bad name"),
        (
            format!(
                r#"{{"deny_out": [{}]}}"#,
                vec!["\"192.0.2.1\""; 10_001].join(",")
            ),
            "at most 10000",
        ),
    ] {
        let r = w.put("sb", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let err = r.json();
        assert_eq!(err["code"], "INVALID_POLICY");
        assert!(
            err["error"].as_str().unwrap().contains(needle),
            "{}",
            r.body
        );
    }
    let r = w.api().call(
        "PATCH",
        "/v1/sandboxes/sb",
        Some(r#"{"network": {"deny_out": ["10.0.0.1/8"]}}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(rules_only(&w.nft_table().expect("table")), before);
    // A domain that does not resolve when the policy is set (SPEC 4).
    let r = w.api().call(
        "PATCH",
        "/v1/sandboxes/sb",
        Some(r#"{"network": {"allow_internet_access": false, "allow_out": ["nowhere.test"]}}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["code"], "INVALID_POLICY");
    assert!(r.body.contains("nowhere.test"), "{}", r.body);
    assert_eq!(rules_only(&w.nft_table().expect("table")), before);
    w.assert_refused(V4_B);
    w.assert_reachable(V4_A);
    // Bad ids and netns references are refused too.
    let r = w
        .api()
        .call("PUT", "/v1/sandboxes/..x", Some(r#"{"netns":"x"}"#));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = w.api().call(
        "PUT",
        "/v1/sandboxes/sb2",
        Some(r#"{"netns":"/etc/passwd"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = w.api().call(
        "PUT",
        "/v1/sandboxes/sb2",
        Some(r#"{"netns":"no-such-ns-here"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let list = w.api().call("GET", "/v1/sandboxes", None).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn patch_keeps_replaces_and_clears() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", &format!(r#"{{"deny_out": ["{V4_A}"]}}"#));
    let api = w.api();
    let r = api.call("PATCH", "/v1/sandboxes/sb", Some("{}"));
    assert_eq!(r.status, 200, "{}", r.body);
    w.assert_refused(V4_A);
    let r = api.call(
        "PATCH",
        "/v1/sandboxes/sb",
        Some(&format!(r#"{{"network": {{"deny_out": ["{V4_B}"]}}}}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    w.assert_reachable(V4_A);
    w.assert_refused(V4_B);
    let r = api.call("PATCH", "/v1/sandboxes/sb", Some(r#"{"network": null}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["network"].is_null());
    w.assert_reachable(V4_B);
    let r = api.call("PATCH", "/v1/sandboxes/nope", Some("{}"));
    assert_eq!(r.status, 404);
}

#[test]
fn same_state_twice_changes_nothing() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    let policy = format!(
        r#"{{"allow_internet_access": false, "allow_out": ["{V4_A}", "198.51.100.0/25", "2001:db8::/32"]}}"#
    );
    w.put_ok("sb", &policy);
    w.assert_refused(V4_C);
    let first = w.nft_table().expect("table");
    w.put_ok("sb", &policy);
    let second = w.nft_table().expect("table");
    assert_eq!(
        copies_alike(&rules_only(&first)),
        copies_alike(&rules_only(&second)),
        "re-apply changed the rules"
    );
    // Counters keep counting (the sandbox's own IPv6 multicast reports may
    // add to them meanwhile).
    assert!(
        packets(&second) >= packets(&first) && packets(&first) > 0,
        "counters reset: {first} -> {second}"
    );
    // Overlapping entries were merged into one interval.
    assert!(second.contains("198.51.100.0/25"), "{second}");
}

#[test]
fn kill_9_leaves_rules_and_restart_reconciles() {
    if !require_netns() {
        return;
    }
    let mut w = World::new();
    w.dns.set_records(&[(V4_C, "gone.test")]);
    w.put_ok("sb", &format!(r#"{{"deny_out": ["{V4_A}", "gone.test"]}}"#));
    w.assert_refused(V4_C);
    let daemon = w.daemon.take().expect("daemon");
    daemon.child.signal(9);
    drop(daemon);
    // The kernel keeps enforcing without the daemon.
    w.assert_refused(V4_A);
    w.assert_refused(V4_C);
    // Lose the table while the daemon is down; a restart puts it back,
    // with the saved addresses of names even if DNS is now unhelpful.
    w.dns.set_records(&[]);
    w.sandbox.sh("nft delete table inet sbx_netctl");
    w.assert_reachable(V4_A);
    w.start_daemon();
    w.assert_refused(V4_A);
    w.assert_refused(V4_C);
    let show = w.api().call("GET", "/v1/sandboxes/sb", None).json();
    assert_eq!(show["applied"], true, "{show}");
    // The failed lookup is reported, the last known address kept.
    let found = w.wait_for(Duration::from_secs(5), || {
        let s = w.api().call("GET", "/v1/sandboxes/sb", None).json();
        s["names"][0]["error"].is_string()
    });
    assert!(found.is_some(), "lookup failure not reported");
    w.assert_refused(V4_C);
    let metrics = w.api().call("GET", "/metrics", None).body;
    assert!(
        metrics.contains("netctl_sandbox_names_failing{sandbox=\"sb\"} 1"),
        "{metrics}"
    );
}

/// A restart, and a spare copy left filled by an interrupted change, never
/// make netctl refill the copy the rules in force point at, nor merge into
/// leftovers.
#[test]
fn restart_and_leftovers_never_refill_the_live_copy() {
    if !require_netns() {
        return;
    }
    let mut w = World::new();
    w.put_ok("sb", &format!(r#"{{"deny_out": ["{V4_A}"]}}"#));
    let live = copy_in_use(&w.nft_table().expect("table"), "deny4");
    let daemon = w.daemon.take().expect("daemon");
    daemon.child.signal(9);
    drop(daemon);
    w.start_daemon();
    let table = w.nft_table().expect("table");
    assert_ne!(copy_in_use(&table, "deny4"), live, "{table}");
    w.assert_refused(V4_A);
    w.assert_reachable(V4_B);

    // What a change dropped after its stage could leave: the spare allow
    // copy, filled with an address no policy allows.
    let spare = match copy_in_use(&table, "allow4").as_str() {
        "allow4_0" => "allow4_1",
        _ => "allow4_0",
    };
    let out = w.sandbox.sh(&format!(
        "nft add set inet sbx_netctl {spare} '{{ type ipv4_addr; flags interval; }}' && \
         nft add element inet sbx_netctl {spare} '{{ {V4_B} }}'"
    ));
    assert!(out.status.success(), "{out:?}");
    w.put_ok(
        "sb",
        &format!(r#"{{"allow_internet_access": false, "allow_out": ["{V4_C}"]}}"#),
    );
    w.assert_reachable(V4_C);
    w.assert_refused(V4_B);
    w.assert_refused(V4_A);
}

/// Two sandboxes cannot share a namespace: they would own one table.
#[test]
fn a_second_sandbox_in_the_same_namespace_is_refused() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", &format!(r#"{{"deny_out": ["{V4_A}"]}}"#));
    let r = w.put("other", r#"{"deny_out": []}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("sb"), "{}", r.body);
    w.assert_refused(V4_A);
    assert_eq!(w.api().call("GET", "/v1/sandboxes/other", None).status, 404);
    assert_eq!(w.api().call("DELETE", "/v1/sandboxes/sb", None).status, 204);
    w.put_ok("other", &format!(r#"{{"deny_out": ["{V4_B}"]}}"#));
    w.assert_refused(V4_B);
    w.assert_reachable(V4_A);
}

#[test]
fn remove_leaves_nothing_of_ours() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", r#"{"allow_internet_access": false}"#);
    w.assert_refused(V4_A);
    let r = w.api().call("DELETE", "/v1/sandboxes/sb", None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(w.nft_tables().trim(), "");
    w.assert_reachable(V4_A);
    assert_eq!(w.api().call("GET", "/v1/sandboxes/sb", None).status, 404);
    assert_eq!(w.api().call("DELETE", "/v1/sandboxes/sb", None).status, 404);
    let state = w.dir.path().join("state/sandboxes");
    assert_eq!(std::fs::read_dir(state).unwrap().count(), 0);
}

#[test]
fn cli_apply_show_list_remove_and_check() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    let sock = w.socket();
    let ns = w.sandbox.name().to_owned();
    let policy = format!(r#"{{"deny_out": ["{V4_A}"]}}"#);
    let (code, out, err) = netctl_cli(
        &sock,
        &["apply", "sb", "--netns", &ns, "--policy", "-"],
        Some(&policy),
    );
    assert_eq!(code, 0, "{out}{err}");
    w.assert_refused(V4_A);
    let (code, out, _) = netctl_cli(&sock, &["show", "sb", "--json"], None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["network"]["deny_out"][0], V4_A);
    let (code, out, _) = netctl_cli(&sock, &["show", "sb"], None);
    assert_eq!(code, 0);
    assert!(out.contains("deny     198.51.100.10"), "{out}");
    let (code, out, _) = netctl_cli(&sock, &["list"], None);
    assert_eq!(code, 0);
    assert!(out.starts_with("sb\t"), "{out}");
    // Errors: one line, non-zero.
    let (code, _, err) = netctl_cli(
        &sock,
        &["apply", "sb", "--netns", &ns, "--policy", "-"],
        Some(r#"{"deny_out": ["198.51.100.1/24"]}"#),
    );
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("host bits"), "{err}");
    let (code, _, err) = netctl_cli(&sock, &["show", "nope"], None);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not found"), "{err}");
    let (code, _, _) = netctl_cli(&sock, &["remove", "sb"], None);
    assert_eq!(code, 0);
    w.assert_reachable(V4_A);
    // check needs no daemon.
    let nowhere = w.dir.path().join("no.sock");
    let (code, out, _) = netctl_cli(&nowhere, &["check", "--policy", "-"], Some(&policy));
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = netctl_cli(
        &nowhere,
        &["check", "--policy", "-"],
        Some(r#"{"allow_out": ["x.*.test"]}"#),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("allow_out[0]") && err.contains("wildcard"),
        "{err}"
    );
    let (code, _, err) = netctl_cli(&nowhere, &["list"], None);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn health_and_metrics() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", &format!(r#"{{"deny_out": ["{V4_A}"]}}"#));
    w.assert_refused(V4_A);
    w.assert_reachable(V4_B);
    let h = w.api().call("GET", "/v1/health", None).json();
    assert_eq!(h["status"], "ok");
    let m = w.api().call("GET", "/metrics", None).body;
    assert!(m.contains("# TYPE netctl_packets_total counter"), "{m}");
    assert!(
        m.contains("netctl_packets_total{sandbox=\"sb\",verdict=\"refused\"}"),
        "{m}"
    );
    assert!(m.contains("netctl_applies_total{result=\"ok\"} 1"), "{m}");
}

#[test]
fn a_table_changed_behind_our_back_is_repaired_by_the_next_put() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    let policy = format!(r#"{{"deny_out": ["{V4_A}"]}}"#);
    w.put_ok("sb", &policy);
    w.sandbox.sh("nft delete table inet sbx_netctl");
    // Same state: every set restaged and the rules re-asserted.
    w.put_ok("sb", &policy);
    w.assert_refused(V4_A);
    // A changed state whose incremental form no longer fits the kernel
    // falls back to a rebuild from what the kernel holds.
    w.sandbox.sh("nft delete table inet sbx_netctl");
    w.put_ok("sb", &format!(r#"{{"deny_out": ["{V4_B}"]}}"#));
    w.assert_refused(V4_B);
    w.assert_reachable(V4_A);
}

#[test]
fn netns_given_as_a_proc_path() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    // A process living in the sandbox namespace; its /proc path names it.
    let mut holder = w.sandbox.command("sleep");
    holder.arg("60");
    let holder = sbx_tests::process::ChildGuard::spawn("sleep", &mut holder);
    let path = format!("/proc/{}/ns/net", holder.pid());
    // `ip netns exec` execs in place, but give it a moment to get there.
    let ours = std::fs::read_link("/proc/self/ns/net").expect("own netns");
    let entered = w.wait_for(Duration::from_secs(5), || {
        std::fs::read_link(&path).is_ok_and(|ns| ns != ours)
    });
    assert!(entered.is_some(), "holder never entered the namespace");
    let body = format!(r#"{{"netns":"{path}","network":{{"deny_out":["{V4_A}"]}}}}"#);
    let r = w.api().call("PUT", "/v1/sandboxes/byproc", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    w.assert_refused(V4_A);
    w.assert_reachable(V4_B);
}
