//! The InfluxDB outbox: the sled tree `influx_outbox`, written by the commit path, drained by
//! the [`Shipper`](super::Shipper).
//!
//! Enters: lines the commit path inserts in the same atomic sled batch as the fixes they
//! describe (key = `db.generate_id()` as u64 big-endian, so keys are in commit order; value =
//! one line from [`point`](super::line_protocol::point)). Leaves: batches read oldest-first by
//! the shipper, removed only once InfluxDB answered 2xx.
//!
//! Depth: sled's `Tree::len` walks the whole tree, far too slow to ask per commit, so the depth
//! is a counter: counted up when the commit path encodes a point ([`Outbox::point_encoder`]),
//! down when the shipper removes lines, and set to the true count whenever the shipper reads
//! the whole outbox in one batch (the common case when it keeps up). Between two such reads it
//! can be off by the points of a commit in progress; that only moves the size limit by a
//! batch's worth. The counter is set from a full count at [`Outbox::open`].

use super::config::InfluxConfig;
use super::line_protocol::{self, SchemaConfig};
use crate::store::StoredFix;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// The sled tree holding the outbox.
pub const OUTBOX_TREE: &str = "influx_outbox";

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
        // One walk over the keys at start (a few seconds for millions of lines after a long
        // outage); from then on the depth is counted.
        let mut depth = 0u64;
        for key in tree.iter().keys() {
            key?;
            depth += 1;
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

    /// The commit path's point encoder: the line of a fix, counted into the outbox depth. Call
    /// it once per fix that goes into the outbox, just before inserting the line.
    pub fn point_encoder(
        &self,
        schema: SchemaConfig,
    ) -> impl Fn(&str, &StoredFix) -> String + Send + Sync + 'static {
        let outbox = self.clone();
        move |courier, fix| {
            let line = line_protocol::point(courier, fix, &schema);
            outbox.record_enqueued(1);
            line
        }
    }

    /// Counts `lines` lines added by a commit (for commit paths that make lines with
    /// [`point`](super::line_protocol::point) rather than [`Outbox::point_encoder`]).
    pub fn record_enqueued(&self, lines: u64) {
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

    /// Whether the outbox is at its size limit: the pipeline must stop acking new reports.
    /// Logs when the outbox becomes full and when it has room again.
    pub fn is_full(&self) -> bool {
        let full = self.depth() >= self.inner.max_entries;
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
        Ok(self.inner.tree.first()?.and_then(|(_, line)| line_protocol::received_ms_of_line(&line)))
    }

    /// The oldest `max` lines with their keys. Resynchronises the depth counter when that is
    /// all there is.
    pub(crate) fn read_batch(
        &self,
        max: usize,
    ) -> Result<Vec<(sled::IVec, sled::IVec)>, sled::Error> {
        let batch = self.inner.tree.iter().take(max).collect::<Result<Vec<_>, _>>()?;
        if batch.len() < max {
            self.inner.depth.store(batch.len() as u64, Ordering::Relaxed);
        }
        Ok(batch)
    }

    /// Removes shipped (or dead-lettered) lines. Not flushed: if a crash undoes a removal,
    /// the lines are written again, and InfluxDB overwrites identical points.
    pub(crate) fn remove(
        &self,
        keys: impl IntoIterator<Item = sled::IVec>,
    ) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        let mut removed = 0u64;
        for key in keys {
            batch.remove(key);
            removed += 1;
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
    use locus_sdk::wire::Fix;

    fn config(max: u64, batch: usize) -> InfluxConfig {
        InfluxConfig { max_outbox_entries: max, batch_lines: batch, ..InfluxConfig::default() }
    }

    #[test]
    fn counts_limits_and_resyncs() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(OUTBOX_TREE).unwrap();
        tree.insert(1u64.to_be_bytes(), &b"left from before"[..]).unwrap();
        let outbox = Outbox::open(&db, &config(3, 2)).unwrap();
        assert_eq!(outbox.depth(), 1);
        assert!(!outbox.is_full());

        let encode = outbox.point_encoder(SchemaConfig::default());
        for id in 2..=3u64 {
            let fix = StoredFix {
                fix: Fix::from_degrees(id, 1.0, 2.0),
                attributes: vec![],
                received_ms: 10 + id,
            };
            tree.insert(id.to_be_bytes(), encode("c1", &fix).as_bytes()).unwrap();
        }
        assert_eq!(outbox.depth(), 3);
        assert!(outbox.is_full());
        // The oldest line was not written by `point`: no receive time to read.
        assert_eq!(outbox.oldest_received_ms().unwrap(), None);

        let batch = outbox.read_batch(2).unwrap();
        assert_eq!(batch.len(), 2);
        outbox.remove(batch.into_iter().map(|(k, _)| k)).unwrap();
        assert_eq!(outbox.depth(), 1);
        assert!(!outbox.is_full());
        assert_eq!(outbox.oldest_received_ms().unwrap(), Some(13));

        // A miscount heals when the shipper sees the whole outbox.
        outbox.record_enqueued(5);
        assert_eq!(outbox.read_batch(10).unwrap().len(), 1);
        assert_eq!(outbox.depth(), 1);
    }
}
