//! Notification routes (admin): `GET /v1/notifications`, `POST /v1/notifications/{id}/replay`,
//! `POST /v1/notifications/replay`.
//!
//! Enters: requests about the notifier's deliveries ([`crate::notify::Deliveries`]). Leaves:
//! deliveries as JSON ([`crate::notify::delivery_json`]: id, order, event_id, event, channel,
//! target, state, attempts, next_attempt_ms, last_error, created_ms, idempotency_key), and
//! replays: a dead letter back to pending with its attempts reset, attempted at once.
//!
//! The handlers take [`NotificationsState`], which the router gets from its own state:
//!
//! ```ignore
//! impl axum::extract::FromRef<ApiState> for notifications::NotificationsState {
//!     fn from_ref(state: &ApiState) -> Self {
//!         NotificationsState { deliveries: state.notifications.clone(), max_page: state.max_page }
//!     }
//! }
//! ```

use super::ApiError;
use crate::notify::{delivery_json, Deliveries, DeliveryState, ListFilter, ReplayError};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// What the notification routes need.
#[derive(Debug, Clone)]
pub struct NotificationsState {
    /// The deliveries.
    pub deliveries: Arc<Deliveries>,
    /// Largest page (`[http] max_page`).
    pub max_page: usize,
}

/// The query of `GET /v1/notifications`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `pending` or `dead`; both if absent.
    state: Option<String>,
    /// Only this order's.
    order: Option<String>,
    /// Only ids above this one (the previous page's `next_after`).
    after: Option<u64>,
    /// At most this many (default 100, at most `[http] max_page`).
    limit: Option<usize>,
}

/// `GET /v1/notifications?state=pending|dead&order=&after=&limit=`: deliveries by id,
/// `{"notifications":[...],"next_after"}` (`next_after` is null on the last page).
pub async fn list(
    State(state): State<NotificationsState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wanted_state = match query.state.as_deref() {
        None => None,
        Some("pending") => Some(DeliveryState::Pending),
        Some("dead") => Some(DeliveryState::Dead),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid state {other:?}: use pending or dead"
            )))
        }
    };
    if let Some(order) = &query.order {
        super::check_id("order", order)?;
    }
    let limit = query.limit.unwrap_or(100).clamp(1, state.max_page);
    let filter = ListFilter {
        state: wanted_state,
        order: query.order,
        after: query.after.unwrap_or(0),
        limit,
    };
    let found = state.deliveries.list(&filter).map_err(storage)?;
    let next_after = (found.len() == limit).then(|| found.last().map(|(id, _)| *id)).flatten();
    let items: Vec<Value> = found.iter().map(|(id, d)| delivery_json(*id, d)).collect();
    Ok(Json(json!({ "notifications": items, "next_after": next_after })))
}

/// `POST /v1/notifications/{id}/replay`: a dead letter back to pending, attempted at once;
/// `{"replayed": delivery}`. 404 for an unknown id, 409 for one that is pending.
pub async fn replay(
    State(state): State<NotificationsState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match state.deliveries.replay(id, locus_sdk::wire::now_ms()) {
        Ok(delivery) => Ok(Json(json!({ "replayed": delivery_json(id, &delivery) }))),
        Err(unknown @ ReplayError::Unknown(_)) => Err(ApiError::not_found(unknown.to_string())),
        Err(pending @ ReplayError::Pending(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, pending.to_string()))
        }
        Err(ReplayError::Storage(e)) => Err(storage(e)),
    }
}

/// The query of `POST /v1/notifications/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    /// Only this order's dead letters; every dead letter if absent.
    order: Option<String>,
}

/// `POST /v1/notifications/replay?order=`: every dead letter (of the order) back to pending;
/// `{"replayed": [ids]}`.
pub async fn replay_dead(
    State(state): State<NotificationsState>,
    query: Result<Query<ReplayQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(order) = &query.order {
        super::check_id("order", order)?;
    }
    let replayed = state
        .deliveries
        .replay_dead(query.order.as_deref(), locus_sdk::wire::now_ms())
        .map_err(storage)?;
    Ok(Json(json!({ "replayed": replayed })))
}

