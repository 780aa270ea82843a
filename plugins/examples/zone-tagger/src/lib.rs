//! # zone-tagger — tags fixes with the named zones they fall in
//!
//! Configuration (every key optional except at least one zone):
//! - `zone.NAME` = `"lat lon, lat lon, lat lon, ..."`: a polygon of at least three vertices, in
//!   degrees, in order around the boundary (closing it is implied). Any number of zones.
//! - `attribute` (default `zone`): the attribute to set.
//! - `outside` (default unset): a value to set when a fix is in no zone; unset means "leave the
//!   fix without the attribute".
//!
//! What enters: fixes. What leaves: the same fixes, kept, with `attribute` = the names of the
//! zones containing the fix, comma-separated in configuration order (zones may overlap).
//!
//! Geometry: point-in-polygon by ray casting on the lat/lon plane, which is exact enough for
//! city-scale zones (edges of a few kilometres); zones crossing the antimeridian are not
//! supported. A bounding box test skips most polygons without the full test.

use locus_plugin::{export_plugin, Config, Fix, Outcome, Plugin};

/// One named polygon.
struct Zone {
    name: String,
    /// Vertices as (lat, lon).
    vertices: Vec<(f64, f64)>,
    /// (min lat, max lat, min lon, max lon).
    bbox: (f64, f64, f64, f64),
}

impl Zone {
    fn parse(name: &str, spec: &str) -> Result<Zone, String> {
        if name.is_empty() || name.contains(',') {
            return Err(format!("zone name {name:?} must be non-empty and without commas"));
        }
        let mut vertices = Vec::new();
        for (i, vertex) in spec.split(',').enumerate() {
            let mut parts = vertex.split_whitespace();
            let (Some(lat), Some(lon), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("zone {name}: vertex {} is not `lat lon`: {vertex:?}", i + 1));
            };
            let lat: f64 =
                lat.parse().map_err(|e| format!("zone {name}: latitude {lat:?}: {e}"))?;
            let lon: f64 =
                lon.parse().map_err(|e| format!("zone {name}: longitude {lon:?}: {e}"))?;
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                return Err(format!(
                    "zone {name}: vertex {} ({lat}, {lon}) is off the globe",
                    i + 1
                ));
            }
            vertices.push((lat, lon));
        }
        if vertices.len() < 3 {
            return Err(format!("zone {name}: a polygon needs at least 3 vertices"));
        }
        let bbox = vertices
            .iter()
            .fold((f64::MAX, f64::MIN, f64::MAX, f64::MIN), |(a, b, c, d), &(lat, lon)| {
                (a.min(lat), b.max(lat), c.min(lon), d.max(lon))
            });
        Ok(Zone { name: name.to_string(), vertices, bbox })
    }

    fn contains(&self, lat: f64, lon: f64) -> bool {
        let (min_lat, max_lat, min_lon, max_lon) = self.bbox;
        if lat < min_lat || lat > max_lat || lon < min_lon || lon > max_lon {
            return false;
        }
        // Ray casting towards +lon: count edges crossing the horizontal line through the point.
        let mut inside = false;
        let n = self.vertices.len();
        let mut j = n - 1;
        for i in 0..n {
            let (lat_i, lon_i) = self.vertices[i];
            let (lat_j, lon_j) = self.vertices[j];
            if (lat_i > lat) != (lat_j > lat)
                && lon < (lon_j - lon_i) * (lat - lat_i) / (lat_j - lat_i) + lon_i
            {
                inside = !inside;
            }
            j = i;
        }
        inside
    }
}

/// The plugin: its zones and where to write the result.
struct ZoneTagger {
    zones: Vec<Zone>,
    attribute: String,
    outside: Option<String>,
}

impl Plugin for ZoneTagger {
    fn init(config: &Config) -> Result<Self, String> {
        let zones = config
            .with_prefix("zone.")
            .map(|(name, spec)| Zone::parse(name, spec))
            .collect::<Result<Vec<_>, _>>()?;
        if zones.is_empty() {
            return Err("no zones configured: add `zone.NAME` = \"lat lon, lat lon, ...\"".into());
        }
        let attribute = config.get("attribute").unwrap_or("zone").to_string();
        if attribute.is_empty() {
            return Err("`attribute` must not be empty".into());
        }
        Ok(ZoneTagger { zones, attribute, outside: config.get("outside").map(str::to_string) })
    }

    fn process_fix(&mut self, mut fix: Fix) -> Outcome {
        let mut names = String::new();
        for zone in self.zones.iter().filter(|zone| zone.contains(fix.lat, fix.lon)) {
            if !names.is_empty() {
                names.push(',');
            }
            names.push_str(&zone.name);
        }
        if !names.is_empty() {
            fix.set_attribute(self.attribute.as_str(), names);
        } else if let Some(outside) = &self.outside {
            fix.set_attribute(self.attribute.as_str(), outside.as_str());
        }
        Outcome::Keep(fix)
    }
}

export_plugin!(ZoneTagger);
