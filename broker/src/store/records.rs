//! The records kept in sled, encoded with postcard.

use locus_sdk::wire::Fix;
use serde::{Deserialize, Serialize};

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

/// Something the pipeline could not take, kept for inspection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Stable, short reason code (`malformed`, `lat_out_of_range`, `plugin_failed`, ...), also the
    /// `reason` label of the dead-letter metric.
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
    /// MQTT topic (or another source name, such as `replay:FILE` or `influx`).
    pub topic: String,
    /// The courier, when known.
    pub courier: Option<String>,
    /// Server time, Unix milliseconds.
    pub received_ms: u64,
    /// The offending bytes as received: the MQTT payload (also when only some of its fixes were
    /// refused; `detail` names them), or the input line of a replay. For a plugin's letter, the
    /// fix as the plugin saw it (postcard of the wire `Fix`).
    pub payload: Vec<u8>,
}
