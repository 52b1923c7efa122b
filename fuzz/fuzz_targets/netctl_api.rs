//! netctl's API bodies (SPEC 4): `PUT /v1/sandboxes/{id}` and `PATCH`, and
//! the JSON listing of the rules in a sandbox's namespace, which code in the
//! sandbox with CAP_NET_ADMIN there could have rewritten.
//!
//! Properties: a PUT body that validates survives the store's serialize/
//! parse round trip with the same validated policy; its netns path is one
//! of the places namespaces live; a PATCH body's `network` is absent, null
//! or an object exactly as the JSON says, and round-trips; the prefixes a
//! validated policy becomes are non-overlapping (nftables refuses overlaps
//! in an interval set) and cover every entry.
#![no_main]

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use netctl::ruleset::{referenced, Prefixes};
use sbx_proto::policy::{netns_path, Destination, NetworkPolicy, SandboxPatch, SandboxSpec};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    put(data);
    patch(data);
    if let Ok(listing) = std::str::from_utf8(data) {
        let _ = referenced(listing);
    }
});

fn put(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<SandboxSpec>(data) else {
        return;
    };
    assert!(is_object(data));
    let Ok(policy) = spec.validate() else {
        return;
    };
    let stored = serde_json::to_vec(&spec).expect("serializes");
    let restored: SandboxSpec = serde_json::from_slice(&stored).expect("re-parses");
    assert_eq!(restored, spec);
    assert_eq!(restored.validate(), Ok(policy.clone()));
    if let Some(netns) = &spec.netns {
        let path = netns_path(netns).expect("validated");
        assert!(
            !path.split('/').any(|part| part == ".." || part == "."),
            "{path:?}"
        );
        assert!(
            path.starts_with("/run/netns/")
                || path.starts_with("/var/run/netns/")
                || path.starts_with("/proc/"),
            "{path:?}"
        );
    }
    if let Some(policy) = policy {
        for list in [&policy.allow_out, &policy.deny_out] {
            let nets: Vec<IpNet> = list
                .iter()
                .filter_map(|d| match d {
                    Destination::Net(net) => Some(*net),
                    Destination::Domain(_) | Destination::Wildcard(_) => None,
                })
                .collect();
            check_prefixes(&nets, &Prefixes::merge(&nets));
        }
    }
}

fn check_prefixes(nets: &[IpNet], merged: &Prefixes) {
    let all: Vec<IpNet> = merged
        .v4
        .iter()
        .map(|n| IpNet::V4(*n))
        .chain(merged.v6.iter().map(|n| IpNet::V6(*n)))
        .collect();
    for (i, a) in all.iter().enumerate() {
        assert_eq!(a.trunc(), *a);
        for b in &all[i + 1..] {
            assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
        }
    }
    for net in nets {
        let folded = sbx_proto::policy::fold_mapped(*net);
        assert!(
            all.iter().any(|m| m.contains(&folded)),
            "{net} is not covered"
        );
    }
    assert!(all.len() <= nets.len());
}

fn patch(data: &[u8]) {
    let Ok(patch) = serde_json::from_slice::<SandboxPatch>(data) else {
        return;
    };
    assert!(is_object(data));
    let value: Value = serde_json::from_slice(data).expect("a patch is JSON");
    match (value.get("network"), &patch.network) {
        (None, None) | (Some(Value::Null), Some(None)) => {}
        (Some(object @ Value::Object(_)), Some(Some(policy))) => {
            let direct: NetworkPolicy =
                serde_json::from_value(object.clone()).expect("same policy");
            assert_eq!(&direct, policy);
        }
        (json, parsed) => panic!("`network` {json:?} parsed as {parsed:?}"),
    }
    let json = serde_json::to_vec(&patch).expect("serializes");
    let again: SandboxPatch = serde_json::from_slice(&json).expect("re-parses");
    assert_eq!(again, patch, "through {}", String::from_utf8_lossy(&json));
}

/// serde's derive would also take an array of the fields; bodies are
/// objects only (proto/src/json.rs).
fn is_object(data: &[u8]) -> bool {
    data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}
