//! Client configuration: one serde struct per part, every field documented, defaults tested.
//!
//! [`CourierConfig`] is what the app fills in (usually with [`CourierConfig::new`] and the
//! defaults); [`BatchConfig`], [`OutboxConfig`] and [`BackoffConfig`] tune the sender, the
//! on-device outbox and reconnects. Durations are plain milliseconds so the structs bind to
//! Kotlin and Swift and read well in TOML or JSON.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Everything a [`crate::client::Courier`] needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CourierConfig {
    /// The broker, `HOST:PORT` (for example `127.0.0.1:1883`, `[::1]:1883`,
    /// `mqtt.example.com:8883`).
    pub broker: String,
    /// The courier id: MQTT client id, username and the topic's courier.
    pub courier: String,
    /// The courier's token (MQTT password), from `locusd token issue`. `None` connects without
    /// credentials, which only a server started with `--allow-anonymous` accepts.
    #[serde(default)]
    pub token: Option<String>,
    /// Folder of this courier's outbox. One courier per folder; it is locked while open.
    pub data_dir: PathBuf,
    /// Connect with TLS (needs the `tls` feature).
    #[serde(default)]
    pub tls: bool,
    /// PEM of the certificate authority to trust with TLS; `None` trusts the system's roots.
    #[serde(default)]
    pub tls_ca_pem: Option<String>,
    /// MQTT keep-alive, seconds. Lower finds dead links sooner and costs more radio wake-ups.
    #[serde(default = "defaults::keep_alive_s")]
    pub keep_alive_s: u16,
    /// How long one connection attempt (TCP, TLS, CONNECT → CONNACK) may take, and how long
    /// [`crate::client::Courier::connect`] waits for a conclusive first answer.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a fresh outbox (one that has never heard from the server) waits after subscribing
    /// for the retained ack that tells it where the server's sequence numbers are; without one
    /// by then, the server has none for this courier and numbering starts at 1.
    #[serde(default = "defaults::mark_timeout_ms")]
    pub mark_timeout_ms: u64,
    /// With reports in flight and no ack for this long, they are published again (the server
    /// drops duplicates), in case the server lost them without dropping the connection.
    #[serde(default = "defaults::ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Most reports and order events published and not yet acknowledged at a time.
    #[serde(default = "defaults::max_inflight_reports")]
    pub max_inflight_reports: u16,
    /// How fixes are grouped into reports.
    #[serde(default)]
    pub batch: BatchConfig,
    /// The on-device outbox.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Waiting between reconnect attempts.
    #[serde(default)]
    pub backoff: BackoffConfig,
}

/// How queued fixes become reports. A report is formed when `max_fixes` are queued or the oldest
/// queued fix is `max_age_ms` old, whichever comes first — but only while connected: offline,
/// fixes stay queued and go out in full batches after the reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most fixes in one report.
    #[serde(default = "defaults::batch_max_fixes")]
    pub max_fixes: u32,
    /// Longest a fix waits for company before it is sent, milliseconds. `0` sends every fix at
    /// once.
    #[serde(default = "defaults::batch_max_age_ms")]
    pub max_age_ms: u64,
    /// Most encoded bytes in one report. The server dead-letters larger reports (`[pipeline]
    /// max_report_bytes`, default the same as this), so keep this at or below the server's value:
    /// a report is sealed when the next fix would not fit, whatever `max_fixes` says.
    #[serde(default = "defaults::batch_max_report_bytes")]
    pub max_report_bytes: u32,
}

/// What happens when the outbox is full. Either way, order events are never dropped to make
/// room: they leave the outbox only when the server acknowledges them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Make room by dropping the oldest unacknowledged fixes (a whole report if the oldest fixes
    /// are already in one). Fresh positions matter more than old ones for live tracking. An
    /// order event makes room the same way; a fix or event that finds no fix left to drop (the
    /// outbox holds only events) is refused.
    DropOldest,
    /// Refuse the new fix or order event: `report` or `send_event` returns
    /// [`crate::client::ClientError::OutboxFull`].
    RefuseNew,
}

/// The on-device outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Most fixes held (queued and sent-but-unacknowledged). Order events are not counted here.
    #[serde(default = "defaults::outbox_max_fixes")]
    pub max_fixes: u64,
    /// Most bytes of fixes and order events held (their encoded size).
    #[serde(default = "defaults::outbox_max_bytes")]
    pub max_bytes: u64,
    /// What to do at the bound.
    #[serde(default = "defaults::when_full")]
    pub when_full: WhenFull,
    /// `fsync` every accepted fix or order event before `report` or `send_event` returns, so it
    /// survives power loss and OS crashes. Without it, an accepted one survives an app kill (it
    /// is in the OS's page cache) but not a power cut.
    #[serde(default = "defaults::fsync")]
    pub fsync: bool,
}

/// Capped exponential back-off between connection attempts, with jitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// Wait after the first failure, milliseconds.
    #[serde(default = "defaults::backoff_initial_ms")]
    pub initial_ms: u64,
    /// Longest wait, milliseconds.
    #[serde(default = "defaults::backoff_max_ms")]
    pub max_ms: u64,
}

