//! Prometheus metrics of the whole server, served at `GET /metrics`.
//!
//! One [`Metrics`] is created at start and shared (`Arc`) by the parts that count; each part's
//! own metrics (InfluxDB shipper, plugins) register into the same registry.

use crate::store::DeadLetterReason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

/// The `reason` label of dead-letter counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Stable reason code.
    pub reason: String,
}

/// A label with one stable value (`action`, `reason`, ...), for small counter families.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    /// What was refused: `publish`, `subscribe` or `will`.
    pub action: &'static str,
}

/// The `phase` label of HTTP timeouts: `headers` (slow request head) or `request`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// Where the client was too slow.
    pub phase: &'static str,
}

/// The `reason` label of disconnections.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DisconnectLabel {
    /// Why the connection ended.
    pub reason: &'static str,
}

/// The `channel` label of notification counts: `webhook` or `email`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    /// How the notification goes out.
    pub channel: &'static str,
}

/// The `outcome` label of edge parts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `taken`, `duplicate`, `rejected` (the edge's scope or the client's token) or `refused`
    /// (malformed, or its key taken for other data).
    pub outcome: &'static str,
}

/// Counters, gauges and histograms of the ingest path.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// MQTT publishes taken from the locations topics.
    pub reports_received: Counter,
    /// Fixes in decoded reports.
    pub fixes_received: Counter,
    /// Reports committed to sled (flushed).
    pub reports_committed: Counter,
    /// Fixes committed to sled (flushed).
    pub fixes_committed: Counter,
    /// Reports at or below the courier's committed seq (acked again, not reapplied).
    pub duplicate_reports: Counter,
    /// Reports not taken because their courier has too many gaps in its seqs (not acked; the
    /// device sends them again).
    pub reports_deferred: Counter,
    /// Dead letters by reason.
    pub dead_letters: Family<ReasonLabel, Counter>,
    /// Acks published to couriers.
    pub acks_published: Counter,
    /// Reports per commit batch.
    pub commit_batch_reports: Histogram,
    /// Seconds from a batch's first report taken in to its flush completing.
    pub commit_latency_seconds: Histogram,
    /// Clients connected to the embedded broker.
    pub connected_clients: Gauge,
    /// MQTT connections refused at CONNECT (bad or missing credentials, reserved client id).
    pub auth_refused: Counter,
    /// MQTT connections accepted (CONNACK sent).
    pub connections: Counter,
    /// MQTT connections ended, by reason.
    pub disconnections: Family<DisconnectLabel, Counter>,
    /// Publishes, subscriptions and wills refused by the topic policy, by action.
    pub mqtt_denied: Family<ActionLabel, Counter>,
    /// Connections closed for a packet over `[mqtt] max_payload_bytes`.
    pub packet_too_large: Counter,
    /// Spells of a connection throttled for its publish rate.
    pub publish_throttled: Counter,
    /// Connections refused for the listener's connection rate.
    pub connection_rate_refused: Counter,
    /// HTTP clients too slow to send their request head or to finish a request, by phase.
    pub http_timeouts: Family<PhaseLabel, Counter>,
    /// HTTP requests refused with 413 for a body over the route's limit.
    pub http_body_too_large: Counter,
    /// 1 while acks are held back (for example a full InfluxDB outbox), else 0.
    pub acks_paused: Gauge,
    /// Notifications delivered (2xx from a webhook, a mail accepted), by channel.
    pub notifications_delivered: Family<ChannelLabel, Counter>,
    /// Notification attempts that failed, by channel (each retry counts).
    pub notification_failures: Family<ChannelLabel, Counter>,
    /// Notifications that became dead letters after their last attempt, by channel.
    pub notifications_dead: Family<ChannelLabel, Counter>,
    /// Notifications waiting to be delivered (not dead ones).
    pub notifications_pending: Gauge,
    /// Parts of edge requests, by outcome.
    pub edge_parts: Family<OutcomeLabel, Counter>,
    /// Messages published on the live fix stream (`fixes/{courier}`).
    pub fix_stream_messages: Counter,
    /// Dead letters replayed, by outcome (`resolved`, `refused`, `unsupported`).
    pub dead_letters_replayed: Family<OutcomeLabel, Counter>,
    /// Fixes stored by replaying dead letters.
    pub dead_letter_fixes_replayed: Counter,
    /// Dead letters purged.
    pub dead_letters_purged: Counter,
    /// Dead letters exported as JSON lines.
    pub dead_letters_exported: Counter,
    /// Clients following positions live (`GET /v1/live`: the console's map).
    pub live_followers: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("locus");
        let metrics = Metrics {
            registry: Mutex::new(Registry::default()),
            reports_received: Counter::default(),
            fixes_received: Counter::default(),
            reports_committed: Counter::default(),
            fixes_committed: Counter::default(),
            duplicate_reports: Counter::default(),
            reports_deferred: Counter::default(),
            dead_letters: Family::default(),
            acks_published: Counter::default(),
            commit_batch_reports: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            commit_latency_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 14)),
            connected_clients: Gauge::default(),
            auth_refused: Counter::default(),
            connections: Counter::default(),
            disconnections: Family::default(),
            mqtt_denied: Family::default(),
            packet_too_large: Counter::default(),
            publish_throttled: Counter::default(),
            connection_rate_refused: Counter::default(),
            http_timeouts: Family::default(),
            http_body_too_large: Counter::default(),
            acks_paused: Gauge::default(),
            notifications_delivered: Family::default(),
            notification_failures: Family::default(),
            notifications_dead: Family::default(),
            edge_parts: Family::default(),
            fix_stream_messages: Counter::default(),
            dead_letters_replayed: Family::default(),
            dead_letter_fixes_replayed: Counter::default(),
            dead_letters_purged: Counter::default(),
            dead_letters_exported: Counter::default(),
            live_followers: Gauge::default(),
            notifications_pending: Gauge::default(),
        };
        let m = &metrics;
        registry.register(
            "reports_received",
            "Location reports received",
            m.reports_received.clone(),
        );
        registry.register("fixes_received", "Fixes in decoded reports", m.fixes_received.clone());
        registry.register(
            "reports_committed",
            "Reports durably committed",
            m.reports_committed.clone(),
        );
        registry.register("fixes_committed", "Fixes durably committed", m.fixes_committed.clone());
        registry.register(
            "duplicate_reports",
            "Reports at or below the committed sequence number, acked again",
            m.duplicate_reports.clone(),
        );
        registry.register(
            "reports_deferred",
            "Reports not taken (nor acked) because their courier has too many gaps in its seqs",
            m.reports_deferred.clone(),
        );
        registry.register("dead_letters", "Dead letters by reason", m.dead_letters.clone());
        registry.register("acks_published", "Acks published to couriers", m.acks_published.clone());
        registry.register(
            "commit_batch_reports",
            "Reports per group-commit batch",
            m.commit_batch_reports.clone(),
        );
        registry.register(
            "commit_latency_seconds",
            "From the first report of a batch taken in to its flush completing",
            m.commit_latency_seconds.clone(),
        );
        registry.register(
            "mqtt_connected_clients",
            "Clients connected to the embedded MQTT broker",
            m.connected_clients.clone(),
        );
        registry.register(
            "mqtt_auth_refused",
            "MQTT connections refused at CONNECT for bad or missing credentials",
            m.auth_refused.clone(),
        );
        registry.register("mqtt_connections", "MQTT connections accepted", m.connections.clone());
        registry.register(
            "mqtt_disconnections",
            "MQTT connections ended, by reason",
            m.disconnections.clone(),
        );
        registry.register(
            "mqtt_denied",
            "MQTT publishes, subscriptions and wills refused by the topic policy, by action",
            m.mqtt_denied.clone(),
        );
        registry.register(
            "mqtt_packet_too_large",
            "MQTT connections closed for a packet over [mqtt] max_payload_bytes",
            m.packet_too_large.clone(),
        );
        registry.register(
            "mqtt_publish_throttled",
            "Spells of an MQTT connection throttled for its publish rate",
            m.publish_throttled.clone(),
        );
        registry.register(
            "mqtt_connection_rate_refused",
            "MQTT connections refused for the listener's connection rate",
            m.connection_rate_refused.clone(),
        );
        registry.register(
            "http_timeouts",
            "HTTP clients too slow to send their request head or finish a request, by phase",
            m.http_timeouts.clone(),
        );
        registry.register(
            "http_body_too_large",
            "HTTP requests refused with 413 for a body over the route's limit",
            m.http_body_too_large.clone(),
        );
        registry.register(
            "acks_paused",
            "1 while acks are held back (e.g. the InfluxDB outbox is full)",
            m.acks_paused.clone(),
        );
        registry.register(
            "notifications_delivered",
            "Order notifications delivered (2xx from a webhook, a mail accepted), by channel",
            m.notifications_delivered.clone(),
        );
        registry.register(
            "notification_failures",
            "Order notification attempts that failed, by channel (each retry counts)",
            m.notification_failures.clone(),
        );
        registry.register(
            "notifications_dead",
            "Order notifications that became dead letters after their last attempt, by channel",
            m.notifications_dead.clone(),
        );
        registry.register(
            "notifications_pending",
            "Order notifications waiting to be delivered (not dead letters)",
            m.notifications_pending.clone(),
        );
        registry.register(
            "edge_parts",
            "Parts of requests posted through edge components, by outcome (taken, duplicate, \
             rejected, refused)",
            m.edge_parts.clone(),
        );
        registry.register(
            "fix_stream_messages",
            "Messages published on the live fix stream (fixes/{courier}: one per courier per commit)",
            m.fix_stream_messages.clone(),
        );
        registry.register(
            "dead_letters_replayed",
            "Dead letters replayed through validation and the plugin chain, by outcome \
             (resolved: every fix stored or already there; refused again; unsupported)",
            m.dead_letters_replayed.clone(),
        );
        registry.register(
            "dead_letter_fixes_replayed",
            "Fixes stored by replaying dead letters",
            m.dead_letter_fixes_replayed.clone(),
        );
        registry.register(
            "dead_letters_purged",
            "Dead letters purged",
            m.dead_letters_purged.clone(),
        );
        registry.register(
            "dead_letters_exported",
            "Dead letters exported as JSON lines",
            m.dead_letters_exported.clone(),
        );
        registry.register(
            "live_followers",
            "Clients following positions live (GET /v1/live, the console's map)",
            m.live_followers.clone(),
        );
        *metrics.registry.lock().expect("fresh mutex") = registry;
        metrics
    }

    /// Counts one dead letter.
    pub fn dead_letter(&self, reason: &DeadLetterReason) {
        let label = ReasonLabel { reason: reason.as_str().to_owned() };
        self.dead_letters.get_or_create(&label).inc();
    }

    /// Counts one replayed dead letter with `outcome`.
    pub fn dead_letters_replayed_outcome(&self, outcome: &'static str) {
        self.dead_letters_replayed.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts one edge part with `outcome`.
    pub fn edge_part(&self, outcome: &'static str) {
        self.edge_parts.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Lets another part register its metrics under the `locus_` prefix.
    pub fn register_with(&self, register: impl FnOnce(&mut Registry)) {
        register(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("encoding metrics into a String");
        out
    }
}
