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
//! - [`metrics`]: Prometheus metrics and `/healthz` state.
//!
//! Wiring: `serve`'s `start_influx` (in `src/serve.rs`) is the one place that puts these
//! together — it opens the [`Outbox`], registers [`InfluxMetrics`], gives the [`Shipper`] a
//! [`DeadLetterSink`] into the store, and spawns [`Shipper::run`]; the intake gets the outbox
//! through `Intake::with_influx_outbox` and takes no reports while it is full. (An example copied here
//! drifted from that code once; read the function instead.)

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
