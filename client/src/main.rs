//! `sbx`: reach a sandbox's agent from your machine.

mod credentials;
mod exec;
mod files;
mod http;
mod port;
mod request;
mod target;
mod tunnel;

use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::credentials::Credentials;
use crate::target::AgentUrl;

#[derive(Debug, Parser)]
#[command(name = "sbx", version, about = "Client for sandbox agents")]
struct Cli {
    /// Log more (repeat for more detail).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Forward a local TCP port to a port inside the sandbox.
    Tunnel(TunnelArgs),
    /// Run a command in the sandbox, stream its output, exit with its code.
    Exec(ExecArgs),
    /// Copy files to and from the sandbox, and list directories.
    #[command(subcommand)]
    Files(FilesCommand),
    /// Expose a sandbox's ports through the sandbox proxy, list or remove them.
    #[command(subcommand)]
    Port(PortCommand),
    /// Print a forwarded-auth token, as the sandbox proxy would mint it.
    MintToken {
        #[arg(long)]
        key_file: PathBuf,
        #[arg(long)]
        sandbox_id: String,
        /// Seconds the token stays valid.
        #[arg(long, default_value_t = 300)]
        ttl: u64,
    },
}

#[derive(Debug, Args)]
struct TunnelArgs {
    /// Agent base URL, e.g. http://127.0.0.1:9501
    agent_url: String,
    /// Port inside the sandbox (1-65535).
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    remote_port: u16,
    /// Local port to listen on [default: the remote port]; 0 picks a free one.
    #[arg(short, long)]
    listen: Option<u16>,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    #[command(flatten)]
    auth: AuthArgs,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// Agent base URL, e.g. http://127.0.0.1:9501
    agent_url: String,
    /// Environment variable for the command (NAME=VALUE, repeatable).
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User to run as: name, uid, or uid:gid.
    #[arg(short, long)]
    user: Option<String>,
    /// Seconds before the command is killed.
    #[arg(long)]
    timeout: Option<f64>,
    #[command(flatten)]
    auth: AuthArgs,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum FilesCommand {
    /// Download a file (`-` as LOCAL writes to stdout).
    Get {
        agent_url: String,
        remote: String,
        local: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Upload a file; parent directories are created.
    Put {
        agent_url: String,
        local: String,
        remote: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// List a directory.
    Ls {
        agent_url: String,
        remote: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
}

#[derive(Debug, Subcommand)]
enum PortCommand {
    /// Expose a port: public (no credential needed), unless --auth.
    Expose {
        /// Sandbox id or name.
        sandbox: String,
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// Callers must present a platform credential.
        #[arg(long)]
        auth: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List a sandbox's exposed ports and their URLs.
    Ls {
        sandbox: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop exposing a port.
    Rm {
        sandbox: String,
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Args)]
struct ApiArgs {
    /// The sandbox API (sbx-proxy's `listen_api`).
    #[arg(long, env = "SBX_API_URL", default_value = "http://127.0.0.1:8900")]
    api_url: String,
    /// API key; without one, only a proxy that allows unauthenticated
    /// localhost use answers.
    #[arg(long, env = "SBX_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Namespace, for a localhost API.
    #[arg(long, default_value = "default")]
    namespace: String,
}

impl ApiArgs {
    fn api(self) -> anyhow::Result<port::Api> {
        let credentials = match self.api_key {
            Some(key) => Credentials::from_args(Some(key), None, None, None, 0)?,
            None => Credentials::Anonymous,
        };
        Ok(port::Api {
            url: AgentUrl::parse(&self.api_url)?,
            credentials,
            namespace: self.namespace,
        })
    }
}

#[derive(Debug, Args)]
struct AuthArgs {
    /// Direct bearer token (the agent's opt-in direct mode).
    #[arg(
        long,
        env = "SBX_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the direct bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Forwarded-auth key file (64 hex characters), to mint tokens as the proxy does.
    #[arg(long, conflicts_with_all = ["token", "token_file"], requires = "sandbox_id")]
    key_file: Option<PathBuf>,
    /// Sandbox id the forwarded-auth tokens are minted for.
    #[arg(long)]
    sandbox_id: Option<String>,
    /// Lifetime of each minted forwarded-auth token, in seconds.
    #[arg(long, default_value_t = 300)]
    token_ttl: u64,
    /// Go through sbx-proxy: the URL is the proxy's (its plain listener),
    /// this names the sandbox, and the token is your API key.
    #[arg(long, value_name = "ID_OR_NAME", conflicts_with = "key_file")]
    via_proxy: Option<String>,
}

impl AuthArgs {
    fn credentials(self) -> Result<Credentials, credentials::CredentialsError> {
        Credentials::from_args(
            self.token,
            self.token_file.as_deref(),
            self.key_file.as_deref(),
            self.sandbox_id,
            self.token_ttl,
        )?
        .via_proxy(self.via_proxy)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("sbx: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text the
/// message before it already quotes (our errors embed their source).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs a subcommand; returns the process exit status.
fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Exec(args) => {
            let opts = exec::ExecOptions {
                agent: AgentUrl::parse(&args.agent_url)?,
                credentials: args.auth.credentials()?,
                command: args.command,
                env: args.env,
                working_dir: args.workdir,
                user: args.user,
                timeout: args.timeout,
            };
            runtime()?.block_on(exec::run(opts))
        }
        Command::Files(cmd) => {
            let rt = runtime()?;
            match cmd {
                FilesCommand::Get {
                    agent_url,
                    remote,
                    local,
                    auth,
                } => {
                    let agent = AgentUrl::parse(&agent_url)?;
                    let creds = auth.credentials()?;
                    rt.block_on(files::get(&agent, &creds, &remote, &local))?;
                }
                FilesCommand::Put {
                    agent_url,
                    local,
                    remote,
                    auth,
                } => {
                    let agent = AgentUrl::parse(&agent_url)?;
                    let creds = auth.credentials()?;
                    rt.block_on(files::put(&agent, &creds, &local, &remote))?;
                }
                FilesCommand::Ls {
                    agent_url,
                    remote,
                    auth,
                } => {
                    let agent = AgentUrl::parse(&agent_url)?;
                    let creds = auth.credentials()?;
                    rt.block_on(files::ls(&agent, &creds, &remote))?;
                }
            }
            Ok(0)
        }
        Command::Port(cmd) => {
            let rt = runtime()?;
            match cmd {
                PortCommand::Expose {
                    sandbox,
                    port,
                    auth,
                    api,
                } => rt.block_on(port::expose(&api.api()?, &sandbox, port, auth))?,
                PortCommand::Ls { sandbox, api } => rt.block_on(port::ls(&api.api()?, &sandbox))?,
                PortCommand::Rm { sandbox, port, api } => {
                    rt.block_on(port::rm(&api.api()?, &sandbox, port))?
                }
            }
            Ok(0)
        }
        Command::MintToken {
            key_file,
            sandbox_id,
            ttl,
        } => {
            let creds = Credentials::from_args(None, None, Some(&key_file), Some(sandbox_id), ttl)?;
            let line = creds.header_line();
            let token = line
                .split_once(": ")
                .map(|(_, t)| t.trim_end())
                .unwrap_or_default();
            println!("{token}");
            Ok(0)
        }
        Command::Tunnel(args) => {
            let agent = AgentUrl::parse(&args.agent_url)?;
            let opts = tunnel::TunnelOptions {
                agent,
                remote_port: args.remote_port,
                bind: args.bind,
                listen_port: args.listen.unwrap_or(args.remote_port),
                credentials: args.auth.credentials()?,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(tunnel::run(opts))?;
            Ok(0)
        }
    }
}
