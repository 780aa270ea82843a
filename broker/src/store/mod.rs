//! Durable state in sled.
//!
//! Enters: [`CommitBatch`]es from the pipeline (one atomic multi-tree transaction each), dead
//! letters. Leaves: reads for the HTTP API, the InfluxDB outbox for the shipper.
//!
//! Trees (keys are bytes; values postcard):
//! - `last_location`: courier → [`StoredFix`] (newest device time wins, never the later arrival)
//! - `order_location`: order → ([`String`] courier, [`StoredFix`])
//! - `track`: courier `0x00` ts_ms (u64 BE) → [`StoredFix`]; bounded by the pruner
//! - `committed_seq`: courier → u64 BE, the highest committed report seq (dedup + acks)
//! - `dead_letters`: id (u64 BE, increasing) → [`DeadLetter`]
//! - `influx_outbox`: id (u64 BE) → a commit's line-protocol points (see [`crate::influx::outbox`])
//! - `replay_progress`: replayed file identity → where `locusd replay` stopped (opaque bytes)
//!
//! Nothing here flushes on its own: the pipeline calls [`Store::flush`] once per group of
//! batches and acks only after it returns.

mod records;

pub use records::{DeadLetter, StoredFix};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A storage failure. sled errors are I/O or corruption: the caller stops taking reports.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value did not decode (corruption or an incompatible older build).
    #[error("stored value in {tree} does not decode: {source}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// Why.
        source: postcard::Error,
    },
}

/// Everything one group of reports changes, applied atomically.
#[derive(Debug, Default)]
pub struct CommitBatch {
    /// Fixes to add to tracks, per courier.
    pub track: Vec<(String, StoredFix)>,
    /// New last location per courier (already the newest by device time).
    pub last_location: HashMap<String, StoredFix>,
    /// New last location per order (already the newest by device time).
    pub order_location: HashMap<String, (String, StoredFix)>,
    /// New committed seq per courier.
    pub committed_seq: HashMap<String, u64>,
    /// Dead letters found while building the batch.
    pub dead_letters: Vec<DeadLetter>,
    /// InfluxDB points to queue, in order.
    pub influx_points: Vec<String>,
    /// `locusd replay` progress (key, value) committed with the fixes it covers.
    pub replay_progress: Option<(Vec<u8>, Vec<u8>)>,
}

impl CommitBatch {
    /// Whether applying the batch would change nothing.
    pub fn is_empty(&self) -> bool {
        self.track.is_empty()
            && self.committed_seq.is_empty()
            && self.dead_letters.is_empty()
            && self.influx_points.is_empty()
            && self.replay_progress.is_none()
    }
}

/// The sled database and its trees.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    last_location: sled::Tree,
    order_location: sled::Tree,
    track: sled::Tree,
    committed_seq: sled::Tree,
    dead_letters: sled::Tree,
    influx_outbox: sled::Tree,
    replay_progress: sled::Tree,
    next_dead_letter_id: std::sync::Arc<AtomicU64>,
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encoding of plain records cannot fail")
}

fn decode<'a, T: serde::Deserialize<'a>>(
    tree: &'static str,
    bytes: &'a [u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Corrupt { tree, source })
}

fn last_id(tree: &sled::Tree) -> Result<Option<u64>, StoreError> {
    Ok(tree.last()?.map(|(k, _)| u64_key(&k)))
}

