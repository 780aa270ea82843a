//! JSON shapes of the API's answers.

pub use crate::store::FixView;
use crate::store::{DeadLetter, DeadLetterReason, DeadLetterSource, FixFields, StoredFix};
use serde::Serialize;

/// A track page.
#[derive(Debug, Serialize)]
pub struct TrackView {
    /// The courier.
    pub courier: String,
    /// Fixes, oldest first, without the repeated courier.
    pub fixes: Vec<FixFields>,
    /// `since` for the next page, when this page was full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_since: Option<u64>,
}

impl TrackView {
    /// The view of a track page.
    pub fn new(courier: &str, fixes: &[StoredFix], full_page: bool) -> Self {
        let next_since = full_page.then(|| fixes.last().map(|f| f.fix.ts_ms + 1)).flatten();
        let fixes = fixes.iter().map(FixFields::of).collect();
        TrackView { courier: courier.to_owned(), fixes, next_since }
    }
}

/// The JSON of a dead letter; the payload as hex so any bytes survive. `reason` is the stable
/// code and `topic` the source as one string (as they always were); `source` is the source
/// with its parts ([`source`]); a plugin's rejection adds the plugin's own `plugin_reason`.
pub fn dead_letter(id: u64, letter: &DeadLetter) -> serde_json::Value {
    let mut value = serde_json::json!({
        "id": id,
        "reason": letter.reason.as_str(),
        "detail": letter.detail,
        "topic": letter.source.topic(),
        "source": source(&letter.source),
        "courier": letter.courier,
        "received_ms": letter.received_ms,
        "payload_hex": hex::encode(&letter.payload),
    });
    if let DeadLetterReason::PluginRejected(text) = &letter.reason {
        value["plugin_reason"] = text.as_str().into();
    }
    value
}

/// A dead letter's source: `{"kind":"mqtt","topic"}`, `{"kind":"replay","file","line"}`,
/// `{"kind":"plugin","name","version","input"}` (`input`: where the fix came from, one of the
/// first two) or `{"kind":"influxdb"}`.
/// `kind` is [`crate::store::SourceKind`]'s name, the one the `source=` filter takes.
pub fn source(source: &DeadLetterSource) -> serde_json::Value {
    let mut value = match source {
        DeadLetterSource::Mqtt { topic } => serde_json::json!({ "topic": topic }),
        DeadLetterSource::Replay { file, line } => {
            serde_json::json!({ "file": file, "line": line })
        }
        DeadLetterSource::Plugin { name, version, input } => serde_json::json!({
            "name": name,
            "version": version,
            "input": self::source(input),
        }),
        DeadLetterSource::Influx => serde_json::json!({}),
    };
    value["kind"] = serde_json::to_value(source.kind()).expect("a source kind as JSON");
    value
}
