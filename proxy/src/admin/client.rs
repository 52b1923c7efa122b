//! `sbx-proxy sandbox ...`: the registry from the command line, over the
//! admin socket.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use sbx_service::control;

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create or replace a sandbox's entry from a JSON body.
    Put {
        id: String,
        /// JSON file, or `-` for stdin.
        #[arg(long)]
        json: PathBuf,
    },
    /// Change some fields of an entry (JSON merge patch).
    Patch {
        id: String,
        #[arg(long)]
        json: PathBuf,
    },
    /// Show one entry.
    Show { id: String },
    /// List every entry.
    List,
    /// Remove an entry.
    Rm { id: String },
}

pub async fn run(socket: &Path, command: SandboxCommand) -> anyhow::Result<()> {
    let call = |method: &'static str, path: String, body: Option<Vec<u8>>| async move {
        control::request("sbx-proxy", socket, method, &path, body).await
    };
    let out = match command {
        SandboxCommand::Put { id, json } => {
            call(
                "PUT",
                format!("/v1/sandboxes/{id}"),
                Some(read_json(&json)?),
            )
            .await?
        }
        SandboxCommand::Patch { id, json } => {
            call(
                "PATCH",
                format!("/v1/sandboxes/{id}"),
                Some(read_json(&json)?),
            )
            .await?
        }
        SandboxCommand::Show { id } => call("GET", format!("/v1/sandboxes/{id}"), None).await?,
        SandboxCommand::List => call("GET", "/v1/sandboxes".into(), None).await?,
        SandboxCommand::Rm { id } => {
            call("DELETE", format!("/v1/sandboxes/{id}"), None).await?;
            println!("removed {id}");
            return Ok(());
        }
    };
    let pretty = serde_json::from_slice::<serde_json::Value>(&out)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| String::from_utf8_lossy(&out).into_owned());
    println!("{pretty}");
    Ok(())
}

fn read_json(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut body)
            .context("read JSON from stdin")?;
    } else {
        body = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    }
    serde_json::from_slice::<serde_json::Value>(&body).context("the body is not JSON")?;
    Ok(body)
}
