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
    /// Which broker devices connect to: the embedded one (`[mqtt]`) or a RabbitMQ cluster.
    pub broker: crate::cluster::BrokerConfig,
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
    /// Orders.
    pub orders: crate::orders::OrdersConfig,
    /// InfluxDB shipping; absent = no time series is queued.
    pub influx: Option<crate::influx::InfluxConfig>,
    /// The WebAssembly plugin host.
    pub plugins: crate::plugins::PluginHostConfig,
    /// Notifications of order events by webhook and email; no rules = nobody is notified.
    pub notify: crate::notify::NotifyConfig,
    /// Edge components allowed to post fixes (`[edges.{edge}]`); none = no edge may connect.
    pub edges: crate::edges::EdgesConfig,
    /// The operator console and the customer tracking page.
    pub console: crate::api::ConsoleConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./locus-data"),
            allow_anonymous: false,
            broker: crate::cluster::BrokerConfig::default(),
            mqtt: MqttConfig::default(),
            http: HttpConfig::default(),
            tls: None,
            pipeline: PipelineConfig::default(),
            store: StoreConfig::default(),
            track: TrackConfig::default(),
            dead_letters: DeadLetterConfig::default(),
            orders: crate::orders::OrdersConfig::default(),
            influx: None,
            plugins: crate::plugins::PluginHostConfig::default(),
            notify: crate::notify::NotifyConfig::default(),
            edges: crate::edges::EdgesConfig::default(),
            console: crate::api::ConsoleConfig::default(),
        }
    }
}

pub use crate::api::HttpConfig;
pub use crate::listener;
pub use crate::mqtt::MqttConfig;
pub use crate::pipeline::PipelineConfig;
pub use crate::store::{DeadLetterConfig, StoreConfig, TrackConfig};
pub use crate::tls::TlsConfig;

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
            ("mqtt.ingest_buffer_mib", self.mqtt.ingest_buffer_mib),
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
        self.notify.check().map_err(|e| ConfigError::Inconsistent(e.to_string()))?;
        crate::edges::check(&self.edges).map_err(ConfigError::Inconsistent)?;
        self.broker.check(self.influx.is_some()).map_err(ConfigError::Inconsistent)?;
        self.console.check().map_err(ConfigError::Inconsistent)?;
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
    fn a_bad_console_setting_names_its_key_and_the_fix() {
        let refused = [
            ("[console]\ntile_url = \"tiles.example.org\"", "console.tile_url"),
            ("[console]\ntile_url = \"https://t.example.org/{z}.png\"", "{y}"),
            ("[console]\nlive_interval_ms = 0", "console.live_interval_ms"),
            ("[console]\nmoving_min_speed_mps = -1.0", "console.moving_min_speed_mps"),
            ("[console.initial_view]\nlat = 91.0\nlon = 0.0\nzoom = 3", "console.initial_view"),
        ];
        for (toml, named) in refused {
            let error = Config::from_toml(toml).unwrap_err().to_string();
            assert!(error.contains(named), "{toml}: {error}");
        }
        let typo = Config::from_toml("[console]\ntile_ur = \"\"").unwrap_err().to_string();
        assert!(typo.contains("tile_ur"), "{typo}");
        Config::from_toml("[console]\ntile_url = \"\"").unwrap();
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
    fn a_rabbitmq_broker_needs_its_urls_and_influxdb_and_says_so() {
        let err = Config::from_toml("[broker]\nmode = \"rabbitmq\"\n").unwrap_err().to_string();
        assert!(err.contains("[broker.rabbitmq]"), "{err}");
        let rabbit = "[broker]\nmode = \"rabbitmq\"\n[broker.rabbitmq]\n";
        let urls = "amqp_urls = [\"amqp://w:p@127.0.0.1:5672/%2f\"]\n";
        let err = Config::from_toml(&format!("{rabbit}{urls}")).unwrap_err().to_string();
        assert!(err.contains("needs [influx]"), "{err}");
        let influx = "[influx]\nurl = \"http://127.0.0.1:8086\"\n";
        let config = Config::from_toml(&format!("{rabbit}{urls}{influx}")).unwrap();
        let rabbit_config = config.broker.rabbitmq.as_ref().unwrap();
        assert_eq!((rabbit_config.partitions, rabbit_config.workers), (8, 1));
        assert!(!format!("{config:?}").contains("w:p@"), "the password is not logged");
        let bad = [
            ("amqp_urls = []\n", "amqp_urls is empty"),
            ("amqp_urls = [\"http//x\"]\n", "is not an AMQP URL"),
            (&format!("{urls}workers = 2\nworker_index = 2\n"), "worker_index (2)"),
            (&format!("{urls}log_max_age = \"a week\"\n"), "log_max_age"),
        ];
        for (keys, message) in bad {
            let err =
                Config::from_toml(&format!("{rabbit}{keys}{influx}")).unwrap_err().to_string();
            assert!(err.contains(message), "{keys}: {err}");
        }
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
        let err = Config::from_toml("[mqtt]\ningest_buffer_mib = 0\n").unwrap_err();
        assert!(err.to_string().contains("mqtt.ingest_buffer_mib must be at least 1"), "{err}");
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
    fn the_notify_section_is_checked_naming_the_key() {
        let webhook = "[[notify.rules]]\non = [\"ready\"]\nwebhook = \"https://x.example.com/h\"\n";
        let err = Config::from_toml(webhook).unwrap_err().to_string();
        assert!(err.contains("notify.webhook_secret") && err.contains("openssl rand"), "{err}");
        let secret = "[notify]\nwebhook_secret = \"0123456789abcdef0123456789abcdef\"\n";
        let config = Config::from_toml(&format!("{secret}{webhook}")).unwrap();
        assert_eq!(config.notify.rules.len(), 1);
        let err = Config::from_toml("[notify]\nmax_attempts = 0\n").unwrap_err().to_string();
        assert!(err.contains("notify.max_attempts"), "{err}");
        let err = Config::from_toml("[notify]\nretries = 3\n").unwrap_err().to_string();
        assert!(err.contains("retries"), "{err}");
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
