//! How a simulated courier moves: jobs on a city's street grid.
//!
//! The city is a square grid of streets (blocks of [`City::block_m`] metres, like Barcelona's
//! Eixample) around a centre. A [`Rider`] loops over jobs: ride to a pickup intersection, wait
//! there, ride to a drop-off carrying the order, wait, and again. Rides follow the streets (a
//! staircase of random turns towards the target, as routing through a grid does), at scooter and
//! bike speeds that vary along the way, slow down for turns, and stop at red lights. Positions
//! carry GPS-like noise and an accuracy estimate; the battery drains.
//!
//! Everything runs on simulated seconds passed to [`Rider::step`], so tests can ride for hours
//! in an instant.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;

/// Metres per degree of latitude.
const M_PER_DEG_LAT: f64 = 111_320.0;

/// The street grid.
#[derive(Debug, Clone)]
pub struct City {
    /// Centre, degrees.
    pub lat: f64,
    /// Centre, degrees.
    pub lon: f64,
    /// Length of a block, metres.
    pub block_m: f64,
    /// Intersections from the centre to the edge, in each direction.
    pub half_blocks: i32,
}

impl Default for City {
    /// Barcelona's Eixample: 113 m blocks plus streets, about 5 km across.
    fn default() -> Self {
        City { lat: 41.3874, lon: 2.1686, block_m: 133.0, half_blocks: 20 }
    }
}

impl City {
    fn to_degrees(&self, x: f64, y: f64) -> (f64, f64) {
        let lat = self.lat + y / M_PER_DEG_LAT;
        let lon = self.lon + x / (M_PER_DEG_LAT * self.lat.to_radians().cos());
        (lat, lon)
    }

    fn point(&self, (i, j): (i32, i32)) -> (f64, f64) {
        (f64::from(i) * self.block_m, f64::from(j) * self.block_m)
    }

    /// Whether a point (metres from the centre) is on the map, with a little slack for noise.
    #[cfg(test)]
    fn contains(&self, x: f64, y: f64) -> bool {
        let edge = f64::from(self.half_blocks) * self.block_m + 50.0;
        x.abs() <= edge && y.abs() <= edge
    }
}

/// One sample of a rider's state, as a phone's location API would give it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Degrees.
    pub lat: f64,
    /// Degrees.
    pub lon: f64,
    /// Metres per second.
    pub speed_m_s: f64,
    /// Degrees clockwise from north.
    pub heading_deg: f64,
    /// Metres.
    pub accuracy_m: f64,
    /// Percent.
    pub battery_pct: u8,
    /// The order on board.
    pub order: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    ToPickup,
    ToDropoff,
}

/// A courier riding jobs through the city.
#[derive(Debug)]
pub struct Rider {
    city: City,
    name: String,
    rng: StdRng,
    /// Current position, metres east and north of the centre.
    x: f64,
    y: f64,
    /// The intersection last passed.
    at: (i32, i32),
    /// Intersections still to pass on this ride, the target last.
    path: VecDeque<(i32, i32)>,
    phase: Phase,
    /// Seconds left standing still (red light, pickup, drop-off).
    wait_s: f64,
    /// This rider's usual speed: scooters are faster than bikes.
    cruise_m_s: f64,
    speed_m_s: f64,
    heading_deg: f64,
    battery: f64,
    jobs: u64,
    order: Option<String>,
}

impl Rider {
    /// A rider at a random intersection, about to ride to a first pickup.
    pub fn new(name: &str, city: City, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let h = city.half_blocks;
        let at = (rng.gen_range(-h..=h), rng.gen_range(-h..=h));
        let (x, y) = city.point(at);
        let mut rider = Rider {
            city,
            name: name.to_owned(),
            x,
            y,
            at,
            path: VecDeque::new(),
            phase: Phase::ToPickup,
            wait_s: 0.0,
            cruise_m_s: rng.gen_range(4.0..8.0),
            speed_m_s: 0.0,
            heading_deg: 0.0,
            battery: rng.gen_range(40.0..100.0),
            jobs: 0,
            order: None,
            rng,
        };
        rider.plan_ride();
        rider
    }

    /// Plans a staircase route along the streets to a new target 0.5–3 km away.
    fn plan_ride(&mut self) {
        let h = self.city.half_blocks;
        let target = loop {
            let t = (self.rng.gen_range(-h..=h), self.rng.gen_range(-h..=h));
            let blocks = (t.0 - self.at.0).abs() + (t.1 - self.at.1).abs();
            let metres = f64::from(blocks) * self.city.block_m;
            if (500.0..=3_000.0).contains(&metres) {
                break t;
            }
        };
        let mut cursor = self.at;
        self.path.clear();
        while cursor != target {
            let dx = (target.0 - cursor.0).signum();
            let dy = (target.1 - cursor.1).signum();
            // Keep going straight more often than turning, as riders do.
            let along_x = if dx == 0 {
                false
            } else if dy == 0 {
                true
            } else {
                self.rng.gen_bool(0.5)
            };
            cursor = if along_x { (cursor.0 + dx, cursor.1) } else { (cursor.0, cursor.1 + dy) };
            self.path.push_back(cursor);
        }
    }

