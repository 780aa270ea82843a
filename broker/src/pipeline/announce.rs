//! What the committer tells MQTT once a commit is durable.
//!
//! - `couriers/{courier}/acks` (retained): the courier's watermark ([`wire::Ack`]).
//! - `orders/{order}/status` (retained): every change of an order, as
//!   [`crate::orders::notice_json`] (the order after the event, and the event).
//! - `orders/{order}/location` (retained): where an active order is, the same JSON as
//!   `GET /v1/orders/{id}/location`, at most once per `[orders] location_interval_ms` per order
//!   (the newest position wins; one that arrived too soon goes out when the interval is up).
//!   Emptied (a retained message with no payload) when the order ends.
//!
//! - `fixes/{courier}` (not retained): the live fix stream, every committed fix after plugins
//!   ([`super::fix_stream`]).
//!
//! The broker keeps retained messages in memory only, so [`Announcer::announce_all`] publishes
//! them again when locusd starts.

use super::order_desk::OrderChange;
use crate::orders::{EventKind, Order, OrderEvent};
use crate::store::Store;
use bytes::Bytes;
use locus_sdk::{topics, wire};
use rumqttd::local::{LinkError, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Where announcements go: the embedded broker's local link, or an external broker.
#[allow(missing_debug_implementations)] // rumqttd's LinkTx is not Debug
pub(super) enum Outlet {
    /// The embedded broker (retained messages kept in its memory).
    Embedded(LinkTx),
    /// A broker outside locusd (cluster mode).
    External(Box<dyn super::external::Outlet>),
}

/// Publishes acks, order announcements and the fix stream.
#[allow(missing_debug_implementations)] // rumqttd's LinkTx is not Debug
pub(super) struct Announcer {
    tx: Outlet,
    store: Store,
    location_interval: Duration,
    /// When each order's location was last published.
    location_sent: HashMap<String, Instant>,
    /// Orders that moved too soon after their last publish, and when they may go.
    location_due: HashMap<String, Instant>,
}

/// The link to the broker is gone.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct LinkLost(String);

impl From<LinkError> for LinkLost {
    fn from(e: LinkError) -> Self {
        LinkLost(e.to_string())
    }
}

impl From<super::external::OutletError> for LinkLost {
    fn from(e: super::external::OutletError) -> Self {
        LinkLost(e.0)
    }
}

impl Announcer {
    pub(super) fn new(tx: Outlet, store: Store, location_interval: Duration) -> Announcer {
        Announcer {
            tx,
            store,
            location_interval,
            location_sent: HashMap::new(),
            location_due: HashMap::new(),
        }
    }

    /// A courier's ack: every report (and event) up to `seq` is committed.
    pub(super) fn ack(&mut self, courier: &str, seq: u64) -> Result<(), LinkLost> {
        // Retained, so a device that reconnects learns its committed seq at once.
        let payload = wire::encode_ack(wire::Ack { seq });
        self.publish(topics::acks(courier), payload, true)
    }

    /// A message of the live fix stream (`fixes/{courier}`, JSON). Not retained: the stream
    /// is what was committed just now, and a retained message would be a stale "now".
    pub(super) fn stream(&mut self, topic: String, json: Vec<u8>) -> Result<(), LinkLost> {
        self.publish(topic, json, false)
    }

    /// An order's new status; when the event ended it, its location is emptied.
    pub(super) fn order_changed(&mut self, change: &OrderChange) -> Result<(), LinkLost> {
        let order = &change.order;
        self.publish_status(order, &change.event)?;
        let ends = matches!(change.event.kind, EventKind::Delivered | EventKind::Cancelled);
        if ends {
            self.location_due.remove(&order.id);
            self.location_sent.remove(&order.id);
            self.publish(topics::order_location(&order.id), Vec::new(), true)?;
        }
        Ok(())
    }

    /// An active order's location changed: published now, or once its interval is up.
    pub(super) fn order_moved(&mut self, order: &str) -> Result<(), LinkLost> {
        let now = Instant::now();
        match self.location_sent.get(order) {
            Some(sent) if now < *sent + self.location_interval => {
                self.location_due.insert(order.to_owned(), *sent + self.location_interval);
                Ok(())
            }
            _ => self.publish_location(order, now),
        }
    }

    fn publish_status(&mut self, order: &Order, event: &OrderEvent) -> Result<(), LinkLost> {
        let notice = crate::orders::notice_json(order, event);
        self.publish(topics::order_status(&order.id), notice.to_string().into_bytes(), true)
    }

    /// When the next held-back location may go.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.location_due.values().min().copied()
    }

    /// Publishes the held-back locations whose interval is up.
    pub(super) fn publish_due(&mut self) -> Result<(), LinkLost> {
        let now = Instant::now();
        let due: Vec<String> = self
            .location_due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(o, _)| o.clone())
            .collect();
        for order in due {
            self.location_due.remove(&order);
            self.publish_location(&order, now)?;
        }
        Ok(())
    }

    fn publish_location(&mut self, order: &str, now: Instant) -> Result<(), LinkLost> {
        // Read now, not when it moved: the newest committed position goes.
        let active = self.store.order(order).is_some_and(|o| !o.status.is_ended());
        let location = self.store.order_location(order).ok().flatten();
        let (true, Some((courier, fix))) = (active, location) else { return Ok(()) };
        let view = crate::store::FixView::new(&courier, &fix);
        let payload = serde_json::to_vec(&view).expect("a fix view serializes to JSON");
        self.location_sent.insert(order.to_owned(), now);
        self.publish(topics::order_location(order), payload, true)
    }

    /// Publishes every retained message again: each courier's ack, each kept order's status
    /// (the notice of its last event) and each active order's location.
    pub(super) fn announce_all(&mut self) -> Result<(), LinkLost> {
        for (courier, seq) in self.store.acks() {
            self.ack(&courier, seq)?;
        }
        // A fresh broker holds no retained location, so an ended order has none to empty.
        for order in self.store.orders(|_| true, usize::MAX) {
            let Some(event) = order.timeline.last() else { continue };
            self.publish_status(&order, event)?;
            if !order.status.is_ended() {
                self.publish_location(&order.id, Instant::now())?;
            }
        }
        Ok(())
    }

    /// The external broker, when there is one: acks then wait for the shared record.
    pub(super) fn external(&mut self) -> Option<&mut dyn super::external::Outlet> {
        match &mut self.tx {
            Outlet::Embedded(_) => None,
            Outlet::External(outlet) => Some(outlet.as_mut()),
        }
    }

    fn publish(&mut self, topic: String, payload: Vec<u8>, retain: bool) -> Result<(), LinkLost> {
        let tx = match &mut self.tx {
            Outlet::Embedded(tx) => tx,
            Outlet::External(outlet) => return Ok(outlet.publish(&topic, payload, retain)?),
        };
        let publish = Publish::new(Bytes::from(topic), Bytes::from(payload), retain);
        // `LinkTx::send` is async only in signature: it locks a buffer and sends on a channel.
        // Driving it with a no-op waker keeps this thread free of a runtime.
        let mut future = std::pin::pin!(tx.send(Packet::Publish(publish, None)));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        loop {
            if let std::task::Poll::Ready(result) =
                std::future::Future::poll(future.as_mut(), &mut cx)
            {
                return result.map(|_| ()).map_err(LinkLost::from);
            }
            std::thread::yield_now();
        }
    }
}
