//! The daemon: load the config, settle every sandbox on disk, serve the
//! API on the unix socket until SIGTERM/SIGINT. Stopping sbx-host leaves
//! guests running: the next start adopts them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use sbx_service::{notify, StopSignals};

use crate::config::{Config, RuntimeKind};
use crate::manager::Manager;

/// How often console and agent logs are checked against their bound.
const LOG_CHECK: Duration = Duration::from_secs(2);

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let stop = StopSignals::watch()?;
    let manager = Manager::new(config.clone()).context("start")?;
    manager.restore().await;
    if config.default_runtime == RuntimeKind::Microvm {
        // Decide KVM or TCG now, so the first create does not pay for it,
        // but beside serving rather than before it: the probe can take its
        // whole timeout where KVM cannot run a guest, and a create that
        // comes meanwhile waits for the same answer.
        match crate::image::find(&config.images_dir, &config.default_image) {
            Ok(image) => {
                let m = manager.clone();
                tokio::spawn(async move { m.microvm.accel(&image.kernel).await });
            }
            Err(e) => {
                warn!(error = %e, "no default image yet: creates will fail until one is built")
            }
        }
    }
    tokio::spawn(bound_logs(Arc::downgrade(&manager), config.log_max_bytes));

    let listener = sbx_service::control::bind(&config.socket)?;
    info!(socket = %config.socket.display(), capacity = ?manager.capacity(), "listening");
    // Tests and service managers wait for this line.
    println!("sbx-host listening on {}", config.socket.display());
    notify::ready();
    axum::serve(listener, crate::api::router(manager))
        .with_graceful_shutdown(async move {
            stop.wait().await;
            info!("shutting down; guests keep running");
            notify::stopping();
        })
        .await
        .context("serve")?;
    info!("stopped");
    Ok(())
}

async fn bound_logs(manager: std::sync::Weak<Manager>, max: u64) {
    loop {
        tokio::time::sleep(LOG_CHECK).await;
        let Some(m) = manager.upgrade() else { return };
        let dirs = m.sandbox_dirs();
        drop(m);
        let _ = tokio::task::spawn_blocking(move || {
            for dir in dirs {
                for f in [crate::runtime::CONSOLE_LOG, crate::runtime::VMM_LOG] {
                    let _ = crate::logs::bound(&dir.join(f), max);
                }
            }
        })
        .await;
    }
}

pub fn load(path: &Path) -> anyhow::Result<Config> {
    let explicit = path != Path::new(crate::config::DEFAULT_CONFIG);
    Ok(Config::load(path, explicit)?)
}
