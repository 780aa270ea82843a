//! `api::start`: binds the API's listeners (plain HTTP and HTTPS) and serves until shutdown.

use super::server::{self, HttpLimits};
use super::{router, ApiState, HttpConfig};
use crate::metrics::Metrics;
use crate::tls::TlsConfig;
use anyhow::Context as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Binds every configured listener (so a taken port fails the start, not later) and returns
/// the future that serves them until `shutdown` resolves; each drains its own connections.
pub async fn start(
    config: &HttpConfig,
    tls: Option<&TlsConfig>,
    state: ApiState,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<impl Future<Output = ()>> {
    let plain = match config.listen {
        Some(addr) => Some(bind(addr, "--http-listen / [http] listen").await?),
        None => None,
    };
    let https = match (config.tls_listen, tls) {
        (Some(addr), Some(tls)) => {
            let server_config = crate::tls::server_config(tls)?;
            let listener = bind(addr, "--http-tls-listen / [http] tls_listen").await?;
            Some(crate::tls::TlsListener::new(listener, server_config)?)
        }
        (Some(_), None) => anyhow::bail!("[http] tls_listen needs [tls] cert_path and key_path"),
        (None, _) => None,
    };
    let limits = HttpLimits {
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        max_body_bytes: config.max_body_bytes,
    };
    // One signal stops both servers, and ends the answers that would not end on their own.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let state = ApiState { stopping: super::Stopping(stopped.clone()), ..state };
    let router = server::with_limits(router(state), limits, metrics.clone());
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let stop_signal = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    Ok(async move {
        let plain_server = async {
            if let Some(listener) = plain {
                server::serve(listener, router.clone(), limits, metrics.clone(), stop_signal())
                    .await;
            }
        };
        let tls_server = async {
            if let Some(listener) = https {
                server::serve(listener, router.clone(), limits, metrics.clone(), stop_signal())
                    .await;
            }
        };
        tokio::join!(plain_server, tls_server);
    })
}

async fn bind(
    addr: std::net::SocketAddr,
    setting: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for HTTP on {addr} (set {setting} to a free address)")
    })
}