mod defaults {
    use super::WhenFull;

    pub fn keep_alive_s() -> u16 {
        30
    }
    pub fn connect_timeout_ms() -> u64 {
        10_000
    }
    pub fn mark_timeout_ms() -> u64 {
        2_000
    }
    pub fn ack_timeout_ms() -> u64 {
        30_000
    }
    pub fn max_inflight_reports() -> u16 {
        32
    }
    pub fn batch_max_fixes() -> u32 {
        50
    }
    /// The server's default `[pipeline] max_report_bytes`.
    pub fn batch_max_report_bytes() -> u32 {
        crate::wire::limits::DEFAULT_MAX_REPORT_BYTES as u32
    }
    pub fn batch_max_age_ms() -> u64 {
        1_000
    }
    pub fn outbox_max_fixes() -> u64 {
        100_000
    }
    pub fn outbox_max_bytes() -> u64 {
        8 * 1024 * 1024
    }
    pub fn when_full() -> WhenFull {
        WhenFull::DropOldest
    }
    pub fn fsync() -> bool {
        true
    }
    pub fn backoff_initial_ms() -> u64 {
        250
    }
    pub fn backoff_max_ms() -> u64 {
        30_000
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_fixes: defaults::batch_max_fixes(),
            max_age_ms: defaults::batch_max_age_ms(),
            max_report_bytes: defaults::batch_max_report_bytes(),
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_fixes: defaults::outbox_max_fixes(),
            max_bytes: defaults::outbox_max_bytes(),
            when_full: defaults::when_full(),
            fsync: defaults::fsync(),
        }
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial_ms: defaults::backoff_initial_ms(),
            max_ms: defaults::backoff_max_ms(),
        }
    }
}

impl CourierConfig {
    /// A config with every tunable at its default.
    pub fn new(
        broker: impl Into<String>,
        courier: impl Into<String>,
        token: Option<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        CourierConfig {
            broker: broker.into(),
            courier: courier.into(),
            token,
            data_dir: data_dir.into(),
            tls: false,
            tls_ca_pem: None,
            keep_alive_s: defaults::keep_alive_s(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            mark_timeout_ms: defaults::mark_timeout_ms(),
            ack_timeout_ms: defaults::ack_timeout_ms(),
            max_inflight_reports: defaults::max_inflight_reports(),
            batch: BatchConfig::default(),
            outbox: OutboxConfig::default(),
            backoff: BackoffConfig::default(),
        }
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }

    /// The broker's host and port.
    pub(crate) fn host_port(&self) -> Option<(String, u16)> {
        let (host, port) = self.broker.rsplit_once(':')?;
        let port = port.parse().ok()?;
        // `[::1]:1883` → `::1`: the socket address parser wants the bare IPv6 address.
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        (!host.is_empty()).then(|| (host.to_owned(), port))
    }
}

impl BackoffConfig {
    /// The wait before attempt `attempt + 1` (0-based count of failures so far), without jitter.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let initial = self.initial_ms.max(1);
        let factor = 1u64.checked_shl(failures.min(32)).unwrap_or(u64::MAX);
        Duration::from_millis(initial.saturating_mul(factor).min(self.max_ms.max(initial)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_serde_defaults() {
        let json = r#"{"broker":"127.0.0.1:1883","courier":"c-1","data_dir":"/tmp/x"}"#;
        let parsed: CourierConfig = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, CourierConfig::new("127.0.0.1:1883", "c-1", None, "/tmp/x"));
        assert_eq!(
            parsed.batch,
            BatchConfig { max_fixes: 50, max_age_ms: 1_000, max_report_bytes: 65_321 }
        );
        assert_eq!(parsed.outbox.when_full, WhenFull::DropOldest);
        assert!(parsed.outbox.fsync);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let json = r#"{"broker":"h:1","courier":"c","data_dir":"d","batch":{"max_fixez":1}}"#;
        let err = serde_json::from_str::<CourierConfig>(json).unwrap_err().to_string();
        assert!(err.contains("max_fixez"), "{err}");
        let json =
            r#"{"broker":"h:1","courier":"c","data_dir":"d","outbox":{"when_full":"refuse-new"}}"#;
        let parsed: CourierConfig = serde_json::from_str(json).unwrap();
        assert_eq!(parsed.outbox.when_full, WhenFull::RefuseNew);
    }

    #[test]
    fn parses_broker_addresses() {
        let cfg = |b: &str| CourierConfig::new(b, "c", None, "d").host_port();
        assert_eq!(cfg("127.0.0.1:1883"), Some(("127.0.0.1".into(), 1883)));
        assert_eq!(cfg("[::1]:1883"), Some(("::1".into(), 1883)));
        assert_eq!(cfg("mqtt.example.com:8883"), Some(("mqtt.example.com".into(), 8883)));
        assert_eq!(cfg("no-port"), None);
        assert_eq!(cfg(":1883"), None);
        assert_eq!(cfg("h:99999"), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = BackoffConfig { initial_ms: 100, max_ms: 1_000 };
        let ms: Vec<u128> = (0..6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(b.delay(200).as_millis(), 1_000);
    }
}
