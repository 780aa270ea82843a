//! The `[mqtt]` section: the embedded broker's listeners and limits.

use crate::listener;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `[mqtt]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// MQTT 3.1.1 plain-text listener; `"off"` (`None`) = none.
    #[serde(with = "listener")]
    pub listen: Option<SocketAddr>,
    /// MQTT 5 plain-text listener (rumqttd serves each protocol version on its own port);
    /// `"off"` = none.
    #[serde(with = "listener")]
    pub listen_v5: Option<SocketAddr>,
    /// MQTT 3.1.1 over TLS (conventionally port 8883), with `[tls]`'s certificate; default off.
    #[serde(with = "listener")]
    pub tls_listen: Option<SocketAddr>,
    /// MQTT 5 over TLS, with `[tls]`'s certificate; default off.
    #[serde(with = "listener")]
    pub tls_listen_v5: Option<SocketAddr>,
    /// Largest MQTT packet, bytes (payload, topic and packet fields). The broker closes the
    /// connection of a larger PUBLISH, so `[pipeline] max_report_bytes` must fit under it with
    /// room for the topic (checked at start).
    pub max_payload_bytes: usize,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// Most unacknowledged QoS 1 messages in flight per connection.
    pub max_inflight: usize,
    /// Milliseconds a new connection has to send CONNECT.
    pub connect_timeout_ms: u16,
    /// Publishes per second one connection may sustain; over it the broker stops reading that
    /// client's socket for a while (throttled, never disconnected). 0 = no limit.
    pub max_publish_rate: u32,
    /// Publishes one connection may send at once before `max_publish_rate` applies.
    pub publish_burst: u32,
    /// New connections per second per listener; excess ones get CONNACK "server unavailable"
    /// (MQTT 5: 0x9F, connection rate exceeded) at once instead of waiting. 0 = no limit.
    pub max_connection_rate: u32,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            listen_v5: Some(SocketAddr::from(([127, 0, 0, 1], 1884))),
            tls_listen: None,
            tls_listen_v5: None,
            max_payload_bytes: locus_sdk::wire::limits::DEFAULT_MAX_PACKET_BYTES,
            max_connections: 100_000,
            max_inflight: 100,
            connect_timeout_ms: 10_000,
            // A phone sends a report every second or so, and a backlog after a reconnect in
            // bursts; 1,000/s is far above both and still caps one flooding client at a small
            // share of what the pipeline takes.
            max_publish_rate: 1_000,
            publish_burst: 2_000,
            max_connection_rate: 5_000,
        }
    }
}
