//! Rules: which deliveries an order event makes.
//!
//! Enters: an order as it is after an event that changed it, the event, and the time it was
//! committed. Leaves: one pending [`Delivery`] per target that a rule sends this kind of event
//! to (a target named by several matching rules still gets one).
//!
//! A delivery's idempotency key depends only on the order, the event id and the target, so it is
//! the same on every attempt, after restarts and on replays: a receiver that remembers the keys
//! it has handled can drop repeats.

use super::config::NotifyConfig;
use super::deliveries::{Channel, Delivery, DeliveryState, EmailText};
use super::email;
use crate::orders::{notice_json, EventKind, Order, OrderEvent};
use sha2::{Digest, Sha256};

/// The rules of `[notify]`, ready to match events.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    on: Vec<EventKind>,
    channel: Channel,
    target: String,
}

impl Rules {
    /// The rules of a checked config ([`NotifyConfig::check`]).
    pub fn new(config: &NotifyConfig) -> Rules {
        let rules = config
            .rules
            .iter()
            .filter_map(|rule| {
                let (channel, target) = match (&rule.webhook, &rule.email) {
                    (Some(url), _) => (Channel::Webhook, url.clone()),
                    (None, Some(address)) => (Channel::Email, address.clone()),
                    // Refused by the config check.
                    (None, None) => return None,
                };
                Some(Rule { on: rule.on.clone(), channel, target })
            })
            .collect();
        Rules { rules }
    }

    /// No rule at all: no event makes a delivery.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The deliveries `event` makes. `order` is the order as it is after the event, and the
    /// event must be one that changed it (a duplicate notifies nobody again); `committed_ms` is
    /// the server time the event was taken in. Each delivery is pending and due at once; it is
    /// attempted only after [`Deliveries::durable_through`](super::Deliveries::durable_through)
    /// covers its id.
    pub fn deliveries_for(
        &self,
        order: &Order,
        event: &OrderEvent,
        committed_ms: u64,
    ) -> Vec<Delivery> {
        let mut deliveries: Vec<Delivery> = Vec::new();
        let mut body: Option<String> = None;
        for rule in self.rules.iter().filter(|rule| rule.on.contains(&event.kind)) {
            let duplicate = deliveries
                .iter()
                .any(|made| made.channel == rule.channel && made.target == rule.target);
            if duplicate {
                continue;
            }
            let body = body.get_or_insert_with(|| notice_json(order, event).to_string()).clone();
            let email = match rule.channel {
                Channel::Email => Some(EmailText {
                    subject: email::subject(order, event),
                    text: email::text(order, event, &body),
                }),
                Channel::Webhook => None,
            };
            deliveries.push(Delivery {
                order: order.id.clone(),
                event_id: event.event_id.clone(),
                event: event.kind,
                channel: rule.channel,
                target: rule.target.clone(),
                idempotency_key: idempotency_key(&order.id, &event.event_id, &rule.target),
                body,
                email,
                state: DeliveryState::Pending,
                attempts: 0,
                next_attempt_ms: committed_ms,
                last_error: None,
                created_ms: committed_ms,
            });
        }
        deliveries
    }
}

/// The key a receiver sees in `Idempotency-Key`: 32 hex digits of SHA-256 over the order, the
/// event id and the target, so one event told to one target always has the same key.
pub fn idempotency_key(order: &str, event_id: &str, target: &str) -> String {
    let mut hash = Sha256::new();
    for (i, part) in [order, event_id, target].iter().enumerate() {
        if i > 0 {
            // Ids never hold a NUL byte, so the parts cannot run into each other.
            hash.update([0u8]);
        }
        hash.update(part.as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}
