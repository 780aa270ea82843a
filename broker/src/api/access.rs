//! Who may use which route: the route table and the one middleware that enforces it.
//!
//! Enters: a routed request and its `Authorization: Bearer TOKEN` header. Leaves: the request,
//! passed on to its handler, or an answer: **401** (with `WWW-Authenticate: Bearer`) without a
//! token or with an invalid, expired or revoked one; **403** with a valid token whose scope may
//! not use the route, naming the scopes that may. With `--allow-anonymous` every route is open.
//!
//! [`ROUTES`] is the only list of routes: [`super::router`] registers exactly these rows, and
//! the end-to-end test walks the same list, so a route cannot exist without a row saying who
//! may use it.

use super::plugins;
use super::ApiState;
use crate::auth::{AuthError, Claims, Role};
use axum::extract::{FromRequestParts as _, MatchedPath, RawPathParams, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Json;

/// One route: method, path (axum syntax), who may use it, and its handler.
#[allow(missing_debug_implementations)] // holds a handler constructor
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path, with `{param}` segments as axum writes them.
    pub path: &'static str,
    /// Who may use it.
    pub access: Access,
    handler: fn(MethodFilter) -> MethodRouter<ApiState>,
}

impl Route {
    pub(super) fn method_router(&self) -> MethodRouter<ApiState> {
        let filter = MethodFilter::try_from(self.method.clone())
            .unwrap_or_else(|_| panic!("route table: unsupported method {}", self.method));
        (self.handler)(filter)
    }
}

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a token (load balancers' probes, Prometheus scrapers).
    Open,
    /// A valid token with one of these grants.
    Token(&'static [Grant]),
}

/// One way a token may be allowed on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Any token of this role.
    Role(Role),
    /// An order token whose subject is the route's `{id}`: one order sees only itself.
    OrderInPath,
    /// An edge token whose subject is the route's `{id}`: an edge reads only its own receipts.
    EdgeInPath,
}

impl Grant {
    fn allows(self, claims: &Claims, id_in_path: Option<&str>) -> bool {
        match self {
            Grant::Role(role) => claims.role == role,
            Grant::OrderInPath => {
                claims.role == Role::Order && id_in_path == Some(claims.subject.as_str())
            }
            Grant::EdgeInPath => {
                claims.role == Role::Edge && id_in_path == Some(claims.subject.as_str())
            }
        }
    }

    fn describe(self) -> String {
        match self {
            Grant::Role(role) => role.as_str().to_owned(),
            Grant::OrderInPath => "order (for this order)".to_owned(),
            Grant::EdgeInPath => "edge (this edge)".to_owned(),
        }
    }
}

use Grant::{EdgeInPath, OrderInPath, Role as R};

const ADMIN: Access = Access::Token(&[R(Role::Admin)]);
const READ: Access = Access::Token(&[R(Role::Admin), R(Role::Reader)]);
/// Merchants read orders too, only those they placed (the handlers narrow it: `api::orders`).
const ORDER_READ: Access =
    Access::Token(&[R(Role::Admin), R(Role::Reader), R(Role::Merchant), OrderInPath]);
const ORDERS_LIST: Access = Access::Token(&[R(Role::Admin), R(Role::Reader), R(Role::Merchant)]);
/// Merchants (and operators) move orders along; couriers do it over MQTT.
const ORDER_WRITE: Access = Access::Token(&[R(Role::Admin), R(Role::Merchant)]);
/// An edge reads its own receipts (for its HTTP clients); operators read any.
const EDGE_RECEIPTS: Access = Access::Token(&[R(Role::Admin), EdgeInPath]);
// Courier tokens are for MQTT: no route grants `courier`.

