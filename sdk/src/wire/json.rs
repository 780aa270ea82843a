//! The JSON view of wire messages, for people, tools and other languages.
//!
//! Units are the natural ones (degrees, metres, m/s, degrees, percent); converting to the wire
//! rounds to its fixed point and refuses values outside their documented ranges (never wraps
//! them). Unknown JSON keys are refused so typos do not silently drop data.
//!
//! ```json
//! {"seq":1,"fixes":[{"ts":1763700000000,"lat":41.3851,"lon":2.1734}]}   // a report
//! {"seq":1}                                                            // an ack
//! {"seq":2,"order":"o-1","event":"delivered","event_id":"e-1","at":1763700000000,
//!  "details":{"signed_by":"Ana"}}                                      // an order event
//! {"key":"k-1","part":1,"parts":1,"digest":"00112233445566778899aabbccddeeff",
//!  "courier":"c-1","fixes":[{"ts":1763700000000,"lat":41.3851,"lon":2.1734}]} // an edge batch
//! ```
//!
//! An event's `details` are JSON text on the wire and a JSON value here: JSON → wire writes the
//! value compactly (`serde_json`'s form: no spaces, object keys sorted), wire → JSON parses the
//! text, so text with spaces or another key order shows as the same value. Details the server
//! refuses (not JSON, too long) show as `details_text`, the text as it came, and JSON → wire
//! refuses them, as it refuses out-of-range values.

use super::{
    battery_pct_checked, details_problem, heading_deg_to_cdeg, latitude_to_e7, longitude_to_e7,
    metres_to_cm, Ack, CourierEvent, CourierEventKind, EdgeBatch, EventProblem, Fix, FixDetails,
    Message, Report, MAX_EVENT_DETAILS_BYTES,
};
use crate::topics::is_valid_id;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::{Deserialize, Deserializer, Serialize};

/// Any message as JSON. A report is recognised by its `fixes`, an event by its `order`, `event`,
/// `event_id` and `at`; every kind refuses the others' fields, so no JSON is more than one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageJson {
    /// See [`ReportJson`].
    Report(ReportJson),
    /// See [`AckJson`].
    Ack(AckJson),
    /// See [`EventJson`].
    Event(EventJson),
    /// See [`EdgeBatchJson`].
    EdgeBatch(EdgeBatchJson),
}

/// An edge batch as JSON: the digest as 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeBatchJson {
    /// The request's idempotency key.
    pub key: String,
    /// Which part, 1 ..= `parts`.
    pub part: u16,
    /// How many parts.
    pub parts: u16,
    /// The request's digest, hex.
    pub digest: String,
    /// The courier.
    pub courier: String,
    /// The HTTP client's token, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The fixes.
    pub fixes: Vec<FixJson>,
}

/// A report as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportJson {
    /// Per-courier sequence number.
    pub seq: u64,
    /// The fixes.
    pub fixes: Vec<FixJson>,
}

/// An ack as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckJson {
    /// Highest committed sequence number.
    pub seq: u64,
}

/// An order event as JSON (see the module doc for `details`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventJson {
    /// Per-courier sequence number, shared with reports.
    pub seq: u64,
    /// Order id.
    pub order: String,
    /// `picked_up` or `delivered`.
    pub event: CourierEventKind,
    /// The sender's id for the event (a valid id).
    pub event_id: String,
    /// Device time, Unix milliseconds.
    pub at: u64,
    /// Optional JSON (`null` included: it is a value, sent as the text `null`).
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// Details the server refuses (not JSON, or too long), as the text that came: shown by
    /// wire → JSON instead of `details`, refused by JSON → wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details_text: Option<String>,
}

/// `details` present is `Some`, even when it is `null` (absent is `None` through `default`).
fn present<'de, D: Deserializer<'de>>(value: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(value).map(Some)
}

/// A fix as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixJson {
    /// Device time, Unix milliseconds.
    pub ts: u64,
    /// Latitude, degrees (-90..=90).
    pub lat: f64,
    /// Longitude, degrees (-180..=180).
    pub lon: f64,
    /// Horizontal accuracy, metres (0..=42949672.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Ground speed, metres per second (0..=42949672.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Heading, degrees clockwise from true north (0 <= heading < 360).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    /// Battery level, percent (0..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
    /// Order id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

