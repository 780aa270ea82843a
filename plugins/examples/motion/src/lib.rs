//! # motion — derives speed and heading when the device did not send them
//!
//! Configuration (all optional):
//! - `max_gap_s` (default 120): only derive from a previous fix at most this old; beyond, the
//!   courier may have stopped or taken any path in between.
//! - `min_distance_m` (default 3): below this displacement the heading is noise (GPS jitter while
//!   standing), so only the speed is derived.
//! - `max_couriers` (default 100000): how many couriers' last fixes are remembered.
//!
//! What enters: fixes. What leaves: each fix kept; when it lacks speed and/or heading and the
//! courier's previous fix is recent enough, the missing values are filled in from the two
//! positions, and attribute `motion` = `derived` marks the fix.
//!
//! State: the courier's previous fix, kept in the instance's memory like jitter-filter's (see
//! there): lost on restart or redeploy, after which the first fix of each courier is left as the
//! device sent it.

use std::collections::HashMap;

use locus_plugin::{export_plugin, Config, Fix, Outcome, Plugin};

const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres (haversine) and initial bearing in degrees [0, 360).
fn distance_and_bearing(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> (f64, f64) {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    let distance = 2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin();
    let y = d_lambda.sin() * phi2.cos();
    let x = phi1.cos() * phi2.sin() - phi1.sin() * phi2.cos() * d_lambda.cos();
    let bearing = y.atan2(x).to_degrees().rem_euclid(360.0);
    (distance, bearing)
}

#[derive(Clone, Copy)]
struct Last {
    ts_ms: u64,
    lat: f64,
    lon: f64,
}

struct Motion {
    max_gap_ms: u64,
    min_distance_m: f64,
    max_couriers: usize,
    last: HashMap<String, Last>,
}

impl Plugin for Motion {
    fn init(config: &Config) -> Result<Self, String> {
        let max_gap_s: f64 = config.parse_or("max_gap_s", 120.0)?;
        let min_distance_m = config.parse_or("min_distance_m", 3.0)?;
        let max_couriers = config.parse_or("max_couriers", 100_000usize)?;
        if !(max_gap_s > 0.0 && min_distance_m >= 0.0 && max_couriers > 0) {
            return Err("max_gap_s and max_couriers must be positive, min_distance_m >= 0".into());
        }
        Ok(Motion {
            max_gap_ms: (max_gap_s * 1000.0) as u64,
            min_distance_m,
            max_couriers,
            last: HashMap::new(),
        })
    }

    fn process_fix(&mut self, mut fix: Fix) -> Outcome {
        let current = Last { ts_ms: fix.ts_ms, lat: fix.lat, lon: fix.lon };
        let previous = self.last.get(&fix.courier).copied();
        match previous {
            // Older than what we know: neither derive from nor remember it.
            Some(previous) if fix.ts_ms <= previous.ts_ms => return Outcome::Keep(fix),
            Some(previous)
                if fix.ts_ms - previous.ts_ms <= self.max_gap_ms
                    && (fix.speed_m_s.is_none() || fix.heading_deg.is_none()) =>
            {
                let (distance, bearing) =
                    distance_and_bearing(previous.lat, previous.lon, fix.lat, fix.lon);
                let seconds = (fix.ts_ms - previous.ts_ms) as f64 / 1000.0;
                let mut derived = false;
                if fix.speed_m_s.is_none() {
                    fix.speed_m_s = Some(distance / seconds);
                    derived = true;
                }
                if fix.heading_deg.is_none() && distance >= self.min_distance_m {
                    fix.heading_deg = Some(bearing);
                    derived = true;
                }
                if derived {
                    fix.set_attribute("motion", "derived");
                }
            }
            _ => {}
        }
        if previous.is_none() && self.last.len() >= self.max_couriers {
            self.last.clear();
        }
        self.last.insert(fix.courier.clone(), current);
        Outcome::Keep(fix)
    }
}

export_plugin!(Motion);
