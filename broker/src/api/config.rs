//! The `[http]` section: the API's listeners and limits.

use crate::listener;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Plain-text HTTP address of the API; `"off"` = none.
    #[serde(with = "listener")]
    pub listen: Option<SocketAddr>,
    /// HTTPS address of the API (conventionally port 8443 or 443), with `[tls]`'s certificate;
    /// default off.
    #[serde(with = "listener")]
    pub tls_listen: Option<SocketAddr>,
    /// Largest page `GET /v1/couriers/{id}/track` and `GET /v1/dead-letters` return.
    pub max_page: usize,
    /// Milliseconds a client has to send its request head; then its connection is closed
    /// (stops slowloris).
    pub header_read_timeout_ms: u64,
    /// Milliseconds to read a request's body and answer it; then the answer is 408.
    pub request_timeout_ms: u64,
    /// Largest request body read by the API, bytes (plugin uploads have their own limit).
    pub max_body_bytes: usize,
    /// Serve `POST /rabbitmq/auth/{user,vhost,resource,topic}` for a RabbitMQ broker's HTTP
    /// auth backend (README, "Running at scale"); default off.
    pub rabbitmq_auth_backend: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            tls_listen: None,
            max_page: 10_000,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
            max_body_bytes: 1024 * 1024,
            rabbitmq_auth_backend: false,
        }
    }
}

/// `[console]`: the operator console at `/` and the customer tracking page at `/track/{order}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console and the tracking page (the API is served either way).
    pub enabled: bool,
    /// Map tiles, `{z}`, `{x}` and `{y}` filled in by the browser (`{s}` for a subdomain);
    /// `""`: no tiles, positions on a plain background. The browser fetches them, not locusd.
    pub tile_url: String,
    /// The tiles' attribution, shown on the map (HTML; the tile provider's terms ask for it).
    pub tile_attribution: String,
    /// Deepest zoom the tiles have.
    pub max_zoom: u8,
    /// A courier whose last fix is older than this many seconds is shown as stale.
    pub stale_after_s: u64,
    /// A courier at least this fast (m/s) is shown as moving, slower as idle.
    pub moving_min_speed_mps: f64,
    /// Where the map opens before it has couriers to show.
    pub initial_view: MapView,
    /// Least time between two updates of the live feed (`GET /v1/live`), ms: positions that
    /// change meanwhile go out together, the newest of each courier.
    pub live_interval_ms: u64,
}

/// A map's centre and zoom.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapView {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Leaflet's zoom level.
    pub zoom: u8,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            tile_url: "https://tile.openstreetmap.org/{z}/{x}/{y}.png".to_owned(),
            tile_attribution: "&copy; <a href=\"https://www.openstreetmap.org/copyright\">\
                               OpenStreetMap</a> contributors"
                .to_owned(),
            max_zoom: 19,
            stale_after_s: 120,
            moving_min_speed_mps: 1.0,
            // Where `locus-sim` rides.
            initial_view: MapView { lat: 41.3874, lon: 2.1686, zoom: 13 },
            live_interval_ms: 200,
        }
    }
}

impl ConsoleConfig {
    /// Checks values that parse but would not work, naming the key and the fix.
    pub fn check(&self) -> Result<(), String> {
        let url = &self.tile_url;
        let templated = ["{z}", "{x}", "{y}"].iter().all(|part| url.contains(part));
        let web = url.starts_with("https://") || url.starts_with("http://");
        let usable = url.is_empty() || (web && templated);
        if !usable {
            return Err(format!(
                "console.tile_url {url:?} must be an http(s) URL with {{z}}, {{x}} and {{y}} \
                 (for example https://tile.openstreetmap.org/{{z}}/{{x}}/{{y}}.png), or \"\" \
                 for no tiles"
            ));
        }
        if self.live_interval_ms == 0 || self.stale_after_s == 0 {
            return Err(
                "console.live_interval_ms and console.stale_after_s must be at least 1".to_owned()
            );
        }
        let view = self.initial_view;
        if !(-90.0..=90.0).contains(&view.lat) || !(-180.0..=180.0).contains(&view.lon) {
            return Err(format!(
                "console.initial_view: lat {} lon {} is not a place (lat -90..90, lon \
                 -180..180)",
                view.lat, view.lon
            ));
        }
        // Also refuses NaN.
        if !self.moving_min_speed_mps.is_finite() || self.moving_min_speed_mps < 0.0 {
            return Err("console.moving_min_speed_mps must be 0 or more".to_owned());
        }
        Ok(())
    }
}
