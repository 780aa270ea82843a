//! What the shipper tells operators: Prometheus metrics and the health snapshot for `/healthz`.
//!
//! Enters: counts and state changes from the [`Shipper`](super::Shipper). Leaves: metrics
//! registered into the server's registry ([`InfluxMetrics::register`]) and
//! [`InfluxHealth`] snapshots ([`HealthHandle::snapshot`]).

use super::outbox::Outbox;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// The `status` label of write failures: an HTTP status code, or `network` when no answer
/// came (refused connection, timeout, reset).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `"500"`, `"429"`, `"401"`, …, or `"network"`.
    pub status: String,
}

/// The shipper's metrics. Cheap to clone (the metric types share their values).
#[derive(Debug, Clone)]
pub struct InfluxMetrics {
    /// Lines waiting in the outbox.
    pub outbox_depth: Gauge,
    /// The outbox size limit.
    pub outbox_limit: Gauge,
    /// Seconds since the server received the oldest waiting line (0 when empty).
    pub outbox_oldest_age_seconds: Gauge<f64, AtomicU64>,
    /// 1 while the outbox is at its limit (acks held back), else 0.
    pub outbox_full: Gauge,
    /// Lines InfluxDB accepted.
    pub lines_written: Counter,
    /// Write requests InfluxDB accepted.
    pub batches_written: Counter,
    /// Write attempts that will be retried (network errors, 5xx, 429, auth and not-found).
    pub retries: Counter,
    /// Failed write requests by status.
    pub failures: Family<StatusLabel, Counter>,
    /// Lines InfluxDB refused as invalid, moved to dead letters.
    pub lines_rejected: Counter,
    /// Seconds per write request that got an answer.
    pub request_seconds: Histogram,
}

impl Default for InfluxMetrics {
    fn default() -> Self {
        InfluxMetrics {
            outbox_depth: Gauge::default(),
            outbox_limit: Gauge::default(),
            outbox_oldest_age_seconds: Gauge::default(),
            outbox_full: Gauge::default(),
            lines_written: Counter::default(),
            batches_written: Counter::default(),
            retries: Counter::default(),
            failures: Family::default(),
            lines_rejected: Counter::default(),
            request_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl InfluxMetrics {
    /// Registers every metric as `influx_*` (the server's registry adds its `locus_` prefix;
    /// counters get `_total`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "influx_outbox_depth",
            "Lines waiting in the InfluxDB outbox",
            self.outbox_depth.clone(),
        );
        registry.register(
            "influx_outbox_limit",
            "InfluxDB outbox size limit, lines",
            self.outbox_limit.clone(),
        );
        registry.register(
            "influx_outbox_oldest_age_seconds",
            "Seconds since the server received the oldest line waiting in the InfluxDB outbox",
            self.outbox_oldest_age_seconds.clone(),
        );
        registry.register(
            "influx_outbox_full",
            "1 while the InfluxDB outbox is at its limit and new reports are not acked",
            self.outbox_full.clone(),
        );
        registry.register(
            "influx_lines_written",
            "Lines InfluxDB accepted",
            self.lines_written.clone(),
        );
        registry.register(
            "influx_batches_written",
            "Write requests InfluxDB accepted",
            self.batches_written.clone(),
        );
        registry.register(
            "influx_retries",
            "InfluxDB write attempts that failed and will be retried",
            self.retries.clone(),
        );
        registry.register(
            "influx_failures",
            "Failed InfluxDB write requests by HTTP status (or network)",
            self.failures.clone(),
        );
        registry.register(
            "influx_lines_rejected",
            "Lines InfluxDB refused as invalid, moved to dead letters",
            self.lines_rejected.clone(),
        );
        registry.register(
            "influx_request_seconds",
            "InfluxDB write request duration",
            self.request_seconds.clone(),
        );
    }

    pub(crate) fn failure(&self, status: &str) {
        self.failures.get_or_create(&StatusLabel { status: status.to_owned() }).inc();
    }
}

/// How InfluxDB shipping is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxState {
    /// The last write succeeded (or nothing has needed writing yet) and the outbox has room.
    Ok,
    /// InfluxDB answered but refused the last write (5xx, 429, auth, not found), or the outbox
    /// is full.
    Degraded,
    /// The last write got no answer (connection refused, timeout).
    Unreachable,
}

/// The `/healthz` view of InfluxDB shipping.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InfluxHealth {
    /// Overall state.
    pub state: InfluxState,
    /// The configured URL.
    pub url: String,
    /// `"v1"` or `"v2"`.
    pub api: &'static str,
    /// Lines waiting.
    pub outbox_depth: u64,
    /// The outbox size limit.
    pub outbox_limit: u64,
    /// Whether the outbox is at its limit (acks held back).
    pub outbox_full: bool,
    /// Server receive time of the oldest waiting line, Unix ms.
    pub oldest_received_ms: Option<u64>,
    /// When InfluxDB last accepted a write, Unix ms.
    pub last_success_ms: Option<u64>,
    /// The last failure, as logged.
    pub last_error: Option<String>,
    /// When the last failure happened, Unix ms.
    pub last_error_ms: Option<u64>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u64,
}

#[derive(Debug, Default)]
pub(crate) struct HealthState {
    pub(crate) unreachable: bool,
    pub(crate) failing: bool,
    pub(crate) last_success_ms: Option<u64>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_ms: Option<u64>,
    pub(crate) consecutive_failures: u64,
}

/// A cloneable view of the shipper's health, for `/healthz`.
#[derive(Debug, Clone)]
pub struct HealthHandle {
    pub(crate) state: Arc<Mutex<HealthState>>,
    pub(crate) outbox: Outbox,
    pub(crate) url: String,
    pub(crate) api: &'static str,
}

impl HealthHandle {
    /// The current state.
    pub fn snapshot(&self) -> InfluxHealth {
        let outbox_full = self.outbox.at_limit();
        let s = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = if s.unreachable {
            InfluxState::Unreachable
        } else if s.failing || outbox_full {
            InfluxState::Degraded
        } else {
            InfluxState::Ok
        };
        InfluxHealth {
            state,
            url: self.url.clone(),
            api: self.api,
            outbox_depth: self.outbox.depth(),
            outbox_limit: self.outbox.max_fixes(),
            outbox_full,
            // A read error here only costs the health page this one value.
            oldest_received_ms: self.outbox.oldest_received_ms().ok().flatten(),
            last_success_ms: s.last_success_ms,
            last_error: s.last_error.clone(),
            last_error_ms: s.last_error_ms,
            consecutive_failures: s.consecutive_failures,
        }
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut HealthState)) {
        f(&mut self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    }
}
