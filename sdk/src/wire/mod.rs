//! The Locus wire format: versioned, compact postcard.
//!
//! Every message on the wire is one version byte ([`VERSION`]) followed by the postcard encoding
//! of a [`Message`] (whose first byte is the variant: `0` = report, `1` = ack). Integers wider than
//! a byte are varints (`battery_pct`, a `u8`, is one raw byte), coordinates are fixed-point (1e-7
//! degree, about 1 cm), optional fields cost one byte when absent, so a one-fix report without
//! details is at most 24 bytes.
//!
//! The valid range of every field is a constant here ([`LAT_E7_RANGE`], [`MAX_HEADING_CDEG`],
//! ...), checked by the server ([`Fix::out_of_range`]) and by every conversion from natural units
//! ([`latitude_to_e7`], [`heading_deg_to_cdeg`], ...), which refuse out-of-range values instead
//! of wrapping or clamping them.
//!
//! The JSON view of the same messages ([`json`]) is what people and other tools see; `WIRE.md`
//! beside this crate lists test vectors (hex ⇄ JSON) that `tests/wire_vectors.rs` checks.

pub mod json;
pub mod limits;

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// The wire-format version this crate writes and reads.
pub const VERSION: u8 = 1;

/// Fixed-point scale of latitude and longitude: 1 unit = 1e-7 degree.
pub const COORD_SCALE: f64 = 1e7;

/// Valid [`Fix::lat_e7`], inclusive: -90° to 90°.
pub const LAT_E7_RANGE: core::ops::RangeInclusive<i32> = -900_000_000..=900_000_000;

/// Valid [`Fix::lon_e7`], inclusive: -180° to 180°.
pub const LON_E7_RANGE: core::ops::RangeInclusive<i32> = -1_800_000_000..=1_800_000_000;

/// Largest valid [`FixDetails::heading_cdeg`] (359.99°), inclusive; the range starts at 0.
/// 36000 (360°) is refused: it is north, which is 0.
pub const MAX_HEADING_CDEG: u16 = 35_999;

/// Largest valid [`FixDetails::battery_pct`], inclusive; the range starts at 0.
pub const MAX_BATTERY_PCT: u8 = 100;

/// Any Locus wire message. New variants are only ever appended, so existing tags keep their
/// meaning within a [`VERSION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Device → server on `couriers/{courier}/locations`.
    Report(Report),
    /// Server → device on `couriers/{courier}/acks`.
    Ack(Ack),
}

/// A batch of fixes from one courier. The courier is not in the payload: it is the topic's (and
/// the authenticated connection's) courier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Per-courier sequence number, starting at 1 and increasing by one per report. The server
    /// acknowledges the highest committed `seq` and drops any report at or below it as a
    /// duplicate.
    pub seq: u64,
    /// One or more position fixes, in the order the device took them.
    pub fixes: Vec<Fix>,
}

/// One position fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fix {
    /// Device time of the fix, Unix milliseconds.
    pub ts_ms: u64,
    /// Latitude in 1e-7 degrees (valid: [`LAT_E7_RANGE`], ±900_000_000 inclusive).
    pub lat_e7: i32,
    /// Longitude in 1e-7 degrees (valid: [`LON_E7_RANGE`], ±1_800_000_000 inclusive).
    pub lon_e7: i32,
    /// Optional details; `None` costs one byte.
    pub details: Option<FixDetails>,
}

/// The optional parts of a fix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixDetails {
    /// Horizontal accuracy radius, centimetres (any `u32`).
    pub accuracy_cm: Option<u32>,
    /// Ground speed, centimetres per second (any `u32`).
    pub speed_cm_s: Option<u32>,
    /// Heading, hundredths of a degree clockwise from true north (valid: 0 to
    /// [`MAX_HEADING_CDEG`] = 35999, inclusive).
    pub heading_cdeg: Option<u16>,
    /// Battery level, percent (valid: 0 to [`MAX_BATTERY_PCT`] = 100, inclusive). One raw byte
    /// on the wire, not a varint.
    pub battery_pct: Option<u8>,
    /// The order the courier is carrying, if any (valid: [`crate::topics::is_valid_id`]).
    pub order: Option<String>,
}

