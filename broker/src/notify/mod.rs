//! Notifications: order events told to webhooks and email addresses, at least once.
//!
//! Enters: each order event that changed an order (never a duplicate), with the order after it
//! and its commit time. Leaves: signed HTTP POSTs and mails, retried with back-off until
//! delivered or dead; listings and replays for the API; metrics.
//!
//! The way a notification goes, and who calls what:
//! 1. [`Rules::deliveries_for`] (the intake, per event it accepts): one pending [`Delivery`] per
//!    target a `[[notify.rules]]` sends this kind of event to, with the notice
//!    ([`crate::orders::notice_json`]) as its body and its idempotency key.
//! 2. [`Deliveries::stage`] (the intake): ids and encoded records, which the store writes into
//!    its `notifications` tree in the same transaction as the event's log entry, so an event
//!    and its deliveries are durable together or not at all.
//! 3. [`Deliveries::durable_through`] (the committer, after each flush): the deliveries up to
//!    that id may go; nothing is attempted before.
//! 4. [`start`] (serve): the sender task attempts due deliveries ([`sender`]): webhooks
//!    ([`webhook`]: POST, `Idempotency-Key`, `Locus-Signature`), mail ([`email`]: SMTP). A
//!    failure waits a capped, jittered back-off ([`RetryPolicy`]); after `max_attempts` the
//!    delivery is dead, kept with its last error until replayed ([`Deliveries::replay`]).
//! 5. The API lists and replays ([`Deliveries::list`], [`Deliveries::replay_dead`],
//!    [`delivery_json`]).
//!
//! The parts: [`config`] (`[notify]`), [`rules`], [`deliveries`] (the tree and the schedule),
//! [`sender`], [`webhook`], [`email`].
//!
//! At least once: a delivery leaves the tree only after its receiver said yes, so a crash (or
//! `kill -9`) before that means it is sent again after the restart, with the same idempotency
//! key. Receivers drop repeats by that key.

pub mod config;
pub mod deliveries;
pub mod email;
pub mod rules;
pub mod sender;
pub mod webhook;

pub use config::{NotifyConfig, NotifyConfigError, RuleConfig, SmtpConfig, SmtpTls};
pub use deliveries::{
    delivery_json, Channel, Deliveries, Delivery, DeliveryState, EmailText, Finished, ListFilter,
    ReplayError, RetryPolicy,
};
pub use rules::{idempotency_key, Rules};
pub use webhook::signature;

use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;

/// A failure of the notification machinery (not of a receiver: those are a delivery's
/// `last_error`).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// sled failed.
    #[error("notifications storage: {0}")]
    Sled(#[from] sled::Error),
    /// A stored delivery does not decode (corruption or an incompatible build).
    #[error("notification {id} in the notifications tree does not decode: {source}")]
    Corrupt {
        /// The delivery id.
        id: u64,
        /// Why.
        source: postcard::Error,
    },
    /// The HTTP client for webhooks could not be built.
    #[error("cannot set up the webhook client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// The SMTP transport could not be set up.
    #[error("cannot set up SMTP ([notify.smtp]): {0}")]
    Smtp(String),
}

impl NotifyConfig {
    /// The retry rules of this config.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            backoff_initial_ms: self.backoff_initial_ms,
            backoff_max_ms: self.backoff_max_ms,
        }
    }
}

/// Starts the sender on the current tokio runtime: it attempts the due deliveries of
/// `deliveries` (those kept from before a restart at once, new ones as
/// [`Deliveries::durable_through`] covers them) with the channels and retry rules of `config`
/// (checked), counting into `metrics`. It runs until the handle is aborted; an attempt cut
/// off is made again after the next start.
pub fn start(
    deliveries: Arc<Deliveries>,
    config: NotifyConfig,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, NotifyError> {
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let webhook = match &config.webhook_secret {
        Some(secret) => Some(Arc::new(webhook::WebhookSender::new(secret, timeout)?)),
        None => None,
    };
    let email = match &config.smtp {
        Some(smtp) => Some(Arc::new(email::EmailSender::new(smtp, timeout)?)),
        None => None,
    };
    let pending = deliveries.pending();
    if pending > 0 {
        tracing::info!(pending, "notifications pending from before the start are sent again");
    }
    let sender = sender::Sender {
        deliveries,
        webhook,
        email,
        policy: config.retry_policy(),
        concurrent_attempts: config.concurrent_attempts.max(1),
        metrics,
    };
    Ok(tokio::spawn(sender.run()))
}

/// An error with its causes, which the top-level messages of reqwest and lettre leave out
/// ("error sending request" says nothing of a refused connection).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
