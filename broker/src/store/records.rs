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
