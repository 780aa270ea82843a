//! The courier client: report fixes and order events from the app; they reach the server exactly
//! once, in order, whatever the network and the app do (see `sdk/README.md` for the precise
//! guarantees).
//!
//! Layout:
//! - [`Courier`] (this file): the app's handle. Plain types in and out, blocking calls that
//!   return quickly, no async runtime or generics in sight, so it binds to Kotlin and Swift.
//! - [`config`]: [`CourierConfig`] and its parts (batching, outbox bound, back-off).
//! - `outbox`: the durable on-device log of fixes, order events and what was sealed of them.
//! - `worker`: the sender, a task on the client's own single-threaded tokio runtime (one
//!   thread per `Courier`) that runs MQTT sessions with rumqttc.
//! - [`ClientError`]: what can go wrong.
//!
//! Data goes: [`Courier::report`] and [`Courier::send_event`] → outbox (fsynced), one queue in
//! the order the app gave them → worker seals due fixes into numbered reports and events into
//! numbered events, one sequence for both → QoS 1 publish on `couriers/{courier}/locations` or
//! `couriers/{courier}/events` → the server commits and publishes the retained cumulative ack
//! on `couriers/{courier}/acks` → the worker drops everything up to it from the outbox. The app
//! thread and the worker share the outbox behind a mutex; the worker reports its connection
//! state through [`Courier::status`].

pub mod config;
mod error;
mod outbox;
mod worker;

pub use config::{BackoffConfig, BatchConfig, CourierConfig, OutboxConfig, WhenFull};
pub use error::ClientError;

pub use crate::wire::CourierEventKind;

use crate::topics;
use crate::wire::json::FixJson;
use crate::wire::{now_ms, Fix};
use outbox::{AckOutcome, Outbox, Outgoing, QueuedEvent};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A position fix as the app has it, in natural units.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FixInput {
    /// Device time of the fix, Unix milliseconds; `None`: now.
    pub ts_ms: Option<u64>,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Horizontal accuracy, metres.
    pub accuracy_m: Option<f64>,
    /// Ground speed, metres per second.
    pub speed_m_s: Option<f64>,
    /// Heading, degrees clockwise from true north, 0 <= heading < 360 (others are refused).
    pub heading_deg: Option<f64>,
    /// Battery level, percent, 0..=100.
    pub battery_pct: Option<u8>,
    /// The order being carried.
    pub order: Option<String>,
}

impl FixInput {
    /// A fix at `lat`, `lon` taken now.
    pub fn new(lat: f64, lon: f64) -> Self {
        FixInput { lat, lon, ..FixInput::default() }
    }

    /// The wire form, rounded to its fixed point.
    pub fn to_wire(&self) -> Result<Fix, ClientError> {
        let json = FixJson {
            ts: self.ts_ms.unwrap_or_else(now_ms),
            lat: self.lat,
            lon: self.lon,
            accuracy: self.accuracy_m,
            speed: self.speed_m_s,
            heading: self.heading_deg,
            battery: self.battery_pct,
            order: self.order.clone(),
        };
        json.to_wire(0).map_err(|e| {
            ClientError::InvalidFix(format!(
                "{}: {}",
                e.field.trim_start_matches("fixes[0]."),
                e.problem
            ))
        })
    }
}

/// Something that happened to an order the courier carries, as the app has it.
///
/// ```
/// use locus_sdk::client::OrderEventInput;
/// let pickup = OrderEventInput::picked_up("order-42");
/// let delivery = OrderEventInput::delivered("order-42")
///     .with_details(r#"{"signed_by":"Ana","photo":"pod-17.jpg"}"#);
/// # let _ = (pickup, delivery);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEventInput {
    /// The order (a valid id: 1 to 64 ASCII letters, digits, `-`, `_`, `.` or `:`).
    pub order: String,
    /// What happened.
    pub kind: CourierEventKind,
    /// The event's id, unique per order (a valid id); `None`: a random 128-bit id (32 hex
    /// digits), chosen when [`Courier::send_event`] is called and kept with the event, so every
    /// resend (after a reconnect or a restart of the app) carries the same id and the server
    /// takes it once. Give one to make a retry of the app's own idempotent too.
    pub event_id: Option<String>,
    /// When it happened, device time, Unix milliseconds; `None`: now.
    pub at_ms: Option<u64>,
    /// JSON text (a proof of delivery, for example), at most 4096 bytes
    /// ([`crate::wire::MAX_EVENT_DETAILS_BYTES`]).
    pub details: Option<String>,
}

