//! The `[orders]` section.

use serde::{Deserialize, Serialize};

/// `[orders]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrdersConfig {
    /// How long a delivered or cancelled order (its timeline and last location) is kept after
    /// it ended, seconds; then the pruner removes it. Counted from its `delivered` or
    /// `cancelled` event's time.
    pub keep_ended_s: u64,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        // A week: time for feedback, complaints and the customer service that follows.
        OrdersConfig { keep_ended_s: 7 * 24 * 3600 }
    }
}
