//! Dead letters: what the pipeline, the plugin chain, `locusd replay` and the InfluxDB shipper
//! could not take, kept in the `dead_letters` tree for inspection (`GET /v1/dead-letters`).
//!
//! Enters: a [`DeadLetterReason`] (the stable code: the `reason` label of
//! `locus_dead_letters_total` and the API's `reason`), a [`DeadLetterSource`] (where the bytes
//! came from) and the bytes exactly as they came in, through [`DeadLetter::new`], the one
//! constructor. Leaves: the sled value ([`DeadLetter::encode`]) and back
//! ([`DeadLetter::decode`], which also reads the letters of earlier releases, whose reason and
//! topic were plain strings).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Why something became a dead letter. [`as_str`](Self::as_str) is the stable code: the metric
/// label and the API's `reason`; never change one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    // A report refused as a whole (`pipeline::validate::ReportProblem`; the wire errors are
    // `locus_sdk::wire::WireError`'s codes).
    /// `bad_topic`: not `couriers/{valid id}/locations`.
    BadTopic,
    /// `oversized`: larger than `pipeline.max_report_bytes`.
    Oversized,
    /// `empty_payload`: no bytes.
    EmptyPayload,
    /// `unknown_version`: a wire version this build does not read.
    UnknownVersion,
    /// `malformed`: not decodable (a report that is not postcard, or a replayed line that is not
    /// JSON or CSV of the expected fields).
    Malformed,
    /// `trailing_bytes`: bytes after the message.
    TrailingBytes,
    /// `unexpected_kind`: a message that is not a report.
    UnexpectedKind,
    /// `zero_seq`: seq 0 is reserved.
    ZeroSeq,
    /// `no_fixes`: a report without fixes.
    NoFixes,
    /// `too_many_fixes`: more than `pipeline.max_fixes_per_report`.
    TooManyFixes,

    // One fix refused (`pipeline::validate::FixProblem`).
    /// `coordinates_out_of_range`: off the globe.
    CoordinatesOutOfRange,
    /// `timestamp_in_future`: device time too far ahead of the server's.
    TimestampInFuture,
    /// `timestamp_too_old`: device time too far behind the server's.
    TimestampTooOld,
    /// `bad_order_id`: an order id that is not a valid id.
    BadOrderId,
    /// `detail_out_of_range`: heading, battery, accuracy or speed out of range.
    DetailOutOfRange,
    /// `same_device_time`: the courier already has a fix at that device millisecond.
    SameDeviceTime,

    // A courier's order event (`couriers/{id}/events`).
    /// `bad_event_id`: an event id that is not a valid id.
    BadEventId,
    /// `bad_event_details`: an event's details that are not JSON or too long.
    BadEventDetails,
    /// `order_event_refused`: the order's lifecycle does not allow the event now (not the
    /// courier's order, not in a status it follows from, or no such order).
    OrderEventRefused,

    // An edge's batch (`edge/{edge}/batches`).
    /// `bad_edge_batch`: a batch whose key, part, courier or token is not valid.
    BadEdgeBatch,
    /// `edge_not_allowed`: the edge is not declared, or may not report for the courier.
    EdgeNotAllowed,
    /// `client_token_refused`: the HTTP client's token is missing, invalid, or not for the
    /// courier.
    ClientTokenRefused,
    /// `edge_key_reused`: a key already taken for other data (another digest).
    EdgeKeyReused,

    // `locusd replay`.
    /// `bad_courier`: a replayed line whose courier id is not a valid id.
    BadCourier,

    // Plugins.
    /// `plugin_rejected`: a plugin rejected the fix; holds the plugin's own reason text. The
    /// code stays `plugin_rejected` whatever the text (a metric label must not take free text);
    /// the API shows the text as `plugin_reason`, and the letter's detail quotes it.
    PluginRejected(String),
    /// `plugin_failed`: the plugin failed its batch (trap, time or memory limit, bad output)
    /// under failure policy `dead-letter`.
    PluginFailed,

    // InfluxDB.
    /// `influx_rejected`: InfluxDB refused the point as invalid.
    InfluxRejected,

    /// A code this build does not know (read from a letter another release wrote), kept as it
    /// was. Never made by this build.
    Other(String),
}

