//! Orders: the lifecycle an order goes through, from `placed` to `delivered` (or `cancelled`)
//! and its customer's `feedback`.
//!
//! Enters: an [`OrderEvent`] with where it came from ([`EventSource`]). Leaves: the order's new
//! state and whether the event changed it ([`Applied`]), or why it was refused
//! ([`Refusal`], which names the order's current status).
//!
//! The intake (the one thread that writes the commit log) checks every event here before it
//! writes it (`pipeline::order_desk`), and the store applies the logged events to its orders
//! view the same way, live and on replay. Events come from the HTTP API today; couriers'
//! `couriers/{id}/events` and notifications are still to come (GitHub issue #10, and
//! ARCHITECTURE.md, "Orders").
//!
//! The rules, [`Order::apply`]:
//!
//! | event | allowed when the order is | then it is |
//! |---|---|---|
//! | `placed` | unknown (it creates the order) | placed |
//! | `ready` (the maker made it) | placed, or assigned and not yet made | ready, or still assigned |
//! | `assigned` (a courier took it) | placed, ready, or assigned to another courier | assigned |
//! | `picked_up` | assigned and made | picked up |
//! | `delivered` | picked up | delivered (ended) |
//! | `cancelled` | placed, ready, assigned or picked up | cancelled (ended) |
//! | `feedback` | delivered, once | delivered, with feedback |
//!
//! A courier may send only `picked_up` and `delivered`, and only for an order assigned to it.
//! Events are idempotent by event id: one seen before changes nothing and notifies no one
//! ([`Applied::Duplicate`]), even if it is replayed after later events.

mod config;

pub use config::OrdersConfig;

use serde::{Deserialize, Serialize};

/// What happened to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A customer placed it (with items and a delivery address).
    Placed,
    /// The maker fulfilled it: it can be picked up.
    Ready,
    /// A courier accepted it.
    Assigned,
    /// The courier has it.
    PickedUp,
    /// The customer has it.
    Delivered,
    /// It will not be delivered.
    Cancelled,
    /// The customer said how it went.
    Feedback,
}

impl EventKind {
    /// The name on the wire and in JSON (`picked_up`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Placed => "placed",
            EventKind::Ready => "ready",
            EventKind::Assigned => "assigned",
            EventKind::PickedUp => "picked_up",
            EventKind::Delivered => "delivered",
            EventKind::Cancelled => "cancelled",
            EventKind::Feedback => "feedback",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Placed; nobody has made or taken it yet.
    Placed,
    /// Made, waiting for a courier.
    Ready,
    /// A courier has it assigned (made or not: see [`Order::ready`]).
    Assigned,
    /// On its way.
    PickedUp,
    /// Delivered (ended).
    Delivered,
    /// Cancelled (ended).
    Cancelled,
}

impl Status {
    /// The name in JSON (`picked_up`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Placed => "placed",
            Status::Ready => "ready",
            Status::Assigned => "assigned",
            Status::PickedUp => "picked_up",
            Status::Delivered => "delivered",
            Status::Cancelled => "cancelled",
        }
    }

    /// Delivered or cancelled: nothing but feedback can happen any more.
    pub fn is_ended(self) -> bool {
        matches!(self, Status::Delivered | Status::Cancelled)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event of an order's lifecycle, as its timeline keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    /// Chosen by the sender, unique per order: a resent event with the same id is recognised.
    pub event_id: String,
    /// What happened.
    pub kind: EventKind,
    /// When it happened (sender's clock), Unix milliseconds.
    pub at_ms: u64,
    /// Who says so (a courier id, a merchant or admin token's subject).
    pub actor: String,
    /// The courier, for `assigned`.
    pub courier: Option<String>,
    /// Free-form JSON as given (items and delivery address for `placed`, the customer's words
    /// for `feedback`), kept as text so it is stored exactly as it came.
    pub details: Option<String>,
}

/// Where an event came from: it decides what the sender may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource<'a> {
    /// The HTTP API, with a token allowed to manage orders (merchant or admin).
    Api,
    /// A courier's app on `couriers/{courier}/events`.
    Courier(&'a str),
}

/// An order and everything that happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order's id.
    pub id: String,
    /// Where it stands.
    pub status: Status,
    /// The maker has made it (`ready` was applied).
    pub ready: bool,
    /// The courier it is (or was last) assigned to.
    pub courier: Option<String>,
    /// Every event applied, in the order applied.
    pub timeline: Vec<OrderEvent>,
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The order changed: whoever follows `kind` is to be notified.
    Changed {
        /// The event's kind.
        kind: EventKind,
    },
    /// The event id was seen before: nothing changed and nobody is notified again.
    Duplicate,
}

