//! The on-device outbox: an append-only log of what happened to the courier's fixes and order
//! events.
//!
//! Layout of the data folder:
//! - `outbox.log`: the magic `LOCUSOB1`, then records `[len: u32 LE][crc32: u32 LE][postcard]`.
//! - `outbox.log.tmp`: a compaction in progress (deleted on open; it only replaces the log by an
//!   atomic rename once complete and synced).
//! - `outbox.lock`: held with an exclusive file lock while a client has the outbox open.
//!
//! The way data goes: `report` appends a [`Record::Fix`], `send_event` a [`Record::Event`]
//! (each fsynced before it returns) → the item is *pending*, in one queue in the order the app
//! gave them. When the sender is about to publish, it *seals* pending items in queue order:
//! each run of fixes into reports ([`Record::Seal`]), each event on its own
//! ([`Record::SealEvent`]), every one with the next sequence number (fsynced before it is
//! published, so a seq and what it numbers never change once the server may have seen them).
//! Reports and events share one sequence, so an event is numbered after the fixes reported
//! before it and before those reported after it. The server's cumulative ack appends
//! [`Record::Ack`] and drops every sealed report and event up to it. Opening replays the log; a
//! torn or corrupt tail (a crash in the middle of a write) is cut off at the last whole record.
//! When the log is mostly dead records it is compacted into a snapshot of the live state.
//!
//! Sequence numbers: a seq is assigned when an item is sealed, as
//! `max(last assigned, server's mark) + 1`, so it never goes backwards, never skips, and never
//! collides with what the server already committed. The server's *mark* (its highest committed
//! seq) is learned from acks; a fresh outbox has none and does not seal until the sender has
//! learned it (see `worker`). Should an ack ever name a seq above anything this outbox assigned
//! (the server's mark comes from an earlier install of the app whose outbox was lost), the
//! server has refused our unacked items as duplicates, so they are renumbered after the mark
//! ([`Record::Rebase`]) and sent again instead of being taken as acknowledged.
//!
//! The bound (`OutboxConfig`): `max_fixes` counts fixes, `max_bytes` the encoded size of fixes
//! and events. Making room drops fixes only (whole sealed reports first, then pending fixes),
//! never an event: an event leaves the outbox only when an ack covers it. An event that finds
//! no fixes left to drop, or a `refuse-new` outbox at the bound, is refused.
//!
//! Records are only ever appended to [`Record`] (postcard writes the variant's index): logs
//! written before events existed open as they are. An SDK older than the event records takes
//! the first one for a torn tail and cuts the log there, so an app must not be downgraded past
//! this format with events in its outbox.

use super::config::{OutboxConfig, WhenFull};
use super::error::ClientError;
use crate::topics::is_valid_id;
use crate::wire::{details_problem, CourierEvent, CourierEventKind, EventProblem, Fix, Report};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"LOCUSOB1";
const LOG_FILE: &str = "outbox.log";
const TMP_FILE: &str = "outbox.log.tmp";
const LOCK_FILE: &str = "outbox.lock";
/// Bytes of framing before each record body.
const HEADER: usize = 8;
/// No record is this large; a length above it is corruption, not a record to read.
const MAX_RECORD: usize = 64 * 1024 * 1024;
/// Below this size the log is never compacted: rewriting it would cost more than it saves.
const COMPACT_MIN_BYTES: u64 = 256 * 1024;

/// One entry of the log. New variants go at the end only (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Record {
    /// A fix the app reported; it joins the pending queue.
    Fix(Fix),
    /// The oldest `count` pending fixes form report `seq`. Seals follow the queue's order, so
    /// they are at its head.
    Seal { seq: u64, count: u32 },
    /// The server committed everything up to `seq`.
    Ack { seq: u64 },
    /// The server's mark is `above`, beyond anything this outbox assigned: every sealed report
    /// and event is renumbered `above + 1, above + 2, ...` in order.
    Rebase { above: u64 },
    /// The bound dropped the fixes of sealed report `seq`, the oldest sealed report with fixes
    /// (sealed events before it stay); the seq stays, as an empty report (see `Outbox::apply`).
    DropReport { seq: u64 },
    /// The bound dropped the oldest `count` pending fixes (pending events stay where they are).
    DropPending { count: u32 },
    /// Compaction: a sealed report with its fixes.
    Report { seq: u64, fixes: Vec<Fix> },
    /// Compaction: the last assigned seq.
    LastSeq { seq: u64 },
    /// The server's mark, learned without an ack (a fresh outbox that heard none in time: 0), or
    /// kept by compaction.
    Mark { seq: u64 },
    /// An order event the app sent; it joins the pending queue.
    Event(QueuedEvent),
    /// The oldest pending item, an order event, is numbered `seq`.
    SealEvent { seq: u64 },
    /// Compaction: a sealed order event.
    SealedEvent { seq: u64, event: QueuedEvent },
}

/// An order event as the app sent it: everything but its seq, which it gets when sealed. Its
/// id is chosen before it is logged, so every resend carries the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueuedEvent {
    pub order: String,
    pub kind: CourierEventKind,
    pub event_id: String,
    pub at_ms: u64,
    pub details: Option<String>,
}

impl QueuedEvent {
    /// What the server would refuse in it (its seq aside: the outbox gives it a valid one).
    pub fn problem(&self) -> Option<EventProblem> {
        if !is_valid_id(&self.order) {
            return Some(EventProblem::BadOrderId);
        }
        if !is_valid_id(&self.event_id) {
            return Some(EventProblem::BadEventId);
        }
        self.details.as_deref().and_then(details_problem)
    }

    fn numbered(&self, seq: u64) -> CourierEvent {
        CourierEvent {
            seq,
            order: self.order.clone(),
            kind: self.kind,
            event_id: self.event_id.clone(),
            at_ms: self.at_ms,
            details: self.details.clone(),
        }
    }
}

/// Something numbered and waiting for the server's ack: a report or an order event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sealed {
    pub seq: u64,
    pub contents: SealedContents,
    /// Encoded size of the fixes or the event: what the bound counts.
    bytes: u64,
}

/// What a sealed seq numbers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SealedContents {
    /// A report of these fixes.
    Report(Vec<Fix>),
    /// An order event.
    Event(QueuedEvent),
}

/// A sealed item as it goes on the wire: a report for `couriers/{courier}/locations`, an event
/// for `couriers/{courier}/events`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outgoing {
    Report(Report),
    Event(CourierEvent),
}

impl Outgoing {
    pub fn seq(&self) -> u64 {
        match self {
            Outgoing::Report(report) => report.seq,
            Outgoing::Event(event) => event.seq,
        }
    }
}

impl Sealed {
    /// The message to publish.
    pub fn outgoing(&self) -> Outgoing {
        match &self.contents {
            SealedContents::Report(fixes) => {
                Outgoing::Report(Report { seq: self.seq, fixes: fixes.clone() })
            }
            SealedContents::Event(event) => Outgoing::Event(event.numbered(self.seq)),
        }
    }