impl DeadLetterReason {
    /// The stable code, exactly as earlier releases wrote it.
    pub fn as_str(&self) -> &str {
        use DeadLetterReason::*;
        match self {
            BadTopic => "bad_topic",
            Oversized => "oversized",
            EmptyPayload => "empty_payload",
            UnknownVersion => "unknown_version",
            Malformed => "malformed",
            TrailingBytes => "trailing_bytes",
            UnexpectedKind => "unexpected_kind",
            ZeroSeq => "zero_seq",
            NoFixes => "no_fixes",
            TooManyFixes => "too_many_fixes",
            CoordinatesOutOfRange => "coordinates_out_of_range",
            TimestampInFuture => "timestamp_in_future",
            TimestampTooOld => "timestamp_too_old",
            BadOrderId => "bad_order_id",
            DetailOutOfRange => "detail_out_of_range",
            SameDeviceTime => "same_device_time",
            BadEventId => "bad_event_id",
            BadEventDetails => "bad_event_details",
            OrderEventRefused => "order_event_refused",
            BadEdgeBatch => "bad_edge_batch",
            EdgeNotAllowed => "edge_not_allowed",
            ClientTokenRefused => "client_token_refused",
            EdgeKeyReused => "edge_key_reused",
            BadCourier => "bad_courier",
            PluginRejected(_) => "plugin_rejected",
            PluginFailed => "plugin_failed",
            InfluxRejected => "influx_rejected",
            Other(code) => code,
        }
    }

    /// The reason of a code: the inverse of [`as_str`](Self::as_str). `plugin_rejected` comes
    /// back without the plugin's text; a code this build does not know is kept as
    /// [`Other`](Self::Other).
    pub fn from_code(code: &str) -> DeadLetterReason {
        use DeadLetterReason::*;
        match code {
            "bad_topic" => BadTopic,
            "oversized" => Oversized,
            "empty_payload" => EmptyPayload,
            "unknown_version" => UnknownVersion,
            "malformed" => Malformed,
            "trailing_bytes" => TrailingBytes,
            "unexpected_kind" => UnexpectedKind,
            "zero_seq" => ZeroSeq,
            "no_fixes" => NoFixes,
            "too_many_fixes" => TooManyFixes,
            "coordinates_out_of_range" => CoordinatesOutOfRange,
            "timestamp_in_future" => TimestampInFuture,
            "timestamp_too_old" => TimestampTooOld,
            "bad_order_id" => BadOrderId,
            "detail_out_of_range" => DetailOutOfRange,
            "same_device_time" => SameDeviceTime,
            "bad_event_id" => BadEventId,
            "bad_event_details" => BadEventDetails,
            "order_event_refused" => OrderEventRefused,
            "bad_edge_batch" => BadEdgeBatch,
            "edge_not_allowed" => EdgeNotAllowed,
            "client_token_refused" => ClientTokenRefused,
            "edge_key_reused" => EdgeKeyReused,
            "bad_courier" => BadCourier,
            "plugin_rejected" => PluginRejected(String::new()),
            "plugin_failed" => PluginFailed,
            "influx_rejected" => InfluxRejected,
            other => Other(other.to_owned()),
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&locus_sdk::wire::WireError> for DeadLetterReason {
    fn from(error: &locus_sdk::wire::WireError) -> DeadLetterReason {
        use locus_sdk::wire::WireError;
        match error {
            WireError::Empty => DeadLetterReason::EmptyPayload,
            WireError::UnknownVersion(_) => DeadLetterReason::UnknownVersion,
            WireError::Malformed(_) => DeadLetterReason::Malformed,
            WireError::TrailingBytes(_) => DeadLetterReason::TrailingBytes,
            WireError::UnexpectedKind(_) => DeadLetterReason::UnexpectedKind,
        }
    }
}

/// Stored as its code and, for `plugin_rejected`, the plugin's text: by name rather than by
/// variant index, so that a letter with a reason this build does not know (written by a newer
/// release) still reads, as [`DeadLetterReason::Other`].
impl Serialize for DeadLetterReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = match self {
            DeadLetterReason::PluginRejected(text) => Some(text.as_str()),
            _ => None,
        };
        (self.as_str(), text).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for DeadLetterReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (code, text) = <(String, Option<String>)>::deserialize(deserializer)?;
        Ok(match DeadLetterReason::from_code(&code) {
            DeadLetterReason::PluginRejected(_) => {
                DeadLetterReason::PluginRejected(text.unwrap_or_default())
            }
            reason => reason,
        })
    }
}

/// Where a dead letter's bytes came from. Stored by variant index (postcard): add variants at
/// the end, never reorder them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadLetterSource {
    /// A publish on this MQTT topic (as received; not UTF-8 is replaced lossily).
    Mqtt {
        /// The topic.
        topic: String,
    },
    /// A line of a file `locusd replay` read.
    Replay {
        /// The file, as given on the command line.
        file: String,
        /// The line number, from 1 (0: not known, in a letter of an earlier release).
        line: u64,
    },
    /// A plugin that rejected the fix or failed its batch; `input` is where the fix came from
    /// (an MQTT topic or a replayed line), which the payload is.
    Plugin {
        /// The plugin's name.
        name: String,
        /// Its version (see `plugins::version_of`).
        version: String,
        /// Where the fix came from.
        input: Box<DeadLetterSource>,
    },
    /// The InfluxDB shipper: InfluxDB refused the point (the payload is its line protocol).
    Influx,
}

