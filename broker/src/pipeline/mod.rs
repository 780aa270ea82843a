//! The ingest pipeline: MQTT publish → decode → validate → dedup → plugins → commit → flush → ack.
//!
//! Enters: publishes on `couriers/+/locations` and `couriers/+/events` from the embedded
//! broker's local link, and order events from the API ([`OrderDesk`]).
//! Leaves: one [`Commit`] per group of reports (commit-log entries in the store) and, once it
//! is flushed, a retained ack per courier on `couriers/{courier}/acks` carrying the courier's
//! watermark: every seq up to it is committed (see [`crate::store::seqs`]); the statuses and
//! locations of orders ([`announce`]).
//!
//! A courier's order events share its seq space with its reports: the same watermark acks
//! them, and the SDK keeps them in its outbox until it does. Each is checked against the
//! order's lifecycle ([`order_desk`]); one the lifecycle refuses is dead-lettered
//! (`order_event_refused`) and its seq consumed, like a report refused as a whole.
//!
//! Two threads, so that taking in the next group overlaps the fsync of the previous one:
//! - `pipeline-intake` ([`Intake`]): drains whatever the broker has, builds a commit and writes
//!   it (visible to reads, not yet durable), hands the acks it owes to the committer;
//! - `pipeline-commit` ([`run_committer`]): flushes once for every group of commits waiting
//!   (group commit), then publishes their acks. Nothing is acked before it is on disk.
//!
//! Bad input never stops the pipeline: each problem becomes a [`DeadLetter`] with a reason
//! code, counted in `locus_dead_letters_total{reason}`.

mod announce;
pub mod config;
mod edge_batches;
mod external;
mod fix_stream;
mod letter_desk;
mod order_desk;
pub mod validate;

pub use config::PipelineConfig;
pub use external::{
    Delivery, DeliveryKind, ExternalBroker, Outlet as ExternalOutlet, OutletError, Settle,
    REPLICA_PROGRESS_KEY,
};
pub use letter_desk::{
    LetterDesk, LetterOutcome, Outcome as ReplayOutcome, ReplayAnswer, ReplayReport,
    ReplayUnavailable, MAX_LETTERS_PER_REPLAY,
};
pub use order_desk::{OrderAnswer, OrderChange, OrderDesk, OrderRefused};
pub use validate::{FixProblem, ReportProblem};

use crate::influx::Outbox;
use crate::metrics::Metrics;
use crate::mqtt::BrokerLink;
use crate::store::{
    Commit, Committed, DeadLetter, DeadLetterReason, DeadLetterSource, RecordBuilder, SeqTake,
    SeqWindow, Store, StoreError,
};
use announce::Announcer;
use bytes::Bytes;
use locus_sdk::wire::{self, Fix};
use order_desk::OrderBook;
use rumqttd::local::{LinkError, LinkRx};
use rumqttd::Notification;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// A validated fix on its way to commit: what plugins see and may change.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingFix {
    /// The courier (from the topic and the authenticated connection).
    pub courier: String,
    /// The fix.
    pub fix: Fix,
    /// Attributes added so far by plugins.
    pub attributes: Vec<(String, String)>,
    /// What the fix was read from, for the dead letter a plugin may make of it; plugins never
    /// see it. Each fix carries its input itself (rather than the chain keeping a vector of
    /// inputs beside the batch) so that no step that keeps, changes, drops or rejects fixes can
    /// get the two out of step; shared by the fixes of one report, it costs a reference count
    /// per fix and no copy.
    pub input: Arc<FixInput>,
}

impl PendingFix {
    /// A fix read from `input`, without attributes.
    pub fn new(courier: String, fix: Fix, input: Arc<FixInput>) -> PendingFix {
        PendingFix { courier, fix, attributes: Vec::new(), input }
    }
}

/// What pending fixes were read from: the bytes exactly as they came in (a report's MQTT
/// payload, a replayed line), where from, and when. A plugin that rejects a fix, or fails its
/// batch, dead-letters these bytes, never a re-encoded fix.
#[derive(Debug, Clone, PartialEq)]
pub struct FixInput {
    /// Where the bytes came from ([`DeadLetterSource::Mqtt`] or [`DeadLetterSource::Replay`]).
    pub source: DeadLetterSource,
    /// The bytes as received (for a report, the publish's own buffer).
    pub bytes: Bytes,
    /// Server time they were received, Unix milliseconds.
    pub received_ms: u64,
}

impl FixInput {
    /// The input of fixes read from `bytes`, received at `received_ms` from `source`.
    pub fn new(source: DeadLetterSource, bytes: Bytes, received_ms: u64) -> Arc<FixInput> {
        Arc::new(FixInput { source, bytes, received_ms })
    }
}

/// A stage between validation and commit (the plugin chain). Called from the intake thread once
/// per batch; it may keep, change or drop fixes and turn some into dead letters.
pub trait FixTransform: Send {
    /// Processes one batch.
    fn process(&mut self, batch: Vec<PendingFix>) -> TransformOutput;
}

/// What a [`FixTransform`] returns.
#[derive(Debug, Default)]
pub struct TransformOutput {
    /// Fixes to commit, in order.
    pub kept: Vec<PendingFix>,
    /// Fixes refused, with their reasons.
    pub dead_letters: Vec<DeadLetter>,
}

/// The courier a locations topic belongs to (the broker's ACL hook already checked that the
/// publisher is that courier).
pub fn courier_of(topic: &str) -> Option<&str> {
    locus_sdk::topics::courier_of_locations(topic)
}

pub use locus_sdk::wire::now_ms;

/// What is owed once a commit is durable: acks, answers, announcements.
#[derive(Debug, Default)]
struct PendingAcks {
    /// When its first report arrived (`None`: a commit of API order events alone).
    first_received: Option<Instant>,
    reports: u64,
    fixes: u64,
    /// Each courier's committed seqs as of this commit (an ack carries the watermark).
    acks: HashMap<String, SeqWindow>,
    /// What to settle with an external broker once it is acked.
    settles: Vec<Settle>,
    /// Its log entries, encoded, for the other workers (cluster mode; empty otherwise).
    replicate: Vec<Vec<u8>>,
    /// Answers to order events from the API.
    order_answers: order_desk::OwedAnswers,
    /// Answers to dead-letter replays from the API.
    replay_answers: letter_desk::OwedReplays,
    /// Orders its events changed: their statuses are published.
    order_changes: Vec<OrderChange>,
    /// Orders its fixes moved: their locations are published.
    moved_orders: Vec<String>,
    /// The highest notification delivery id it staged: durable with it.
    notifications_through: Option<u64>,
    /// Its fixes for the live fix stream (empty when `stream_fixes` is off).
    stream: fix_stream::StreamBatch,
}

/// What one batch knows of a courier while it is being built: its committed seqs with this
/// batch's reports taken, and the device times it has (to refuse a second fix at one).
#[derive(Debug)]
struct CourierInBatch {
    seqs: SeqWindow,
    /// The newest device time committed or in this batch: a fix after it is new for sure.
    newest_ts: Option<u64>,
    /// Device times of this batch's fixes.
    times: HashSet<u64>,
}

