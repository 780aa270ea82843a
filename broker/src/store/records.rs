//! The records kept in sled, encoded with postcard.

use locus_sdk::wire::json::FixJson;
use locus_sdk::wire::Fix;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A fix as committed: the device's fix, the attributes plugins added, and when the server took
/// it in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFix {
    /// The fix as the device sent it (possibly changed by plugins).
    pub fix: Fix,
    /// Attributes added by plugins, in the order they were added.
    pub attributes: Vec<(String, String)>,
    /// Server time the report was received, Unix milliseconds.
    pub received_ms: u64,
}

/// A stored fix as JSON, the same wherever it is shown (the API's answers, an order's location
/// on MQTT): the courier and the fix's [`FixFields`].
#[derive(Debug, Serialize)]
pub struct FixView {
    /// The courier.
    pub courier: String,
    /// The rest.
    #[serde(flatten)]
    pub fields: FixFields,
}

impl FixView {
    /// The view of a stored fix.
    pub fn new(courier: &str, stored: &StoredFix) -> Self {
        FixView { courier: courier.to_owned(), fields: FixFields::of(stored) }
    }
}

/// A committed fix as JSON without its courier, for lists of one courier's fixes (a track
/// page, a message of the live fix stream): the fix's JSON view (`ts`, `lat`, `lon`, optional
/// `accuracy`, `speed`, `heading`, `battery`, `order`), plugin attributes and receive time.
#[derive(Debug, Serialize)]
pub struct FixFields {
    /// The fix.
    #[serde(flatten)]
    pub fix: FixJson,
    /// Attributes added by plugins.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Server receive time, Unix ms.
    pub received_ms: u64,
}

impl FixFields {
    /// The fields of a fix with its plugin attributes, received at `received_ms`.
    pub fn new(fix: &Fix, attributes: &[(String, String)], received_ms: u64) -> Self {
        FixFields {
            fix: FixJson::from(fix),
            attributes: attributes.iter().cloned().collect(),
            received_ms,
        }
    }

    /// The fields of a stored fix.
    pub fn of(stored: &StoredFix) -> Self {
        Self::new(&stored.fix, &stored.attributes, stored.received_ms)
    }
}