impl OrderEventInput {
    /// `kind` happened to `order` now, with a random event id and no details.
    pub fn new(order: impl Into<String>, kind: CourierEventKind) -> Self {
        OrderEventInput { order: order.into(), kind, event_id: None, at_ms: None, details: None }
    }

    /// The courier picked `order` up.
    pub fn picked_up(order: impl Into<String>) -> Self {
        OrderEventInput::new(order, CourierEventKind::PickedUp)
    }

    /// The courier delivered `order`.
    pub fn delivered(order: impl Into<String>) -> Self {
        OrderEventInput::new(order, CourierEventKind::Delivered)
    }

    /// The same event with `json` as its details.
    pub fn with_details(self, json: impl Into<String>) -> Self {
        OrderEventInput { details: Some(json.into()), ..self }
    }
}

/// A random 128-bit id as 32 hex digits (the form the server gives events sent without one).
/// std's `RandomState` is seeded from the operating system's random source, and each new one
/// has other keys; SipHash under a random key is a pseudo-random function. So the ids do not
/// repeat, within a run or across restarts, with no extra dependency on phones.
fn random_event_id() -> String {
    let half = || RandomState::new().build_hasher().finish();
    format!("{:016x}{:016x}", half(), half())
}

/// What the app's UI shows about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Connected to the broker right now.
    pub connected: bool,
    /// Fixes in the outbox: reported and not yet acknowledged by the server.
    pub queued_fixes: u64,
    /// Order events in the outbox: sent by the app and not yet acknowledged by the server.
    pub queued_events: u64,
    /// The encoded size of the queued fixes and events.
    pub queued_bytes: u64,
    /// The server's last acknowledged sequence number, if it has ever answered this outbox.
    pub last_acked_seq: Option<u64>,
    /// When the last ack that moved things forward arrived, Unix milliseconds (this process).
    pub last_ack_unix_ms: Option<u64>,
    /// Fixes the server acknowledged since `connect`.
    pub acked_fixes: u64,
    /// Order events the server acknowledged since `connect`.
    pub acked_events: u64,
    /// Reports published since `connect` (resends included).
    pub sent_reports: u64,
    /// Order events published since `connect` (resends included).
    pub sent_events: u64,
    /// Fixes dropped at the outbox bound since `connect` ([`WhenFull::DropOldest`]).
    pub dropped_fixes: u64,
    /// Fixes refused at the outbox bound since `connect` ([`WhenFull::RefuseNew`]).
    pub refused_fixes: u64,
    /// Order events refused at the outbox bound since `connect` ([`WhenFull::RefuseNew`], or
    /// an outbox full of events). Events are never dropped.
    pub refused_events: u64,
    /// The broker refused the credentials; the client stopped trying. Reported fixes and sent
    /// events are still kept in the outbox for a client with a valid token.
    pub unauthorized: bool,
    /// The most recent problem (connection failure, refusal, ...), kept after recovery.
    pub last_error: Option<String>,
}

/// The worker's side of the status.
#[derive(Debug, Default)]
struct LinkState {
    connected: bool,
    /// `connect` may return: the first attempt ended conclusively (connected, refused, or a
    /// failure that is not a close during CONNECT).
    settled: bool,
    unauthorized: Option<String>,
    last_error: Option<String>,
    last_ack_unix_ms: Option<u64>,
    acked_fixes: u64,
    acked_events: u64,
    sent_reports: u64,
    sent_events: u64,
    worker_done: bool,
}