/// A JSON value outside the range the wire format documents for it (see `WIRE.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonValueError {
    /// The JSON field, for example `fixes[2].lat`.
    pub field: String,
    /// What is wrong with it.
    pub problem: &'static str,
    /// The server's dead-letter reason for the same problem (`coordinates_out_of_range`,
    /// `detail_out_of_range`, `bad_order_id`), so tools that convert JSON report it the same way.
    pub code: &'static str,
}

impl core::fmt::Display for JsonValueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for JsonValueError {}

impl JsonValueError {
    /// The error for an event field with `problem` (whose code it carries).
    fn event(field: &str, problem: &EventProblem) -> JsonValueError {
        let message = match problem {
            EventProblem::ZeroSeq => "must be at least 1",
            EventProblem::BadOrderId | EventProblem::BadEventId => {
                "must be 1-64 characters of letters, digits, - _ . :"
            }
            EventProblem::DetailsTooLong { .. } => "must be at most 4096 bytes once written",
            EventProblem::DetailsNotJson(_) => "must be JSON",
        };
        JsonValueError { field: field.to_string(), problem: message, code: problem.code() }
    }
}

const COORDINATES: &str = "coordinates_out_of_range";
const DETAIL: &str = "detail_out_of_range";

impl FixJson {
    /// Converts to the wire form, refusing (never wrapping or clamping) any value outside its
    /// documented range: latitude -90..=90, longitude -180..=180, accuracy and speed
    /// 0..=42949672.95, heading 0 <= h < 360, battery 0..=100, order a valid id. The device time
    /// is not checked here: its window is the server's configuration.
    pub fn to_wire(&self, index: usize) -> Result<Fix, JsonValueError> {
        let error = |name: &str, problem: &'static str, code: &'static str| JsonValueError {
            field: alloc::format!("fixes[{index}].{name}"),
            problem,
            code,
        };
        let lat_e7 = latitude_to_e7(self.lat)
            .ok_or_else(|| error("lat", "must be a number of degrees in -90..=90", COORDINATES))?;
        let lon_e7 = longitude_to_e7(self.lon).ok_or_else(|| {
            error("lon", "must be a number of degrees in -180..=180", COORDINATES)
        })?;
        let accuracy_cm = self
            .accuracy
            .map(|m| {
                metres_to_cm(m)
                    .ok_or_else(|| error("accuracy", "must be 0..=42949672.95 m", DETAIL))
            })
            .transpose()?;
        let speed_cm_s = self
            .speed
            .map(|v| {
                metres_to_cm(v).ok_or_else(|| error("speed", "must be 0..=42949672.95 m/s", DETAIL))
            })
            .transpose()?;
        let heading_cdeg = self
            .heading
            .map(|deg| {
                heading_deg_to_cdeg(deg).ok_or_else(|| {
                    error("heading", "must be degrees with 0 <= heading < 360", DETAIL)
                })
            })
            .transpose()?;
        let battery_pct = self
            .battery
            .map(|pct| {
                battery_pct_checked(pct).ok_or_else(|| error("battery", "must be 0..=100", DETAIL))
            })
            .transpose()?;
        if self.order.as_deref().is_some_and(|o| !is_valid_id(o)) {
            let problem = "must be 1-64 characters of letters, digits, - _ . :";
            return Err(error("order", problem, "bad_order_id"));
        }
        let details = FixDetails {
            accuracy_cm,
            speed_cm_s,
            heading_cdeg,
            battery_pct,
            order: self.order.clone(),
        };
        Ok(Fix {
            ts_ms: self.ts,
            lat_e7,
            lon_e7,
            details: (details != FixDetails::default()).then_some(details),
        })
    }
}

