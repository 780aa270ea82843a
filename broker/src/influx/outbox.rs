//! The InfluxDB outbox: the sled tree `influx_outbox`, written by the commit path, drained by
//! the [`Shipper`](super::Shipper).
//!
//! Enters: one entry per commit, inserted in the same atomic sled batch as the fixes it
//! describes. Key = `db.generate_id()` as u64 big-endian, so entries are in commit order; value
//! = the commit's lines from [`point`](super::line_protocol::point), newline-separated (see
//! [`entry`]), which is already a line-protocol body. Leaves: whole entries read oldest-first by
//! the shipper, removed only once InfluxDB took (or dead-lettered) every line in them.
//!
//! Why an entry per commit and not per line: sled costs microseconds per key read and removed,
//! which at 100k fixes/s was most of the shipper's CPU. A commit under load holds hundreds of
//! fixes, so the per-key cost all but vanishes. Entries written one line each (before this
//! format, or by a commit of one fix) are the same format with one line.
//!
//! Depth: sled's `Tree::len` walks the whole tree, far too slow to ask per commit, so the depth
//! (in lines) is a counter: counted up once a commit has applied ([`Outbox::record_enqueued`]),
//! down when the shipper removes entries, and set to the true count whenever the shipper reads
//! the whole outbox in one batch (the common case when it keeps up). Between two such reads it
//! can be off by the lines of a commit in progress; that only moves the size limit by a
//! commit's worth. The counter is set from a full count at [`Outbox::open`].

use super::config::InfluxConfig;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// The sled tree holding the outbox.
pub const OUTBOX_TREE: &str = "influx_outbox";

/// The outbox value for the lines of one commit: newline-separated, no trailing newline.
/// `None` when there are no lines (then the commit adds no entry).
pub fn entry<L: AsRef<str>>(lines: &[L]) -> Option<Vec<u8>> {
    let (first, rest) = lines.split_first()?;
    let size = lines.iter().map(|l| l.as_ref().len() + 1).sum();
    let mut value = Vec::with_capacity(size);
    value.extend_from_slice(first.as_ref().as_bytes());
    for line in rest {
        value.push(b'\n');
        value.extend_from_slice(line.as_ref().as_bytes());
    }
    Some(value)
}

/// The lines of an outbox value (the inverse of [`entry`]).
pub fn lines_of(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b'\n')
}

/// One outbox entry as the shipper reads it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: sled::IVec,
    /// Newline-separated lines.
    pub(crate) value: sled::IVec,
    /// How many lines `value` holds.
    pub(crate) lines: u64,
}

impl Entry {
    fn new(key: sled::IVec, value: sled::IVec) -> Entry {
        let lines = lines_in(&value);
        Entry { key, value, lines }
    }

    /// Each line, as a slice of the entry's buffer (no copy).
    pub(crate) fn split_lines(&self) -> impl Iterator<Item = sled::IVec> + '_ {
        let mut start = 0;
        lines_of(&self.value).map(move |line| {
            let piece = self.value.subslice(start, line.len());
            start += line.len() + 1;
            piece
        })
    }
}

/// How many lines an outbox value holds.
fn lines_in(value: &[u8]) -> u64 {
    1 + value.iter().filter(|&&b| b == b'\n').count() as u64
}

/// The durable queue of lines waiting for InfluxDB. Cheap to clone; all clones share one
/// depth counter.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tree: sled::Tree,
    max_entries: u64,
    batch_lines: u64,
    depth: AtomicU64,
    /// Whether the outbox was full when last asked, so logs say it once per episode.
    full: AtomicBool,
    /// Wakes the shipper when a full batch is waiting.
    batch_ready: Notify,
}

impl Outbox {
    /// Opens the `influx_outbox` tree of `db` and counts what is left in it from before.
    pub fn open(db: &sled::Db, config: &InfluxConfig) -> Result<Outbox, sled::Error> {
        Outbox::from_tree(db.open_tree(OUTBOX_TREE)?, config)
    }

