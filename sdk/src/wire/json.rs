//! The JSON view of wire messages, for people, tools and other languages.
//!
//! Units are the natural ones (degrees, metres, m/s, degrees, percent); converting to the wire
//! rounds to its fixed point and refuses values outside their documented ranges (never wraps
//! them). Unknown JSON keys are refused so typos do not silently drop data.
//!
//! ```json
//! {"seq":1,"fixes":[{"ts":1763700000000,"lat":41.3851,"lon":2.1734}]}   // a report
//! {"seq":1}                                                            // an ack
//! ```

use super::{
    battery_pct_checked, heading_deg_to_cdeg, latitude_to_e7, longitude_to_e7, metres_to_cm, Ack,
    Fix, FixDetails, Message, Report,
};
use crate::topics::is_valid_id;
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
    /// Latitude, degrees (-90..=90).
    pub lat: f64,
    /// Longitude, degrees (-180..=180).
    pub lon: f64,
    /// Horizontal accuracy, metres (0..=42949672.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Ground speed, metres per second (0..=42949672.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Heading, degrees clockwise from true north (0 <= heading < 360).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    /// Battery level, percent (0..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
    /// Order id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

/// A JSON value outside the range the wire format documents for it (see `WIRE.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonValueError {
    /// The JSON field, for example `fixes[2].lat`.
    pub field: String,
    /// What is wrong with it.
    pub problem: &'static str,
    /// The server's dead-letter reason for the same problem (`coordinates_out_of_range`,
    /// `detail_out_of_range`, `bad_order_id`), so tools that convert JSON report it the same way.
    pub code: &'static str,
}

impl core::fmt::Display for JsonValueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for JsonValueError {}

const COORDINATES: &str = "coordinates_out_of_range";
const DETAIL: &str = "detail_out_of_range";

impl FixJson {
    /// Converts to the wire form, refusing (never wrapping or clamping) any value outside its
    /// documented range: latitude -90..=90, longitude -180..=180, accuracy and speed
    /// 0..=42949672.95, heading 0 <= h < 360, battery 0..=100, order a valid id. The device time
    /// is not checked here: its window is the server's configuration.
    pub fn to_wire(&self, index: usize) -> Result<Fix, JsonValueError> {
        let error = |name: &str, problem: &'static str, code: &'static str| JsonValueError {
            field: alloc::format!("fixes[{index}].{name}"),
            problem,
            code,
        };
        let lat_e7 = latitude_to_e7(self.lat)
            .ok_or_else(|| error("lat", "must be a number of degrees in -90..=90", COORDINATES))?;
        let lon_e7 = longitude_to_e7(self.lon).ok_or_else(|| {
            error("lon", "must be a number of degrees in -180..=180", COORDINATES)
        })?;
        let accuracy_cm = self
            .accuracy
            .map(|m| {
                metres_to_cm(m)
                    .ok_or_else(|| error("accuracy", "must be 0..=42949672.95 m", DETAIL))
            })
            .transpose()?;
        let speed_cm_s = self
            .speed
            .map(|v| {
                metres_to_cm(v).ok_or_else(|| error("speed", "must be 0..=42949672.95 m/s", DETAIL))
            })
            .transpose()?;
        let heading_cdeg = self
            .heading
            .map(|deg| {
                heading_deg_to_cdeg(deg).ok_or_else(|| {
                    error("heading", "must be degrees with 0 <= heading < 360", DETAIL)
                })
            })
            .transpose()?;
        let battery_pct = self
            .battery
            .map(|pct| {
                battery_pct_checked(pct).ok_or_else(|| error("battery", "must be 0..=100", DETAIL))
            })
            .transpose()?;
        if self.order.as_deref().is_some_and(|o| !is_valid_id(o)) {
            let problem = "must be 1-64 characters of letters, digits, - _ . :";
            return Err(error("order", problem, "bad_order_id"));
        }
        let details = FixDetails {
            accuracy_cm,
            speed_cm_s,
            heading_cdeg,
            battery_pct,
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
