//! Order events on their way into the commit log.
//!
//! Enters: an order event from the HTTP API ([`OrderDesk::submit`]). Leaves: the order's new
//! state once the event is durable, or the refusal at once.
//!
//! The intake thread is the one writer of the log, so it is also the one that checks events
//! against the orders view ([`crate::orders`]): between batches of reports it takes every
//! waiting event, applies each to a copy of its order (two events for one order in the same
//! round see each other), and writes the accepted ones as one log entry. Answers wait for the
//! committer's flush, like acks: a client told "assigned" will find it assigned after a crash.

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

/// Takes every waiting event: the accepted ones for one log entry, and the answers owed for
/// them once it is flushed. Refusals are answered at once (nothing to wait for).
pub(super) fn take_waiting(
    from_api: &mpsc::Receiver<OrderRequest>,
    store: &Store,
    received_ms: u64,
) -> (OrderRecord, OwedAnswers) {
    let mut record = OrderRecord { received_ms, events: Vec::new() };
    let mut owed = Vec::new();
    let mut working: HashMap<String, Order> = HashMap::new();
    for OrderRequest { order, event, answer } in from_api.try_iter() {
        let current = working.get(&order).cloned().or_else(|| store.order(&order));
        let logged = LoggedOrderEvent { order: order.clone(), event, from_courier: None };
        let event = logged.event.clone();
        match Order::after_event(current.as_ref(), &order, event, logged.source()) {
            Ok((applied, after)) => {
                if let Applied::Changed { .. } = applied {
                    record.events.push(logged);
                    working.insert(order, after.clone());
                }
                owed.push((answer, Ok((applied, after))));
            }
            Err(refusal) => {
                let _ = answer.send(Err(refusal.into()));
            }
        }
    }
    (record, owed)
}
