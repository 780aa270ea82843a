//! Order routes: `POST /v1/orders/{id}/events`, `GET /v1/orders/{id}`, `GET /v1/orders`,
//! `POST /v1/orders/{id}/tokens`.
//!
//! An event goes through the pipeline's [`OrderDesk`] (the intake checks it and writes it to the
//! commit log) and is answered once it is durable: 200 with the order, or 409 with the
//! refusal, which names the order's current status.
//!
//! A merchant's token reaches only the orders that merchant placed (the `placed` event's actor
//! is `merchant:{name}`): another merchant's order is answered 404, as if it did not exist, and
//! left out of the list. Admins and readers see every order.

use super::{check_id, ApiError, ApiState, FixView};
use crate::auth::Claims;
use crate::orders::{event_json, Applied, EventKind, Order, OrderEvent, Refusal, Status};
use crate::pipeline::{now_ms, OrderRefused};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// The body of `POST /v1/orders/{id}/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    /// `placed`, `ready`, `assigned`, `picked_up`, `delivered`, `cancelled` or `feedback`.
    event: EventKind,
    /// The sender's id for the event; resending it is harmless. Given one if absent.
    event_id: Option<String>,
    /// When it happened, Unix milliseconds; now if absent.
    at_ms: Option<u64>,
    /// The courier, for `assigned`.
    courier: Option<String>,
    /// Free-form JSON (items and address for `placed`, the customer's words for `feedback`),
    /// kept byte for byte.
    details: Option<Box<RawValue>>,
}

pub(super) async fn post_event(
    State(state): State<ApiState>,
    Path(order): Path<String>,
    claims: Option<Extension<Claims>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_id("order", &order)?;
    let body: EventBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid order event: {e}")))?;
    let event_id = match body.event_id {
        Some(id) => {
            check_id("event", &id)?;
            id
        }
        None => format!("{:032x}", rand::random::<u128>()),
    };
    if let Some(courier) = &body.courier {
        check_id("courier", courier)?;
    }
    if body.courier.is_some() && body.event != EventKind::Assigned {
        return Err(ApiError::bad_request(format!(
            "`courier` belongs to `assigned` events, not `{}`",
            body.event
        )));
    }
    let claims = claims.map(|Extension(claims)| claims);
    check_merchant_of(&state, claims.as_ref(), &order)?;
    let actor = match &claims {
        Some(claims) => format!("{}:{}", claims.role.as_str(), claims.subject),
        None => "anonymous".to_owned(),
    };
    let event = OrderEvent {
        event_id: event_id.clone(),
        kind: body.event,
        at_ms: body.at_ms.unwrap_or_else(now_ms),
        actor,
        courier: body.courier,
        details: body.details.map(|raw| raw.get().to_owned()),
    };
    let answer = state.orders.submit(order.clone(), event).await;
    match answer {
        Ok((applied, after)) => Ok(Json(json!({
            "applied": matches!(applied, Applied::Changed { .. }),
            "event_id": event_id,
            "order": order_view(&state, &after)?,
        }))),
        Err(OrderRefused::Refused(refusal @ Refusal::UnknownOrder { .. })) => {
            Err(ApiError::not_found(refusal.to_string()))
        }
        Err(OrderRefused::Refused(refusal)) => {
            Err(ApiError::new(StatusCode::CONFLICT, refusal.to_string()))
        }
        Err(unavailable @ OrderRefused::Unavailable(_)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, unavailable.to_string()))
        }
    }
}

pub(super) async fn show(
    State(state): State<ApiState>,
    Path(order): Path<String>,
    claims: Option<Extension<Claims>>,
) -> Result<Json<Value>, ApiError> {
    check_id("order", &order)?;
    let found = visible_order(&state, &order, claims.as_deref())?;
    Ok(Json(order_view(&state, &found)?))
}

/// The order `id` if the caller may see it: 404 when there is none, or when a merchant asks
/// for another merchant's order (so merchants cannot probe each other's order ids).
pub(super) fn visible_order(
    state: &ApiState,
    id: &str,
    claims: Option<&Claims>,
) -> Result<Order, ApiError> {
    let found =
        state.store.order(id).ok_or_else(|| ApiError::not_found(format!("no order {id}")))?;
    check_merchant(claims, &found)?;
    Ok(found)
}

/// For a merchant's token, whether order `id`, if it exists, is one it placed (a new order is
/// the merchant's to place). Other tokens pass without a lookup.
pub(super) fn check_merchant_of(
    state: &ApiState,
    claims: Option<&Claims>,
    id: &str,
) -> Result<(), ApiError> {
    if merchant_scope(claims).is_none() {
        return Ok(());
    }
    match state.store.order(id) {
        Some(order) => check_merchant(claims, &order),
        None => Ok(()),
    }
}