/// The intake stage: builds commits and writes them.
#[allow(missing_debug_implementations)] // holds trait objects
pub struct Intake {
    config: PipelineConfig,
    store: Store,
    metrics: Arc<Metrics>,
    transform: Option<Box<dyn FixTransform>>,
    influx: Option<Outbox>,
    orders: Option<mpsc::Receiver<order_desk::OrderRequest>>,
    /// Least time between two publishes of one order's location.
    location_interval: Duration,
    /// Where order events' notifications go (`[notify]`), and their deliveries.
    notifier: Option<(crate::notify::Rules, Arc<crate::notify::Deliveries>)>,
    /// Who may post through edges (`[edges]`); `None`: every edge batch is refused.
    edges: Option<crate::edges::EdgeRules>,
    /// Whether its commits are shared with other workers (cluster mode).
    replicate: bool,
    /// Where dead-letter replays come from (the API's [`LetterDesk`]).
    letters: Option<mpsc::Receiver<letter_desk::ReplayRequest>>,
}

/// Notifications staged for a commit: the records for the store's notifications tree (key,
/// value), and the highest delivery id among them.
type Staged = (Vec<(Vec<u8>, Vec<u8>)>, Option<u64>);

/// What one call of [`Intake::build`] produced.
#[derive(Debug, Default)]
pub struct BuiltBatch {
    /// The changes to write.
    pub commit: Commit,
    acks: HashMap<String, SeqWindow>,
    reports: u64,
    fixes: u64,
    /// What its order events changed.
    order_changes: Vec<OrderChange>,
    /// The highest notification delivery id it staged.
    notifications_through: Option<u64>,
}

/// A batch being built.
struct Building {
    record: RecordBuilder,
    couriers: HashMap<String, CourierInBatch>,
    orders: OrderBook,
    /// Receipts of edge requests this batch takes parts of, as they will be written.
    receipts: HashMap<Vec<u8>, crate::store::EdgeReceipt>,
    out: BuiltBatch,
}

impl Building {
    fn new(received_ms: u64) -> Building {
        Building {
            record: RecordBuilder::new(received_ms),
            couriers: HashMap::new(),
            orders: OrderBook::new(received_ms),
            receipts: HashMap::new(),
            out: BuiltBatch::default(),
        }
    }
}

impl Intake {
    /// A new intake stage over `store`.
    pub fn new(config: PipelineConfig, store: Store, metrics: Arc<Metrics>) -> Intake {
        let location_interval =
            Duration::from_millis(crate::orders::OrdersConfig::default().location_interval_ms);
        Intake {
            config,
            store,
            metrics,
            transform: None,
            influx: None,
            orders: None,
            location_interval,
            notifier: None,
            edges: None,
            replicate: false,
            letters: None,
        }
    }

    /// Takes batches from edges (`edge/+/batches`) as `rules` allow.
    pub fn with_edges(mut self, rules: crate::edges::EdgeRules) -> Intake {
        self.edges = Some(rules);
        self
    }

    /// Stages the notifications `[notify]` rules make of order events with the commits that
    /// hold the events.
    pub fn with_notifications(
        mut self,
        rules: crate::notify::Rules,
        deliveries: Arc<crate::notify::Deliveries>,
    ) -> Intake {
        self.notifier = Some((rules, deliveries));
        self
    }

    /// Takes order events from the API too (the desk is where the API hands them over), and
    /// announces orders as `[orders]` says.
    pub fn with_orders(mut self, config: &crate::orders::OrdersConfig) -> (Intake, OrderDesk) {
        let (desk, from_api) = OrderDesk::new();
        self.orders = Some(from_api);
        self.location_interval = Duration::from_millis(config.location_interval_ms);
        (self, desk)
    }

    /// Takes dead-letter replays from the API (the desk is where the API hands them over).
    pub fn with_letter_desk(mut self) -> (Intake, LetterDesk) {
        let (desk, from_api) = LetterDesk::new();
        self.letters = Some(from_api);
        (self, desk)
    }

    /// Checks and writes the order events waiting at the desk; the answers owed once they are
    /// durable (`None` when none waited).
    fn take_order_events(&mut self) -> Option<PendingAcks> {
        let from_api = self.orders.as_ref()?;
        let received_ms = now_ms();
        let mut book = OrderBook::new(received_ms);
        let mut order_answers = order_desk::take_waiting(from_api, &self.store, &mut book);
        if order_answers.is_empty() {
            return None;
        }
        let (notifications, notifications_through) =
            self.stage_notifications(&book.changes, received_ms);
        let commit = Commit { orders: book.record, notifications, ..Commit::default() };
        let committed = match self.commit(commit) {
            Ok(committed) => committed,
            Err(e) => {
                tracing::error!(error = %e, "cannot write order events; refused, senders may retry");
                for (answer, _) in order_answers.drain(..) {
                    let _ = answer.send(Err(OrderRefused::Unavailable(e.to_string())));
                }
                return None;
            }
        };
        Some(PendingAcks {
            replicate: self.to_replicate(committed.entries),
            order_answers,
            order_changes: book.changes,
            notifications_through,
            ..PendingAcks::default()
        })
    }

    /// The notifications `changes` cause, staged for the commit that holds them.
    fn stage_notifications(&self, changes: &[OrderChange], received_ms: u64) -> Staged {
        let Some((rules, deliveries)) = &self.notifier else { return (Vec::new(), None) };
        let new: Vec<crate::notify::Delivery> = changes
            .iter()
            .flat_map(|change| rules.deliveries_for(&change.order, &change.event, received_ms))
            .collect();
        if new.is_empty() {
            return (Vec::new(), None);
        }
        let staged = deliveries.stage(new);
        let through = staged.iter().map(|(id, _)| *id).max();
        let staged = staged
            .into_iter()
            .map(|(id, value)| (crate::notify::deliveries::key(id).to_vec(), value))
            .collect();
        (staged, through)
    }

    /// Puts a transform (the plugin chain) between validation and commit.
    pub fn with_transform(mut self, transform: Box<dyn FixTransform>) -> Intake {
        self.transform = Some(transform);
        self
    }

    /// Watches the InfluxDB outbox: while it is at its limit the running pipeline takes no
    /// reports in (acks held back, devices keep them).
    pub fn with_influx_outbox(mut self, outbox: Outbox) -> Intake {
        self.influx = Some(outbox);
        self
    }

    /// Writes a built batch (its log entry, dead letters and replay progress at once; durable
    /// at the next flush). On failure nothing of it is written.
    pub fn commit(&mut self, commit: Commit) -> Result<Committed, StoreError> {
        let committed = self.store.commit(commit)?;
        if let Some(outbox) = &self.influx {
            outbox.committed();
        }
        Ok(committed)
    }

