//! TLS for the MQTT listeners and the HTTP API, from `[tls]`'s PEM files.
//!
//! Enters: [`TlsConfig`] (certificate chain and private key paths). Leaves: a checked rustls
//! [`ServerConfig`] for HTTPS ([`server_config`], [`TlsListener`]) and the same files as
//! rumqttd's TLS settings for MQTT ([`rumqttd_settings`]).
//!
//! One crypto provider for the whole binary: ring, which reqwest's rustls (InfluxDB over https)
//! already uses and which rumqttd's `use-rustls` (tokio-rustls 0.25, rustls 0.22, ring) pulls
//! too. Our configs name the provider explicitly, so a build that also enables aws-lc-rs in
//! rustls (feature unification with the SDK's `tls` feature in a workspace build) cannot make
//! `ServerConfig::builder()` ambiguous; [`install_crypto_provider`] makes ring the process
//! default as well, for any library that asks rustls for it.
//!
//! HTTPS handshakes run in their own tasks with a time limit ([`HANDSHAKE_TIMEOUT`]), so a
//! client that connects and says nothing, or says something that is not TLS, never holds up
//! the next connection.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// How long an HTTPS client has from TCP connect to a finished TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the HTTP server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// A certificate or key that cannot be used; every variant names the config key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {key} {}: {source}", path.display())]
    Read {
        /// `tls.cert_path` or `tls.key_path`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not what the key needs.
    #[error("invalid {key} {}: {problem}", path.display())]
    Invalid {
        /// `tls.cert_path` or `tls.key_path`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Both files parse but do not make a usable server identity (e.g. the key is not the
    /// certificate's).
    #[error("tls.cert_path {} and tls.key_path {} do not work together: {problem}", cert.display(), key.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        problem: String,
    },
}

/// Makes ring the process-wide rustls provider (once; later calls are no-ops).
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads and checks `[tls]`'s files and builds the HTTPS server configuration (HTTP/1.1).
pub fn server_config(config: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(&config.cert_path)?;
    let key = read_key(&config.key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mismatch = |e: rustls::Error| TlsError::Mismatch {
        cert: config.cert_path.clone(),
        key: config.key_path.clone(),
        problem: e.to_string(),
    };
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(mismatch)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.to_owned(), source })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    const KEY: &str = "tls.cert_path";
    let invalid = |problem: String| TlsError::Invalid { key: KEY, path: path.to_owned(), problem };
    let pem = read_file(KEY, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM certificate chain ({e})")))?;
    if certs.is_empty() {
        return Err(invalid("no `BEGIN CERTIFICATE` block in the file".into()));
    }
    utf8_path(KEY, path)?;
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const KEY: &str = "tls.key_path";
    let pem = read_file(KEY, path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        key: KEY,
        path: path.to_owned(),
        problem: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file ({e})"),
    })?;
    utf8_path(KEY, path)?;
    Ok(key)
}

/// rumqttd takes paths as strings; refuse what would not survive the conversion.
fn utf8_path<'a>(key: &'static str, path: &'a Path) -> Result<&'a str, TlsError> {
    path.to_str().ok_or_else(|| TlsError::Invalid {
        key,
        path: path.to_owned(),
        problem: "the path is not valid UTF-8".into(),
    })
}

/// rumqttd's TLS settings for the same files (it reads them itself, at each new connection).
/// Call after [`server_config`] has accepted them.
pub fn rumqttd_settings(config: &TlsConfig) -> rumqttd::TlsConfig {
    rumqttd::TlsConfig::Rustls {
        // Client certificates are not used: devices authenticate with tokens.
        capath: None,
        certpath: config.cert_path.to_string_lossy().into_owned(),
        keypath: config.key_path.to_string_lossy().into_owned(),
    }
}

/// An HTTPS listener for `axum::serve`: a background task accepts TCP connections and runs
/// each TLS handshake in its own task (bounded by [`HANDSHAKE_TIMEOUT`]); `accept` hands out
/// the finished ones. Dropping it (axum does at graceful shutdown) closes the port.
#[derive(Debug)]
pub struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` on an already bound `listener`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (to_server, accepted) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let acceptor_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, to_server) = (acceptor.clone(), to_server.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = to_server.send((tls, peer)).await;
                        }
                        // A scanner, a plain-HTTP client or a client that does not trust our
                        // certificate: its problem, not the operator's.
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { accepted, local_addr, acceptor_task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The acceptor task only ends if it panicked; serve nothing more rather than spin.
            None => {
                tracing::error!(addr = %self.local_addr, "HTTPS acceptor stopped");
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// `[tls]`: the server's certificate for every TLS listener. Both keys are required when the
/// section is present; the files are read (and checked) at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, the server's certificate first (no default).
    pub cert_path: PathBuf,
    /// PEM file with the certificate's private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC)
    /// (no default).
    pub key_path: PathBuf,
}
