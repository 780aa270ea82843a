//! Serving the API on a listener (plain TCP or TLS) with limits a slow or hostile client cannot
//! get around.
//!
//! Enters: accepted connections and the API [`Router`]. Leaves: HTTP/1.1 and HTTP/2 answers;
//! connections closed when a client is too slow.
//!
//! - **Header read timeout** (`[http] header_read_timeout_ms`): a client must send its request
//!   head within this time, or its connection is closed. This is what stops slowloris, which
//!   `axum::serve` alone does not (it sets no timer, so hyper waits forever).
//! - **Request timeout** (`[http] request_timeout_ms`): reading the body and answering must
//!   finish within this time, or the answer is 408 with a JSON error.
//! - **Body size** (`[http] max_body_bytes`): bodies read by the API's extractors are bounded;
//!   plugin uploads have their own, larger limit (`PUT /v1/plugins/{name}`). Over it: 413.
//!
//! Both timeouts are counted in `locus_http_timeouts_total{phase}`, 413s in
//! `locus_http_body_too_large_total`.

use crate::metrics::{Metrics, PhaseLabel};
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The limits of one HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time a client has to send its request head.
    pub header_read_timeout: Duration,
    /// Time to read a request's body and answer it.
    pub request_timeout: Duration,
    /// Largest request body the API's extractors read.
    pub max_body_bytes: usize,
}

/// Adds the request timeout and the body limit to `router`.
pub fn with_limits(router: Router, limits: HttpLimits, metrics: Arc<Metrics>) -> Router {
    let timeout = limits.request_timeout;
    router.layer(DefaultBodyLimit::max(limits.max_body_bytes)).layer(middleware::from_fn(
        move |request: Request, next: Next| {
            let metrics = metrics.clone();
            async move {
                match tokio::time::timeout(timeout, next.run(request)).await {
                    Ok(response) => {
                        if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
                            metrics.http_body_too_large.inc();
                        }
                        response
                    }
                    Err(_) => {
                        metrics.http_timeouts.get_or_create(&PhaseLabel { phase: "request" }).inc();
                        let error = format!(
                            "the request was not read and answered within {} ms \
                             ([http] request_timeout_ms)",
                            timeout.as_millis()
                        );
                        let body = Json(serde_json::json!({ "error": error }));
                        (StatusCode::REQUEST_TIMEOUT, body).into_response()
                    }
                }
            }
        },
    ))
}

/// Serves `router` on `listener` until `shutdown` completes, then lets open connections finish
/// their requests (graceful shutdown) and returns.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) where
    L: axum::serve::Listener,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let mut stopped = stopped.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                // The watch guard is dropped inside, before the connection is awaited again.
                () = async { drop(stopped.wait_for(|stop| *stop).await) } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                let timed_out =
                    error.downcast_ref::<hyper::Error>().is_some_and(|e| e.is_timeout());
                if timed_out {
                    metrics.http_timeouts.get_or_create(&PhaseLabel { phase: "headers" }).inc();
                }
                tracing::debug!(%error, timed_out, "HTTP connection ended with an error");
            }
        });
        // Reap finished connections so the set does not grow with the server's age.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
}
