//! The daemon: load the config, the registry and the credentials, bind the
//! listeners, say READY=1, serve until SIGTERM, then drain for a bounded
//! time. SIGHUP reloads the TLS certificate and the credentials.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sbx_service::{control, notify, StopSignals};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, AdminState};
use crate::api::{self, ApiState};
use crate::auth::file::FileStore;
use crate::auth::introspect::IntrospectionStore;
use crate::auth::CredentialStore;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::registry::embedded::EmbeddedRegistry;
use crate::registry::redis::RedisRegistry;
use crate::registry::Registry;
use crate::resume::{ResumeConfig, Resumer};
use crate::server::{self, Shared};
use crate::tls::CertStore;
use crate::upstream::{Upstream, UpstreamConfig};
use crate::webhook::Webhook;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let stop = StopSignals::watch()?;
    let mut hangup = signal(SignalKind::hangup()).context("watch SIGHUP")?;
    let limits = config.limits.clone();

    let registry = open_registry(&config).await?;
    let credentials = credential_store(&config)?;
    let certs = match (&config.listen_https, &config.tls_cert, &config.tls_key) {
        (Some(_), Some(cert), Some(key)) => Some(CertStore::load(cert, key)?),
        _ => None,
    };
    let metrics = Arc::new(Metrics::default());
    let upstream = Upstream::new(
        registry.clone(),
        metrics.clone(),
        UpstreamConfig {
            connect_timeout: limits.connect_timeout(),
            response_header_timeout: limits.response_header_timeout(),
            idle_timeout: limits.upstream_idle_timeout(),
            forwarded_auth_ttl: Duration::from_secs(config.auth.forwarded_auth_ttl_secs),
        },
    );
    let lifecycle = &config.lifecycle;
    let hook = match &lifecycle.hook_url {
        Some(url) => Some(
            Webhook::new(url, lifecycle.hook_timeout())
                .map_err(|e| anyhow::anyhow!("`lifecycle.hook_url`: {e}"))?,
        ),
        None => None,
    };
    let resumer = Arc::new(Resumer::new(
        hook,
        registry.clone(),
        ResumeConfig {
            deadline: lifecycle.resume_deadline(),
            max_waiters_per_sandbox: lifecycle.max_waiters_per_sandbox,
            max_waiters: lifecycle.max_waiters,
        },
    ));
    let proxy = Arc::new(Proxy {
        domains: config.domains.clone(),
        registry: registry.clone(),
        credentials: credentials.clone(),
        upstream,
        metrics: metrics.clone(),
        resumer: resumer.clone(),
        forwarded_auth_ttl: Duration::from_secs(config.auth.forwarded_auth_ttl_secs),
        max_header_bytes: limits.max_header_bytes,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Shared {
        proxy,
        metrics: metrics.clone(),
        limits: limits.clone(),
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        shutdown: stop_rx.clone(),
    };
    let mut servers = tokio::task::JoinSet::new();
    if let Some(addr) = config.listen_http {
        let listener = server::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr().context("listener address")?;
        tracing::info!(%local, "plain HTTP listener (HTTP/1.1, h2c)");
        println!("sbx-proxy: http on {local}");
        servers.spawn(server::serve(listener, None, shared.clone()));
    }
    if let (Some(addr), Some(certs)) = (config.listen_https, &certs) {
        let listener = server::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr().context("listener address")?;
        let acceptor = TlsAcceptor::from(Arc::new(certs.server_config()?));
        tracing::info!(%local, "TLS listener (h2, HTTP/1.1)");
        println!("sbx-proxy: https on {local}");
        servers.spawn(server::serve(listener, Some(acceptor), shared.clone()));
        tokio::spawn(certs.clone().watch());
    }
    let api_listener = server::bind(config.listen_api)
        .with_context(|| format!("cannot listen on {} (listen_api)", config.listen_api))?;
    let api_local = api_listener.local_addr().context("listener address")?;
    println!("sbx-proxy: api on {api_local}");
    let api_app = api::router(ApiState {
        registry: registry.clone(),
        credentials: credentials.clone(),
        resumer,
        urls: config.public_urls().map_err(anyhow::Error::msg)?,
        netctl_socket: config.api.netctl_socket.clone(),
        allow_unauthenticated_namespaces: config.api.allow_unauthenticated_namespaces,
        writes: Arc::default(),
    });
    let mut api_stop = stop_rx.clone();
    servers.spawn(async move {
        let stopped = async move { server::stopping(&mut api_stop).await };
        if let Err(e) = axum::serve(api_listener, api_app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %e, "sandbox API listener failed");
        }
    });
    let admin_listener = control::bind(&config.admin_socket)?;
    println!("sbx-proxy: admin on {}", config.admin_socket.display());
    let admin_app = admin::router(AdminState {
        registry: registry.clone(),
        metrics,
    });
    let mut admin_stop = stop_rx.clone();
    servers.spawn(async move {
        let stopped = async move { server::stopping(&mut admin_stop).await };
        if let Err(e) = axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %e, "admin socket failed");
        }
    });

    println!("sbx-proxy ready");
    notify::ready();
    tracing::info!(domains = ?config.domains, "ready");

    let stopped = stop.wait();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => break,
            _ = hangup.recv() => reload(&credentials, certs.as_deref()),
        }
    }

    tracing::info!("stopping: draining client connections");
    notify::stopping();
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    if !server::drain(
        &shared.slots,
        limits.max_connections,
        limits.drain_timeout(),
    )
    .await
    {
        tracing::warn!("some client connections were still open at the drain deadline");
    }
    let _ = std::fs::remove_file(&config.admin_socket);
    tracing::info!("stopped");
    Ok(())
}

async fn open_registry(config: &Config) -> anyhow::Result<Arc<dyn Registry>> {
    let per_sandbox = config.limits.max_concurrent_requests_per_sandbox;
    Ok(if config.registry == "embedded" {
        Arc::new(
            EmbeddedRegistry::open(&config.state_dir, per_sandbox).context("open the registry")?,
        )
    } else {
        Arc::new(
            RedisRegistry::connect(
                &config.registry,
                &config.registry_prefix,
                per_sandbox,
                Duration::from_secs(config.registry_cache_ttl_secs),
            )
            .await
            .context("connect to the shared registry")?,
        )
    })
}

fn credential_store(config: &Config) -> anyhow::Result<Arc<dyn CredentialStore>> {
    let auth = &config.auth;
    Ok(match &auth.introspection_url {
        Some(url) => Arc::new(IntrospectionStore::new(
            url,
            Duration::from_secs(auth.introspection_positive_ttl_secs),
            Duration::from_secs(auth.introspection_negative_ttl_secs),
            Duration::from_millis(auth.introspection_timeout_ms),
            auth.introspection_cache_entries,
        )?),
        None => Arc::new(FileStore::load(&auth.credentials_file)?),
    })
}

fn reload(credentials: &Arc<dyn CredentialStore>, certs: Option<&CertStore>) {
    tracing::info!("SIGHUP: reloading credentials and TLS certificate");
    if let Err(e) = credentials.reload() {
        tracing::error!(error = %e, "credentials not reloaded; the old ones stay in force");
    }
    if let Some(certs) = certs {
        if let Err(e) = certs.reload() {
            tracing::error!(error = %e, "TLS certificate not reloaded; the old one stays in use");
        }
    }
}
