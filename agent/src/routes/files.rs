//! `/files`: read, write, delete and list, streamed both ways.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sbx_proto::api::DirectoryListing;
use serde::Deserialize;

use super::extract::ApiQuery;
use crate::error::ApiError;
use crate::files;

#[derive(Debug, Deserialize)]
pub struct PathQuery {
    path: Option<String>,
    #[serde(default)]
    recursive: bool,
}

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

pub async fn write(
    ApiQuery(q): ApiQuery<PathQuery>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let path = files::checked_path(q.path.as_deref())?;
    let written = files::write_atomic(&path, request.into_body().into_data_stream()).await?;
    tracing::debug!(path = %path.display(), written, "file written");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete(ApiQuery(q): ApiQuery<PathQuery>) -> Result<StatusCode, ApiError> {
    let path = files::checked_path(q.path.as_deref())?;
    files::delete(&path, q.recursive).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list(ApiQuery(q): ApiQuery<PathQuery>) -> Result<Json<DirectoryListing>, ApiError> {
    let path = files::checked_path(q.path.as_deref())?;
    Ok(Json(files::list(&path).await?))
}
