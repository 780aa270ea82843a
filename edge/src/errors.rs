//! Every answer the component gives, and every way a request can fail.
//!
//! Enters: a failure anywhere in the component ([`EdgeError`]) or a success built elsewhere.
//! Leaves: an [`Answer`] (status, headers, JSON body) that the host glue (`host`) turns into
//! Spin's response. A failure never traps the component: a trap would be a 500 without a body,
//! and a client could not tell a bad request from a broken edge.
//!
//! Error bodies are JSON objects with an `error` text and, where it helps a client fix the
//! request, the `field` it is about (a path into the request: `fixes[3].lat`,
//! `Idempotency-Key`), the dead-letter `code` locusd would give the same problem, or the `key`
//! to retry with.

use crate::config::ConfigError;
use serde_json::{json, Map, Value};

/// The content type of every answer the component writes itself.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// What the component answers: a status, headers, and a body (JSON unless passed through from
/// locusd with its own content type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Headers, `content-type` included.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// A JSON answer.
    pub fn json(status: u16, body: &Value) -> Answer {
        // `Value`'s Display writes JSON and cannot fail (its keys are strings).
        Answer::raw(status, JSON_CONTENT_TYPE, body.to_string().into_bytes())
    }

    /// An answer with a body already written, in `content_type`.
    pub fn raw(status: u16, content_type: &str, body: Vec<u8>) -> Answer {
        Answer { status, headers: vec![("content-type".into(), content_type.into())], body }
    }

    /// The same answer with one more header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The value of header `name` (case-insensitive), if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why a request gets no 2xx answer from the component itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    /// The request is malformed; `field` names what to fix.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// Where: a path into the body (`fixes[3].lat`), a header name, or `courier`.
        field: String,
        /// locusd's dead-letter reason for the same problem, when there is one.
        code: Option<&'static str>,
    },
    /// No usable `Authorization: Bearer` header.
    #[error("missing or malformed Authorization header: send `Authorization: Bearer TOKEN`")]
    Unauthorized,
    /// No route has this path.
    #[error("no route {path}")]
    NotFound {
        /// The request's path.
        path: String,
    },
    /// The path has a route, for other methods.
    #[error("method {method} is not allowed on {path} (allowed: {allow})")]
    MethodNotAllowed {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The methods the path takes, for the `Allow` header.
        allow: &'static str,
    },
    /// A body in a format the route does not take.
    #[error("unsupported content type {content_type:?}: send {supported}")]
    UnsupportedMediaType {
        /// The request's `Content-Type`.
        content_type: String,
        /// What the route takes.
        supported: &'static str,
    },
    /// A body or a batch over a limit.
    #[error("{message}")]
    TooLarge {
        /// What is over which limit.
        message: String,
        /// `body` or `fixes`.
        field: &'static str,
        /// The limit (bytes or fixes).
        limit: usize,
    },
    /// A Spin variable is missing or malformed: the edge is misconfigured.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker did not take every part. Parts already published are deduplicated by
    /// locusd, so the client retries the whole request with the same key.
    #[error("broker unavailable: {detail}")]
    BrokerUnavailable {
        /// The request's idempotency key.
        key: String,
        /// What the MQTT host said.
        detail: String,
    },
    /// locusd's HTTP API did not answer a proxied request.
    #[error("locusd API unreachable: {detail}")]
    UpstreamUnreachable {
        /// What the HTTP host said.
        detail: String,
    },
    /// locusd answered, but not in a way the edge can pass on.
    #[error("locusd API answered badly: {detail}")]
    UpstreamBadAnswer {
        /// What was wrong with the answer.
        detail: String,
    },
}

