//! The body of a POST of fixes, checked whole and turned into wire fixes.
//!
//! Enters: the body's bytes (already read within the size limit, [`body_limit`]), its format,
//! and the most fixes a request may hold. Leaves: every fix as a [`Fix`], or the 400 / 413
//! naming the first thing wrong. Nothing is published until every fix here has passed.
//!
//! JSON is either one fix object or `{"fixes": [fix, ...]}`; which one is decided by the
//! top-level keys (an object with `fixes` is a batch), so errors name fields of the shape the
//! client meant. Fixes are `locus_sdk::wire::json::FixJson` (unknown keys refused) and convert
//! with `FixJson::to_wire`, the same rules every other JSON entry into Locus uses. Fields are
//! named as paths into the body: `fixes[3].lat` in a batch, `lat` for a single fix.
//!
//! A wire body is one `locus_sdk::wire::Report` (its `seq` is ignored: the edge's messages
//! are deduplicated by idempotency key, not by a courier's sequence), each fix checked with
//! `Fix::out_of_range`.
//!
//! Device times are not checked here: their window is locusd's configuration, and locusd
//! dead-letters fixes outside it.

use crate::config::Config;
use crate::errors::EdgeError;
use crate::headers::BodyFormat;
use locus_sdk::wire::json::{FixJson, JsonValueError};
use locus_sdk::wire::{decode_report, limits, Fix};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::cell::Cell;
use std::fmt;

/// The largest body of `format` this edge reads, and what bounds it. A wire body never needs
/// more bytes than `max_fixes_per_request` fixes take, so it is bounded tighter: memory stays
/// proportional to the fixes allowed, not to the body limit.
pub fn body_limit(format: BodyFormat, config: &Config) -> (usize, &'static str) {
    match format {
        BodyFormat::Json => (config.max_body_bytes, "max_body_bytes"),
        BodyFormat::Wire => {
            let wire = limits::max_report_bytes(config.max_fixes_per_request);
            if wire < config.max_body_bytes {
                (wire, "the largest wire report of max_fixes_per_request fixes")
            } else {
                (config.max_body_bytes, "max_body_bytes")
            }
        }
    }
}

/// The 413 of a body over `limit` bytes.
pub fn body_too_large(limit: usize, why: &'static str) -> EdgeError {
    EdgeError::TooLarge {
        message: format!("the body is larger than {limit} bytes ({why})"),
        field: "body",
        limit,
    }
}

/// Every fix of `body`, checked, in the order sent.
pub fn fixes(format: BodyFormat, body: &[u8], max_fixes: usize) -> Result<Vec<Fix>, EdgeError> {
    let fixes = match format {
        BodyFormat::Json => json_fixes(body, max_fixes)?,
        BodyFormat::Wire => wire_fixes(body)?,
    };
    if fixes.is_empty() {
        return Err(EdgeError::bad_request("fixes", "no fixes: send at least one"));
    }
    if fixes.len() > max_fixes {
        return Err(too_many_fixes(max_fixes));
    }
    Ok(fixes)
}

fn too_many_fixes(max_fixes: usize) -> EdgeError {
    EdgeError::TooLarge {
        message: format!(
            "more than {max_fixes} fixes in one request (max_fixes_per_request): \
             split them over several requests"
        ),
        field: "fixes",
        limit: max_fixes,
    }
}