/// The topic of letters from the InfluxDB shipper, in [`DeadLetterSource::topic`].
const INFLUX_TOPIC: &str = "influx";
/// The prefix of the topic of letters from `locusd replay`, before the file.
const REPLAY_TOPIC_PREFIX: &str = "replay:";

impl DeadLetterSource {
    /// The source as one string, as dead letters have always named it (the API's `topic`): the
    /// MQTT topic, `replay:FILE`, or `influx`; a plugin's letter names where the fix came from.
    pub fn topic(&self) -> String {
        match self {
            DeadLetterSource::Mqtt { topic } => topic.clone(),
            DeadLetterSource::Replay { file, .. } => format!("{REPLAY_TOPIC_PREFIX}{file}"),
            DeadLetterSource::Plugin { input, .. } => input.topic(),
            DeadLetterSource::Influx => INFLUX_TOPIC.to_owned(),
        }
    }
}

impl fmt::Display for DeadLetterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterSource::Mqtt { topic } => write!(f, "MQTT topic {topic}"),
            DeadLetterSource::Replay { file, line } => write!(f, "{file} line {line}"),
            DeadLetterSource::Plugin { name, version, input } => {
                write!(f, "plugin {name} version {version} on {input}")
            }
            DeadLetterSource::Influx => f.write_str("InfluxDB"),
        }
    }
}

/// Something the server could not take, kept for inspection. Made by [`DeadLetter::new`] only
/// (`non_exhaustive`: other crates cannot build one field by field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Why; its code is the `reason` label of the dead-letter metric.
    pub reason: DeadLetterReason,
    /// Where the payload came from.
    pub source: DeadLetterSource,
    /// Human-readable detail.
    pub detail: String,
    /// The courier, when known.
    pub courier: Option<String>,
    /// Server time the payload was received, Unix milliseconds.
    pub received_ms: u64,
    /// The bytes exactly as they came in: the MQTT payload (also when only some of its fixes
    /// were refused; `detail` names them), the input line of a replay, the line protocol of a
    /// point InfluxDB refused. A plugin's letter holds the report or line the fix came from.
    pub payload: Vec<u8>,
}

/// The first two bytes of a letter stored in this shape: a 0 — never the first byte of an
/// earlier release's letter, which starts with the length of its (never empty) reason — and
/// the shape's version.
const STORED_TAG: [u8; 2] = [0, 1];

impl DeadLetter {
    /// A dead letter: `payload` must be the bytes exactly as they came in.
    pub fn new(
        reason: DeadLetterReason,
        source: DeadLetterSource,
        courier: Option<String>,
        detail: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        received_ms: u64,
    ) -> DeadLetter {
        DeadLetter {
            reason,
            source,
            detail: detail.into(),
            courier,
            received_ms,
            payload: payload.into(),
        }
    }

    /// The sled value: [`STORED_TAG`], then the letter in postcard.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data into a Vec: cannot fail.
        postcard::to_extend(self, STORED_TAG.to_vec()).expect("postcard encoding of a dead letter")
    }

    /// Reads a sled value: this shape, or the shape of earlier releases (converted, see
    /// [`LegacyDeadLetter`]).
    pub fn decode(bytes: &[u8]) -> Result<DeadLetter, postcard::Error> {
        match bytes {
            [0, 1, letter @ ..] => postcard::from_bytes(letter),
            // Tagged, but a shape this build does not know.
            [0, ..] => Err(postcard::Error::DeserializeBadEncoding),
            legacy => postcard::from_bytes::<LegacyDeadLetter>(legacy).map(DeadLetter::from),
        }
    }
}

