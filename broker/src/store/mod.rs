//! Durable state in sled: a commit log and the views that follow it. `store` owns every durable
//! tree; the other parts read and write through [`Store`].
//!
//! Enters: one [`Commit`] per group of reports from the pipeline (or of backfilled fixes from
//! `locusd replay`), dead letters. Leaves: reads for the HTTP API, acks' seqs for the pipeline,
//! log entries for the InfluxDB shipper.
//!
//! The write path is one sled value per commit, because sled costs about 10 µs per key
//! written: written as a log it costs about 1 µs per fix, written as an index 10–20 µs.
//! - [`log`] (tree `log`): the [`LogEntry`]s of every commit — the reports' seqs and fixes,
//!   and the order events the intake accepted —
//!   written in one step, together with the commit's dead letters, replay progress and the
//!   notifications its order events cause when it has any (one transaction). It is what an ack promises: the pipeline acks only after
//!   [`Store::flush`] made it durable.
//! - Views, each rebuilt after a crash by replaying the log from its cursor:
//!   - live state ([`live`], in memory): every courier's committed seqs ([`seqs`]) and last
//!     location, the last locations of orders, and the open [`track`] blocks. The intake
//!     applies each entry right after writing it, so reads see a fix once its entry exists.
//!   - the orders view (in memory with the live state): every order's lifecycle
//!     ([`crate::orders::Order`]).
//!   - the checkpoint ([`Store::checkpoint`], every `[store] checkpoint_interval_ms`): what
//!     changed in the live state goes to trees `courier_state`, `order_location`, `orders` and
//!     `track_blocks`, then the views' cursor. Recovery replays the log after that cursor: its
//!     time is bounded by the interval, not by the store's size. The checkpoint is plain
//!     inserts, not a transaction (sled's batches and transactions stop every other write in
//!     the process while they run, acks included), so a crash can cut one off halfway; the
//!     replay then skips the fixes the track already holds (see `replay`).
//!   - the InfluxDB shipper reads the log after its own cursor ([`Store::shipper_read`]).
//!
//!   A log entry is removed once a durable checkpoint and the shipper (when InfluxDB is on)
//!   have both passed it.
//! - `dead_letters`: id (u64 BE, increasing) → [`DeadLetter`] ([`dead_letter`]).
//! - `replay_progress`: replayed file identity → where `locusd replay` stopped (opaque bytes).
//! - `notifications`: deliveries of order notifications ([`crate::notify`]).
//! - `edge_receipts`: what each request an edge forwarded has committed ([`receipts`]),
//!   written with the fixes it covers.
//! - `meta`: the layout version and the cursors. A data dir of the previous layout (a key per
//!   track fix, a committed seq per courier, an outbox of line protocol) is migrated by
//!   [`migrate`] on first open.
//!
//! The plugin registry keeps its records in a tree the store opens for it ([`Store::plugins_tree`]).

mod config;
mod dead_letter;
mod live;
pub mod log;
mod migrate;
pub mod receipts;
mod records;
pub mod seqs;
pub mod track;

pub use config::{DeadLetterConfig, StoreConfig, TrackConfig};
pub use dead_letter::{
    DeadLetter, DeadLetterFilter, DeadLetterReason, DeadLetterSource, SourceKind,
};
pub use log::{CommitRecord, LogEntry, LoggedFix, LoggedOrderEvent, OrderRecord, RecordBuilder};
pub use receipts::{EdgeReceipt, ReceiptStatus};
pub use records::{FixFields, FixView, StoredFix};
pub use seqs::{SeqTake, SeqWindow};

use crate::orders::Order;
use live::{CourierRecord, Live};
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A storage failure. sled errors are I/O or corruption: the caller stops taking reports.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value did not decode (corruption or an incompatible build).
    #[error("stored value in {tree} does not decode: {source}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// Why.
        source: postcard::Error,
    },
}

impl<E> From<TransactionError<E>> for StoreError {
    fn from(e: TransactionError<E>) -> Self {
        match e {
            TransactionError::Storage(e) => StoreError::Sled(e),
            // Only `sled::Error`s abort the transactions here.
            TransactionError::Abort(_) => {
                StoreError::Sled(sled::Error::Unsupported("transaction aborted".to_owned()))
            }
        }
    }
}

/// How a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Keep log entries until the InfluxDB shipper has passed them (set when `[influx]` is on,
    /// also in `locusd replay`, which queues for the shipper of the next `locusd serve`).
    pub keep_for_shipper: bool,
    /// sled's page cache, bytes.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            keep_for_shipper: false,
            cache_bytes: StoreConfig::default().cache_mib * 1024 * 1024,
        }
    }
}

impl StoreOptions {
    /// The options `[store]` and `[influx]` ask for.
    pub fn new(config: &StoreConfig, keep_for_shipper: bool) -> StoreOptions {
        StoreOptions { keep_for_shipper, cache_bytes: config.cache_mib * 1024 * 1024 }
    }
}

/// Everything one commit changes, written at once: all of it or none of it.
#[derive(Debug, Default)]
pub struct Commit {
    /// The reports taken and the fixes committed (a log entry).
    pub record: CommitRecord,
    /// Order events accepted (a second log entry, after the record's: the fixes a courier sent
    /// before its `delivered` locate the order).
    pub orders: OrderRecord,
    /// Dead letters found while building it.
    pub dead_letters: Vec<DeadLetter>,
    /// `locusd replay` progress (key, value), committed with the fixes it covers.
    pub replay_progress: Option<(Vec<u8>, Vec<u8>)>,
    /// Notifications of the order events, as [`crate::notify`] staged them (key, value): an
    /// event and the deliveries it causes are never written one without the other.
    pub notifications: Vec<(Vec<u8>, Vec<u8>)>,
    /// Receipts of edge requests (key, receipt) whose parts this commit takes: written with
    /// their fixes, so a part is recorded as in exactly when it is.
    pub receipts: Vec<(Vec<u8>, EdgeReceipt)>,
    /// `record` is another worker's commit (cluster mode): written as a
    /// [`LogEntry::Replica`], applied to the views, not shipped.
    pub replica: bool,
    /// Dead letters this commit resolves (replayed, their fixes in `record` or already
    /// stored): removed with it, so a letter is gone exactly when what it held is in.
    pub resolved_dead_letters: Vec<u64>,
}

