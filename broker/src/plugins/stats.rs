//! Per-plugin counters and call-time percentiles.
//!
//! What enters: one record per call from the pipeline thread. What leaves: snapshots for
//! `GET /v1/plugins` and the metrics. Counters are atomics; the call-time histogram sits behind a
//! mutex that only the pipeline thread (recording) and a reader (snapshotting) ever take, so it
//! is uncontended on the hot path. Stats belong to a deployed version: a redeploy starts afresh.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Live counters of one deployed plugin version.
#[derive(Debug)]
pub struct PluginStats {
    calls: AtomicU64,
    fixes_in: AtomicU64,
    fixes_kept: AtomicU64,
    fixes_dropped: AtomicU64,
    fixes_rejected: AtomicU64,
    errors: AtomicU64,
    fixes_failed: AtomicU64,
    instances_started: AtomicU64,
    failing: AtomicBool,
    /// Call time in microseconds, 1 µs to 60 s, 3 significant digits.
    call_time_us: Mutex<Histogram<u64>>,
    last_error: Mutex<Option<LastError>>,
}

/// The most recent failure of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// Server time, Unix milliseconds.
    pub at_ms: u64,
    /// What happened.
    pub reason: String,
}

/// A snapshot of a plugin's stats.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginStatsSnapshot {
    /// Calls of `process` (batches).
    pub calls: u64,
    /// Fixes passed in.
    pub fixes_in: u64,
    /// Fixes kept (passed on down the chain).
    pub fixes_out: u64,
    /// Fixes dropped by the plugin.
    pub fixes_dropped: u64,
    /// Fixes rejected by the plugin (dead-lettered as `plugin_rejected`).
    pub fixes_rejected: u64,
    /// Failed calls (trap, time budget, memory cap, bad output, failed restart).
    pub errors: u64,
    /// Fixes in failed calls (dead-lettered or passed on, per the failure policy).
    pub fixes_failed: u64,
    /// Instances started (1 + replacements after failures, while the plugin is in the chain).
    pub instances_started: u64,
    /// The most recent failure.
    pub last_error: Option<LastError>,
    /// Call-time percentiles.
    pub call_time: CallTimes,
}

/// Call-time percentiles, microseconds (0 before the first call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CallTimes {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

impl Default for PluginStats {
    fn default() -> Self {
        PluginStats {
            calls: AtomicU64::new(0),
            fixes_in: AtomicU64::new(0),
            fixes_kept: AtomicU64::new(0),
            fixes_dropped: AtomicU64::new(0),
            fixes_rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            fixes_failed: AtomicU64::new(0),
            instances_started: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            // Bounds are constants, so this cannot fail.
            call_time_us: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            ),
            last_error: Mutex::new(None),
        }
    }
}

impl PluginStats {
    pub(crate) fn instance_started(&self) {
        self.instances_started.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn call(&self, elapsed: Duration, fixes_in: usize) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.fixes_in.fetch_add(fixes_in as u64, Ordering::Relaxed);
        let us = (elapsed.as_micros() as u64).clamp(1, 60_000_000);
        if let Ok(mut histogram) = self.call_time_us.lock() {
            histogram.saturating_record(us);
        }
    }

    pub(crate) fn succeeded(&self, kept: usize, dropped: usize, rejected: usize) {
        self.fixes_kept.fetch_add(kept as u64, Ordering::Relaxed);
        self.fixes_dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        self.fixes_rejected.fetch_add(rejected as u64, Ordering::Relaxed);
        self.failing.store(false, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, fixes: usize, reason: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.fixes_failed.fetch_add(fixes as u64, Ordering::Relaxed);
        self.failing.store(true, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(LastError { at_ms: super::now_ms(), reason: reason.to_string() });
        }
    }

    /// Whether the last call failed.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// A consistent-enough snapshot (counters are read one by one).
    pub fn snapshot(&self) -> PluginStatsSnapshot {
        let call_time = self
            .call_time_us
            .lock()
            .map(|h| {
                if h.is_empty() {
                    CallTimes::default()
                } else {
                    CallTimes {
                        p50_us: h.value_at_quantile(0.50),
                        p90_us: h.value_at_quantile(0.90),
                        p99_us: h.value_at_quantile(0.99),
                        max_us: h.max(),
                    }
                }
            })
            .unwrap_or_default();
        PluginStatsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            fixes_in: self.fixes_in.load(Ordering::Relaxed),
            fixes_out: self.fixes_kept.load(Ordering::Relaxed),
            fixes_dropped: self.fixes_dropped.load(Ordering::Relaxed),
            fixes_rejected: self.fixes_rejected.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            fixes_failed: self.fixes_failed.load(Ordering::Relaxed),
            instances_started: self.instances_started.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|last| last.clone()),
            call_time,
        }
    }
}
