//! The `[pipeline]` section: validation and batching of incoming reports.

use serde::{Deserialize, Serialize};

/// `[pipeline]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Most reports committed in one sled batch (group commit). Larger = fewer flushes.
    pub max_batch_reports: usize,
    /// Most fixes in one report; larger reports are dead-lettered. Every report of this many
    /// fixes must fit in `max_report_bytes` (checked at start).
    pub max_fixes_per_report: usize,
    /// Largest report payload, bytes; larger ones are dead-lettered (their seq is consumed, so
    /// the device moves on). Keep the SDK's `batch.max_report_bytes` at or below it.
    pub max_report_bytes: usize,
    /// How far ahead of server time a fix's device time may be (clock skew), ms.
    pub max_future_ms: u64,
    /// How far behind server time a fix's device time may be (devices offline for long), ms.
    pub max_age_ms: u64,
    /// Publish every committed fix, after plugins, as JSON on `fixes/{courier}` (the live fix
    /// stream readers subscribe to; README, "Live fix stream").
    pub stream_fixes: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_batch_reports: 4096,
            max_fixes_per_report: locus_sdk::wire::limits::DEFAULT_MAX_FIXES_PER_REPORT,
            max_report_bytes: locus_sdk::wire::limits::DEFAULT_MAX_REPORT_BYTES,
            max_future_ms: 5 * 60 * 1000,
            max_age_ms: 7 * 24 * 3600 * 1000,
            stream_fixes: true,
        }
    }
}
