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
//! Wiring: `serve`'s `start_influx` (in `src/serve.rs`) is the one place that puts these
//! together — it opens the [`Outbox`], registers [`InfluxMetrics`], gives the [`Shipper`] a
//! [`DeadLetterSink`] into the store, and spawns [`Shipper::run`]; the intake gets the outbox
//! through `Intake::with_influx_outbox` and pauses acks while it is full. (An example copied here
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
pub use outbox::{Outbox, OUTBOX_TREE};
pub use shipper::{DeadLetterSink, Shipper, DEAD_LETTER_TOPIC, REJECTED_REASON};
pub use writer::InfluxError;