fn u64_key(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// The key of a track entry.
pub fn track_key(courier: &str, ts_ms: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(courier.len() + 9);
    key.extend_from_slice(courier.as_bytes());
    key.push(0);
    key.extend_from_slice(&ts_ms.to_be_bytes());
    key
}

fn track_prefix(courier: &str) -> Vec<u8> {
    let mut key = courier.as_bytes().to_vec();
    key.push(0);
    key
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        // sled's own background flush is a safety net; durability comes from explicit flushes.
        let db = sled::Config::new().path(dir).flush_every_ms(Some(1000)).open()?;
        let dead_letters = db.open_tree("dead_letters")?;
        let next_dead_letter_id = last_id(&dead_letters)?.map_or(1, |id| id + 1);
        Ok(Store {
            last_location: db.open_tree("last_location")?,
            order_location: db.open_tree("order_location")?,
            track: db.open_tree("track")?,
            committed_seq: db.open_tree("committed_seq")?,
            influx_outbox: db.open_tree(crate::influx::OUTBOX_TREE)?,
            replay_progress: db.open_tree("replay_progress")?,
            dead_letters,
            next_dead_letter_id: std::sync::Arc::new(AtomicU64::new(next_dead_letter_id)),
            db,
        })
    }

    /// The InfluxDB outbox tree (for the shipper).
    pub fn influx_outbox(&self) -> &sled::Tree {
        &self.influx_outbox
    }

    /// The whole database (for parts that keep their own trees, like plugins).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Applies a batch atomically (not yet durable: see [`Store::flush`]).
    pub fn apply(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        let mut track = sled::Batch::default();
        for (courier, fix) in &batch.track {
            track.insert(track_key(courier, fix.fix.ts_ms), encode(fix));
        }
        let mut last = sled::Batch::default();
        for (courier, fix) in &batch.last_location {
            last.insert(courier.as_bytes(), encode(fix));
        }
        let mut orders = sled::Batch::default();
        for (order, entry) in &batch.order_location {
            orders.insert(order.as_bytes(), encode(entry));
        }
        let mut seqs = sled::Batch::default();
        for (courier, seq) in &batch.committed_seq {
            seqs.insert(courier.as_bytes(), &seq.to_be_bytes());
        }
        let mut dead = sled::Batch::default();
        for letter in &batch.dead_letters {
            let id = self.next_dead_letter_id.fetch_add(1, Ordering::Relaxed);
            dead.insert(&id.to_be_bytes(), encode(letter));
        }
        // One outbox entry for the whole commit (see `influx::outbox` for why).
        let mut outbox = sled::Batch::default();
        if let Some(entry) = crate::influx::outbox::entry(&batch.influx_points) {
            outbox.insert(&self.db.generate_id()?.to_be_bytes(), entry);
        }
        let mut progress = sled::Batch::default();
        if let Some((key, value)) = &batch.replay_progress {
            progress.insert(key.as_slice(), value.as_slice());
        }
        (
            &self.track,
            &self.last_location,
            &self.order_location,
            &self.committed_seq,
            &self.dead_letters,
            &self.influx_outbox,
            &self.replay_progress,
        )
            .transaction(|(t, l, o, s, d, x, r)| {
                t.apply_batch(&track)?;
                l.apply_batch(&last)?;
                o.apply_batch(&orders)?;
                s.apply_batch(&seqs)?;
                d.apply_batch(&dead)?;
                x.apply_batch(&outbox)?;
                r.apply_batch(&progress)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::Sled(e),
                TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
            })
    }

    /// Makes everything applied so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Stores dead letters on their own (durable at the next flush).
    pub fn record_dead_letters(&self, letters: Vec<DeadLetter>) -> Result<(), StoreError> {
        self.apply(&CommitBatch { dead_letters: letters, ..CommitBatch::default() })
    }

    /// The highest committed seq of a courier (0 if none).
    pub fn committed_seq(&self, courier: &str) -> Result<u64, StoreError> {
        Ok(self.committed_seq.get(courier)?.map_or(0, |v| u64_key(&v)))
    }

    /// Every courier's committed seq (for re-announcing acks after a restart).
    pub fn committed_seqs(&self) -> impl Iterator<Item = Result<(String, u64), StoreError>> + '_ {
        self.committed_seq.iter().map(|entry| {
            let (courier, seq) = entry?;
            Ok((String::from_utf8_lossy(&courier).into_owned(), u64_key(&seq)))
        })
    }

    /// Where `locusd replay` stopped in the file with identity `key`.
    pub fn replay_progress(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.replay_progress.get(key)?.map(|v| v.to_vec()))
    }

    /// Whether a courier's track holds a fix at device time `ts_ms`.
    pub fn has_track_fix(&self, courier: &str, ts_ms: u64) -> Result<bool, StoreError> {
        Ok(self.track.contains_key(track_key(courier, ts_ms))?)
    }

    /// The last location of a courier.
    pub fn last_location(&self, courier: &str) -> Result<Option<StoredFix>, StoreError> {
        self.last_location.get(courier)?.map(|v| decode("last_location", &v)).transpose()
    }

    /// The last location of an order, with its courier.
    pub fn order_location(&self, order: &str) -> Result<Option<(String, StoredFix)>, StoreError> {
        self.order_location.get(order)?.map(|v| decode("order_location", &v)).transpose()
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
        let start = track_key(courier, since.unwrap_or(0));
        let end = track_key(courier, until.unwrap_or(u64::MAX));
        let range = self.track.range(start..=end);
        let entries: Vec<_> = if since.is_some() {
            range.take(limit).collect::<Result<_, _>>()?
        } else {
            let mut newest: Vec<_> = range.rev().take(limit).collect::<Result<_, _>>()?;
            newest.reverse();
            newest
        };
        entries.iter().map(|(_, v)| decode("track", v)).collect()
    }

    /// Dead letters with id ≥ `after + 1`, oldest first, with their ids.
    pub fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        self.dead_letters
            .range((after.saturating_add(1)).to_be_bytes()..)
            .take(limit)
            .map(|entry| {
                let (k, v) = entry?;
                Ok((u64_key(&k), decode("dead_letters", &v)?))
            })
            .collect()
    }

    /// Removes track fixes older than `min_ts_ms` and beyond `max_per_courier` per courier, and
    /// dead letters beyond `max_dead_letters`. Returns how many entries were removed.
    pub fn prune(
        &self,
        min_ts_ms: u64,
        max_per_courier: usize,
        max_dead_letters: usize,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        for courier in self.last_location.iter().keys() {
            let courier = courier?;
            let courier = String::from_utf8_lossy(&courier);
            let prefix = track_prefix(&courier);
            let mut batch = sled::Batch::default();
            for (kept, key) in self.track.scan_prefix(&prefix).keys().rev().enumerate() {
                let key = key?;
                let ts = u64_key(&key[prefix.len()..]);
                if kept >= max_per_courier || ts < min_ts_ms {
                    batch.remove(key);
                    removed += 1;
                }
            }
            self.track.apply_batch(batch)?;
        }
        if let (Some((first, _)), Some(last)) =
            (self.dead_letters.first()?, last_id(&self.dead_letters)?)
        {
            let first = u64_key(&first);
            let keep_from = last.saturating_sub(max_dead_letters as u64) + 1;
            if first < keep_from {
                let mut batch = sled::Batch::default();
                for key in self.dead_letters.range(..keep_from.to_be_bytes()).keys() {
                    batch.remove(key?);
                    removed += 1;
                }
                self.dead_letters.apply_batch(batch)?;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::wire::Fix;

    fn stored(ts: u64) -> StoredFix {
        StoredFix { fix: Fix::from_degrees(ts, 1.0, 2.0), attributes: vec![], received_ms: ts }
    }

    #[test]
    fn track_pages_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = CommitBatch::default();
        for ts in 1..=10 {
            batch.track.push(("c1".into(), stored(ts)));
            batch.track.push(("c10".into(), stored(ts + 100)));
        }
        batch.last_location.insert("c1".into(), stored(10));
        batch.last_location.insert("c10".into(), stored(110));
        store.apply(&batch).unwrap();
        let ts = |fixes: Vec<StoredFix>| fixes.iter().map(|f| f.fix.ts_ms).collect::<Vec<_>>();
        assert_eq!(ts(store.track("c1", None, None, 3).unwrap()), [8, 9, 10]);
        assert_eq!(ts(store.track("c1", Some(2), None, 3).unwrap()), [2, 3, 4]);
        assert_eq!(ts(store.track("c1", Some(2), Some(3), 30).unwrap()), [2, 3]);
        // "c1" must not see "c10"'s fixes although it is a byte prefix of it.
        assert_eq!(store.track("c1", None, None, 100).unwrap().len(), 10);

        assert_eq!(store.prune(3, 5, 10).unwrap(), 10);
        assert_eq!(ts(store.track("c1", None, None, 100).unwrap()), [6, 7, 8, 9, 10]);
        assert_eq!(store.track("c10", None, None, 100).unwrap().len(), 5);
    }

    #[test]
    fn dead_letters_page_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let letter = |n: u8| DeadLetter {
            reason: "malformed".into(),
            detail: format!("#{n}"),
            topic: "t".into(),
            courier: None,
            received_ms: 0,
            payload: vec![n],
        };
        store.record_dead_letters((0..5).map(letter).collect()).unwrap();
        let page = store.dead_letters(0, 2).unwrap();
        assert_eq!(page.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(store.dead_letters(2, 10).unwrap().len(), 3);
        store.prune(0, 10, 2).unwrap();
        let left = store.dead_letters(0, 10).unwrap();
        assert_eq!(left.iter().map(|(_, l)| l.payload[0]).collect::<Vec<_>>(), [3, 4]);
        // Ids keep increasing after a reopen.
        drop(store);
        let store = reopen(dir.path());
        store.record_dead_letters(vec![letter(9)]).unwrap();
        assert_eq!(store.dead_letters(5, 10).unwrap()[0].0, 6);
    }

    /// Opens a store just dropped in this process. sled's background IO threads can still hold
    /// the database's file lock for a moment after the last handle is dropped (seen on a loaded
    /// machine), so the reopen waits for it instead of failing at random.
    fn reopen(dir: &std::path::Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match Store::open(dir) {
                Ok(store) => return store,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("reopen: {e}; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        }
    }
}
