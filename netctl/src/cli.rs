//! Command line: `serve` runs the daemon; the rest talk to it, except
//! `check`, which validates a policy offline.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use sbx_proto::policy::{NetworkPolicy, SandboxSpec, SetupSpec};

use crate::client;
use crate::ingress::SourceKind;
use crate::view::SandboxView;

pub const DEFAULT_SOCKET: &str = "/run/netctl/netctl.sock";
pub const DEFAULT_CONFIG: &str = "/etc/netctl/config.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netctl";

#[derive(Debug, Parser)]
#[command(
    name = "netctl",
    version,
    about = "Sandbox egress policy as nftables rules"
)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "NETCTL_SOCKET", default_value = DEFAULT_SOCKET)]
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
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Create or replace a sandbox's policy.
    Apply {
        id: String,
        /// A name under /run/netns, or /proc/<pid>/ns/net.
        #[arg(long)]
        netns: String,
        /// The sandbox's tap/veth inside that netns (forwarded VM traffic).
        #[arg(long)]
        iface: Option<String>,
        /// Policy JSON file, or `-` for stdin.
        #[arg(long)]
        policy: String,
    },
    /// Replace the policy of a sandbox netctl already manages (created by
    /// `apply` or `netns create`), keeping its namespace.
    SetPolicy {
        id: String,
        /// Policy JSON file, or `-` for stdin.
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        policy: Option<String>,
        /// Drop the policy: everything is allowed.
        #[arg(long)]
        clear: bool,
    },
    /// Show one sandbox.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List sandboxes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove our rules from a sandbox's namespace.
    Remove { id: String },
    /// Namespaces netctl makes itself: veth pair, addresses, routes.
    Netns {
        #[command(subcommand)]
        command: NetnsCommand,
    },
    /// Validate a policy without a daemon.
    Check {
        #[arg(long)]
        policy: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetnsCommand {
    /// Make a sandbox's namespace and network (idempotent), then apply
    /// its policy.
    Create {
        id: String,
        /// Also a tap device inside, for a microVM, with forwarding on.
        #[arg(long)]
        tap: bool,
        /// Policy JSON file, or `-` for stdin. None: everything allowed.
        #[arg(long)]
        policy: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove the sandbox, its namespace and everything netctl made for it.
    Delete { id: String },
}

fn read_policy(source: &str) -> anyhow::Result<NetworkPolicy> {
    let mut text = String::new();
    if source == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("read policy from stdin")?;
    } else {
        text = std::fs::read_to_string(source).with_context(|| format!("read {source}"))?;
    }
    let policy: NetworkPolicy =
        serde_json::from_str(&text).with_context(|| format!("policy {source}"))?;
    policy
        .validate()
        .map_err(|e| anyhow::anyhow!("policy {source}: {e}"))?;
    Ok(policy)
}

pub async fn run_client(socket: &Path, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { .. } => bail!("serve is handled by main"),
        Command::Check { policy } => {
            let p = read_policy(&policy)?;
            println!(
                "ok: allow_internet_access={}, {} allow_out, {} deny_out entries",
                p.allow_internet_access,
                p.allow_out.len(),
                p.deny_out.len()
            );
        }
        Command::Apply {
            id,
            netns,
            iface,
            policy,
        } => {
            let spec = SandboxSpec {
                netns: Some(netns),
                setup: None,
                iface,
                network: Some(read_policy(&policy)?),
            };
            spec.validate().map_err(anyhow::Error::msg)?;
            let body = serde_json::to_vec(&spec)?;
            let out =
                client::request(socket, "PUT", &format!("/v1/sandboxes/{id}"), Some(body)).await?;
            let view: SandboxView = serde_json::from_slice(&out)?;
            println!("applied {} in {}", view.id, view.netns);
        }
        Command::SetPolicy { id, policy, clear } => {
            sbx_proto::policy::validate_id(&id)?;
            let network = match (policy, clear) {
                (Some(source), false) => Some(read_policy(&source)?),
                _ => None,
            };
            let body = serde_json::to_vec(&serde_json::json!({ "network": network }))?;
            let out = client::request(socket, "PATCH", &format!("/v1/sandboxes/{id}"), Some(body))
                .await?;
            let view: SandboxView = serde_json::from_slice(&out)?;
            println!("applied {} in {}", view.id, view.netns);
        }
        Command::Show { id, json } => {
            sbx_proto::policy::validate_id(&id)?;
            let out = client::request(socket, "GET", &format!("/v1/sandboxes/{id}"), None).await?;
            let view: SandboxView = serde_json::from_slice(&out)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_view(&view);
            }
        }
        Command::List { json } => {
            let out = client::request(socket, "GET", "/v1/sandboxes", None).await?;
            let views: Vec<SandboxView> = serde_json::from_slice(&out)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                for v in views {
                    println!(
                        "{}\t{}\t{}{}",
                        v.id,
                        v.netns,
                        if v.applied { "applied" } else { "NOT APPLIED" },
                        v.error.map(|e| format!("\t{e}")).unwrap_or_default()
                    );
                }
            }
        }
        Command::Netns {
            command:
                NetnsCommand::Create {
                    id,
                    tap,
                    policy,
                    json,
                },
        } => {
            sbx_proto::policy::validate_id(&id)?;
            let spec = SandboxSpec {
                netns: None,
                setup: Some(SetupSpec { tap }),
                iface: None,
                network: policy.as_deref().map(read_policy).transpose()?,
            };
            spec.validate().map_err(anyhow::Error::msg)?;
            let body = serde_json::to_vec(&spec)?;
            let out =
                client::request(socket, "PUT", &format!("/v1/sandboxes/{id}"), Some(body)).await?;
            let view: SandboxView = serde_json::from_slice(&out)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_view(&view);
            }
        }
        Command::Netns {
            command: NetnsCommand::Delete { id },
        } => {
            sbx_proto::policy::validate_id(&id)?;
            client::request(socket, "DELETE", &format!("/v1/sandboxes/{id}"), None).await?;
            println!("deleted {id}");
        }
        Command::Remove { id } => {
            sbx_proto::policy::validate_id(&id)?;
            client::request(socket, "DELETE", &format!("/v1/sandboxes/{id}"), None).await?;
            println!("removed {id}");
        }
    }
    Ok(())
}