/// Every route of the API and who may use it (also the README's HTTP API table).
#[rustfmt::skip] // one row per route reads as a table
pub static ROUTES: &[Route] = &[
    // Open: probes and scrapers carry no token.
    Route { method: Method::GET, path: "/healthz", access: Access::Open, handler: |m| on(m, super::healthz) },
    Route { method: Method::GET, path: "/metrics", access: Access::Open, handler: |m| on(m, super::metrics) },
    // Open: the console's and the tracking page's files hold no data (off with [console] enabled = false).
    Route { method: Method::GET, path: "/", access: Access::Open, handler: |m| on(m, super::console::index) },
    Route { method: Method::GET, path: "/console/settings.json", access: Access::Open, handler: |m| on(m, super::console::settings) },
    Route { method: Method::GET, path: "/console/{*file}", access: Access::Open, handler: |m| on(m, super::console::file) },
    Route { method: Method::GET, path: "/track/{order}", access: Access::Open, handler: |m| on(m, super::console::tracking_page) },
    // Open: RabbitMQ's HTTP auth backend carries no token (off unless [http] rabbitmq_auth_backend).
    Route { method: Method::POST, path: "/rabbitmq/auth/user", access: Access::Open, handler: |m| on(m, super::rabbitmq::user) },
    Route { method: Method::POST, path: "/rabbitmq/auth/vhost", access: Access::Open, handler: |m| on(m, super::rabbitmq::vhost) },
    Route { method: Method::POST, path: "/rabbitmq/auth/resource", access: Access::Open, handler: |m| on(m, super::rabbitmq::resource) },
    Route { method: Method::POST, path: "/rabbitmq/auth/topic", access: Access::Open, handler: |m| on(m, super::rabbitmq::topic) },
    // Locations and tracks: readers.
    Route { method: Method::GET, path: "/v1/couriers/{id}/location", access: READ, handler: |m| on(m, super::courier_location) },
    Route { method: Method::GET, path: "/v1/couriers/{id}/track", access: READ, handler: |m| on(m, super::courier_track) },
    // The console: who am I, and every position live.
    Route { method: Method::GET, path: "/v1/whoami", access: READ, handler: |m| on(m, super::console::whoami) },
    Route { method: Method::GET, path: "/v1/live", access: READ, handler: |m| on(m, super::console::live) },
    // Orders: readers, merchants, and the order's own token.
    Route { method: Method::GET, path: "/v1/orders", access: ORDERS_LIST, handler: |m| on(m, super::orders::list) },
    Route { method: Method::GET, path: "/v1/orders/{id}", access: ORDER_READ, handler: |m| on(m, super::orders::show) },
    Route { method: Method::POST, path: "/v1/orders/{id}/events", access: ORDER_WRITE, handler: |m| on(m, super::orders::post_event) },
    Route { method: Method::GET, path: "/v1/orders/{id}/location", access: ORDER_READ, handler: |m| on(m, super::order_location) },
    Route { method: Method::GET, path: "/v1/orders/{id}/tracking", access: ORDER_READ, handler: |m| on(m, super::console::tracking) },
    Route { method: Method::POST, path: "/v1/orders/{id}/tokens", access: ORDER_WRITE, handler: |m| on(m, super::orders::issue_token) },
    // Edges: each its own receipts.
    Route { method: Method::GET, path: "/v1/edges/{id}/receipts/{key}", access: EDGE_RECEIPTS, handler: |m| on(m, super::edges::receipt) },
    // Operations: admin.
    Route { method: Method::GET, path: "/v1/dead-letters", access: ADMIN, handler: |m| on(m, super::dead_letters::list) },
    Route { method: Method::DELETE, path: "/v1/dead-letters", access: ADMIN, handler: |m| on(m, super::dead_letters::purge_matching) },
    Route { method: Method::GET, path: "/v1/dead-letters/export", access: ADMIN, handler: |m| on(m, super::dead_letters::export) },
    Route { method: Method::POST, path: "/v1/dead-letters/replay", access: ADMIN, handler: |m| on(m, super::dead_letters::replay_matching) },
    Route { method: Method::GET, path: "/v1/dead-letters/{id}", access: ADMIN, handler: |m| on(m, super::dead_letters::show) },
    Route { method: Method::DELETE, path: "/v1/dead-letters/{id}", access: ADMIN, handler: |m| on(m, super::dead_letters::purge_one) },
    Route { method: Method::POST, path: "/v1/dead-letters/{id}/replay", access: ADMIN, handler: |m| on(m, super::dead_letters::replay_one) },
    Route { method: Method::GET, path: "/v1/notifications", access: ADMIN, handler: |m| on(m, super::notifications::list) },
    Route { method: Method::POST, path: "/v1/notifications/{id}/replay", access: ADMIN, handler: |m| on(m, super::notifications::replay) },
    Route { method: Method::POST, path: "/v1/notifications/replay", access: ADMIN, handler: |m| on(m, super::notifications::replay_dead) },
    Route { method: Method::GET, path: "/v1/plugins", access: ADMIN, handler: |m| on(m, plugins::list) },
    Route { method: Method::GET, path: "/v1/plugins/{name}", access: ADMIN, handler: |m| on(m, plugins::show) },
    Route { method: Method::PUT, path: "/v1/plugins/{name}", access: ADMIN, handler: plugins::deploy_route },
    Route { method: Method::DELETE, path: "/v1/plugins/{name}", access: ADMIN, handler: |m| on(m, plugins::remove) },
    Route { method: Method::POST, path: "/v1/plugins/{name}/rollback", access: ADMIN, handler: |m| on(m, plugins::rollback) },
];