/// The server's end-to-end acknowledgement: every report of this courier up to and including
/// `seq` is durably committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest committed sequence number.
    pub seq: u64,
}

/// Why bytes could not be decoded as a Locus message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// No bytes at all.
    Empty,
    /// The version byte is not one this build understands.
    UnknownVersion(u8),
    /// The bytes after the version byte are not a valid message (truncated or corrupt).
    Malformed(postcard::Error),
    /// A valid message followed by extra bytes.
    TrailingBytes(usize),
    /// A valid message of another kind than expected (for example an ack on a locations topic).
    UnexpectedKind(&'static str),
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::Empty => write!(f, "empty payload"),
            WireError::UnknownVersion(v) => {
                write!(f, "unknown wire version {v} (this build reads version {VERSION})")
            }
            WireError::Malformed(e) => write!(f, "malformed message: {e}"),
            WireError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the message"),
            WireError::UnexpectedKind(kind) => write!(f, "unexpected message kind: {kind}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WireError {}

/// Unix milliseconds now: the clock and unit of device times ([`Fix::ts_ms`]) and of the
/// server's receive times. 0 on a clock set before 1970.
#[cfg(feature = "std")]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl WireError {
    /// A short, stable name for metrics labels and dead-letter reasons.
    pub fn code(&self) -> &'static str {
        match self {
            WireError::Empty => "empty_payload",
            WireError::UnknownVersion(_) => "unknown_version",
            WireError::Malformed(_) => "malformed",
            WireError::TrailingBytes(_) => "trailing_bytes",
            WireError::UnexpectedKind(_) => "unexpected_kind",
        }
    }
}

impl Message {
    /// A short name of the variant.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Report(_) => "report",
            Message::Ack(_) => "ack",
        }
    }
}

/// Encodes a message: the version byte, then postcard.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.push(VERSION);
    // Serializing into a Vec cannot fail for these types: they hold no maps or unsized sequences
    // postcard refuses, and allocation failure aborts.
    postcard::to_extend(message, out).expect("postcard encoding into a Vec is infallible")
}

/// Decodes any message, refusing unknown versions, truncation and trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let (message, rest) = postcard::take_from_bytes(body).map_err(WireError::Malformed)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(message)
}

/// Encodes a report (see [`encode`]).
pub fn encode_report(report: &Report) -> Vec<u8> {
    // Cloning keeps `Message` owning its data; reports are small and this is not the server's
    // hot path (the server decodes, it does not encode reports).
    encode(&Message::Report(report.clone()))
}

/// Decodes bytes that must be a report.
pub fn decode_report(bytes: &[u8]) -> Result<Report, WireError> {
    match decode(bytes)? {
        Message::Report(report) => Ok(report),
        other => Err(WireError::UnexpectedKind(other.kind())),
    }
}

/// Encodes an ack.
pub fn encode_ack(ack: Ack) -> Vec<u8> {
    encode(&Message::Ack(ack))
}

/// Decodes bytes that must be an ack.
pub fn decode_ack(bytes: &[u8]) -> Result<Ack, WireError> {
    match decode(bytes)? {
        Message::Ack(ack) => Ok(ack),
        other => Err(WireError::UnexpectedKind(other.kind())),
    }
}

impl Fix {
    /// A fix from degrees, rounding to the wire's fixed point. Out-of-range values are kept (and
    /// refused later by the server's validation) as long as they fit the wire type.
    pub fn from_degrees(ts_ms: u64, lat: f64, lon: f64) -> Self {
        Fix {
            ts_ms,
            lat_e7: degrees_to_e7(lat).unwrap_or(i32::MAX),
            lon_e7: degrees_to_e7(lon).unwrap_or(i32::MAX),
            details: None,
        }
    }

