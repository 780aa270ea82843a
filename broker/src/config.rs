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
    /// Certificate and key of the TLS listeners (`[mqtt] tls_listen*`, `[http] tls_listen`);
    /// absent = no TLS. One section for all of them: they are one server with one name.
    pub tls: Option<TlsConfig>,
    /// Validation and batching of incoming reports.
    pub pipeline: PipelineConfig,
    /// The commit log and its views.
    pub store: StoreConfig,
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
            tls: None,
            pipeline: PipelineConfig::default(),
            store: StoreConfig::default(),
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
    /// MQTT 3.1.1 plain-text listener; `"off"` (`None`) = none.
    #[serde(with = "listener")]
    pub listen: Option<SocketAddr>,
    /// MQTT 5 plain-text listener (rumqttd serves each protocol version on its own port);
    /// `"off"` = none.
    #[serde(with = "listener")]
    pub listen_v5: Option<SocketAddr>,
    /// MQTT 3.1.1 over TLS (conventionally port 8883), with `[tls]`'s certificate; default off.
    #[serde(with = "listener")]
    pub tls_listen: Option<SocketAddr>,
    /// MQTT 5 over TLS, with `[tls]`'s certificate; default off.
    #[serde(with = "listener")]
    pub tls_listen_v5: Option<SocketAddr>,
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
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            listen_v5: Some(SocketAddr::from(([127, 0, 0, 1], 1884))),
            tls_listen: None,
            tls_listen_v5: None,
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
    /// Plain-text HTTP address of the API; `"off"` = none.
    #[serde(with = "listener")]
    pub listen: Option<SocketAddr>,
    /// HTTPS address of the API (conventionally port 8443 or 443), with `[tls]`'s certificate;
    /// default off.
    #[serde(with = "listener")]
    pub tls_listen: Option<SocketAddr>,
    /// Largest page `GET /v1/couriers/{id}/track` and `GET /v1/dead-letters` return.
    pub max_page: usize,
    /// Milliseconds a client has to send its request head; then its connection is closed
    /// (stops slowloris).
    pub header_read_timeout_ms: u64,
    /// Milliseconds to read a request's body and answer it; then the answer is 408.
    pub request_timeout_ms: u64,
    /// Largest request body read by the API, bytes (plugin uploads have their own limit).
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            tls_listen: None,
            max_page: 10_000,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// `[tls]`: the server's certificate for every TLS listener. Both keys are required when the
/// section is present; the files are read (and checked) at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, the server's certificate first (no default).
    pub cert_path: PathBuf,
    /// PEM file with the certificate's private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC)
    /// (no default).
    pub key_path: PathBuf,
}

/// Listener addresses in TOML and on the command line: `"HOST:PORT"`, or `"off"` for none
/// (TOML has no null, and an absent key means the default).
pub mod listener {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    /// The word that turns a listener off.
    pub const OFF: &str = "off";

    /// Parses `"HOST:PORT"` (an IP address and a port) or `"off"`.
    pub fn parse(text: &str) -> Result<Option<SocketAddr>, String> {
        if text.trim().eq_ignore_ascii_case(OFF) {
            return Ok(None);
        }
        text.trim().parse().map(Some).map_err(|_| {
            format!("invalid listen address `{text}`: expected IP:PORT (e.g. 127.0.0.1:1883) or \"off\"")
        })
    }