    /// Wraps an already open outbox tree and counts what is left in it from before.
    pub fn from_tree(tree: sled::Tree, config: &InfluxConfig) -> Result<Outbox, sled::Error> {
        // One walk at start (seconds for millions of lines after a long outage); from then on
        // the depth is counted.
        let mut depth = 0u64;
        for value in tree.iter().values() {
            depth += lines_in(&value?);
        }
        if depth > 0 {
            tracing::info!(lines = depth, "InfluxDB outbox holds lines from before; shipping them");
        }
        Ok(Outbox {
            inner: Arc::new(Inner {
                tree,
                max_entries: config.max_outbox_entries,
                batch_lines: config.batch_lines as u64,
                depth: AtomicU64::new(depth),
                full: AtomicBool::new(false),
                batch_ready: Notify::new(),
            }),
        })
    }

    /// The sled tree (for the commit path's transaction).
    pub fn tree(&self) -> &sled::Tree {
        &self.inner.tree
    }

    /// Counts `lines` lines a commit has just added. Call it after the commit applied, so a
    /// failed commit never counts.
    pub fn record_enqueued(&self, lines: u64) {
        if lines == 0 {
            return;
        }
        let depth = self.inner.depth.fetch_add(lines, Ordering::Relaxed) + lines;
        if depth >= self.inner.batch_lines {
            self.inner.batch_ready.notify_one();
        }
    }

    /// Lines waiting (see the module doc for how exact this is).
    pub fn depth(&self) -> u64 {
        self.inner.depth.load(Ordering::Relaxed)
    }

    /// The configured size limit, lines.
    pub fn max_entries(&self) -> u64 {
        self.inner.max_entries
    }

    /// Whether the outbox holds `max_outbox_entries` lines or more (no logging; see
    /// [`Outbox::is_full`] for the server's check).
    pub fn at_limit(&self) -> bool {
        self.depth() >= self.inner.max_entries
    }

    /// Whether the outbox is at its size limit: the pipeline must stop acking new reports.
    /// Logs when the outbox becomes full and when it has room again.
    pub fn is_full(&self) -> bool {
        let full = self.at_limit();
        if self.inner.full.swap(full, Ordering::Relaxed) != full {
            if full {
                tracing::warn!(
                    limit = self.inner.max_entries,
                    "InfluxDB outbox is full: new reports are not acked (devices keep and resend \
                     them) until InfluxDB takes writes again"
                );
            } else {
                tracing::info!(depth = self.depth(), "InfluxDB outbox has room again");
            }
        }
        full
    }

    /// Server receive time (Unix ms) of the oldest line, `None` when the outbox is empty.
    pub fn oldest_received_ms(&self) -> Result<Option<u64>, sled::Error> {
        Ok(self.inner.tree.first()?.and_then(|(_, value)| {
            lines_of(&value).next().and_then(super::line_protocol::received_ms_of_line)
        }))
    }

    /// The oldest entries after key `after` (from the start when `None`), whole, until they
    /// hold at least `max_lines` lines (so a batch exceeds `max_lines` by less than one
    /// commit). Resynchronises the depth counter when it read from the start to the end.
    pub(crate) fn read_batch(
        &self,
        after: Option<&[u8]>,
        max_lines: usize,
    ) -> Result<Vec<Entry>, sled::Error> {
        let mut entries = match after {
            None => self.inner.tree.iter(),
            Some(key) => {
                self.inner.tree.range::<&[u8], _>((Bound::Excluded(key), Bound::Unbounded))
            }
        };
        let mut batch = Vec::new();
        let mut lines = 0u64;
        while lines < max_lines as u64 {
            let Some(next) = entries.next() else {
                if after.is_none() {
                    self.inner.depth.store(lines, Ordering::Relaxed);
                }
                break;
            };
            let (key, value) = next?;
            let entry = Entry::new(key, value);
            lines += entry.lines;
            batch.push(entry);
        }
        Ok(batch)
    }

