//! Cluster mode: locusd as one of several workers behind a RabbitMQ cluster.
//!
//! Enters: `[broker]` ([`BrokerConfig`]). Leaves: an `ExternalBroker` for the pipeline
//! ([`rabbitmq::start`]): devices' reports partitioned by courier into quorum queues, each
//! consumed by one worker at a time, and the way back for acks, announcements and the fix
//! stream.
//!
//! The parts:
//! - [`config`]: `[broker]` and `[broker.rabbitmq]`;
//! - [`rabbitmq`]: the AMQP connection, the topology, consumers and the committer's outlet.
//!
//! Devices are authorised by the same policy as in embedded mode, asked by RabbitMQ over
//! HTTP (`mqtt::external_auth`, `[http] rabbitmq_auth_backend`); acks wait until InfluxDB
//! holds the fixes and the couriers' ack records (`influx::ack_records`), so a worker's disk
//! is never the only copy of anything acked.

pub mod config;
pub mod rabbitmq;

pub use config::{BrokerConfig, BrokerMode, RabbitConfig};

/// This worker's id, kept in `data_dir/worker-id` (made at first start): it marks the
/// entries this worker puts in the shared log stream, so it skips them when they come back,
/// also after a restart.
pub fn worker_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("worker-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        Ok(_) | Err(_) => {
            std::fs::create_dir_all(data_dir)?;
            let id = format!("worker-{}", hex::encode(rand::random::<[u8; 8]>()));
            std::fs::write(&path, &id)?;
            Ok(id)
        }
    }
}