/// A merchant may touch only the orders it placed.
fn check_merchant(claims: Option<&Claims>, order: &Order) -> Result<(), ApiError> {
    match merchant_scope(claims) {
        Some(merchant) if placed_by(order) != Some(merchant) => {
            Err(ApiError::not_found(format!("no order {} placed by merchant {merchant}", order.id)))
        }
        _ => Ok(()),
    }
}

/// The merchant a token is for, when it is a merchant's.
fn merchant_scope(claims: Option<&Claims>) -> Option<&str> {
    claims.filter(|c| c.role == crate::auth::Role::Merchant).map(|c| c.subject.as_str())
}

/// The merchant whose token placed `order` (its `placed` event's actor `merchant:{name}`).
fn placed_by(order: &Order) -> Option<&str> {
    order
        .timeline
        .iter()
        .find(|event| event.kind == EventKind::Placed)
        .and_then(|event| event.actor.strip_prefix("merchant:"))
}

/// The body of `POST /v1/orders/{id}/tokens` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// Seconds until the token expires; without it, it works until the order ends.
    expires_in_s: Option<u64>,
}

/// A customer's token for an active order: what the tracking link carries. It lets the
/// customer follow the order's status and location over MQTT while the order is active, and
/// read the order over HTTP.
pub(super) async fn issue_token(
    State(state): State<ApiState>,
    Path(order): Path<String>,
    claims: Option<Extension<Claims>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_id("order", &order)?;
    let body: TokenBody = match body.is_empty() {
        true => TokenBody::default(),
        false => serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid token request: {e}")))?,
    };
    let Some(authority) = &state.auth else {
        return Err(ApiError::bad_request(
            "locusd allows anonymous access (allow_anonymous = true): it issues no tokens",
        ));
    };
    let found = visible_order(&state, &order, claims.as_deref())?;
    if found.status.is_ended() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("order {order} is {}: its customers follow it no more", found.status),
        ));
    }
    if body.expires_in_s == Some(0) {
        return Err(ApiError::bad_request("expires_in_s must be above 0"));
    }
    let expires_at_s =
        body.expires_in_s.map(|lifetime| crate::auth::unix_now_s().saturating_add(lifetime));
    let token = authority.issue_with_expiry(crate::auth::Role::Order, &order, expires_at_s);
    // Order ids and tokens are URL-safe (ids: `topics::is_valid_id`; tokens: base64url and
    // dots), so the link needs no escaping.
    let tracking_path = format!("/track/{order}?token={token}");
    Ok(Json(json!({
        "order": order,
        "token": token,
        "expires_at_s": expires_at_s,
        "tracking_path": tracking_path,
        "mqtt": {
            "username": order,
            "client_id": format!("{}{order}", crate::mqtt::policy::CUSTOMER_CLIENT_PREFIX),
            "topics": [
                locus_sdk::topics::order_status(&order),
                locus_sdk::topics::order_location(&order),
            ],
        },
    })))
}

/// The query of `GET /v1/orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// `active` (not delivered or cancelled), `ended`, or one status (`picked_up`, ...).
    state: Option<String>,
    /// Only this courier's orders.
    courier: Option<String>,
    /// At most this many (default and maximum: `[http] max_page`).
    limit: Option<usize>,
}

pub(super) async fn list(
    State(state): State<ApiState>,
    Query(query): Query<ListQuery>,
    claims: Option<Extension<Claims>>,
) -> Result<Json<Value>, ApiError> {
    let merchant = merchant_scope(claims.as_deref());
    let wanted_state: Box<dyn Fn(&Order) -> bool + Send> = match query.state.as_deref() {
        None => Box::new(|_| true),
        Some("active") => Box::new(|o| !o.status.is_ended()),
        Some("ended") => Box::new(|o| o.status.is_ended()),
        Some(name) => {
            let status: Status = serde_json::from_value(json!(name)).map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid state {name:?}: use active, ended, placed, ready, assigned, \
                     picked_up, delivered or cancelled"
                ))
            })?;
            Box::new(move |o| o.status == status)
        }
    };
    if let Some(courier) = &query.courier {
        check_id("courier", courier)?;
    }
    let limit = query.limit.unwrap_or(state.max_page).min(state.max_page);
    let orders = state.store.orders(
        |o| {
            wanted_state(o)
                && query.courier.as_ref().is_none_or(|c| o.courier.as_ref() == Some(c))
                && merchant.is_none_or(|m| placed_by(o) == Some(m))
        },
        limit,
    );
    let views = orders.iter().map(|o| order_view(&state, o)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "orders": views })))
}

/// An order as the API shows it: its lifecycle and its last location.
fn order_view(state: &ApiState, order: &Order) -> Result<Value, ApiError> {
    let location = state.store.order_location(&order.id)?;
    let timeline: Vec<Value> = order.timeline.iter().map(event_json).collect();
    Ok(json!({
        "order": order.id,
        "status": order.status,
        "ready": order.ready,
        "courier": order.courier,
        "timeline": timeline,
        "location": location.map(|(courier, fix)| FixView::new(&courier, &fix)),
    }))
}
