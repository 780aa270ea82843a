//! InfluxDB shipping: every committed fix becomes a line-protocol point in a durable sled
//! outbox, and a shipper task writes the outbox to InfluxDB in batches.
//!
//! Enters: committed fixes (the commit path makes a line per fix with [`line_protocol::point`]
//! and inserts the commit's lines as one [`outbox::entry`] into the `influx_outbox` tree, in the
//! same atomic batch as the commit). Leaves: gzipped line-protocol write requests to InfluxDB (v1
//! `/write` or v2 `/api/v2/write`), dead letters for points InfluxDB refuses, metrics and a
//! health snapshot.
//!
//! The parts, in the order data goes:
//! - [`config`]: the `[influx]` section and its secrets;
//! - [`line_protocol`]: the schema (measurement `courier_location`, ms precision) and escaping;
//! - [`outbox`]: the `influx_outbox` tree, its depth and size limit (back-pressure for acks);
//! - [`shipper`]: batching, retries with back-off, bisection of refused batches, shutdown;
//! - [`writer`]: one HTTP write request and what its answer means;
//! - [`metrics`]: Prometheus metrics and `/healthz` state.
//!
//! Wiring in `serve` (when `[influx]` is present):
//!
//! ```ignore
//! let outbox = influx::Outbox::open(store.db(), &cfg)?;
//! // The intake pauses (acks held back) while `outbox.is_full()`.
//! let intake = intake.with_influx_outbox(outbox.clone(), cfg.schema());
//! let metrics = influx::InfluxMetrics::default();
//! server_metrics.register_with(|r| metrics.register(r));
//! let sink: influx::DeadLetterSink = Arc::new(move |letters| Ok(store.record_dead_letters(letters)?));
//! let shipper = influx::Shipper::new(outbox, &cfg, metrics, sink)?;
//! let health = shipper.health(); // health.snapshot() for /healthz
//! tokio::spawn(shipper.run(async move { shutdown.cancelled().await }));
//! ```

pub mod config;
pub mod line_protocol;
pub mod metrics;
pub mod outbox;
pub mod shipper;
pub mod writer;

pub use config::{Credentials, InfluxApi, InfluxConfig, InfluxConfigError};
pub use line_protocol::{point, SchemaConfig, MEASUREMENT, PRECISION};
pub use metrics::{HealthHandle, InfluxHealth, InfluxMetrics, InfluxState};
pub use outbox::{Outbox, OUTBOX_TREE};
pub use shipper::{DeadLetterSink, Shipper, DEAD_LETTER_TOPIC, REJECTED_REASON};
pub use writer::InfluxError;