fn json_fixes(body: &[u8], max_fixes: usize) -> Result<Vec<Fix>, EdgeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let is_batch = (&mut de).deserialize_map(HasFixesKey).and_then(|b| de.end().map(|()| b));
    let is_batch = is_batch.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => EdgeError::bad_request(
            "body",
            "the body must be a JSON object: one fix {\"ts\": ..., \"lat\": ..., \"lon\": ...} \
             or {\"fixes\": [fix, ...]}",
        ),
        _ => EdgeError::bad_request("body", format!("the body is not JSON: {e}")),
    })?;

    if is_batch {
        let too_many = Cell::new(false);
        let mut track = serde_path_to_error::Track::new();
        let mut de = serde_json::Deserializer::from_slice(body);
        let seed = BatchSeed { max_fixes, too_many: &too_many };
        let parsed = seed
            .deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track))
            .and_then(|fixes| de.end().map(|()| fixes));
        let json = match parsed {
            Ok(json) => json,
            Err(_) if too_many.get() => return Err(too_many_fixes(max_fixes)),
            Err(e) => return Err(json_error(&track.path().to_string(), &e)),
        };
        json.iter().enumerate().map(|(i, fix)| fix.to_wire(i).map_err(value_error)).collect()
    } else {
        let mut de = serde_json::Deserializer::from_slice(body);
        let fix: FixJson = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| json_error(&e.path().to_string(), e.inner()))?;
        // The whole body was read once already (HasFixesKey), so nothing can trail it; ending
        // anyway keeps this branch correct on its own.
        de.end().map_err(|e| json_error(".", &e))?;
        // A single fix is the body itself: its fields are `lat`, not `fixes[0].lat`.
        let fix = fix.to_wire(0).map_err(|mut e| {
            if let Some(field) = e.field.strip_prefix("fixes[0].") {
                e.field = field.to_string();
            }
            value_error(e)
        })?;
        Ok(vec![fix])
    }
}

/// A JSON type or shape error at `path` (serde_path_to_error's, `.` for the top level). Missing
/// and unknown keys are reported by serde at their object, so their name is added to the field.
fn json_error(path: &str, error: &serde_json::Error) -> EdgeError {
    let message = error.to_string();
    let named = ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    let path = (path != ".").then_some(path);
    let field = match (path, named) {
        (Some(path), Some(name)) if !path.ends_with(name) => format!("{path}.{name}"),
        (Some(path), _) => path.to_string(),
        (None, Some(name)) => name.to_string(),
        (None, None) => "body".to_string(),
    };
    EdgeError::bad_request(field.clone(), format!("{field}: {message}"))
}

fn value_error(e: JsonValueError) -> EdgeError {
    EdgeError::BadRequest {
        message: format!("{}: {}", e.field, e.problem),
        field: e.field,
        code: Some(e.code),
    }
}

fn wire_fixes(body: &[u8]) -> Result<Vec<Fix>, EdgeError> {
    let report = decode_report(body).map_err(|e| EdgeError::BadRequest {
        message: format!("the body is not a Locus wire report: {e}"),
        field: "body".into(),
        code: Some(e.code()),
    })?;
    for (i, fix) in report.fixes.iter().enumerate() {
        if let Some(name) = fix.out_of_range() {
            let (problem, code) = match name {
                "lat" => {
                    ("lat_e7 must be in -900000000..=900000000 (-90..=90 degrees)", COORDINATES)
                }
                "lon" => {
                    ("lon_e7 must be in -1800000000..=1800000000 (-180..=180 degrees)", COORDINATES)
                }
                "heading" => ("heading_cdeg must be at most 35999 (359.99 degrees)", DETAIL),
                "battery" => ("battery_pct must be at most 100", DETAIL),
                "order" => {
                    ("order must be 1-64 characters of letters, digits, - _ . :", "bad_order_id")
                }
                _ => ("out of range", DETAIL),
            };
            let field = format!("fixes[{i}].{name}");
            return Err(EdgeError::BadRequest {
                message: format!("{field}: {problem}"),
                field,
                code: Some(code),
            });
        }
    }
    Ok(report.fixes)
}

// locusd's dead-letter reasons for the same problems (as `locus_sdk::wire::json` uses them).
const COORDINATES: &str = "coordinates_out_of_range";
const DETAIL: &str = "detail_out_of_range";

/// Reads a top-level JSON object only to tell whether it has a `fixes` key, without keeping
/// its keys or values (a body of a million keys costs no memory here).
struct HasFixesKey;

impl<'de> Visitor<'de> for HasFixesKey {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(IsFixes(is_fixes)) = map.next_key()? {
            found |= is_fixes;
            map.next_value::<IgnoredAny>()?;
        }
        Ok(found)
    }
}

/// Whether a key is `fixes`.
struct IsFixes(bool);

