//! The live view: what the log says now, in memory — every courier's committed seqs and last
//! location, every order's lifecycle and which couriers' fixes locate which orders, the last
//! locations of orders changed since the last checkpoint, and the open track blocks. The intake applies each log entry to it right after writing the entry; the
//! checkpoint copies what changed into sled.

use super::log::{CommitRecord, OrderRecord};
use super::seqs::SeqWindow;
use super::track::OpenTracks;
use super::StoredFix;
use crate::orders::{Applied, Order};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// What the `courier_state` tree keeps per courier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct CourierRecord {
    /// Committed seqs.
    pub(super) seqs: SeqWindow,
    /// The last location (newest device time).
    pub(super) last: Option<StoredFix>,
}

#[derive(Debug, Default)]
pub(super) struct CourierLive {
    pub(super) record: CourierRecord,
    /// Changed since the last checkpoint.
    pub(super) dirty: bool,
    /// The positions generation in which its last position last changed (0: not since the
    /// store was opened).
    pub(super) moved_at: u64,
}

/// The live view (behind the store's lock).
#[derive(Debug, Default)]
pub(super) struct Live {
    pub(super) couriers: HashMap<String, CourierLive>,
    /// Last locations of orders changed since the last checkpoint (the rest are in sled).
    pub(super) orders: HashMap<String, (String, StoredFix)>,
    /// Orders being written by a checkpoint in progress (still read from here until it ends).
    pub(super) orders_checkpointing: HashMap<String, (String, StoredFix)>,
    pub(super) tracks: OpenTracks,
    /// Every order's lifecycle (loaded from the `orders` tree, then kept up by the log).
    pub(super) order_states: HashMap<String, Order>,
    /// Orders whose lifecycle changed since the last checkpoint.
    pub(super) orders_dirty: HashSet<String>,
    /// Courier → the orders its fixes locate now (assigned to it, neither delivered nor
    /// cancelled; see [`Order::follows`]). Kept with `order_states`.
    pub(super) following: HashMap<String, Vec<String>>,
    /// The newest log entry applied.
    pub(super) applied_through: u64,
    /// Couriers with fixes since the last prune (only their tracks can have outgrown it).
    pub(super) touched: HashSet<String>,
    /// Counts the entries that moved a courier's last position; each courier remembers the
    /// one that last moved it (`moved_at`), so followers of positions (the console's live map)
    /// ask for what moved since the generation they saw.
    pub(super) positions_generation: u64,
}

/// An order's last location in the live view's maps: changed since the last checkpoint, or
/// being written by the one in progress.
fn order_in_memory<'a>(
    orders: &'a HashMap<String, (String, StoredFix)>,
    checkpointing: &'a HashMap<String, (String, StoredFix)>,
    order: &str,
) -> Option<&'a (String, StoredFix)> {
    orders.get(order).or_else(|| checkpointing.get(order))
}

impl Live {
    /// The last location of an order as far as memory knows (`None`: ask sled).
    pub(super) fn order(&self, order: &str) -> Option<&(String, StoredFix)> {
        order_in_memory(&self.orders, &self.orders_checkpointing, order)
    }

    /// Adds `order` to what its courier's fixes locate, if they do now.
    pub(super) fn follow(&mut self, order: &Order) {
        if let Some(courier) = order.courier.as_deref().filter(|c| order.follows(c)) {
            self.following.entry(courier.to_owned()).or_default().push(order.id.clone());
        }
    }

    fn unfollow(&mut self, courier: &str, order: &str) {
        if let Some(orders) = self.following.get_mut(courier) {
            orders.retain(|o| o != order);
            if orders.is_empty() {
                self.following.remove(courier);
            }
        }
    }