    /// Latitude in degrees.
    pub fn lat(&self) -> f64 {
        f64::from(self.lat_e7) / COORD_SCALE
    }

    /// Longitude in degrees.
    pub fn lon(&self) -> f64 {
        f64::from(self.lon_e7) / COORD_SCALE
    }

    /// Whether latitude and longitude are on the globe.
    pub fn coordinates_in_range(&self) -> bool {
        LAT_E7_RANGE.contains(&self.lat_e7) && LON_E7_RANGE.contains(&self.lon_e7)
    }

    /// The first field outside its documented range, as its JSON name (`lat`, `lon`,
    /// `heading`, `battery`, `order`), or `None` when every field is valid. The device time is
    /// not checked: its window is the server's configuration.
    pub fn out_of_range(&self) -> Option<&'static str> {
        if !LAT_E7_RANGE.contains(&self.lat_e7) {
            return Some("lat");
        }
        if !LON_E7_RANGE.contains(&self.lon_e7) {
            return Some("lon");
        }
        let details = self.details.as_ref()?;
        if details.heading_cdeg.is_some_and(|h| h > MAX_HEADING_CDEG) {
            return Some("heading");
        }
        if details.battery_pct.is_some_and(|b| b > MAX_BATTERY_PCT) {
            return Some("battery");
        }
        if details.order.as_deref().is_some_and(|o| !crate::topics::is_valid_id(o)) {
            return Some("order");
        }
        None
    }

    /// The order id, if the fix carries one.
    pub fn order(&self) -> Option<&str> {
        self.details.as_ref()?.order.as_deref()
    }
}

/// Degrees to the wire's fixed point, `None` if not finite or too large for the wire type.
pub fn degrees_to_e7(degrees: f64) -> Option<i32> {
    let scaled = round_half_away(degrees * COORD_SCALE);
    (scaled.is_finite() && scaled >= f64::from(i32::MIN) && scaled <= f64::from(i32::MAX))
        .then_some(scaled as i32)
}

/// Latitude degrees to the wire's fixed point, `None` unless finite and, once rounded to 1e-7°,
/// within ±90° inclusive.
pub fn latitude_to_e7(degrees: f64) -> Option<i32> {
    degrees_to_e7(degrees).filter(|e7| LAT_E7_RANGE.contains(e7))
}

/// Longitude degrees to the wire's fixed point, `None` unless finite and, once rounded to 1e-7°,
/// within ±180° inclusive.
pub fn longitude_to_e7(degrees: f64) -> Option<i32> {
    degrees_to_e7(degrees).filter(|e7| LON_E7_RANGE.contains(e7))
}

/// Heading degrees to the wire's hundredths, `None` unless finite and `0 <= degrees < 360`
/// (refused, never wrapped: -90 or 400 is a bug upstream, not a direction). Rounds to 0.01°; an
/// in-range heading that rounds up to 360.00 (from 359.995) is 0, the same direction.
pub fn heading_deg_to_cdeg(degrees: f64) -> Option<u16> {
    if !(degrees.is_finite() && (0.0..360.0).contains(&degrees)) {
        return None;
    }
    let cdeg = round_half_away(degrees * 100.0) as u32;
    Some(if cdeg > u32::from(MAX_HEADING_CDEG) { 0 } else { cdeg as u16 })
}

/// A non-negative metric quantity (metres for accuracy, m/s for speed) to the wire's centi-unit
/// (cm, cm/s), rounded; `None` unless finite and 0 to 42,949,672.95 inclusive (`u32::MAX`
/// hundredths).
pub fn metres_to_cm(value: f64) -> Option<u32> {
    if value.is_nan() || value < 0.0 {
        return None; // -0.0 passes, as 0
    }
    let scaled = round_half_away(value * 100.0);
    (scaled.is_finite() && scaled >= 0.0 && scaled <= f64::from(u32::MAX)).then_some(scaled as u32)
}

