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
use crate::config::{MqttConfig, TlsConfig};
use crate::metrics::Metrics;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Broker, ConnectionSettings, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// Client id of the pipeline's local link.
const PIPELINE_CLIENT_ID: &str = "locusd-pipeline";

/// The broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A listener address is taken or not ours.
    #[error("cannot listen for MQTT on {addr}: {source} (set that [mqtt] listen* key or its --mqtt*-listen flag to a free address or \"off\")")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A TLS listener is on without `[tls]`.
    #[error("[mqtt] tls_listen and tls_listen_v5 need [tls] cert_path and key_path")]
    NoCertificate,
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
///
/// `tls` is `[tls]`, which the TLS listeners (`tls_listen`, `tls_listen_v5`) need
/// ([`crate::config::Config::check`] has made sure it is there and readable).
pub fn start(
    config: &MqttConfig,
    tls: Option<&TlsConfig>,
    auth: Option<Arc<TokenAuthority>>,
    metrics: Arc<Metrics>,
) -> Result<BrokerLink, MqttError> {
    // rumqttd binds inside its own thread and only logs a failure; check first so a taken port
    // is a clear start-up error instead of a silently deaf server.
    let addrs = [config.listen, config.listen_v5, config.tls_listen, config.tls_listen_v5];
    for addr in addrs.into_iter().flatten() {
        TcpListener::bind(addr).map_err(|source| MqttError::Listen { addr, source })?;
    }
    let tls = tls.map(crate::tls::rumqttd_settings);
    if tls.is_none() && (config.tls_listen.is_some() || config.tls_listen_v5.is_some()) {
        return Err(MqttError::NoCertificate);
    }

    let connections = connection_settings(config, auth, metrics.clone());
    // One rumqttd server per listener on, keyed by name; none on = no server of that version.
    let servers = |listeners: [(&str, Option<SocketAddr>, Option<rumqttd::TlsConfig>); 2]| {
        let servers: HashMap<String, ServerSettings> = listeners
            .into_iter()
            .filter_map(|(name, listen, tls)| {
                let settings = ServerSettings {
                    name: name.to_owned(),
                    listen: listen?,
                    tls,
                    next_connection_delay_ms: 1,
                    connections: connections.clone(),
                };
                Some((name.to_owned(), settings))
            })
            .collect();
        (!servers.is_empty()).then_some(servers)
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
        v4: servers([
            ("mqtt-3.1.1", config.listen, None),
            ("mqtt-3.1.1-tls", config.tls_listen, tls.clone()),
        ]),
        v5: servers([
            ("mqtt-5", config.listen_v5, None),
            ("mqtt-5-tls", config.tls_listen_v5, tls),
        ]),
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