/// What the app thread and the worker share.
#[derive(Debug)]
pub(crate) struct Shared {
    outbox: Mutex<Outbox>,
    link: Mutex<LinkState>,
    /// Signalled on every change of `link` or the outbox's contents that a waiter may want.
    changed: Condvar,
    /// Wakes the worker: new fixes or events, a flush.
    wake: tokio::sync::Notify,
    /// Ends the worker.
    stop: tokio::sync::Notify,
    /// Callers inside `flush`: while any, partial batches are sent without waiting for age.
    flushing: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the outbox half-applied in a way that matters
    // more than stopping: every change is written to the log before it is applied.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn with_outbox<R>(&self, f: impl FnOnce(&mut Outbox) -> R) -> R {
        f(&mut lock(&self.outbox))
    }

    fn update(&self, f: impl FnOnce(&mut LinkState)) {
        f(&mut lock(&self.link));
        self.changed.notify_all();
    }

    fn connected(&self) {
        self.update(|l| {
            l.connected = true;
            l.settled = true;
        });
    }

    fn disconnected(&self, error: String, conclusive: bool) {
        self.update(|l| {
            l.connected = false;
            l.settled |= conclusive;
            l.last_error = Some(error);
        });
    }

    fn refused(&self, reason: String) {
        self.update(|l| {
            l.connected = false;
            l.settled = true;
            l.last_error = Some(format!("unauthorized: {reason}"));
            l.unauthorized = Some(reason);
        });
    }

    fn error(&self, error: String) {
        self.update(|l| l.last_error = Some(error));
    }

    fn sent(&self, item: &Outgoing) {
        let mut link = lock(&self.link);
        match item {
            Outgoing::Report(_) => link.sent_reports += 1,
            Outgoing::Event(_) => link.sent_events += 1,
        }
    }

    fn worker_done(&self) {
        self.update(|l| {
            l.connected = false;
            l.settled = true;
            l.worker_done = true;
        });
    }

    fn flush_requested(&self) -> bool {
        self.flushing.load(Ordering::SeqCst) > 0
    }

    fn ack(&self, seq: u64) -> Result<AckOutcome, ClientError> {
        let outcome = self.with_outbox(|o| o.ack(seq))?;
        if outcome.acked_fixes > 0 || outcome.acked_events > 0 {
            self.update(|l| {
                l.acked_fixes += outcome.acked_fixes;
                l.acked_events += outcome.acked_events;
                l.last_ack_unix_ms = Some(now_ms());
            });
        }
        Ok(outcome)
    }
}

/// A connected courier: the app's handle to the client. Closing (or dropping) it stops the
/// background thread; whatever is unacknowledged stays in the outbox for the next `connect`.
#[derive(Debug)]
pub struct Courier {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    courier: String,
}

