//! Webhooks: one signed HTTP POST per attempt.
//!
//! Enters: a pending webhook [`Delivery`]. Leaves: `POST <url>` with the notice as the JSON
//! body and these headers; `Ok` for a 2xx answer, otherwise why not (the status and the start
//! of the answer, no answer within `request_timeout_ms`, no connection):
//!
//! | header | value |
//! |---|---|
//! | `Content-Type` | `application/json` |
//! | `Idempotency-Key` | the delivery's key: the same on every attempt and replay |
//! | `Locus-Event` | the event's kind (`placed`, ...) |
//! | `Locus-Signature` | `t=<unix seconds>,v1=<hex HMAC-SHA256(webhook_secret, "<t>.<body>")>` |
//!
//! The signature covers the time of the attempt, so a receiver can refuse a request replayed
//! by someone else long after (compare `t` with its clock) as well as a forged one. Redirects
//! are not followed: a 3xx is a failure naming where it pointed (a signed POST should go where
//! the config says; set the final URL there).

use super::deliveries::Delivery;
use super::NotifyError;
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, LOCATION};
use sha2::Sha256;
use std::time::Duration;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "Locus-Signature";
/// The idempotency key header's name.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// The event kind header's name.
pub const EVENT_HEADER: &str = "Locus-Event";

/// Most bytes of a refusing answer kept in the delivery's `last_error`.
const ANSWER_BYTES_KEPT: usize = 300;

/// The `Locus-Signature` value for `body` sent at Unix second `t`:
/// `t=<t>,v1=<hex of HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts webhooks: one HTTP client (connections are reused per host) and the secret.
#[derive(Debug)]
pub(super) struct WebhookSender {
    client: reqwest::Client,
    secret: Vec<u8>,
    timeout_ms: u64,
}

impl WebhookSender {
    pub(super) fn new(secret: &str, timeout: Duration) -> Result<WebhookSender, NotifyError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("locusd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(NotifyError::HttpClient)?;
        Ok(WebhookSender {
            client,
            secret: secret.as_bytes().to_vec(),
            timeout_ms: timeout.as_millis() as u64,
        })
    }

    /// One attempt: `Ok` once the receiver answered 2xx.
    pub(super) async fn send(&self, delivery: &Delivery) -> Result<(), String> {
        let t = locus_sdk::wire::now_ms() / 1000;
        let request = self
            .client
            .post(&delivery.target)
            .header(CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_HEADER, &delivery.idempotency_key)
            .header(EVENT_HEADER, delivery.event.as_str())
            .header(SIGNATURE_HEADER, signature(&self.secret, t, delivery.body.as_bytes()))
            .body(delivery.body.clone());
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Err(self.describe(&e)),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.is_redirection() {
            let to = response.headers().get(LOCATION).and_then(|v| v.to_str().ok());
            return Err(format!(
                "HTTP {status}: redirected to {} (redirects are not followed: configure the \
                 final URL)",
                to.unwrap_or("nowhere")
            ));
        }
        // The start of the answer says why, usually; the rest is not worth waiting for.
        let mut answer = Vec::new();
        while answer.len() < ANSWER_BYTES_KEPT {
            match tokio::time::timeout(Duration::from_secs(1), response.chunk()).await {
                Ok(Ok(Some(chunk))) => answer.extend_from_slice(&chunk),
                _ => break,
            }
        }
        answer.truncate(ANSWER_BYTES_KEPT);
        let answer = String::from_utf8_lossy(&answer);
        let answer = answer.trim();
        if answer.is_empty() {
            Err(format!("HTTP {status}"))
        } else {
            Err(format!("HTTP {status}: {answer}"))
        }
    }

    fn describe(&self, error: &reqwest::Error) -> String {
        if error.is_timeout() {
            return format!("no answer within {} ms", self.timeout_ms);
        }
        // reqwest's own message is generic ("error sending request"); the cause is below it.
        super::describe(error)
    }
}
