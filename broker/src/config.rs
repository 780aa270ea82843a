//! `locusd` configuration: one TOML file, one section per part, every key documented.
//!
//! Everything has a default (see `Config::default()` and `locusd.example.toml`), so `locusd`
//! runs with no file at all. Unknown keys are an error that names the key, so a typo never
//! silently falls back to a default.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where sled keeps its data and where the token secret lives.
    pub data_dir: PathBuf,
    /// Accept MQTT clients and API calls without credentials. Development only.
    pub allow_anonymous: bool,
    /// The embedded MQTT broker.
    pub mqtt: MqttConfig,
    /// The HTTP API.
    pub http: HttpConfig,
    /// Validation and batching of incoming reports.
    pub pipeline: PipelineConfig,
    /// The recent track kept per courier.
    pub track: TrackConfig,
    /// The dead-letter store.
    pub dead_letters: DeadLetterConfig,
    /// InfluxDB shipping; absent = no time series is queued.
    pub influx: Option<crate::influx::InfluxConfig>,
    /// The WebAssembly plugin host.
    pub plugins: crate::plugins::PluginHostConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./locus-data"),
            allow_anonymous: false,
            mqtt: MqttConfig::default(),
            http: HttpConfig::default(),
            pipeline: PipelineConfig::default(),
            track: TrackConfig::default(),
            dead_letters: DeadLetterConfig::default(),
            influx: None,
            plugins: crate::plugins::PluginHostConfig::default(),
        }
    }
}

/// `[mqtt]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// MQTT 3.1.1 listener.
    pub listen: SocketAddr,
    /// MQTT 5 listener (rumqttd serves each protocol version on its own port); none = off.
    pub listen_v5: Option<SocketAddr>,
    /// Largest MQTT packet, bytes (payload, topic and packet fields). The broker closes the
    /// connection of a larger PUBLISH, so `[pipeline] max_report_bytes` must fit under it with
    /// room for the topic (checked at start).
    pub max_payload_bytes: usize,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// Most unacknowledged QoS 1 messages in flight per connection.
    pub max_inflight: usize,
    /// Milliseconds a new connection has to send CONNECT.
    pub connect_timeout_ms: u16,
    /// Publishes per second one connection may sustain; over it the broker stops reading that
    /// client's socket for a while (throttled, never disconnected). 0 = no limit.
    pub max_publish_rate: u32,
    /// Publishes one connection may send at once before `max_publish_rate` applies.
    pub publish_burst: u32,
    /// New connections per second per listener; excess ones get CONNACK "server unavailable"
    /// (MQTT 5: 0x9F, connection rate exceeded) at once instead of waiting. 0 = no limit.
    pub max_connection_rate: u32,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            listen_v5: Some(SocketAddr::from(([127, 0, 0, 1], 1884))),
            max_payload_bytes: locus_sdk::wire::limits::DEFAULT_MAX_PACKET_BYTES,
            max_connections: 100_000,
            max_inflight: 100,
            connect_timeout_ms: 10_000,
            // A phone sends a report every second or so, and a backlog after a reconnect in
            // bursts; 1,000/s is far above both and still caps one flooding client at a small
            // share of what the pipeline takes.
            max_publish_rate: 1_000,
            publish_burst: 2_000,
            max_connection_rate: 5_000,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Largest page `GET /v1/couriers/{id}/track` and `GET /v1/dead-letters` return.
    pub max_page: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: SocketAddr::from(([127, 0, 0, 1], 8080)), max_page: 10_000 }
    }
}

/// `[pipeline]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Most reports committed in one sled batch (group commit). Larger = fewer flushes.
    pub max_batch_reports: usize,
    /// Most fixes in one report; larger reports are dead-lettered. Every report of this many
    /// fixes must fit in `max_report_bytes` (checked at start).
    pub max_fixes_per_report: usize,
    /// Largest report payload, bytes; larger ones are dead-lettered (their seq is consumed, so
    /// the device moves on). Keep the SDK's `batch.max_report_bytes` at or below it.
    pub max_report_bytes: usize,
    /// How far ahead of server time a fix's device time may be (clock skew), ms.
    pub max_future_ms: u64,
    /// How far behind server time a fix's device time may be (devices offline for long), ms.
    pub max_age_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_batch_reports: 4096,
            max_fixes_per_report: locus_sdk::wire::limits::DEFAULT_MAX_FIXES_PER_REPORT,
            max_report_bytes: locus_sdk::wire::limits::DEFAULT_MAX_REPORT_BYTES,
            max_future_ms: 5 * 60 * 1000,
            max_age_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// `[track]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackConfig {
    /// Most fixes kept per courier; older ones are pruned.
    pub max_fixes_per_courier: usize,
    /// Fixes older than this (device time) are pruned, seconds.
    pub max_age_s: u64,
    /// How often the pruner runs, seconds.
    pub prune_interval_s: u64,
}

impl Default for TrackConfig {
    fn default() -> Self {
        TrackConfig {
            max_fixes_per_courier: 10_000,
            max_age_s: 7 * 24 * 3600,
            prune_interval_s: 60,
        }
    }
}

