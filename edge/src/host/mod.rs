//! The glue to the Spin host: the one part of the crate that calls Spin's and WASI's imports,
//! so it builds for `wasm32` only. Everything it decides is in the pure modules.
//!
//! Enters: an `IncomingRequest` (from [`export`]). Leaves: a `Response`, after at most one MQTT
//! connection (publishing a POST's parts) or one outbound HTTP request (proxied routes).
//!
//! Imports used: `fermyon:spin/variables@2.0.0` (configuration), `fermyon:spin/mqtt@2.0.0`
//! (publishing), `wasi:http/outgoing-handler@0.2.x` (proxying), `wasi:random/random@0.2.x`
//! (keys and client ids); `edge/allowed-imports.txt` lists what Spin provides.

mod export;

use crate::batches::{self, Batches, KEEP_ALIVE_SECS};
use crate::config::{Config, Lookup};
use crate::errors::{Answer, EdgeError};
use crate::headers;
use crate::ingest;
use crate::proxy::{self, MAX_EVENT_BODY_BYTES, MAX_UPSTREAM_ANSWER_BYTES};
use crate::routes::{route, split_query, Route};
use futures::StreamExt;
use serde_json::json;
use spin_sdk::http::{IncomingRequest, IncomingResponse, Method, Request, Response};
use spin_sdk::mqtt::{self, Connection, Qos};

/// Answers one request.
async fn serve(request: IncomingRequest) -> Response {
    let answer = answer(request).await.unwrap_or_else(|e| {
        // Spin keeps a component's stderr in its logs: the edge's own failures (bad variables,
        // broker or locusd down) belong there; clients' mistakes do not. No message holds a
        // token.
        if e.status() >= 500 {
            eprintln!("locus-edge: {} {e}", e.status());
        }
        e.answer()
    });
    let mut response = Response::builder();
    response.status(answer.status);
    for (name, value) in answer.headers {
        response.header(name, value);
    }
    response.body(answer.body).build()
}

async fn answer(request: IncomingRequest) -> Result<Answer, EdgeError> {
    let method = request.method().to_string();
    let path_with_query = request.path_with_query().unwrap_or_default();
    let (path, query) = split_query(&path_with_query);
    // The route before the configuration: a 404 or 405 does not depend on the variables.
    let route = route(&method, path)?;
    let config = Config::load(variable)?;
    match route {
        Route::Health => Ok(Answer::json(200, &json!({"status": "ok", "edge": config.edge_id}))),
        Route::PostLocations { courier } => post_locations(request, &config, courier).await,
        Route::GetReceipt { key } => {
            let url = proxy::receipt_url(&config.api_url, &config.edge_id, key);
            let authorization = Some(proxy::edge_authorization(&config.edge_token));
            forward(Method::Get, url, authorization, None, Vec::new()).await
        }
        Route::GetCourierLocation { .. } | Route::GetOrderLocation { .. } => {
            let url = proxy::same_path_url(&config.api_url, path, query);
            let authorization = header(&request, "authorization");
            forward(Method::Get, url, authorization, None, Vec::new()).await
        }
        Route::PostOrderEvent { .. } => {
            let url = proxy::same_path_url(&config.api_url, path, query);
            let authorization = header(&request, "authorization");
            let content_type =
                header(&request, "content-type").unwrap_or_else(|| headers::JSON.to_string());
            let body = read_body(request, MAX_EVENT_BODY_BYTES)
                .await?
                .ok_or_else(proxy::event_too_large)?;
            forward(Method::Post, url, authorization, Some(content_type), body).await
        }
    }
}

/// `POST /v1/couriers/{courier}/locations`: check everything, then publish every part.
async fn post_locations(
    request: IncomingRequest,
    config: &Config,
    courier: &str,
) -> Result<Answer, EdgeError> {
    let token = headers::bearer_token(header(&request, "authorization").as_deref())?;
    let key =
        headers::idempotency_key(header(&request, "idempotency-key").as_deref(), random::<16>)?;
    let format = headers::body_format(header(&request, "content-type").as_deref())?;
    let (limit, why) = ingest::body_limit(format, config);
    let body =
        read_body(request, limit).await?.ok_or_else(|| ingest::body_too_large(limit, why))?;
    let fixes = ingest::fixes(format, &body, config.max_fixes_per_request)?;
    drop(body);
    let batches = batches::split(&key, courier, &token, fixes, config.max_fixes_per_message)
        .ok_or_else(|| EdgeError::TooLarge {
            message: "more than 65535 parts".into(),
            field: "fixes",
            limit: config.max_fixes_per_request,
        })?;
    publish(config, &batches)?;
    Ok(batches::accepted(&batches))
}