impl From<&Fix> for FixJson {
    fn from(fix: &Fix) -> Self {
        let details = fix.details.clone().unwrap_or_default();
        FixJson {
            ts: fix.ts_ms,
            lat: fix.lat(),
            lon: fix.lon(),
            accuracy: details.accuracy_cm.map(|cm| f64::from(cm) / 100.0),
            speed: details.speed_cm_s.map(|cm| f64::from(cm) / 100.0),
            heading: details.heading_cdeg.map(|c| f64::from(c) / 100.0),
            battery: details.battery_pct,
            order: details.order,
        }
    }
}

impl TryFrom<&ReportJson> for Report {
    type Error = JsonValueError;

    fn try_from(json: &ReportJson) -> Result<Self, Self::Error> {
        let fixes = json
            .fixes
            .iter()
            .enumerate()
            .map(|(i, fix)| fix.to_wire(i))
            .collect::<Result<_, _>>()?;
        Ok(Report { seq: json.seq, fixes })
    }
}

impl From<&Report> for ReportJson {
    fn from(report: &Report) -> Self {
        ReportJson { seq: report.seq, fixes: report.fixes.iter().map(FixJson::from).collect() }
    }
}

impl TryFrom<&EventJson> for CourierEvent {
    type Error = JsonValueError;

    /// Refuses what the server would refuse in the event's fields: an invalid `order` or
    /// `event_id`, details too long once written compactly, and `details_text`. As for reports,
    /// `seq` is left to the server (0 is dead-lettered there as `zero_seq`).
    fn try_from(json: &EventJson) -> Result<Self, Self::Error> {
        if !is_valid_id(&json.order) {
            return Err(JsonValueError::event("order", &EventProblem::BadOrderId));
        }
        if !is_valid_id(&json.event_id) {
            return Err(JsonValueError::event("event_id", &EventProblem::BadEventId));
        }
        if let Some(text) = &json.details_text {
            // Only the view of refused details has it; valid details are given as `details`.
            return Err(match details_problem(text) {
                Some(problem) => JsonValueError::event("details_text", &problem),
                None => JsonValueError {
                    field: "details_text".to_string(),
                    problem: "only shows refused details: give these as `details`",
                    code: "bad_event_details",
                },
            });
        }
        let details = match &json.details {
            Some(value) => {
                // A `Value` always serializes: its map keys are strings.
                let text = serde_json::to_string(value).unwrap_or_default();
                if let Some(problem) = details_problem(&text) {
                    return Err(JsonValueError::event("details", &problem));
                }
                Some(text)
            }
            None => None,
        };
        Ok(CourierEvent {
            seq: json.seq,
            order: json.order.clone(),
            kind: json.event,
            event_id: json.event_id.clone(),
            at_ms: json.at,
            details,
        })
    }
}

impl From<&CourierEvent> for EventJson {
    fn from(event: &CourierEvent) -> Self {
        // Valid details (short enough, and JSON: they parse) as a value, others as text.
        let value = |text: &str| {
            (text.len() <= MAX_EVENT_DETAILS_BYTES)
                .then(|| serde_json::from_str::<serde_json::Value>(text).ok())
                .flatten()
        };
        let (details, details_text) = match event.details.as_deref().map(|t| (t, value(t))) {
            None => (None, None),
            Some((_, Some(value))) => (Some(value), None),
            Some((text, None)) => (None, Some(text.to_string())),
        };
        EventJson {
            seq: event.seq,
            order: event.order.clone(),
            event: event.kind,
            event_id: event.event_id.clone(),
            at: event.at_ms,
            details,
            details_text,
        }
    }
}

impl TryFrom<&EdgeBatchJson> for EdgeBatch {
    type Error = JsonValueError;

    /// Refuses a digest that is not 32 hex digits and fixes outside their ranges; the rest of
    /// [`EdgeBatch::problem`] is the server's to refuse, as a report's seq is.
    fn try_from(json: &EdgeBatchJson) -> Result<Self, Self::Error> {
        let digest = digest_from_hex(&json.digest).ok_or(JsonValueError {
            field: "digest".to_string(),
            problem: "must be 32 hex digits",
            code: "bad_edge_batch",
        })?;
        let fixes = json
            .fixes
            .iter()
            .enumerate()
            .map(|(i, fix)| fix.to_wire(i))
            .collect::<Result<_, _>>()?;
        Ok(EdgeBatch {
            key: json.key.clone(),
            part: json.part,
            parts: json.parts,
            digest,
            courier: json.courier.clone(),
            token: json.token.clone(),
            fixes,
        })
    }
}