impl Courier {
    /// Opens the courier's outbox, starts the background sender and waits (up to
    /// `connect_timeout_ms`) for the first connection attempt to settle.
    ///
    /// Returns `Ok` when connected, and also when the broker cannot be reached (the app works
    /// offline; fixes and events are queued and sent later — see [`Courier::status`]). Returns
    /// [`ClientError::Unauthorized`] when the broker refuses the credentials.
    pub fn connect(config: CourierConfig) -> Result<Courier, ClientError> {
        if !topics::is_valid_id(&config.courier) {
            return Err(ClientError::Config(format!(
                "courier id {:?} must be 1 to {} ASCII letters, digits, '-', '_', '.' or ':'",
                config.courier,
                topics::MAX_ID_LEN
            )));
        }
        if config.host_port().is_none() {
            return Err(ClientError::Config(format!(
                "broker {:?} is not HOST:PORT",
                config.broker
            )));
        }
        if config.tls && !cfg!(feature = "tls") {
            return Err(ClientError::Config(
                "TLS requested but locus-sdk was built without the `tls` feature".into(),
            ));
        }
        let outbox = Outbox::open(&config.data_dir, config.outbox.clone())?;
        let shared = Arc::new(Shared {
            outbox: Mutex::new(outbox),
            link: Mutex::new(LinkState::default()),
            changed: Condvar::new(),
            wake: tokio::sync::Notify::new(),
            stop: tokio::sync::Notify::new(),
            flushing: AtomicUsize::new(0),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        let courier = config.courier.clone();
        let wait = config.connect_timeout();
        let worker_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("locus-sdk-{courier}"))
            .spawn(move || runtime.block_on(worker::run(worker_shared, config)))
            .map_err(ClientError::Runtime)?;
        let client = Courier { shared, thread: Some(thread), courier };

        let deadline = Instant::now() + wait;
        let mut link = lock(&client.shared.link);
        while !link.settled {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            link = client
                .shared
                .changed
                .wait_timeout(link, left)
                .map_or_else(|p| p.into_inner().0, |r| r.0);
        }
        if let Some(reason) = &link.unauthorized {
            let err = ClientError::Unauthorized {
                courier: client.courier.clone(),
                reason: reason.clone(),
            };
            drop(link);
            client.close();
            return Err(err);
        }
        drop(link);
        Ok(client)
    }

    /// The courier id.
    pub fn courier(&self) -> &str {
        &self.courier
    }

    /// Queues a fix. When this returns `Ok`, the fix is in the outbox on disk (fsynced unless
    /// configured otherwise) and will be delivered, whatever happens to the app or the network.
    pub fn report(&self, fix: FixInput) -> Result<(), ClientError> {
        self.report_fix(fix.to_wire()?)
    }

    /// Queues a fix already in wire form (see [`Courier::report`]).
    pub fn report_fix(&self, fix: Fix) -> Result<(), ClientError> {
        if !fix.coordinates_in_range() {
            return Err(ClientError::InvalidFix(format!(
                "coordinates off the globe: lat {} lon {}",
                fix.lat(),
                fix.lon()
            )));
        }
        self.shared.with_outbox(|o| o.push(fix, Instant::now()))?;
        self.shared.changed.notify_all();
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Queues an order event and returns its event id. When this returns `Ok`, the event is in
    /// the outbox on disk (fsynced unless configured otherwise), after every fix reported
    /// before it, and will be delivered like them: numbered in the same sequence as the
    /// reports (so the server sees it after the positions that preceded it), published on
    /// `couriers/{courier}/events` without waiting for a batch, resent until the server's ack
    /// covers it. The bound never drops it; a full outbox refuses it instead
    /// ([`ClientError::OutboxFull`]): with `drop-oldest`, only when no fix is left to drop.
    ///
    /// An event the order's lifecycle refuses (not this courier's order, not in a status that
    /// allows it) is acked all the same and not resent: the server keeps it as a dead letter
    /// (`order_event_refused`). Returns [`ClientError::InvalidEvent`] for what the server would
    /// refuse as malformed: an order or event id that is not a valid id, details that are not
    /// JSON or longer than 4096 bytes.
    pub fn send_event(&self, event: OrderEventInput) -> Result<String, ClientError> {
        let queued = QueuedEvent {
            order: event.order,
            kind: event.kind,
            event_id: event.event_id.unwrap_or_else(random_event_id),
            at_ms: event.at_ms.unwrap_or_else(now_ms),
            details: event.details,
        };
        if let Some(problem) = queued.problem() {
            return Err(ClientError::InvalidEvent(problem.to_string()));
        }
        let event_id = queued.event_id.clone();
        self.shared.with_outbox(|o| o.push_event(queued, Instant::now()))?;
        self.shared.changed.notify_all();
        self.shared.wake.notify_one();
        Ok(event_id)
    }

    /// What the UI shows: connection, queue, last ack, last error.
    pub fn status(&self) -> Status {
        let (queued_fixes, queued_events, queued_bytes, last_acked_seq, bound) = self
            .shared
            .with_outbox(|o| (o.fixes(), o.events(), o.bytes(), o.mark(), o.bound_counters()));
        let link = lock(&self.shared.link);
        Status {
            connected: link.connected,
            queued_fixes,
            queued_events,
            queued_bytes,
            last_acked_seq,
            last_ack_unix_ms: link.last_ack_unix_ms,
            acked_fixes: link.acked_fixes,
            acked_events: link.acked_events,
            sent_reports: link.sent_reports,
            sent_events: link.sent_events,
            dropped_fixes: bound.dropped_fixes,
            refused_fixes: bound.refused_fixes,
            refused_events: bound.refused_events,
            unauthorized: link.unauthorized.is_some(),
            last_error: link.last_error.clone(),
        }
    }

    /// Sends everything queued without waiting for batches to fill, and waits until the server
    /// has acknowledged all of it, fixes and events (the outbox is empty), or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), ClientError> {
        self.shared.flushing.fetch_add(1, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let result = self.wait_until_empty(timeout);
        self.shared.flushing.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn wait_until_empty(&self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let (queued_fixes, queued_events) =
                self.shared.with_outbox(|o| (o.fixes(), o.events()));
            if queued_fixes == 0 && queued_events == 0 {
                return Ok(());
            }
            let link = lock(&self.shared.link);
            if let Some(reason) = &link.unauthorized {
                return Err(ClientError::Unauthorized {
                    courier: self.courier.clone(),
                    reason: reason.clone(),
                });
            }
            if link.worker_done {
                return Err(ClientError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout { queued_fixes, queued_events });
            }
            // Acks signal `changed`; the cap re-checks the outbox in case a signal fell between
            // the check above and this wait.
            drop(self.shared.changed.wait_timeout(link, left.min(Duration::from_millis(100))));
        }
    }

    /// Stops the background sender and releases the outbox. Unacknowledged fixes and events stay
    /// on disk and go out after the next [`Courier::connect`] on the same `data_dir`.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.notify_one();
        if let Some(thread) = self.thread.take() {
            // The worker only panics on a bug; the outbox on disk is intact either way.
            let _ = thread.join();
        }
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fix_input_converts_to_wire_units() {
        let fix = FixInput {
            ts_ms: Some(1_763_700_000_000),
            lat: 41.3851,
            lon: 2.1734,
            accuracy_m: Some(4.5),
            speed_m_s: Some(8.25),
            heading_deg: Some(270.0),
            battery_pct: Some(76),
            order: Some("order-42".into()),
        }
        .to_wire()
        .unwrap();
        assert_eq!((fix.lat_e7, fix.lon_e7), (413_851_000, 21_734_000));
        let details = fix.details.unwrap();
        assert_eq!(details.accuracy_cm, Some(450));
        assert_eq!(details.speed_cm_s, Some(825));
        assert_eq!(details.heading_cdeg, Some(27_000));
        let err = FixInput::new(f64::NAN, 0.0).to_wire().unwrap_err().to_string();
        assert!(err.contains("lat"), "{err}");
        // Out of range is refused, never wrapped: -90° is not quietly 270°.
        let west = FixInput { heading_deg: Some(-90.0), ..FixInput::new(1.0, 2.0) };
        let err = west.to_wire().unwrap_err().to_string();
        assert!(err.contains("heading"), "{err}");
        let full = FixInput { battery_pct: Some(101), ..FixInput::new(1.0, 2.0) };
        assert!(full.to_wire().unwrap_err().to_string().contains("battery"));
        let plain = FixInput::new(1.0, 2.0).to_wire().unwrap();
        assert!(plain.details.is_none());
        assert!(plain.ts_ms > 1_700_000_000_000);
    }

    #[test]
    fn bad_config_is_refused_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let bad_id = CourierConfig::new("127.0.0.1:1", "has space", None, dir.path());
        assert!(matches!(Courier::connect(bad_id), Err(ClientError::Config(_))));
        let bad_broker = CourierConfig::new("localhost", "c-1", None, dir.path());
        assert!(matches!(Courier::connect(bad_broker), Err(ClientError::Config(_))));
    }

    #[test]
    fn works_offline_and_keeps_fixes_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens on port 1: the TCP connection is refused, which settles `connect`.
        let mut config = CourierConfig::new("127.0.0.1:1", "c-1", Some("t".into()), dir.path());
        config.backoff = BackoffConfig { initial_ms: 50, max_ms: 100 };
        let courier = Courier::connect(config.clone()).unwrap();
        for i in 0..5 {
            courier
                .report(FixInput { ts_ms: Some(1_000 + i), ..FixInput::new(41.0, 2.0) })
                .unwrap();
        }
        let status = courier.status();
        assert!(!status.connected);
        assert_eq!(status.queued_fixes, 5);
        assert!(status.last_error.is_some());
        assert!(matches!(
            courier.flush(Duration::from_millis(200)),
            Err(ClientError::Timeout { queued_fixes: 5, queued_events: 0 })
        ));
        // The outbox is locked while open.
        assert!(matches!(Courier::connect(config.clone()), Err(ClientError::OutboxLocked(_))));
        courier.close();
        let courier = Courier::connect(config).unwrap();
        assert_eq!(courier.status().queued_fixes, 5);
        assert!(matches!(
            courier.report(FixInput::new(95.0, 0.0)),
            Err(ClientError::InvalidFix(_))
        ));
    }

