//! The agent's OpenAPI 3 document, `GET /api/v1/openapi.json`.
//!
//! Paths come from the `#[utoipa::path]` attributes on the handlers
//! themselves. The wire types live in `sbx-proto`, which does not depend on
//! utoipa, so their schemas are described here by mirror types; the tests
//! below make drift impossible to miss: each mirror is built from its proto
//! type by an exhaustive destructuring (a new or renamed field fails to
//! compile) and must serialize to exactly the same JSON. `extras` adds what
//! concerns the whole document (auth, 401s, operation ids, links).

mod extras;
mod schemas;

#[cfg(test)]
mod drift;

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use bytes::Bytes;
use utoipa::OpenApi;

use extras::Extras;
pub use schemas::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sbx-agent management API",
        description = "Processes, output streams, files, PTY sessions and the TCP tunnel of one sandbox. Wire-compatible with the Tensorlake sandbox SDK. Every route but /health needs `Authorization: Bearer` (direct mode) or `X-Sandbox-Forwarded-Auth`."
    ),
    paths(
        super::system::health,
        super::system::info,
        openapi_json,
        super::processes::create,
        super::processes::list,
        super::processes::run,
        super::processes::get,
        super::processes::kill,
        super::processes::signal,
        super::processes::write_stdin,
        super::processes::close_stdin,
        super::processes::stdout,
        super::processes::stderr,
        super::processes::output,
        super::processes::follow_stdout,
        super::processes::follow_stderr,
        super::processes::follow_output,
        super::files::read,
        super::files::write,
        super::files::delete,
        super::files::list,
        super::pty::create,
        super::pty::list,
        super::pty::get,
        super::pty::delete,
        super::pty::resize,
        super::pty::websocket,
        crate::tunnel::open,
        crate::tunnel::open_raw,
    ),
    modifiers(&Extras),
    components(schemas(OutputEventDoc, RunStartedDoc, RunExitDoc))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document().clone(),
    )
}

/// The document as served, serialized once.
pub fn document() -> &'static Bytes {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|err| {
            tracing::error!(error = %err, "cannot serialize the OpenAPI document");
            serde_json::Value::Null
        });
        extras::camel_case_links(&mut doc);
        Bytes::from(doc.to_string())
    })
}