    fn courier<'a>(&self, building: &'a mut Building, courier: &str) -> &'a mut CourierInBatch {
        if !building.couriers.contains_key(courier) {
            let (seqs, newest_ts) = self.store.dedup_state(courier);
            let state = CourierInBatch { seqs, newest_ts, times: HashSet::new() };
            building.couriers.insert(courier.to_owned(), state);
        }
        building.couriers.get_mut(courier).expect("just inserted")
    }

    /// Builds one commit from raw publishes `(topic, payload)`.
    pub fn build(
        &mut self,
        publishes: &[(Bytes, Bytes)],
        received_ms: u64,
    ) -> Result<BuiltBatch, StoreError> {
        let mut building = Building::new(received_ms);
        let mut pending = Vec::new();
        for (topic, payload) in publishes {
            if topic.ends_with(b"/events") {
                self.take_event(topic, payload, received_ms, &mut building);
            } else if topic.starts_with(b"edge/") {
                self.take_edge_batch(topic, payload, received_ms, &mut pending, &mut building)?;
            } else {
                self.take_report(topic, payload, received_ms, &mut pending, &mut building)?;
            }
        }
        self.transform_and_commit(pending, &mut building);
        let changes = std::mem::take(&mut building.orders.changes);
        let (staged, through) = self.stage_notifications(&changes, received_ms);
        building.out.commit.notifications = staged;
        building.out.notifications_through = through;
        building.out.order_changes = changes;
        Ok(finish(building))
    }

    /// Builds one commit from fixes that did not come from a report (the backfill of `locusd
    /// replay`): each is validated like a reported fix, then goes through the plugin chain and
    /// into the track, last locations and InfluxDB. No seq advances and no ack is owed. Each
    /// fix's [`FixInput`] (a replayed line) is its dead letter's source and payload; a
    /// replayed line's number begins the letter's detail (`line 12: …`). The caller skips
    /// fixes the track already has.
    pub fn build_fixes(
        &mut self,
        fixes: Vec<PendingFix>,
        received_ms: u64,
    ) -> Result<BuiltBatch, StoreError> {
        let mut building = Building::new(received_ms);
        let mut pending = Vec::with_capacity(fixes.len());
        for fix in fixes {
            self.metrics.fixes_received.inc();
            match validate::check_fix(&fix.fix, received_ms, &self.config) {
                Ok(()) => pending.push(fix),
                Err(problem) => {
                    let input = &fix.input;
                    let detail = match &input.source {
                        DeadLetterSource::Replay { line, .. } => format!("line {line}: {problem}"),
                        _ => problem.to_string(),
                    };
                    let letter = DeadLetter::new(
                        problem.reason(),
                        input.source.clone(),
                        Some(fix.courier),
                        detail,
                        input.bytes.to_vec(),
                        input.received_ms,
                    );
                    self.refuse(letter, &mut building.out);
                }
            }
        }
        self.transform_and_commit(pending, &mut building);
        Ok(finish(building))
    }

    /// Runs validated fixes through the transform and adds the kept ones to the batch.
    fn transform_and_commit(&mut self, pending: Vec<PendingFix>, building: &mut Building) {
        let kept = match &mut self.transform {
            Some(transform) if !pending.is_empty() => {
                let output = transform.process(pending);
                for letter in &output.dead_letters {
                    self.metrics.dead_letter(&letter.reason);
                }
                building.out.commit.dead_letters.extend(output.dead_letters);
                output.kept
            }
            _ => pending,
        };
        building.out.fixes += kept.len() as u64;
        for PendingFix { courier, fix, attributes, .. } in kept {
            building.record.fix(&courier, fix, attributes);
        }
    }

    /// Takes `courier`'s report `seq` into the batch; returns whether it is to be stored.
    /// Duplicates are acked again; a report past too many gaps is neither stored nor acked.
    fn take_seq(&mut self, building: &mut Building, courier: &str, seq: u64) -> bool {
        let state = self.courier(building, courier);
        let take = state.seqs.take(seq);
        let watermark = state.seqs.watermark();
        let window = state.seqs.clone();
        match take {
            SeqTake::Fresh => {
                building.record.report(courier, seq);
                building.out.acks.insert(courier.to_owned(), window);
                true
            }
            SeqTake::Duplicate => {
                self.metrics.duplicate_reports.inc();
                building.out.acks.insert(courier.to_owned(), window);
                false
            }
            SeqTake::TooManyGaps => {
                self.metrics.reports_deferred.inc();
                tracing::warn!(
                    courier,
                    seq,
                    watermark,
                    "report not taken: the courier has too many missing seqs below it (it is \
                     not acked, so the device sends it again)"
                );
                false
            }
        }
    }

    /// What `record` adds to the live fix stream, in the forms readers subscribed to (nothing
    /// with `[pipeline] stream_fixes` off).
    fn stream_batch(
        &self,
        record: &crate::store::CommitRecord,
        demand: &crate::mqtt::StreamDemand,
    ) -> fix_stream::StreamBatch {
        let on = self.config.stream_fixes;
        fix_stream::StreamBatch::of(record, on && demand.json(), on && demand.wire())
    }

    /// A commit's log entries as written, kept for the other workers in cluster mode (and
    /// dropped otherwise).
    fn to_replicate(&self, entries: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        match self.replicate {
            true => entries,
            false => Vec::new(),
        }
    }

    /// Applies log entries other workers committed and acked (cluster mode), each as a replica
    /// commit of its own (it keeps its receive time) holding the stream offset it came at. A
    /// seq this worker already holds and a fix it already has (same courier and device time)
    /// are left out: after a takeover, two workers may each have stored a report once.
    fn apply_replicas(&mut self, replicas: &[(Bytes, u64)]) -> Result<(), StoreError> {
        for (bytes, offset) in replicas {
            let progress = Some((REPLICA_PROGRESS_KEY.to_vec(), offset.to_be_bytes().to_vec()));
            let commit = match crate::store::LogEntry::decode(bytes) {
                Ok(crate::store::LogEntry::Commit(record)) => {
                    let mut building = Building::new(record.received_ms);
                    for &(courier, seq) in &record.reports {
                        let courier = record.courier(courier);
                        if self.courier(&mut building, courier).seqs.take(seq) == SeqTake::Fresh {
                            building.record.report(courier, seq);
                        }
                    }
                    for logged in &record.fixes {
                        let courier = record.courier(logged.courier);
                        if !self.time_taken(&mut building, courier, logged.fix.ts_ms)? {
                            let attributes = logged.attributes.clone();
                            building.record.fix(courier, logged.fix.clone(), attributes);
                        }
                    }
                    Commit {
                        record: building.record.finish(),
                        replay_progress: progress,
                        replica: true,
                        ..Commit::default()
                    }
                }
                Ok(crate::store::LogEntry::Orders(orders)) => {
                    Commit { orders, replay_progress: progress, replica: true, ..Commit::default() }
                }
                Ok(_) => Commit { replay_progress: progress, ..Commit::default() },
                Err(e) => {
                    tracing::warn!(offset, error = %e, "a log entry from another worker cannot be read; skipped");
                    Commit { replay_progress: progress, ..Commit::default() }
                }
            };
            self.store.commit(commit)?;
        }
        Ok(())
    }

    /// Whether `courier` already has a fix at device time `ts` (committed or in this batch);
    /// records it when not.
    fn time_taken(
        &mut self,
        building: &mut Building,
        courier: &str,
        ts: u64,
    ) -> Result<bool, StoreError> {
        let state = self.courier(building, courier);
        if state.newest_ts.is_none_or(|newest| ts > newest) {
            state.newest_ts = Some(ts);
            state.times.insert(ts);
            return Ok(false);
        }
        if state.times.contains(&ts) {
            return Ok(true);
        }
        // Older than the newest: the track may have it (rare: backlogs arrive in order).
        let taken = self.store.has_track_fix(courier, ts)?;
        if !taken {
            self.courier(building, courier).times.insert(ts);
        }
        Ok(taken)
    }

    fn take_report(
        &mut self,
        topic: &[u8],
        payload: &Bytes,
        received_ms: u64,
        pending: &mut Vec<PendingFix>,
        building: &mut Building,
    ) -> Result<(), StoreError> {
        self.metrics.reports_received.inc();
        let topic_text = String::from_utf8_lossy(topic);
        let source = || DeadLetterSource::Mqtt { topic: topic_text.to_string() };
        let dead_letter = |problem: &ReportProblem, courier: Option<&str>, bytes: &[u8]| {
            let courier = courier.map(str::to_owned);
            let detail = problem.to_string();
            DeadLetter::new(problem.reason(), source(), courier, detail, bytes, received_ms)
        };
        let Some(courier) = courier_of(&topic_text).map(str::to_owned) else {
            let letter = dead_letter(&ReportProblem::BadTopic, None, payload);
            self.refuse(letter, &mut building.out);
            return Ok(());
        };
        let report = match validate::decode_report(payload, &self.config) {
            Ok(report) => report,
            Err((problem, seq)) => {
                let letter = dead_letter(&problem, Some(&courier), payload);
                self.refuse_whole(building, &courier, seq, letter);
                return Ok(());
            }
        };
        self.metrics.fixes_received.inc_by(report.fixes.len() as u64);
        if !self.take_seq(building, &courier, report.seq) {
            return Ok(());
        }
        building.out.reports += 1;
        let input = FixInput::new(source(), payload.clone(), received_ms);
        self.take_fixes(&courier, report.fixes, input, pending, building)?;
        Ok(())
    }

    /// Takes the fixes of one report (or edge batch) for `courier`, read from `input`: good
    /// ones into `pending`, bad ones refused with one dead letter per distinct reason, holding
    /// the payload as received (never a rebuilt report) and naming the refused fixes, so a
    /// report of many bad fixes costs a few letters, not one copy of itself per fix. Returns
    /// how many were refused.
    fn take_fixes(
        &mut self,
        courier: &str,
        fixes: Vec<Fix>,
        input: Arc<FixInput>,
        pending: &mut Vec<PendingFix>,
        building: &mut Building,
    ) -> Result<usize, StoreError> {
        let total = fixes.len();
        let received_ms = input.received_ms;
        let mut refused: Vec<(usize, FixProblem)> = Vec::new();
        for (index, fix) in fixes.into_iter().enumerate() {
            let checked = validate::check_fix(&fix, received_ms, &self.config);
            let checked = match checked {
                Ok(()) if self.time_taken(building, courier, fix.ts_ms)? => {
                    Err(FixProblem::SameDeviceTime { ts_ms: fix.ts_ms })
                }
                other => other,
            };
            match checked {
                Ok(()) => pending.push(PendingFix::new(courier.to_owned(), fix, input.clone())),
                Err(problem) => refused.push((index, problem)),
            }
        }
        let mut reasons: Vec<DeadLetterReason> = Vec::new();
        for (_, problem) in &refused {
            let reason = problem.reason();
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
        for reason in reasons {
            let detail = refused_fixes_detail(&refused, &reason, total);
            let courier = Some(courier.to_owned());
            let source = input.source.clone();
            let letter =
                DeadLetter::new(reason, source, courier, detail, &input.bytes[..], received_ms);
            self.refuse(letter, &mut building.out);
        }
        Ok(refused.len())
    }

    /// Takes a courier's order event into the batch: its seq like a report's, the event into
    /// the batch's order book when the lifecycle allows it, a dead letter when not.
    fn take_event(
        &mut self,
        topic: &[u8],
        payload: &Bytes,
        received_ms: u64,
        building: &mut Building,
    ) {
        let topic_text = String::from_utf8_lossy(topic);
        let letter = |reason, courier: Option<&str>, detail: String| {
            let source = DeadLetterSource::Mqtt { topic: topic_text.to_string() };
            let courier = courier.map(str::to_owned);
            DeadLetter::new(reason, source, courier, detail, &payload[..], received_ms)
        };
        let Some(courier) = locus_sdk::topics::courier_of_events(&topic_text).map(str::to_owned)
        else {
            let problem = ReportProblem::BadTopic;
            self.refuse(letter(problem.reason(), None, problem.to_string()), &mut building.out);
            return;
        };
        let event = match validate::decode_event(payload, &self.config) {
            Ok(event) => event,
            Err((problem, seq)) => {
                let letter = letter(problem.reason(), Some(&courier), problem.to_string());
                self.refuse_whole(building, &courier, seq, letter);
                return;
            }
        };
        if !self.take_seq(building, &courier, event.seq) {
            return;
        }
        let kind = match event.kind {
            wire::CourierEventKind::PickedUp => crate::orders::EventKind::PickedUp,
            wire::CourierEventKind::Delivered => crate::orders::EventKind::Delivered,
        };
        let order_event = crate::orders::OrderEvent {
            event_id: event.event_id,
            kind,
            at_ms: event.at_ms,
            actor: format!("courier:{courier}"),
            courier: None,
            details: event.details,
        };
        if let Err(refusal) =
            building.orders.take(&self.store, &event.order, order_event, Some(&courier))
        {
            let letter =
                letter(DeadLetterReason::OrderEventRefused, Some(&courier), refusal.to_string());
            self.refuse(letter, &mut building.out);
        }
    }

    /// Dead-letters a report or event refused as a whole. One with a seq (well-formed but
    /// unacceptable) has its seq consumed, so the device stops resending something that can
    /// never be taken; a resend of a seq already consumed is acked again, not lettered again.
    fn refuse_whole(
        &mut self,
        building: &mut Building,
        courier: &str,
        seq: Option<u64>,
        letter: DeadLetter,
    ) {
        if seq.is_none_or(|seq| self.take_seq(building, courier, seq)) {
            self.refuse(letter, &mut building.out);
        }
    }

    fn refuse(&self, letter: DeadLetter, out: &mut BuiltBatch) {
        self.metrics.dead_letter(&letter.reason);
        tracing::debug!(reason = %letter.reason, detail = %letter.detail, source = %letter.source, "dead letter");
        out.commit.dead_letters.push(letter);
    }
}