impl<'de> de::Deserialize<'de> for IsFixes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = IsFixes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<IsFixes, E> {
                Ok(IsFixes(key == "fixes"))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// `{"fixes": [FixJson, ...]}` with no other key, stopping at the first fix past
/// `max_fixes` (and setting `too_many`) rather than collecting a body's worth of them.
struct BatchSeed<'a> {
    max_fixes: usize,
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Vec<FixJson>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = Vec<FixJson>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object {\"fixes\": [fix, ...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fixes = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "fixes" {
                return Err(de::Error::unknown_field(&key, &["fixes"]));
            }
            if fixes.is_some() {
                return Err(de::Error::duplicate_field("fixes"));
            }
            let seed = FixesSeed { max_fixes: self.max_fixes, too_many: self.too_many };
            fixes = Some(map.next_value_seed(seed)?);
        }
        fixes.ok_or_else(|| de::Error::missing_field("fixes"))
    }
}

/// The `fixes` array of [`BatchSeed`].
struct FixesSeed<'a> {
    max_fixes: usize,
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for FixesSeed<'_> {
    type Value = Vec<FixJson>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for FixesSeed<'_> {
    type Value = Vec<FixJson>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of fixes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut fixes = Vec::new();
        while let Some(fix) = seq.next_element::<FixJson>()? {
            if fixes.len() == self.max_fixes {
                self.too_many.set(true);
                return Err(de::Error::custom("too many fixes"));
            }
            fixes.push(fix);
        }
        Ok(fixes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::wire::{encode_report, FixDetails, Report};

    fn json(body: &str) -> Result<Vec<Fix>, EdgeError> {
        fixes(BodyFormat::Json, body.as_bytes(), 5)
    }

    /// The field a bad request names, or the error itself when it is something else.
    fn field(result: Result<Vec<Fix>, EdgeError>) -> String {
        match result {
            Err(EdgeError::BadRequest { field, .. }) => field,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn one_fix_or_a_batch_become_wire_fixes() {
        let one = json(r#"{"ts": 1763700000000, "lat": 41.3851, "lon": 2.1734}"#).unwrap();
        assert_eq!(one, vec![Fix::from_degrees(1_763_700_000_000, 41.3851, 2.1734)]);
        let batch = json(
            r#"{"fixes": [{"ts": 1, "lat": 1.5, "lon": -2.5},
                          {"ts": 2, "lat": 0, "lon": 0, "heading": 90, "battery": 50, "order": "o1"}]}"#,
        )
        .unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0], Fix::from_degrees(1, 1.5, -2.5));
        let details = batch[1].details.clone().unwrap_or_default();
        assert_eq!(details.heading_cdeg, Some(9000));
        assert_eq!(details.battery_pct, Some(50));
        assert_eq!(batch[1].order(), Some("o1"));
    }

    #[test]
    fn type_errors_name_the_field_in_a_batch() {
        let bad_lat =
            r#"{"fixes": [{"ts": 1, "lat": 1, "lon": 1}, {"ts": 2, "lat": "x", "lon": 1}]}"#;
        let e = json(bad_lat).unwrap_err();
        assert_eq!(field(Err(e.clone())), "fixes[1].lat");
        assert!(e.to_string().starts_with("fixes[1].lat: invalid type: string \"x\""), "{e}");
        let missing_ts = r#"{"fixes": [{"ts": 1, "lat": 1, "lon": 1}, {"lat": 1, "lon": 1}]}"#;
        assert_eq!(field(json(missing_ts)), "fixes[1].ts");
        let unknown = r#"{"fixes": [{"ts": 1, "lat": 1, "lon": 1, "alt": 3}]}"#;
        assert_eq!(field(json(unknown)), "fixes[0].alt");
        assert_eq!(field(json(r#"{"fixes": [], "seq": 1}"#)), "seq");
        assert_eq!(field(json(r#"{"fixes": {"ts": 1}}"#)), "fixes");
        assert_eq!(field(json(r#"{"fixes": [{"ts": -1, "lat": 1, "lon": 1}]}"#)), "fixes[0].ts");
    }

    #[test]
    fn type_errors_name_the_field_of_a_single_fix() {
        assert_eq!(field(json(r#"{"ts": 1, "lat": "x", "lon": 1}"#)), "lat");
        assert_eq!(field(json(r#"{"lat": 1, "lon": 1}"#)), "ts");
        assert_eq!(field(json(r#"{"ts": 1, "lat": 1, "lon": 1, "speed_kmh": 3}"#)), "speed_kmh");
        assert_eq!(field(json(r#"{"ts": 1, "lat": 91, "lon": 1}"#)), "lat");
    }

    #[test]
    fn values_out_of_range_name_the_field_and_locusd_code() {
        let e =
            json(r#"{"fixes": [{"ts": 1, "lat": 1, "lon": 1}, {"ts": 1, "lat": 1, "lon": 181}]}"#)
                .unwrap_err();
        assert_eq!(
            e,
            EdgeError::BadRequest {
                message: "fixes[1].lon: must be a number of degrees in -180..=180".into(),
                field: "fixes[1].lon".into(),
                code: Some("coordinates_out_of_range"),
            }
        );
        let e = json(r#"{"ts": 1, "lat": 1, "lon": 1, "battery": 101}"#).unwrap_err();
        let EdgeError::BadRequest { field, code, .. } = e else { panic!("{e:?}") };
        assert_eq!((field.as_str(), code), ("battery", Some("detail_out_of_range")));
    }

    #[test]
    fn bodies_that_are_not_a_fix_object_are_refused_as_a_whole() {
        for body in ["", "nope", "[1, 2]", "42", r#"{"ts": 1, "lat": 1, "lon": 1} x"#, "{"] {
            assert_eq!(field(json(body)), "body", "{body:?}");
        }
        assert_eq!(field(json(r#"{"fixes": []}"#)), "fixes");
    }

    #[test]
    fn more_fixes_than_allowed_is_413() {
        let fix = r#"{"ts": 1, "lat": 1, "lon": 1}"#;
        let six = format!("{{\"fixes\": [{}]}}", [fix; 6].join(","));
        let e = json(&six).unwrap_err();
        assert!(matches!(e, EdgeError::TooLarge { field: "fixes", limit: 5, .. }), "{e:?}");
        let five = format!("{{\"fixes\": [{}]}}", [fix; 5].join(","));
        assert_eq!(json(&five).map(|f| f.len()), Ok(5));
    }

    #[test]
    fn a_wire_report_gives_its_fixes_and_its_seq_is_ignored() {
        let fixes_in = vec![Fix::from_degrees(1, 1.0, 2.0), Fix::from_degrees(2, 3.0, 4.0)];
        let body = encode_report(&Report { seq: 77, fixes: fixes_in.clone() });
        assert_eq!(fixes(BodyFormat::Wire, &body, 5), Ok(fixes_in));
    }

    #[test]
    fn bad_wire_reports_name_the_body_or_the_fix() {
        assert_eq!(field(fixes(BodyFormat::Wire, b"", 5)), "body");
        assert_eq!(field(fixes(BodyFormat::Wire, &[1, 0, 1], 5)), "body");
        let mut off = Fix::from_degrees(1, 1.0, 2.0);
        off.details = Some(FixDetails { heading_cdeg: Some(36_000), ..FixDetails::default() });
        let body =
            encode_report(&Report { seq: 1, fixes: vec![Fix::from_degrees(1, 1.0, 2.0), off] });
        assert_eq!(field(fixes(BodyFormat::Wire, &body, 5)), "fixes[1].heading");
        let empty = encode_report(&Report { seq: 1, fixes: vec![] });
        assert_eq!(field(fixes(BodyFormat::Wire, &empty, 5)), "fixes");
        let six = encode_report(&Report { seq: 1, fixes: vec![Fix::from_degrees(1, 1.0, 2.0); 6] });
        assert_eq!(fixes(BodyFormat::Wire, &six, 5).map_err(|e| e.status()), Err(413));
    }

    #[test]
    fn a_wire_body_is_bounded_by_the_fixes_it_may_hold() {
        let config = crate::config::Config {
            edge_id: "e".into(),
            edge_token: "t".into(),
            broker_url: "mqtt://h:1".into(),
            api_url: "http://h:2".into(),
            max_body_bytes: 8_388_608,
            max_fixes_per_request: 10,
            max_fixes_per_message: 600,
        };
        assert_eq!(body_limit(BodyFormat::Json, &config).0, 8_388_608);
        assert_eq!(body_limit(BodyFormat::Wire, &config).0, limits::max_report_bytes(10));
    }
}