    /// Applies log entry `id`, adding to `moved` the orders whose location it changed.
    /// `stored_order` reads an order's last location from sled when memory does not have it;
    /// `in_written_track(courier, ts)` says the track in sled already holds the fix (after a
    /// checkpoint cut off halfway; see the store's `replay`).
    ///
    /// A fix locates the orders its courier is assigned to and has not delivered (or seen
    /// cancelled) at the point of the log it is in; its own `order` field is only recorded
    /// (in the track and InfluxDB): a device cannot move an order it does not carry.
    pub(super) fn apply(
        &mut self,
        id: u64,
        record: CommitRecord,
        mut stored_order: impl FnMut(&str) -> Option<(String, StoredFix)>,
        mut in_written_track: impl FnMut(&str, u64) -> bool,
        moved: &mut Vec<String>,
    ) {
        let CommitRecord { received_ms, couriers, reports, fixes } = record;
        let generation = self.positions_generation + 1;
        if !fixes.is_empty() {
            for courier in &couriers {
                if !self.touched.contains(courier) {
                    self.touched.insert(courier.clone());
                }
            }
        }
        for (courier, seq) in reports {
            let live = self.courier_mut(&couriers[courier as usize]);
            let _ = live.record.seqs.take(seq);
            live.dirty = true;
        }
        for logged in fixes {
            let courier = &couriers[logged.courier as usize];
            let stored = StoredFix { fix: logged.fix, attributes: logged.attributes, received_ms };
            let ts = stored.fix.ts_ms;
            let live = self.courier_mut(courier);
            // The newest device time wins, never the later arrival.
            let newest = live.record.last.as_ref().is_none_or(|last| ts >= last.fix.ts_ms);
            if newest {
                live.record.last = Some(stored.clone());
                live.moved_at = generation;
            }
            live.dirty = true;
            if newest {
                self.positions_generation = generation;
            }
            for order in self.following.get(courier).into_iter().flatten() {
                // The maps, not `self.order`: `self.following` is borrowed.
                let known = order_in_memory(&self.orders, &self.orders_checkpointing, order);
                let newer = match known {
                    Some((_, current)) => ts >= current.fix.ts_ms,
                    None => stored_order(order).is_none_or(|(_, f)| ts >= f.fix.ts_ms),
                };
                if newer {
                    self.orders.insert(order.clone(), (courier.clone(), stored.clone()));
                    if !moved.contains(order) {
                        moved.push(order.clone());
                    }
                }
            }
            if !in_written_track(courier, ts) {
                self.tracks.add(courier, stored);
            }
        }
        self.applied_through = self.applied_through.max(id);
    }

    /// Applies log entry `id` of order events. They were checked when the intake took them, so
    /// a refusal here means the log and the view disagree: it is logged and skipped.
    pub(super) fn apply_orders(&mut self, id: u64, record: OrderRecord) {
        for logged in record.events {
            let current = self.order_states.get(&logged.order);
            let followed_by = current.and_then(|o| o.courier.clone().filter(|c| o.follows(c)));
            let event = logged.event.clone();
            match Order::after_event(current, &logged.order, event, logged.source()) {
                Ok((Applied::Changed { .. }, after)) => {
                    if let Some(courier) = followed_by {
                        self.unfollow(&courier, &logged.order);
                    }
                    self.follow(&after);
                    self.order_states.insert(logged.order.clone(), after);
                    self.orders_dirty.insert(logged.order);
                }
                Ok((Applied::Duplicate, _)) => {}
                Err(refusal) => {
                    tracing::warn!(log_entry = id, %refusal, "order event in the log skipped")
                }
            }
        }
        self.applied_through = self.applied_through.max(id);
    }

    /// Adds seqs committed elsewhere to a courier's (see [`super::Store::merge_seqs`]).
    pub(super) fn merge_seqs(&mut self, courier: &str, seqs: &super::SeqWindow) {
        let live = self.courier_mut(courier);
        live.record.seqs.merge(seqs);
        live.dirty = true;
    }

    fn courier_mut(&mut self, courier: &str) -> &mut CourierLive {
        if !self.couriers.contains_key(courier) {
            self.couriers.insert(courier.to_owned(), CourierLive::default());
        }
        self.couriers.get_mut(courier).expect("just inserted")
    }
}