fn finish(building: Building) -> BuiltBatch {
    let Building { record, orders, receipts, mut out, .. } = building;
    out.commit.record = record.finish();
    out.commit.orders = orders.record;
    out.commit.receipts = receipts.into_iter().collect();
    out
}

/// The detail of a dead letter for the fixes of one report refused for `reason`: how many of the
/// report's fixes, and which ones (by index, the first few with their problem).
fn refused_fixes_detail(
    refused: &[(usize, FixProblem)],
    reason: &DeadLetterReason,
    total: usize,
) -> String {
    /// Problems spelled out; the rest are counted.
    const LISTED: usize = 5;
    let these: Vec<&(usize, FixProblem)> =
        refused.iter().filter(|(_, p)| p.reason() == *reason).collect();
    let mut detail =
        format!("{} of the report's {total} fixes refused (its valid fixes are kept)", these.len());
    for (index, problem) in these.iter().take(LISTED) {
        detail.push_str(&format!("; fixes[{index}]: {problem}"));
    }
    if these.len() > LISTED {
        detail.push_str(&format!("; and {} more", these.len() - LISTED));
    }
    detail
}

/// Runs the intake loop on the current thread until `stop` is set or the link closes, then
/// returns after handing every built batch to the committer.
/// What the intake reads from the broker.
struct IntakeLinks {
    rx: ReportFeed,
    events: Option<crate::mqtt::EventsLink>,
    stream_demand: crate::mqtt::StreamDemand,
}

/// Where reports come from: the embedded broker's local link or an external broker's
/// deliveries.
enum ReportFeed {
    Embedded(LinkRx),
    External(flume::Receiver<Delivery>),
}

