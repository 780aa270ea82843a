//! The `[http]` section: the API's listeners and limits.

use crate::listener;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Plain-text HTTP address of the API; `"off"` = none.
    #[serde(with = "listener")]
    pub listen: Option<SocketAddr>,
    /// HTTPS address of the API (conventionally port 8443 or 443), with `[tls]`'s certificate;
    /// default off.
    #[serde(with = "listener")]
    pub tls_listen: Option<SocketAddr>,
    /// Largest page `GET /v1/couriers/{id}/track` and `GET /v1/dead-letters` return.
    pub max_page: usize,
    /// Milliseconds a client has to send its request head; then its connection is closed
    /// (stops slowloris).
    pub header_read_timeout_ms: u64,
    /// Milliseconds to read a request's body and answer it; then the answer is 408.
    pub request_timeout_ms: u64,
    /// Largest request body read by the API, bytes (plugin uploads have their own limit).
    pub max_body_bytes: usize,
    /// Serve `POST /rabbitmq/auth/{user,vhost,resource,topic}` for a RabbitMQ broker's HTTP
    /// auth backend (README, "Running at scale"); default off.
    pub rabbitmq_auth_backend: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            tls_listen: None,
            max_page: 10_000,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
            max_body_bytes: 1024 * 1024,
            rabbitmq_auth_backend: false,
        }
    }
}
