//! The JSON view of wire messages, for people, tools and other languages.
//!
//! Units are the natural ones (degrees, metres, m/s, degrees, percent); converting to the wire
//! rounds to its fixed point. Unknown JSON keys are refused so typos do not silently drop data.
//!
//! ```json
//! {"seq":1,"fixes":[{"ts":1763700000000,"lat":41.3851,"lon":2.1734}]}   // a report
//! {"seq":1}                                                            // an ack
//! ```

use super::{degrees_to_e7, Ack, Fix, FixDetails, Message, Report};
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Any message as JSON. A report is recognised by its `fixes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageJson {
    /// See [`ReportJson`].
    Report(ReportJson),
    /// See [`AckJson`].
    Ack(AckJson),
}

/// A report as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportJson {
    /// Per-courier sequence number.
    pub seq: u64,
    /// The fixes.
    pub fixes: Vec<FixJson>,
}

/// An ack as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckJson {
    /// Highest committed sequence number.
    pub seq: u64,
}

/// A fix as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixJson {
    /// Device time, Unix milliseconds.
    pub ts: u64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Horizontal accuracy, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Ground speed, metres per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Heading, degrees clockwise from true north.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    /// Battery level, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
    /// Order id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

/// A JSON value that does not fit the wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonValueError {
    /// The JSON field, for example `fixes[2].lat`.
    pub field: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl core::fmt::Display for JsonValueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for JsonValueError {}

fn field_error(index: usize, name: &str, problem: &'static str) -> JsonValueError {
    JsonValueError { field: alloc::format!("fixes[{index}].{name}"), problem }
}

/// An angle in 0..360 (`rem_euclid` needs `std`).
fn normalize_degrees(deg: f64) -> f64 {
    let r = deg % 360.0;
    if r < 0.0 {
        r + 360.0
    } else {
        r
    }
}

/// Scales a non-negative quantity to the wire's integer unit.
fn scaled_unsigned<T: TryFrom<u64>>(value: f64, scale: f64) -> Option<T> {
    let scaled = super::round_half_away(value * scale);
    if !(scaled.is_finite() && scaled >= 0.0 && scaled <= u64::MAX as f64) {
        return None;
    }
    T::try_from(scaled as u64).ok()
}

impl FixJson {
    /// Converts to the wire form. Values must fit the wire's types; whether they are plausible
    /// (on the globe, recent) is the server's validation.
    pub fn to_wire(&self, index: usize) -> Result<Fix, JsonValueError> {
        let lat_e7 = degrees_to_e7(self.lat)
            .ok_or_else(|| field_error(index, "lat", "not a finite number of degrees in ±214"))?;
        let lon_e7 = degrees_to_e7(self.lon)
            .ok_or_else(|| field_error(index, "lon", "not a finite number of degrees in ±214"))?;
        let accuracy_cm = self
            .accuracy
            .map(|m| scaled_unsigned(m, 100.0))
            .map(|v| v.ok_or_else(|| field_error(index, "accuracy", "must be 0..42949672 m")))
            .transpose()?;
        let speed_cm_s = self
            .speed
            .map(|v| scaled_unsigned(v, 100.0))
            .map(|v| v.ok_or_else(|| field_error(index, "speed", "must be 0..42949672 m/s")))
            .transpose()?;
        let heading_cdeg = self
            .heading
            .map(|deg| scaled_unsigned::<u16>(normalize_degrees(deg), 100.0).map(|c| c % 36_000))
            .map(|v| v.ok_or_else(|| field_error(index, "heading", "must be a finite number")))
            .transpose()?;
        let details = FixDetails {
            accuracy_cm,
            speed_cm_s,
            heading_cdeg,
            battery_pct: self.battery,
            order: self.order.clone(),
        };
        Ok(Fix {
            ts_ms: self.ts,
            lat_e7,
            lon_e7,
            details: (details != FixDetails::default()).then_some(details),
        })
    }
}

impl From<&Fix> for FixJson {
    fn from(fix: &Fix) -> Self {
        let details = fix.details.clone().unwrap_or_default();
        FixJson {
            ts: fix.ts_ms,
            lat: fix.lat(),
            lon: fix.lon(),
            accuracy: details.accuracy_cm.map(|cm| f64::from(cm) / 100.0),
            speed: details.speed_cm_s.map(|cm| f64::from(cm) / 100.0),
            heading: details.heading_cdeg.map(|c| f64::from(c) / 100.0),
            battery: details.battery_pct,
            order: details.order,
        }
    }
}

impl TryFrom<&ReportJson> for Report {
    type Error = JsonValueError;

    fn try_from(json: &ReportJson) -> Result<Self, Self::Error> {
        let fixes = json
            .fixes
            .iter()
            .enumerate()
            .map(|(i, fix)| fix.to_wire(i))
            .collect::<Result<_, _>>()?;
        Ok(Report { seq: json.seq, fixes })
    }
}

impl From<&Report> for ReportJson {
    fn from(report: &Report) -> Self {
        ReportJson { seq: report.seq, fixes: report.fixes.iter().map(FixJson::from).collect() }
    }
}

impl TryFrom<&MessageJson> for Message {
    type Error = JsonValueError;

    fn try_from(json: &MessageJson) -> Result<Self, Self::Error> {
        Ok(match json {
            MessageJson::Report(report) => Message::Report(report.try_into()?),
            MessageJson::Ack(ack) => Message::Ack(Ack { seq: ack.seq }),
        })
    }
}

impl From<&Message> for MessageJson {
    fn from(message: &Message) -> Self {
        match message {
            Message::Report(report) => MessageJson::Report(report.into()),
            Message::Ack(ack) => MessageJson::Ack(AckJson { seq: ack.seq }),
        }
    }
}
