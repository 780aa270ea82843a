//! The Locus wire format: versioned, compact postcard.
//!
//! Every message on the wire is one version byte ([`VERSION`]) followed by the postcard encoding
//! of a [`Message`] (whose first byte is the variant: `0` = report, `1` = ack, `2` = order event, `3` = edge
//! batch).
//! Integers wider than a byte are varints (`battery_pct`, a `u8`, is one raw byte), coordinates
//! are fixed-point (1e-7 degree, about 1 cm), optional fields cost one byte when absent, so a
//! one-fix report without details is at most 24 bytes.
//!
//! Enters: bytes from MQTT ([`decode`], [`decode_report`], [`decode_ack`], [`decode_event`],
//! [`decode_edge_batch`]) or
//! values to send ([`encode`] and the per-kind helpers). Leaves: the other of the two.
//!
//! The valid range of every field is a constant here ([`LAT_E7_RANGE`], [`MAX_HEADING_CDEG`],
//! [`MAX_EVENT_DETAILS_BYTES`], ...), checked by the server ([`Fix::out_of_range`],
//! [`CourierEvent::problem`]) and by every conversion from natural units ([`latitude_to_e7`],
//! [`heading_deg_to_cdeg`], ...) or JSON ([`json`]), which refuse out-of-range values instead of
//! wrapping or clamping them.
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

/// Most bytes of [`CourierEvent::details`] (its UTF-8 text), inclusive. Room for a proof of
/// delivery (who signed, a photo's id, a note) while keeping an event far below any packet
/// limit ([`limits::MAX_EVENT_BYTES`]).
pub const MAX_EVENT_DETAILS_BYTES: usize = 4096;

/// Any Locus wire message. New variants are only ever appended, so existing tags keep their
/// meaning within a [`VERSION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Device → server on `couriers/{courier}/locations`.
    Report(Report),
    /// Server → device on `couriers/{courier}/acks`.
    Ack(Ack),
    /// Device → server on `couriers/{courier}/events`.
    Event(CourierEvent),
    /// Edge component → server on `edge/{edge}/batches`.
    EdgeBatch(EdgeBatch),
}

/// Longest idempotency key of an [`EdgeBatch`], in bytes.
pub const MAX_EDGE_KEY_LEN: usize = 128;

/// Longest client token an [`EdgeBatch`] carries, in bytes (Locus tokens are about 150).
pub const MAX_CLIENT_TOKEN_BYTES: usize = 512;

/// Edge → server on `edge/{edge}/batches`: one part of the fixes an HTTP client posted to the
/// edge component (`edge/`) for one courier. A request too large for one MQTT publish is split
/// into `parts` messages that share its `key` and `digest`.
///
/// Edge messages carry no courier seq (that sequence belongs to the courier's own app): the
/// server deduplicates them by `(edge, key, part)` and records a receipt per key in the same
/// commit as the fixes, so a client that retries a key until its receipt says committed gets
/// each fix stored once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeBatch {
    /// The request's idempotency key (valid: [`is_valid_edge_key`]), chosen by the HTTP client
    /// or the edge; unique per edge.
    pub key: String,
    /// Which part this is, 1 ..= `parts`.
    pub part: u16,
    /// How many parts the request was split into (≥ 1).
    pub parts: u16,
    /// A digest of the whole request's fixes (the edge's choice; Locus's edge uses the first 16
    /// bytes of SHA-256 over their wire encoding): the same key with other data is refused
    /// rather than taken for a resend.
    pub digest: [u8; 16],
    /// The courier the fixes are for (valid: [`crate::topics::is_valid_id`]).
    pub courier: String,
    /// The HTTP client's bearer token, checked by the server (at most
    /// [`MAX_CLIENT_TOKEN_BYTES`]): the edge cannot check tokens itself.
    pub token: Option<String>,
    /// The fixes of this part, in the order the client sent them (at least one).
    pub fixes: Vec<Fix>,
}