impl From<&EdgeBatch> for EdgeBatchJson {
    fn from(batch: &EdgeBatch) -> Self {
        EdgeBatchJson {
            key: batch.key.clone(),
            part: batch.part,
            parts: batch.parts,
            digest: super::digest_hex(&batch.digest),
            courier: batch.courier.clone(),
            token: batch.token.clone(),
            fixes: batch.fixes.iter().map(FixJson::from).collect(),
        }
    }
}

/// 32 hex digits as 16 bytes.
fn digest_from_hex(hex: &str) -> Option<[u8; 16]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut digest = [0u8; 16];
    for (i, pair) in bytes.chunks(2).enumerate() {
        digest[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(digest)
}

impl TryFrom<&MessageJson> for Message {
    type Error = JsonValueError;

    fn try_from(json: &MessageJson) -> Result<Self, Self::Error> {
        Ok(match json {
            MessageJson::Report(report) => Message::Report(report.try_into()?),
            MessageJson::Ack(ack) => Message::Ack(Ack { seq: ack.seq }),
            MessageJson::Event(event) => Message::Event(event.try_into()?),
            MessageJson::EdgeBatch(batch) => Message::EdgeBatch(batch.try_into()?),
        })
    }
}

impl From<&Message> for MessageJson {
    fn from(message: &Message) -> Self {
        match message {
            Message::Report(report) => MessageJson::Report(report.into()),
            Message::Ack(ack) => MessageJson::Ack(AckJson { seq: ack.seq }),
            Message::Event(event) => MessageJson::Event(event.into()),
            Message::EdgeBatch(batch) => MessageJson::EdgeBatch(batch.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    fn parse(text: &str) -> Result<MessageJson, serde_json::Error> {
        serde_json::from_str(text)
    }

    const EVENT: &str =
        r#"{"seq":7,"order":"o-1","event":"delivered","event_id":"e-1","at":1763700000000}"#;

    #[test]
    fn an_event_is_never_taken_for_a_report_or_an_ack_nor_they_for_it() {
        assert!(matches!(parse(EVENT), Ok(MessageJson::Event(_))));
        assert!(matches!(parse(r#"{"seq":7}"#), Ok(MessageJson::Ack(_))));
        let report = r#"{"seq":7,"fixes":[{"ts":1,"lat":1.0,"lon":2.0}]}"#;
        assert!(matches!(parse(report), Ok(MessageJson::Report(_))));
        // An event missing a field, or with a report's or an unknown field, is nothing: never
        // an ack that happens to have a seq.
        for bad in [
            r#"{"seq":7,"order":"o-1","event":"delivered","at":1763700000000}"#,
            r#"{"seq":7,"order":"o-1","event":"delivered","event_id":"e-1"}"#,
            r#"{"seq":7,"order":"o-1","event":"cancelled","event_id":"e-1","at":1}"#,
            r#"{"seq":7,"order":"o-1","event":"delivered","event_id":"e-1","at":1,"fixes":[]}"#,
            r#"{"seq":7,"order":"o-1","event":"delivered","event_id":"e-1","at":1,"detail":{}}"#,
            r#"{"seq":7,"order":"o-1"}"#,
            r#"{"seq":7,"fixes":[],"order":"o-1"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} parsed as {:?}", parse(bad));
        }
        let edge = r#"{"key":"k","part":1,"parts":1,"digest":"00112233445566778899aabbccddeeff","courier":"c","fixes":[{"ts":1,"lat":1.0,"lon":2.0}]}"#;
        assert!(matches!(parse(edge), Ok(MessageJson::EdgeBatch(_))));
        let bad_digest = edge.replace("eeff", "eefg");
        assert_eq!(Message::try_from(&parse(&bad_digest).unwrap()).unwrap_err().field, "digest");
        // And what each kind writes parses back as that kind.
        for text in [EVENT, r#"{"seq":7}"#, report, edge] {
            let message = Message::try_from(&parse(text).unwrap()).unwrap();
            let again = serde_json::to_string(&MessageJson::from(&message)).unwrap();
            assert_eq!(Message::try_from(&parse(&again).unwrap()), Ok(message), "{text}");
        }
    }

    #[test]
    fn details_are_a_value_in_json_and_compact_text_on_the_wire() {
        let json = parse(
            r#"{"seq":7,"order":"o-1","event":"delivered","event_id":"e-1","at":1,
                "details":{"signed_by": "Ana", "photo": {"id": "p-9"}, "n": [1, 2.5]}}"#,
        )
        .unwrap();
        let Ok(Message::Event(event)) = Message::try_from(&json) else { panic!("{json:?}") };
        assert_eq!(
            event.details.as_deref(),
            Some(r#"{"n":[1,2.5],"photo":{"id":"p-9"},"signed_by":"Ana"}"#)
        );
        assert_eq!(MessageJson::from(&decode(&encode(&Message::Event(event))).unwrap()), json);
        // `null` is a value; absent is no details.
        let null = parse(&EVENT.replace('}', r#","details":null}"#)).unwrap();
        let Ok(Message::Event(event)) = Message::try_from(&null) else { panic!() };
        assert_eq!(event.details.as_deref(), Some("null"));
        assert_eq!(MessageJson::from(&Message::Event(event)), null);
        let Ok(Message::Event(event)) = Message::try_from(&parse(EVENT).unwrap()) else { panic!() };
        assert_eq!(event.details, None);
        assert!(!serde_json::to_string(&MessageJson::from(&Message::Event(event)))
            .unwrap()
            .contains("details"));
    }

    #[test]
    fn refused_details_show_as_text_and_do_not_go_back_on_the_wire() {
        let mut event = CourierEvent {
            seq: 7,
            order: "o-1".into(),
            kind: CourierEventKind::PickedUp,
            event_id: "e-1".into(),
            at_ms: 1,
            details: Some("{not json".into()),
        };
        let view = EventJson::from(&event);
        assert_eq!(
            (view.details.as_ref(), view.details_text.as_deref()),
            (None, Some("{not json"))
        );
        let err = CourierEvent::try_from(&view).unwrap_err();
        assert_eq!((err.field.as_str(), err.code), ("details_text", "bad_event_details"));
        // Valid JSON, but too long: refused too, though written compactly it might fit.
        event.details = Some(alloc::format!("[{}1]", " ".repeat(MAX_EVENT_DETAILS_BYTES)));
        let view = EventJson::from(&event);
        assert!(view.details.is_none() && view.details_text.is_some());
        assert_eq!(CourierEvent::try_from(&view).unwrap_err().field, "details_text");
        // Hand-written `details_text` with valid JSON: told to use `details`.
        let view = EventJson { details_text: Some("{}".into()), ..view };
        let err = CourierEvent::try_from(&view).unwrap_err();
        assert!(err.problem.contains("`details`"), "{err}");
    }

    #[test]
    fn event_fields_outside_their_rules_are_refused_naming_them() {
        let refused = |text: &str| {
            let json = parse(text).unwrap();
            let err = Message::try_from(&json).unwrap_err();
            (err.field, err.code)
        };
        assert_eq!(refused(&EVENT.replace("\"o-1\"", "\"o/1\"")), ("order".into(), "bad_order_id"));
        assert_eq!(refused(&EVENT.replace("\"e-1\"", "\"\"")), ("event_id".into(), "bad_event_id"));
        let long = alloc::format!("\"{}\"", "x".repeat(MAX_EVENT_DETAILS_BYTES - 1));
        assert_eq!(
            refused(&EVENT.replace('}', &alloc::format!(r#","details":{long}}}"#))),
            ("details".into(), "bad_event_details")
        );
        // As for reports, seq 0 is the server's to refuse.
        let zero = parse(&EVENT.replace("\"seq\":7", "\"seq\":0")).unwrap();
        assert!(Message::try_from(&zero).is_ok());
    }
}
