use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sbx_proxy::admin::client::SandboxCommand;
use sbx_proxy::config::{
    Config, LogFormat, DEFAULT_ADMIN_SOCKET, DEFAULT_CONFIG, DEFAULT_CREDENTIALS_FILE,
};
use sbx_proxy::credentials_cli::CredentialsCommand;

/// jemalloc: with ten thousand idle client connections, each holding a
/// few small buffers, glibc's allocator keeps far more resident memory
/// than it uses (measured in bench/proxy).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The sandbox proxy: public URLs into sandboxes through their agents.
#[derive(Debug, Parser)]
#[command(name = "sbx-proxy", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The registry of sandboxes, over the admin socket.
    Sandbox {
        /// The admin socket; default: the one `--config` names.
        #[arg(long)]
        admin_socket: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        command: SandboxCommand,
    },
    /// The embedded credential store (a TOML file of SHA-256 hashes).
    Credentials {
        /// The credentials file; default: the one `--config` names.
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        command: CredentialsCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Sandbox {
            admin_socket,
            config,
            command,
        } => {
            init_logging(LogFormat::Text, "warn", std::io::stderr);
            let socket = admin_socket.unwrap_or_else(|| {
                optional_config(&config)
                    .map_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET), |c| c.admin_socket)
            });
            runtime().and_then(|rt| rt.block_on(sbx_proxy::admin::client::run(&socket, command)))
        }
        Command::Credentials {
            file,
            config,
            command,
        } => {
            init_logging(LogFormat::Text, "warn", std::io::stderr);
            let file = file.unwrap_or_else(|| {
                optional_config(&config).map_or_else(
                    || PathBuf::from(DEFAULT_CREDENTIALS_FILE),
                    |c| c.auth.credentials_file,
                )
            });
            sbx_proxy::credentials_cli::run(&file, command)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sbx-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    // One access-log line per request: written by a background thread in
    // batches, not by a write(2) on the request path. The queue is bounded
    // (tracing-appender's default); the guard flushes it at exit.
    let (writer, _flush) = tracing_appender::non_blocking(std::io::stderr());
    init_logging(config.log_format, "info", writer);
    runtime()?.block_on(sbx_proxy::serve::serve(config))
}

/// The config, when the CLI can read it (it may run as a user who cannot).
fn optional_config(path: &Path) -> Option<Config> {
    Config::load(path).ok()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging<W>(format: LogFormat, default: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_env("SBX_PROXY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