    /// The fixes it holds (none for an event).
    pub fn fixes(&self) -> &[Fix] {
        match &self.contents {
            SealedContents::Report(fixes) => fixes,
            SealedContents::Event(_) => &[],
        }
    }

    pub fn is_event(&self) -> bool {
        matches!(self.contents, SealedContents::Event(_))
    }
}

/// How big one report may grow: at most `max_fixes` fixes and `max_bytes` encoded bytes (the
/// server refuses larger ones, so a report past either bound would strand the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReportSize {
    pub max_fixes: usize,
    pub max_bytes: usize,
}

impl ReportSize {
    /// Bounded by fix count only (tests).
    #[cfg(test)]
    pub fn fixes(max_fixes: usize) -> ReportSize {
        ReportSize { max_fixes, max_bytes: usize::MAX }
    }

    /// How many of the next fixes (their encoded sizes, oldest first) go into one report, and
    /// whether that report is full (the next fix would not fit). Always at least one fix: a
    /// single fix is far below any byte bound the server accepts (see `wire::limits`).
    fn take(self, sizes: impl Iterator<Item = u64>) -> (usize, bool) {
        let mut bytes = crate::wire::limits::MAX_REPORT_OVERHEAD_BYTES;
        let mut count = 0;
        for size in sizes {
            let fits = count < self.max_fixes.max(1)
                && (count == 0 || bytes.saturating_add(size as usize) <= self.max_bytes);
            if !fits {
                return (count, true);
            }
            bytes = bytes.saturating_add(size as usize);
            count += 1;
        }
        (count, count >= self.max_fixes.max(1))
    }
}

/// What the app queued and is not sealed yet.
#[derive(Debug)]
enum Queued {
    Fix(Fix),
    Event(QueuedEvent),
}

#[derive(Debug)]
struct Pending {
    item: Queued,
    bytes: u64,
    /// When it was queued in this process; `None` after a reopen (it is old: send it soon).
    queued_at: Option<Instant>,
}

impl Pending {
    fn is_event(&self) -> bool {
        matches!(self.item, Queued::Event(_))
    }
}

/// What an ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AckOutcome {
    /// Fixes removed from the outbox because the server committed them.
    pub acked_fixes: u64,
    /// Order events removed from the outbox because the server committed (or refused) them.
    pub acked_events: u64,
    /// The unacked items were renumbered above the server's mark and must be sent again.
    pub rebased: bool,
}

/// What the bound did since the outbox was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct BoundCounters {
    /// Fixes dropped to make room ([`WhenFull::DropOldest`]).
    pub dropped_fixes: u64,
    /// Fixes refused.
    pub refused_fixes: u64,
    /// Order events refused.
    pub refused_events: u64,
}

/// The outbox. Not thread-safe by itself: the client keeps it behind a mutex.
#[derive(Debug)]
pub(crate) struct Outbox {
    dir: PathBuf,
    file: File,
    /// Length of the log file (everything written so far).
    len: u64,
    /// Held for as long as the outbox is open.
    _lock: File,
    config: OutboxConfig,
    pending: VecDeque<Pending>,
    /// Events among `pending`: while there are any, sealing is due (an event does not wait for
    /// a batch to fill or age).
    pending_events: usize,
    sealed: VecDeque<Sealed>,
    /// Highest seq ever assigned by this outbox.
    last_seq: u64,
    /// Highest seq the server is known to have committed; `None`: never heard from the server.
    mark: Option<u64>,
    fixes: u64,
    events: u64,
    /// Encoded bytes of the fixes and events held.
    bytes: u64,
    bound: BoundCounters,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ClientError + '_ {
    move |source| ClientError::Outbox { path: path.to_owned(), source }
}

