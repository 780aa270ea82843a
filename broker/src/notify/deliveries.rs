//! Deliveries: every notification not yet delivered, in one sled tree the store owns
//! (`notifications`, [`crate::store::Store::notifications_tree`]), and the schedule of their
//! attempts in memory.
//!
//! Enters: new deliveries from the intake ([`Deliveries::stage`]: ids and encoded records,
//! which the store writes in the same transaction as the order event's log entry), the
//! committer's word that they are durable ([`Deliveries::durable_through`]), the sender's
//! results ([`Deliveries::finish`]) and the admin's replays. Leaves: due deliveries for the
//! sender ([`Deliveries::take_due`]), listings for the API.
//!
//! The tree: key = delivery id, u64 big-endian, increasing; value = postcard of the record
//! (versioned, [`Delivery`]): pending or dead, its attempts, when the next is due, the last
//! error. A delivered one is removed; a dead one stays until it is replayed. Ids are unique
//! among the records in the tree; a new id is always above every id in it (numbering goes on
//! after the highest id kept, so ids of delivered records removed before a restart can come
//! back: what identifies a delivery to receivers is its idempotency key).
//!
//! Nothing staged is attempted before `durable_through` covers it: the sender picks only from
//! the schedule, and a delivery joins the schedule when `durable_through` reads it back from
//! the tree (so a staged delivery whose transaction failed is never seen). On open, every
//! record in the tree is durable (sled recovers only what was flushed, and the store flushes a
//! delivery with its event), and the pending ones are scheduled again: at least once.
//!
//! Updates after an attempt are plain inserts, not flushed: a crash can forget the last
//! attempts (the delivery is attempted again) or a removal (it is delivered again), never a
//! delivery.

use super::NotifyError;
use crate::orders::EventKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// How a delivery goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// An HTTP POST of the notice (JSON), signed.
    Webhook,
    /// A mail over SMTP.
    Email,
}

impl Channel {
    /// `webhook` or `email`: in JSON and the metrics' `channel` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Email => "email",
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its next attempt (or being attempted).
    Pending,
    /// Failed `max_attempts` times: kept, not attempted again until replayed.
    Dead,
}

impl DeliveryState {
    /// `pending` or `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Dead => "dead",
        }
    }
}

/// The readable part of an email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailText {
    /// The subject line.
    pub subject: String,
    /// The plain-text body (ends with the notice as JSON).
    pub text: String,
}

/// One notification of one order event to one target, and how its attempts went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The order.
    pub order: String,
    /// The event that caused it.
    pub event_id: String,
    /// The event's kind.
    pub event: EventKind,
    /// Webhook or email.
    pub channel: Channel,
    /// The webhook's URL or the email address.
    pub target: String,
    /// What the receiver sees in `Idempotency-Key` (and in the email's `Message-ID`): the same
    /// on every attempt and replay.
    pub idempotency_key: String,
    /// The notice ([`crate::orders::notice_json`]) as JSON text: a webhook's body.
    pub body: String,
    /// Subject and text, for an email.
    pub email: Option<EmailText>,
    /// Pending or dead.
    pub state: DeliveryState,
    /// Attempts failed so far (since the last replay).
    pub attempts: u32,
    /// When the next attempt is due, Unix milliseconds (server clock).
    pub next_attempt_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the event was committed, Unix milliseconds.
    pub created_ms: u64,
}

/// The stored form: a version first, so a later layout can still read this one.
#[derive(Deserialize)]
enum Stored {
    V1(Delivery),
}

#[derive(Serialize)]
enum StoredRef<'a> {
    V1(&'a Delivery),
}

impl Delivery {
    /// The record as stored in the tree.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(&StoredRef::V1(self))
            .expect("postcard encoding of plain records cannot fail")
    }

    /// A record read from the tree.
    pub fn decode(id: u64, bytes: &[u8]) -> Result<Delivery, NotifyError> {
        match postcard::from_bytes(bytes) {
            Ok(Stored::V1(delivery)) => Ok(delivery),
            Err(source) => Err(NotifyError::Corrupt { id, source }),
        }
    }

    fn target_key(&self) -> TargetKey {
        (self.channel, self.target.clone())
    }
}

/// The tree key of a delivery id.
pub fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn id_of(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// One receiver: its channel and address.
type TargetKey = (Channel, String);

/// What the last attempt of a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Delivered and removed.
    Delivered,
    /// Failed; attempted again at this time (Unix ms).
    Retry {
        /// When.
        at_ms: u64,
    },
    /// Failed for the last time: now a dead letter.
    Dead,
}

