//! Committed fixes as InfluxDB line-protocol points.
//!
//! Enters: a courier id and a [`StoredFix`] from the commit path. Leaves: one line (no trailing
//! newline) for the shipper. Pure: no I/O, no clock.
//!
//! # Schema
//!
//! ```text
//! courier_location,courier=<id>[,order=<id>][,<tag attribute>=<value>…]
//!     lat=<deg>,lon=<deg>[,accuracy=<m>][,speed=<m/s>][,heading=<deg>][,battery=<pct>i]
//!     [,<attribute>="<value>"…],delay_ms=<ms>i  <device time, ms>
//! ```
//!
//! - measurement `courier_location`;
//! - tags: `courier`; `order` when the fix carries one; the plugin attributes named in
//!   `[influx] tag_attributes` (tags are sorted by key, as InfluxDB stores them);
//! - fields: `lat`, `lon` (float degrees), `accuracy` (float metres), `speed` (float m/s),
//!   `heading` (float degrees), `battery` (integer percent), every other plugin attribute as a
//!   string field, and `delay_ms` (integer: server receive time − device time; negative when the
//!   device clock runs ahead). The server's receive time is `time + delay_ms`. `delay_ms` is
//!   always the last field, which lets the outbox read an entry's receive time back
//!   ([`received_ms_of_line`]);
//! - timestamp: the device time of the fix, **millisecond precision** (writes say
//!   `precision=ms`).
//!
//! A plugin attribute whose name is taken by the schema (`courier`, `order`, `lat`, `lon`,
//! `accuracy`, `speed`, `heading`, `battery`, `delay_ms`, `time`) or starts with `_` (reserved
//! by InfluxDB 2.x) is written as `attr_<name>`. When a plugin sets the same attribute twice,
//! the later value wins. Attributes with an empty name, and tags with an empty value (which
//! line protocol cannot express), are left out.
//!
//! Idempotency: a fix written twice (a retry, a replay) has the same measurement, tag set and
//! timestamp, so InfluxDB overwrites the point instead of counting it twice.
//!
//! # Escaping
//!
//! Per the line-protocol rules as InfluxDB 1.x and 2.x parse them: in the measurement, commas
//! and spaces; in tag keys, tag values and field keys, commas, equals signs and spaces (a
//! backslash elsewhere is literal); in string field values, double quotes and backslashes.
//! Two things line protocol cannot express are changed instead: a backslash at the very end of
//! a tag key, tag value or field key (the parser would read it as escaping the delimiter after
//! it) is dropped, and carriage returns and newlines (which end a line) become spaces.

use crate::store::StoredFix;
use std::fmt::Write as _;

/// The measurement every fix is written to.
pub const MEASUREMENT: &str = "courier_location";

/// The timestamp precision of every point, as the `precision` query parameter says it.
pub const PRECISION: &str = "ms";

/// Names the schema itself uses; attributes with these names get the `attr_` prefix.
const RESERVED: &[&str] = &[
    "courier", "order", "lat", "lon", "accuracy", "speed", "heading", "battery", "delay_ms", "time",
];

/// How points are shaped beyond the fixed schema.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaConfig {
    /// Plugin attributes written as tags (by their name before any `attr_` prefix).
    pub tag_attributes: Vec<String>,
}

/// The line-protocol point of one committed fix (no trailing newline).
pub fn point(courier: &str, fix: &StoredFix, schema: &SchemaConfig) -> String {
    let mut line = String::with_capacity(128);
    write_point(&mut line, courier, fix, schema);
    line
}