/// What waiting on a [`ReportFeed`] gave.
enum Fed {
    /// A publish (and, from an external broker, how to settle it).
    Publish(Bytes, Bytes, Option<Settle>),
    /// Another worker's log entry, its offset in the shared log stream, how to settle it.
    Replica(Bytes, u64, Settle),
    /// Nothing before the deadline.
    Nothing,
    /// The broker is gone: nothing will ever arrive.
    Lost(String),
}

impl ReportFeed {
    fn recv_deadline(&mut self, deadline: Instant) -> Fed {
        let rx = match self {
            ReportFeed::Embedded(rx) => rx,
            ReportFeed::External(rx) => {
                return match rx.recv_deadline(deadline) {
                    Ok(Delivery { kind: DeliveryKind::Publish { topic }, payload, settle }) => {
                        Fed::Publish(topic, payload, Some(settle))
                    }
                    Ok(Delivery { kind: DeliveryKind::Replica { offset }, payload, settle }) => {
                        Fed::Replica(payload, offset, settle)
                    }
                    Err(flume::RecvTimeoutError::Timeout) => Fed::Nothing,
                    Err(flume::RecvTimeoutError::Disconnected) => {
                        Fed::Lost("the external broker's consumers stopped".to_owned())
                    }
                }
            }
        };
        loop {
            match rx.recv_deadline(deadline) {
                Ok(Some(Notification::Forward(forward))) => {
                    return Fed::Publish(forward.publish.topic, forward.publish.payload, None)
                }
                Ok(Some(Notification::Unschedule)) => {
                    // The router paused us because our buffer was full; ask for more.
                    if let Err(e) = rx.ready() {
                        return Fed::Lost(e.to_string());
                    }
                }
                Ok(Some(_)) => {}
                // rumqttd reports a closed link as a "timeout" too: its router is gone (it
                // panicked), so nothing will ever arrive and no ack can leave.
                Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Disconnected)) => {
                    return Fed::Lost("its router stopped".to_owned())
                }
                Ok(None) | Err(LinkError::RecvTimeout(_)) => return Fed::Nothing,
                Err(e) => return Fed::Lost(e.to_string()),
            }
        }
    }
}

fn run_intake(
    mut intake: Intake,
    links: IntakeLinks,
    to_committer: mpsc::SyncSender<PendingAcks>,
    flushing: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let IntakeLinks { mut rx, mut events, stream_demand } = links;
    let max_batch = intake.config.max_batch_reports;
    let mut publishes: Vec<(Bytes, Bytes)> = Vec::with_capacity(max_batch);
    let mut settles: Vec<Settle> = Vec::new();
    let mut replicas: Vec<(Bytes, u64)> = Vec::new();
    let mut paused = false;
    while !stop.load(Ordering::Relaxed) {
        // Order events first, and even while reports are held back below: they add nothing
        // to the InfluxDB outbox, and a merchant waits for the answer.
        if let Some(pending) = intake.take_order_events() {
            flushing.fetch_add(1, Ordering::AcqRel);
            if to_committer.send(pending).is_err() {
                return;
            }
        }
        if let Some(outbox) = &intake.influx {
            let full = outbox.at_limit();
            if full != paused {
                paused = full;
                intake.metrics.acks_paused.set(i64::from(paused));
                if paused {
                    tracing::warn!(
                        limit = outbox.max_fixes(),
                        "InfluxDB outbox is full: new reports are not taken in (devices keep and \
                         resend them) until InfluxDB takes writes again"
                    );
                } else {
                    tracing::info!(waiting = outbox.depth(), "InfluxDB outbox has room again");
                }
            }
            if paused {
                // Leave reports in the broker (and on devices, which resend what is not acked)
                // until the outbox drains.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        // Dead letters an operator replays: their fixes go to InfluxDB too, so not while the
        // outbox is full.
        if let Some(pending) = take_replays(&mut intake, &stream_demand) {
            flushing.fetch_add(1, Ordering::AcqRel);
            if to_committer.send(pending).is_err() {
                return;
            }
        }
        // Wait briefly for the first publish so `stop` is noticed, then take everything that
        // is already there: the batch grows with the load, which is what makes group commit
        // cheap under load and fast when idle.
        let mut first_received = Instant::now();
        // Couriers' order events first (few; they join this batch), without waiting.
        if let Some(events) = &mut events {
            if let Err(e) = take_waiting_events(&mut events.rx, &mut publishes) {
                tracing::error!(error = %e, "lost the link to the embedded broker");
                return;
            }
        }
        let mut deadline = match publishes.is_empty() {
            true => Instant::now() + Duration::from_millis(100),
            false => Instant::now(),
        };
        while publishes.len() < max_batch {
            match rx.recv_deadline(deadline) {
                Fed::Publish(topic, payload, settle) => {
                    if publishes.is_empty() {
                        first_received = Instant::now();
                    }
                    publishes.push((topic, payload));
                    settles.extend(settle);
                    deadline = Instant::now();
                }
                Fed::Replica(entry, offset, settle) => {
                    replicas.push((entry, offset));
                    settles.push(settle);
                    deadline = Instant::now();
                }
                // While the committer is still flushing earlier commits, whatever arrives
                // meanwhile joins this one: it could not be acked sooner anyway, and one log
                // entry per flush keeps the cost per fix low at any load.
                Fed::Nothing
                    if !(publishes.is_empty() && replicas.is_empty())
                        && flushing.load(Ordering::Acquire) > 0 =>
                {
                    deadline = Instant::now() + Duration::from_micros(200);
                }
                Fed::Nothing => break,
                Fed::Lost(e) => {
                    tracing::error!(error = %e, "lost the link to the broker");
                    return;
                }
            }
        }
        if !replicas.is_empty() {
            if let Err(e) = intake.apply_replicas(&replicas) {
                // Not settled: delivered again after a reconnect.
                tracing::error!(error = %e, "cannot apply other workers' log entries");
                settles.clear();
            }
            replicas.clear();
        }
        if publishes.is_empty() {
            if settles.is_empty() {
                continue;
            }
            let pending =
                PendingAcks { settles: std::mem::take(&mut settles), ..PendingAcks::default() };
            flushing.fetch_add(1, Ordering::AcqRel);
            if to_committer.send(pending).is_err() {
                return;
            }
            continue;
        }
        let received_ms = now_ms();
        let built = intake.build(&publishes, received_ms);
        publishes.clear();
        // Settled only with an ack: a batch that fails below is never settled, and an
        // external broker delivers it again when this worker's connection goes.
        let batch_settles = std::mem::take(&mut settles);
        let built = match built {
            Ok(built) => built,
            Err(e) => {
                // Storage is failing: nothing of this batch is acked, so devices resend it.
                tracing::error!(error = %e, "cannot read the store; batch not committed");
                continue;
            }
        };
        let BuiltBatch { commit, acks, reports, fixes, order_changes, notifications_through } =
            built;
        let stream = intake.stream_batch(&commit.record, &stream_demand);
        let committed = match intake.commit(commit) {
            Ok(committed) => committed,
            Err(e) => {
                tracing::error!(error = %e, "cannot write the commit; not acked, devices will resend");
                continue;
            }
        };
        let pending = PendingAcks {
            first_received: Some(first_received),
            reports,
            fixes,
            acks,
            order_changes,
            moved_orders: committed.moved_orders,
            settles: batch_settles,
            replicate: intake.to_replicate(committed.entries),
            notifications_through,
            stream,
            ..PendingAcks::default()
        };
        flushing.fetch_add(1, Ordering::AcqRel);
        if to_committer.send(pending).is_err() {
            return;
        }
    }
}

/// Writes the replays waiting at the letter desk; the answers owed once they are durable
/// (`None` when none waited).
fn take_replays(
    intake: &mut Intake,
    stream_demand: &crate::mqtt::StreamDemand,
) -> Option<PendingAcks> {
    let (built, mut replay_answers) = intake.take_replays()?;
    let stream = intake.stream_batch(&built.commit.record, stream_demand);
    match intake.commit(built.commit) {
        Ok(committed) => Some(PendingAcks {
            replay_answers,
            moved_orders: committed.moved_orders,
            replicate: intake.to_replicate(committed.entries),
            stream,
            ..PendingAcks::default()
        }),
        Err(e) => {
            tracing::error!(error = %e, "cannot write a dead-letter replay; nothing of it stored");
            for (answer, _) in replay_answers.drain(..) {
                let _ = answer.send(Err(ReplayUnavailable(e.to_string())));
            }
            None
        }
    }
}

/// Moves the order events waiting on the events link into `publishes`, without waiting.
fn take_waiting_events(
    rx: &mut LinkRx,
    publishes: &mut Vec<(Bytes, Bytes)>,
) -> Result<(), Box<LinkError>> {
    loop {
        match rx.recv_deadline(Instant::now()) {
            Ok(Some(Notification::Forward(forward))) => {
                publishes.push((forward.publish.topic, forward.publish.payload));
            }
            Ok(Some(Notification::Unschedule)) => rx.ready().map_err(Box::new)?,
            Ok(Some(_)) => {}
            Ok(None) | Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => {
                return Ok(())
            }
            Err(e) => return Err(Box::new(e)),
        }
    }
}

/// Commits flushed and waiting for InfluxDB before they may be acked (cluster mode).
#[derive(Default)]
struct AwaitingInflux {
    /// Flushed groups, oldest first, each with the last log id written before its flush: it
    /// may be acked once the shipper passed that id. Not only its own entries: a report it
    /// acks as a duplicate may be in an earlier commit the shipper has not passed yet.
    groups: std::collections::VecDeque<(u64, Vec<PendingAcks>)>,
    /// The shared record refused the last ack record: try again no sooner than this.
    retry_at: Option<Instant>,
}

impl AwaitingInflux {
    /// How long the committer may sleep before looking again.
    fn poll_in(&self) -> Option<Duration> {
        if self.groups.is_empty() {
            return None;
        }
        let retry = self.retry_at.map(|at| at.saturating_duration_since(Instant::now()));
        Some(retry.unwrap_or(Duration::from_millis(5)))
    }

    /// The oldest groups whose log entries the shipper has passed, in commit order.
    fn take_shipped(&mut self, store: &Store) -> Vec<PendingAcks> {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Vec::new();
        }
        let shipped = store.shipped_through();
        let mut released = Vec::new();
        while let Some((through, _)) = self.groups.front() {
            if *through > shipped {
                break;
            }
            released.extend(self.groups.pop_front().into_iter().flat_map(|(_, group)| group));
        }
        released
    }
}

/// Acks what InfluxDB now holds (cluster mode): records the couriers' committed seqs in the
/// shared record, then acks, announces and settles, in that order. If the record cannot be
/// written the groups wait and are tried again: nothing is acked that a worker taking over
/// could not learn from InfluxDB.
fn ack_shipped(
    announcer: &mut Announcer,
    awaiting: &mut AwaitingInflux,
    store: &Store,
    metrics: &Metrics,
) -> Result<(), announce::LinkLost> {
    let released = awaiting.take_shipped(store);
    if released.is_empty() {
        return Ok(());
    }
    let mut windows: HashMap<&str, &SeqWindow> = HashMap::new();
    for pending in &released {
        for (courier, window) in &pending.acks {
            // Later commits hold the later (larger) windows.
            windows.insert(courier, window);
        }
    }
    let windows: Vec<(&str, &SeqWindow)> = windows.into_iter().collect();
    let outlet = announcer.external().expect("awaiting InfluxDB only with an external broker");
    // The stream and the other workers first, then the record, then the acks (see
    // `external`): nothing is acked that they could miss.
    let mut stream = Vec::new();
    let mut log_entries = Vec::new();
    for pending in &released {
        stream.extend(pending.stream.messages());
        log_entries.extend(pending.replicate.iter().cloned());
    }
    let streamed = stream.len() as u64;
    let published = outlet.publish_confirmed(stream, log_entries);
    let recorded = published.and_then(|()| outlet.record_acks(&windows));
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "cannot publish the stream or record acks; acks wait and are tried again");
        awaiting.retry_at = Some(Instant::now() + Duration::from_millis(500));
        // The log through which they wait has been shipped already.
        awaiting.groups.push_front((0, released));
        return Ok(());
    }
    metrics.fix_stream_messages.inc_by(streamed);
    let mut released = released;
    for pending in &mut released {
        // Sent above.
        pending.stream = fix_stream::StreamBatch::default();
    }
    awaiting.retry_at = None;
    let settles: Vec<Settle> =
        released.iter().flat_map(|pending| pending.settles.iter().copied()).collect();
    announce_flushed(announcer, released, metrics)?;
    if let Some(outlet) = announcer.external() {
        outlet.settle(settles);
    }
    Ok(())
}