/// Why a replay was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No delivery has this id.
    #[error("no notification {0}")]
    Unknown(u64),
    /// It is pending, not dead: it will be attempted anyway.
    #[error("notification {0} is pending, not dead: it is attempted on its own")]
    Pending(u64),
    /// The tree could not be read or written.
    #[error(transparent)]
    Storage(#[from] NotifyError),
}

/// Which deliveries a listing shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only pending or only dead ones; `None` = both.
    pub state: Option<DeliveryState>,
    /// Only this order's.
    pub order: Option<String>,
    /// Only ids above this one (paging).
    pub after: u64,
    /// At most this many.
    pub limit: usize,
}

/// The retry rules: how many attempts, and the capped, jittered wait between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before a delivery is dead.
    pub max_attempts: u32,
    /// The longest first wait, ms.
    pub backoff_initial_ms: u64,
    /// The cap of every wait, ms.
    pub backoff_max_ms: u64,
}

impl RetryPolicy {
    /// The longest wait after `failures` failures (≥ 1): `backoff_initial_ms` doubled for each
    /// failure after the first, capped at `backoff_max_ms`.
    pub fn ceiling_ms(&self, failures: u32) -> u64 {
        let doubling = 1u64.checked_shl(failures.saturating_sub(1)).unwrap_or(u64::MAX);
        self.backoff_initial_ms.saturating_mul(doubling).min(self.backoff_max_ms)
    }

    /// The wait after `failures` failures: "full jitter", drawn evenly from zero to the
    /// ceiling, so that deliveries that failed together (a receiver was down) come back spread
    /// out instead of all at once.
    pub fn delay_ms(&self, failures: u32) -> u64 {
        use rand::Rng as _;
        rand::thread_rng().gen_range(0..=self.ceiling_ms(failures))
    }
}

/// The deliveries: the tree and the schedule. Shared (`Arc`) by the intake (stage), the
/// committer (durable), the sender and the API.
#[derive(Debug)]
pub struct Deliveries {
    tree: sled::Tree,
    next_id: AtomicU64,
    schedule: Mutex<Schedule>,
    /// Tells the sender that something became due: new durable deliveries, a replay.
    wake: tokio::sync::Notify,
}

/// The in-memory index of the pending, durable deliveries.
#[derive(Debug, Default)]
struct Schedule {
    /// Every id up to this one is durable.
    durable_through: u64,
    /// Pending deliveries not being attempted, by (due time, id), with their target.
    due: BTreeMap<(u64, u64), TargetKey>,
    /// Deliveries being attempted, with their target.
    in_flight: HashMap<u64, TargetKey>,
    /// Attempts in flight per target.
    per_target: HashMap<TargetKey, usize>,
}

impl Schedule {
    fn pending(&self) -> usize {
        self.due.len() + self.in_flight.len()
    }
}

impl Deliveries {
    /// Opens the deliveries kept in `tree` (the store's `notifications` tree): every record in
    /// it is durable, and the pending ones are scheduled at their due time.
    pub fn open(tree: sled::Tree) -> Result<Deliveries, NotifyError> {
        let mut schedule = Schedule::default();
        for entry in tree.iter() {
            let (key, value) = entry?;
            let id = id_of(&key);
            let delivery = Delivery::decode(id, &value)?;
            if delivery.state == DeliveryState::Pending {
                schedule.due.insert((delivery.next_attempt_ms, id), delivery.target_key());
            }
            schedule.durable_through = id;
        }
        let next_id = schedule.durable_through + 1;
        Ok(Deliveries {
            tree,
            next_id: AtomicU64::new(next_id),
            schedule: Mutex::new(schedule),
            wake: tokio::sync::Notify::new(),
        })
    }

    fn schedule(&self) -> MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives `new` deliveries their ids and encodes them: the (key id, value) pairs the store
    /// writes into the `notifications` tree in the same transaction as the log entry of the
    /// event that made them (key: the id big-endian, [`key`]). Nothing is attempted until
    /// [`Deliveries::durable_through`] covers the ids; ids of a transaction that failed are
    /// simply never used.
    pub fn stage(&self, new: Vec<Delivery>) -> Vec<(u64, Vec<u8>)> {
        if new.is_empty() {
            return Vec::new();
        }
        let first = self.next_id.fetch_add(new.len() as u64, Ordering::Relaxed);
        new.iter().enumerate().map(|(i, delivery)| (first + i as u64, delivery.encode())).collect()
    }