/// Who may use the route `method path` (a path as in [`ROUTES`]); admin-only for anything not
/// in the table. HEAD is served by GET routes, so it is allowed like GET.
pub fn access_of(method: &Method, path: &str) -> Access {
    let method = if method == Method::HEAD { &Method::GET } else { method };
    ROUTES
        .iter()
        .find(|route| route.path == path && route.method == method)
        .map_or(ADMIN, |route| route.access)
}

/// The middleware: checks the request's token against its route's row.
pub(super) async fn authorize(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(auth) = &state.auth else {
        return next.run(request).await;
    };
    let path = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let grants = match access_of(request.method(), path.as_deref().unwrap_or("")) {
        Access::Open => return next.run(request).await,
        Access::Token(grants) => grants,
    };
    let Some(token) = bearer_token(&request) else {
        return unauthorized("missing Authorization: Bearer TOKEN", None);
    };
    let claims = match auth.authenticate(token) {
        Ok(claims) => claims,
        Err(e @ (AuthError::Invalid | AuthError::Expired { .. } | AuthError::Revoked(_))) => {
            return unauthorized(&e.to_string(), Some("invalid_token"));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check an API token");
            return super::ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                .into_response();
        }
    };
    let (mut parts, body) = request.into_parts();
    let params = RawPathParams::from_request_parts(&mut parts, &()).await.ok();
    let id_in_path =
        params.as_ref().and_then(|p| p.iter().find(|(k, _)| *k == "id")).map(|(_, v)| v);
    if grants.iter().any(|grant| grant.allows(&claims, id_in_path)) {
        // Handlers that record who did something (order events) read the claims.
        parts.extensions.insert(claims);
        return next.run(Request::from_parts(parts, body)).await;
    }
    forbidden(grants, &claims)
}

fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized(message: &str, error: Option<&str>) -> Response {
    // RFC 6750: the challenge names the scheme, and the kind of error when a token was sent.
    let challenge = match error {
        Some(error) => format!("Bearer realm=\"locus\", error=\"{error}\""),
        None => "Bearer realm=\"locus\"".to_owned(),
    };
    let challenge = HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer"));
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

fn forbidden(grants: &[Grant], claims: &Claims) -> Response {
    let needed: Vec<String> = grants.iter().map(|g| g.describe()).collect();
    let message = format!(
        "this route needs a token with scope {}; this token's scope is {} ({})",
        needed.join(" or "),
        claims.role,
        claims.subject
    );
    let scope: Vec<&str> = grants
        .iter()
        .map(|g| match g {
            Grant::Role(role) => role.as_str(),
            Grant::OrderInPath => Role::Order.as_str(),
            Grant::EdgeInPath => Role::Edge.as_str(),
        })
        .collect();
    let challenge = format!(
        "Bearer realm=\"locus\", error=\"insufficient_scope\", scope=\"{}\"",
        scope.join(" ")
    );
    let challenge = HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer"));
    (
        StatusCode::FORBIDDEN,
        [(header::WWW_AUTHENTICATE, challenge)],
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_listed_once_and_courier_tokens_get_no_route() {
        let mut seen = std::collections::HashSet::new();
        for route in ROUTES {
            assert!(
                seen.insert((route.method.clone(), route.path)),
                "{} {} twice",
                route.method,
                route.path
            );
            if let Access::Token(grants) = route.access {
                assert!(!grants.contains(&R(Role::Courier)), "{} {}", route.method, route.path);
                assert!(
                    grants.contains(&R(Role::Admin)),
                    "admin may use everything: {}",
                    route.path
                );
            }
        }
        assert_eq!(access_of(&Method::GET, "/not/listed"), ADMIN);
        assert_eq!(access_of(&Method::HEAD, "/healthz"), Access::Open);
    }
}
