//! `sbx files get|put|ls`: file transfer through `/api/v1/files`, streamed
//! both ways.

use std::path::Path;

use anyhow::{bail, Context as _};
use sbx_proto::api::DirectoryListing;
use tokio::io::AsyncWriteExt as _;

use crate::credentials::Credentials;
use crate::request::{self, encode, Body};
use crate::target::AgentUrl;

/// Largest listing accepted.
const MAX_LISTING: usize = 64 * 1024 * 1024;

/// Downloads `remote` to `local` (`-` for stdout), via a temporary file.
pub async fn get(
    agent: &AgentUrl,
    credentials: &Credentials,
    remote: &str,
    local: &str,
) -> anyhow::Result<()> {
    let mut response = request::send(
        agent,
        "GET",
        &format!("/api/v1/files?path={}", encode(remote)),
        credentials,
        Body::Empty,
        "application/octet-stream",
    )
    .await?
    .success()
    .await?;
    let mut buf = vec![0u8; 256 * 1024];
    if local == "-" {
        let mut out = tokio::io::stdout();
        loop {
            let n = response.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).await.context("writing stdout")?;
        }
        out.flush().await.context("writing stdout")?;
        return Ok(());
    }
    let target = Path::new(local);
    let tmp = target.with_file_name(format!(
        ".{}.sbx-download",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into())
    ));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        loop {
            let n = response.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .await
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        file.flush().await?;
        drop(file);
        tokio::fs::rename(&tmp, target)
            .await
            .with_context(|| format!("cannot rename to {}", target.display()))?;
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// Uploads `local` (`-` for stdin is not supported: the length must be known).
pub async fn put(
    agent: &AgentUrl,
    credentials: &Credentials,
    local: &str,
    remote: &str,
) -> anyhow::Result<()> {
    if local == "-" {
        bail!("uploading from stdin is not supported; give a file");
    }
    let file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("cannot open {local}"))?;
    let meta = file.metadata().await?;
    if meta.is_dir() {
        bail!("{local} is a directory");
    }
    request::send(
        agent,
        "PUT",
        &format!("/api/v1/files?path={}", encode(remote)),
        credentials,
        Body::Reader(Box::new(file), meta.len()),
        "*/*",
    )
    .await?
    .success()
    .await?;
    Ok(())
}

/// Lists a remote directory, `ls -l` style.
pub async fn ls(agent: &AgentUrl, credentials: &Credentials, remote: &str) -> anyhow::Result<()> {
    let body = request::send(
        agent,
        "GET",
        &format!("/api/v1/files/list?path={}", encode(remote)),
        credentials,
        Body::Empty,
        "application/json",
    )
    .await?
    .success()
    .await?
    .bytes(MAX_LISTING)
    .await?;
    let listing: DirectoryListing =
        serde_json::from_slice(&body).context("agent sent a malformed listing")?;
    for entry in listing.entries {
        let size = entry
            .size
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        let kind = if entry.is_dir { "d" } else { "-" };
        let name = if entry.is_dir {
            format!("{}/", entry.name)
        } else {
            entry.name
        };
        println!("{kind} {size:>12} {name}");
    }
    Ok(())
}
