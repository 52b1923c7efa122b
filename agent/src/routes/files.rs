//! `/files`: read, write, delete and list, streamed both ways.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sbx_proto::api::DirectoryListing;
use serde::Deserialize;

use super::extract::ApiQuery;
use super::openapi::*;
use crate::error::ApiError;
use crate::files;

#[derive(Debug, Deserialize)]
pub struct PathQuery {
    pub(crate) path: Option<String>,
    #[serde(default)]
    pub(crate) recursive: bool,
}

#[utoipa::path(get, path = "/api/v1/files", tag = "files", params(("path" = String, Query, description = "Absolute path; `..` segments are refused (403 PATH_TRAVERSAL)", pattern = "^/[^\\u0000]*$")), responses((status = 200, description = "The file, streamed", content_type = "application/octet-stream"), (status = 400, description = "BAD_REQUEST, IS_DIRECTORY, NOT_A_DIRECTORY", body = ErrorDoc), (status = 403, description = "PATH_TRAVERSAL; FORBIDDEN: permission denied", body = ErrorDoc), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn read(ApiQuery(q): ApiQuery<PathQuery>) -> Result<Response, ApiError> {
    let path = files::checked_path(q.path.as_deref())?;
    let (len, stream) = files::open_for_read(&path).await?;
    let body = Body::from_stream(stream);
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(response)
}

#[utoipa::path(put, path = "/api/v1/files", tag = "files", params(("path" = String, Query, description = "Absolute path; `..` segments are refused (403 PATH_TRAVERSAL)", pattern = "^/[^\\u0000]*$")), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 204, description = "Written atomically (temporary file, then rename) and on disk (file and directories fsynced) before the answer; parents created"), (status = 400, description = "BAD_REQUEST, IS_DIRECTORY, NOT_A_DIRECTORY", body = ErrorDoc), (status = 403, description = "PATH_TRAVERSAL; FORBIDDEN: permission denied", body = ErrorDoc), (status = 413, description = "PAYLOAD_TOO_LARGE: the disk or quota is full", body = ErrorDoc)))]
pub async fn write(
    ApiQuery(q): ApiQuery<PathQuery>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let path = files::checked_path(q.path.as_deref())?;
    let written = files::write_atomic(&path, request.into_body().into_data_stream()).await?;
    tracing::debug!(path = %path.display(), bytes = written.bytes, synced_dirs = written.synced_dirs.len(), "file written and synced");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/files", tag = "files", params(("path" = String, Query, description = "Absolute path; `..` segments are refused (403 PATH_TRAVERSAL)", pattern = "^/[^\\u0000]*$"), ("recursive" = Option<bool>, Query, description = "Delete a directory and its contents")), responses((status = 204), (status = 400, description = "BAD_REQUEST, IS_DIRECTORY", body = ErrorDoc), (status = 403, description = "PATH_TRAVERSAL; FORBIDDEN: permission denied", body = ErrorDoc), (status = 404, description = "NOT_FOUND", body = ErrorDoc)))]
pub async fn delete(ApiQuery(q): ApiQuery<PathQuery>) -> Result<StatusCode, ApiError> {
    let path = files::checked_path(q.path.as_deref())?;
    files::delete(&path, q.recursive).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/files/list", tag = "files", params(("path" = String, Query, description = "Absolute path; `..` segments are refused (403 PATH_TRAVERSAL)", pattern = "^/[^\\u0000]*$")), responses((status = 200, body = DirectoryListingDoc), (status = 400, description = "BAD_REQUEST, NOT_A_DIRECTORY", body = ErrorDoc), (status = 403, description = "PATH_TRAVERSAL; FORBIDDEN: permission denied", body = ErrorDoc), (status = 404, description = "NOT_FOUND", body = ErrorDoc), (status = 413, description = "PAYLOAD_TOO_LARGE: more than 100,000 entries", body = ErrorDoc)))]
pub async fn list(ApiQuery(q): ApiQuery<PathQuery>) -> Result<Json<DirectoryListing>, ApiError> {
    let path = files::checked_path(q.path.as_deref())?;
    Ok(Json(files::list(&path).await?))
}
