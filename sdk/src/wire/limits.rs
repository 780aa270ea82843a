//! Size bounds of encoded messages, shared by the device (which must never build a report the
//! server cannot take) and the server (which checks at start that its limits fit together).
//!
//! The bounds are worst cases of the postcard encoding in [`super`]: a `u64` varint takes at
//! most 10 bytes, a `u32` 5, a `u16` 3, an `i32` (zigzag) 5, a `u8` 1, an `Option` 1 more, a
//! string or sequence length a varint of its own. A test encodes the largest values and checks
//! each bound is reached exactly.

use crate::topics::MAX_ID_LEN;

/// Largest encoding of one [`super::Fix`]: every detail set, an order id of [`MAX_ID_LEN`]
/// bytes.
pub const MAX_FIX_BYTES: usize = 10 // ts_ms: u64
    + 5 + 5 // lat_e7, lon_e7: i32
    + 1 // details: Some
    + (1 + 5) + (1 + 5) // accuracy_cm, speed_cm_s: Option<u32>
    + (1 + 3) // heading_cdeg: Option<u16>
    + (1 + 1) // battery_pct: Option<u8>, one raw byte
    + (1 + 1 + MAX_ID_LEN); // order: Option<String>, length varint (≤ 127) + bytes

/// Largest encoding of a report apart from its fixes: version byte, message tag, seq (u64), and
/// the fix count (a varint; 5 bytes covers any count a `u32` holds).
pub const MAX_REPORT_OVERHEAD_BYTES: usize = 1 + 1 + 10 + 5;

/// The most bytes a report of `fixes` fixes can take.
pub const fn max_report_bytes(fixes: usize) -> usize {
    MAX_REPORT_OVERHEAD_BYTES + fixes * MAX_FIX_BYTES
}

/// Largest encoding of a [`super::CourierEvent`], message and version included: ids of
/// [`MAX_ID_LEN`] bytes, details of [`super::MAX_EVENT_DETAILS_BYTES`]. Far below
/// [`DEFAULT_MAX_REPORT_BYTES`], so any valid event fits in one publish.
pub const MAX_EVENT_BYTES: usize = 1 + 1 // version byte, message tag
    + 10 // seq: u64
    + (1 + MAX_ID_LEN) // order: length varint (≤ 127) + bytes
    + 1 // kind: enum index (< 128 kinds)
    + (1 + MAX_ID_LEN) // event_id
    + 10 // at_ms: u64
    + (1 + 2 + super::MAX_EVENT_DETAILS_BYTES); // details: Some, length varint (≤ 16383), text

/// Largest encoding of an [`super::EdgeBatch`] apart from its fixes: version byte, message tag,
/// key (length varint + [`super::MAX_EDGE_KEY_LEN`] bytes), part and parts (`u16`), the 16-byte
/// digest, courier, client token (`Some`, length varint, [`super::MAX_CLIENT_TOKEN_BYTES`]), and
/// the fix count.
pub const MAX_EDGE_BATCH_OVERHEAD_BYTES: usize = 1
    + 1
    + (2 + super::MAX_EDGE_KEY_LEN)
    + 3
    + 3
    + 16
    + (1 + MAX_ID_LEN)
    + (1 + 2 + super::MAX_CLIENT_TOKEN_BYTES)
    + 5;

/// The most bytes an edge batch of `fixes` fixes can take.
pub const fn max_edge_batch_bytes(fixes: usize) -> usize {
    MAX_EDGE_BATCH_OVERHEAD_BYTES + fixes * MAX_FIX_BYTES
}

/// Bytes an MQTT PUBLISH of a report adds around the payload, at most, on the longest
/// locations topic: topic length (2) and topic, packet id (2), and room for MQTT 5 properties a
/// well-behaved client might set (128). The broker's packet limit counts all of these.
pub const MAX_PUBLISH_OVERHEAD_BYTES: usize =
    2 + "couriers/".len() + MAX_ID_LEN + "/locations".len() + 2 + 128;

/// The broker's default packet limit (`[mqtt] max_payload_bytes`).
pub const DEFAULT_MAX_PACKET_BYTES: usize = 64 * 1024;

