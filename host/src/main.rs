use std::process::ExitCode;

use clap::Parser;
use sbx_host::cli::{Cli, Command};
use sbx_host::config::LogFormat;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.command {
        Command::Serve { config } => match sbx_host::serve::load(config) {
            // An explicit --socket (or SBX_HOST_SOCKET) wins over the file.
            Ok(mut c) => {
                if cli.socket.as_path() != std::path::Path::new(sbx_host::config::DEFAULT_SOCKET) {
                    c.socket = cli.socket.clone();
                }
                Some(c)
            }
            Err(e) => {
                eprintln!("sbx-host: {}", sbx_service::error_line(&e));
                return ExitCode::FAILURE;
            }
        },
        Command::Sandbox(_) => None,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SBX_HOST_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if config.is_some() { "info" } else { "warn" })
    });
    // Colours only on a terminal: a journal or a log file gets plain text.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.as_ref().map(|c| c.log_format) {
        Some(LogFormat::Json) => fmt.json().init(),
        _ => fmt.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sbx-host: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match (cli.command, config) {
            (Command::Serve { .. }, Some(config)) => sbx_host::serve::serve(config).await,
            (Command::Sandbox(cmd), _) => sbx_host::cli::run_client(&cli.socket, cmd).await,
            (Command::Serve { .. }, None) => unreachable!("serve always has a config"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sbx-host: {}", sbx_service::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