    /// Every delivery staged with an id up to `id` is durable (the committer calls this after
    /// each flush with the highest id staged by the commits that flush covered): they are read
    /// back from the tree, scheduled, and the sender is woken. Ids at or below an earlier call
    /// are ignored.
    pub fn durable_through(&self, id: u64) {
        let mut schedule = self.schedule();
        let from = schedule.durable_through + 1;
        if id < from {
            return;
        }
        let mut added = false;
        for entry in self.tree.range(key(from)..=key(id)) {
            let read = entry.map_err(NotifyError::from).and_then(|(key, value)| {
                let id = id_of(&key);
                Ok((id, Delivery::decode(id, &value)?))
            });
            match read {
                Ok((id, delivery)) if delivery.state == DeliveryState::Pending => {
                    schedule.due.insert((delivery.next_attempt_ms, id), delivery.target_key());
                    added = true;
                }
                Ok(_) => {}
                // Not expected of a tree written moments ago; the delivery stays in the tree
                // and is scheduled at the next start.
                Err(e) => tracing::error!(error = %e, "cannot schedule a new notification"),
            }
        }
        schedule.durable_through = id;
        drop(schedule);
        if added {
            self.wake.notify_one();
        }
    }

    /// Resolves when something may have become due (new durable deliveries, a replay). A
    /// wake-up that comes while nobody waits is kept for the next call.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }

    /// Pending deliveries (being attempted or waiting), durable ones only.
    pub fn pending(&self) -> usize {
        self.schedule().pending()
    }

