//! `GET /api/v1/openapi.json` from a real agent, checked against real
//! responses: the documented properties are exactly the ones sent.

mod api_support;

use api_support::Client;
use sbx_tests::agent::Agent;
use serde_json::{json, Value};

fn properties(doc: &Value, schema: &str) -> Vec<String> {
    let mut keys: Vec<String> = doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {schema} has no properties"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    keys.sort();
    keys
}

#[test]
fn document_matches_live_responses() {
    let agent = Agent::start(&[]);
    let c = Client::new(agent.addr, agent.bearer());
    Client::new(agent.addr, "Bearer nope-nope-nope-nope".into())
        .get("/api/v1/openapi.json")
        .assert_error(401, "UNAUTHORIZED");
    let r = c.get("/api/v1/openapi.json");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/api/v1/processes/run"]["post"].is_object());
    assert!(doc["paths"]["/api/v1/pty/{id}/ws"]["get"].is_object());

    let pid = c.start(json!({"command": "true"}));
    let info = c.wait_exit(pid);
    assert_eq!(keys(&info), properties(&doc, "ProcessInfo"));
    assert_eq!(keys(&c.info()), properties(&doc, "Info"));
    let out = c.get(&format!("/api/v1/processes/{pid}/output")).json();
    assert_eq!(keys(&out), properties(&doc, "OutputResponse"));
    let listing = c.get("/api/v1/files/list?path=/").json();
    assert_eq!(keys(&listing), properties(&doc, "DirectoryListing"));
    assert_eq!(
        keys(&listing["entries"][0]),
        properties(&doc, "DirectoryEntry")
    );
    let err = c.get("/api/v1/processes/999999999").json();
    assert_eq!(keys(&err), properties(&doc, "ErrorBody"));
    let pty = c
        .post_json("/api/v1/pty", &json!({"command": "true"}))
        .json();
    assert_eq!(keys(&pty), properties(&doc, "PtyCreated"));
    let session = c
        .get(&format!(
            "/api/v1/pty/{}",
            pty["session_id"].as_str().unwrap()
        ))
        .json();
    assert_eq!(keys(&session), properties(&doc, "PtyInfo"));
}
