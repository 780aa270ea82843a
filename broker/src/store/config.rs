//! The store's sections: `[store]`, `[track]` and `[dead_letters]`.

use serde::{Deserialize, Serialize};

/// `[store]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// How often the views (live state, track blocks) are checkpointed into sled, ms. Recovery
    /// after a crash replays at most this much of the log; shorter costs more writes.
    pub checkpoint_interval_ms: u64,
    /// sled's page cache, MiB: most of locusd's resident memory under load. More keeps more
    /// of the tracks in memory for reads; the write path needs little.
    pub cache_mib: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { checkpoint_interval_ms: 1000, cache_mib: 128 }
    }
}

/// `[track]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackConfig {
    /// Most fixes kept per courier; older ones are pruned.
    pub max_fixes_per_courier: usize,
    /// Fixes older than this (device time) are pruned, seconds.
    pub max_age_s: u64,
    /// How often the pruner runs, seconds.
    pub prune_interval_s: u64,
}

impl Default for TrackConfig {
    fn default() -> Self {
        TrackConfig {
            max_fixes_per_courier: 10_000,
            max_age_s: 7 * 24 * 3600,
            prune_interval_s: 60,
        }
    }
}

/// `[dead_letters]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Most dead letters kept; the oldest are pruned beyond this.
    pub max_entries: usize,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig { max_entries: 100_000 }
    }
}