    pub(crate) fn serialize<S: Serializer>(
        addr: &Option<SocketAddr>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => serializer.collect_str(addr),
            None => serializer.serialize_str(OFF),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

pub use crate::pipeline::PipelineConfig;
pub use crate::store::StoreConfig;

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
            ("http.max_body_bytes", self.http.max_body_bytes),
            ("http.header_read_timeout_ms", self.http.header_read_timeout_ms as usize),
            ("http.request_timeout_ms", self.http.request_timeout_ms as usize),
            ("store.checkpoint_interval_ms", self.store.checkpoint_interval_ms as usize),
            ("store.cache_mib", self.store.cache_mib as usize),
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
        self.check_listeners()?;
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

    /// Every listener by its key, `None` when off.
    fn listeners(&self) -> [(&'static str, Option<SocketAddr>); 6] {
        [
            ("mqtt.listen", self.mqtt.listen),
            ("mqtt.listen_v5", self.mqtt.listen_v5),
            ("mqtt.tls_listen", self.mqtt.tls_listen),
            ("mqtt.tls_listen_v5", self.mqtt.tls_listen_v5),
            ("http.listen", self.http.listen),
            ("http.tls_listen", self.http.tls_listen),
        ]
    }

    /// Listeners: no two on one address, at least one for devices and one for the API, and
    /// TLS listeners only with a usable `[tls]` certificate and key.
    fn check_listeners(&self) -> Result<(), ConfigError> {
        let on: Vec<(&str, SocketAddr)> =
            self.listeners().into_iter().filter_map(|(key, addr)| Some((key, addr?))).collect();
        for (i, (key, addr)) in on.iter().enumerate() {
            // Port 0 = any free port, chosen by the system for each listener.
            let clash = on[..i].iter().find(|(_, a)| a == addr && addr.port() != 0);
            if let Some((other, _)) = clash {
                return Err(ConfigError::Inconsistent(format!(
                    "{other} and {key} are both {addr}; give each listener its own port"
                )));
            }
        }
        // With no MQTT listener devices cannot report; with no HTTP listener nothing can read
        // locations, health or metrics. Either is a mistake, never a useful server.
        if !on.iter().any(|(key, _)| key.starts_with("mqtt.")) {
            return Err(ConfigError::Inconsistent(
                "every MQTT listener is off (mqtt.listen, mqtt.listen_v5, mqtt.tls_listen, \
                 mqtt.tls_listen_v5): devices could not connect; set at least one to an address"
                    .into(),
            ));
        }
        if !on.iter().any(|(key, _)| key.starts_with("http.")) {
            return Err(ConfigError::Inconsistent(
                "every HTTP listener is off (http.listen, http.tls_listen): the API, health and \
                 metrics would be unreachable; set at least one to an address"
                    .into(),
            ));
        }
        let tls_keys: Vec<&str> =
            on.iter().map(|(key, _)| *key).filter(|key| key.contains("tls_listen")).collect();
        match &self.tls {
            None if !tls_keys.is_empty() => Err(ConfigError::Inconsistent(format!(
                "{} set but there is no [tls] section: TLS listeners need \
                 [tls] cert_path and key_path (PEM files)",
                tls_keys.join(" and ")
            ))),
            None => Ok(()),
            // Read and parse the files now, so a bad certificate stops the start with a
            // message naming the key and the file instead of failing each TLS connection.
            Some(tls) => crate::tls::server_config(tls)
                .map(drop)
                .map_err(|e| ConfigError::Inconsistent(e.to_string())),
        }
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
        let (mqtt, http) = (c.mqtt.listen.unwrap(), c.http.listen.unwrap());
        assert!(mqtt.ip().is_loopback());
        assert!(http.ip().is_loopback());
        assert_eq!(mqtt.port(), 1883);
        assert_eq!(http.port(), 8080);
        assert!(c.mqtt.tls_listen.is_none() && c.mqtt.tls_listen_v5.is_none());
        assert!(c.http.tls_listen.is_none() && c.tls.is_none());
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

    #[test]
    fn listeners_can_be_turned_off_but_not_all() {
        let c = Config::from_toml("[mqtt]\nlisten_v5 = \"off\"\n").unwrap();
        assert_eq!(c.mqtt.listen_v5, None);
        assert!(c.mqtt.listen.is_some());
        let err = Config::from_toml("[mqtt]\nlisten = \"off\"\nlisten_v5 = \"off\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("every MQTT listener is off"), "{err}");
        let err = Config::from_toml("[http]\nlisten = \"off\"\n").unwrap_err().to_string();
        assert!(err.contains("every HTTP listener is off"), "{err}");
        let err = Config::from_toml("[http]\nlisten = \"nowhere\"\n").unwrap_err().to_string();
        assert!(err.contains("nowhere") && err.contains("\"off\""), "{err}");
    }

    #[test]
    fn two_listeners_on_one_address_are_named() {
        let err = Config::from_toml("[http]\nlisten = \"127.0.0.1:1883\"\n").unwrap_err();
        let err = err.to_string();
        assert!(err.contains("mqtt.listen and http.listen"), "{err}");
    }

    #[test]
    fn a_tls_listener_needs_the_tls_section() {
        let err = Config::from_toml("[mqtt]\ntls_listen = \"127.0.0.1:8883\"\n").unwrap_err();
        let err = err.to_string();
        assert!(err.contains("mqtt.tls_listen") && err.contains("[tls]"), "{err}");
        let err = Config::from_toml("[tls]\ncert_path = \"c.pem\"\n").unwrap_err().to_string();
        assert!(err.contains("key_path"), "{err}");
    }

    #[test]
    fn unreadable_or_invalid_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let config = |cert: &Path, key: &Path| {
            format!(
                "[http]\ntls_listen = \"127.0.0.1:8443\"\n[tls]\ncert_path = {:?}\nkey_path = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            )
        };
        let err = Config::from_toml(&config(&missing, &garbage)).unwrap_err().to_string();
        assert!(err.contains("tls.cert_path") && err.contains("missing.pem"), "{err}");
        let err = Config::from_toml(&config(&garbage, &garbage)).unwrap_err().to_string();
        assert!(err.contains("tls.cert_path") && err.contains("garbage.pem"), "{err}");
    }
}