/// `[dead_letters]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Most dead letters kept; the oldest are pruned beyond this.
    pub max_entries: usize,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig { max_entries: 100_000 }
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration (names the key and line).
    #[error("invalid config file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the offending key and its position.
        message: String,
    },
    /// Values that parse but cannot work together.
    #[error("invalid config: {0}")]
    Inconsistent(String),
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Invalid { message, .. } => {
                ConfigError::Invalid { path: path.to_owned(), message }
            }
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    /// Checks values that parse but would not work, naming the key and the fix.
    pub fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            ("pipeline.max_batch_reports", self.pipeline.max_batch_reports),
            ("pipeline.max_fixes_per_report", self.pipeline.max_fixes_per_report),
            ("pipeline.max_report_bytes", self.pipeline.max_report_bytes),
            ("track.max_fixes_per_courier", self.track.max_fixes_per_courier),
            ("mqtt.max_payload_bytes", self.mqtt.max_payload_bytes),
            ("mqtt.max_connections", self.mqtt.max_connections),
            ("mqtt.max_inflight", self.mqtt.max_inflight),
            ("http.max_page", self.http.max_page),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Inconsistent(format!("{key} must be at least 1")));
        }
        self.check_size_limits()?;
        if self.track.prune_interval_s == 0 {
            return Err(ConfigError::Inconsistent(
                "track.prune_interval_s must be at least 1".into(),
            ));
        }
        if Some(self.mqtt.listen) == self.mqtt.listen_v5 {
            return Err(ConfigError::Inconsistent(format!(
                "mqtt.listen and mqtt.listen_v5 are both {}; give MQTT 5 its own port",
                self.mqtt.listen
            )));
        }
        Ok(())
    }

    /// The size limits must nest, or a well-behaved device gets stuck: the broker closes the
    /// connection of a PUBLISH over `mqtt.max_payload_bytes` (no ack, so the device resends it
    /// forever), so every report the pipeline would take must fit under it with the longest
    /// topic, and every report of `pipeline.max_fixes_per_report` fixes must fit in
    /// `pipeline.max_report_bytes` (the SDK bounds reports by both).
    fn check_size_limits(&self) -> Result<(), ConfigError> {
        use locus_sdk::wire::limits::{max_report_bytes, MAX_PUBLISH_OVERHEAD_BYTES};
        let (packet, report, fixes) = (
            self.mqtt.max_payload_bytes,
            self.pipeline.max_report_bytes,
            self.pipeline.max_fixes_per_report,
        );
        if report.saturating_add(MAX_PUBLISH_OVERHEAD_BYTES) > packet {
            return Err(ConfigError::Inconsistent(format!(
                "pipeline.max_report_bytes ({report}) does not fit under mqtt.max_payload_bytes \
                 ({packet}) with {MAX_PUBLISH_OVERHEAD_BYTES} bytes for the topic and packet \
                 fields: lower pipeline.max_report_bytes to at most {} or raise \
                 mqtt.max_payload_bytes",
                packet.saturating_sub(MAX_PUBLISH_OVERHEAD_BYTES)
            )));
        }
        if max_report_bytes(fixes) > report {
            let fitting =
                report.saturating_sub(max_report_bytes(0)) / locus_sdk::wire::limits::MAX_FIX_BYTES;
            return Err(ConfigError::Inconsistent(format!(
                "pipeline.max_fixes_per_report ({fixes}) fixes can take up to {} bytes, more than \
                 pipeline.max_report_bytes ({report}): lower pipeline.max_fixes_per_report to at \
                 most {fitting} or raise pipeline.max_report_bytes",
                max_report_bytes(fixes)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn defaults_are_loopback_and_safe() {
        let c = Config::default();
        assert!(c.mqtt.listen.ip().is_loopback());
        assert!(c.http.listen.ip().is_loopback());
        assert_eq!(c.mqtt.listen.port(), 1883);
        assert_eq!(c.http.listen.port(), 8080);
        assert!(!c.allow_anonymous);
        assert!(c.influx.is_none());
        c.check().unwrap();
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../locusd.example.toml");
        Config::from_toml(text).unwrap();
    }

    #[test]
    fn size_limits_that_would_strand_a_device_are_refused_naming_the_keys() {
        let err =
            Config::from_toml("[pipeline]\nmax_report_bytes = 65536\n").unwrap_err().to_string();
        assert!(
            err.contains("pipeline.max_report_bytes") && err.contains("mqtt.max_payload_bytes"),
            "{err}"
        );
        let err =
            Config::from_toml("[pipeline]\nmax_fixes_per_report = 1000\n").unwrap_err().to_string();
        assert!(err.contains("pipeline.max_fixes_per_report"), "{err}");
        let raised = "[mqtt]\nmax_payload_bytes = 262144\n[pipeline]\nmax_fixes_per_report = 1000\nmax_report_bytes = 200000\n";
        Config::from_toml(raised).unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[pipeline]\nmax_batch = 3\n").unwrap_err().to_string();
        assert!(err.contains("max_batch"), "{err}");
        let err = Config::from_toml("colour = 1\n").unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn inconsistent_values_name_the_key() {
        let err = Config::from_toml("[pipeline]\nmax_batch_reports = 0\n").unwrap_err();
        assert!(err.to_string().contains("pipeline.max_batch_reports"), "{err}");
    }
}
