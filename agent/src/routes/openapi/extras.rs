//! What the handlers' attributes cannot say about the whole document: the
//! two ways to authenticate and the 401 every protected route answers, the
//! 413 of every JSON body, operation ids that are unique across tags, and
//! the links from a created process or PTY session to the operations on it
//! (so a client, or a stateful API fuzzer, can follow them).

use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};
use utoipa::Modify;

/// The forwarded-auth header the sandbox proxy sends (SPEC 3).
const FORWARDED_AUTH: &str = "forwarded_auth";
/// `Authorization: Bearer`, the opt-in direct mode.
const BEARER: &str = "bearer";

pub struct Extras;

impl Modify for Extras {
    fn modify(&self, doc: &mut OpenApi) {
        security(doc);
        for item in doc.paths.paths.values_mut() {
            for op in operations(item) {
                unique_operation_id(op);
                unauthorized(op);
                json_body_limit(op);
            }
        }
        links(doc);
    }
}

fn security(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        FORWARDED_AUTH,
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-Sandbox-Forwarded-Auth",
            "v1.<expiry unix seconds>.<base64url HMAC-SHA256(key, \"v1.<expiry>.<sandbox id>\")>, minted by the sandbox proxy",
        ))),
    );
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The agent's configured token (direct mode, off unless configured)",
                ))
                .build(),
        ),
    );
    doc.security = Some(vec![
        SecurityRequirement::new(FORWARDED_AUTH, Vec::<String>::new()),
        SecurityRequirement::new(BEARER, Vec::<String>::new()),
    ]);
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// `<tag>_<handler>`: handler names alone repeat (`list`, `get`, `delete`).
fn unique_operation_id(op: &mut Operation) {
    let tag = op.tags.as_ref().and_then(|t| t.first()).cloned();
    if let (Some(tag), Some(id)) = (tag, op.operation_id.as_mut()) {
        *id = format!("{tag}_{id}");
    }
}

/// Every operation not marked public (`security()`) answers 401 first.
fn unauthorized(op: &mut Operation) {
    if op.security.as_ref().is_some_and(|s| s.is_empty()) {
        return;
    }
    let response = error_response(
        "UNAUTHORIZED: no valid `X-Sandbox-Forwarded-Auth` (or bearer token); `WWW-Authenticate: Bearer`",
    );
    op.responses
        .responses
        .entry("401".to_owned())
        .or_insert(RefOr::T(response));
}

/// Every JSON body goes through the same extractor and its limit.
fn json_body_limit(op: &mut Operation) {
    let takes_json = op
        .request_body
        .as_ref()
        .is_some_and(|body| body.content.contains_key("application/json"));
    if takes_json {
        let response = error_response("PAYLOAD_TOO_LARGE: the JSON body is over 2 MiB");
        op.responses
            .responses
            .entry("413".to_owned())
            .or_insert(RefOr::T(response));
    }
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// From `POST /processes` (201) and `POST /pty` (201) to what takes the
/// new pid or session id.
fn links(doc: &mut OpenApi) {
    let process_ops = [
        "processes_get",
        "processes_kill",
        "processes_signal",
        "processes_write_stdin",
        "processes_close_stdin",
        "processes_stdout",
        "processes_stderr",
        "processes_output",
        "processes_follow_stdout",
        "processes_follow_stderr",
        "processes_follow_output",
    ];
    add_links(
        doc,
        "/api/v1/processes",
        "pid",
        "$response.body#/pid",
        &process_ops,
    );
    let pty_ops = ["pty_get", "pty_delete", "pty_resize", "pty_websocket"];
    add_links(
        doc,
        "/api/v1/pty",
        "id",
        "$response.body#/session_id",
        &pty_ops,
    );
}

fn add_links(doc: &mut OpenApi, path: &str, param: &str, value: &str, targets: &[&str]) {
    let Some(RefOr::T(created)) = doc
        .paths
        .paths
        .get_mut(path)
        .and_then(|item| item.post.as_mut())
        .and_then(|op| op.responses.responses.get_mut("201"))
    else {
        return;
    };
    for target in targets {
        let link = LinkBuilder::new()
            .operation_id(*target)
            .parameter(param, value)
            .build();
        created.links.insert((*target).to_owned(), RefOr::T(link));
    }
}

/// utoipa 5.5 serializes a Link's fields in snake case (`operation_id`);
/// OpenAPI names them in camel case, so the served document is fixed up.
pub fn camel_case_links(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let links = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(snake) {
                link.insert(camel.to_owned(), value);
            }
        }
    }
}