    #[test]
    fn order_events_are_checked_then_kept_offline_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = CourierConfig::new("127.0.0.1:1", "c-1", Some("t".into()), dir.path());
        config.backoff = BackoffConfig { initial_ms: 50, max_ms: 100 };
        let courier = Courier::connect(config.clone()).unwrap();
        let pickup = courier.send_event(OrderEventInput::picked_up("order-42")).unwrap();
        let delivery = courier
            .send_event(OrderEventInput::delivered("order-42").with_details(r#"{"pod":"p-1"}"#))
            .unwrap();
        // Random 128-bit ids, as 32 hex digits, a new one each time.
        for id in [&pickup, &delivery] {
            assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        assert_ne!(pickup, delivery);
        let given =
            OrderEventInput { event_id: Some("mine-1".into()), ..OrderEventInput::picked_up("o") };
        assert_eq!(courier.send_event(given).unwrap(), "mine-1");
        // What the server would refuse as malformed is refused here, and not queued.
        let refused = |event: OrderEventInput| match courier.send_event(event) {
            Err(ClientError::InvalidEvent(why)) => why,
            other => panic!("expected InvalidEvent, got {other:?}"),
        };
        assert!(refused(OrderEventInput::delivered("has space")).contains("order"));
        let bad_id =
            OrderEventInput { event_id: Some(String::new()), ..OrderEventInput::delivered("o") };
        assert!(refused(bad_id).contains("event_id"));
        let not_json = OrderEventInput::delivered("o").with_details("signed by Ana");
        assert!(refused(not_json).contains("not JSON"));
        let long =
            OrderEventInput::delivered("o").with_details(format!("\"{}\"", "x".repeat(4095)));
        assert!(refused(long).contains("4096"));

        let status = courier.status();
        assert_eq!((status.queued_fixes, status.queued_events), (0, 3));
        assert!(status.queued_bytes > 0);
        assert!(matches!(
            courier.flush(Duration::from_millis(200)),
            Err(ClientError::Timeout { queued_fixes: 0, queued_events: 3 })
        ));
        courier.close();
        let courier = Courier::connect(config).unwrap();
        assert_eq!(courier.status().queued_events, 3);
    }
}