    /// Removes shipped (or dead-lettered) entries. Not flushed: if a crash undoes a removal,
    /// the lines are written again, and InfluxDB overwrites identical points.
    pub(crate) fn remove<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        let mut removed = 0u64;
        for entry in entries {
            batch.remove(entry.key.clone());
            removed += entry.lines;
        }
        self.inner.tree.apply_batch(batch)?;
        // Saturating: a resync may already have counted these out.
        let _ = self.inner.depth.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
            Some(d.saturating_sub(removed))
        });
        Ok(())
    }

    /// Resolves when a full batch may be waiting.
    pub(crate) async fn batch_ready(&self) {
        self.inner.batch_ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::influx::line_protocol::{point, SchemaConfig};
    use crate::store::StoredFix;
    use locus_sdk::wire::Fix;

    fn config(max: u64, batch: usize) -> InfluxConfig {
        InfluxConfig { max_outbox_entries: max, batch_lines: batch, ..InfluxConfig::default() }
    }

    fn line(ts: u64) -> String {
        let fix = StoredFix {
            fix: Fix::from_degrees(ts, 1.0, 2.0),
            attributes: vec![],
            received_ms: 10 + ts,
        };
        point("c1", &fix, &SchemaConfig::default())
    }

    #[test]
    fn entries_hold_the_lines_of_a_commit() {
        assert_eq!(entry::<String>(&[]), None);
        let value = entry(&["a 1", "b 2", "c 3"]).unwrap();
        assert_eq!(value, b"a 1\nb 2\nc 3");
        assert_eq!(lines_of(&value).collect::<Vec<_>>(), [&b"a 1"[..], b"b 2", b"c 3"]);
        let read = Entry::new(sled::IVec::from(&b"k"[..]), sled::IVec::from(value));
        assert_eq!(read.lines, 3);
        let split: Vec<_> = read.split_lines().collect();
        assert_eq!(split, [&b"a 1"[..], b"b 2", b"c 3"]);
    }

    #[test]
    fn counts_lines_limits_and_resyncs() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(OUTBOX_TREE).unwrap();
        // Left from before: an entry of one line, the way older versions wrote every line.
        tree.insert(1u64.to_be_bytes(), &b"left from before"[..]).unwrap();
        let outbox = Outbox::open(&db, &config(4, 2)).unwrap();
        assert_eq!(outbox.depth(), 1);
        assert!(!outbox.is_full());

        // Two commits of two and one lines.
        tree.insert(2u64.to_be_bytes(), entry(&[line(2), line(3)]).unwrap()).unwrap();
        outbox.record_enqueued(2);
        tree.insert(3u64.to_be_bytes(), entry(&[line(4)]).unwrap()).unwrap();
        outbox.record_enqueued(1);
        assert_eq!(outbox.depth(), 4);
        assert!(outbox.is_full());
        // The oldest line was not written by `point`: no receive time to read.
        assert_eq!(outbox.oldest_received_ms().unwrap(), None);

        // Whole entries until the batch holds at least two lines.
        let batch = outbox.read_batch(None, 2).unwrap();
        assert_eq!(batch.iter().map(|e| e.lines).collect::<Vec<_>>(), [1, 2]);
        // After a batch in flight: the next entries, and no resync (the depth is still 4).
        let next = outbox.read_batch(Some(&batch[1].key), 10).unwrap();
        assert_eq!(next.iter().map(|e| e.lines).collect::<Vec<_>>(), [1]);
        assert_eq!(outbox.depth(), 4);
        outbox.remove(&batch).unwrap();
        assert_eq!(outbox.depth(), 1);
        assert!(!outbox.is_full());
        assert_eq!(outbox.oldest_received_ms().unwrap(), Some(14));

        // A miscount heals when the shipper sees the whole outbox.
        outbox.record_enqueued(5);
        assert_eq!(outbox.read_batch(None, 10).unwrap().len(), 1);
        assert_eq!(outbox.depth(), 1);
    }
}
