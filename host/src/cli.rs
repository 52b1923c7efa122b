//! Command line: `serve` runs the daemon; `sandbox ...` talks to it over
//! its socket and prints its answers.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::{RuntimeKind, DEFAULT_CONFIG, DEFAULT_SOCKET};

#[derive(Debug, Parser)]
#[command(
    name = "sbx-host",
    version,
    about = "Sandboxes on this host: network from netctl, guests on QEMU microVMs"
)]
pub struct Cli {
    /// The daemon's API socket (for the client commands).
    #[arg(long, global = true, env = "SBX_HOST_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Create, inspect, suspend, resume and remove sandboxes.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox; prints it once its agent answers.
    Create {
        id: String,
        #[arg(long)]
        image: Option<String>,
        #[arg(long, value_parser = parse_runtime)]
        runtime: Option<RuntimeKind>,
        #[arg(long, default_value_t = 1.0)]
        cpus: f64,
        #[arg(long, default_value_t = 512)]
        memory_mb: u64,
        /// Network policy JSON file, or `-` for stdin.
        #[arg(long)]
        policy: Option<String>,
        /// Also print the agent's forwarded-auth key (it is secret).
        #[arg(long)]
        show_key: bool,
        /// A command started in the sandbox once it runs.
        #[arg(last = true)]
        entrypoint: Vec<String>,
    },
    Show {
        id: String,
    },
    List,
    Suspend {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Delete a sandbox: guest stopped, network deleted, files removed.
    Rm {
        id: String,
    },
}

fn parse_runtime(s: &str) -> Result<RuntimeKind, String> {
    match s {
        "microvm" => Ok(RuntimeKind::Microvm),
        "process" => Ok(RuntimeKind::Process),
        _ => Err("microvm or process".into()),
    }
}

pub async fn run_client(socket: &Path, command: SandboxCommand) -> anyhow::Result<()> {
    let call = |method: &'static str, path: String, body: Option<Vec<u8>>| async move {
        sbx_service::control::request("sbx-host", socket, method, &path, body)
            .await
            .map_err(anyhow::Error::from)
    };
    let answer = match command {
        SandboxCommand::Create {
            id,
            image,
            runtime,
            cpus,
            memory_mb,
            policy,
            show_key,
            entrypoint,
        } => {
            let network: Option<Value> = match policy {
                Some(p) => Some(serde_json::from_str(&read_arg(&p)?).context("policy: not JSON")?),
                None => None,
            };
            let body = json!({
                "id": id, "image": image, "runtime": runtime, "cpus": cpus,
                "memory_mb": memory_mb, "network": network,
                "entrypoint": (!entrypoint.is_empty()).then_some(entrypoint),
            });
            let bytes = call(
                "POST",
                "/v1/sandboxes".into(),
                Some(serde_json::to_vec(&body)?),
            )
            .await?;
            let mut v: Value = serde_json::from_slice(&bytes)?;
            if !show_key {
                if let Some(o) = v.as_object_mut() {
                    o.remove("forwarded_auth_key");
                }
            }
            Some(v)
        }
        SandboxCommand::Show { id } => Some(parse(
            &call("GET", format!("/v1/sandboxes/{id}"), None).await?,
        )?),
        SandboxCommand::List => Some(parse(&call("GET", "/v1/sandboxes".into(), None).await?)?),
        SandboxCommand::Suspend { id } => Some(parse(
            &call("POST", format!("/v1/sandboxes/{id}/suspend"), None).await?,
        )?),
        SandboxCommand::Resume { id } => Some(parse(
            &call("POST", format!("/v1/sandboxes/{id}/resume"), None).await?,
        )?),
        SandboxCommand::Rm { id } => {
            call("DELETE", format!("/v1/sandboxes/{id}"), None).await?;
            None
        }
    };
    if let Some(v) = answer {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

fn parse(bytes: &[u8]) -> anyhow::Result<Value> {
    serde_json::from_slice(bytes).context("unexpected answer")
}

fn read_arg(p: &str) -> anyhow::Result<String> {
    if p == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(p).with_context(|| format!("read {p}"))
    }
}
