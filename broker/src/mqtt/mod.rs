//! The embedded MQTT broker (rumqttd) and the pipeline's link to it.
//!
//! Enters: device connections on the MQTT 3.1.1 and MQTT 5 listeners. Leaves: a [`BrokerLink`]
//! — the pipeline reads `couriers/+/locations` publishes from it and publishes acks into it.
//!
//! Authentication happens at CONNECT: username = courier id, password = a courier token
//! ([`crate::auth`]), client id = courier id (so one courier cannot take over another's
//! session); the pipeline's client id is reserved. A customer following an order connects with
//! username = the order id, password = an order token, client id = `order@{order}` or
//! `order@{order}@{anything}` (ids have no `@`, so no customer can take a courier's session),
//! and only while the order is active. Authorization happens on every publish,
//! subscribe and last will: the vendored rumqttd's ACL hook asks [`policy`] (see
//! `vendor/rumqttd/PATCHES.md`). Denials, refused CONNECTs, oversized packets, throttled
//! publishers and refused connection bursts are counted in [`Metrics`] and logged at INFO.
//!
//! Limits per connection and listener (`[mqtt]`): the packet size (`max_payload_bytes`), the
//! publish rate (`max_publish_rate`, `publish_burst`: over it, the broker stops reading that
//! client's socket for a while, so only it slows down) and new connections per second per
//! listener (`max_connection_rate`: over it, CONNACK "server unavailable").

use crate::auth::{Role, TokenAuthority};
use crate::metrics::Metrics;
use crate::metrics::{ActionLabel, DisconnectLabel};
use crate::tls::TlsConfig;
use policy::{Action, Denial, OrderGate, Principal, TopicPolicy};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{
    AclAction, Broker, ClientIdentity, ConnectionEvent, ConnectionSettings, DisconnectReason,
    ListenerEvent, PublishRate, RouterConfig, SegmentConfig, ServerSettings,
};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod config;
pub mod external_auth;
pub mod policy;

pub use config::MqttConfig;
pub use policy::{PIPELINE_CLIENT_ID, PIPELINE_EVENTS_CLIENT_ID};

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

/// The pipeline's connections to the embedded broker.
#[allow(missing_debug_implementations)] // rumqttd's link types are not Debug
pub struct BrokerLink {
    /// Publishes (acks, order statuses and locations) into the broker.
    pub tx: LinkTx,
    /// Receives reports (`couriers/+/locations`).
    pub rx: LinkRx,
    /// Receives couriers' order events (`couriers/+/events`) on a link of its own
    /// ([`PIPELINE_EVENTS_CLIENT_ID`]); `None` in tests that feed reports only.
    pub events: Option<EventsLink>,
    /// Whether the live fix stream has a reader.
    pub stream_demand: StreamDemand,
}

/// Whether anyone reads the live fix stream, in JSON (`fixes/{courier}`) and in the wire
/// format (`fixes-wire/{courier}`): each set by the first reader's granted subscription to it
/// and kept from then on (a consumer that reconnects expects the stream to be there). Until
/// then the pipeline builds no stream messages of that format, which cost up to a fifth of the
/// throughput at 10 fixes per report with nobody listening (README, Benchmarks). Without token
/// checks, any subscription whose filter can match the topics sets it.
#[derive(Debug, Clone, Default)]
pub struct StreamDemand(Arc<[std::sync::atomic::AtomicBool; 2]>);

impl StreamDemand {
    /// Both formats, always wanted.
    pub fn always() -> StreamDemand {
        StreamDemand(Arc::new([true.into(), true.into()]))
    }