fn encode_record(record: &Record, out: &mut Vec<u8>) {
    // Records hold only integers, strings, options and sequences: postcard cannot fail on them.
    let body = postcard::to_allocvec(record).expect("postcard encoding into a Vec is infallible");
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// The encoded size of a fix: what the bound counts.
fn fix_bytes(fix: &Fix) -> u64 {
    postcard::experimental::serialized_size(fix).map_or(32, |n| n as u64)
}

/// The encoded size of an event without its seq: what the bound counts.
fn event_bytes(event: &QueuedEvent) -> u64 {
    postcard::experimental::serialized_size(event).map_or(64, |n| n as u64)
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, replaying its log.
    pub fn open(dir: &Path, config: OutboxConfig) -> Result<Self, ClientError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        fs2::FileExt::try_lock_exclusive(&lock)
            .map_err(|_| ClientError::OutboxLocked(dir.to_owned()))?;

        // A leftover temp file is an unfinished compaction: the log is still the truth.
        let tmp = dir.join(TMP_FILE);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        }

        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err(&path))?;

        let mut outbox = Outbox {
            dir: dir.to_owned(),
            file,
            len: 0,
            _lock: lock,
            config,
            pending: VecDeque::new(),
            pending_events: 0,
            sealed: VecDeque::new(),
            last_seq: 0,
            mark: None,
            fixes: 0,
            events: 0,
            bytes: 0,
            bound: BoundCounters::default(),
        };

        if data.len() < MAGIC.len() {
            // New, or torn while being created (only a prefix of the magic made it).
            if !MAGIC.starts_with(&data) {
                return Err(ClientError::Outbox {
                    path,
                    source: io::Error::new(io::ErrorKind::InvalidData, "not a Locus outbox"),
                });
            }
            outbox.file.set_len(0).map_err(io_err(&path))?;
            outbox.file.write_all(MAGIC).map_err(io_err(&path))?;
            outbox.file.sync_all().map_err(io_err(&path))?;
            sync_dir(dir).map_err(io_err(dir))?;
            outbox.len = MAGIC.len() as u64;
            return Ok(outbox);
        }
        if &data[..MAGIC.len()] != MAGIC {
            return Err(ClientError::Outbox {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, "not a Locus outbox"),
            });
        }

        let mut offset = MAGIC.len();
        while let Some((record, next)) = read_record(&data, offset) {
            outbox.apply(record, None);
            offset = next;
        }
        if offset < data.len() {
            // A torn or corrupt tail: the last write did not complete. Everything before it is
            // intact; cut the rest so new records follow a whole one.
            outbox.file.set_len(offset as u64).map_err(io_err(&path))?;
            outbox.file.sync_all().map_err(io_err(&path))?;
        }
        outbox.len = offset as u64;
        Ok(outbox)
    }

    /// Fixes held (pending and sealed).
    pub fn fixes(&self) -> u64 {
        self.fixes
    }

    /// Order events held (pending and sealed).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Encoded bytes of the fixes and events held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Fixes and events not yet sealed.
    #[cfg(test)]
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The server's highest committed seq, if it has ever been heard from.
    pub fn mark(&self) -> Option<u64> {
        self.mark
    }

    /// What the bound dropped and refused since open.
    pub fn bound_counters(&self) -> BoundCounters {
        self.bound
    }

    /// Sealed reports and events, oldest (lowest seq) first.
    pub fn sealed(&self) -> impl Iterator<Item = &Sealed> {
        self.sealed.iter()
    }

    /// Sealed reports and events not yet acknowledged.
    pub fn sealed_len(&self) -> usize {
        self.sealed.len()
    }

    /// Appends a fix. It is durable (fsynced, if so configured) when this returns `Ok`. Returns
    /// how many fixes were dropped to make room.
    pub fn push(&mut self, fix: Fix, now: Instant) -> Result<u64, ClientError> {
        self.queue(Queued::Fix(fix), now)
    }

    /// Appends an order event, after everything queued so far. It is durable (fsynced, if so
    /// configured) when this returns `Ok`. Returns how many fixes were dropped to make room.
    pub fn push_event(&mut self, event: QueuedEvent, now: Instant) -> Result<u64, ClientError> {
        self.queue(Queued::Event(event), now)
    }

    fn queue(&mut self, item: Queued, now: Instant) -> Result<u64, ClientError> {
        let (size, is_fix) = match &item {
            Queued::Fix(fix) => (fix_bytes(fix), true),
            Queued::Event(event) => (event_bytes(event), false),
        };
        let (mut records, dropped) = match self.make_room(size, is_fix) {
            Ok(room) => room,
            Err(full) => {
                if is_fix {
                    self.bound.refused_fixes += 1;
                } else {
                    self.bound.refused_events += 1;
                }
                return Err(full);
            }
        };
        records.push(match item {
            Queued::Fix(fix) => Record::Fix(fix),
            Queued::Event(event) => Record::Event(event),
        });
        self.write(&records, self.config.fsync)?;
        for record in records {
            self.apply(record, Some(now));
        }
        self.bound.dropped_fixes += dropped;
        Ok(dropped)
    }

    /// The records that make room for `size` more bytes (and, with `adds_fix`, one more fix)
    /// within the bound, and how many fixes they drop; an error when the policy refuses or
    /// dropping every fix would not make room. Only fixes are dropped, oldest first: whole
    /// sealed reports (their contents are fixed), then pending fixes. Never an event: it is
    /// what a customer waits for, and a fix is one position of many.
    fn make_room(&self, size: u64, adds_fix: bool) -> Result<(Vec<Record>, u64), ClientError> {
        let over = |fixes: u64, bytes: u64| {
            (adds_fix && fixes + 1 > self.config.max_fixes) || bytes + size > self.config.max_bytes
        };
        let full = || ClientError::OutboxFull {
            fixes: self.fixes,
            events: self.events,
            bytes: self.bytes,
        };
        let (mut fixes, mut bytes) = (self.fixes, self.bytes);
        if !over(fixes, bytes) {
            return Ok((Vec::new(), 0));
        }
        if self.config.when_full == WhenFull::RefuseNew {
            return Err(full());
        }
        let mut records = Vec::new();
        let mut dropped = 0;
        // Reports with fixes: an emptied one (see `Record::DropReport`) has nothing to give.
        let mut reports = self.sealed.iter().filter(|s| !s.is_event() && !s.fixes().is_empty());
        let mut pending_fixes = self.pending.iter().filter(|p| !p.is_event());
        let mut pending_dropped = 0u32;
        while over(fixes, bytes) {
            if let Some(report) = reports.next() {
                records.push(Record::DropReport { seq: report.seq });
                let count = report.fixes().len() as u64;
                fixes -= count;
                bytes -= report.bytes;
                dropped += count;
            } else if let Some(p) = pending_fixes.next() {
                fixes -= 1;
                bytes -= p.bytes;
                dropped += 1;
                pending_dropped += 1;
            } else {
                // No fix left to drop: the rest is events (or the item alone is too large).
                return Err(full());
            }
        }
        if pending_dropped > 0 {
            records.push(Record::DropPending { count: pending_dropped });
        }
        Ok((records, dropped))
    }

    /// When sealing is next due: now while an event is pending (it, and the fixes before it, go
    /// at once), else when the oldest pending fix is `max_age` old.
    pub fn next_seal_due(&self, max_age: Duration) -> Option<Instant> {
        let oldest = self.pending.front()?;
        if self.pending_events > 0 {
            return Some(Instant::now());
        }
        Some(oldest.queued_at.map_or_else(Instant::now, |t| t + max_age))
    }

    /// Seals due pending items, in queue order, into at most `max_items` numbered items: runs
    /// of fixes into reports within `size`, each event on its own. A full batch is due at once,
    /// a partial one when its oldest fix is `max_age` old, when an event follows it (nothing
    /// can join it any more, and the event should not wait) or when `force`; an event is due at
    /// once. Does nothing until the server's mark is known. The seals are fsynced (if so
    /// configured) before this returns: once published, a seq must stay its own even after a
    /// power cut.
    pub fn seal(
        &mut self,
        size: ReportSize,
        max_age: Duration,
        max_items: usize,
        force: bool,
        now: Instant,
    ) -> Result<usize, ClientError> {
        let Some(mark) = self.mark else { return Ok(0) };
        let mut records = Vec::new();
        let mut next = self.last_seq.max(mark);
        let mut start = 0;
        while start < self.pending.len() && records.len() < max_items {
            if self.pending[start].is_event() {
                next += 1;
                records.push(Record::SealEvent { seq: next });
                start += 1;
                continue;
            }
            let run = self.pending.range(start..).take_while(|p| !p.is_event());
            let (take, full) = size.take(run.map(|p| p.bytes));
            let event_follows = self.pending.get(start + take).is_some_and(Pending::is_event);
            let oldest_due = self.pending[start]
                .queued_at
                .is_none_or(|t| now.saturating_duration_since(t) >= max_age);
            if !(force || full || event_follows || oldest_due) {
                break;
            }
            next += 1;
            records.push(Record::Seal { seq: next, count: take as u32 });
            start += take;
        }
        if records.is_empty() {
            return Ok(0);
        }
        let count = records.len();
        self.write(&records, self.config.fsync)?;
        for record in records {
            self.apply(record, None);
        }
        Ok(count)
    }

    /// The server committed everything up to `seq`.
    pub fn ack(&mut self, seq: u64) -> Result<AckOutcome, ClientError> {
        let known = self.mark.unwrap_or(0);
        let record = if seq > self.last_seq && !self.sealed.is_empty() {
            Record::Rebase { above: seq }
        } else if seq > known || self.mark.is_none() {
            Record::Ack { seq }
        } else {
            // An old or repeated ack: nothing to do.
            return Ok(AckOutcome::default());
        };
        // Acks are not fsynced: losing one to a power cut means resending reports the server
        // already has, which it drops as duplicates.
        self.write(std::slice::from_ref(&record), false)?;
        let (fixes, events) = (self.fixes, self.events);
        let rebased = matches!(record, Record::Rebase { .. });
        self.apply(record, None);
        self.maybe_compact()?;
        Ok(AckOutcome {
            acked_fixes: fixes - self.fixes,
            acked_events: events - self.events,
            rebased,
        })
    }

    /// A fresh outbox learned (or, hearing nothing in time, assumes) the server's mark.
    pub fn learn_mark(&mut self, seq: u64) -> Result<(), ClientError> {
        if self.mark.is_some() {
            return Ok(());
        }
        let record = Record::Mark { seq };
        self.write(std::slice::from_ref(&record), true)?;
        self.apply(record, None);
        Ok(())
    }

    fn write(&mut self, records: &[Record], sync: bool) -> Result<(), ClientError> {
        let mut buf = Vec::new();
        for record in records {
            encode_record(record, &mut buf);
        }
        let path = self.dir.join(LOG_FILE);
        if let Err(e) =
            self.file.write_all(&buf).and_then(
                |()| {
                    if sync {
                        self.file.sync_data()
                    } else {
                        Ok(())
                    }
                },
            )
        {
            // Cut a partial write so later records do not follow garbage (which replay would
            // take for the end of the log). If even that fails, replay will cut it.
            let _ = self.file.set_len(self.len);
            return Err(ClientError::Outbox { path, source: e });
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Applies a record to the in-memory state. Replay and live writes share this, so what was
    /// written is exactly what a reopen sees. Inconsistent records (impossible unless the file
    /// was tampered with) are applied as far as they make sense rather than panicking.
    fn apply(&mut self, record: Record, now: Option<Instant>) {
        match record {
            Record::Fix(fix) => {
                let bytes = fix_bytes(&fix);
                self.fixes += 1;
                self.bytes += bytes;
                self.pending.push_back(Pending { item: Queued::Fix(fix), bytes, queued_at: now });
            }
            Record::Event(event) => {
                let bytes = event_bytes(&event);
                self.events += 1;
                self.bytes += bytes;
                self.pending_events += 1;
                self.pending.push_back(Pending {
                    item: Queued::Event(event),
                    bytes,
                    queued_at: now,
                });
            }
            Record::Seal { seq, count } => {
                let count =
                    self.pending.iter().take(count as usize).take_while(|p| !p.is_event()).count();
                let mut fixes = Vec::with_capacity(count);
                let mut bytes = 0;
                for p in self.pending.drain(..count) {
                    if let Queued::Fix(fix) = p.item {
                        bytes += p.bytes;
                        fixes.push(fix);
                    }
                }
                self.last_seq = self.last_seq.max(seq);
                let contents = SealedContents::Report(fixes);
                self.sealed.push_back(Sealed { seq, contents, bytes });
            }
            Record::SealEvent { seq } => {
                if !self.pending.front().is_some_and(Pending::is_event) {
                    return;
                }
                if let Some(Pending { item: Queued::Event(event), bytes, .. }) =
                    self.pending.pop_front()
                {
                    self.pending_events -= 1;
                    self.last_seq = self.last_seq.max(seq);
                    let contents = SealedContents::Event(event);
                    self.sealed.push_back(Sealed { seq, contents, bytes });
                }
            }
            Record::Ack { seq } => {
                self.mark = Some(self.mark.unwrap_or(0).max(seq));
                while self.sealed.front().is_some_and(|s| s.seq <= seq) {
                    if let Some(s) = self.sealed.pop_front() {
                        self.forget(&s);
                    }
                }
            }
            Record::Rebase { above } => {
                self.mark = Some(self.mark.unwrap_or(0).max(above));
                let mut seq = above;
                for item in &mut self.sealed {
                    seq += 1;
                    item.seq = seq;
                }
                self.last_seq = self.last_seq.max(seq);
            }
            Record::DropReport { seq } => {
                // Written for the oldest sealed report; sealed events before it stay. Its fixes
                // go, its seq stays as an empty report: the server may never have had it, and
                // its watermark (what acks say) cannot pass a seq it never got. The empty
                // report is sent like any other; the server consumes its seq (a `no_fixes`
                // dead letter) and acks, and the device moves on.
                let at = self.sealed.iter().position(|s| s.seq == seq && !s.is_event());
                if let Some(report) = at.and_then(|i| self.sealed.get_mut(i)) {
                    let dropped = std::mem::replace(
                        report,
                        Sealed { seq, contents: SealedContents::Report(Vec::new()), bytes: 0 },
                    );
                    self.forget(&dropped);
                }
            }
            Record::DropPending { count } => {
                let mut left = count as usize;
                let (mut fixes, mut bytes) = (0, 0);
                self.pending.retain(|p| {
                    let drop = left > 0 && !p.is_event();
                    if drop {
                        left -= 1;
                        fixes += 1;
                        bytes += p.bytes;
                    }
                    !drop
                });
                self.fixes -= fixes;
                self.bytes -= bytes;
            }
            Record::Report { seq, fixes } => {
                let bytes = fixes.iter().map(fix_bytes).sum();
                self.fixes += fixes.len() as u64;
                self.bytes += bytes;
                self.last_seq = self.last_seq.max(seq);
                let contents = SealedContents::Report(fixes);
                self.sealed.push_back(Sealed { seq, contents, bytes });
            }
            Record::SealedEvent { seq, event } => {
                let bytes = event_bytes(&event);
                self.events += 1;
                self.bytes += bytes;
                self.last_seq = self.last_seq.max(seq);
                let contents = SealedContents::Event(event);
                self.sealed.push_back(Sealed { seq, contents, bytes });
            }
            Record::LastSeq { seq } => self.last_seq = self.last_seq.max(seq),
            Record::Mark { seq } => self.mark = Some(self.mark.unwrap_or(0).max(seq)),
        }
    }

    fn forget(&mut self, sealed: &Sealed) {
        self.fixes -= sealed.fixes().len() as u64;
        self.events -= u64::from(sealed.is_event());
        self.bytes -= sealed.bytes;
    }

    /// Rewrites the log as a snapshot of the live state once it is mostly dead records.
    fn maybe_compact(&mut self) -> Result<(), ClientError> {
        let items = self.fixes + self.events + self.sealed.len() as u64;
        let live = self.bytes + 16 * items + 64;
        if self.len < COMPACT_MIN_BYTES || self.len < 4 * live {
            return Ok(());
        }
        self.compact()
    }

    /// Writes the snapshot: the last seq and the mark, then every sealed item and every pending
    /// one, each queue in its order (so reports and events keep their seqs and their places).
    fn compact(&mut self) -> Result<(), ClientError> {
        let mut buf = MAGIC.to_vec();
        encode_record(&Record::LastSeq { seq: self.last_seq }, &mut buf);
        if let Some(seq) = self.mark {
            encode_record(&Record::Mark { seq }, &mut buf);
        }
        for sealed in &self.sealed {
            let record = match &sealed.contents {
                SealedContents::Report(fixes) => {
                    Record::Report { seq: sealed.seq, fixes: fixes.clone() }
                }
                SealedContents::Event(event) => {
                    Record::SealedEvent { seq: sealed.seq, event: event.clone() }
                }
            };
            encode_record(&record, &mut buf);
        }
        for p in &self.pending {
            let record = match &p.item {
                Queued::Fix(fix) => Record::Fix(fix.clone()),
                Queued::Event(event) => Record::Event(event.clone()),
            };
            encode_record(&record, &mut buf);
        }
        let tmp = self.dir.join(TMP_FILE);
        let path = self.dir.join(LOG_FILE);
        {
            let mut out = File::create(&tmp).map_err(io_err(&tmp))?;
            out.write_all(&buf).map_err(io_err(&tmp))?;
            out.sync_all().map_err(io_err(&tmp))?;
        }
        // The rename is the commit point: before it the old log is the truth, after it the
        // snapshot is, and both describe the same state.
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        self.file =
            OpenOptions::new().read(true).append(true).open(&path).map_err(io_err(&path))?;
        self.len = buf.len() as u64;
        Ok(())
    }

    /// The log's size on disk (for tests).
    #[cfg(test)]
    fn log_len(&self) -> u64 {
        self.len
    }
}

/// Reads the record at `offset`: the record and the offset after it, or `None` at the end of
/// the log or at a torn or corrupt record.
fn read_record(data: &[u8], offset: usize) -> Option<(Record, usize)> {
    let header = data.get(offset..offset + HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let body = data.get(offset + HEADER..offset + HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let record = postcard::from_bytes(body).ok()?;
    Some((record, offset + HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_never_grows_past_its_byte_bound() {
        // Fixes of 100 bytes each, a bound that fits three of them after the overhead.
        let size = ReportSize {
            max_fixes: 50,
            max_bytes: crate::wire::limits::MAX_REPORT_OVERHEAD_BYTES + 3 * 100 + 99,
        };
        assert_eq!(size.take([100u64; 10].into_iter()), (3, true));
        assert_eq!(size.take([100u64; 2].into_iter()), (2, false));
        // The fix count bound still applies, and one fix always goes, however large.
        assert_eq!(ReportSize::fixes(2).take([1u64; 5].into_iter()), (2, true));
        assert_eq!(
            ReportSize { max_fixes: 50, max_bytes: 10 }.take([500u64; 2].into_iter()),
            (1, true)
        );
    }

    fn fix(i: u64) -> Fix {
        Fix::from_degrees(1_763_700_000_000 + i, 41.38 + i as f64 * 1e-5, 2.17)
    }

    fn config() -> OutboxConfig {
        OutboxConfig {
            max_fixes: 1_000,
            max_bytes: 1 << 20,
            when_full: WhenFull::RefuseNew,
            fsync: true,
        }
    }

    fn seqs(outbox: &Outbox) -> Vec<(u64, Vec<u64>)> {
        outbox
            .sealed()
            .map(|r| (r.seq, r.fixes().iter().map(|f| f.ts_ms - 1_763_700_000_000).collect()))
            .collect()
    }

    const AGE: Duration = Duration::from_secs(3600);

    #[test]
    fn survives_reopen_with_pending_sealed_and_acked_state() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        {
            let mut outbox = Outbox::open(dir.path(), config()).unwrap();
            for i in 0..7 {
                outbox.push(fix(i), now).unwrap();
            }
            assert_eq!(
                outbox.seal(ReportSize::fixes(3), AGE, 10, false, now).unwrap(),
                0,
                "no mark yet: no seal"
            );
            outbox.learn_mark(0).unwrap();
            assert_eq!(
                outbox.seal(ReportSize::fixes(3), AGE, 10, false, now).unwrap(),
                2,
                "two full batches"
            );
            assert_eq!(
                outbox.ack(1).unwrap(),
                AckOutcome { acked_fixes: 3, ..AckOutcome::default() }
            );
            // Dropped without close: like a kill.
        }
        let mut outbox = Outbox::open(dir.path(), config()).unwrap();
        assert_eq!(seqs(&outbox), vec![(2, vec![3, 4, 5])]);
        assert_eq!(outbox.pending_len(), 1);
        assert_eq!(outbox.fixes(), 4);
        assert_eq!(outbox.mark(), Some(1));
        // A reopened pending fix is old: due at once.
        assert_eq!(outbox.seal(ReportSize::fixes(3), AGE, 10, false, Instant::now()).unwrap(), 1);
        assert_eq!(seqs(&outbox), vec![(2, vec![3, 4, 5]), (3, vec![6])]);
        // Sealed reports keep their numbers across a reopen.
        drop(outbox);
        let outbox = Outbox::open(dir.path(), config()).unwrap();
        assert_eq!(seqs(&outbox), vec![(2, vec![3, 4, 5]), (3, vec![6])]);
    }

    #[test]
    fn a_torn_tail_is_cut_and_writing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        {
            let mut outbox = Outbox::open(dir.path(), config()).unwrap();
            outbox.push(fix(0), now).unwrap();
            outbox.push(fix(1), now).unwrap();
        }
        let path = dir.path().join(LOG_FILE);
        let full = fs::read(&path).unwrap();
        // A crash in the middle of the second record, and garbage instead of a record.
        for cut in [full.len() - 3, full.len() - 12] {
            fs::write(&path, &full[..cut]).unwrap();
            let mut outbox = Outbox::open(dir.path(), config()).unwrap();
            assert_eq!(outbox.fixes(), 1);
            outbox.push(fix(2), now).unwrap();
            drop(outbox);
            let outbox = Outbox::open(dir.path(), config()).unwrap();
            assert_eq!(outbox.fixes(), 2);
        }
        let mut corrupt = full.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        fs::write(&path, &corrupt).unwrap();
        assert_eq!(Outbox::open(dir.path(), config()).unwrap().fixes(), 1);
        // A torn creation (part of the magic) is a new outbox; anything else is refused.
        fs::write(&path, &MAGIC[..3]).unwrap();
        assert_eq!(Outbox::open(dir.path(), config()).unwrap().fixes(), 0);
        fs::write(&path, b"something else").unwrap();
        assert!(matches!(Outbox::open(dir.path(), config()), Err(ClientError::Outbox { .. })));
    }

    #[test]
    fn only_one_client_per_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Outbox::open(dir.path(), config()).unwrap();
        assert!(matches!(Outbox::open(dir.path(), config()), Err(ClientError::OutboxLocked(_))));
    }

    #[test]
    fn refuse_new_holds_the_bound_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut outbox =
            Outbox::open(dir.path(), OutboxConfig { max_fixes: 3, ..config() }).unwrap();
        for i in 0..3 {
            outbox.push(fix(i), now).unwrap();
        }
        assert!(matches!(outbox.push(fix(3), now), Err(ClientError::OutboxFull { fixes: 3, .. })));
        assert!(matches!(outbox.push(fix(4), now), Err(ClientError::OutboxFull { .. })));
        assert_eq!(
            outbox.bound_counters(),
            BoundCounters { dropped_fixes: 0, refused_fixes: 2, refused_events: 0 }
        );
        assert_eq!(outbox.fixes(), 3);
        // Room again after an ack.
        outbox.learn_mark(0).unwrap();
        outbox.seal(ReportSize::fixes(2), AGE, 1, false, now).unwrap();
        outbox.ack(1).unwrap();
        outbox.push(fix(5), now).unwrap();
        assert_eq!(outbox.fixes(), 2);
    }

    #[test]
    fn drop_oldest_drops_whole_reports_then_pending_fixes() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let cfg = OutboxConfig { max_fixes: 4, when_full: WhenFull::DropOldest, ..config() };
        {
            let mut outbox = Outbox::open(dir.path(), cfg.clone()).unwrap();
            outbox.learn_mark(0).unwrap();
            for i in 0..4 {
                outbox.push(fix(i), now).unwrap();
            }
            outbox.seal(ReportSize::fixes(2), AGE, 1, false, now).unwrap(); // report 1 = [0, 1]
            assert_eq!(outbox.push(fix(4), now).unwrap(), 2, "report 1 dropped whole");
            assert_eq!(outbox.push(fix(5), now).unwrap(), 0);
            assert_eq!(outbox.push(fix(6), now).unwrap(), 1, "pending fix 2 dropped");
            assert_eq!(
                outbox.bound_counters(),
                BoundCounters { dropped_fixes: 3, refused_fixes: 0, refused_events: 0 }
            );
            assert_eq!(outbox.fixes(), 4);
        }
        let mut outbox = Outbox::open(dir.path(), cfg).unwrap();
        assert_eq!(outbox.fixes(), 4);
        outbox.seal(ReportSize::fixes(10), AGE, 10, true, now).unwrap();
        // The dropped report stays as an empty one, so the server's watermark can pass its seq.
        assert_eq!(seqs(&outbox), vec![(1, vec![]), (2, vec![3, 4, 5, 6])]);
    }

    #[test]
    fn byte_bound_counts_encoded_fixes() {
        let dir = tempfile::tempdir().unwrap();
        let size = fix_bytes(&fix(0));
        let mut outbox =
            Outbox::open(dir.path(), OutboxConfig { max_bytes: size * 2, ..config() }).unwrap();
        outbox.push(fix(0), Instant::now()).unwrap();
        outbox.push(fix(1), Instant::now()).unwrap();
        assert!(outbox.push(fix(2), Instant::now()).is_err());
        assert_eq!(outbox.bytes(), size * 2);
    }

    #[test]
    fn batching_by_count_and_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut outbox = Outbox::open(dir.path(), config()).unwrap();
        outbox.learn_mark(0).unwrap();
        let age = Duration::from_secs(1);
        for i in 0..5 {
            outbox.push(fix(i), t0).unwrap();
        }
        // One full batch of 4; the fifth waits for company...
        assert_eq!(outbox.seal(ReportSize::fixes(4), age, 10, false, t0).unwrap(), 1);
        assert_eq!(outbox.next_seal_due(age), Some(t0 + age));
        assert_eq!(outbox.seal(ReportSize::fixes(4), age, 10, false, t0 + age / 2).unwrap(), 0);
        // ...until it is old enough.
        assert_eq!(outbox.seal(ReportSize::fixes(4), age, 10, false, t0 + age).unwrap(), 1);
        assert_eq!(seqs(&outbox), vec![(1, vec![0, 1, 2, 3]), (2, vec![4])]);
        // The report limit holds; `force` (flush) does not wait for age.
        for i in 5..12 {
            outbox.push(fix(i), t0).unwrap();
        }
        assert_eq!(outbox.seal(ReportSize::fixes(2), age, 2, false, t0).unwrap(), 2);
        assert_eq!(outbox.seal(ReportSize::fixes(2), age, 10, true, t0).unwrap(), 2);
        assert_eq!(outbox.pending_len(), 0);
        let last: Vec<u64> = outbox.sealed().map(|r| r.seq).collect();
        assert_eq!(last, vec![1, 2, 3, 4, 5, 6], "in order, no gaps");
    }

    #[test]
    fn numbering_starts_after_the_servers_mark() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut outbox = Outbox::open(dir.path(), config()).unwrap();
        outbox.push(fix(0), now).unwrap();
        // The retained ack from an earlier install.
        assert_eq!(outbox.ack(41).unwrap(), AckOutcome::default());
        outbox.learn_mark(0).unwrap(); // already known: no effect
        outbox.seal(ReportSize::fixes(10), AGE, 10, true, now).unwrap();
        assert_eq!(seqs(&outbox), vec![(42, vec![0])]);
        // Stale and repeated acks change nothing.
        assert_eq!(outbox.ack(40).unwrap(), AckOutcome::default());
        assert_eq!(outbox.ack(42).unwrap(), AckOutcome { acked_fixes: 1, ..AckOutcome::default() });
        assert_eq!(outbox.ack(42).unwrap(), AckOutcome::default());
        assert_eq!(outbox.fixes(), 0);
    }

    #[test]
    fn an_ack_above_everything_assigned_renumbers_instead_of_acking() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        {
            let mut outbox = Outbox::open(dir.path(), config()).unwrap();
            outbox.learn_mark(0).unwrap(); // timed out waiting: assumed a new courier
            for i in 0..3 {
                outbox.push(fix(i), now).unwrap();
            }
            outbox.seal(ReportSize::fixes(2), AGE, 10, true, now).unwrap();
            assert_eq!(seqs(&outbox), vec![(1, vec![0, 1]), (2, vec![2])]);
            // The server had 100 from an earlier install: our reports were duplicates to it.
            assert_eq!(
                outbox.ack(100).unwrap(),
                AckOutcome { rebased: true, ..AckOutcome::default() }
            );
            assert_eq!(seqs(&outbox), vec![(101, vec![0, 1]), (102, vec![2])]);
        }
        let mut outbox = Outbox::open(dir.path(), config()).unwrap();
        assert_eq!(seqs(&outbox), vec![(101, vec![0, 1]), (102, vec![2])]);
        assert_eq!(outbox.ack(102).unwrap().acked_fixes, 3);
    }

    #[test]
    fn compaction_keeps_the_state_and_shrinks_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let cfg = OutboxConfig { fsync: false, ..config() };
        let mut outbox = Outbox::open(dir.path(), cfg.clone()).unwrap();
        outbox.learn_mark(0).unwrap();
        let mut i = 0;
        let mut max_len = 0;
        // Enough traffic to pass the compaction threshold several times.
        while i < 30_000 {
            for _ in 0..10 {
                outbox.push(fix(i), now).unwrap();
                i += 1;
            }
            outbox.seal(ReportSize::fixes(4), AGE, 10, true, now).unwrap();
            let last = outbox.sealed().last().map(|r| r.seq).unwrap();
            // Ack all but the last report.
            outbox.ack(last - 1).unwrap();
            max_len = max_len.max(outbox.log_len());
        }
        assert!(max_len < 2 * COMPACT_MIN_BYTES, "log grew to {max_len}");
        let before = seqs(&outbox);
        let (fixes, bytes) = (outbox.fixes(), outbox.bytes());
        drop(outbox);
        let outbox = Outbox::open(dir.path(), cfg).unwrap();
        assert_eq!(seqs(&outbox), before);
        assert_eq!((outbox.fixes(), outbox.bytes()), (fixes, bytes));
        assert_eq!(outbox.mark(), Some(before[0].0 - 1));
        assert!(!dir.path().join(TMP_FILE).exists());
    }

    fn event(id: &str) -> QueuedEvent {
        QueuedEvent {
            order: "order-42".into(),
            kind: CourierEventKind::PickedUp,
            event_id: id.into(),
            at_ms: 1_763_700_000_000,
            details: Some(r#"{"signed_by":"Ana"}"#.into()),
        }
    }

    /// Sealed items, oldest first: `(seq, "fixes [..]")` or `(seq, "event ID")`.
    fn items(outbox: &Outbox) -> Vec<(u64, String)> {
        outbox
            .sealed()
            .map(|s| match &s.contents {
                SealedContents::Report(fixes) => {
                    let ts: Vec<u64> = fixes.iter().map(|f| f.ts_ms - 1_763_700_000_000).collect();
                    (s.seq, format!("fixes {ts:?}"))
                }
                SealedContents::Event(e) => (s.seq, format!("event {}", e.event_id)),
            })
            .collect()
    }

    fn item(seq: u64, what: &str) -> (u64, String) {
        (seq, what.to_owned())
    }

    #[test]
    fn events_are_numbered_in_one_sequence_with_reports_in_the_order_queued() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut outbox = Outbox::open(dir.path(), config()).unwrap();
        outbox.learn_mark(0).unwrap();
        for i in 0..3 {
            outbox.push(fix(i), now).unwrap();
        }
        outbox.push_event(event("pickup"), now).unwrap();
        for i in 3..8 {
            outbox.push(fix(i), now).unwrap();
        }
        outbox.push_event(event("delivery"), now).unwrap();
        outbox.push(fix(8), now).unwrap();
        assert!(outbox.next_seal_due(AGE).is_some_and(|t| t < now + AGE), "events make it due");
        // Not forced and nothing old: the fixes before each event go at once all the same (no
        // fix can join them any more), split by the report size; the fix after the last event
        // waits for company.
        assert_eq!(outbox.seal(ReportSize::fixes(3), AGE, 1, false, now).unwrap(), 1);
        assert_eq!(outbox.seal(ReportSize::fixes(3), AGE, 10, false, now).unwrap(), 4);
        assert_eq!(
            items(&outbox),
            vec![
                item(1, "fixes [0, 1, 2]"),
                item(2, "event pickup"),
                item(3, "fixes [3, 4, 5]"),
                item(4, "fixes [6, 7]"),
                item(5, "event delivery"),
            ]
        );
        assert_eq!(outbox.pending_len(), 1);
        assert!(outbox.next_seal_due(AGE).is_some_and(|t| t >= now + AGE), "no event pending");
        assert_eq!(outbox.seal(ReportSize::fixes(3), AGE, 10, false, now).unwrap(), 0);
        let published: Vec<(u64, &str)> = outbox
            .sealed()
            .map(|s| match s.outgoing() {
                Outgoing::Report(r) => (r.seq, "report"),
                Outgoing::Event(e) => {
                    assert_eq!(
                        (e.order.as_str(), e.kind),
                        ("order-42", CourierEventKind::PickedUp)
                    );
                    assert_eq!(e.problem(), None);
                    (e.seq, "event")
                }
            })
            .collect();
        assert_eq!(
            published,
            vec![(1, "report"), (2, "event"), (3, "report"), (4, "report"), (5, "event")]
        );
        // An ack covers events like reports; the rest wait for theirs.
        let outcome = outbox.ack(2).unwrap();
        assert_eq!((outcome.acked_fixes, outcome.acked_events), (3, 1));
        assert_eq!((outbox.fixes(), outbox.events()), (6, 1));
        let outcome = outbox.ack(5).unwrap();
        assert_eq!((outcome.acked_fixes, outcome.acked_events), (5, 1));
        assert_eq!((outbox.fixes(), outbox.events()), (1, 0));
    }

    #[test]
    fn a_fresh_outbox_holds_events_until_it_knows_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut outbox = Outbox::open(dir.path(), config()).unwrap();
        outbox.push_event(event("e-1"), now).unwrap();
        assert_eq!(outbox.seal(ReportSize::fixes(3), AGE, 10, true, now).unwrap(), 0);
        outbox.ack(41).unwrap();
        assert_eq!(outbox.seal(ReportSize::fixes(3), AGE, 10, false, now).unwrap(), 1);
        assert_eq!(items(&outbox), vec![item(42, "event e-1")]);
    }

    #[test]
    fn events_survive_reopen_and_compaction_with_their_seqs_and_places() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let expected = vec![item(1, "fixes [0, 1]"), item(2, "event a"), item(3, "fixes [2]")];
        {
            let mut outbox = Outbox::open(dir.path(), config()).unwrap();
            outbox.learn_mark(0).unwrap();
            outbox.push(fix(0), now).unwrap();
            outbox.push(fix(1), now).unwrap();
            outbox.push_event(event("a"), now).unwrap();
            outbox.push(fix(2), now).unwrap();
            outbox.seal(ReportSize::fixes(10), AGE, 10, true, now).unwrap();
            // Queued after the seal: pending, an event between two fixes.
            outbox.push(fix(3), now).unwrap();
            outbox.push_event(event("b"), now).unwrap();
            outbox.push(fix(4), now).unwrap();
            assert_eq!(items(&outbox), expected);
            // Dropped without close: like a kill.
        }
        let mut outbox = Outbox::open(dir.path(), config()).unwrap();
        assert_eq!(items(&outbox), expected);
        assert_eq!((outbox.fixes(), outbox.events(), outbox.pending_len()), (5, 2, 3));
        let bytes = outbox.bytes();
        outbox.compact().unwrap();
        drop(outbox);
        let mut outbox = Outbox::open(dir.path(), config()).unwrap();
        assert_eq!(items(&outbox), expected);
        assert_eq!((outbox.fixes(), outbox.events(), outbox.bytes()), (5, 2, bytes));
        // The pending event kept its place between its fixes, and numbering goes on.
        outbox.seal(ReportSize::fixes(10), AGE, 10, true, now).unwrap();
        assert_eq!(
            items(&outbox)[3..],
            [item(4, "fixes [3]"), item(5, "event b"), item(6, "fixes [4]")]
        );
        // A rebase renumbers events with the reports, in order.
        assert!(outbox.ack(100).unwrap().rebased);
        let seqs: Vec<u64> = items(&outbox).iter().map(|i| i.0).collect();
        assert_eq!(seqs, (101..=106).collect::<Vec<_>>());
        drop(outbox);
        let outbox = Outbox::open(dir.path(), config()).unwrap();
        assert_eq!(items(&outbox)[4], item(105, "event b"));
    }

    #[test]
    fn compaction_under_traffic_keeps_unacked_events() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let cfg = OutboxConfig { fsync: false, ..config() };
        let mut outbox = Outbox::open(dir.path(), cfg.clone()).unwrap();
        outbox.learn_mark(0).unwrap();
        let mut max_len = 0;
        for round in 0..3_000u64 {
            for i in 0..10 {
                outbox.push(fix(round * 10 + i), now).unwrap();
            }
            outbox.push_event(event(&format!("e-{round}")), now).unwrap();
            outbox.seal(ReportSize::fixes(4), AGE, 10, true, now).unwrap();
            // Ack all but the last three items (a report, the event, ...).
            let last = outbox.sealed().last().map(|s| s.seq).unwrap();
            outbox.ack(last - 3).unwrap();
            max_len = max_len.max(outbox.log_len());
        }
        assert!(max_len < 2 * COMPACT_MIN_BYTES, "log grew to {max_len}");
        let before = items(&outbox);
        assert!(before.iter().any(|i| i.1.starts_with("event")), "{before:?}");
        let (fixes, events, bytes) = (outbox.fixes(), outbox.events(), outbox.bytes());
        drop(outbox);
        let outbox = Outbox::open(dir.path(), cfg).unwrap();
        assert_eq!(items(&outbox), before);
        assert_eq!((outbox.fixes(), outbox.events(), outbox.bytes()), (fixes, events, bytes));
    }

    #[test]
    fn the_bound_drops_fixes_around_events_never_the_events() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let cfg = OutboxConfig { max_fixes: 4, when_full: WhenFull::DropOldest, ..config() };
        {
            let mut outbox = Outbox::open(dir.path(), cfg.clone()).unwrap();
            outbox.learn_mark(0).unwrap();
            outbox.push_event(event("first"), now).unwrap();
            outbox.push(fix(0), now).unwrap();
            outbox.push(fix(1), now).unwrap();
            // Seq 1 is the event, 2 the report of fixes [0, 1].
            outbox.seal(ReportSize::fixes(10), AGE, 10, true, now).unwrap();
            outbox.push(fix(2), now).unwrap();
            outbox.push_event(event("second"), now).unwrap();
            outbox.push(fix(3), now).unwrap();
            // Full at 4 fixes: report 2 goes whole (the older event stays), then pending fix 2
            // (the pending event stays).
            assert_eq!(outbox.push(fix(4), now).unwrap(), 2);
            assert_eq!(outbox.push(fix(5), now).unwrap(), 0);
            assert_eq!(outbox.push(fix(6), now).unwrap(), 1);
            // Fix 3 is next, behind the pending event, which stays.
            assert_eq!(outbox.push(fix(7), now).unwrap(), 1);
            assert_eq!((outbox.fixes(), outbox.events()), (4, 2));
            // Events do not count against `max_fixes`, and they displace fixes, not each other.
            assert_eq!(outbox.push_event(event("third"), now).unwrap(), 0);
            assert_eq!(outbox.bound_counters().dropped_fixes, 4);
        }
        let mut outbox = Outbox::open(dir.path(), cfg).unwrap();
        assert_eq!((outbox.fixes(), outbox.events()), (4, 3));
        // Report 2 lost its fixes, not its seq (see `Record::DropReport`).
        assert_eq!(items(&outbox), vec![item(1, "event first"), item(2, "fixes []")]);
        outbox.seal(ReportSize::fixes(10), AGE, 10, true, now).unwrap();
        assert_eq!(
            items(&outbox),
            vec![
                item(1, "event first"),
                item(2, "fixes []"),
                item(3, "event second"),
                item(4, "fixes [4, 5, 6, 7]"),
                item(5, "event third"),
            ]
        );
        // Only an ack removes them.
        assert_eq!(outbox.ack(5).unwrap().acked_events, 3);
        assert_eq!(outbox.events(), 0);
    }

    #[test]
    fn an_outbox_full_of_events_refuses_more_and_refuse_new_refuses_events() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let size = event_bytes(&event("e-0"));
        let cfg = OutboxConfig { max_bytes: 2 * size, when_full: WhenFull::DropOldest, ..config() };
        let mut outbox = Outbox::open(dir.path(), cfg).unwrap();
        outbox.push_event(event("e-0"), now).unwrap();
        outbox.push_event(event("e-1"), now).unwrap();
        // No fix to drop: nothing makes room, for an event or a fix.
        assert!(matches!(
            outbox.push_event(event("e-2"), now),
            Err(ClientError::OutboxFull { fixes: 0, events: 2, .. })
        ));
        assert!(matches!(outbox.push(fix(0), now), Err(ClientError::OutboxFull { .. })));
        assert_eq!(
            outbox.bound_counters(),
            BoundCounters { dropped_fixes: 0, refused_fixes: 1, refused_events: 1 }
        );
        assert_eq!(outbox.events(), 2);

        let dir = tempfile::tempdir().unwrap();
        let cfg = OutboxConfig { max_bytes: fix_bytes(&fix(0)) + size - 1, ..config() };
        let mut outbox = Outbox::open(dir.path(), cfg).unwrap();
        outbox.push(fix(0), now).unwrap();
        // `refuse-new` keeps the fix it has: the event is refused.
        assert!(matches!(
            outbox.push_event(event("e-0"), now),
            Err(ClientError::OutboxFull { .. })
        ));
        assert_eq!(outbox.bound_counters().refused_events, 1);
        assert_eq!((outbox.fixes(), outbox.events()), (1, 0));
    }

    /// A log as SDKs before order events wrote it, byte for byte: its records still mean what
    /// they meant, and events continue its numbering.
    #[test]
    fn a_log_from_before_events_opens_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let bodies: [&[u8]; 7] = [
            &[8, 0],                // Mark { seq: 0 }
            &[0, 0xe8, 7, 2, 1, 0], // Fix { ts_ms: 1000, lat_e7: 1, lon_e7: -1, details: None }
            &[0, 0xe9, 7, 2, 1, 0], // Fix { ts_ms: 1001, .. }
            &[0, 0xea, 7, 2, 1, 0], // Fix { ts_ms: 1002, .. }
            &[1, 1, 2],             // Seal { seq: 1, count: 2 }
            &[1, 2, 1],             // Seal { seq: 2, count: 1 }
            &[2, 1],                // Ack { seq: 1 }
        ];
        let mut log = MAGIC.to_vec();
        for body in bodies {
            log.extend_from_slice(&(body.len() as u32).to_le_bytes());
            log.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            log.extend_from_slice(body);
        }
        fs::write(dir.path().join(LOG_FILE), &log).unwrap();
        let now = Instant::now();
        let mut outbox = Outbox::open(dir.path(), config()).unwrap();
        assert_eq!(outbox.log_len(), log.len() as u64, "nothing cut");
        assert_eq!(outbox.mark(), Some(1));
        let sealed: Vec<(u64, Vec<u64>)> =
            outbox.sealed().map(|s| (s.seq, s.fixes().iter().map(|f| f.ts_ms).collect())).collect();
        assert_eq!(sealed, vec![(2, vec![1002])]);
        let old = Fix { ts_ms: 1002, lat_e7: 1, lon_e7: -1, details: None };
        assert_eq!(outbox.sealed().next().unwrap().fixes(), [old]);
        outbox.push_event(event("after"), now).unwrap();
        outbox.seal(ReportSize::fixes(10), AGE, 10, false, now).unwrap();
        let numbered = outbox.sealed().nth(1).map(|s| (s.seq, s.outgoing()));
        assert!(matches!(numbered, Some((3, Outgoing::Event(e))) if e.event_id == "after"));
    }
}
