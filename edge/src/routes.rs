//! Which route a request is for.
//!
//! Enters: the request's method and `path_with_query`. Leaves: a [`Route`] with its checked
//! path parameters, or the 404 / 405 / 400 to answer.
//!
//! The component routes on the path itself rather than with the SDK's `Router`: that router
//! reads the `spin-path-info` header, which Spin sets but a plain wasmtime host (the project's
//! test harness) does not. The trigger route in `spin.toml` is `/...`, so the path here is the
//! request's whole path.

use crate::errors::EdgeError;
use locus_sdk::topics::is_valid_id;
use locus_sdk::wire::is_valid_edge_key;

/// A request the component serves. Ids and keys are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `POST /v1/couriers/{courier}/locations`: fixes, published to locusd over MQTT.
    PostLocations {
        /// The courier.
        courier: &'a str,
    },
    /// `GET /v1/receipts/{key}`: where a POST stands, from locusd.
    GetReceipt {
        /// The idempotency key.
        key: &'a str,
    },
    /// `GET /v1/couriers/{courier}/location`, proxied to locusd.
    GetCourierLocation {
        /// The courier.
        courier: &'a str,
    },
    /// `GET /v1/orders/{order}/location`, proxied to locusd.
    GetOrderLocation {
        /// The order.
        order: &'a str,
    },
    /// `POST /v1/orders/{order}/events`, proxied to locusd.
    PostOrderEvent {
        /// The order.
        order: &'a str,
    },
    /// `GET /healthz`.
    Health,
}

/// A request's path split from its query (`path_with_query` without `?` has no query).
pub fn split_query(path_with_query: &str) -> (&str, Option<&str>) {
    match path_with_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_with_query, None),
    }
}

/// The route for `method` on `path` (without the query).
pub fn route<'a>(method: &str, path: &'a str) -> Result<Route<'a>, EdgeError> {
    let segments: Vec<&str> = match path.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => return Err(EdgeError::NotFound { path: path.to_string() }),
    };
    // The shape first, then the method (405 beats 400), then the parameters.
    let (allow, route) = match segments.as_slice() {
        ["healthz"] => ("GET", Ok(Route::Health)),
        ["v1", "couriers", id, "locations"] => {
            ("POST", id_param(id, "courier").map(|courier| Route::PostLocations { courier }))
        }
        ["v1", "couriers", id, "location"] => {
            ("GET", id_param(id, "courier").map(|courier| Route::GetCourierLocation { courier }))
        }
        ["v1", "orders", id, "location"] => {
            ("GET", id_param(id, "order").map(|order| Route::GetOrderLocation { order }))
        }
        ["v1", "orders", id, "events"] => {
            ("POST", id_param(id, "order").map(|order| Route::PostOrderEvent { order }))
        }
        ["v1", "receipts", key] => ("GET", key_param(key).map(|key| Route::GetReceipt { key })),
        _ => return Err(EdgeError::NotFound { path: path.to_string() }),
    };
    if method != allow {
        return Err(EdgeError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
            allow,
        });
    }
    route
}

fn id_param<'a>(id: &'a str, field: &'static str) -> Result<&'a str, EdgeError> {
    if is_valid_id(id) {
        Ok(id)
    } else {
        Err(EdgeError::bad_request(
            field,
            format!("{field} id {id:?} must be 1-64 characters of letters, digits, - _ . :"),
        ))
    }
}

fn key_param(key: &str) -> Result<&str, EdgeError> {
    if is_valid_edge_key(key) {
        Ok(key)
    } else {
        Err(EdgeError::bad_request(
            "key",
            format!("receipt key {key:?} must be 1-128 characters of letters, digits, - _ . :"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_found_with_its_parameters() {
        assert_eq!(route("GET", "/healthz"), Ok(Route::Health));
        assert_eq!(
            route("POST", "/v1/couriers/c-1/locations"),
            Ok(Route::PostLocations { courier: "c-1" })
        );
        assert_eq!(
            route("GET", "/v1/couriers/c-1/location"),
            Ok(Route::GetCourierLocation { courier: "c-1" })
        );
        assert_eq!(
            route("GET", "/v1/orders/o:9/location"),
            Ok(Route::GetOrderLocation { order: "o:9" })
        );
        assert_eq!(
            route("POST", "/v1/orders/o1/events"),
            Ok(Route::PostOrderEvent { order: "o1" })
        );
        assert_eq!(route("GET", "/v1/receipts/k.1"), Ok(Route::GetReceipt { key: "k.1" }));
    }

    #[test]
    fn unknown_paths_are_404_and_other_methods_405() {
        for path in ["/", "", "/v1", "/healthz/", "/v1/couriers/c1", "/v1/couriers/c1/locations/x"]
        {
            assert!(matches!(route("GET", path), Err(EdgeError::NotFound { .. })), "{path}");
        }
        let e = route("GET", "/v1/couriers/c1/locations").unwrap_err();
        assert!(matches!(e, EdgeError::MethodNotAllowed { allow: "POST", .. }), "{e:?}");
        // The method is checked before the id: a wrong method on a bad id is still 405.
        let e = route("DELETE", "/v1/couriers/a%2Fb/location").unwrap_err();
        assert!(matches!(e, EdgeError::MethodNotAllowed { allow: "GET", .. }), "{e:?}");
        assert_eq!(route("HEAD", "/healthz").unwrap_err().status(), 405);
    }

    #[test]
    fn bad_ids_and_keys_are_400_naming_the_parameter() {
        fn field(method: &str, path: &str) -> String {
            match route(method, path) {
                Err(EdgeError::BadRequest { field, .. }) => field,
                other => format!("{other:?}"),
            }
        }
        assert_eq!(field("POST", "/v1/couriers/a%2Fb/locations"), "courier");
        assert_eq!(field("POST", "/v1/couriers//locations"), "courier");
        assert_eq!(field("GET", &format!("/v1/couriers/{}/location", "c".repeat(65))), "courier");
        assert_eq!(field("GET", "/v1/orders/o+1/location"), "order");
        assert_eq!(field("POST", "/v1/orders/o 1/events"), "order");
        assert_eq!(field("GET", &format!("/v1/receipts/{}", "k".repeat(129))), "key");
    }

    #[test]
    fn the_query_is_split_off() {
        assert_eq!(split_query("/v1/receipts/k?x=1"), ("/v1/receipts/k", Some("x=1")));
        assert_eq!(split_query("/healthz"), ("/healthz", None));
    }
}