fn print_view(v: &SandboxView) {
    println!("sandbox  {}", v.id);
    println!("netns    {}", v.netns);
    if let Some(iface) = &v.iface {
        println!("iface    {iface}");
    }
    if let Some(s) = &v.setup {
        println!("slot     {}", s.slot);
        println!(
            "veth     {} (host) <-> {} (sandbox)",
            s.host_iface, s.sandbox_iface
        );
        println!("ipv4     {} via {}", s.ipv4, s.gateway4);
        if let (Some(v6), Some(gw6)) = (&s.ipv6, &s.gateway6) {
            println!("ipv6     {v6} via {gw6}");
        }
        if let Some(tap) = &s.tap {
            println!("tap      {tap}");
        }
    }
    println!("applied  {}", v.applied);
    if let Some(generation) = v.policy_generation {
        println!("policy generation {generation} (connections judged under it skip the sets)");
    }
    if let Some(e) = &v.error {
        println!("error    {e}");
    }
    match &v.network {
        None => println!("policy   none (all allowed)"),
        Some(p) => {
            println!(
                "internet {}",
                if p.allow_internet_access {
                    "allowed"
                } else {
                    "refused"
                }
            );
            println!("allow    {}", p.allow_out.join(", "));
            println!("deny     {}", p.deny_out.join(", "));
        }
    }
    if let Some(i) = &v.ingress {
        let from: Vec<String> = i.allow_from.iter().map(ToString::to_string).collect();
        let why = match i.from {
            SourceKind::Config => "[ingress] allow_from",
            SourceKind::HostEnd => "host end of the link",
            SourceKind::Gateways => "the namespace's default gateways",
            SourceKind::None => "no source known: all refused",
        };
        println!("inbound  tcp/{} from [{}] ({why})", i.port, from.join(", "));
    }
    for n in &v.names {
        let addrs: Vec<String> = n.addresses.iter().map(|a| a.address.to_string()).collect();
        println!(
            "name     {} -> [{}]{}",
            n.name,
            addrs.join(", "),
            n.error
                .as_ref()
                .map(|e| format!(" (last lookup failed: {e})"))
                .unwrap_or_default()
        );
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for a in &v.answers {
        let addrs: Vec<String> = a
            .addresses
            .iter()
            .map(|(addr, expires)| {
                format!(
                    "{addr} (expires in {}s)",
                    expires.saturating_sub(now_ms) / 1000
                )
            })
            .collect();
        println!(
            "resolved {} {}s ago -> [{}]",
            a.name,
            now_ms.saturating_sub(a.at_ms) / 1000,
            addrs.join(", ")
        );
    }
    if let Some(c) = &v.counters {
        println!(
            "packets  out: {} accepted by the rules, {} on connections they accepted, {} refused; in: {} refused",
            c.accepted, c.accepted_fast, c.refused, c.inbound_refused
        );
    }
}
