//! # jitter-filter — drops inaccurate fixes and physically implausible jumps
//!
//! Configuration (all optional):
//! - `max_accuracy_m` (default 50): fixes whose accuracy radius is larger are dropped.
//! - `max_speed_m_s` (default 70, about 250 km/h): a fix that would mean moving faster than this
//!   from the courier's previous accepted fix is dropped.
//! - `max_couriers` (default 100000): how many couriers' last fixes are remembered.
//! - `reject` (default `false`): `true` rejects filtered fixes (they go to the dead letters with
//!   the reason) instead of dropping them silently.
//!
//! What enters: fixes. What leaves: each fix kept unchanged, or dropped (or rejected).
//!
//! ## Per-courier state
//!
//! The jump test needs the courier's previous accepted fix. It is kept in the plugin's own memory
//! (a map courier → last accepted fix), which lives as long as the instance: the host reuses one
//! instance for every batch, so consecutive batches see the same map. The map is lost when the
//! instance is replaced — a trap, a redeploy, a server restart — and that is acceptable because
//! the state is only a cache of the last position: after a loss, the first fix of each courier
//! has no predecessor and is kept (the filter fails open on accuracy-good fixes), and from the
//! second fix on filtering is back to normal. The worst case is one unfiltered jump per courier
//! per restart, which is the same as a courier's first fix of the day. Keeping the state in the
//! host (or in sled) would make every plugin call a state round trip, for no real gain.
//!
//! The map is bounded by `max_couriers`: when full, it is cleared (a rare, cheap reset with the
//! same consequences as a restart), so memory never grows with the number of couriers ever seen.
//! Fixes older than the remembered one (reordered by the network) are judged on accuracy only
//! and do not replace it.

use std::collections::HashMap;

use locus_plugin::{export_plugin, Config, Fix, Outcome, Plugin};

/// Mean Earth radius, metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres (haversine).
fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// The last accepted fix of a courier.
#[derive(Clone, Copy)]
struct Last {
    ts_ms: u64,
    lat: f64,
    lon: f64,
}

struct JitterFilter {
    max_accuracy_m: f64,
    max_speed_m_s: f64,
    max_couriers: usize,
    reject: bool,
    last: HashMap<String, Last>,
}

impl JitterFilter {
    fn filtered(&self, reason: String) -> Outcome {
        if self.reject {
            Outcome::Reject(reason)
        } else {
            Outcome::Drop
        }
    }
}

impl Plugin for JitterFilter {
    fn init(config: &Config) -> Result<Self, String> {
        let max_accuracy_m = config.parse_or("max_accuracy_m", 50.0)?;
        let max_speed_m_s = config.parse_or("max_speed_m_s", 70.0)?;
        let max_couriers = config.parse_or("max_couriers", 100_000usize)?;
        if !(max_accuracy_m > 0.0 && max_speed_m_s > 0.0 && max_couriers > 0) {
            return Err("max_accuracy_m, max_speed_m_s and max_couriers must be positive".into());
        }
        Ok(JitterFilter {
            max_accuracy_m,
            max_speed_m_s,
            max_couriers,
            reject: config.parse_or("reject", false)?,
            last: HashMap::new(),
        })
    }

    fn process_fix(&mut self, fix: Fix) -> Outcome {
        if let Some(accuracy) = fix.accuracy_m {
            if accuracy > self.max_accuracy_m {
                return self.filtered(format!(
                    "accuracy {accuracy} m is worse than {} m",
                    self.max_accuracy_m
                ));
            }
        }
        let current = Last { ts_ms: fix.ts_ms, lat: fix.lat, lon: fix.lon };
        match self.last.get_mut(&fix.courier) {
            Some(previous) if fix.ts_ms > previous.ts_ms => {
                let seconds = (fix.ts_ms - previous.ts_ms) as f64 / 1000.0;
                let metres = distance_m(previous.lat, previous.lon, fix.lat, fix.lon);
                let speed = metres / seconds;
                if speed > self.max_speed_m_s {
                    return self.filtered(format!(
                        "jump of {metres:.0} m in {seconds:.1} s ({speed:.0} m/s) from the \
                         previous fix exceeds {} m/s",
                        self.max_speed_m_s
                    ));
                }
                *previous = current;
            }
            // Same time or older than the remembered fix: judged on accuracy alone.
            Some(_) => {}
            None => {
                if self.last.len() >= self.max_couriers {
                    self.last.clear();
                }
                self.last.insert(fix.courier.clone(), current);
            }
        }
        Outcome::Keep(fix)
    }
}

export_plugin!(JitterFilter);