/// A dead letter as releases before typed reasons and sources stored it (postcard, untagged).
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct LegacyDeadLetter {
    reason: String,
    detail: String,
    /// The MQTT topic, `replay:FILE` or `influx`.
    topic: String,
    courier: Option<String>,
    received_ms: u64,
    /// The bytes as received, except for plugins' letters: the postcard of the one fix as the
    /// plugin saw it.
    payload: Vec<u8>,
}

/// Reason string → reason (unknown codes kept as [`DeadLetterReason::Other`]; a plugin's
/// rejection gets its text back from the detail); topic → source: `replay:FILE` a replay (the
/// line from the detail's `line N: `), `influx` the shipper, anything else an MQTT topic; a
/// plugin's letter, whose detail begins `plugin NAME version VERSION`, that plugin on its
/// topic.
impl From<LegacyDeadLetter> for DeadLetter {
    fn from(old: LegacyDeadLetter) -> DeadLetter {
        let LegacyDeadLetter { reason, detail, topic, courier, received_ms, payload } = old;
        let reason = match DeadLetterReason::from_code(&reason) {
            DeadLetterReason::PluginRejected(_) => {
                let text = detail.split_once(" rejected the fix: ").map_or(&*detail, |(_, t)| t);
                DeadLetterReason::PluginRejected(text.to_owned())
            }
            reason => reason,
        };
        let mut source = if let Some(file) = topic.strip_prefix(REPLAY_TOPIC_PREFIX) {
            let line = detail
                .strip_prefix("line ")
                .and_then(|rest| rest.split_once(':'))
                .and_then(|(line, _)| line.parse().ok())
                .unwrap_or(0);
            DeadLetterSource::Replay { file: file.to_owned(), line }
        } else if topic == INFLUX_TOPIC {
            DeadLetterSource::Influx
        } else {
            DeadLetterSource::Mqtt { topic }
        };
        if matches!(reason, DeadLetterReason::PluginRejected(_) | DeadLetterReason::PluginFailed) {
            let plugin =
                detail.strip_prefix("plugin ").and_then(|rest| rest.split_once(" version "));
            if let Some((name, rest)) = plugin {
                let version = rest.split([' ', ':']).next().unwrap_or_default();
                source = DeadLetterSource::Plugin {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    input: Box::new(source),
                };
            }
        }
        DeadLetter::new(reason, source, courier, detail, payload, received_ms)
    }
}

/// The kinds of [`DeadLetterSource`], as the API names them (`source` in a letter's JSON and
/// in the `source=` filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// An MQTT publish.
    Mqtt,
    /// A line of `locusd replay`.
    Replay,
    /// A plugin's refusal.
    Plugin,
    /// InfluxDB refused the point.
    Influxdb,
}

impl DeadLetterSource {
    /// Its kind.
    pub fn kind(&self) -> SourceKind {
        match self {
            DeadLetterSource::Mqtt { .. } => SourceKind::Mqtt,
            DeadLetterSource::Replay { .. } => SourceKind::Replay,
            DeadLetterSource::Plugin { .. } => SourceKind::Plugin,
            DeadLetterSource::Influx => SourceKind::Influxdb,
        }
    }
}

/// Which dead letters an operation is about (`GET`, replay, purge and export of
/// `/v1/dead-letters`, whose query the API parses into one): every field that is set must
/// match; none set matches every letter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// The reason's code (`plugin_rejected`, `malformed`, ...).
    pub reason: Option<String>,
    /// The courier.
    pub courier: Option<String>,
    /// Where it came from.
    pub source: Option<SourceKind>,
    /// The plugin that refused it (a plugin's letters only).
    pub plugin: Option<String>,
    /// Received at or after, Unix ms.
    pub since: Option<u64>,
    /// Received at or before, Unix ms.
    pub until: Option<u64>,
}

impl DeadLetterFilter {
    /// Whether no field is set (it matches every letter).
    pub fn is_empty(&self) -> bool {
        *self == DeadLetterFilter::default()
    }

