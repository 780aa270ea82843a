//! Order events on their way into the commit log.
//!
//! Enters: an order event from the HTTP API ([`OrderDesk::submit`]) or from a courier's
//! `couriers/{id}/events` (the intake reads those with reports). Leaves: the accepted events
//! for the commit ([`OrderBook`]), what changed (for the retained statuses and notifications
//! the committer sends once they are durable), and for the API, the order's new state once the
//! event is durable, or the refusal at once.
//!
//! The intake thread is the one writer of the log, so it is also the one that checks events
//! against the orders view ([`crate::orders`]): it applies each to a copy of its order (two
//! events for one order in the same commit see each other) and writes the accepted ones with
//! the commit. Answers wait for the committer's flush, like acks: a client told "assigned"
//! will find it assigned after a crash.

use crate::orders::{Applied, Order, OrderEvent, Refusal};
use crate::store::{LoggedOrderEvent, OrderRecord, Store};
use std::collections::HashMap;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// What the submitter of an event learns.
pub type OrderAnswer = Result<(Applied, Order), OrderRefused>;

/// Why an event was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderRefused {
    /// The lifecycle does not allow it (the message names the order's status).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// locusd could not store it (stopping, or storage failing); the event may be resent.
    #[error("order events cannot be stored now: {0}")]
    Unavailable(String),
}

/// One event waiting for the intake.
#[derive(Debug)]
pub(super) struct OrderRequest {
    order: String,
    event: OrderEvent,
    answer: oneshot::Sender<OrderAnswer>,
}

/// Where the API hands order events to the pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OrderDesk {
    to_intake: mpsc::Sender<OrderRequest>,
}

impl OrderDesk {
    /// A desk and the intake's end of it.
    pub(super) fn new() -> (OrderDesk, mpsc::Receiver<OrderRequest>) {
        let (to_intake, from_api) = mpsc::channel();
        (OrderDesk { to_intake }, from_api)
    }

    /// Submits `event` for `order` and waits until it is durable (or refused).
    pub async fn submit(&self, order: String, event: OrderEvent) -> OrderAnswer {
        let (answer, answered) = oneshot::channel();
        let stopped = || OrderRefused::Unavailable("the pipeline is not running".to_owned());
        self.to_intake.send(OrderRequest { order, event, answer }).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Answers owed once the events they answer are durable.
pub(super) type OwedAnswers = Vec<(oneshot::Sender<OrderAnswer>, OrderAnswer)>;

/// An event that changed its order: what the parties following the order are told.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderChange {
    /// The order as the event left it.
    pub order: Order,
    /// The event.
    pub event: OrderEvent,
}

/// The order events of one commit: checked against the orders view and each other.
#[derive(Debug)]
pub(super) struct OrderBook {
    /// Orders as this commit's events left them so far.
    working: HashMap<String, Order>,
    /// The accepted events, for the log.
    pub(super) record: OrderRecord,
    /// What each accepted event changed, in order.
    pub(super) changes: Vec<OrderChange>,
}

impl OrderBook {
    /// An empty book for events taken in at `received_ms`.
    pub(super) fn new(received_ms: u64) -> OrderBook {
        OrderBook {
            working: HashMap::new(),
            record: OrderRecord { received_ms, events: Vec::new() },
            changes: Vec::new(),
        }
    }

    /// Checks `event` for `order`, sent by courier `from_courier` over MQTT or (`None`) from
    /// the API, and takes it when it changes the order. A duplicate is answered like the
    /// first time and logged nowhere.
    pub(super) fn take(
        &mut self,
        store: &Store,
        order: &str,
        event: OrderEvent,
        from_courier: Option<&str>,
    ) -> Result<(Applied, Order), Refusal> {
        let current = self.working.get(order).cloned().or_else(|| store.order(order));
        let logged = LoggedOrderEvent {
            order: order.to_owned(),
            event,
            from_courier: from_courier.map(str::to_owned),
        };
        let event = logged.event.clone();
        let (applied, after) = Order::after_event(current.as_ref(), order, event, logged.source())?;
        if let Applied::Changed { .. } = applied {
            self.changes.push(OrderChange { order: after.clone(), event: logged.event.clone() });
            self.record.events.push(logged);
            self.working.insert(order.to_owned(), after.clone());
        }
        Ok((applied, after))
    }
}

/// Takes every event waiting at the desk into `book`, returning the answers owed once they are
/// durable. Refusals are answered at once (nothing to wait for).
pub(super) fn take_waiting(
    from_api: &mpsc::Receiver<OrderRequest>,
    store: &Store,
    book: &mut OrderBook,
) -> OwedAnswers {
    let mut owed = Vec::new();
    for OrderRequest { order, event, answer } in from_api.try_iter() {
        match book.take(store, &order, event, None) {
            Ok(taken) => owed.push((answer, Ok(taken))),
            Err(refusal) => {
                let _ = answer.send(Err(refusal.into()));
            }
        }
    }
    owed
}
