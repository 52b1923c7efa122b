//! `PUT /files`: a streamed upload that is atomic and durable before it is
//! acknowledged.
//!
//! The bytes go to a temporary file in the target's directory, which is
//! renamed over the target at the end, so a reader sees the old file or the
//! new one, never half of one. Before the 204 the file is fsynced (its data
//! survives a crash of the VM), then the rename, then every directory whose
//! entries changed (the new name, and any parent the upload created), so an
//! acknowledged upload is never lost or found under its temporary name.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use sbx_proto::ErrorCode;

use super::{io_error, is_directory, QUEUE};
use crate::error::ApiError;

/// What an upload wrote.
#[derive(Debug)]
pub struct Written {
    pub bytes: u64,
    /// Directories fsynced after the rename, innermost first.
    pub synced_dirs: Vec<PathBuf>,
}

/// Streams `chunks` into `path` through a temporary file renamed over it;
/// everything is on disk when this returns Ok. Parents are created.
pub async fn write_atomic<S, E>(path: &Path, mut chunks: S) -> Result<Written, ApiError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use futures_util::StreamExt as _;

    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(is_directory(path));
    };
    match tokio::fs::metadata(path).await {
        Ok(meta) if meta.is_dir() => return Err(is_directory(path)),
        _ => {}
    }
    let dirs_to_sync = changed_dirs(parent).await;
    tokio::fs::create_dir_all(parent).await.map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            // A component of the parent path exists as a file.
            ApiError::new(
                ErrorCode::NotADirectory,
                format!(
                    "{}: a component of the path is not a directory",
                    path.display()
                ),
            )
        } else {
            io_error(parent, &e)
        }
    })?;
    let existing_mode = tokio::fs::metadata(path)
        .await
        .ok()
        .map(|m| m.permissions());

    let tmp = parent.join(format!(
        ".{}.sbx-upload-{}",
        name.to_string_lossy(),
        hex::encode(rand::random::<[u8; 6]>())
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io_error(parent, &e))?;
    // A blocking thread writes while the socket is read: the two overlap,
    // with a few chunks queued between them at most.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(QUEUE * 4);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        use std::io::Write as _;
        let mut file = file;
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk)?;
        }
        Ok(file)
    });
    let result: Result<Written, ApiError> = async {
        let mut written = 0u64;
        let mut body_error = None;
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => {
                    written += chunk.len() as u64;
                    // A closed queue means the writer failed; it says why below.
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    body_error = Some(ApiError::new(
                        ErrorCode::BadRequest,
                        format!("reading request body: {e}"),
                    ));
                    break;
                }
            }
        }
        drop(tx);
        let file = writer
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("writer thread: {e}")))?
            .map_err(|e| io_error(path, &e))?;
        if let Some(err) = body_error {
            return Err(err);
        }
        let (tmp, target) = (tmp.clone(), path.to_owned());
        tokio::task::spawn_blocking(move || {
            commit(file, existing_mode, &tmp, &target, &dirs_to_sync)
                .map(|()| dirs_to_sync)
                .map_err(|e| io_error(&target, &e))
        })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("commit thread: {e}")))?
        .map(|synced_dirs| Written {
            bytes: written,
            synced_dirs,
        })
    }
    .await;
    if result.is_err() {
        match tokio::fs::remove_file(&tmp).await {
            // Renamed already: the error came from syncing a directory.
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(tmp = %tmp.display(), error = %err, "cannot remove partial upload")
            }
            Ok(()) => {}
        }
    }
    result
}

/// The permissions of the file it replaces, data and metadata to disk, the
/// rename, then the directories whose entries changed.
fn commit(
    file: std::fs::File,
    mode: Option<std::fs::Permissions>,
    tmp: &Path,
    target: &Path,
    dirs: &[PathBuf],
) -> std::io::Result<()> {
    if let Some(mode) = mode {
        file.set_permissions(mode)?;
    }
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, target)?;
    for dir in dirs {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The directories an upload into `parent` changes, innermost first:
/// `parent` itself (the new name), and for each directory the upload will
/// create, the directory holding it.
async fn changed_dirs(parent: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for dir in parent.ancestors() {
        dirs.push(dir.to_owned());
        if tokio::fs::metadata(dir).await.is_ok() {
            break;
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(
        parts: &[&'static [u8]],
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(bytes::Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn syncs_the_file_and_every_directory_it_changed() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("a/b/file");
        let written = write_atomic(&target, body(&[b"hello ", b"world"]))
            .await
            .unwrap();
        assert_eq!(written.bytes, 11);
        assert_eq!(std::fs::read(&target).unwrap(), b"hello world");
        // The new name in a/b, b in a, a in the root.
        assert_eq!(
            written.synced_dirs,
            [
                root.path().join("a/b"),
                root.path().join("a"),
                root.path().to_owned()
            ]
        );
        // Replacing it changes only its own directory.
        let again = write_atomic(&target, body(&[b"x"])).await.unwrap();
        assert_eq!(again.synced_dirs, [root.path().join("a/b")]);
        assert_eq!(names(&root.path().join("a/b")), ["file"]);
    }

    #[tokio::test]
    async fn a_broken_body_leaves_the_old_file_and_no_temporary_one() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("f");
        std::fs::write(&target, b"old").unwrap();
        let broken = futures_util::stream::iter(vec![
            Ok(bytes::Bytes::from_static(b"new")),
            Err("connection reset".to_owned()),
        ]);
        let err = write_atomic(&target, broken).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(names(root.path()), ["f"]);
    }
}