impl EdgeError {
    /// A [`EdgeError::BadRequest`] about `field`.
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> EdgeError {
        EdgeError::BadRequest { message: message.into(), field: field.into(), code: None }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            EdgeError::BadRequest { .. } => 400,
            EdgeError::Unauthorized => 401,
            EdgeError::NotFound { .. } => 404,
            EdgeError::MethodNotAllowed { .. } => 405,
            EdgeError::TooLarge { .. } => 413,
            EdgeError::UnsupportedMediaType { .. } => 415,
            EdgeError::Config(_) => 500,
            EdgeError::UpstreamUnreachable { .. } | EdgeError::UpstreamBadAnswer { .. } => 502,
            EdgeError::BrokerUnavailable { .. } => 503,
        }
    }

    /// The answer: `{"error": ..., ...}` with the status and headers this error calls for.
    pub fn answer(&self) -> Answer {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(self.to_string()));
        let mut extra = |name: &str, value: Value| {
            body.insert(name.into(), value);
        };
        match self {
            EdgeError::BadRequest { field, code, .. } => {
                extra("field", json!(field));
                if let Some(code) = code {
                    extra("code", json!(code));
                }
            }
            EdgeError::TooLarge { field, limit, .. } => {
                extra("field", json!(field));
                extra("limit", json!(limit));
            }
            EdgeError::MethodNotAllowed { allow, .. } => extra("allow", json!(allow)),
            EdgeError::Config(e) => {
                extra("variable", json!(e.variable));
                extra("fix", json!(e.fix));
            }
            EdgeError::BrokerUnavailable { key, .. } => {
                extra("key", json!(key));
                extra("retry", json!("send the same request with the same Idempotency-Key"));
            }
            _ => {}
        }
        let answer = Answer::json(self.status(), &Value::Object(body));
        match self {
            EdgeError::Unauthorized => {
                answer.with_header("www-authenticate", "Bearer realm=\"locus\"")
            }
            EdgeError::MethodNotAllowed { allow, .. } => answer.with_header("allow", *allow),
            EdgeError::BrokerUnavailable { key, .. } => {
                answer.with_header("retry-after", "1").with_header("idempotency-key", key.clone())
            }
            _ => answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(answer: &Answer) -> Value {
        serde_json::from_slice(&answer.body).unwrap_or(Value::Null)
    }

    #[test]
    fn a_bad_request_names_its_field_and_code() {
        let e = EdgeError::BadRequest {
            message: "fixes[3].lat: must be a number of degrees in -90..=90".into(),
            field: "fixes[3].lat".into(),
            code: Some("coordinates_out_of_range"),
        };
        let answer = e.answer();
        assert_eq!(answer.status, 400);
        assert_eq!(answer.header("Content-Type"), Some(JSON_CONTENT_TYPE));
        assert_eq!(
            body(&answer),
            json!({"error": "fixes[3].lat: must be a number of degrees in -90..=90",
                   "field": "fixes[3].lat", "code": "coordinates_out_of_range"})
        );
        let plain = EdgeError::bad_request("courier", "bad").answer();
        assert_eq!(body(&plain), json!({"error": "bad", "field": "courier"}));
    }

    #[test]
    fn headers_come_with_the_errors_that_need_them() {
        let unauthorized = EdgeError::Unauthorized.answer();
        assert_eq!(unauthorized.status, 401);
        assert_eq!(unauthorized.header("WWW-Authenticate"), Some("Bearer realm=\"locus\""));

        let wrong_method = EdgeError::MethodNotAllowed {
            method: "PUT".into(),
            path: "/healthz".into(),
            allow: "GET",
        };
        let answer = wrong_method.answer();
        assert_eq!((answer.status, answer.header("allow")), (405, Some("GET")));

        let broker = EdgeError::BrokerUnavailable { key: "k1".into(), detail: "refused".into() };
        let answer = broker.answer();
        assert_eq!(answer.status, 503);
        assert_eq!(answer.header("Retry-After"), Some("1"));
        assert_eq!(answer.header("Idempotency-Key"), Some("k1"));
        assert_eq!(
            body(&answer),
            json!({"error": "broker unavailable: refused", "key": "k1",
                   "retry": "send the same request with the same Idempotency-Key"})
        );
    }

    #[test]
    fn every_error_has_a_json_body_with_an_error_text() {
        let errors = [
            EdgeError::NotFound { path: "/x".into() },
            EdgeError::UnsupportedMediaType { content_type: "text/csv".into(), supported: "json" },
            EdgeError::TooLarge { message: "too big".into(), field: "body", limit: 10 },
            EdgeError::UpstreamUnreachable { detail: "refused".into() },
            EdgeError::UpstreamBadAnswer { detail: "huge".into() },
        ];
        let statuses: Vec<u16> = errors.iter().map(|e| e.answer().status).collect();
        assert_eq!(statuses, [404, 415, 413, 502, 502]);
        for e in errors {
            assert!(body(&e.answer())["error"].is_string(), "{e:?}");
        }
    }
}
