//! The embedded MQTT broker (rumqttd) and the pipeline's link to it.
//!
//! Enters: device connections on the MQTT 3.1.1 and MQTT 5 listeners. Leaves: a [`BrokerLink`]
//! — the pipeline reads `couriers/+/locations` publishes from it and publishes acks into it.
//!
//! Authentication happens at CONNECT: username = courier id, password = a courier token
//! ([`crate::auth`]), client id = courier id (so one courier cannot take over another's
//! session). rumqttd 0.20 has no per-publish hook, so topic authorization (courier `a` may only
//! publish under `couriers/a/`) cannot be enforced inside it yet; the seam for it is
//! [`crate::pipeline::courier_of`], which today takes the courier from the topic. Running behind
//! a clustered broker with ACLs (see DESIGN.md, "Running at scale") enforces it there.

use crate::auth::{Role, TokenAuthority};
use crate::config::MqttConfig;
use crate::metrics::Metrics;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Broker, ConnectionSettings, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

pub mod policy;

pub use policy::PIPELINE_CLIENT_ID;

/// The broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A listener address is taken or not ours.
    #[error("cannot listen for MQTT on {addr}: {source} (set --mqtt-listen / [mqtt] listen to a free address)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The local link to the router failed.
    #[error("cannot link the pipeline to the embedded broker: {0}")]
    Link(String),
}

/// The pipeline's connection to the embedded broker.
#[allow(missing_debug_implementations)] // rumqttd's link types are not Debug
pub struct BrokerLink {
    /// Publishes (acks) into the broker.
    pub tx: LinkTx,
    /// Receives subscribed publishes.
    pub rx: LinkRx,
}

/// Starts the embedded broker in its own threads and returns the pipeline's link, already
/// subscribed to every courier's locations topic.
pub fn start(
    config: &MqttConfig,
    auth: Option<Arc<TokenAuthority>>,
    metrics: Arc<Metrics>,
) -> Result<BrokerLink, MqttError> {
    // rumqttd binds inside its own thread and only logs a failure; check first so a taken port
    // is a clear start-up error instead of a silently deaf server.
    for addr in std::iter::once(config.listen).chain(config.listen_v5) {
        TcpListener::bind(addr).map_err(|source| MqttError::Listen { addr, source })?;
    }

    let connections = connection_settings(config, auth, metrics.clone());
    let server = |name: &str, listen: SocketAddr| {
        HashMap::from([(
            name.to_owned(),
            ServerSettings {
                name: name.to_owned(),
                listen,
                tls: None,
                next_connection_delay_ms: 1,
                connections: connections.clone(),
                max_connection_rate: None,
                listener_event_handler: None,
            },
        )])
    };
    let broker_config = rumqttd::Config {
        id: 0,
        router: RouterConfig {
            max_connections: config.max_connections,
            max_outgoing_packet_count: 200,
            // The log is only a relay buffer: committed data lives in sled, and anything lost
            // here is resent by devices (it was never acked).
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(server("mqtt-3.1.1", config.listen)),
        v5: config.listen_v5.map(|addr| server("mqtt-5", addr)),
        ..Default::default()
    };

    let mut broker = Broker::new(broker_config);
    let (mut tx, rx) =
        broker.link(PIPELINE_CLIENT_ID).map_err(|e| MqttError::Link(e.to_string()))?;
    tx.subscribe(locus_sdk::topics::ALL_LOCATIONS).map_err(|e| MqttError::Link(e.to_string()))?;
    let meters = broker.meters().map_err(|e| MqttError::Link(e.to_string()))?;

    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| MqttError::Link(e.to_string()))?;

    tokio::spawn(async move {
        while let Ok(meters) = meters.next().await {
            for meter in meters {
                if let rumqttd::Meter::Router(_, router) = meter {
                    // Minus the pipeline's own local link.
                    let devices = router.total_connections.saturating_sub(1);
                    metrics.connected_clients.set(devices as i64);
                }
            }
        }
    });

    Ok(BrokerLink { tx, rx })
}

fn connection_settings(
    config: &MqttConfig,
    auth: Option<Arc<TokenAuthority>>,
    metrics: Arc<Metrics>,
) -> ConnectionSettings {
    let mut settings = ConnectionSettings {
        connection_timeout_ms: config.connect_timeout_ms,
        max_payload_size: config.max_payload_bytes,
        max_inflight_count: config.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
        acl_handler: None,
        event_handler: None,
        max_publish_rate: None,
    };
    if let Some(auth) = auth {
        settings.set_auth_handler(move |client_id: String, username: String, password: String| {
            let verdict = check_courier(&auth, &client_id, &username, &password);
            if let Err(reason) = &verdict {
                metrics.auth_refused.inc();
                tracing::info!(%client_id, %username, %reason, "MQTT connection refused");
            }
            std::future::ready(verdict.is_ok())
        });
    }
    settings
}

/// Whether a CONNECT may proceed; the error says why not (for logs, never to the client).
fn check_courier(
    auth: &TokenAuthority,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<(), String> {
    if !locus_sdk::topics::is_valid_id(username) {
        return Err("username is not a valid courier id".into());
    }
    if client_id != username {
        return Err("client id must be the courier id".into());
    }
    auth.verify(Role::Courier, username, password).map_err(|e| e.to_string())
}