fn storage(e: crate::notify::NotifyError) -> ApiError {
    tracing::error!(error = %e, "storage error serving a notifications request");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{Deliveries, NotifyConfig, RetryPolicy, Rules};
    use crate::orders::{EventKind, EventSource, Order, OrderEvent};
    use axum::routing::{get, post};

    /// The three routes over deliveries in a fresh store: one dead (order o1), one pending
    /// (order o2). Returns the base URL, the ids, and what must outlive the test.
    async fn serve() -> (String, [u64; 2], Arc<Deliveries>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let tree = store.notifications_tree();
        let deliveries = Arc::new(Deliveries::open(tree.clone()).unwrap());
        let config: NotifyConfig = toml::from_str(
            "webhook_secret = \"0123456789abcdef0123456789abcdef\"\n\
             [[rules]]\non = [\"placed\"]\nwebhook = \"http://127.0.0.1:9/hook\"\n",
        )
        .unwrap();
        let rules = Rules::new(&config);
        let mut ids = [0; 2];
        for (i, order) in ["o1", "o2"].into_iter().enumerate() {
            let placed = OrderEvent {
                event_id: "p1".to_owned(),
                kind: EventKind::Placed,
                at_ms: 1,
                actor: "merchant:bakery".to_owned(),
                courier: None,
                details: None,
            };
            let order = Order::place(order, placed.clone(), EventSource::Api).unwrap();
            let staged = deliveries.stage(rules.deliveries_for(&order, &placed, 1));
            for (id, value) in staged {
                tree.insert(crate::notify::deliveries::key(id), value).unwrap();
                ids[i] = id;
            }
        }
        deliveries.durable_through(ids[1]);
        let once = RetryPolicy { max_attempts: 1, backoff_initial_ms: 1, backoff_max_ms: 1 };
        let taken = deliveries.take_due(1, 1, 4);
        assert_eq!(taken[0].0, ids[0]);
        deliveries.finish(ids[0], Err("HTTP 500".to_owned()), &once, 1).unwrap();

        let state = NotificationsState { deliveries: deliveries.clone(), max_page: 100 };
        let app = axum::Router::new()
            .route("/v1/notifications", get(list))
            .route("/v1/notifications/replay", post(replay_dead))
            .route("/v1/notifications/{id}/replay", post(replay))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (base, ids, deliveries, dir)
    }

    async fn call(method: reqwest::Method, url: &str) -> (u16, Value) {
        let response = reqwest::Client::new().request(method, url).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    #[tokio::test]
    async fn deliveries_are_listed_and_dead_letters_replayed() {
        let (base, [dead, pending], deliveries, _dir) = serve().await;
        let get = reqwest::Method::GET;
        let (status, body) = call(get.clone(), &format!("{base}/v1/notifications")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["notifications"].as_array().unwrap().len(), 2);
        let (_, body) = call(get.clone(), &format!("{base}/v1/notifications?state=dead")).await;
        let listed = &body["notifications"][0];
        assert_eq!(listed["id"], dead);
        assert_eq!(
            (listed["order"].as_str(), listed["state"].as_str()),
            (Some("o1"), Some("dead"))
        );
        assert_eq!(
            (listed["channel"].as_str(), listed["attempts"].as_u64()),
            (Some("webhook"), Some(1))
        );
        assert_eq!(listed["last_error"], "HTTP 500");
        for key in ["event_id", "event", "target", "next_attempt_ms", "created_ms"] {
            assert!(listed.get(key).is_some(), "no {key} in {listed}");
        }
        let (_, body) = call(get.clone(), &format!("{base}/v1/notifications?order=o2")).await;
        assert_eq!(body["notifications"][0]["id"], pending);
        let (_, body) = call(get.clone(), &format!("{base}/v1/notifications?limit=1")).await;
        assert_eq!(body["next_after"], dead);
        let (status, _) = call(get.clone(), &format!("{base}/v1/notifications?state=late")).await;
        assert_eq!(status, 400);

        let post = reqwest::Method::POST;
        let (status, body) =
            call(post.clone(), &format!("{base}/v1/notifications/{pending}/replay")).await;
        assert_eq!(status, 409, "{body}");
        let (status, _) = call(post.clone(), &format!("{base}/v1/notifications/999/replay")).await;
        assert_eq!(status, 404);
        let (status, _) = call(post.clone(), &format!("{base}/v1/notifications/x/replay")).await;
        assert_eq!(status, 400);
        let replay_of = |order: &str| format!("{base}/v1/notifications/replay?order={order}");
        let (status, body) = call(post.clone(), &replay_of("o2")).await;
        assert_eq!((status, body["replayed"].clone()), (200, serde_json::json!([])), "none dead");
        let (status, body) = call(post.clone(), &replay_of("o1")).await;
        assert_eq!((status, body["replayed"].clone()), (200, serde_json::json!([dead])));
        assert_eq!(deliveries.pending(), 2);
        let (status, body) =
            call(post.clone(), &format!("{base}/v1/notifications/{dead}/replay")).await;
        assert_eq!(status, 409, "pending again: {body}");

        // One by id: dead again first.
        let once = RetryPolicy { max_attempts: 1, backoff_initial_ms: 1, backoff_max_ms: 1 };
        let now = locus_sdk::wire::now_ms();
        for (id, _) in deliveries.take_due(now, 10, 4) {
            deliveries.finish(id, Err("HTTP 502".to_owned()), &once, now).unwrap();
        }
        let (status, body) = call(post, &format!("{base}/v1/notifications/{dead}/replay")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["replayed"]["state"].as_str(), body["replayed"]["attempts"].as_u64()),
            (Some("pending"), Some(0))
        );
        assert_eq!(body["replayed"]["id"], dead);
        assert_eq!(deliveries.pending(), 1, "the other one stays dead");
    }
}