    /// Whether `letter` matches.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let plugin = match &letter.source {
            DeadLetterSource::Plugin { name, .. } => Some(name.as_str()),
            _ => None,
        };
        self.reason.as_deref().is_none_or(|r| r == letter.reason.as_str())
            && self.courier.as_deref().is_none_or(|c| letter.courier.as_deref() == Some(c))
            && self.source.is_none_or(|kind| kind == letter.source.kind())
            && self.plugin.as_deref().is_none_or(|p| plugin == Some(p))
            && self.since.is_none_or(|since| letter.received_ms >= since)
            && self.until.is_none_or(|until| letter.received_ms <= until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(reason: &str, detail: &str, topic: &str) -> Vec<u8> {
        let old = LegacyDeadLetter {
            reason: reason.into(),
            detail: detail.into(),
            topic: topic.into(),
            courier: Some("c1".into()),
            received_ms: 1_763_700_000_000,
            payload: vec![1, 2, 3],
        };
        postcard::to_allocvec(&old).unwrap()
    }

    #[test]
    fn every_code_reads_back_as_its_reason() {
        use DeadLetterReason::*;
        let all = [
            BadTopic,
            Oversized,
            EmptyPayload,
            UnknownVersion,
            Malformed,
            TrailingBytes,
            UnexpectedKind,
            ZeroSeq,
            NoFixes,
            TooManyFixes,
            CoordinatesOutOfRange,
            TimestampInFuture,
            TimestampTooOld,
            BadOrderId,
            DetailOutOfRange,
            SameDeviceTime,
            BadCourier,
            PluginRejected(String::new()),
            PluginFailed,
            InfluxRejected,
        ];
        let mut codes = std::collections::HashSet::new();
        for reason in all {
            assert!(codes.insert(reason.as_str().to_owned()), "{reason} twice");
            assert_eq!(DeadLetterReason::from_code(reason.as_str()), reason);
        }
        assert_eq!(DeadLetterReason::from_code("no_such_reason"), Other("no_such_reason".into()));
        // The SDK's wire codes are these reasons' codes.
        for error in [
            locus_sdk::wire::WireError::Empty,
            locus_sdk::wire::WireError::UnknownVersion(9),
            locus_sdk::wire::WireError::TrailingBytes(1),
        ] {
            assert_eq!(DeadLetterReason::from(&error).as_str(), error.code());
        }
    }

    #[test]
    fn letters_round_trip_with_their_reason_and_source() {
        let letters = [
            DeadLetter::new(
                DeadLetterReason::PluginRejected("too fast".into()),
                DeadLetterSource::Plugin {
                    name: "jitter".into(),
                    version: "0123456789abcdef".into(),
                    input: Box::new(DeadLetterSource::Replay { file: "a.jsonl".into(), line: 7 }),
                },
                Some("c1".into()),
                "plugin jitter version 0123456789abcdef rejected the fix: too fast",
                b"{\"courier\":\"c1\"}".to_vec(),
                5,
            ),
            DeadLetter::new(
                DeadLetterReason::Other("from_a_newer_release".into()),
                DeadLetterSource::Influx,
                None,
                "",
                vec![],
                0,
            ),
        ];
        for letter in letters {
            let bytes = letter.encode();
            assert_eq!(bytes[..2], STORED_TAG);
            assert_eq!(DeadLetter::decode(&bytes).unwrap(), letter);
        }
        let replayed = DeadLetterSource::Replay { file: "a.jsonl".into(), line: 7 };
        assert_eq!(replayed.topic(), "replay:a.jsonl");
        let plugin = DeadLetterSource::Plugin {
            name: "p".into(),
            version: "v".into(),
            input: Box::new(DeadLetterSource::Mqtt { topic: "couriers/c1/locations".into() }),
        };
        assert_eq!(plugin.topic(), "couriers/c1/locations");
        assert_eq!(DeadLetterSource::Influx.topic(), "influx");
        // A shape from a later release is an error, not a misread.
        assert!(DeadLetter::decode(&[0, 2, 0]).is_err());
    }

    #[test]
    fn filters_match_every_field_they_set() {
        let letter = DeadLetter::new(
            DeadLetterReason::PluginRejected("too fast".into()),
            DeadLetterSource::Plugin {
                name: "jitter".into(),
                version: "v1".into(),
                input: Box::new(DeadLetterSource::Mqtt { topic: "couriers/c1/locations".into() }),
            },
            Some("c1".into()),
            "",
            vec![],
            1_000,
        );
        let all = DeadLetterFilter::default();
        assert!(all.is_empty() && all.matches(&letter));
        let matching = DeadLetterFilter {
            reason: Some("plugin_rejected".into()),
            courier: Some("c1".into()),
            source: Some(SourceKind::Plugin),
            plugin: Some("jitter".into()),
            since: Some(1_000),
            until: Some(1_000),
        };
        assert!(matching.matches(&letter));
        let misses = [
            DeadLetterFilter { reason: Some("malformed".into()), ..all.clone() },
            DeadLetterFilter { courier: Some("c2".into()), ..all.clone() },
            DeadLetterFilter { source: Some(SourceKind::Mqtt), ..all.clone() },
            DeadLetterFilter { plugin: Some("other".into()), ..all.clone() },
            DeadLetterFilter { since: Some(1_001), ..all.clone() },
            DeadLetterFilter { until: Some(999), ..all.clone() },
        ];
        for filter in misses {
            assert!(!filter.matches(&letter), "{filter:?}");
        }
    }

    #[test]
    fn letters_of_earlier_releases_are_read_and_converted() {
        // Written by hand as postcard wrote the old shape: reason "malformed", detail "bad",
        // topic "couriers/c1/locations", courier None, received_ms 300, payload [0xde, 0xad].
        let mut bytes = vec![9];
        bytes.extend(b"malformed");
        bytes.push(3);
        bytes.extend(b"bad");
        bytes.push(21);
        bytes.extend(b"couriers/c1/locations");
        bytes.extend([0, 0xac, 0x02, 2, 0xde, 0xad]);
        let letter = DeadLetter::decode(&bytes).unwrap();
        let expected = DeadLetter::new(
            DeadLetterReason::Malformed,
            DeadLetterSource::Mqtt { topic: "couriers/c1/locations".into() },
            None,
            "bad",
            vec![0xde, 0xad],
            300,
        );
        assert_eq!(letter, expected);

        let read = |reason: &str, detail: &str, topic: &str| {
            DeadLetter::decode(&legacy(reason, detail, topic)).unwrap()
        };
        let replayed = read("bad_courier", "line 12: courier id is not …", "replay:/data/a.csv");
        assert_eq!(replayed.reason, DeadLetterReason::BadCourier);
        assert_eq!(
            replayed.source,
            DeadLetterSource::Replay { file: "/data/a.csv".into(), line: 12 }
        );
        assert_eq!(
            (replayed.courier.as_deref(), replayed.received_ms, &replayed.payload[..]),
            (Some("c1"), 1_763_700_000_000, &[1, 2, 3][..])
        );
        let shipped = read("influx_rejected", "field type conflict", "influx");
        assert_eq!(
            (shipped.reason, shipped.source),
            (DeadLetterReason::InfluxRejected, DeadLetterSource::Influx)
        );
        let unknown = read("some_future_reason", "x", "elsewhere");
        assert_eq!(unknown.reason, DeadLetterReason::Other("some_future_reason".into()));
        assert_eq!(unknown.source, DeadLetterSource::Mqtt { topic: "elsewhere".into() });

        let topic = "couriers/c1/locations";
        let mqtt = Box::new(DeadLetterSource::Mqtt { topic: topic.into() });
        let rejected = read(
            "plugin_rejected",
            "plugin jitter version 00ff00ff00ff00ff rejected the fix: accuracy 100 m",
            topic,
        );
        assert_eq!(rejected.reason, DeadLetterReason::PluginRejected("accuracy 100 m".into()));
        assert_eq!(
            rejected.source,
            DeadLetterSource::Plugin {
                name: "jitter".into(),
                version: "00ff00ff00ff00ff".into(),
                input: mqtt.clone()
            }
        );
        assert_eq!(rejected.source.topic(), topic, "the API's topic is what it was");
        let failed = read("plugin_failed", "plugin hostile version abc: out of fuel", topic);
        assert_eq!(failed.reason, DeadLetterReason::PluginFailed);
        assert_eq!(
            failed.source,
            DeadLetterSource::Plugin { name: "hostile".into(), version: "abc".into(), input: mqtt }
        );
        // A detail that does not name the plugin keeps the topic as the source.
        let odd = read("plugin_failed", "something else", topic);
        assert_eq!(odd.source, DeadLetterSource::Mqtt { topic: topic.into() });
    }
}