/// Why an event was refused. The message names the order's current status, so the sender
/// knows what happened instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Only `placed` creates an order.
    #[error("order {order} does not exist: it must be `placed` before `{event}`")]
    UnknownOrder {
        /// The order.
        order: String,
        /// The event refused.
        event: EventKind,
    },
    /// `placed` for an order that exists, under another event id.
    #[error("order {order} was already placed; it is now {status}")]
    AlreadyPlaced {
        /// The order.
        order: String,
        /// Its status.
        status: Status,
    },
    /// The event does not follow from the current status.
    #[error("cannot apply `{event}` to order {order}: it is {status}{why}")]
    Transition {
        /// The order.
        order: String,
        /// The event refused.
        event: EventKind,
        /// The order's status.
        status: Status,
        /// More about why, starting with "; " (or empty).
        why: String,
    },
    /// `assigned` without a courier.
    #[error("`assigned` for order {order} names no courier")]
    NoCourier {
        /// The order.
        order: String,
    },
    /// A courier sent an event it may not send, or for an order that is not its own.
    #[error("courier {courier} may not send `{event}` for order {order}{why}")]
    NotYours {
        /// The courier.
        courier: String,
        /// The order.
        order: String,
        /// The event refused.
        event: EventKind,
        /// More about why, starting with "; " (or empty).
        why: String,
    },
}

impl Order {
    /// The order a `placed` event creates. `source` must be allowed to place orders.
    pub fn place(id: &str, event: OrderEvent, source: EventSource<'_>) -> Result<Order, Refusal> {
        if event.kind != EventKind::Placed {
            return Err(Refusal::UnknownOrder { order: id.to_owned(), event: event.kind });
        }
        if let EventSource::Courier(courier) = source {
            return Err(Refusal::NotYours {
                courier: courier.to_owned(),
                order: id.to_owned(),
                event: event.kind,
                why: "; orders are placed over the API".to_owned(),
            });
        }
        Ok(Order {
            id: id.to_owned(),
            status: Status::Placed,
            ready: false,
            courier: None,
            timeline: vec![event],
        })
    }

    /// `event` for order `id` from `source`, applied to the order as it stands (`None`: never
    /// placed): what it did and the order after it. The one step both the intake (checking an
    /// event) and the store (applying the log) take.
    pub fn after_event(
        current: Option<&Order>,
        id: &str,
        event: OrderEvent,
        source: EventSource<'_>,
    ) -> Result<(Applied, Order), Refusal> {
        match current {
            Some(current) => {
                let mut after = current.clone();
                let applied = after.apply(event, source)?;
                Ok((applied, after))
            }
            None => {
                let kind = event.kind;
                Order::place(id, event, source).map(|placed| (Applied::Changed { kind }, placed))
            }
        }
    }

    /// Applies `event` from `source`, or says why not (and then changes nothing).
    pub fn apply(
        &mut self,
        event: OrderEvent,
        source: EventSource<'_>,
    ) -> Result<Applied, Refusal> {
        if self.timeline.iter().any(|seen| seen.event_id == event.event_id) {
            return Ok(Applied::Duplicate);
        }
        let kind = event.kind;
        if let EventSource::Courier(courier) = source {
            self.check_courier_may_send(courier, kind)?;
        }
        let refuse = |why: &str| Refusal::Transition {
            order: self.id.clone(),
            event: kind,
            status: self.status,
            why: why.to_owned(),
        };
        match kind {
            EventKind::Placed => {
                return Err(Refusal::AlreadyPlaced { order: self.id.clone(), status: self.status })
            }
            EventKind::Ready => match self.status {
                Status::Placed => self.status = Status::Ready,
                Status::Assigned if !self.ready => {}
                Status::Assigned => return Err(refuse("; it was already made")),
                _ => return Err(refuse("")),
            },
            EventKind::Assigned => {
                let Some(courier) = event.courier.as_deref() else {
                    return Err(Refusal::NoCourier { order: self.id.clone() });
                };
                match self.status {
                    Status::Placed | Status::Ready => {}
                    Status::Assigned if self.courier.as_deref() != Some(courier) => {}
                    Status::Assigned => {
                        return Err(refuse(&format!("; already assigned to {courier}")))
                    }
                    _ => return Err(refuse("")),
                }
                self.courier = Some(courier.to_owned());
                self.status = Status::Assigned;
            }
            EventKind::PickedUp => match self.status {
                Status::Assigned if self.ready => self.status = Status::PickedUp,
                Status::Assigned => return Err(refuse("; the maker has not made it yet")),
                _ => return Err(refuse("")),
            },
            EventKind::Delivered => match self.status {
                Status::PickedUp => self.status = Status::Delivered,
                _ => return Err(refuse("")),
            },
            EventKind::Cancelled => match self.status {
                status if status.is_ended() => return Err(refuse("")),
                _ => self.status = Status::Cancelled,
            },
            EventKind::Feedback => match self.status {
                Status::Delivered if !self.has(EventKind::Feedback) => {}
                Status::Delivered => return Err(refuse("; feedback was already given")),
                _ => return Err(refuse("; feedback comes after delivery")),
            },
        }
        if kind == EventKind::Ready {
            self.ready = true;
        }
        self.timeline.push(event);
        Ok(Applied::Changed { kind })
    }

