//! InfluxDB shipping: a shipper task reads the store's commit log from its own cursor, turns
//! every committed fix into a line-protocol point and writes them to InfluxDB in batches.
//!
//! Enters: commit-log entries ([`crate::store::Store::shipper_read`]). Leaves: gzipped
//! line-protocol write requests to InfluxDB (v1
//! `/write` or v2 `/api/v2/write`), dead letters for points InfluxDB refuses, metrics and a
//! health snapshot.
//!
//! The parts, in the order data goes:
//! - [`config`]: the `[influx]` section and its secrets;
//! - [`line_protocol`]: the schema (measurement `courier_location`, ms precision) and escaping;
//! - [`outbox`]: the part of the log not shipped yet, its depth and size limit (back-pressure
//!   for acks);
//! - [`shipper`]: batching, retries with back-off, bisection of refused batches, shutdown;
//! - [`writer`]: one HTTP write request and what its answer means;
//! - [`metrics`]: Prometheus metrics and `/healthz` state;
//! - [`ack_records`]: in cluster mode, each courier's committed seqs, written before its ack
//!   and read back by a worker that takes over a partition.
//!
//! Wiring: [`start`] is the one place that puts these together — it opens the [`Outbox`],
//! registers [`InfluxMetrics`], gives the [`Shipper`] a [`DeadLetterSink`] into the store, and
//! spawns [`Shipper::run`]; the intake gets the outbox through `Intake::with_influx_outbox` and
//! takes no reports while it is full.

pub mod ack_records;
pub mod config;
pub mod line_protocol;
pub mod metrics;
pub mod outbox;
pub mod shipper;
pub mod writer;

pub use config::{Credentials, InfluxApi, InfluxConfig, InfluxConfigError};
pub use line_protocol::{point, SchemaConfig, MEASUREMENT, PRECISION};
pub use metrics::{HealthHandle, InfluxHealth, InfluxMetrics, InfluxState};
pub use outbox::Outbox;
pub use shipper::{DeadLetterSink, Shipper};
pub use writer::InfluxError;

use crate::metrics::Metrics;
use crate::store::{DeadLetter, Store};
use std::sync::Arc;

/// What `[influx]` adds to a running server.
#[derive(Debug)]
pub struct Started {
    /// The outbox the intake watches (it takes no reports while the outbox is full).
    pub outbox: Outbox,
    /// The shipper's state for `/healthz`.
    pub health: HealthHandle,
    /// The shipper task; it ends once `shutdown` resolves.
    pub task: tokio::task::JoinHandle<()>,
}

/// Opens the outbox over `store`'s log, registers the InfluxDB metrics, and spawns the
/// shipper (its refused points become dead letters in `store`) until `shutdown` resolves.
pub fn start(
    config: &InfluxConfig,
    store: &Store,
    metrics: &Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Started, InfluxError> {
    let outbox = Outbox::open(store, config);
    let influx_metrics = InfluxMetrics::default();
    metrics.register_with(|registry| influx_metrics.register(registry));
    let (sink_store, sink_metrics) = (store.clone(), metrics.clone());
    let sink: DeadLetterSink = Arc::new(move |letters: Vec<DeadLetter>| {
        for letter in &letters {
            sink_metrics.dead_letter(&letter.reason);
        }
        sink_store.record_dead_letters(letters)?;
        Ok(())
    });
    let shipper = Shipper::new(outbox.clone(), config, influx_metrics, sink)?;
    let health = shipper.health();
    tracing::info!(url = %config.url, "shipping fixes to InfluxDB");
    Ok(Started { outbox, health, task: tokio::spawn(shipper.run(shutdown)) })
}