/// Appends the point of one committed fix to `out` (no trailing newline).
pub fn write_point(out: &mut String, courier: &str, fix: &StoredFix, schema: &SchemaConfig) {
    // Attributes after renaming and de-duplication (the later value wins), split into tags
    // and fields.
    let mut attributes: Vec<(String, &str, bool)> = Vec::with_capacity(fix.attributes.len());
    for (name, value) in &fix.attributes {
        if name.trim_end_matches('\\').is_empty() {
            continue;
        }
        let is_tag = schema.tag_attributes.iter().any(|t| t == name);
        let key = if RESERVED.contains(&name.as_str()) || name.starts_with('_') {
            format!("attr_{name}")
        } else {
            name.clone()
        };
        attributes.retain(|(k, _, _)| *k != key);
        attributes.push((key, value.as_str(), is_tag));
    }

    let mut tags: Vec<(&str, &str)> = Vec::with_capacity(2 + attributes.len());
    tags.push(("courier", courier));
    if let Some(order) = fix.fix.order() {
        tags.push(("order", order));
    }
    tags.extend(attributes.iter().filter(|a| a.2).map(|(k, v, _)| (k.as_str(), *v)));
    tags.retain(|(_, v)| !v.trim_end_matches('\\').is_empty());
    tags.sort_unstable_by(|a, b| a.0.cmp(b.0));

    escape_measurement(out, MEASUREMENT);
    for (key, value) in &tags {
        out.push(',');
        escape_key(out, key);
        out.push('=');
        escape_key(out, value);
    }

    // `write!` into a String cannot fail.
    let f = &fix.fix;
    let _ = write!(out, " lat={},lon={}", f.lat(), f.lon());
    if let Some(d) = &f.details {
        if let Some(cm) = d.accuracy_cm {
            let _ = write!(out, ",accuracy={}", f64::from(cm) / 100.0);
        }
        if let Some(cm_s) = d.speed_cm_s {
            let _ = write!(out, ",speed={}", f64::from(cm_s) / 100.0);
        }
        if let Some(cdeg) = d.heading_cdeg {
            let _ = write!(out, ",heading={}", f64::from(cdeg) / 100.0);
        }
        if let Some(pct) = d.battery_pct {
            let _ = write!(out, ",battery={pct}i");
        }
    }
    for (key, value, _) in attributes.iter().filter(|a| !a.2) {
        out.push(',');
        escape_key(out, key);
        out.push_str("=\"");
        escape_string_field(out, value);
        out.push('"');
    }
    let delay_ms = i128::from(fix.received_ms) - i128::from(f.ts_ms);
    let _ =
        write!(out, ",delay_ms={}i {}", delay_ms.clamp(i64::MIN.into(), i64::MAX.into()), f.ts_ms);
}

/// The server receive time (Unix ms) of a line [`point`] wrote: its timestamp plus `delay_ms`,
/// read from the end of the line (where no attribute value can interfere). `None` for a line
/// of another shape.
pub fn received_ms_of_line(line: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(line).ok()?;
    let (rest, ts) = line.rsplit_once(' ')?;
    let ts: i128 = ts.parse().ok()?;
    let rest = rest.strip_suffix('i')?;
    let (rest, delay) = rest.rsplit_once("delay_ms=")?;
    if !(rest.ends_with(',') || rest.ends_with(' ')) {
        return None;
    }
    let delay: i128 = delay.parse().ok()?;
    u64::try_from(ts + delay).ok()
}

/// The unescaped value of tag `key` in a line, if the line has that tag.
pub fn tag_of_line(line: &[u8], key: &str) -> Option<String> {
    let line = std::str::from_utf8(line).ok()?;
    // As InfluxDB's parser does: a delimiter is escaped when the byte before it is a
    // backslash. The series key ends at the first unescaped space; tags are split at unescaped
    // commas, then at the first unescaped `=`.
    let series = &line[..unescaped(line, b' ').next().unwrap_or(line.len())];
    let mut start = 0;
    let mut tags = Vec::new();
    for comma in unescaped(series, b',').chain([series.len()]) {
        tags.push(&series[start..comma]);
        start = comma + 1;
    }
    tags.into_iter().skip(1).find_map(|tag| {
        let eq = unescaped(tag, b'=').next()?;
        (unescape(&tag[..eq]) == key).then(|| unescape(&tag[eq + 1..]))
    })
}

/// Positions of `delimiter` not preceded by a backslash.
fn unescaped(s: &str, delimiter: u8) -> impl Iterator<Item = usize> + '_ {
    let bytes = s.as_bytes();
    (0..bytes.len()).filter(move |&i| bytes[i] == delimiter && (i == 0 || bytes[i - 1] != b'\\'))
}

fn unescape(s: &str) -> String {
    s.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=")
}

fn escape_measurement(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            ',' | ' ' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push_str("\\ "),
            _ => out.push(c),
        }
    }
}

