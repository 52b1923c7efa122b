//! The daemon: load config, reconcile saved sandboxes, serve the API on a
//! unix socket (mode 0600) until SIGTERM/SIGINT.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use tokio::net::UnixListener;
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

    let listener = bind(socket)?;
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

fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    // A socket left by a previous run (crash, kill -9) is ours to replace;
    // anything else at that path is not.
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket",
            socket.display()
        );
        std::fs::remove_file(socket)
            .with_context(|| format!("remove stale {}", socket.display()))?;
    }
    // The umask closes the window between bind and chmod.
    let old = unsafe_umask(0o177);
    let bound = UnixListener::bind(socket);
    unsafe_umask(old);
    let listener = bound.with_context(|| format!("bind {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", socket.display()))?;
    Ok(listener)
}

fn unsafe_umask(mask: u32) -> u32 {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask)).bits()
}
