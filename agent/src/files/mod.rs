//! File access for `/files`: path checks, streamed reads, atomic and
//! durable streamed writes (`write`), deletes and directory listings.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use sbx_proto::api::{DirectoryEntry, DirectoryListing};
use sbx_proto::ErrorCode;

use crate::error::ApiError;

mod write;

pub use write::write_atomic;

/// Largest directory listed; a bigger one is refused rather than answered
/// with an unbounded body.
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// Validates the `path` query parameter: present, absolute, no NUL, and no
/// `..` segment (403 `PATH_TRAVERSAL`).
pub fn checked_path(path: Option<&str>) -> Result<PathBuf, ApiError> {
    let raw = path.filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError::new(ErrorCode::BadRequest, "query parameter `path` is required")
    })?;
    if raw.contains('\0') {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "path must not contain NUL",
        ));
    }
    let path = PathBuf::from(raw);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(ApiError::new(
            ErrorCode::PathTraversal,
            format!("path {raw:?} contains a `..` segment"),
        ));
    }
    if !path.is_absolute() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("path {raw:?} must be absolute"),
        ));
    }
    Ok(path)
}

/// Maps an I/O error on `path` to the API's codes.
pub fn io_error(path: &Path, err: &std::io::Error) -> ApiError {
    let shown = path.display();
    let code = match err.kind() {
        ErrorKind::NotFound => ErrorCode::NotFound,
        ErrorKind::IsADirectory => ErrorCode::IsDirectory,
        ErrorKind::NotADirectory => ErrorCode::NotADirectory,
        ErrorKind::PermissionDenied => ErrorCode::Forbidden,
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => ErrorCode::PayloadTooLarge,
        _ => ErrorCode::Internal,
    };
    let message = match code {
        ErrorCode::NotFound => format!("{shown}: no such file or directory"),
        ErrorCode::IsDirectory => format!("{shown} is a directory"),
        ErrorCode::NotADirectory => format!("{shown}: a component of the path is not a directory"),
        _ => format!("{shown}: {err}"),
    };
    ApiError::new(code, message)
}

pub(crate) fn is_directory(path: &Path) -> ApiError {
    ApiError::new(
        ErrorCode::IsDirectory,
        format!("{} is a directory", path.display()),
    )
}

fn ms(time: std::io::Result<std::time::SystemTime>) -> Option<u64> {
    let since = time.ok()?.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

/// Bytes read from a file per chunk when downloading.
const READ_CHUNK: usize = 1024 * 1024;
/// Chunks queued between the file thread and the socket, each way.
pub(crate) const QUEUE: usize = 8;

/// Opens a regular file for reading; returns its length and a stream of its
/// bytes. A blocking thread reads ahead while the socket drains, a few
/// chunks at most, so throughput is close to the disk's and memory bounded.
pub async fn open_for_read(
    path: &Path,
) -> Result<
    (
        u64,
        impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>>,
    ),
    ApiError,
> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| io_error(path, &e))?;
    let meta = file.metadata().await.map_err(|e| io_error(path, &e))?;
    if meta.is_dir() {
        return Err(is_directory(path));
    }
    let mut file = file.into_std().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(QUEUE);
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        loop {
            // read_to_end into spare capacity: no zeroing of each chunk.
            let mut buf = Vec::with_capacity(READ_CHUNK);
            match (&mut file).take(READ_CHUNK as u64).read_to_end(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %shown, error = %e, "read failed mid-download");
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
            // The client went away: stop reading.
            if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((meta.len(), stream))
}

/// Deletes a file, or a directory when `recursive` (else 400 `IS_DIRECTORY`).
pub async fn delete(path: &Path, recursive: bool) -> Result<(), ApiError> {
    let meta = tokio::fs::symlink_metadata(path)
        .await
        .map_err(|e| io_error(path, &e))?;
    let result = if meta.is_dir() {
        if !recursive {
            return Err(ApiError::new(
                ErrorCode::IsDirectory,
                format!("{} is a directory (use recursive=true)", path.display()),
            ));
        }
        tokio::fs::remove_dir_all(path).await
    } else {
        tokio::fs::remove_file(path).await
    };
    result.map_err(|e| io_error(path, &e))
}

/// Lists a directory: directories first, then by name.
pub async fn list(path: &Path) -> Result<DirectoryListing, ApiError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| io_error(path, &e))?;
    if !meta.is_dir() {
        return Err(ApiError::new(
            ErrorCode::NotADirectory,
            format!("{} is not a directory", path.display()),
        ));
    }
    let mut dir = tokio::fs::read_dir(path)
        .await
        .map_err(|e| io_error(path, &e))?;
    let mut entries = Vec::new();
    while let Some(entry) = dir.next_entry().await.map_err(|e| io_error(path, &e))? {
        if entries.len() >= MAX_LIST_ENTRIES {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "{} has more than {MAX_LIST_ENTRIES} entries",
                    path.display()
                ),
            ));
        }
        // Follow symlinks to describe what they point at; a dangling one is
        // listed as what it is.
        let meta = match tokio::fs::metadata(entry.path()).await {
            Ok(meta) => Some(meta),
            Err(_) => entry.metadata().await.ok(),
        };
        let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
        entries.push(DirectoryEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            is_dir,
            size: meta.as_ref().filter(|_| !is_dir).map(|m| m.len()),
            modified_at: meta.as_ref().and_then(|m| ms(m.modified())),
        });
    }
    entries.sort_by(|a, b| b.is_dir.cmp(&a.is_dir).then_with(|| a.name.cmp(&b.name)));
    Ok(DirectoryListing {
        path: path.to_string_lossy().into_owned(),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_checks() {
        assert_eq!(checked_path(None).unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(
            checked_path(Some("")).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            checked_path(Some("/tmp/../etc/passwd")).unwrap_err().code,
            ErrorCode::PathTraversal
        );
        assert_eq!(
            checked_path(Some("relative")).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert!(checked_path(Some("/tmp/a..b/c")).is_ok());
    }
}
