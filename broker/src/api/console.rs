//! The operator console (`/`) and the customer tracking page (`/track/{order}`): their files,
//! their settings, and the API routes only they need.
//!
//! Enters: browser requests. Leaves: the pages' files, embedded in the binary from
//! `broker/console/` (Leaflet, vendored at a pinned version by `scripts/vendor-leaflet.sh`, is
//! among them: nothing comes from a CDN); `[console]` as JSON; the live feed of positions
//! (`GET /v1/live`); what a tracking page shows (`GET /v1/orders/{id}/tracking`); who a token
//! is (`GET /v1/whoami`).
//!
//! The pages hold no data: they are open, and every request for data carries the token the
//! operator typed in (kept in the browser's session storage) or the tracking link's order
//! token, as `Authorization: Bearer`. Never a cookie, so no other site can make a browser use
//! it; the live feed is read with `fetch`, because `EventSource` cannot send the header.
//!
//! **The live feed** is server-sent events: first `snapshot` (every courier's last position),
//! then `positions` (those that moved since the last event), at most one per
//! `[console] live_interval_ms`, the newest of each courier, so a busy city costs the browser
//! a few events a second, not one per fix. It follows the store's positions generation
//! ([`Store::watch_positions`]), which every commit that moves a last position advances: fixes
//! from devices, edges, replays and, in cluster mode, other workers alike.

use super::{check_id, orders, ApiError, ApiState, FixView};
use crate::auth::Claims;
use crate::metrics::Metrics;
use crate::store::Store;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// A file of the pages: its path under `/console/` and its content type.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! assets {
    ($($path:literal => $content_type:literal),* $(,)?) => {
        &[$(Asset {
            path: $path,
            content_type: $content_type,
            bytes: include_bytes!(concat!("../../console/", $path)),
        }),*]
    };
}

/// Every file the pages use.
static ASSETS: &[Asset] = assets![
    "index.html" => "text/html; charset=utf-8",
    "track.html" => "text/html; charset=utf-8",
    "console.js" => "text/javascript; charset=utf-8",
    "console.css" => "text/css; charset=utf-8",
    "track.js" => "text/javascript; charset=utf-8",
    "track.css" => "text/css; charset=utf-8",
    "shared.js" => "text/javascript; charset=utf-8",
    "vendor/leaflet/leaflet.js" => "text/javascript; charset=utf-8",
    "vendor/leaflet/leaflet.css" => "text/css; charset=utf-8",
    "vendor/leaflet/LICENSE" => "text/plain; charset=utf-8",
    "vendor/leaflet/VERSION" => "text/plain; charset=utf-8",
    "vendor/leaflet/images/layers.png" => "image/png",
    "vendor/leaflet/images/layers-2x.png" => "image/png",
    "vendor/leaflet/images/marker-icon.png" => "image/png",
    "vendor/leaflet/images/marker-icon-2x.png" => "image/png",
    "vendor/leaflet/images/marker-shadow.png" => "image/png",
];

/// Keep-alive comment on an idle live feed, so proxies and the browser see it is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The origin tiles come from (`https://tile.example.org`, `https://*.example.org` for a
/// `{s}` subdomain), for the pages' content security policy.
fn tile_origin(tile_url: &str) -> Option<String> {
    let (scheme, rest) = tile_url.split_once("://")?;
    let host = rest.split('/').next()?;
    Some(format!("{scheme}://{}", host.replace("{s}", "*")))
}

/// A page's file, with headers that keep it to itself: scripts only from locusd, no referrer
/// (a tracking link's token must not reach the tile server), no sniffing.
fn serve(state: &ApiState, path: &str) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path).filter(|_| state.console.enabled)
    else {
        return ApiError::not_found("no such page").into_response();
    };
    let tiles = tile_origin(&state.console.tile_url).unwrap_or_default();
    let policy = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: {tiles}; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    );
    let policy =
        HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'self'"));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::REFERRER_POLICY, HeaderValue::from_static("strict-origin-when-cross-origin")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            // Small, and they change with the binary: always asked again (304s are cheap).
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        asset.bytes,
    )
        .into_response()
}

pub(super) async fn index(State(state): State<ApiState>) -> Response {
    serve(&state, "index.html")
}

pub(super) async fn tracking_page(
    State(state): State<ApiState>,
    Path(_order): Path<String>,
) -> Response {
    // The page reads the order from its own URL and asks the API; an unknown order or a wrong
    // token is the page's to tell, in words a customer reads.
    serve(&state, "track.html")
}

pub(super) async fn file(State(state): State<ApiState>, Path(path): Path<String>) -> Response {
    serve(&state, &path)
}

/// `[console]` as the pages use it.
pub(super) async fn settings(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    if !state.console.enabled {
        return Err(ApiError::not_found("no such page"));
    }
    let c = &state.console;
    Ok(Json(json!({
        "tile_url": c.tile_url,
        "tile_attribution": c.tile_attribution,
        "max_zoom": c.max_zoom,
        "stale_after_s": c.stale_after_s,
        "moving_min_speed_mps": c.moving_min_speed_mps,
        "initial_view": c.initial_view,
    })))
}

/// Who the token is: the console's login checks it, and shows admins more.
pub(super) async fn whoami(claims: Option<Extension<Claims>>) -> Json<Value> {
    match claims {
        Some(Extension(claims)) => {
            Json(json!({ "role": claims.role.as_str(), "subject": claims.subject }))
        }
        // No token checks: anonymous access is allowed.
        None => Json(json!({ "role": "anonymous", "subject": "" })),
    }
}

