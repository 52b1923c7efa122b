//! The daemon: load config, reconcile saved sandboxes, serve the API on a
//! unix socket (mode 0600) until SIGTERM/SIGINT.

use std::path::Path;

use anyhow::Context;
use tracing::info;

use sbx_service::{notify, StopSignals};

use crate::config::Config;
use crate::manager::Manager;

pub async fn serve(config_path: &Path, socket: &Path, state_dir: &Path) -> anyhow::Result<()> {
    let explicit = config_path != Path::new(crate::cli::DEFAULT_CONFIG);
    let config = Config::load(config_path, explicit)?;
    let manager = Manager::new(config, state_dir.to_path_buf())?;
    manager
        .reconcile()
        .await
        .context("reconcile saved sandboxes")?;

    let listener = sbx_service::control::bind(socket)?;
    let stop = StopSignals::watch()?;
    info!(socket = %socket.display(), "listening");
    // Tests and service managers wait for this line.
    println!("netctl listening on {}", socket.display());
    notify::ready();
    let app = crate::api::router(manager);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop.wait().await;
            info!("shutting down; rules stay in force");
            notify::stopping();
        })
        .await
        .context("serve")?;
    info!("stopped");
    Ok(())
}
