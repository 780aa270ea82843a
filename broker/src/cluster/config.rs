//! `[broker]`: the embedded MQTT broker (one process serves a city) or a RabbitMQ cluster in
//! front of several locusd workers.

use serde::{Deserialize, Serialize};

/// `[broker]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `"embedded"` (the default: locusd's own MQTT listeners, `[mqtt]`) or `"rabbitmq"`
    /// (no MQTT listener: devices connect to RabbitMQ; this locusd is one worker consuming
    /// reports over AMQP; needs `[broker.rabbitmq]` and `[influx]`).
    #[serde(default)]
    pub mode: BrokerMode,
    /// The RabbitMQ cluster, for `mode = "rabbitmq"`.
    pub rabbitmq: Option<RabbitConfig>,
}

/// Which broker devices connect to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    /// locusd's embedded MQTT broker.
    #[default]
    Embedded,
    /// A RabbitMQ cluster with its MQTT plugin; locusd is a worker.
    Rabbitmq,
}

/// `[broker.rabbitmq]`. Its `Debug` leaves the URLs' passwords out.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitConfig {
    /// AMQP URLs of the cluster's nodes (`amqp://user:password@host:5672/%2f`), tried in turn
    /// at start and after a lost connection. The user is an internal RabbitMQ user with
    /// configure, write and read rights on `locus.*` and read and write on `amq.topic`
    /// (binding from it needs read): devices never get those (the HTTP auth backend answers
    /// for them).
    pub amqp_urls: Vec<String>,
    /// An environment variable holding the AMQP password, which then replaces the one in the
    /// URLs (keep secrets out of config files).
    #[serde(default)]
    pub password_env: Option<String>,
    /// How many partitions (quorum queues `locus.reports.0` …) reports are hashed into by
    /// courier. Fixed when the queues are first declared: every worker must say the same.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// How many workers the partitions are spread over at start …
    #[serde(default = "default_workers")]
    pub workers: u32,
    /// … and which of them this is (0-based): it consumes partitions `p` with
    /// `p % workers == worker_index` at once and the others `standby_after_ms` later, so
    /// workers started together share the partitions, and each is a standby for the rest.
    #[serde(default)]
    pub worker_index: u32,
    /// Delay before this worker registers as standby consumer of the other partitions, ms.
    #[serde(default = "default_standby_after_ms")]
    pub standby_after_ms: u64,
    /// Deliveries in flight (taken, not yet acked) per partition: at least one commit's worth.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// How long the shared log stream (`locus.log`) keeps entries, in RabbitMQ's `x-max-age`
    /// form (`7D`, `12h`, `30m`): a worker with a new disk rebuilds its views from it, so keep
    /// it at least `[track] max_age_s`. Fixed when the stream is first declared.
    #[serde(default = "default_log_max_age")]
    pub log_max_age: String,
}

impl std::fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.amqp_urls.iter().map(|url| redact(url)).collect();
        f.debug_struct("RabbitConfig")
            .field("amqp_urls", &urls)
            .field("password_env", &self.password_env)
            .field("partitions", &self.partitions)
            .field("workers", &self.workers)
            .field("worker_index", &self.worker_index)
            .field("standby_after_ms", &self.standby_after_ms)
            .field("prefetch", &self.prefetch)
            .field("log_max_age", &self.log_max_age)
            .finish()
    }
}

/// A URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn default_partitions() -> u32 {
    8
}
fn default_workers() -> u32 {
    1
}
fn default_standby_after_ms() -> u64 {
    5000
}
fn default_log_max_age() -> String {
    "7D".to_owned()
}
fn default_prefetch() -> u16 {
    4096
}

impl BrokerConfig {
    /// Whether the settings can work; the error names the key and the fix.
    pub fn check(&self, has_influx: bool) -> Result<(), String> {
        let Some(rabbit) = (match self.mode {
            BrokerMode::Embedded => return Ok(()),
            BrokerMode::Rabbitmq => self.rabbitmq.as_ref(),
        }) else {
            return Err("broker.mode = \"rabbitmq\" needs a [broker.rabbitmq] section with \
                        amqp_urls"
                .into());
        };
        if rabbit.amqp_urls.is_empty() {
            return Err("broker.rabbitmq.amqp_urls is empty: list the AMQP URL of at least one \
                        node"
                .into());
        }
        for url in &rabbit.amqp_urls {
            amqprs::connection::OpenConnectionArguments::try_from(url.as_str()).map_err(|e| {
                format!("broker.rabbitmq.amqp_urls: {url:?} is not an AMQP URL ({e})")
            })?;
        }
        if rabbit.partitions == 0 || rabbit.workers == 0 || rabbit.prefetch == 0 {
            return Err(
                "broker.rabbitmq.partitions, workers and prefetch must be at least 1".into()
            );
        }
        if rabbit.worker_index >= rabbit.workers {
            return Err(format!(
                "broker.rabbitmq.worker_index ({}) must be below workers ({})",
                rabbit.worker_index, rabbit.workers
            ));
        }
        let age = &rabbit.log_max_age;
        let (number, unit) = age.split_at(age.len().saturating_sub(1));
        if number.parse::<u32>().is_err() || !["Y", "M", "D", "h", "m", "s"].contains(&unit) {
            return Err(format!(
                "broker.rabbitmq.log_max_age = {age:?}: write a number and a unit (Y, M, D, h, \
                 m or s), for example \"7D\""
            ));
        }
        if !has_influx {
            return Err(
                "broker.mode = \"rabbitmq\" needs [influx]: InfluxDB is the shared record \
                        a worker taking over a partition reads"
                    .into(),
            );
        }
        Ok(())
    }
}