/// The server's default `[pipeline] max_report_bytes`, and the SDK's default report bound: the
/// default packet limit less the most a PUBLISH adds around the payload.
pub const DEFAULT_MAX_REPORT_BYTES: usize = DEFAULT_MAX_PACKET_BYTES - MAX_PUBLISH_OVERHEAD_BYTES;

/// The server's default `[pipeline] max_fixes_per_report`: the most fixes that always fit in
/// [`DEFAULT_MAX_REPORT_BYTES`], rounded down to a round number.
pub const DEFAULT_MAX_FIXES_PER_REPORT: usize = 600;

// The defaults fit together: checked when the crate compiles.
const _: () = assert!(max_report_bytes(DEFAULT_MAX_FIXES_PER_REPORT) <= DEFAULT_MAX_REPORT_BYTES);
const _: () =
    assert!(DEFAULT_MAX_REPORT_BYTES + MAX_PUBLISH_OVERHEAD_BYTES <= DEFAULT_MAX_PACKET_BYTES);
// An edge splits requests into parts of the server's default fixes per report, and a part
// fits the default payload limit (`edge/{edge}/batches` is shorter than a locations topic).
const _: () =
    assert!(max_edge_batch_bytes(DEFAULT_MAX_FIXES_PER_REPORT) <= DEFAULT_MAX_REPORT_BYTES);
// The events topic is shorter than the locations topic, so the same overhead covers it.
const _: () = assert!(MAX_EVENT_BYTES <= DEFAULT_MAX_REPORT_BYTES);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{
        encode_event, encode_report, CourierEvent, CourierEventKind, Fix, FixDetails, Report,
        MAX_EVENT_DETAILS_BYTES,
    };
    use alloc::vec;

    fn largest_fix() -> Fix {
        Fix {
            ts_ms: u64::MAX,
            lat_e7: i32::MIN,
            lon_e7: i32::MIN,
            details: Some(FixDetails {
                accuracy_cm: Some(u32::MAX),
                speed_cm_s: Some(u32::MAX),
                heading_cdeg: Some(u16::MAX),
                battery_pct: Some(u8::MAX),
                order: Some("o".repeat(MAX_ID_LEN)),
            }),
        }
    }

    #[test]
    fn the_bounds_are_reached_exactly_by_the_largest_values() {
        let one = encode_report(&Report { seq: u64::MAX, fixes: vec![largest_fix()] });
        let two = encode_report(&Report { seq: u64::MAX, fixes: vec![largest_fix(); 2] });
        assert_eq!(two.len() - one.len(), MAX_FIX_BYTES);
        // The fix count's varint is 1 byte here and at most 5 in the bound.
        assert_eq!(one.len() + 4, max_report_bytes(1));
    }

    #[test]
    fn the_edge_batch_bound_is_reached_exactly_by_the_largest_values() {
        use crate::wire::{encode_edge_batch, EdgeBatch, MAX_CLIENT_TOKEN_BYTES, MAX_EDGE_KEY_LEN};
        let largest = EdgeBatch {
            key: "k".repeat(MAX_EDGE_KEY_LEN),
            part: u16::MAX,
            parts: u16::MAX,
            digest: [0xff; 16],
            courier: "c".repeat(MAX_ID_LEN),
            token: Some("t".repeat(MAX_CLIENT_TOKEN_BYTES)),
            fixes: vec![largest_fix(); 2],
        };
        // The fix count's varint is 1 byte here and at most 5 in the bound.
        assert_eq!(encode_edge_batch(&largest).len() + 4, max_edge_batch_bytes(2));
    }

    #[test]
    fn the_event_bound_is_reached_exactly_by_the_largest_values() {
        let largest = CourierEvent {
            seq: u64::MAX,
            order: "o".repeat(MAX_ID_LEN),
            kind: CourierEventKind::Delivered,
            event_id: "e".repeat(MAX_ID_LEN),
            at_ms: u64::MAX,
            // A JSON string: quotes and 4094 letters.
            details: Some(alloc::format!("\"{}\"", "x".repeat(MAX_EVENT_DETAILS_BYTES - 2))),
        };
        assert_eq!(largest.problem(), None);
        assert_eq!(encode_event(&largest).len(), MAX_EVENT_BYTES);
    }
}