/// Tag keys, tag values, field keys.
fn escape_key(out: &mut String, s: &str) {
    for c in s.trim_end_matches('\\').chars() {
        match c {
            ',' | '=' | ' ' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push_str("\\ "),
            _ => out.push(c),
        }
    }
}

fn escape_string_field(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::wire::{Fix, FixDetails};

    fn stored(attributes: &[(&str, &str)]) -> StoredFix {
        StoredFix {
            fix: Fix::from_degrees(1_763_700_000_000, 41.3851, 2.1734),
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            received_ms: 1_763_700_000_250,
        }
    }

    #[test]
    fn minimal_point() {
        assert_eq!(
            point("c1", &stored(&[]), &SchemaConfig::default()),
            "courier_location,courier=c1 lat=41.3851,lon=2.1734,delay_ms=250i 1763700000000"
        );
    }

    #[test]
    fn every_optional_field() {
        let mut fix = stored(&[("zone", "north"), ("vehicle", "bike")]);
        fix.fix.details = Some(FixDetails {
            accuracy_cm: Some(350),
            speed_cm_s: Some(1200),
            heading_cdeg: Some(35_999),
            battery_pct: Some(87),
            order: Some("o-42".into()),
        });
        fix.fix.lat_e7 = -1;
        fix.fix.lon_e7 = 0;
        let schema = SchemaConfig { tag_attributes: vec!["zone".into()] };
        assert_eq!(
            point("c1", &fix, &schema),
            "courier_location,courier=c1,order=o-42,zone=north \
             lat=-0.0000001,lon=0,accuracy=3.5,speed=12,heading=359.99,battery=87i,\
             vehicle=\"bike\",delay_ms=250i 1763700000000"
        );
    }

    #[test]
    fn escapes_keys_tags_and_strings() {
        let fix = stored(&[
            ("a tag,=x", "v, =\\"),
            ("back\\slash", "x"),
            ("only-backslashes", "\\\\"),
            ("note \"q\"", "say \"hi\" \\ bye\nnext"),
            ("", "dropped"),
            ("empty-tag", ""),
        ]);
        let schema = SchemaConfig {
            tag_attributes: vec!["a tag,=x".into(), "empty-tag".into(), "only-backslashes".into()],
        };
        assert_eq!(
            point("cour ier,=1", &fix, &schema),
            "courier_location,a\\ tag\\,\\=x=v\\,\\ \\=,courier=cour\\ ier\\,\\=1 \
             lat=41.3851,lon=2.1734,back\\slash=\"x\",note\\ \"q\"=\"say \\\"hi\\\" \\\\ bye next\",\
             delay_ms=250i 1763700000000"
        );
    }

    #[test]
    fn reserved_names_are_prefixed_and_later_values_win() {
        let fix = stored(&[("lat", "x"), ("_measurement", "m"), ("k", "1"), ("k", "2")]);
        let line = point("c1", &fix, &SchemaConfig::default());
        assert_eq!(
            line,
            "courier_location,courier=c1 lat=41.3851,lon=2.1734,attr_lat=\"x\",\
             attr__measurement=\"m\",k=\"2\",delay_ms=250i 1763700000000"
        );
    }

    #[test]
    fn reads_back_receive_time_and_courier() {
        let mut fix = stored(&[("trap", "delay_ms=1i 5")]);
        let line = point("c\\,1 x=\\y", &fix, &SchemaConfig::default());
        assert_eq!(received_ms_of_line(line.as_bytes()), Some(1_763_700_000_250));
        assert_eq!(tag_of_line(line.as_bytes(), "courier").as_deref(), Some("c\\,1 x=\\y"));
        assert_eq!(tag_of_line(line.as_bytes(), "order"), None);
        // A device clock ahead of the server: negative delay.
        fix.received_ms = 1_763_699_999_000;
        let line = point("c1", &fix, &SchemaConfig::default());
        assert!(line.contains("delay_ms=-1000i"), "{line}");
        assert_eq!(received_ms_of_line(line.as_bytes()), Some(1_763_699_999_000));
        assert_eq!(received_ms_of_line(b"m f=1 5"), None);
        assert_eq!(received_ms_of_line(b"\xff"), None);
    }
}