/// Whether `key` can be an [`EdgeBatch::key`]: 1 to [`MAX_EDGE_KEY_LEN`] bytes of ASCII
/// letters, digits, `-`, `_`, `.` and `:` (a UUID or 32 hex digits fit).
pub fn is_valid_edge_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_EDGE_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// An [`EdgeBatch::digest`] as 32 lowercase hex digits: how the edge's 202, locusd's receipt
/// and the JSON view show it, so a client can tell its own request's receipt from another's.
pub fn digest_hex(digest: &[u8; 16]) -> String {
    use core::fmt::Write as _;
    let mut hex = String::with_capacity(32);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

impl EdgeBatch {
    /// What makes the server refuse this message as a whole (dead-letter reason
    /// `bad_edge_batch`), or `None` when it is well formed. Each fix is checked on its own, as
    /// in a report.
    pub fn problem(&self) -> Option<&'static str> {
        if !is_valid_edge_key(&self.key) {
            return Some("key must be 1-128 characters of letters, digits, - _ . :");
        }
        if self.parts == 0 || self.part == 0 || self.part > self.parts {
            return Some("part must be 1 ..= parts");
        }
        if !crate::topics::is_valid_id(&self.courier) {
            return Some("courier must be 1-64 characters of letters, digits, - _ . :");
        }
        if self.token.as_ref().is_some_and(|t| t.len() > MAX_CLIENT_TOKEN_BYTES) {
            return Some("token is longer than 512 bytes");
        }
        if self.fixes.is_empty() {
            return Some("a part has at least one fix");
        }
        None
    }
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

/// Device → server on `couriers/{courier}/events`: something that happened to an order the
/// courier carries. Shares the courier's report seq space, so the same ack watermark covers it
/// and the SDK's outbox keeps it until acked. The courier is the topic's, as for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourierEvent {
    /// The courier's sequence number, from the same sequence as [`Report::seq`] (≥ 1; one
    /// sequence per courier for reports and events together), so acks and dedup treat events
    /// and reports alike, and an event numbered after a report happened after its fixes.
    pub seq: u64,
    /// The order (valid: [`crate::topics::is_valid_id`]).
    pub order: String,
    /// What happened.
    pub kind: CourierEventKind,
    /// The sender's id for this event (valid: [`crate::topics::is_valid_id`]), unique per
    /// order: the server takes an event id it has seen for the order as a resend and changes
    /// nothing.
    pub event_id: String,
    /// When it happened, device time, Unix milliseconds.
    pub at_ms: u64,
    /// Optional JSON text (a proof of delivery, for example), at most
    /// [`MAX_EVENT_DETAILS_BYTES`] bytes; kept as text so the server stores it as sent.
    pub details: Option<String>,
}

/// What happened to an order, as a courier reports it. On the wire, the variant's index; new
/// kinds are only ever appended (a server that does not know one refuses the event as
/// `malformed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CourierEventKind {
    /// The courier has the order (index 0).
    PickedUp,
    /// The customer has the order (index 1).
    Delivered,
}

impl CourierEventKind {
    /// The name in JSON and in the server's order lifecycle (`picked_up`, `delivered`).
    pub fn as_str(self) -> &'static str {
        match self {
            CourierEventKind::PickedUp => "picked_up",
            CourierEventKind::Delivered => "delivered",
        }
    }
}

impl core::fmt::Display for CourierEventKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is wrong with a decoded [`CourierEvent`] ([`CourierEvent::problem`]): the server
/// refuses the event as a whole, with [`EventProblem::code`] as its dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventProblem {
    /// `seq` is 0 (sequence numbers start at 1).
    ZeroSeq,
    /// `order` is not a valid id.
    BadOrderId,
    /// `event_id` is not a valid id.
    BadEventId,
    /// `details` is longer than [`MAX_EVENT_DETAILS_BYTES`].
    DetailsTooLong {
        /// Its length in bytes.
        bytes: usize,
    },
    /// `details` is not JSON: what the parser said.
    DetailsNotJson(String),
}

impl EventProblem {
    /// The dead-letter reason, a stable code: `zero_seq` and `bad_order_id` as for reports,
    /// `bad_event_id`, and `bad_event_details` for details too long or not JSON.
    pub fn code(&self) -> &'static str {
        match self {
            EventProblem::ZeroSeq => "zero_seq",
            EventProblem::BadOrderId => "bad_order_id",
            EventProblem::BadEventId => "bad_event_id",
            EventProblem::DetailsTooLong { .. } | EventProblem::DetailsNotJson(_) => {
                "bad_event_details"
            }
        }
    }
}

/// The rule a valid id follows, for messages that name an id refused.
const ID_RULE: &str = "1-64 characters of letters, digits, - _ . :";

