//! Validation of reports and fixes, each problem with its dead-letter reason (a stable code).
//!
//! Enters: a raw MQTT payload ([`decode_report`], [`decode_event`]) or one decoded fix
//! ([`check_fix`]) with the pipeline's config. Leaves: the report or event, or the problem. A fix that passes [`check_fix`] has
//! every field inside the ranges `sdk/WIRE.md` documents (`Fix::out_of_range` is `None`) and a
//! device time inside the configured window.

use super::PipelineConfig;
use crate::store::DeadLetterReason;
use locus_sdk::wire::json::FixJson;
use locus_sdk::wire::{self, CourierEvent, Fix, Report, WireError};
use serde::Deserialize as _;

/// Why a whole report was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportProblem {
    /// The topic is not `couriers/{valid id}/locations` (or `/events`).
    #[error("topic is not couriers/{{courier}}/locations (or /events) with a valid courier id")]
    BadTopic,
    /// Larger than `pipeline.max_report_bytes`.
    #[error("payload of {size} bytes exceeds the limit of {limit}")]
    Oversized {
        /// Payload size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a decodable report.
    #[error("{0}")]
    Wire(WireError),
    /// `seq` 0 is reserved (acks start from 0 = nothing committed).
    #[error("seq must be at least 1")]
    ZeroSeq,
    /// A report without fixes.
    #[error("report has no fixes")]
    NoFixes,
    /// More than `pipeline.max_fixes_per_report`.
    #[error("report has {count} fixes, more than the limit of {limit}")]
    TooManyFixes {
        /// Fixes in the report.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An order event with a field that is not valid (`seq` 0 is [`ReportProblem::ZeroSeq`]).
    #[error("order event: {0}")]
    BadEvent(wire::EventProblem),
    /// An edge batch with a field that is not valid ([`wire::EdgeBatch::problem`]).
    #[error("edge batch: {0}")]
    BadEdgeBatch(&'static str),
}

impl ReportProblem {
    /// The dead-letter reason (its code is stable).
    pub fn reason(&self) -> DeadLetterReason {
        match self {
            ReportProblem::BadTopic => DeadLetterReason::BadTopic,
            ReportProblem::Oversized { .. } => DeadLetterReason::Oversized,
            ReportProblem::Wire(e) => DeadLetterReason::from(e),
            ReportProblem::ZeroSeq => DeadLetterReason::ZeroSeq,
            ReportProblem::NoFixes => DeadLetterReason::NoFixes,
            ReportProblem::TooManyFixes { .. } => DeadLetterReason::TooManyFixes,
            ReportProblem::BadEvent(problem) => DeadLetterReason::from_code(problem.code()),
            ReportProblem::BadEdgeBatch(_) => DeadLetterReason::BadEdgeBatch,
        }
    }
}

/// Why one fix was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FixProblem {
    /// Latitude or longitude off the globe.
    #[error("coordinates out of range: lat {lat}, lon {lon}")]
    CoordinatesOutOfRange {
        /// Degrees.
        lat: f64,
        /// Degrees.
        lon: f64,
    },
    /// Device time too far ahead of server time.
    #[error("device time {ts_ms} is {ahead_ms} ms ahead of server time (limit {limit_ms} ms)")]
    InFuture {
        /// Device time.
        ts_ms: u64,
        /// How far ahead.
        ahead_ms: u64,
        /// `pipeline.max_future_ms`.
        limit_ms: u64,
    },
    /// Device time too far behind server time.
    #[error("device time {ts_ms} is {behind_ms} ms behind server time (limit {limit_ms} ms)")]
    TooOld {
        /// Device time.
        ts_ms: u64,
        /// How far behind.
        behind_ms: u64,
        /// `pipeline.max_age_ms`.
        limit_ms: u64,
    },
    /// An order id that is not a valid id.
    #[error("order id is not 1-64 characters of letters, digits, - _ . :")]
    BadOrderId,
    /// Heading above 359.99° (35999 hundredths) or battery above 100%.
    #[error("{0} out of range")]
    DetailOutOfRange(&'static str),
    /// The courier already has a fix at this device time (a courier has one position per
    /// millisecond: the track and InfluxDB key fixes by it).
    #[error("the courier already has a fix at device time {ts_ms} ms")]
    SameDeviceTime {
        /// Device time.
        ts_ms: u64,
    },
}

impl FixProblem {
    /// The dead-letter reason (its code is stable).
    pub fn reason(&self) -> DeadLetterReason {
        match self {
            FixProblem::CoordinatesOutOfRange { .. } => DeadLetterReason::CoordinatesOutOfRange,
            FixProblem::InFuture { .. } => DeadLetterReason::TimestampInFuture,
            FixProblem::TooOld { .. } => DeadLetterReason::TimestampTooOld,
            FixProblem::BadOrderId => DeadLetterReason::BadOrderId,
            FixProblem::DetailOutOfRange(_) => DeadLetterReason::DetailOutOfRange,
            FixProblem::SameDeviceTime { .. } => DeadLetterReason::SameDeviceTime,
        }
    }
}

/// Refuses a payload over `max_report_bytes`, with its seq (`seq_of`) when it decodes: the seq
/// is still consumed and acked (the broker's packet limit bounds the work of decoding it), so a
/// device resending a message it cannot shrink is not stuck.
fn refuse_oversized(
    payload: &[u8],
    config: &PipelineConfig,
    seq_of: impl FnOnce(&[u8]) -> Option<u64>,
) -> Result<(), (ReportProblem, Option<u64>)> {
    if payload.len() <= config.max_report_bytes {
        return Ok(());
    }
    let problem = ReportProblem::Oversized { size: payload.len(), limit: config.max_report_bytes };
    Err((problem, seq_of(payload).filter(|&seq| seq > 0)))
}

/// Decodes and checks a courier's order event (`couriers/{id}/events`). On failure, also
/// returns the event's seq when it decoded, so the caller consumes it: an event that can never
/// be taken must not be resent forever.
pub fn decode_event(
    payload: &[u8],
    config: &PipelineConfig,
) -> Result<CourierEvent, (ReportProblem, Option<u64>)> {
    refuse_oversized(payload, config, |p| wire::decode_event(p).ok().map(|e| e.seq))?;
    let event = wire::decode_event(payload).map_err(|e| (ReportProblem::Wire(e), None))?;
    match event.problem() {
        None => Ok(event),
        Some(wire::EventProblem::ZeroSeq) => Err((ReportProblem::ZeroSeq, None)),
        Some(problem) => Err((ReportProblem::BadEvent(problem), Some(event.seq))),
    }
}

/// Decodes and checks an edge's batch (`edge/{edge}/batches`) as a whole: the limits of a
/// report (size, fix count) and [`wire::EdgeBatch::problem`]. An edge batch has no seq to
/// consume: the edge is told nothing, and its client learns from the receipt.
pub fn decode_edge_batch(
    payload: &[u8],
    config: &PipelineConfig,
) -> Result<wire::EdgeBatch, ReportProblem> {
    refuse_oversized(payload, config, |_| None).map_err(|(problem, _)| problem)?;
    let batch = wire::decode_edge_batch(payload).map_err(ReportProblem::Wire)?;
    if let Some(problem) = batch.problem() {
        return Err(ReportProblem::BadEdgeBatch(problem));
    }
    if batch.fixes.len() > config.max_fixes_per_report {
        let limit = config.max_fixes_per_report;
        return Err(ReportProblem::TooManyFixes { count: batch.fixes.len(), limit });
    }
    Ok(batch)
}

/// Decodes and checks a report as a whole. On failure, also returns the report's seq when the
/// report decoded (so the caller can consume it).
pub fn decode_report(
    payload: &[u8],
    config: &PipelineConfig,
) -> Result<Report, (ReportProblem, Option<u64>)> {
    refuse_oversized(payload, config, |p| wire::decode_report(p).ok().map(|r| r.seq))?;
    let report = wire::decode_report(payload).map_err(|e| (ReportProblem::Wire(e), None))?;
    if report.seq == 0 {
        return Err((ReportProblem::ZeroSeq, None));
    }
    if report.fixes.is_empty() {
        return Err((ReportProblem::NoFixes, Some(report.seq)));
    }
    if report.fixes.len() > config.max_fixes_per_report {
        let problem = ReportProblem::TooManyFixes {
            count: report.fixes.len(),
            limit: config.max_fixes_per_report,
        };
        return Err((problem, Some(report.seq)));
    }
    Ok(report)
}

/// Checks one fix against the globe, the time window and the detail ranges.
pub fn check_fix(fix: &Fix, now_ms: u64, config: &PipelineConfig) -> Result<(), FixProblem> {
    if !fix.coordinates_in_range() {
        return Err(FixProblem::CoordinatesOutOfRange { lat: fix.lat(), lon: fix.lon() });
    }
    check_time(fix.ts_ms, now_ms, config)?;
    if let Some(details) = &fix.details {
        if details.order.as_deref().is_some_and(|o| !locus_sdk::topics::is_valid_id(o)) {
            return Err(FixProblem::BadOrderId);
        }
        if details.heading_cdeg.is_some_and(|h| h > wire::MAX_HEADING_CDEG) {
            return Err(FixProblem::DetailOutOfRange("heading"));
        }
        if details.battery_pct.is_some_and(|b| b > wire::MAX_BATTERY_PCT) {
            return Err(FixProblem::DetailOutOfRange("battery"));
        }
    }
    Ok(())
}

fn check_time(ts_ms: u64, now_ms: u64, config: &PipelineConfig) -> Result<(), FixProblem> {
    if ts_ms > now_ms.saturating_add(config.max_future_ms) {
        return Err(FixProblem::InFuture {
            ts_ms,
            ahead_ms: ts_ms - now_ms,
            limit_ms: config.max_future_ms,
        });
    }
    if ts_ms < now_ms.saturating_sub(config.max_age_ms) {
        return Err(FixProblem::TooOld {
            ts_ms,
            behind_ms: now_ms - ts_ms,
            limit_ms: config.max_age_ms,
        });
    }
    Ok(())
}

/// A line of `locusd replay`'s JSON lines (and of a replayed dead letter that came from one):
/// a courier and a fix.
#[derive(Debug)]
pub struct JsonLine {
    /// The courier id, as written (checked by the caller).
    pub courier: String,
    /// The fix, in natural units (converted to the wire by the caller).
    pub fix: FixJson,
}

impl JsonLine {
    /// Parses `{"courier":…, …FixJson fields}`. (Not `#[serde(flatten)]`: it would let unknown
    /// fields through `FixJson`'s `deny_unknown_fields`.)
    pub fn parse(text: &str) -> Result<JsonLine, String> {
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| e.to_string())?;
        let courier = match object.remove("courier") {
            Some(serde_json::Value::String(courier)) => courier,
            Some(_) => return Err("`courier` is not a string".into()),
            None => return Err("missing field `courier`".into()),
        };
        let fix =
            FixJson::deserialize(serde_json::Value::Object(object)).map_err(|e| e.to_string())?;
        Ok(JsonLine { courier, fix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_763_700_000_000;

    #[test]
    fn fixes_are_checked_against_globe_and_clock() {
        let config = PipelineConfig::default();
        let ok = Fix::from_degrees(NOW, 41.0, 2.0);
        check_fix(&ok, NOW, &config).unwrap();
        let off_globe = Fix::from_degrees(NOW, 91.0, 2.0);
        assert_eq!(
            check_fix(&off_globe, NOW, &config).unwrap_err().reason().as_str(),
            "coordinates_out_of_range"
        );
        let future = Fix::from_degrees(NOW + config.max_future_ms + 1, 41.0, 2.0);
        assert_eq!(
            check_fix(&future, NOW, &config).unwrap_err().reason().as_str(),
            "timestamp_in_future"
        );
        let old = Fix::from_degrees(NOW - config.max_age_ms - 1, 41.0, 2.0);
        assert_eq!(
            check_fix(&old, NOW, &config).unwrap_err().reason().as_str(),
            "timestamp_too_old"
        );
    }

    #[test]
    fn reports_are_checked_as_a_whole() {
        let config = PipelineConfig { max_fixes_per_report: 1, ..PipelineConfig::default() };
        let two = Report { seq: 5, fixes: vec![Fix::from_degrees(NOW, 0.0, 0.0); 2] };
        let (problem, seq) = decode_report(&wire::encode_report(&two), &config).unwrap_err();
        assert_eq!((problem.reason().as_str(), seq), ("too_many_fixes", Some(5)));
        let (problem, seq) = decode_report(b"\x01\xff", &config).unwrap_err();
        assert_eq!((problem.reason().as_str(), seq), ("malformed", None));
        let big = vec![1u8; config.max_report_bytes + 1];
        assert_eq!(decode_report(&big, &config).unwrap_err().0.reason().as_str(), "oversized");
        // An oversized report that decodes gives up its seq, so it is consumed and acked.
        let small = PipelineConfig { max_report_bytes: 20, ..PipelineConfig::default() };
        let long = Report { seq: 9, fixes: vec![Fix::from_degrees(NOW, 0.0, 0.0); 3] };
        let (problem, seq) = decode_report(&wire::encode_report(&long), &small).unwrap_err();
        assert_eq!((problem.reason().as_str(), seq), ("oversized", Some(9)));
    }
}
