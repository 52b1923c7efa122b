//! The agent's daemon: `main.rs` only parses the command line and starts
//! a runtime. The modules stay private; [`fuzzing`] (behind the feature of
//! the same name) reaches the request parsers for the fuzz targets in
//! `fuzz/`.

mod auth;
mod config;
mod error;
mod files;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod process;
mod pty;
mod routes;
mod server;
mod state;
mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sbx_service::{notify, StopSignals};
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::process::cgroup::Cgroups;
use crate::state::AppState;

pub use crate::config::{Cli, Config, ConfigError, LogFormat};

/// How long open tunnels get to close after SIGTERM.
const TUNNEL_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the management API and the tunnel until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
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