impl core::fmt::Display for EventProblem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EventProblem::ZeroSeq => write!(f, "seq must be at least 1"),
            EventProblem::BadOrderId => write!(f, "order must be {ID_RULE}"),
            EventProblem::BadEventId => write!(f, "event_id must be {ID_RULE}"),
            EventProblem::DetailsTooLong { bytes } => {
                write!(f, "details are {bytes} bytes, at most {MAX_EVENT_DETAILS_BYTES}")
            }
            EventProblem::DetailsNotJson(error) => write!(f, "details are not JSON: {error}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EventProblem {}

impl CourierEvent {
    /// What makes the server refuse this event as a whole, or `None` when it is well formed:
    /// `seq` 0, an `order` or `event_id` that is not a valid id, `details` too long or not JSON
    /// ([`details_problem`]). The first problem found, in that order. Whether the order's
    /// lifecycle accepts the event (is the order assigned to this courier, in which status) is
    /// the server's to decide, not a problem of the message.
    pub fn problem(&self) -> Option<EventProblem> {
        if self.seq == 0 {
            return Some(EventProblem::ZeroSeq);
        }
        if !crate::topics::is_valid_id(&self.order) {
            return Some(EventProblem::BadOrderId);
        }
        if !crate::topics::is_valid_id(&self.event_id) {
            return Some(EventProblem::BadEventId);
        }
        self.details.as_deref().and_then(details_problem)
    }
}

/// What is wrong with an event's details text: longer than [`MAX_EVENT_DETAILS_BYTES`], or not
/// one JSON value (as `serde_json` reads JSON: nesting at most 128 deep, numbers that fit an
/// `f64`). `None` when the text is valid details.
pub fn details_problem(details: &str) -> Option<EventProblem> {
    if details.len() > MAX_EVENT_DETAILS_BYTES {
        return Some(EventProblem::DetailsTooLong { bytes: details.len() });
    }
    // `IgnoredAny` checks the syntax without building a value.
    serde_json::from_str::<serde::de::IgnoredAny>(details)
        .err()
        .map(|e| EventProblem::DetailsNotJson(alloc::string::ToString::to_string(&e)))
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
            Message::Event(_) => "event",
            Message::EdgeBatch(_) => "edge_batch",
        }
    }
}

/// Encodes a message: the version byte, then postcard.
pub fn encode(message: &Message) -> Vec<u8> {
    versioned(message, 32)
}

/// Decodes any message, refusing unknown versions, truncation and trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    unversioned(bytes)
}

/// The version byte, then `value` in postcard.
fn versioned<T: Serialize>(value: &T, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.push(VERSION);
    // Serializing into a Vec cannot fail for these types: they hold no maps or unsized sequences
    // postcard refuses, and allocation failure aborts.
    postcard::to_extend(value, out).expect("postcard encoding into a Vec is infallible")
}

/// What [`versioned`] wrote, refusing unknown versions, truncation and trailing bytes.
fn unversioned<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(WireError::Malformed)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(value)
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

/// Encodes an order event (see [`encode`]).
pub fn encode_event(event: &CourierEvent) -> Vec<u8> {
    // Cloning keeps `Message` owning its data, as for reports; events are small and rare.
    encode(&Message::Event(event.clone()))
}

/// Decodes bytes that must be an order event.
pub fn decode_event(bytes: &[u8]) -> Result<CourierEvent, WireError> {
    match decode(bytes)? {
        Message::Event(event) => Ok(event),
        other => Err(WireError::UnexpectedKind(other.kind())),
    }
}

/// Encodes an edge batch (see [`encode`]).
pub fn encode_edge_batch(batch: &EdgeBatch) -> Vec<u8> {
    encode(&Message::EdgeBatch(batch.clone()))
}

/// Decodes bytes that must be an edge batch.
pub fn decode_edge_batch(bytes: &[u8]) -> Result<EdgeBatch, WireError> {
    match decode(bytes)? {
        Message::EdgeBatch(batch) => Ok(batch),
        other => Err(WireError::UnexpectedKind(other.kind())),
    }
}

