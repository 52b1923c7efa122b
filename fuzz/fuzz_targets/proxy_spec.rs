//! sbx-proxy's admin API bodies (proxy/src/registry/spec.rs): a sandbox
//! entry as `PUT /v1/sandboxes/{id}` takes it, and a `PATCH` merged into an
//! existing entry. Both registries store the entry as JSON and read it back
//! (the embedded one after a restart, the Redis one on every proxy).
//!
//! Properties: a validated entry round-trips through its stored form and
//! validates again to the same entry; its exposed ports are sorted, unique
//! and never 0 or the agent's port; the view the API shows never holds the
//! inline key; a PATCH leaves every field it does not name as it was.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sbx_proxy::registry::{apply_patch, SandboxSpec, SandboxView};
use sbx_proxy::route::AGENT_PORT;
use serde_json::Value;

const ID: &str = "sbx-1";
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Validation reads a key file: every absolute path in the input is sent
/// here instead, so the fuzzer cannot make it read /dev/zero or a FIFO.
fn key_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("sbx-fuzz-key-{}", std::process::id()));
        std::fs::write(&path, format!("{KEY}\n")).expect("write the fixture key file");
        path
    })
    .clone()
}

fn contain(spec: &mut SandboxSpec) {
    if let Some(path) = &mut spec.forwarded_auth_key_file {
        if path.is_absolute() {
            *path = key_file();
        }
    }
}

fn base() -> SandboxSpec {
    SandboxSpec::from_json(
        br#"{"organization_id":"o","project_id":"p","agent":"10.0.0.2:9501",
             "forwarded_auth_key":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
             "exposed_ports":[8080],"name":"web"}"#,
    )
    .expect("the base entry parses")
}

fuzz_target!(|data: &[u8]| {
    if let Ok(mut spec) = SandboxSpec::from_json(data) {
        assert!(is_object(data));
        contain(&mut spec);
        check(spec);
    }
    if let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(data) {
        let base = base();
        let Ok(mut merged) = apply_patch(&base, patch.clone()) else {
            return;
        };
        let before = serde_json::to_value(&base).expect("serializes");
        let after = serde_json::to_value(&merged).expect("serializes");
        let key_fields = ["forwarded_auth_key", "forwarded_auth_key_file"];
        let names_a_key = key_fields
            .iter()
            .any(|k| patch.get(*k).is_some_and(|v| !v.is_null()));
        for (field, old) in before.as_object().expect("an object") {
            if patch.contains_key(field) || names_a_key && key_fields.contains(&field.as_str()) {
                continue;
            }
            assert_eq!(after.get(field), Some(old), "PATCH changed `{field}`");
        }
        contain(&mut merged);
        check(merged);
    }
});

fn check(mut spec: SandboxSpec) {
    if spec.validate(ID).is_err() {
        return;
    }
    let ports = &spec.exposed_ports;
    assert!(ports.windows(2).all(|w| w[0] < w[1]), "{ports:?}");
    assert!(
        !ports.contains(&0) && !ports.contains(&AGENT_PORT),
        "{ports:?}"
    );
    assert!(spec.load_key().is_ok());

    let stored = serde_json::to_vec(&spec).expect("serializes");
    let mut restored = SandboxSpec::from_json(&stored).expect("the stored form parses");
    assert_eq!(
        restored,
        spec,
        "through {}",
        String::from_utf8_lossy(&stored)
    );
    restored.validate(ID).expect("the stored form validates");
    assert_eq!(restored, spec);

    let view = serde_json::to_string(&SandboxView::new(ID, &spec, None)).expect("serializes");
    if let Some(key) = &spec.forwarded_auth_key {
        assert!(!view.contains(key.trim()), "the view shows the key");
    }
}

/// serde's derive would also take an array of the fields; bodies are
/// objects only (proto/src/json.rs).
fn is_object(data: &[u8]) -> bool {
    data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}
