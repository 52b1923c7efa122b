//! `sbx-agent`: the daemon inside every sandbox, serving the management API
//! and the TCP tunnel on port 9501.

mod auth;
mod config;
mod error;
mod files;
mod process;
mod pty;
mod routes;
mod server;
mod state;
mod tunnel;

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use sbx_service::{notify, StopSignals};
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::config::{Cli, Config, LogFormat};
use crate::process::cgroup::Cgroups;
use crate::state::AppState;

/// How long open tunnels get to close after SIGTERM.
const TUNNEL_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("sbx-agent: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("sbx-agent: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("sbx-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Per-process cgroups, so an OOM kill is recognised. Without them the agent
/// still runs (`oom_killed` is then always false, as the log says), unless a
/// memory limit was configured: that one cannot be silently ignored.
fn process_cgroups(memory_max: Option<u64>) -> anyhow::Result<Option<Cgroups>> {
    match Cgroups::setup(memory_max) {
        Ok(cgroups) => {
            tracing::info!(
                flavor = ?cgroups.flavor(),
                dir = %cgroups.dir().display(),
                memory_max,
                "one memory cgroup per process: OOM kills are recognised"
            );
            Ok(Some(cgroups))
        }
        Err(err) if memory_max.is_some() => Err(anyhow::Error::new(err)
            .context("limits.process_memory_max_bytes is set but cannot be enforced")),
        Err(err) => {
            tracing::warn!(
                error = %err,
                "no per-process cgroups: oom_killed is always false"
            );
            Ok(None)
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let listener = server::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr().context("listener address")?;

    let cgroups = process_cgroups(config.limits.process_memory_max)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState::new(config.clone(), cgroups, stop_rx.clone());
    let auth = Arc::new(Authenticator::new(
        config.forwarded_auth_key.clone(),
        config.sandbox_id.clone(),
        config.bearer_token.clone(),
        config.clock_skew_secs,
    ));
    let router = routes::router(state.clone(), auth);

    tracing::info!(
        listen = %local,
        sandbox_id = %config.sandbox_id,
        bearer = config.bearer_token.is_some(),
        "sbx-agent ready"
    );
    let stop = StopSignals::watch()?;
    // Scripts and tests learn an ephemeral port from this line.
    println!("sbx-agent listening on {local}");
    notify::ready();

    tokio::spawn(async move {
        stop.wait().await;
        tracing::info!("shutting down");
        notify::stopping();
        let _ = stop_tx.send(true);
    });

    server::serve(listener, router, config.max_connections, stop_rx).await;

    // Tunnels were told to close (1001); give them a moment to say so.
    let all = u32::try_from(config.max_tunnels).unwrap_or(u32::MAX);
    if tokio::time::timeout(TUNNEL_DRAIN_TIMEOUT, state.tunnels.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(open = state.open_tunnels(), "tunnels still open at exit");
    }
    tracing::info!("stopped");
    Ok(())
}
