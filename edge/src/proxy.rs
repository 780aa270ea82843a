//! The routes the edge passes to locusd's HTTP API: where they go, with which credentials, and
//! how locusd's answer comes back.
//!
//! Enters: a proxied [`Route`](crate::routes::Route)'s path and query, the client's headers,
//! and locusd's answer. Leaves: the upstream URL and headers, and the [`Answer`] to give.
//!
//! Receipts are read with the edge's own token (an edge may read only its own receipts, and
//! clients need no token for them: the key is the secret they hold); every other proxied route
//! carries the client's `Authorization`, which locusd checks. locusd's status and JSON body
//! pass through unchanged.

use crate::errors::{Answer, EdgeError, JSON_CONTENT_TYPE};
use serde_json::json;

/// The largest body of `POST /v1/orders/{id}/events` the edge forwards (an event's details are
/// at most 4096 bytes; the rest is ids and times).
pub const MAX_EVENT_BODY_BYTES: usize = 64 * 1024;

/// The largest answer from locusd the edge passes on (a location or receipt is a few hundred
/// bytes; this only keeps a broken upstream from filling the component's memory).
pub const MAX_UPSTREAM_ANSWER_BYTES: usize = 1024 * 1024;

/// The headers of locusd's answer that reach the client besides `content-type`.
pub const PASSED_ANSWER_HEADERS: [&str; 2] = ["www-authenticate", "retry-after"];

/// locusd's URL of a receipt of this edge: `{api_url}/v1/edges/{edge_id}/receipts/{key}`.
pub fn receipt_url(api_url: &str, edge_id: &str, key: &str) -> String {
    format!("{api_url}/v1/edges/{edge_id}/receipts/{key}")
}

/// locusd's URL of the same path (and query) as the client's request.
pub fn same_path_url(api_url: &str, path: &str, query: Option<&str>) -> String {
    match query {
        Some(query) if !query.is_empty() => format!("{api_url}{path}?{query}"),
        _ => format!("{api_url}{path}"),
    }
}

/// The `Authorization` header value of the edge's own token.
pub fn edge_authorization(edge_token: &str) -> String {
    format!("Bearer {edge_token}")
}

/// The 413 of an event body over [`MAX_EVENT_BODY_BYTES`].
pub fn event_too_large() -> EdgeError {
    EdgeError::TooLarge {
        message: format!("an order event body is at most {MAX_EVENT_BODY_BYTES} bytes"),
        field: "body",
        limit: MAX_EVENT_BODY_BYTES,
    }
}

/// The 502 of an answer over [`MAX_UPSTREAM_ANSWER_BYTES`].
pub fn answer_too_large() -> EdgeError {
    EdgeError::UpstreamBadAnswer {
        detail: format!("an answer larger than {MAX_UPSTREAM_ANSWER_BYTES} bytes"),
    }
}

/// The client's answer from locusd's: its status, JSON body and [`PASSED_ANSWER_HEADERS`]. A
/// body that is not JSON (a proxy's error page, say) becomes `{"error": TEXT}` under the same
/// status when it is an error, and a 502 when it claims success, so every answer is JSON.
pub fn pass_through(
    status: u16,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<Answer, EdgeError> {
    let content_type = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.as_str());
    let is_json = content_type.is_some_and(|ct| {
        let media = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        media == JSON_CONTENT_TYPE || media.ends_with("+json")
    });
    let mut answer = if is_json {
        Answer::raw(status, content_type.unwrap_or(JSON_CONTENT_TYPE), body)
    } else if status >= 400 {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.trim().chars().take(1000).collect();
        let error = if text.is_empty() { format!("locusd answered {status}") } else { text };
        Answer::json(status, &json!({ "error": error }))
    } else {
        return Err(EdgeError::UpstreamBadAnswer {
            detail: format!(
                "{status} with content type {:?}, not JSON",
                content_type.unwrap_or("(none)")
            ),
        });
    };
    for (name, value) in headers {
        if PASSED_ANSWER_HEADERS.iter().any(|passed| name.eq_ignore_ascii_case(passed)) {
            answer = answer.with_header(&name.to_ascii_lowercase(), value.clone());
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn urls_keep_the_path_and_query_or_point_at_the_edges_receipts() {
        assert_eq!(
            receipt_url("http://127.0.0.1:8080", "web-1", "k1"),
            "http://127.0.0.1:8080/v1/edges/web-1/receipts/k1"
        );
        let url = same_path_url("http://h:1", "/v1/couriers/c1/location", Some("x=1"));
        assert_eq!(url, "http://h:1/v1/couriers/c1/location?x=1");
        assert_eq!(
            same_path_url("http://h:1", "/v1/orders/o/events", Some("")),
            "http://h:1/v1/orders/o/events"
        );
        assert_eq!(edge_authorization("tok"), "Bearer tok");
    }

    #[test]
    fn json_answers_pass_through_with_their_status() {
        let upstream = headers(&[("Content-Type", "application/json"), ("X-Other", "no")]);
        let body = br#"{"key":"k","status":"pending"}"#.to_vec();
        let answer = pass_through(200, &upstream, body.clone()).unwrap();
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert_eq!(answer.header("x-other"), None);
        assert_eq!((answer.status, answer.body), (200, body));

        let denied = headers(&[
            ("content-type", "application/json"),
            ("WWW-Authenticate", "Bearer realm=\"locus\""),
        ]);
        let answer = pass_through(401, &denied, b"{\"error\":\"no\"}".to_vec()).unwrap();
        assert_eq!(answer.status, 401);
        assert_eq!(answer.header("www-authenticate"), Some("Bearer realm=\"locus\""));
    }

    #[test]
    fn other_answers_become_json() {
        let text = headers(&[("content-type", "text/plain")]);
        let answer = pass_through(404, &text, b"not here\n".to_vec()).unwrap();
        assert_eq!(answer.status, 404);
        assert_eq!(answer.header("content-type"), Some(JSON_CONTENT_TYPE));
        assert_eq!(answer.body, br#"{"error":"not here"}"#.to_vec());
        let empty = pass_through(500, &[], vec![]).unwrap();
        assert_eq!(empty.body, br#"{"error":"locusd answered 500"}"#.to_vec());
        let e = pass_through(200, &text, b"ok".to_vec()).unwrap_err();
        assert_eq!(e.status(), 502);
    }
}