/// Publishes every part, in order, over one connection. Spin's host returns from a QoS 1
/// publish only once the broker's PUBACK arrived, so success means the broker has every part.
/// A failure part-way is safe to retry whole: locusd drops the parts it already has.
fn publish(config: &Config, batches: &Batches) -> Result<(), EdgeError> {
    let unavailable = |e: mqtt::Error| EdgeError::BrokerUnavailable {
        key: batches.key.clone(),
        detail: describe(&e),
    };
    let address = batches::broker_address(&config.broker_url, &config.edge_id, random::<8>());
    let connection =
        Connection::open(&address, &config.edge_id, &config.edge_token, KEEP_ALIVE_SECS)
            .map_err(unavailable)?;
    let topic = batches::topic(&config.edge_id);
    for message in &batches.messages {
        connection.publish(&topic, message, Qos::AtLeastOnce).map_err(unavailable)?;
    }
    Ok(())
}

fn describe(e: &mqtt::Error) -> String {
    match e {
        mqtt::Error::InvalidAddress => "invalid broker address (check broker_url)".into(),
        mqtt::Error::TooManyConnections => "too many MQTT connections".into(),
        mqtt::Error::ConnectionFailed(detail) => format!("connection failed: {detail}"),
        mqtt::Error::Other(detail) => detail.clone(),
    }
}

/// Sends one request to locusd's API and passes its answer on.
async fn forward(
    method: Method,
    url: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
) -> Result<Answer, EdgeError> {
    let mut request = Request::builder();
    request.method(method).uri(url);
    if let Some(authorization) = authorization {
        request.header("authorization", authorization);
    }
    if let Some(content_type) = content_type {
        request.header("content-type", content_type);
    }
    let request = request.body(body).build();
    let response: IncomingResponse = spin_sdk::http::send(request)
        .await
        .map_err(|e| EdgeError::UpstreamUnreachable { detail: e.to_string() })?;
    let status = response.status();
    let headers: Vec<(String, String)> = response
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let mut body = Vec::new();
    {
        // The stream is a child of the response: it goes first.
        let mut stream = response.take_body_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| EdgeError::UpstreamBadAnswer {
                detail: format!("its body broke off: {}", e.to_debug_string()),
            })?;
            if body.len() + chunk.len() > MAX_UPSTREAM_ANSWER_BYTES {
                return Err(proxy::answer_too_large());
            }
            body.extend_from_slice(&chunk);
        }
    }
    proxy::pass_through(status, &headers, body)
}

/// The body, read chunk by chunk, or `None` once it is longer than `limit` (the rest is never
/// read). A `Content-Length` over the limit is refused before reading anything.
async fn read_body(request: IncomingRequest, limit: usize) -> Result<Option<Vec<u8>>, EdgeError> {
    let declared = header(&request, "content-length").and_then(|n| n.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    let mut stream = request.into_body_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            EdgeError::bad_request("body", format!("the body broke off: {}", e.to_debug_string()))
        })?;
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The first value of header `name` (lower case), if it is text. The headers handle is dropped
/// at once: it is a child of the request, which must outlive it.
fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    let values = request.headers().get(name);
    values.into_iter().next().and_then(|v| String::from_utf8(v).ok())
}

/// A Spin variable: `Ok(None)` when undefined.
fn variable(name: &'static str) -> Lookup {
    match spin_sdk::variables::get(name) {
        Ok(value) => Ok(Some(value)),
        Err(spin_sdk::variables::Error::Undefined(_)) => Ok(None),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// `N` random bytes from the host's secure random source.
fn random<const N: usize>() -> [u8; N] {
    let bytes = wasi::random::random::get_random_bytes(N as u64);
    let mut out = [0; N];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = b;
    }
    out
}