    /// A courier sends only `picked_up` and `delivered`, and only for its own order.
    fn check_courier_may_send(&self, courier: &str, kind: EventKind) -> Result<(), Refusal> {
        let refuse = |why: String| Refusal::NotYours {
            courier: courier.to_owned(),
            order: self.id.clone(),
            event: kind,
            why,
        };
        if !matches!(kind, EventKind::PickedUp | EventKind::Delivered) {
            return Err(refuse("; a courier sends only `picked_up` and `delivered`".to_owned()));
        }
        match self.courier.as_deref() {
            Some(assigned) if assigned == courier && !self.status.is_ended() => Ok(()),
            Some(assigned) if assigned != courier => {
                Err(refuse(format!("; it is assigned to {assigned}")))
            }
            // Not assigned to anyone yet, or ended.
            _ => Err(refuse(format!("; it is {}", self.status))),
        }
    }

    /// Whether an event of `kind` was applied.
    pub fn has(&self, kind: EventKind) -> bool {
        self.timeline.iter().any(|event| event.kind == kind)
    }

    /// Whether `courier`'s fixes are this order's location now: it is assigned to the order,
    /// which is neither delivered nor cancelled.
    pub fn follows(&self, courier: &str) -> bool {
        matches!(self.status, Status::Assigned | Status::PickedUp)
            && self.courier.as_deref() == Some(courier)
    }

    /// When the order ended (its `delivered` or `cancelled` event), sender's clock; `None`
    /// while it is open. Ended orders are kept for a while, then pruned.
    pub fn ended_at_ms(&self) -> Option<u64> {
        self.status.is_ended().then(|| {
            self.timeline
                .iter()
                .rev()
                .find(|e| matches!(e.kind, EventKind::Delivered | EventKind::Cancelled))
                .map_or(0, |e| e.at_ms)
        })
    }
}

/// An event as JSON: how the API's timeline, `orders/{id}/status`, webhooks and emails show
/// it. `details` is the JSON it was given (shown as text should it not parse).
pub fn event_json(event: &OrderEvent) -> serde_json::Value {
    let mut view = serde_json::json!({
        "event_id": event.event_id,
        "event": event.kind,
        "at_ms": event.at_ms,
        "actor": event.actor,
    });
    if let Some(courier) = &event.courier {
        view["courier"] = serde_json::json!(courier);
    }
    if let Some(details) = &event.details {
        view["details"] =
            serde_json::from_str(details).unwrap_or_else(|_| serde_json::json!(details));
    }
    view
}

/// What the parties following an order are told when `event` changed it (the order as it is
/// after the event): the retained `orders/{id}/status` message, a webhook's body and an email's
/// data.
///
/// ```json
/// {"order":"o1","status":"assigned","ready":false,"courier":"c1",
///  "event":{"event_id":"e3","event":"assigned","at_ms":1765000000000,"actor":"merchant:bakery",
///           "courier":"c1"}}
/// ```
pub fn notice_json(order: &Order, event: &OrderEvent) -> serde_json::Value {
    serde_json::json!({
        "order": order.id,
        "status": order.status,
        "ready": order.ready,
        "courier": order.courier,
        "event": event_json(event),
    })
}

#[cfg(test)]
mod tests;