/// What a commit changed that others follow.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Orders whose location its fixes changed.
    pub moved_orders: Vec<String>,
    /// Its log entries as written ([`LogEntry::decode`] reads them): what the other workers
    /// of a cluster apply.
    pub entries: Vec<Vec<u8>>,
}

/// The sled database, its trees and the live view. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    log: sled::Tree,
    courier_state: sled::Tree,
    order_location: sled::Tree,
    orders: sled::Tree,
    notifications: sled::Tree,
    edge_receipts: sled::Tree,
    /// Receipts written and the flush that makes them durable (its number in
    /// `flushes_begun`): until it is done, a receipt is not shown as committed. Empty after a
    /// restart: what is on disk then is as durable as it gets.
    receipts_unflushed: Mutex<HashMap<Vec<u8>, u64>>,
    track: sled::Tree,
    dead_letters: sled::Tree,
    replay_progress: sled::Tree,
    meta: sled::Tree,
    live: RwLock<Live>,
    /// Only the intake appends; contiguous ids make cursors plain numbers.
    next_log_id: AtomicU64,
    next_dead_letter_id: AtomicU64,
    /// The live view's positions generation, for whoever follows positions
    /// ([`Store::watch_positions`]).
    positions: tokio::sync::watch::Sender<u64>,
    options: StoreOptions,
    shipper: Mutex<ShipperCursor>,
    /// Fixes in log entries the shipper has not finished.
    shipper_pending: AtomicU64,
    /// One checkpoint at a time; holds the last checkpoint not yet known to be durable.
    checkpointing: Mutex<Option<WrittenCheckpoint>>,
    /// Calls of [`Store::prune`] so far.
    prunes: AtomicU64,
    /// Flushes begun and the newest one finished (numbered from 1): a checkpoint is durable
    /// once a flush begun after it has finished.
    flushes_begun: AtomicU64,
    flushes_done: AtomicU64,
}

/// A checkpoint that is written but may not be durable yet.
#[derive(Debug, Clone, Copy)]
struct WrittenCheckpoint {
    /// The views' cursor it holds.
    cursor: u64,
    /// The first flush number begun after it was written.
    durable_after_flush: u64,
}

/// Spreads a checkpoint's writes over the committer's flushes: every fsync writes out what
/// was written since the last one, acks wait for it, and a checkpoint of a busy city is
/// megabytes. Without this, one flush carries all of it and its acks wait tens of ms.
struct FlushPacer<'a> {
    inner: &'a Inner,
    /// Bytes written since the last pause.
    unflushed: usize,
    /// Time paused so far.
    paused: std::time::Duration,
}

/// Checkpoint bytes one flush may carry before the checkpoint waits for the next flush.
const CHECKPOINT_BYTES_PER_FLUSH: usize = 128 * 1024;

/// The longest a checkpoint waits for a flush (none may come: an idle server, `locusd replay`).
const CHECKPOINT_MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// The most a checkpoint waits in all: past it, it writes at full speed, so that at saturation
/// it keeps up with the intake (a checkpoint that falls behind keeps blocks in memory and the
/// log growing) instead of trading throughput for latency.
const CHECKPOINT_PAUSE_BUDGET: std::time::Duration = std::time::Duration::from_millis(200);

impl FlushPacer<'_> {
    fn wrote(&mut self, bytes: usize) {
        self.unflushed += bytes;
        if self.unflushed < CHECKPOINT_BYTES_PER_FLUSH {
            return;
        }
        self.unflushed = 0;
        if self.paused >= CHECKPOINT_PAUSE_BUDGET {
            return;
        }
        // A flush begun from now on carries what was written so far.
        let begun = self.inner.flushes_begun.load(Ordering::Acquire);
        let started = std::time::Instant::now();
        while self.inner.flushes_done.load(Ordering::Acquire) <= begun
            && started.elapsed() < CHECKPOINT_MAX_PAUSE
        {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        self.paused += started.elapsed();
    }
}

/// Where the shipper is: every entry up to `through` is shipped, and these above it.
#[derive(Debug, Default)]
struct ShipperCursor {
    through: u64,
    done_above: BTreeSet<u64>,
}

/// What a checkpoint wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Courier records written.
    pub couriers: usize,
    /// Order locations written.
    pub orders: usize,
    /// Track blocks written.
    pub blocks: usize,
    /// Log entries removed.
    pub log_entries_removed: usize,
}

/// Every how many prunes every courier's track is looked at (see [`Store::prune`]).
pub const FULL_PRUNE_EVERY: u64 = 60;

/// The plugin registry's tree.
const PLUGINS_TREE: &str = "plugins";

/// Order id → [`Order`] (its lifecycle), as of the last checkpoint.
const ORDERS_TREE: &str = "orders";

/// Deliveries of order notifications, written with the events that cause them; their
/// records are [`crate::notify`]'s own (format in `notify/deliveries.rs`).
const NOTIFICATIONS_TREE: &str = "notifications";

const FORMAT: u64 = 2;
const META_FORMAT: &[u8] = b"format";
const META_VIEWS_CURSOR: &[u8] = b"views_cursor";
const META_SHIPPER_CURSOR: &[u8] = b"shipper_cursor";
const META_NEXT_BLOCK_ID: &[u8] = b"next_block_id";
/// The views' cursor of the newest checkpoint begun (it may not have finished).
const META_CHECKPOINT_TO: &[u8] = b"checkpoint_to";
/// The next dead letter's id, written before letters are removed (ids are never reused).
const META_NEXT_DEAD_LETTER: &[u8] = b"next_dead_letter_id";

fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encoding of plain records cannot fail")
}

fn decode<'a, T: serde::Deserialize<'a>>(
    tree: &'static str,
    bytes: &'a [u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Corrupt { tree, source })
}

/// A value of the `dead_letters` tree.
fn decode_dead_letter(value: &[u8]) -> Result<DeadLetter, StoreError> {
    DeadLetter::decode(value).map_err(|source| StoreError::Corrupt { tree: "dead_letters", source })
}

fn u64_of(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn meta_u64(meta: &sled::Tree, key: &[u8]) -> Result<Option<u64>, StoreError> {
    Ok(meta.get(key)?.map(|v| u64_of(&v)))
}

/// The log entry as written, borrowing the record (same bytes as [`LogEntry::Commit`] and
/// [`LogEntry::Replica`]: the variants keep their indices).
#[derive(Serialize)]
enum LogEntryRef<'a> {
    Commit(&'a CommitRecord),
    #[allow(dead_code)] // never built: holds the index of LogEntry::LegacyLines
    LegacyLines(()),
    #[allow(dead_code)] // never built: holds the index of LogEntry::Orders
    Orders(()),
    Replica(&'a CommitRecord),
}

impl Store {
    /// Opens (or creates) the store in `dir` for reading and committing, keeping nothing for a
    /// shipper.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, StoreOptions::default())
    }

    /// Opens (or creates) the store in `dir`: migrates an older layout, loads the live view
    /// from the last checkpoint and replays the log after it.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        // sled's own background flush is a safety net; durability comes from explicit flushes.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            .flush_every_ms(Some(1000))
            .open()?;
        let meta = db.open_tree("meta")?;
        let log = db.open_tree(log::LOG_TREE)?;
        let courier_state = db.open_tree("courier_state")?;
        let track = db.open_tree(track::TRACK_TREE)?;
        migrate::run(&db, &meta, &log, &courier_state, &track)?;
        if meta.get(META_FORMAT)?.is_none() {
            meta.insert(META_FORMAT, &FORMAT.to_be_bytes())?;
        }

        let mut live = Live::default();
        for entry in courier_state.iter() {
            let (courier, value) = entry?;
            let record: CourierRecord = decode("courier_state", &value)?;
            let courier = String::from_utf8_lossy(&courier).into_owned();
            live.couriers.insert(courier, live::CourierLive { record, ..Default::default() });
        }
        let views_cursor = meta_u64(&meta, META_VIEWS_CURSOR)?.unwrap_or(0);
        let checkpoint_to = meta_u64(&meta, META_CHECKPOINT_TO)?.unwrap_or(0);
        live.applied_through = views_cursor;
        live.tracks = track::OpenTracks::new(meta_u64(&meta, META_NEXT_BLOCK_ID)?.unwrap_or(1));
        let order_location = db.open_tree("order_location")?;
        let orders = db.open_tree(ORDERS_TREE)?;
        for entry in orders.iter() {
            let (_, value) = entry?;
            let order: Order = decode(ORDERS_TREE, &value)?;
            live.follow(&order);
            live.order_states.insert(order.id.clone(), order);
        }
        let replayed =
            replay(&log, &track, &order_location, &mut live, views_cursor, checkpoint_to)?;
        if replayed > 0 {
            tracing::info!(entries = replayed, "replayed the commit log after the last checkpoint");
        }

        let last_log_id = log.last()?.map_or(0, |(k, _)| log::id_of(&k));
        let first_log_id = log.first()?.map_or(last_log_id + 1, |(k, _)| log::id_of(&k));
        let stored_shipper = meta_u64(&meta, META_SHIPPER_CURSOR)?.unwrap_or(0);
        // Entries older than the log's first are gone: nothing before it can be waiting.
        let shipper_through = stored_shipper.max(first_log_id.saturating_sub(1));
        let mut pending = 0;
        if options.keep_for_shipper {
            for entry in log.range(log::key(shipper_through + 1)..) {
                pending += LogEntry::decode(&entry?.1)?.fixes();
            }
        }
        let next_log_id = last_log_id.max(views_cursor).max(stored_shipper) + 1;

        let dead_letters = db.open_tree("dead_letters")?;
        // Ids are never reused, even after the newest letters were purged or replayed.
        let next_dead_letter_id = dead_letters
            .last()?
            .map_or(1, |(k, _)| u64_of(&k) + 1)
            .max(meta_u64(&meta, META_NEXT_DEAD_LETTER)?.unwrap_or(1));
        let positions = tokio::sync::watch::Sender::new(live.positions_generation);
        Ok(Store {
            inner: Arc::new(Inner {
                log,
                courier_state,
                order_location,
                orders,
                notifications: db.open_tree(NOTIFICATIONS_TREE)?,
                edge_receipts: db.open_tree(receipts::RECEIPTS_TREE)?,
                receipts_unflushed: Mutex::new(HashMap::new()),
                track,
                replay_progress: db.open_tree("replay_progress")?,
                dead_letters,
                meta,
                live: RwLock::new(live),
                next_log_id: AtomicU64::new(next_log_id),
                next_dead_letter_id: AtomicU64::new(next_dead_letter_id),
                positions,
                options,
                shipper: Mutex::new(ShipperCursor {
                    through: shipper_through,
                    done_above: BTreeSet::new(),
                }),
                shipper_pending: AtomicU64::new(pending),
                checkpointing: Mutex::new(None),
                prunes: AtomicU64::new(0),
                flushes_begun: AtomicU64::new(0),
                flushes_done: AtomicU64::new(0),
                db,
            }),
        })
    }

    /// Opens a store just dropped in this process (tests of restarts). sled's background IO
    /// threads can still hold the database's file lock for a moment after the last handle is
    /// dropped (seen on a loaded machine), so this waits for it instead of failing at random.
    #[cfg(test)]
    pub(crate) fn reopen_in_test(dir: &Path, options: StoreOptions) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match Store::open_with(dir, options) {
                Ok(store) => return store,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("reopen: {e}; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        }
    }

    /// The tree the plugin registry keeps deployed plugins in (its records are the registry's
    /// own; the store only owns the tree, like every durable tree).
    pub fn plugins_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.inner.db.open_tree(PLUGINS_TREE)?)
    }

    /// The tree of notification deliveries ([`crate::notify`] reads and updates its records;
    /// new ones are written by [`Store::commit`] with the events that cause them).
    pub fn notifications_tree(&self) -> sled::Tree {
        self.inner.notifications.clone()
    }

    fn live(&self) -> std::sync::RwLockReadGuard<'_, Live> {
        self.inner.live.read().unwrap_or_else(|e| e.into_inner())
    }

    fn live_mut(&self) -> std::sync::RwLockWriteGuard<'_, Live> {
        self.inner.live.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a commit (its log entries, with its dead letters, replay progress and
    /// notifications in the same transaction) and applies it to the live view. Not yet durable:
    /// see [`Store::flush`]. On failure nothing of it is written or applied.
    pub fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let Commit {
            record,
            orders,
            dead_letters,
            replay_progress,
            notifications,
            receipts,
            replica,
            resolved_dead_letters,
        } = commit;
        let inner = &self.inner;
        let first_id = inner.next_log_id.load(Ordering::Relaxed);
        let mut entries: Vec<(u64, Vec<u8>)> = Vec::with_capacity(2);
        if !record.is_empty() {
            let entry = match replica {
                false => LogEntryRef::Commit(&record),
                true => LogEntryRef::Replica(&record),
            };
            entries.push((first_id, encode(&entry)));
        }
        let orders = (!orders.events.is_empty()).then(|| {
            let entry = LogEntry::Orders(orders);
            entries.push((first_id + entries.len() as u64, entry.encode()));
            match entry {
                LogEntry::Orders(orders) => orders,
                _ => unreachable!("built as orders just above"),
            }
        });
        let receipts: Vec<(Vec<u8>, Vec<u8>)> =
            receipts.into_iter().map(|(key, receipt)| (key, encode(&receipt))).collect();
        let alone = dead_letters.is_empty()
            && replay_progress.is_none()
            && notifications.is_empty()
            && receipts.is_empty()
            && resolved_dead_letters.is_empty();
        if alone && entries.len() <= 1 {
            for (id, entry) in &entries {
                inner.log.insert(log::key(*id), entry.as_slice())?;
            }
        } else {
            let mut letters = sled::Batch::default();
            let first_letter =
                inner.next_dead_letter_id.fetch_add(dead_letters.len() as u64, Ordering::Relaxed);
            for (i, letter) in dead_letters.iter().enumerate() {
                letters.insert(&(first_letter + i as u64).to_be_bytes(), letter.encode());
            }
            for id in &resolved_dead_letters {
                letters.remove(&id.to_be_bytes());
            }
            let trees = (
                &inner.log,
                &inner.dead_letters,
                &inner.replay_progress,
                &inner.notifications,
                &inner.edge_receipts,
            );
            trees.transaction(|(log, dead, progress, notify, edge_receipts)| {
                for (id, entry) in &entries {
                    log.insert(&log::key(*id), entry.as_slice())?;
                }
                dead.apply_batch(&letters)?;
                if let Some((key, value)) = &replay_progress {
                    progress.insert(key.as_slice(), value.as_slice())?;
                }
                for (key, value) in &notifications {
                    notify.insert(key.as_slice(), value.as_slice())?;
                }
                for (key, value) in &receipts {
                    edge_receipts.insert(key.as_slice(), value.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })?;
        }
        if !receipts.is_empty() {
            // Read after the write: a flush begun from now on carries it.
            let flush = inner.flushes_begun.load(Ordering::Acquire) + 1;
            let mut unflushed = inner.receipts_unflushed.lock().unwrap_or_else(|p| p.into_inner());
            let done = inner.flushes_done.load(Ordering::Acquire);
            unflushed.retain(|_, needs| *needs > done);
            for (key, _) in receipts {
                unflushed.insert(key, flush);
            }
        }
        let mut committed = Committed::default();
        if entries.is_empty() {
            return Ok(committed);
        }
        inner.next_log_id.store(first_id + entries.len() as u64, Ordering::Relaxed);
        if inner.options.keep_for_shipper && !replica {
            inner.shipper_pending.fetch_add(record.fixes.len() as u64, Ordering::Relaxed);
        }
        let order_location = &inner.order_location;
        let mut live = self.live_mut();
        if !record.is_empty() {
            live.apply(
                first_id,
                record,
                |order| stored_order(order_location, order),
                |_, _| false,
                &mut committed.moved_orders,
            );
        }
        if let Some(orders) = orders {
            live.apply_orders(first_id + entries.len() as u64 - 1, orders);
        }
        let positions = live.positions_generation;
        drop(live);
        inner.positions.send_if_modified(|seen| std::mem::replace(seen, positions) != positions);
        committed.entries = entries.into_iter().map(|(_, entry)| entry).collect();
        Ok(committed)
    }

    /// Appends InfluxDB lines to the log for the shipper alone (the migration of an older
    /// outbox; tests of the shipper). Newline-separated.
    pub fn append_lines(&self, lines: Vec<u8>) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let id = inner.next_log_id.load(Ordering::Relaxed);
        let entry = LogEntry::LegacyLines(lines);
        inner.log.insert(log::key(id), entry.encode())?;
        inner.next_log_id.store(id + 1, Ordering::Relaxed);
        if inner.options.keep_for_shipper {
            inner.shipper_pending.fetch_add(entry.fixes(), Ordering::Relaxed);
        }
        // The views have nothing to do with it.
        let mut live = self.live_mut();
        if live.applied_through + 1 == id {
            live.applied_through = id;
        }
        Ok(id)
    }

    /// An order's lifecycle, as committed so far.
    pub fn order(&self, order: &str) -> Option<Order> {
        self.live().order_states.get(order).cloned()
    }

    /// An order's status, without copying its timeline (the broker asks on every customer
    /// subscribe).
    pub fn order_status(&self, order: &str) -> Option<crate::orders::Status> {
        self.live().order_states.get(order).map(|o| o.status)
    }

    /// Orders that `wanted` picks, up to `limit`, by id.
    pub fn orders(&self, wanted: impl Fn(&Order) -> bool, limit: usize) -> Vec<Order> {
        let live = self.live();
        let mut found: Vec<&Order> = live.order_states.values().filter(|o| wanted(o)).collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.into_iter().take(limit).cloned().collect()
    }

    /// `edge`'s receipt for `key` as written (the intake reads its own writes: the next part
    /// of a request must see the previous one), `None` when there is none.
    pub fn edge_receipt_written(
        &self,
        edge: &str,
        key: &str,
    ) -> Result<Option<EdgeReceipt>, StoreError> {
        let value = self.inner.edge_receipts.get(receipts::key(edge, key))?;
        value.map(|v| decode(receipts::RECEIPTS_TREE, &v)).transpose()
    }

    /// `edge`'s receipt for `key` and where its request stands, durably: `committed` only once
    /// a flush has made the receipt (and so the fixes written with it) durable. `None` when
    /// there is none (not arrived yet, never sent, or pruned).
    pub fn edge_receipt(
        &self,
        edge: &str,
        key: &str,
    ) -> Result<Option<(EdgeReceipt, ReceiptStatus)>, StoreError> {
        let Some(receipt) = self.edge_receipt_written(edge, key)? else { return Ok(None) };
        let needs = self
            .inner
            .receipts_unflushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&receipts::key(edge, key))
            .copied();
        let durable =
            needs.is_none_or(|needs| self.inner.flushes_done.load(Ordering::Acquire) >= needs);
        let status = match receipt.status() {
            ReceiptStatus::Committed if !durable => ReceiptStatus::Pending,
            status => status,
        };
        Ok(Some((receipt, status)))
    }

    /// Removes receipts kept past their time (`keep_until_ms` before `now_ms`). Returns how
    /// many.
    pub fn prune_receipts(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for entry in self.inner.edge_receipts.iter() {
            let (key, value) = entry?;
            let receipt: EdgeReceipt = decode(receipts::RECEIPTS_TREE, &value)?;
            if receipt.keep_until_ms < now_ms {
                expired.push(key);
            }
        }
        for key in &expired {
            self.inner.edge_receipts.remove(key)?;
        }
        Ok(expired.len())
    }

    /// Removes the orders that ended (delivered or cancelled) before `ended_before_ms`, with
    /// their last locations. Returns how many.
    pub fn prune_orders(&self, ended_before_ms: u64) -> Result<usize, StoreError> {
        let ended: Vec<String> = {
            let mut live = self.live_mut();
            let ended: Vec<String> = live
                .order_states
                .values()
                .filter(|o| o.ended_at_ms().is_some_and(|at| at < ended_before_ms))
                .map(|o| o.id.clone())
                .collect();
            for order in &ended {
                live.order_states.remove(order);
                live.orders_dirty.remove(order);
                live.orders.remove(order);
            }
            ended
        };
        // One remove at a time, like the checkpoint's writes (a batch stops every other write).
        for order in &ended {
            self.inner.orders.remove(order.as_bytes())?;
            self.inner.order_location.remove(order.as_bytes())?;
        }
        Ok(ended.len())
    }

    /// Makes everything committed so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        let ticket = self.inner.flushes_begun.fetch_add(1, Ordering::AcqRel) + 1;
        self.inner.db.flush()?;
        self.inner.flushes_done.fetch_max(ticket, Ordering::AcqRel);
        Ok(())
    }

    /// Stores dead letters on their own (durable at the next flush).
    pub fn record_dead_letters(&self, letters: Vec<DeadLetter>) -> Result<(), StoreError> {
        self.commit(Commit { dead_letters: letters, ..Commit::default() }).map(|_| ())
    }

    /// Copies what changed in the live view into sled, then the views' cursor, and removes the
    /// log entries that every view has passed and that a durable checkpoint covers.
    ///
    /// It does not flush on its own under load: the committer flushes all the time, and a
    /// checkpoint's fsync would hold up the acks behind it. The log behind a checkpoint goes
    /// once a flush has begun after it (at the next checkpoint); when nothing else flushed by
    /// then (an idle server), the checkpoint flushes itself.
    pub fn checkpoint(&self) -> Result<CheckpointStats, StoreError> {
        self.checkpoint_until(|| Ok(()))
    }

    /// [`Store::checkpoint`], asking `may_write` before each view write (tests stop it
    /// halfway, as a crash would).
    fn checkpoint_until(
        &self,
        mut may_write: impl FnMut() -> Result<(), StoreError>,
    ) -> Result<CheckpointStats, StoreError> {
        let inner = &self.inner;
        let mut previous = inner.checkpointing.lock().unwrap_or_else(|e| e.into_inner());
        let (couriers, orders, lifecycles, blocks, cursor, next_block_id) = {
            let mut live = self.live_mut();
            let couriers: Vec<(String, Vec<u8>)> = live
                .couriers
                .iter_mut()
                .filter(|(_, c)| c.dirty)
                .map(|(name, c)| {
                    c.dirty = false;
                    (name.clone(), encode(&c.record))
                })
                .collect();
            let orders = std::mem::take(&mut live.orders);
            let encoded: Vec<(String, Vec<u8>)> =
                orders.iter().map(|(order, value)| (order.clone(), encode(value))).collect();
            live.orders_checkpointing = orders;
            let blocks = live.tracks.checkpoint_writes();
            let dirty = std::mem::take(&mut live.orders_dirty);
            let lifecycles: Vec<(String, Vec<u8>)> = dirty
                .into_iter()
                .filter_map(|id| live.order_states.get(&id).map(|order| (id, encode(order))))
                .collect();
            let cursor = live.applied_through;
            (couriers, encoded, lifecycles, blocks, cursor, live.tracks.next_block_id())
        };
        // Plain inserts, not one transaction: a sled batch or transaction holds a lock that
        // stops every other write in the process (the committer's log entries, so the acks)
        // for as long as it runs, and a checkpoint of a busy city is milliseconds. A crash
        // halfway leaves some views written past the cursor; recovery allows for that (see
        // `replay`). The order matters: the block ids and the cursor being written come first,
        // the views' cursor last.
        let mut pacer = FlushPacer { inner, unflushed: 0, paused: std::time::Duration::ZERO };
        let mut write = |tree: &sled::Tree, key: &[u8], value: &[u8]| {
            may_write()?;
            pacer.wrote(key.len() + value.len());
            tree.insert(key, value)?;
            Ok::<_, StoreError>(())
        };
        let written = (|| {
            let meta = &inner.meta;
            meta.insert(META_NEXT_BLOCK_ID, &next_block_id.to_be_bytes())?;
            meta.insert(META_CHECKPOINT_TO, &cursor.to_be_bytes())?;
            for (courier, value) in &couriers {
                write(&inner.courier_state, courier.as_bytes(), value)?;
            }
            for (order, value) in &orders {
                write(&inner.order_location, order.as_bytes(), value)?;
            }
            for (order, value) in &lifecycles {
                write(&inner.orders, order.as_bytes(), value)?;
            }
            for block in &blocks {
                write(&inner.track, &block.key, &block.value)?;
            }
            write(meta, META_VIEWS_CURSOR, &cursor.to_be_bytes())
        })();
        {
            let mut live = self.live_mut();
            let checkpointed = std::mem::take(&mut live.orders_checkpointing);
            match &written {
                Ok(()) => live.tracks.written(&blocks),
                Err(_) => {
                    // Everything goes again at the next checkpoint.
                    for (courier, _) in &couriers {
                        if let Some(c) = live.couriers.get_mut(courier) {
                            c.dirty = true;
                        }
                    }
                    for (order, value) in checkpointed {
                        live.orders.entry(order).or_insert(value);
                    }
                    live.orders_dirty.extend(lifecycles.iter().map(|(order, _)| order.clone()));
                    live.tracks.unwritten();
                }
            }
        }
        written?;
        let durable = match *previous {
            Some(earlier)
                if inner.flushes_done.load(Ordering::Acquire) >= earlier.durable_after_flush =>
            {
                Some(earlier.cursor)
            }
            Some(earlier) if earlier.cursor > 0 => {
                // Nothing flushed since the last checkpoint: an idle server, so it is cheap.
                self.flush()?;
                Some(earlier.cursor)
            }
            _ => None,
        };
        *previous = Some(WrittenCheckpoint {
            cursor,
            durable_after_flush: inner.flushes_begun.load(Ordering::Acquire) + 1,
        });
        let mut log_entries_removed = 0;
        if let Some(durable) = durable {
            // Entries the shipper has passed are gone from InfluxDB's point of view too; its
            // cursor need not be durable (a restart finds the log starting after it).
            let shipper_through = self.shipper_cursor().through;
            let through =
                if inner.options.keep_for_shipper { durable.min(shipper_through) } else { durable };
            // One remove at a time, for the same reason as the views' inserts.
            for key in inner.log.range(..=log::key(through)).keys() {
                inner.log.remove(key?)?;
                log_entries_removed += 1;
            }
        }
        Ok(CheckpointStats {
            couriers: couriers.len(),
            orders: orders.len(),
            blocks: blocks.len(),
            log_entries_removed,
        })
    }

    /// A courier's committed seqs (empty for a courier never seen).
    pub fn seq_window(&self, courier: &str) -> SeqWindow {
        self.live().couriers.get(courier).map(|c| c.record.seqs.clone()).unwrap_or_default()
    }

    /// Adds committed seqs learnt from elsewhere (a cluster's shared record, after this worker
    /// took over a partition) to a courier's: a seq committed by either is committed. Kept in
    /// memory and written by the next checkpoint; applying it again changes nothing.
    pub fn merge_seqs(&self, courier: &str, seqs: &SeqWindow) {
        let mut live = self.live_mut();
        live.merge_seqs(courier, seqs);
    }

    /// Every courier's ack: the watermark of its committed seqs (for re-announcing acks after
    /// a restart).
    pub fn acks(&self) -> Vec<(String, u64)> {
        self.live()
            .couriers
            .iter()
            .filter(|(_, c)| c.record.seqs.watermark() > 0)
            .map(|(courier, c)| (courier.clone(), c.record.seqs.watermark()))
            .collect()
    }

    /// What the intake checks a courier's reports against, in one look at the live view: its
    /// committed seqs and the device time of its last location (the newest fix it has).
    pub fn dedup_state(&self, courier: &str) -> (SeqWindow, Option<u64>) {
        let live = self.live();
        let Some(c) = live.couriers.get(courier) else { return (SeqWindow::default(), None) };
        (c.record.seqs.clone(), c.record.last.as_ref().map(|f| f.fix.ts_ms))
    }

    /// Where `locusd replay` stopped in the file with identity `key`.
    pub fn replay_progress(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.replay_progress.get(key)?.map(|v| v.to_vec()))
    }

    /// Whether a courier's track holds a fix at device time `ts_ms`.
    pub fn has_track_fix(&self, courier: &str, ts_ms: u64) -> Result<bool, StoreError> {
        if self.live().tracks.has_fix_at(courier, ts_ms) {
            return Ok(true);
        }
        track::has_fix_at(&self.inner.track, courier, ts_ms)
    }

    /// The last location of a courier.
    pub fn last_location(&self, courier: &str) -> Result<Option<StoredFix>, StoreError> {
        Ok(self.live().couriers.get(courier).and_then(|c| c.record.last.clone()))
    }

    /// The last location of an order, with its courier.
    pub fn order_location(&self, order: &str) -> Result<Option<(String, StoredFix)>, StoreError> {
        if let Some(found) = self.live().order(order) {
            return Ok(Some(found.clone()));
        }
        self.inner.order_location.get(order)?.map(|v| decode("order_location", &v)).transpose()
    }

    /// A courier's track between `since` and `until` (device time, inclusive), ascending. With
    /// `since`, the first `limit` fixes from it; without, the last `limit` fixes up to `until`.
    pub fn track(
        &self,
        courier: &str,
        since: Option<u64>,
        until: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredFix>, StoreError> {
        let open = self.live().tracks.snapshot(courier);
        track::read(&self.inner.track, &open, courier, since, until, limit)
    }

    /// Dead letters with id ≥ `after + 1`, oldest first, with their ids.
    pub fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        self.dead_letters_matching(&DeadLetterFilter::default(), after, limit)
    }

    /// Dead letters with id ≥ `after + 1` that `filter` matches, oldest first, with their ids.
    pub fn dead_letters_matching(
        &self,
        filter: &DeadLetterFilter,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        let mut found = Vec::new();
        for entry in self.inner.dead_letters.range((after.saturating_add(1)).to_be_bytes()..) {
            if found.len() == limit {
                break;
            }
            let (k, v) = entry?;
            let letter = decode_dead_letter(&v)?;
            if filter.matches(&letter) {
                found.push((u64_of(&k), letter));
            }
        }
        Ok(found)
    }

    /// The dead letter `id`, if it is kept.
    pub fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.inner.dead_letters.get(id.to_be_bytes())?.map(|v| decode_dead_letter(&v)).transpose()
    }

    /// Removes the dead letters `ids` (those still kept); returns how many it removed.
    /// Durable at the next flush.
    pub fn remove_dead_letters(&self, ids: &[u64]) -> Result<usize, StoreError> {
        // Remember the next id first: purging the newest letters must not hand their ids out
        // again after a restart.
        let next = self.inner.next_dead_letter_id.load(Ordering::Relaxed);
        self.inner.meta.insert(META_NEXT_DEAD_LETTER, &next.to_be_bytes())?;
        let mut removed = 0;
        for id in ids {
            if self.inner.dead_letters.remove(id.to_be_bytes())?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Every courier's last position that changed after positions generation `seen` (`None`:
    /// every one), and the generation they bring the caller to. See [`Store::watch_positions`].
    pub fn positions_since(&self, seen: Option<u64>) -> (u64, Vec<(String, StoredFix)>) {
        let live = self.live();
        let changed = live
            .couriers
            .iter()
            .filter(|(_, courier)| seen.is_none_or(|seen| courier.moved_at > seen))
            .filter_map(|(id, courier)| Some((id.clone(), courier.record.last.clone()?)))
            .collect();
        (live.positions_generation, changed)
    }

    /// Follows the positions generation: it changes whenever a commit moves a courier's last
    /// position, and [`Store::positions_since`] then tells which moved.
    pub fn watch_positions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.positions.subscribe()
    }

    /// Removes track blocks whose fixes are all older than `min_ts_ms` and beyond the newest
    /// `max_per_courier` fixes per courier (whole blocks), and dead letters beyond
    /// `max_dead_letters`. Returns how many fixes and letters were removed.
    ///
    /// Only the couriers that got fixes since the last call can have outgrown their limit, so
    /// only they are looked at; every [`FULL_PRUNE_EVERY`]th call looks at every courier, for
    /// the tracks of couriers gone quiet that age out.
    pub fn prune(
        &self,
        min_ts_ms: u64,
        max_per_courier: usize,
        max_dead_letters: usize,
    ) -> Result<usize, StoreError> {
        let full = self.inner.prunes.fetch_add(1, Ordering::Relaxed) % FULL_PRUNE_EVERY == 0;
        let couriers: Vec<String> = {
            let mut live = self.live_mut();
            let touched = std::mem::take(&mut live.touched);
            if full {
                live.couriers.keys().cloned().collect()
            } else {
                touched.into_iter().collect()
            }
        };
        let mut removed = 0;
        for courier in couriers {
            let open = self.live().tracks.snapshot(&courier);
            removed +=
                track::prune(&self.inner.track, &open, &courier, min_ts_ms, max_per_courier)?;
        }
        let dead_letters = &self.inner.dead_letters;
        if let (Some((first, _)), Some((last, _))) = (dead_letters.first()?, dead_letters.last()?) {
            let keep_from = u64_of(&last).saturating_sub(max_dead_letters as u64) + 1;
            if u64_of(&first) < keep_from {
                for key in dead_letters.range(..keep_from.to_be_bytes()).keys() {
                    dead_letters.remove(key?)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn shipper_cursor(&self) -> std::sync::MutexGuard<'_, ShipperCursor> {
        self.inner.shipper.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For the InfluxDB shipper: the oldest log entries it has not finished, after entry
    /// `after` (after its cursor when `None`), until they hold at least `max_fixes` fixes.
    pub fn shipper_read(
        &self,
        after: Option<u64>,
        max_fixes: u64,
    ) -> Result<Vec<(u64, LogEntry)>, StoreError> {
        let (from, done) = {
            let cursor = self.shipper_cursor();
            (after.unwrap_or(cursor.through).max(cursor.through), cursor.done_above.clone())
        };
        let mut entries = Vec::new();
        let mut fixes = 0;
        for entry in self.inner.log.range(log::key(from + 1)..) {
            if fixes >= max_fixes {
                break;
            }
            let (key, value) = entry?;
            let id = log::id_of(&key);
            if done.contains(&id) {
                continue;
            }
            let entry = LogEntry::decode(&value)?;
            fixes += entry.fixes().max(1);
            entries.push((id, entry));
        }
        Ok(entries)
    }

    /// For the InfluxDB shipper: entries `(id, fixes)` are shipped (or dead-lettered). Moves
    /// its cursor (kept in sled, durable with the next flush: a crash only ships a little
    /// again, and InfluxDB overwrites identical points).
    pub fn shipper_done(&self, entries: &[(u64, u64)]) -> Result<(), StoreError> {
        let mut cursor = self.shipper_cursor();
        let before = cursor.through;
        for &(id, fixes) in entries {
            if id > cursor.through && cursor.done_above.insert(id) {
                let _ = self.inner.shipper_pending.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |p| Some(p.saturating_sub(fixes)),
                );
            }
        }
        while cursor.done_above.first() == Some(&(cursor.through + 1)) {
            cursor.done_above.pop_first();
            cursor.through += 1;
        }
        if cursor.through != before {
            self.inner.meta.insert(META_SHIPPER_CURSOR, &cursor.through.to_be_bytes())?;
        }
        Ok(())
    }

    /// The id of the newest log entry written (0 before the first).
    pub fn last_log_id(&self) -> u64 {
        self.inner.next_log_id.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// The log id through which the InfluxDB shipper has finished every entry.
    pub fn shipped_through(&self) -> u64 {
        self.shipper_cursor().through
    }

    /// Fixes (and legacy lines) in log entries the shipper has not finished.
    pub fn shipper_pending(&self) -> u64 {
        self.inner.shipper_pending.load(Ordering::Relaxed)
    }
}

/// Applies the log after the views' cursor to the live view loaded from the last checkpoint.
/// Returns the entries applied.
///
/// A checkpoint cut off by a crash (`checkpoint_to` past the views' cursor) may have written
/// some of its views. Courier records and order locations are safe to apply again (seqs are
/// a set, the newest device time wins), but a track block it wrote holds fixes the replay
/// would add a second time: fixes of entries up to `checkpoint_to` that the written track
/// holds are skipped. A courier has one fix per device time (the intake refuses a second),
/// so the device time says which.
fn replay(
    log: &sled::Tree,
    track: &sled::Tree,
    order_location: &sled::Tree,
    live: &mut Live,
    views_cursor: u64,
    checkpoint_to: u64,
) -> Result<u64, StoreError> {
    let mut written: HashMap<String, HashSet<u64>> = HashMap::new();
    if checkpoint_to > views_cursor {
        let mut spans: HashMap<String, (u64, u64)> = HashMap::new();
        for entry in log.range(log::key(views_cursor + 1)..=log::key(checkpoint_to)) {
            if let LogEntry::Commit(record) | LogEntry::Replica(record) =
                LogEntry::decode(&entry?.1)?
            {
                for logged in &record.fixes {
                    let ts = logged.fix.ts_ms;
                    spans
                        .entry(record.couriers[logged.courier as usize].clone())
                        .and_modify(|(from, to)| (*from, *to) = ((*from).min(ts), (*to).max(ts)))
                        .or_insert((ts, ts));
                }
            }
        }
        for (courier, (from, to)) in spans {
            let fixes =
                track::read(track, &Vec::new(), &courier, Some(from), Some(to), usize::MAX)?;
            written.insert(courier, fixes.iter().map(|f| f.fix.ts_ms).collect());
        }
    }
    let mut replayed = 0;
    for entry in log.range(log::key(views_cursor + 1)..) {
        let (key, value) = entry?;
        let id = log::id_of(&key);
        match LogEntry::decode(&value)? {
            LogEntry::Commit(record) | LogEntry::Replica(record) => {
                let maybe_written = id <= checkpoint_to;
                live.apply(
                    id,
                    record,
                    |order| stored_order(order_location, order),
                    |courier, ts| {
                        maybe_written
                            && written.get(courier).is_some_and(|times| times.contains(&ts))
                    },
                    &mut Vec::new(),
                );
            }
            // An order checkpointed halfway already holds some of these events: they are
            // duplicates by event id and change nothing.
            LogEntry::Orders(record) => live.apply_orders(id, record),
            LogEntry::LegacyLines(_) => {}
        }
        live.applied_through = id;
        replayed += 1;
    }
    Ok(replayed)
}

fn stored_order(tree: &sled::Tree, order: &str) -> Option<(String, StoredFix)> {
    // A read error here only means the order's last location is compared with nothing; the
    // newest-wins rule is checked again at the next fix.
    tree.get(order).ok().flatten().and_then(|v| decode("order_location", &v).ok())
}

/// Runs [`Store::checkpoint`] every interval on its own thread until stopped; a last
/// checkpoint on stop.
#[derive(Debug)]
pub struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    /// Starts the thread.
    pub fn start(store: Store, interval: std::time::Duration) -> std::io::Result<Checkpointer> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread =
            std::thread::Builder::new().name("store-checkpoint".into()).spawn(move || {
                // The first one at once: what was replayed at open is then checkpointed even if the
                // process dies again within an interval.
                let mut last = false;
                loop {
                    let started = std::time::Instant::now();
                    match store.checkpoint() {
                        Ok(stats) => tracing::debug!(
                            ?stats,
                            ms = started.elapsed().as_secs_f64() * 1e3,
                            "checkpoint"
                        ),
                        Err(e) => tracing::error!(error = %e, "checkpoint failed; will retry"),
                    }
                    if last {
                        return;
                    }
                    last = matches!(
                        stopped.recv_timeout(interval),
                        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
                    );
                }
            })?;
        Ok(Checkpointer { stop, thread })
    }

    /// Takes a last checkpoint and stops.
    pub fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::error!("checkpoint thread panicked");
        }
    }
}

#[cfg(test)]
mod tests;
