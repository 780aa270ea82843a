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
    /// New connections per second per listener, once `connection_burst` is spent; excess ones
    /// get CONNACK "server unavailable" (MQTT 5: 0x9F, connection rate exceeded) at once
    /// instead of waiting, and the SDK retries after its jittered back-off. 0 = no limit.
    pub max_connection_rate: u32,
    /// New connections one listener takes at once before `max_connection_rate` applies: a
    /// fleet reconnecting together after a network blip or a restart. Values below
    /// `max_connection_rate` are read as `max_connection_rate`.
    pub connection_burst: u32,
    /// MiB of devices' publishes (topic and payload bytes) the broker keeps for the pipeline,
    /// newest first: a pipeline stall up to this much is absorbed without devices resending.
    /// rumqttd keeps it whether or not the pipeline has read it, and a kept one-fix report
    /// (about 60 counted bytes) costs about 480 bytes of memory, so this is locusd's largest
    /// single use of memory once it has seen that much traffic (32 MiB: about 270 MB).
    pub ingest_buffer_mib: usize,
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
            // Measured on a 2-core box: 10,000 CONNECTs with token checks take under 2 s, so
            // a whole 10,000-courier fleet gets in at once, and a flood beyond that is shed.
            max_connection_rate: 5_000,
            connection_burst: 10_000,
            // About 3 s of the fastest input measured (160,000 one-fix reports/s) and 50 s of
            // a 10,000-courier city: enough for an fsync or a checkpoint stall.
            ingest_buffer_mib: 32,
        }
    }
}
