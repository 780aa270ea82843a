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
    /// Least time between two publishes of an active order's location on
    /// `orders/{id}/location`, milliseconds (the newest position goes when it is up).
    pub location_interval_ms: u64,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        // A week: time for feedback, complaints and the customer service that follows.
        OrdersConfig { keep_ended_s: 7 * 24 * 3600, location_interval_ms: 1000 }
    }
}