    /// Takes up to `max` deliveries due at `now_ms`, oldest due first, at most `per_target`
    /// in flight per target (counting those already in flight), and marks them in flight:
    /// each must be handed back to [`Deliveries::finish`]. A record that cannot be read is
    /// logged and left for the next start.
    pub fn take_due(&self, now_ms: u64, max: usize, per_target: usize) -> Vec<(u64, Delivery)> {
        if max == 0 {
            return Vec::new();
        }
        let mut schedule = self.schedule();
        // Chosen first, taken after: the schedule is borrowed while it is walked.
        let mut chosen: Vec<((u64, u64), TargetKey)> = Vec::new();
        let mut chosen_per_target: HashMap<&TargetKey, usize> = HashMap::new();
        for (when, target) in schedule.due.range(..=(now_ms, u64::MAX)) {
            if chosen.len() >= max {
                break;
            }
            let busy = schedule.per_target.get(target).copied().unwrap_or(0)
                + chosen_per_target.get(target).copied().unwrap_or(0);
            if busy >= per_target {
                continue;
            }
            *chosen_per_target.entry(target).or_default() += 1;
            chosen.push((*when, target.clone()));
        }
        let mut taken = Vec::with_capacity(chosen.len());
        for (when, target) in chosen {
            let id = when.1;
            schedule.due.remove(&when);
            let read = self
                .tree
                .get(key(id))
                .map_err(NotifyError::from)
                .and_then(|value| value.map(|value| Delivery::decode(id, &value)).transpose());
            let delivery = match read {
                Ok(Some(delivery)) if delivery.state == DeliveryState::Pending => delivery,
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(id, error = %e, "cannot read a pending notification");
                    continue;
                }
            };
            *schedule.per_target.entry(target.clone()).or_default() += 1;
            schedule.in_flight.insert(id, target);
            taken.push((id, delivery));
        }
        taken
    }

    /// When the first delivery due after `now_ms` is due, if any: the sender sleeps until then
    /// (those due already wait for a free slot, which a finished attempt makes).
    pub fn next_due_after(&self, now_ms: u64) -> Option<u64> {
        let schedule = self.schedule();
        schedule.due.range((now_ms.saturating_add(1), 0)..).next().map(|((when, _), _)| *when)
    }

    /// Records how an attempt of delivery `id` (taken with [`Deliveries::take_due`]) went at
    /// `now_ms`: delivered (removed), failed (attempted again after a back-off), or failed for
    /// the `policy.max_attempts`-th time (dead). Returns what happened and the record as it is
    /// now (as it was, for one delivered and removed); `None` if there was no such record.
    pub fn finish(
        &self,
        id: u64,
        result: Result<(), String>,
        policy: &RetryPolicy,
        now_ms: u64,
    ) -> Result<Option<(Finished, Delivery)>, NotifyError> {
        let mut schedule = self.schedule();
        if let Some(target) = schedule.in_flight.remove(&id) {
            if let Some(count) = schedule.per_target.get_mut(&target) {
                *count -= 1;
                if *count == 0 {
                    schedule.per_target.remove(&target);
                }
            }
        }
        let Some(value) = self.tree.get(key(id))? else { return Ok(None) };
        let mut delivery = Delivery::decode(id, &value)?;
        let error = match result {
            Ok(()) => {
                self.tree.remove(key(id))?;
                return Ok(Some((Finished::Delivered, delivery)));
            }
            Err(error) => error,
        };
        delivery.attempts = delivery.attempts.saturating_add(1);
        delivery.last_error = Some(error);
        let finished = if delivery.attempts >= policy.max_attempts {
            delivery.state = DeliveryState::Dead;
            Finished::Dead
        } else {
            delivery.next_attempt_ms = now_ms.saturating_add(policy.delay_ms(delivery.attempts));
            Finished::Retry { at_ms: delivery.next_attempt_ms }
        };
        // Scheduled even if the write fails: the attempt count is then forgotten, not the
        // delivery.
        if let Finished::Retry { at_ms } = finished {
            schedule.due.insert((at_ms, id), delivery.target_key());
        }
        self.tree.insert(key(id), delivery.encode())?;
        Ok(Some((finished, delivery)))
    }

    /// Puts dead letter `id` back to pending with its attempts reset, due at `now_ms`, and wakes
    /// the sender.
    pub fn replay(&self, id: u64, now_ms: u64) -> Result<Delivery, ReplayError> {
        let mut schedule = self.schedule();
        let value = match self.tree.get(key(id)).map_err(NotifyError::from)? {
            Some(value) if id <= schedule.durable_through => value,
            _ => return Err(ReplayError::Unknown(id)),
        };
        let delivery = Delivery::decode(id, &value)?;
        if delivery.state == DeliveryState::Pending {
            return Err(ReplayError::Pending(id));
        }
        let revived = self.revive(&mut schedule, id, delivery, now_ms)?;
        drop(schedule);
        self.wake.notify_one();
        Ok(revived)
    }

    /// Replays every dead letter (of `order` only, if given); returns their ids.
    pub fn replay_dead(&self, order: Option<&str>, now_ms: u64) -> Result<Vec<u64>, NotifyError> {
        let mut schedule = self.schedule();
        let mut replayed = Vec::new();
        for entry in self.tree.range(..=key(schedule.durable_through)) {
            let (key, value) = entry?;
            let id = id_of(&key);
            let delivery = Delivery::decode(id, &value)?;
            if delivery.state == DeliveryState::Dead
                && order.is_none_or(|order| delivery.order == order)
            {
                self.revive(&mut schedule, id, delivery, now_ms)?;
                replayed.push(id);
            }
        }
        drop(schedule);
        if !replayed.is_empty() {
            self.wake.notify_one();
        }
        Ok(replayed)
    }

    fn revive(
        &self,
        schedule: &mut Schedule,
        id: u64,
        mut delivery: Delivery,
        now_ms: u64,
    ) -> Result<Delivery, NotifyError> {
        delivery.state = DeliveryState::Pending;
        delivery.attempts = 0;
        delivery.next_attempt_ms = now_ms;
        self.tree.insert(key(id), delivery.encode())?;
        schedule.due.insert((now_ms, id), delivery.target_key());
        Ok(delivery)
    }

    /// One delivery, if it exists and is durable.
    pub fn get(&self, id: u64) -> Result<Option<Delivery>, NotifyError> {
        if id > self.schedule().durable_through {
            return Ok(None);
        }
        match self.tree.get(key(id))? {
            Some(value) => Ok(Some(Delivery::decode(id, &value)?)),
            None => Ok(None),
        }
    }

    /// Durable deliveries that `filter` picks, by id.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<(u64, Delivery)>, NotifyError> {
        let durable_through = self.schedule().durable_through;
        let Some(from) = filter.after.checked_add(1) else { return Ok(Vec::new()) };
        if from > durable_through {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for entry in self.tree.range(key(from)..=key(durable_through)) {
            if found.len() >= filter.limit {
                break;
            }
            let (key, value) = entry?;
            let id = id_of(&key);
            let delivery = Delivery::decode(id, &value)?;
            let wanted = filter.state.is_none_or(|state| delivery.state == state)
                && filter.order.as_deref().is_none_or(|order| delivery.order == order);
            if wanted {
                found.push((id, delivery));
            }
        }
        Ok(found)
    }
}

/// A delivery as the API shows it (without the body).
pub fn delivery_json(id: u64, delivery: &Delivery) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "order": delivery.order,
        "event_id": delivery.event_id,
        "event": delivery.event,
        "channel": delivery.channel,
        "target": delivery.target,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "next_attempt_ms": delivery.next_attempt_ms,
        "last_error": delivery.last_error,
        "created_ms": delivery.created_ms,
        "idempotency_key": delivery.idempotency_key,
    })
}
