//! # locus-broker — the `locusd` server
//!
//! Layout, in the order data flows:
//! - [`mqtt`]: the embedded rumqttd broker, courier authentication, and the local link the
//!   pipeline reads reports from and publishes acks to.
//! - [`pipeline`]: decode → validate → dedup (per-courier seq) → plugin chain → commit batch →
//!   flush → ack. Bad input becomes dead letters, never a panic.
//! - [`cluster`]: cluster mode (`[broker] mode = "rabbitmq"`): reports from a RabbitMQ
//!   cluster's partition queues instead of the embedded broker; acks back through it.
//! - [`edges`]: edge components (`edge/`): which couriers each may post fixes for, and the
//!   check of its HTTP clients' tokens; their batches enter the pipeline beside reports.
//! - [`plugins`]: the WebAssembly plugin host.
//! - [`store`]: sled trees — last locations, tracks, committed seqs, dead letters, outboxes.
//! - [`influx`]: ships committed fixes from the outbox to InfluxDB.
//! - [`orders`]: the order lifecycle's state machine (not wired in yet: issue #10).
//! - [`notify`]: order events told to webhooks and email addresses, at least once, with
//!   retries and dead letters (its deliveries live in a store tree).
//! - [`api`]: the HTTP API (axum) over the store, plus metrics and health.
//! - [`auth`]: courier and admin tokens.
//! - [`tls`]: certificates for the MQTT-over-TLS and HTTPS listeners.
//! - [`config`]: the TOML configuration: one section per part, each defined next to its part
//!   and gathered here (the parts never look at `config`).
//! - [`listener`]: listen addresses (`HOST:PORT` or `off`) in config and on the command line.
//! - [`cli`]: the `locusd` subcommands.

// The plugin unit tests include tests/src/plugin_components.rs, which names this crate
// `locus_broker` as the end-to-end tests and the benchmarks do.
#[cfg(test)]
extern crate self as locus_broker;

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod edges;
pub mod influx;
pub mod listener;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod orders;
pub mod pipeline;
pub mod plugins;
pub mod serve;
pub mod store;
pub mod tls;
