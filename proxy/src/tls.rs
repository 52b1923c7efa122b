//! TLS with a certificate that can be replaced while connections stay up:
//! every handshake asks the resolver, and the resolver's key pair is swapped
//! on SIGHUP or when the PEM files change on disk (certbot, cert-manager).
//! Connections already open keep the session they negotiated.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often the PEM files' modification times are looked at.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The current certificate and key, loaded from two PEM files.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    loaded_mtimes: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

impl CertStore {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let key = load_pair(cert_path, key_path)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(key)),
            loaded_mtimes: RwLock::new(mtimes(cert_path, key_path)),
        }))
    }

    /// Loads the files again; on error the old pair stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = mtimes(&self.cert_path, &self.key_path);
        let key = load_pair(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        *self
            .loaded_mtimes
            .write()
            .unwrap_or_else(|e| e.into_inner()) = stamps;
        tracing::info!(cert = %self.cert_path.display(), "TLS certificate loaded");
        Ok(())
    }

    /// Reloads whenever either file's modification time changes.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tick.tick().await;
            let now = mtimes(&self.cert_path, &self.key_path);
            let seen = *self.loaded_mtimes.read().unwrap_or_else(|e| e.into_inner());
            if now != seen {
                if let Err(e) = self.reload() {
                    // A half-written pair (cert renewed, key not yet) is
                    // retried at the next tick.
                    tracing::warn!(error = %e, "TLS files changed but do not load yet; keeping the old certificate");
                }
            }
        }
    }

    /// A rustls server config using this store, with ALPN h2 and http/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn mtimes(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert), m(key))
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let pem_err = |path: &Path, reason: String| TlsError::Pem {
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| pem_err(cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err(cert_path, "no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem_err(key_path, e.to_string()))?;
    let signing = any_supported_type(&key).map_err(|e| pem_err(key_path, e.to_string()))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match()
        .map_err(|e| pem_err(key_path, format!("does not match the certificate: {e}")))?;
    Ok(pair)
}