    /// Whether a reader subscribed to the JSON stream.
    pub fn json(&self) -> bool {
        self.0[0].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a reader subscribed to the wire-format stream.
    pub fn wire(&self) -> bool {
        self.0[1].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A subscription to `filter` was granted: the formats it can match are wanted.
    fn want(&self, filter: &str) {
        let filter = match filter.strip_prefix("$share/") {
            Some(shared) => shared.split_once('/').map_or("", |(_, rest)| rest),
            None => filter,
        };
        let root = filter.split('/').next().unwrap_or("");
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        if matches!(root, "fixes" | "+" | "#") {
            self.0[0].store(true, relaxed);
        }
        if matches!(root, "fixes-wire" | "+" | "#") {
            self.0[1].store(true, relaxed);
        }
    }
}

/// The link couriers' order events arrive on.
#[allow(missing_debug_implementations)] // rumqttd's link types are not Debug
pub struct EventsLink {
    /// Kept open: the router closes a link whose sender is dropped.
    pub tx: LinkTx,
    /// Receives the events.
    pub rx: LinkRx,
}

/// Starts the embedded broker in its own threads and returns the pipeline's link, already
/// subscribed to every courier's locations topic.
///
/// `tls` is `[tls]`, which the TLS listeners (`tls_listen`, `tls_listen_v5`) need
/// (the configuration's check at start has made sure it is there and readable).
///
/// `orders` says whether an order is active: customers' order tokens work only then. `edges`
/// says which edge components may connect.
pub fn start(
    config: &MqttConfig,
    tls: Option<&TlsConfig>,
    auth: Option<Arc<TokenAuthority>>,
    orders: OrderGate,
    edges: crate::edges::EdgeRules,
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

    let policy = TopicPolicy::new(orders, edges);
    let stream_demand = StreamDemand::default();
    let connections =
        connection_settings(config, auth, policy, stream_demand.clone(), metrics.clone());
    // One rumqttd server per listener on, keyed by name; none on = no server of that version.
    let servers = |listeners: [(&str, Option<SocketAddr>, Option<rumqttd::TlsConfig>); 2]| {
        let servers: HashMap<String, ServerSettings> = listeners
            .into_iter()
            .filter_map(|(name, listen, tls)| {
                let mut settings = ServerSettings {
                    name: name.to_owned(),
                    listen: listen?,
                    tls,
                    // No pause between accepts: a fleet reconnecting after a blip must get
                    // in within seconds; `max_connection_rate` is the limit that sheds load.
                    next_connection_delay_ms: 0,
                    connections: connections.clone(),
                    max_connection_rate: (config.max_connection_rate > 0)
                        .then_some(config.max_connection_rate),
                    connection_burst: Some(config.connection_burst),
                    listener_event_handler: None,
                };
                let metrics = metrics.clone();
                settings.set_listener_event_handler(move |event| {
                    if let ListenerEvent::ConnectionRateExceeded { listener, peer } = event {
                        metrics.connection_rate_refused.inc();
                        tracing::debug!(%listener, %peer, "connection refused: connection rate exceeded");
                    }
                });
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
            // The log is only a relay buffer between devices and the pipeline: committed data
            // lives in sled, and anything lost here is resent by devices (it was never acked).
            // rumqttd counts topic + payload bytes here and keeps a full log whether or not it
            // was read, while each kept publish costs many times its bytes in memory: hence
            // `ingest_buffer_mib` (32 MiB is about 500,000 one-fix reports), in four segments
            // so that dropping the oldest frees a quarter at a time.
            max_segment_size: config.ingest_buffer_mib * 1024 * 1024 / 4,
            max_segment_count: 4,
            // A courier's acks each say all there is (the retained one is the newest), so its
            // subscription needs little history: two segments of 1 KiB counted bytes (rumqttd's
            // smallest), about 55 acks, some 16 KB per busy courier instead of up to 32 MiB (the
            // default log grew the broker by hundreds of megabytes with a fleet on). One segment
            // would halve that, but a courier acked hundreds of times a second then falls behind
            // each time it is dropped, and rumqttd logs two warnings per jump. A device that
            // does fall behind jumps to the newest ack, which covers the rest.
            // The same holds for an order's status and location: each says all there is.
            custom_segment: Some(HashMap::from(
                [
                    locus_sdk::topics::acks("+"),
                    locus_sdk::topics::order_status("+"),
                    locus_sdk::topics::order_location("+"),
                ]
                .map(|filter| {
                    (filter, SegmentConfig { max_segment_size: 1024, max_segment_count: 2 })
                }),
            )),
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
    let (mut events_tx, events_rx) =
        broker.link(PIPELINE_EVENTS_CLIENT_ID).map_err(|e| MqttError::Link(e.to_string()))?;
    // Edges' batches share the events' link: both are light next to the reports, and a third
    // link would be a third queue for the intake to visit.
    for filter in [locus_sdk::topics::ALL_EVENTS, locus_sdk::topics::ALL_EDGE_BATCHES] {
        events_tx.subscribe(filter).map_err(|e| MqttError::Link(e.to_string()))?;
    }

    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| MqttError::Link(e.to_string()))?;

    let events = Some(EventsLink { tx: events_tx, rx: events_rx });
    Ok(BrokerLink { tx, rx, events, stream_demand })
}

fn connection_settings(
    config: &MqttConfig,
    auth: Option<Arc<TokenAuthority>>,
    policy: TopicPolicy,
    stream_demand: StreamDemand,
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
        max_publish_rate: (config.max_publish_rate > 0).then_some(PublishRate {
            per_second: config.max_publish_rate,
            burst: config.publish_burst.max(1),
        }),
    };
    let refused = metrics.clone();
    let tokens = auth.clone();
    let connect_policy = policy.clone();
    // The auth handler runs for every CONNECT, with or without credentials (a locus patch): it
    // checks the courier or order token, and even for anonymous servers refuses the pipeline's
    // id.
    settings.set_auth_handler(move |client_id: String, username: String, password: String| {
        let verdict = match &tokens {
            Some(tokens) => {
                check_connect(tokens, &connect_policy, &client_id, &username, &password)
            }
            None => check_client_id(&client_id),
        };
        if let Err(reason) = &verdict {
            record_refused_connect(&refused, &client_id, &username, reason);
        }
        std::future::ready(verdict.is_ok())
    });
    if auth.is_none() {
        // Everyone may do anything; only watch for the fix stream's first reader.
        let stream_demand = stream_demand.clone();
        settings.set_acl_handler(move |_: &ClientIdentity, action: &AclAction<'_>| {
            if let AclAction::Subscribe { filter } = *action {
                stream_demand.want(filter);
            }
            true
        });
    }
    if auth.is_some() {
        let denied = metrics.clone();
        settings.set_acl_handler(move |client: &ClientIdentity, action: &AclAction<'_>| {
            let action = match *action {
                AclAction::Publish { topic, .. } => Action::Publish(topic),
                AclAction::Subscribe { filter } => Action::Subscribe(filter),
                AclAction::Will { topic, .. } => Action::Will(topic),
                // An action this build does not know: refuse rather than guess.
                _ => return false,
            };
            // Authentication made sure the client id names who the client is.
            let who = Principal::of_client(&client.client_id);
            match policy.check(who, action) {
                Ok(()) => {
                    if let (Principal::Reader, Action::Subscribe(filter)) = (who, action) {
                        stream_demand.want(filter);
                    }
                    true
                }
                Err(denial) => {
                    record_denial(&denied, &client.client_id, action, denial);
                    false
                }
            }
        });
    }
    let oversized_log = RateLimitedLog::new(Duration::from_secs(60));
    settings.set_event_handler(
        move |client: &ClientIdentity, event: ConnectionEvent| match event {
            ConnectionEvent::Connected => {
                metrics.connections.inc();
                metrics.connected_clients.inc();
            }
            ConnectionEvent::Disconnected { reason } => {
                metrics.connected_clients.dec();
                let reason = disconnect_label(&reason);
                metrics.disconnections.get_or_create(&DisconnectLabel { reason }).inc();
            }
            ConnectionEvent::PacketTooLarge { size, max } => {
                metrics.packet_too_large.inc();
                if oversized_log.should_log(&client.client_id) {
                    tracing::info!(
                        client_id = %client.client_id,
                        size,
                        max,
                        "MQTT packet over [mqtt] max_payload_bytes: connection closed (logged \
                         once a minute per client)"
                    );
                }
            }
            ConnectionEvent::PublishThrottled => {
                metrics.publish_throttled.inc();
            }
            _ => {}
        },
    );
    settings
}

/// The `reason` label of `locus_mqtt_disconnections_total`.
fn disconnect_label(reason: &DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::ClientDisconnect => "client_disconnect",
        DisconnectReason::ConnectionClosed => "connection_closed",
        DisconnectReason::KeepAliveTimeout => "keep_alive_timeout",
        DisconnectReason::PacketTooLarge => "packet_too_large",
        DisconnectReason::ClosedByBroker => "closed_by_broker",
        _ => "error",
    }
}