/// `battery` if it is a valid percentage (0 to 100 inclusive).
pub fn battery_pct_checked(battery: u8) -> Option<u8> {
    (battery <= MAX_BATTERY_PCT).then_some(battery)
}

/// `f64::round` without `std` (core has no float rounding): half away from zero. Values too
/// large to have a fraction, and NaN or infinities, come back unchanged.
pub(crate) fn round_half_away(x: f64) -> f64 {
    if !x.is_finite() || x.abs() >= 4_503_599_627_370_496.0 {
        return x; // 2^52: every such f64 is already an integer
    }
    let shifted = if x >= 0.0 { x + 0.5 } else { x - 0.5 };
    shifted as i64 as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn one_fix_report(seq: u64) -> Report {
        Report {
            seq,
            fixes: vec![Fix::from_degrees(1_763_700_000_000, -89.999_999_9, -179.999_999_9)],
        }
    }

    #[test]
    fn one_fix_report_is_at_most_24_bytes() {
        // Worst case for realistic values: a sequence number needing 4 varint bytes (< 2^28),
        // a millisecond timestamp until the year 2109, coordinates at the extremes.
        let bytes = encode_report(&one_fix_report((1 << 28) - 1));
        assert!(bytes.len() <= 24, "{} bytes", bytes.len());
    }

    #[test]
    fn round_trips_every_field() {
        let report = Report {
            seq: 7,
            fixes: vec![Fix {
                ts_ms: 1,
                lat_e7: -1,
                lon_e7: 2,
                details: Some(FixDetails {
                    accuracy_cm: Some(350),
                    speed_cm_s: Some(1200),
                    heading_cdeg: Some(35_999),
                    battery_pct: Some(87),
                    order: Some("order-1".into()),
                }),
            }],
        };
        assert_eq!(decode_report(&encode_report(&report)), Ok(report));
    }

    #[test]
    fn natural_units_outside_their_ranges_are_refused_not_wrapped() {
        assert_eq!(heading_deg_to_cdeg(0.0), Some(0));
        assert_eq!(heading_deg_to_cdeg(359.99), Some(MAX_HEADING_CDEG));
        assert_eq!(heading_deg_to_cdeg(359.996), Some(0), "rounds to 360.00 = north");
        for bad in [360.0, 400.0, -90.0, -0.001, f64::NAN, f64::INFINITY] {
            assert_eq!(heading_deg_to_cdeg(bad), None, "{bad}");
        }
        assert_eq!(latitude_to_e7(-90.0), Some(-900_000_000));
        assert_eq!(latitude_to_e7(90.000_000_1), None);
        assert_eq!(longitude_to_e7(180.0), Some(1_800_000_000));
        assert_eq!(longitude_to_e7(-180.000_000_1), None);
        assert_eq!(metres_to_cm(42_949_672.95), Some(u32::MAX));
        assert_eq!(metres_to_cm(42_949_672.96), None);
        assert_eq!(metres_to_cm(-0.0), Some(0));
        assert_eq!(metres_to_cm(-0.001), None);
        assert_eq!(battery_pct_checked(100), Some(100));
        assert_eq!(battery_pct_checked(101), None);
    }

    #[test]
    fn refuses_bad_input() {
        let bytes = encode_report(&one_fix_report(1));
        assert_eq!(decode(&[]), Err(WireError::Empty));
        assert_eq!(decode(&[9, 0]), Err(WireError::UnknownVersion(9)));
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(WireError::Malformed(_))));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(WireError::TrailingBytes(1)));
        assert_eq!(
            decode_report(&encode_ack(Ack { seq: 1 })),
            Err(WireError::UnexpectedKind("ack"))
        );
    }
}
