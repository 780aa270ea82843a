//! The sender: a tokio task that attempts due deliveries.
//!
//! Enters: deliveries due now ([`Deliveries::take_due`]). Leaves: webhook POSTs and mails, each
//! attempt's result back into the deliveries ([`Deliveries::finish`]: delivered, retried after
//! a back-off, or dead), metrics.
//!
//! At most `concurrent_attempts` attempts are in flight, each in a task of its own, and at most
//! [`PER_TARGET_IN_FLIGHT`] of them for one target, so a receiver that is down or slow (each
//! attempt waiting for `request_timeout_ms`) keeps a few slots busy and the other targets get
//! the rest. The task sleeps until the next delivery is due, an attempt finishes, or the
//! deliveries wake it (new durable ones, a replay).
//!
//! Stopping: abort the task. An attempt cut off is attempted again after the next start (at
//! least once).

use super::deliveries::{Channel, Deliveries, Delivery, Finished, RetryPolicy};
use super::email::EmailSender;
use super::webhook::WebhookSender;
use crate::metrics::{ChannelLabel, Metrics};
use locus_sdk::wire::now_ms;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// Attempts in flight for one target at most.
pub const PER_TARGET_IN_FLIGHT: usize = 4;

/// Attempts deliveries; see the module doc.
#[allow(missing_debug_implementations)] // holds the SMTP transport
pub(super) struct Sender {
    pub(super) deliveries: Arc<Deliveries>,
    /// `None` without `webhook_secret`: webhook deliveries kept from an earlier config fail.
    pub(super) webhook: Option<Arc<WebhookSender>>,
    /// `None` without `[notify.smtp]`.
    pub(super) email: Option<Arc<EmailSender>>,
    pub(super) policy: RetryPolicy,
    pub(super) concurrent_attempts: usize,
    pub(super) metrics: Arc<Metrics>,
}

impl Sender {
    /// Runs until aborted.
    pub(super) async fn run(self) {
        let mut attempts: JoinSet<(u64, Result<(), String>)> = JoinSet::new();
        // Which delivery each attempt task is, to finish it should the task panic.
        let mut tasks: HashMap<tokio::task::Id, u64> = HashMap::new();
        loop {
            let now = now_ms();
            let free = self.concurrent_attempts.saturating_sub(attempts.len());
            for (id, delivery) in self.deliveries.take_due(now, free, PER_TARGET_IN_FLIGHT) {
                let (webhook, email) = (self.webhook.clone(), self.email.clone());
                let task = attempts.spawn(async move {
                    (id, attempt(&delivery, webhook.as_deref(), email.as_deref()).await)
                });
                tasks.insert(task.id(), id);
            }
            self.metrics.notifications_pending.set(self.deliveries.pending() as i64);
            let sleep = match self.deliveries.next_due_after(now) {
                Some(at) => Duration::from_millis(at - now),
                // Nothing scheduled: only a wake-up or a finished attempt changes that.
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                Some(joined) = attempts.join_next_with_id(), if !attempts.is_empty() => {
                    let (id, result) = match joined {
                        Ok((task, (id, result))) => {
                            tasks.remove(&task);
                            (id, result)
                        }
                        Err(e) => {
                            let Some(id) = tasks.remove(&e.id()) else { continue };
                            (id, Err(format!("the attempt failed inside locusd: {e}")))
                        }
                    };
                    self.finish(id, result);
                }
                () = self.deliveries.changed() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Records an attempt's result and counts it.
    fn finish(&self, id: u64, result: Result<(), String>) {
        let (finished, delivery) = match self.deliveries.finish(id, result, &self.policy, now_ms())
        {
            Ok(Some(done)) => done,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(id, error = %e, "cannot record a notification attempt");
                return;
            }
        };
        let channel = delivery.channel;
        let label = ChannelLabel { channel: channel.as_str() };
        let error = delivery.last_error.as_deref().unwrap_or("");
        match finished {
            Finished::Delivered => {
                self.metrics.notifications_delivered.get_or_create(&label).inc();
                tracing::debug!(id, %channel, order = %delivery.order, "notification delivered");
            }
            Finished::Retry { at_ms } => {
                self.metrics.notification_failures.get_or_create(&label).inc();
                tracing::debug!(
                    id, %channel, order = %delivery.order, target = %delivery.target, error,
                    attempts = delivery.attempts, retry_in_ms = at_ms.saturating_sub(now_ms()),
                    "notification attempt failed"
                );
            }
            Finished::Dead => {
                self.metrics.notification_failures.get_or_create(&label).inc();
                self.metrics.notifications_dead.get_or_create(&label).inc();
                tracing::warn!(
                    id, %channel, order = %delivery.order, target = %delivery.target, error,
                    "notification failed {} times: it is a dead letter now \
                     (GET /v1/notifications?state=dead; POST /v1/notifications/{id}/replay)",
                    delivery.attempts
                );
            }
        }
    }
}

/// One attempt of `delivery` through its channel.
async fn attempt(
    delivery: &Delivery,
    webhook: Option<&WebhookSender>,
    email: Option<&EmailSender>,
) -> Result<(), String> {
    match (delivery.channel, webhook, email) {
        (Channel::Webhook, Some(webhook), _) => webhook.send(delivery).await,
        (Channel::Webhook, None, _) => {
            Err("[notify] has no webhook_secret to sign it with: set one, then replay".to_owned())
        }
        (Channel::Email, _, Some(email)) => email.send(delivery).await,
        (Channel::Email, _, None) => {
            Err("[notify] has no [notify.smtp] to send it through: add it, then replay".to_owned())
        }
    }
}