/// Remembers when it last logged for each client, so a device that keeps doing the same wrong
/// thing fills the log with one line a minute, not one per attempt.
#[derive(Debug)]
struct RateLimitedLog {
    every: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl RateLimitedLog {
    /// Most clients remembered; past it the memory is cleared (a burst of logs, then quiet).
    const MAX_CLIENTS: usize = 10_000;

    fn new(every: Duration) -> RateLimitedLog {
        RateLimitedLog { every, last: Mutex::new(HashMap::new()) }
    }

    fn should_log(&self, client_id: &str) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.get(client_id).is_some_and(|t| now.duration_since(*t) < self.every) {
            return false;
        }
        if last.len() >= Self::MAX_CLIENTS {
            last.clear();
        }
        last.insert(client_id.to_owned(), now);
        true
    }
}

/// Counts and logs a refused CONNECT (embedded broker or an external broker's auth backend):
/// `locus_mqtt_auth_refused_total`, and an INFO line with the reason.
fn record_refused_connect(metrics: &Metrics, client_id: &str, username: &str, reason: &str) {
    metrics.auth_refused.inc();
    tracing::info!(%client_id, %username, %reason, "MQTT connection refused");
}

/// Counts and logs an action the topic policy refused (embedded broker or an external
/// broker's auth backend): `locus_mqtt_denied_total{action}`, and an INFO line naming the
/// client.
fn record_denial(metrics: &Metrics, client_id: &str, action: Action<'_>, denial: Denial) {
    metrics.mqtt_denied.get_or_create(&ActionLabel { action: action.label() }).inc();
    tracing::info!(
        %client_id,
        action = action.label(),
        topic = action.topic(),
        reason = %denial,
        "MQTT action refused"
    );
}

