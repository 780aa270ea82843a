//! The HTTP API (axum).
//!
//! Enters: HTTP requests. Leaves: JSON read from the [`Store`], Prometheus text, health; order
//! events, handed to the pipeline's order desk ([`orders`]).
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/couriers/{id}/location` | last location of a courier |
//! | `GET /v1/couriers/{id}/track?since=&until=&limit=` | recent track (device time, ms) |
//! | `POST /v1/orders/{id}/events` | an order event, answered once durable (409: not allowed now) |
//! | `GET /v1/orders/{id}`, `GET /v1/orders?state=&courier=&limit=` | orders with their timelines |
//! | `GET /v1/orders/{id}/location` | last location of an order, with its courier |
//! | `POST /v1/orders/{id}/tokens` | a customer's token for an active order (MQTT and HTTP) |
//! | `GET /v1/edges/{id}/receipts/{key}` | where a request an edge forwarded stands (pending, committed, rejected) |
//! | `GET /v1/dead-letters?reason=&courier=&source=&plugin=&since=&until=&after=&limit=` | dead letters, oldest first, paged by id ([`dead_letters`]) |
//! | `GET /v1/dead-letters/{id}`, `GET /v1/dead-letters/export?filter` | one letter; JSON lines |
//! | `POST /v1/dead-letters/{id}/replay`, `POST /v1/dead-letters/replay?filter` | replay through validation and the plugins |
//! | `DELETE /v1/dead-letters/{id}`, `DELETE /v1/dead-letters?filter` (`all=true` for all) | purge |
//! | `GET /v1/live` | every courier's last position, then changes, as server-sent events ([`console`]) |
//! | `GET /v1/whoami` | the token's role and subject |
//! | `GET /v1/orders/{id}/tracking` | what a customer's tracking page shows |
//! | `GET /`, `GET /console/{file}`, `GET /track/{order}` | the operator console and tracking page |
//! | `GET /v1/notifications?state=&order=&after=&limit=` | webhook and email deliveries, pending or dead |
//! | `POST /v1/notifications/{id}/replay`, `POST /v1/notifications/replay?order=` | send dead deliveries again |
//! | `PUT /v1/plugins/{name}` | deploy a plugin (body: the component; settings: JSON in the `Locus-Plugin-Settings` header) |
//! | `GET /v1/plugins`, `GET /v1/plugins/{name}` | deployed plugins with their stats |
//! | `DELETE /v1/plugins/{name}`, `POST /v1/plugins/{name}/rollback` | remove, roll back |
//! | `GET /healthz` | liveness and the state of each part |
//! | `GET /metrics` | Prometheus text |
//!
//! Which token scopes may use each route is [`access::ROUTES`], the table the router is built
//! from (401 without a valid token, 403 with the wrong scope; everything open when the server
//! allows anonymous access). Errors are JSON `{"error": "..."}` with a fitting status.

pub mod access;
mod config;
mod console;
mod dead_letters;
mod edges;
mod json;
mod notifications;
mod orders;
mod plugins;
mod rabbitmq;
pub mod server;
mod start;

use crate::auth::TokenAuthority;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

pub use config::{ConsoleConfig, HttpConfig, MapView};
pub use dead_letters::DeadLetterQuery;
pub use json::{FixView, TrackView};
pub use start::start;

/// Something that adds routes and health to the API (InfluxDB, plugins).
pub type HealthProbe = Arc<dyn Fn() -> (String, serde_json::Value) + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // holds closures
pub struct ApiState {
    /// The store.
    pub store: Store,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Token checks; `None` = anonymous access allowed.
    pub auth: Option<Arc<TokenAuthority>>,
    /// Largest page.
    pub max_page: usize,
    /// Extra health sections (name, JSON).
    pub health: Vec<HealthProbe>,
    /// The deployed plugins.
    pub plugins: Arc<crate::plugins::PluginRegistry>,
    /// Where order events go into the pipeline.
    pub orders: crate::pipeline::OrderDesk,
    /// Notification deliveries (`[notify]`), for listing and replaying them.
    pub notifications: Arc<crate::notify::Deliveries>,
    /// The policy for RabbitMQ's HTTP auth backend (`[http] rabbitmq_auth_backend`); `None`:
    /// its routes answer 404.
    pub external_auth: Option<Arc<crate::mqtt::external_auth::ExternalAuth>>,
    /// Where dead-letter replays go into the pipeline.
    pub dead_letters: crate::pipeline::LetterDesk,
    /// The console's settings (`[console]`).
    pub console: Arc<ConsoleConfig>,
    /// Set when the server stops: long answers (the live feed) end then.
    pub stopping: Stopping,
}

/// Whether the server is stopping, for answers that would otherwise never end (a server
/// drains its connections before it stops). [`start`] sets it with the shutdown signal.
#[derive(Debug, Clone)]
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Default for Stopping {
    /// Never stopping (until [`start`] gives it the server's signal).
    fn default() -> Self {
        Stopping(tokio::sync::watch::Sender::new(false).subscribe())
    }
}

impl Stopping {
    /// Resolves once the server stops.
    pub async fn wait(&self) {
        let mut stopping = self.0.clone();
        if stopping.wait_for(|stop| *stop).await.is_err() {
            // No server gave it a signal: it never stops.
            std::future::pending::<()>().await;
        }
    }
}

impl axum::extract::FromRef<ApiState> for notifications::NotificationsState {
    fn from_ref(state: &ApiState) -> Self {
        notifications::NotificationsState {
            deliveries: state.notifications.clone(),
            max_page: state.max_page,
        }
    }
}

/// An error answer: a status and a message, as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage error serving a request");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// The API's routes: every row of [`access::ROUTES`], behind the token check.
pub fn router(state: ApiState) -> Router {
    let mut routes = Router::new();
    for route in access::ROUTES {
        routes = routes.route(route.path, route.method_router());
    }
    routes
        .route_layer(middleware::from_fn_with_state(state.clone(), access::authorize))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

fn check_id(kind: &str, id: &str) -> Result<(), ApiError> {
    if locus_sdk::topics::is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("invalid {kind} id {id:?}")))
    }
}

async fn courier_location(
    State(state): State<ApiState>,
    Path(courier): Path<String>,
) -> Result<Json<FixView>, ApiError> {
    check_id("courier", &courier)?;
    let fix = state
        .store
        .last_location(&courier)?
        .ok_or_else(|| ApiError::not_found(format!("no location for courier {courier}")))?;
    Ok(Json(FixView::new(&courier, &fix)))
}

async fn order_location(
    State(state): State<ApiState>,
    Path(order): Path<String>,
    claims: Option<axum::Extension<crate::auth::Claims>>,
) -> Result<Json<FixView>, ApiError> {
    check_id("order", &order)?;
    orders::check_merchant_of(&state, claims.as_deref(), &order)?;
    let (courier, fix) = state
        .store
        .order_location(&order)?
        .ok_or_else(|| ApiError::not_found(format!("no location for order {order}")))?;
    Ok(Json(FixView::new(&courier, &fix)))
}

/// The query of `GET /v1/couriers/{id}/track` (`?since=&until=&limit=`), parsed by axum's
/// `Query` extractor. Public so the fuzz targets parse it the same way.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackQuery {
    /// Device time from, Unix ms.
    pub since: Option<u64>,
    /// Device time to, Unix ms.
    pub until: Option<u64>,
    /// Page size.
    pub limit: Option<usize>,
}

async fn courier_track(
    State(state): State<ApiState>,
    Path(courier): Path<String>,
    query: Result<Query<TrackQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TrackView>, ApiError> {
    check_id("courier", &courier)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(1000).clamp(1, state.max_page);
    if state.store.last_location(&courier)?.is_none() {
        return Err(ApiError::not_found(format!("no track for courier {courier}")));
    }
    let fixes = state.store.track(&courier, query.since, query.until, limit)?;
    Ok(Json(TrackView::new(&courier, &fixes, query.since.is_some() && fixes.len() == limit)))
}

async fn healthz(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let mut body = serde_json::json!({ "status": "ok" });
    for probe in &state.health {
        let (name, value) = probe();
        body[name] = value;
    }
    Json(body)
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let mut text = state.metrics.encode();
    // Plugin stats live in the registry (per deployed version); add them before the end marker.
    let plugin_lines = plugins::metrics_text(&state.plugins.list());
    match text.rfind("# EOF") {
        Some(end) => text.insert_str(end, &plugin_lines),
        None => text.push_str(&plugin_lines),
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
}