/// What a customer's tracking page shows of an order: its status and the times of its
/// events (no actors, no details: those are the merchant's), and its courier's position only
/// while the order is active. Nothing about the courier but where it is.
pub(super) async fn tracking(
    State(state): State<ApiState>,
    Path(order): Path<String>,
    claims: Option<Extension<Claims>>,
) -> Result<Response, ApiError> {
    check_id("order", &order)?;
    let found = orders::visible_order(&state, &order, claims.as_deref())?;
    let active = !found.status.is_ended();
    // The order's own location once its courier's fixes locate it; until the first fix after
    // the assignment, where the courier is.
    let location = match (active, &found.courier) {
        (true, Some(courier)) => match state.store.order_location(&order)? {
            Some((_, stored)) => Some(stored),
            None => state.store.last_location(courier)?,
        },
        _ => None,
    };
    let location = location.map(|stored| {
        let fix = locus_sdk::wire::json::FixJson::from(&stored.fix);
        json!({
            "ts": fix.ts,
            "lat": fix.lat,
            "lon": fix.lon,
            "heading": fix.heading,
            "speed": fix.speed,
            "received_ms": stored.received_ms,
        })
    });
    let timeline: Vec<Value> = found
        .timeline
        .iter()
        .map(|event| json!({ "event": event.kind, "at_ms": event.at_ms }))
        .collect();
    let body = json!({
        "order": found.id,
        "status": found.status,
        "active": active,
        "timeline": timeline,
        "location": location,
    });
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// Counts a follower of the live feed for as long as its answer lives.
struct Following(Arc<Metrics>);

impl Following {
    fn new(metrics: Arc<Metrics>) -> Following {
        metrics.live_followers.inc();
        Following(metrics)
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.0.live_followers.dec();
    }
}

/// Where one follower of the live feed is.
struct Feed {
    store: Store,
    positions: tokio::sync::watch::Receiver<u64>,
    /// The positions generation it has seen (`None`: nothing sent yet).
    seen: Option<u64>,
    interval: Duration,
    last_sent: tokio::time::Instant,
    stopping: super::Stopping,
    _following: Following,
}

impl Feed {
    /// The next event of the feed; `None` when the server stops or the store is gone.
    async fn next(&mut self) -> Option<Bytes> {
        let Some(seen) = self.seen else {
            self.positions.borrow_and_update();
            let (generation, couriers) = self.store.positions_since(None);
            self.seen = Some(generation);
            return Some(event("snapshot", couriers));
        };
        let keep_alive = tokio::time::sleep(KEEP_ALIVE);
        tokio::select! {
            changed = self.positions.changed() => changed.ok()?,
            () = keep_alive => return Some(Bytes::from_static(b": keep-alive\n\n")),
            () = self.stopping.wait() => return None,
        }
        // Let what moves meanwhile join this event.
        tokio::select! {
            () = tokio::time::sleep_until(self.last_sent + self.interval) => {}
            () = self.stopping.wait() => return None,
        }
        self.positions.borrow_and_update();
        let (generation, couriers) = self.store.positions_since(Some(seen));
        self.seen = Some(generation);
        self.last_sent = tokio::time::Instant::now();
        Some(match couriers.is_empty() {
            true => Bytes::from_static(b": nothing moved\n\n"),
            false => event("positions", couriers),
        })
    }
}

/// One server-sent event: `name`, and the positions as JSON.
fn event(name: &str, couriers: Vec<(String, crate::store::StoredFix)>) -> Bytes {
    let couriers: Vec<FixView> =
        couriers.iter().map(|(courier, fix)| FixView::new(courier, fix)).collect();
    let data = json!({ "server_ms": crate::pipeline::now_ms(), "couriers": couriers });
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// `GET /v1/live`: the live feed (see the module's documentation).
pub(super) async fn live(State(state): State<ApiState>) -> Response {
    let feed = Feed {
        store: state.store.clone(),
        positions: state.store.watch_positions(),
        seen: None,
        interval: Duration::from_millis(state.console.live_interval_ms),
        last_sent: tokio::time::Instant::now(),
        stopping: state.stopping.clone(),
        _following: Following::new(state.metrics.clone()),
    };
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok::<_, std::convert::Infallible>(event), feed))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
            // Proxies that buffer answers (nginx) would hold events back.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tile_origin_is_what_the_policy_allows() {
        let osm = "https://tile.openstreetmap.org/{z}/{x}/{y}.png";
        assert_eq!(tile_origin(osm).as_deref(), Some("https://tile.openstreetmap.org"));
        let subdomains = "https://{s}.tile.example.org/{z}/{x}/{y}.png";
        assert_eq!(tile_origin(subdomains).as_deref(), Some("https://*.tile.example.org"));
        assert_eq!(tile_origin(""), None);
    }

    #[test]
    fn every_asset_is_embedded_and_leaflet_carries_its_licence() {
        for asset in ASSETS {
            assert!(!asset.bytes.is_empty(), "{} is empty", asset.path);
        }
        let licence = ASSETS.iter().find(|a| a.path == "vendor/leaflet/LICENSE").unwrap();
        assert!(String::from_utf8_lossy(licence.bytes).contains("Volodymyr Agafonkin"));
        // The version scripts/vendor-leaflet.sh pins, and VERSION records.
        let leaflet = ASSETS.iter().find(|a| a.path == "vendor/leaflet/leaflet.js").unwrap();
        assert!(
            String::from_utf8_lossy(leaflet.bytes).starts_with("/* @preserve\n * Leaflet 1.9.4,")
        );
        let version = ASSETS.iter().find(|a| a.path == "vendor/leaflet/VERSION").unwrap();
        assert!(version.bytes.starts_with(b"leaflet 1.9.4\n"));
    }
}