    /// Advances the simulation by `dt_s` seconds and samples the position.
    pub fn step(&mut self, dt_s: f64) -> Sample {
        let mut left = dt_s.max(0.0);
        let mut moved = false;
        while left > 1e-9 {
            if self.wait_s > 0.0 {
                let w = self.wait_s.min(left);
                self.wait_s -= w;
                left -= w;
                self.speed_m_s = 0.0;
                continue;
            }
            let Some(&next) = self.path.front() else {
                self.arrive();
                continue;
            };
            moved = true;
            let (tx, ty) = self.city.point(next);
            let (dx, dy) = (tx - self.x, ty - self.y);
            let dist = dx.hypot(dy);
            // Speed drifts around the rider's cruise speed; turns and starts are slower.
            let target = self.cruise_m_s * self.rng.gen_range(0.75..1.1);
            let turning = self.path.get(1).is_some_and(|after| {
                (after.0 - next.0).signum() != (next.0 - self.at.0).signum()
                    || (after.1 - next.1).signum() != (next.1 - self.at.1).signum()
            });
            let cap = if turning && dist < 20.0 { 3.0 } else { f64::INFINITY };
            self.speed_m_s = (self.speed_m_s + 1.5 * left.min(2.0)).min(target).min(cap).max(1.0);
            if dist > 1e-6 {
                self.heading_deg = dx.atan2(dy).to_degrees().rem_euclid(360.0);
            }
            let reach_s = dist / self.speed_m_s;
            if reach_s > left {
                let f = self.speed_m_s * left / dist;
                self.x += dx * f;
                self.y += dy * f;
                left = 0.0;
            } else {
                self.x = tx;
                self.y = ty;
                left -= reach_s;
                self.at = next;
                self.path.pop_front();
                // About one intersection in four has a red light.
                if !self.path.is_empty() && self.rng.gen_bool(0.25) {
                    self.wait_s = self.rng.gen_range(5.0..40.0);
                }
            }
        }
        if !moved && self.wait_s > 0.0 {
            self.speed_m_s = 0.0;
        }
        self.battery = (self.battery - dt_s * 0.002).max(1.0);
        self.sample()
    }

    /// At the end of a ride: pick the order up, or hand it over and take the next job.
    fn arrive(&mut self) {
        match self.phase {
            Phase::ToPickup => {
                self.jobs += 1;
                self.order = Some(format!("ord-{}-{}", self.name, self.jobs));
                self.phase = Phase::ToDropoff;
                self.wait_s = self.rng.gen_range(20.0..120.0);
            }
            Phase::ToDropoff => {
                self.order = None;
                self.phase = Phase::ToPickup;
                self.wait_s = self.rng.gen_range(20.0..90.0);
            }
        }
        self.speed_m_s = 0.0;
        self.plan_ride();
    }

    fn sample(&mut self) -> Sample {
        let accuracy_m = self.rng.gen_range(3.0..12.0);
        // GPS noise within about half the accuracy radius.
        let nx = (self.rng.gen::<f64>() + self.rng.gen::<f64>() - 1.0) * accuracy_m / 2.0;
        let ny = (self.rng.gen::<f64>() + self.rng.gen::<f64>() - 1.0) * accuracy_m / 2.0;
        let (lat, lon) = self.city.to_degrees(self.x + nx, self.y + ny);
        Sample {
            lat,
            lon,
            speed_m_s: self.speed_m_s,
            heading_deg: self.heading_deg,
            accuracy_m,
            battery_pct: self.battery.round() as u8,
            order: self.order.clone(),
        }
    }

    /// Metres east and north of the centre (for tests).
    #[cfg(test)]
    fn position(&self) -> (f64, f64) {
        (self.x, self.y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rides_the_streets_at_plausible_speeds() {
        let city = City::default();
        let mut rider = Rider::new("sim-0", city.clone(), 7);
        let mut orders = std::collections::HashSet::new();
        let (mut px, mut py) = rider.position();
        // Two hours of riding, one sample a second.
        for _ in 0..7_200 {
            let sample = rider.step(1.0);
            let (x, y) = rider.position();
            // Never faster than a scooter in town (about 30 km/h).
            assert!((x - px).hypot(y - py) <= 9.0, "jumped {} m", (x - px).hypot(y - py));
            assert!(city.contains(x, y), "left the city at {x},{y}");
            // On a street: one of the coordinates is on the grid.
            let on_grid = |v: f64| (v / city.block_m - (v / city.block_m).round()).abs() < 1e-6;
            assert!(on_grid(x) || on_grid(y), "off the streets at {x},{y}");
            assert!((0.0..360.0).contains(&sample.heading_deg));
            assert!(sample.speed_m_s <= 8.8);
            orders.extend(sample.order);
            (px, py) = (x, y);
        }
        // Several jobs done in two hours, each with its own order id.
        assert!(orders.len() >= 3, "{orders:?}");
    }

    #[test]
    fn riders_differ_and_are_reproducible() {
        let city = City::default();
        let a: Vec<Sample> = {
            let mut r = Rider::new("a", city.clone(), 1);
            (0..50).map(|_| r.step(1.0)).collect()
        };
        let b: Vec<Sample> = {
            let mut r = Rider::new("a", city.clone(), 1);
            (0..50).map(|_| r.step(1.0)).collect()
        };
        let c = Rider::new("c", city, 2).step(1.0);
        assert_eq!(a, b);
        assert_ne!(a[0], c);
    }
}