/// Client ids no device may use, whatever its credentials.
fn check_client_id(client_id: &str) -> Result<(), String> {
    if policy::is_reserved_client_id(client_id) {
        return Err(format!("client id {client_id} is reserved for locusd"));
    }
    // The broker's router drops such a client's link after CONNACK; refuse it with a reason.
    if client_id.contains(['+', '$', '#', '/']) {
        return Err("a client id may not contain + $ # or /".to_owned());
    }
    Ok(())
}

/// Whether a CONNECT may proceed; the error says why not (for logs, never to the client).
fn check_connect(
    auth: &TokenAuthority,
    policy: &TopicPolicy,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<(), String> {
    match Principal::of_client(client_id) {
        Principal::Courier(_) => check_courier(auth, client_id, username, password),
        Principal::Customer { order } => {
            check_client_id(client_id)?;
            if order != username {
                return Err(format!(
                    "a customer's client id is order@{{order}}[@...] and its username the order \
                     id (client id {client_id}, username {username})"
                ));
            }
            if !locus_sdk::topics::is_valid_id(order) {
                return Err("username is not a valid order id".into());
            }
            auth.verify(Role::Order, order, password).map_err(|e| e.to_string())?;
            match policy.order_is_active(order) {
                true => Ok(()),
                false => {
                    Err(format!("order {order} is not active (delivered, cancelled or unknown)"))
                }
            }
        }
        Principal::Reader => {
            check_client_id(client_id)?;
            let subject = Role::Reader.fixed_subject().unwrap_or("reader");
            if username != subject {
                return Err(format!(
                    "a fix stream consumer's client id is reader@{{anything}} and its username \
                     {subject} (username {username})"
                ));
            }
            auth.verify(Role::Reader, subject, password).map_err(|e| e.to_string())
        }
        Principal::Edge { edge } => {
            check_client_id(client_id)?;
            if edge != username {
                return Err(format!(
                    "an edge's client id is edge@{{edge}}[@...] and its username the edge id \
                     (client id {client_id}, username {username})"
                ));
            }
            if !locus_sdk::topics::is_valid_id(edge) {
                return Err("username is not a valid edge id".into());
            }
            auth.verify(Role::Edge, edge, password).map_err(|e| e.to_string())?;
            match policy.edge_is_declared(edge) {
                true => Ok(()),
                false => Err(format!(
                    "edge {edge} is not declared: add an [edges.{edge}] section naming the \
                     couriers it may report for"
                )),
            }
        }
    }
}

/// A courier's CONNECT: username and client id are the courier id, the password its token.
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
    check_client_id(client_id)?;
    auth.verify(Role::Courier, username, password).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::StreamDemand;

    #[test]
    fn filters_that_can_match_the_fix_stream_are_told_apart() {
        let demand = |filter: &str| {
            let demand = StreamDemand::default();
            demand.want(filter);
            (demand.json(), demand.wire())
        };
        for filter in ["fixes/+", "fixes/c1", "$share/g/fixes/+"] {
            assert_eq!(demand(filter), (true, false), "{filter}");
        }
        for filter in ["fixes-wire/+", "fixes-wire/c1", "$share/g/fixes-wire/#"] {
            assert_eq!(demand(filter), (false, true), "{filter}");
        }
        for filter in ["#", "+/c1", "$share/g/#"] {
            assert_eq!(demand(filter), (true, true), "{filter}");
        }
        for filter in ["couriers/c1/acks", "orders/+/status", "$share/g/couriers/+/acks", "$share"]
        {
            assert_eq!(demand(filter), (false, false), "{filter}");
        }
    }
}
