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
/// on MQTT): the courier, the fix's JSON view (`ts`, `lat`, `lon`, optional
/// `accuracy`, `speed`, `heading`, `battery`, `order`), plugin attributes and receive time.
#[derive(Debug, Serialize)]
pub struct FixView {
    /// The courier.
    pub courier: String,
    /// The fix.
    #[serde(flatten)]
    pub fix: FixJson,
    /// Attributes added by plugins.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Server receive time, Unix ms.
    pub received_ms: u64,
}

impl FixView {
    /// The view of a stored fix.
    pub fn new(courier: &str, stored: &StoredFix) -> Self {
        FixView {
            courier: courier.to_owned(),
            fix: FixJson::from(&stored.fix),
            attributes: stored.attributes.iter().cloned().collect(),
            received_ms: stored.received_ms,
        }
    }
}