/// Runs the committer on the current thread: flush, then ack and announce, until the intake
/// hangs up. With an external broker, acks also wait until InfluxDB holds the commit's fixes
/// (`influx`, whose shipper is asked to hurry).
fn run_committer(
    store: Store,
    mut announcer: Announcer,
    deliveries: Option<Arc<crate::notify::Deliveries>>,
    influx: Option<Outbox>,
    from_intake: mpsc::Receiver<PendingAcks>,
    flushing: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let mut awaiting = AwaitingInflux::default();
    // The broker keeps retained messages in memory only: re-announce every courier's committed
    // seq and every order's status, so a device or customer that reconnects after a server
    // restart learns them at once.
    // An external broker keeps no retained message from a server-side publisher, and another
    // worker may since have acked more: nothing to re-announce there.
    let announced = match announcer.external() {
        None => announcer.announce_all(),
        Some(_) => Ok(()),
    };
    if let Err(e) = announced {
        tracing::warn!(error = %e, "cannot re-announce acks and order statuses; devices learn them on their next report");
    }
    loop {
        if let Err(e) = ack_shipped(&mut announcer, &mut awaiting, &store, &metrics) {
            tracing::error!(error = %e, "cannot publish acks: broker link lost");
            return;
        }
        // Held-back order locations go when their interval is up, even with nothing to flush;
        // commits waiting for InfluxDB are looked at again soon.
        let due = announcer.next_due().map(|due| due.saturating_duration_since(Instant::now()));
        let wait = match (due, awaiting.poll_in()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let first = match wait {
            Some(wait) => match from_intake.recv_timeout(wait) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = announcer.publish_due() {
                        tracing::error!(error = %e, "cannot publish: broker link lost");
                        return;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match from_intake.recv() {
                Ok(first) => first,
                Err(_) => return,
            },
        };
        // Group commit: one flush covers every batch applied so far.
        let mut group = vec![first];
        group.extend(from_intake.try_iter());
        let flushed = store.flush();
        flushing.fetch_sub(group.len(), Ordering::AcqRel);
        if let Err(e) = flushed {
            // Not durable, so not acked; devices resend. sled errors here are I/O failures.
            tracing::error!(error = %e, "flush failed; acks withheld");
            for pending in group {
                for (answer, _) in pending.order_answers {
                    let _ = answer.send(Err(OrderRefused::Unavailable(e.to_string())));
                }
            }
            continue;
        }
        // Their notifications may go now: the events that cause them are durable.
        let through = group.iter().filter_map(|pending| pending.notifications_through).max();
        if let (Some(deliveries), Some(through)) = (&deliveries, through) {
            deliveries.durable_through(through);
        }
        if let Some(outbox) = influx.as_ref().filter(|_| announcer.external().is_some()) {
            awaiting.groups.push_back((store.last_log_id(), group));
            outbox.ship_now();
            continue;
        }
        if let Err(e) = announce_flushed(&mut announcer, group, &metrics) {
            tracing::error!(error = %e, "cannot publish acks: broker link lost");
            return;
        }
    }
}

/// Answers, acks and announces what a flush made durable.
fn announce_flushed(
    announcer: &mut Announcer,
    group: Vec<PendingAcks>,
    metrics: &Metrics,
) -> Result<(), announce::LinkLost> {
    let mut acks: HashMap<String, u64> = HashMap::new();
    let mut moved: Vec<String> = Vec::new();
    let mut streams = Vec::new();
    for pending in group {
        for (answer, answered) in pending.order_answers {
            let _ = answer.send(answered);
        }
        for (answer, answered) in pending.replay_answers {
            let _ = answer.send(answered);
        }
        // A commit of API order events alone is no batch of reports for the metrics.
        if let Some(first_received) = pending.first_received {
            metrics.reports_committed.inc_by(pending.reports);
            metrics.fixes_committed.inc_by(pending.fixes);
            metrics.commit_batch_reports.observe(pending.reports as f64);
            metrics.commit_latency_seconds.observe(first_received.elapsed().as_secs_f64());
        }
        for (courier, window) in pending.acks {
            let entry = acks.entry(courier).or_default();
            *entry = (*entry).max(window.watermark());
        }
        for order in pending.moved_orders {
            if !moved.contains(&order) {
                moved.push(order);
            }
        }
        for change in &pending.order_changes {
            announcer.order_changed(change)?;
        }
        if !pending.stream.is_empty() {
            streams.push(pending.stream);
        }
    }
    for (courier, seq) in acks {
        announcer.ack(&courier, seq)?;
        metrics.acks_published.inc();
    }
    for order in moved {
        announcer.order_moved(&order)?;
    }
    announcer.publish_due()?;
    // The stream last: its JSON is the committer's biggest job, and the acks above are what
    // devices wait for.
    for stream in streams {
        for (topic, json) in stream.messages() {
            announcer.stream(topic, json)?;
            metrics.fix_stream_messages.inc();
        }
    }
    Ok(())
}

/// The running pipeline's two threads.
#[derive(Debug)]
pub struct PipelineHandle {
    stop: Arc<AtomicBool>,
    intake: std::thread::JoinHandle<()>,
    committer: std::thread::JoinHandle<()>,
    /// Sent to when the intake stops, whatever the reason.
    intake_ended: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl PipelineHandle {
    /// Starts the intake and committer threads on the embedded broker's links.
    pub fn start(intake: Intake, link: BrokerLink) -> std::io::Result<PipelineHandle> {
        let BrokerLink { tx, rx, events, stream_demand } = link;
        let links = IntakeLinks { rx: ReportFeed::Embedded(rx), events, stream_demand };
        Self::start_on(intake, links, announce::Outlet::Embedded(tx))
    }

    /// Starts the intake and committer threads on an external broker (cluster mode): acks
    /// wait until InfluxDB holds the fixes, so `intake` must have an InfluxDB outbox.
    pub fn start_external(
        intake: Intake,
        broker: ExternalBroker,
    ) -> std::io::Result<PipelineHandle> {
        if intake.influx.is_none() {
            return Err(std::io::Error::other(
                "an external broker needs [influx]: acks wait for the shared record",
            ));
        }
        let ExternalBroker { deliveries, outlet, stream_demand } = broker;
        let intake = Intake { replicate: true, ..intake };
        let links =
            IntakeLinks { rx: ReportFeed::External(deliveries), events: None, stream_demand };
        Self::start_on(intake, links, announce::Outlet::External(outlet))
    }

    fn start_on(
        intake: Intake,
        links: IntakeLinks,
        outlet: announce::Outlet,
    ) -> std::io::Result<PipelineHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        // A few batches may wait for one flush; more means the disk is the bottleneck and the
        // intake should wait rather than pile up unflushed state.
        let (to_committer, from_intake) = mpsc::sync_channel(16);
        let store = intake.store.clone();
        let metrics = intake.metrics.clone();
        let announcer = Announcer::new(outlet, store.clone(), intake.location_interval);
        let influx = intake.influx.clone();
        let deliveries = intake.notifier.as_ref().map(|(_, deliveries)| deliveries.clone());
        let intake_stop = stop.clone();
        // Commits handed to the committer and not flushed yet.
        let flushing = Arc::new(AtomicUsize::new(0));
        let committer_flushing = flushing.clone();
        let (ended, intake_ended) = tokio::sync::oneshot::channel();
        let intake =
            std::thread::Builder::new().name("pipeline-intake".into()).spawn(move || {
                run_intake(intake, links, to_committer, flushing, intake_stop);
                let _ = ended.send(());
            })?;
        let committer =
            std::thread::Builder::new().name("pipeline-commit".into()).spawn(move || {
                run_committer(
                    store,
                    announcer,
                    deliveries,
                    influx,
                    from_intake,
                    committer_flushing,
                    metrics,
                )
            })?;
        Ok(PipelineHandle { stop, intake, committer, intake_ended: Some(intake_ended) })
    }

    /// Resolves when the pipeline stops taking reports: after [`PipelineHandle::shutdown`], or
    /// on its own when its link to the broker is lost (the broker's router died). A server must
    /// not go on without it: it would accept connections and answer health checks while
    /// nothing is stored or acked. Only the first call's future resolves.
    pub fn ended(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let ended = self.intake_ended.take();
        async move {
            match ended {
                Some(ended) => {
                    let _ = ended.await;
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Stops taking reports, commits and acks everything taken, and returns when done.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        for (name, thread) in [("intake", self.intake), ("committer", self.committer)] {
            if thread.join().is_err() {
                tracing::error!("pipeline {name} thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real rumqttd router that dies (a segment under its 1 KiB minimum makes it panic when
    /// the filter's log is created): the pipeline notices the lost link and says it ended,
    /// instead of polling a dead link forever while locusd looks healthy.
    #[test]
    fn the_pipeline_ends_when_the_brokers_router_dies() {
        use rumqttd::{RouterConfig, SegmentConfig};
        let router = RouterConfig {
            max_connections: 10,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 2,
            custom_segment: Some(HashMap::from([(
                "boom/+".to_owned(),
                SegmentConfig { max_segment_size: 100, max_segment_count: 1 },
            )])),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let broker = rumqttd::Broker::new(rumqttd::Config { router, ..Default::default() });
        let (mut tx, rx) = broker.link(crate::mqtt::PIPELINE_CLIENT_ID).unwrap();
        tx.subscribe(locus_sdk::topics::locations("+")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let intake = Intake::new(PipelineConfig::default(), store, Arc::new(Metrics::new()));
        let stream_demand = crate::mqtt::StreamDemand::always();
        let link = BrokerLink { tx, rx, events: None, stream_demand };
        let mut pipeline = PipelineHandle::start(intake, link).unwrap();
        let mut ended = Box::pin(pipeline.ended());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let mut wait =
            |limit| runtime.block_on(async { tokio::time::timeout(limit, &mut ended).await });
        let early = wait(Duration::from_millis(300));
        assert!(early.is_err(), "the pipeline ended while its broker was alive");

        let (mut trigger, _trigger_rx) = broker.link("trigger").unwrap();
        trigger.subscribe("boom/x").unwrap();
        assert!(
            wait(Duration::from_secs(10)).is_ok(),
            "the router died and the pipeline did not notice in 10 s"
        );
        pipeline.shutdown();
    }

    #[test]
    fn bad_fixes_are_refused_one_letter_per_reason_holding_the_payload_as_received() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut intake = Intake::new(PipelineConfig::default(), store, Arc::new(Metrics::new()));
        let now = now_ms();
        let mut fixes: Vec<Fix> = (0..12).map(|i| Fix::from_degrees(now + i, 91.0, 2.0)).collect();
        fixes[0] = Fix::from_degrees(now, 41.0, 2.0);
        fixes[5].details = None;
        fixes[5].lat_e7 = 0;
        fixes[7].lat_e7 = 0;
        fixes[7].details =
            Some(wire::FixDetails { heading_cdeg: Some(36_000), ..Default::default() });
        let payload = wire::encode_report(&wire::Report { seq: 1, fixes });
        let topic = Bytes::from("couriers/c1/locations");
        let built = intake.build(&[(topic, Bytes::from(payload.clone()))], now).unwrap();
        let mqtt = DeadLetterSource::Mqtt { topic: "couriers/c1/locations".into() };
        assert!(built.commit.dead_letters.iter().all(|l| l.source == mqtt && l.received_ms == now));

        assert_eq!(built.commit.record.fixes.len(), 2, "fixes 0 and 5 are kept");
        assert_eq!(built.acks.get("c1").map(SeqWindow::watermark), Some(1));
        let letters = &built.commit.dead_letters;
        let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
        assert_eq!(reasons, ["coordinates_out_of_range", "detail_out_of_range"]);
        assert!(letters.iter().all(|l| l.payload == payload), "never a rebuilt report");
        let detail = &letters[0].detail;
        assert!(detail.starts_with("9 of the report's 12 fixes refused"), "{detail}");
        assert!(detail.contains("fixes[1]: coordinates out of range"), "{detail}");
        assert!(detail.ends_with("; and 4 more"), "{detail}");
        assert!(!detail.contains("fixes[5]") && !detail.contains("fixes[7]"), "{detail}");
        assert!(
            letters[1].detail.contains("fixes[7]: heading out of range"),
            "{}",
            letters[1].detail
        );
    }

    #[test]
    fn build_fixes_validates_and_never_moves_the_last_location_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = PipelineConfig { max_age_ms: u64::MAX, ..PipelineConfig::default() };
        let mut intake = Intake::new(config, store.clone(), Arc::new(Metrics::new()));
        let now = now_ms();
        let pending = |ts: u64, lat: f64| {
            let source = DeadLetterSource::Replay { file: "f.jsonl".into(), line: ts };
            let input = FixInput::new(source, Bytes::from(format!("input {ts}")), now);
            PendingFix::new("c1".into(), Fix::from_degrees(ts, lat, 2.0), input)
        };
        let live = intake.build_fixes(vec![pending(now, 41.0)], now).unwrap();
        intake.commit(live.commit).unwrap();
        let old = now - 365 * 24 * 3600 * 1000;
        let built =
            intake.build_fixes(vec![pending(old, 40.0), pending(old + 1, 95.0)], now).unwrap();
        assert_eq!(built.commit.record.fixes.len(), 1, "a year-old fix passes without max_age_ms");
        assert!(built.commit.record.reports.is_empty() && built.acks.is_empty());
        let letter = &built.commit.dead_letters[0];
        assert_eq!(letter.reason, DeadLetterReason::CoordinatesOutOfRange);
        let source = DeadLetterSource::Replay { file: "f.jsonl".into(), line: old + 1 };
        assert_eq!((&letter.source, letter.source.topic()), (&source, "replay:f.jsonl".into()));
        assert!(letter.detail.starts_with(&format!("line {}: ", old + 1)), "{}", letter.detail);
        assert_eq!(letter.payload, format!("input {}", old + 1).into_bytes(), "the input as read");
        intake.commit(built.commit).unwrap();
        assert_eq!(store.last_location("c1").unwrap().unwrap().fix.ts_ms, now, "older than it");
        assert_eq!(store.track("c1", None, None, 10).unwrap().len(), 2);
    }

    fn publish(courier: &str, seq: u64, times: &[u64]) -> (Bytes, Bytes) {
        let fixes = times.iter().map(|&ts| Fix::from_degrees(ts, 41.0, 2.0)).collect();
        let payload = wire::encode_report(&wire::Report { seq, fixes });
        (Bytes::from(format!("couriers/{courier}/locations")), Bytes::from(payload))
    }

    #[test]
    fn a_report_after_a_higher_seq_is_stored_and_acks_never_cover_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut intake =
            Intake::new(PipelineConfig::default(), store.clone(), Arc::new(Metrics::new()));
        let now = now_ms();
        let mut ack_after = |publishes: &[(Bytes, Bytes)]| {
            let built = intake.build(publishes, now).unwrap();
            let ack = built.acks.get("c1").map(SeqWindow::watermark);
            intake.commit(built.commit).unwrap();
            ack
        };
        assert_eq!(ack_after(&[publish("c1", 1, &[now - 30])]), Some(1));
        assert_eq!(ack_after(&[publish("c1", 3, &[now - 10])]), Some(1), "2 is missing");
        // The same again in one batch: 3 is a duplicate now, 2 fills the gap.
        assert_eq!(
            ack_after(&[publish("c1", 3, &[now - 10]), publish("c1", 2, &[now - 20])]),
            Some(3)
        );
        let track: Vec<u64> =
            store.track("c1", None, None, 10).unwrap().iter().map(|f| f.fix.ts_ms).collect();
        assert_eq!(track, [now - 30, now - 20, now - 10]);
    }

    #[test]
    fn a_second_fix_at_the_same_device_millisecond_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut intake =
            Intake::new(PipelineConfig::default(), store.clone(), Arc::new(Metrics::new()));
        let now = now_ms();
        // In one report, across reports of one batch, and against what is committed.
        let built = intake
            .build(
                &[publish("c1", 1, &[now - 5, now - 5, now - 4]), publish("c1", 2, &[now - 4])],
                now,
            )
            .unwrap();
        assert_eq!(built.commit.record.fixes.len(), 2);
        let reasons: Vec<&str> =
            built.commit.dead_letters.iter().map(|l| l.reason.as_str()).collect();
        assert_eq!(reasons, ["same_device_time", "same_device_time"]);
        intake.commit(built.commit).unwrap();
        store.checkpoint().unwrap();
        let built = intake.build(&[publish("c1", 3, &[now - 5, now - 6])], now).unwrap();
        assert_eq!(built.commit.record.fixes.len(), 1, "now - 6 is new, now - 5 is not");
        assert_eq!(built.commit.dead_letters[0].reason, DeadLetterReason::SameDeviceTime);
        // Another courier's fix at the same millisecond is its own.
        let built = intake.build(&[publish("c2", 1, &[now - 5])], now).unwrap();
        assert_eq!(built.commit.record.fixes.len(), 1);
    }
}