/// Server → readers on `fixes-wire/{courier}`: the live fix stream in the wire format, the
/// same fixes as the JSON stream on `fixes/{courier}` (one message per courier per commit).
/// Not a [`Message`]: the topic says what it is. Encoded as the version byte, then postcard
/// ([`encode_fix_batch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixBatch {
    /// The courier.
    pub courier: String,
    /// Its fixes from one commit, oldest first.
    pub fixes: Vec<CommittedFix>,
}

/// A fix as committed: as the device sent it (or as plugins changed it), with the attributes
/// plugins added and when the server received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedFix {
    /// The fix.
    pub fix: Fix,
    /// Attributes added by plugins, `(name, value)`, in the order they were added.
    pub attributes: Vec<(String, String)>,
    /// Server receive time, Unix milliseconds.
    pub received_ms: u64,
}

/// Encodes a message of the wire-format fix stream: the version byte, then postcard.
pub fn encode_fix_batch(batch: &FixBatch) -> Vec<u8> {
    versioned(batch, 16 + batch.fixes.len() * 24)
}

/// Decodes a message of the wire-format fix stream, refusing unknown versions, truncation and
/// trailing bytes.
pub fn decode_fix_batch(bytes: &[u8]) -> Result<FixBatch, WireError> {
    unversioned(bytes)
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

    #[test]
    fn a_fix_batch_round_trips_and_refuses_what_is_not_one() {
        let batch = FixBatch {
            courier: "c1".into(),
            fixes: vec![CommittedFix {
                fix: Fix::from_degrees(1_700_000_000_000, 41.3851, 2.1734),
                attributes: vec![("zone".into(), "centre".into())],
                received_ms: 1_700_000_000_420,
            }],
        };
        let bytes = encode_fix_batch(&batch);
        // The example in WIRE.md.
        let hex: String = bytes.iter().map(|b| alloc::format!("{b:02x}")).collect();
        let documented = "01 02 6331 01 80d095ffbc31 f0f5d68a03 e089dd14 00 01 047a6f6e65 \
                          0663656e747265 a4d395ffbc31";
        assert_eq!(hex, documented.replace(' ', ""));
        assert_eq!(decode_fix_batch(&bytes), Ok(batch));
        assert_eq!(decode_fix_batch(&[]), Err(WireError::Empty));
        assert_eq!(decode_fix_batch(&[9, 0]), Err(WireError::UnknownVersion(9)));
        assert!(decode_fix_batch(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_fix_batch(&longer), Err(WireError::TrailingBytes(1)));
    }
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

    fn event(details: Option<&str>) -> CourierEvent {
        CourierEvent {
            seq: 7,
            order: "order-42".into(),
            kind: CourierEventKind::Delivered,
            event_id: "e-1".into(),
            at_ms: 1_763_700_000_000,
            details: details.map(Into::into),
        }
    }

    #[test]
    fn events_round_trip_as_message_two_and_are_no_other_kind() {
        for event in [event(None), event(Some(r#"{"signed_by":"Ana"}"#))] {
            let bytes = encode_event(&event);
            assert_eq!(&bytes[..3], &[VERSION, 2, 7], "version, Message::Event, seq");
            assert_eq!(decode_event(&bytes), Ok(event.clone()));
            assert_eq!(decode(&bytes).map(|m| m.kind()), Ok("event"));
            assert_eq!(decode_report(&bytes), Err(WireError::UnexpectedKind("event")));
            assert_eq!(decode_ack(&bytes), Err(WireError::UnexpectedKind("event")));
        }
        assert_eq!(
            decode_event(&encode_report(&one_fix_report(1))),
            Err(WireError::UnexpectedKind("report"))
        );
        assert_eq!(
            decode_event(&encode_ack(Ack { seq: 1 })),
            Err(WireError::UnexpectedKind("ack"))
        );
    }

    fn edge_batch() -> EdgeBatch {
        EdgeBatch {
            key: "k-1".into(),
            part: 1,
            parts: 2,
            digest: [7; 16],
            courier: "c-1".into(),
            token: Some("locus2.x".into()),
            fixes: one_fix_report(1).fixes,
        }
    }

    #[test]
    fn edge_batches_round_trip_as_message_three_and_are_no_other_kind() {
        let bytes = encode_edge_batch(&edge_batch());
        assert_eq!(&bytes[..3], &[VERSION, 3, 3], "version, Message::EdgeBatch, key length");
        assert_eq!(decode_edge_batch(&bytes), Ok(edge_batch()));
        assert_eq!(decode_report(&bytes), Err(WireError::UnexpectedKind("edge_batch")));
        assert_eq!(
            decode_edge_batch(&encode_report(&one_fix_report(1))),
            Err(WireError::UnexpectedKind("report"))
        );
    }

    #[test]
    fn edge_batch_problems_name_the_field() {
        assert_eq!(edge_batch().problem(), None);
        let problem = |b: EdgeBatch| b.problem().unwrap_or("none");
        assert!(problem(EdgeBatch { key: "a b".into(), ..edge_batch() }).starts_with("key"));
        assert!(problem(EdgeBatch { key: "k".repeat(129), ..edge_batch() }).starts_with("key"));
        assert_eq!(problem(EdgeBatch { key: "k".repeat(128), ..edge_batch() }), "none");
        assert!(problem(EdgeBatch { part: 0, ..edge_batch() }).starts_with("part"));
        assert!(problem(EdgeBatch { part: 3, ..edge_batch() }).starts_with("part"));
        assert!(problem(EdgeBatch { courier: "a/b".into(), ..edge_batch() }).starts_with("courier"));
        let token = Some("t".repeat(MAX_CLIENT_TOKEN_BYTES + 1));
        assert!(problem(EdgeBatch { token, ..edge_batch() }).starts_with("token"));
        assert!(problem(EdgeBatch { fixes: vec![], ..edge_batch() }).contains("fix"));
    }

    #[test]
    fn event_kinds_are_indexes_and_unknown_ones_are_malformed() {
        let mut bytes =
            encode_event(&CourierEvent { kind: CourierEventKind::PickedUp, ..event(None) });
        // version, tag, seq, order (length + 8 bytes), then the kind.
        let kind_at = 3 + 1 + "order-42".len();
        assert_eq!(bytes[kind_at], 0);
        bytes[kind_at] = 1;
        assert_eq!(decode_event(&bytes).map(|e| e.kind), Ok(CourierEventKind::Delivered));
        bytes[kind_at] = 2;
        assert!(matches!(decode_event(&bytes), Err(WireError::Malformed(_))));
        assert_eq!(CourierEventKind::PickedUp.as_str(), "picked_up");
        assert_eq!(CourierEventKind::Delivered.as_str(), "delivered");
    }

    #[test]
    fn event_problems_name_the_first_thing_wrong() {
        assert_eq!(event(None).problem(), None);
        assert_eq!(event(Some("[1, 2.5, \"x\", null]")).problem(), None);
        let problem = |e: CourierEvent| e.problem().map(|p| p.code());
        assert_eq!(problem(CourierEvent { seq: 0, ..event(None) }), Some("zero_seq"));
        assert_eq!(
            problem(CourierEvent { order: "a/b".into(), ..event(None) }),
            Some("bad_order_id")
        );
        assert_eq!(
            problem(CourierEvent { order: String::new(), ..event(None) }),
            Some("bad_order_id")
        );
        let long_id = "e".repeat(crate::topics::MAX_ID_LEN + 1);
        assert_eq!(
            problem(CourierEvent { event_id: long_id, ..event(None) }),
            Some("bad_event_id")
        );
        for not_json in ["", "{", "{\"a\":1} {}", "photo.jpg", "{'a':1}"] {
            let p = event(Some(not_json)).problem();
            assert!(matches!(p, Some(EventProblem::DetailsNotJson(_))), "{not_json:?}: {p:?}");
        }
        // The bound is inclusive, counted in bytes of the text.
        let fits = alloc::format!("\"{}\"", "é".repeat((MAX_EVENT_DETAILS_BYTES - 2) / 2));
        assert_eq!(fits.len(), MAX_EVENT_DETAILS_BYTES);
        assert_eq!(event(Some(&fits)).problem(), None);
        let over = alloc::format!("\"{}\"", "x".repeat(MAX_EVENT_DETAILS_BYTES - 1));
        assert_eq!(
            event(Some(&over)).problem(),
            Some(EventProblem::DetailsTooLong { bytes: MAX_EVENT_DETAILS_BYTES + 1 })
        );
        assert_eq!(
            alloc::string::ToString::to_string(&EventProblem::DetailsTooLong { bytes: 5000 }),
            "details are 5000 bytes, at most 4096"
        );
    }
}
