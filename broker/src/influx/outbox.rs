//! The InfluxDB outbox: the part of the store's commit log the shipper has not finished.
//!
//! There is no second copy of a fix: the [`Shipper`](super::Shipper) reads log entries after
//! its cursor ([`Store::shipper_read`]), turns each entry's fixes into line protocol with
//! [`point`](super::line_protocol::point), and tells the store once InfluxDB took (or
//! dead-lettered) every line of an entry ([`Store::shipper_done`]), which moves the cursor.
//! A batch of a commit's lines is an [`Entry`]: a commit under load holds hundreds of fixes,
//! so the per-entry costs all but vanish.
//!
//! Depth and limit count fixes (lines): the store counts them as commits are written and as
//! the shipper finishes them. At `[influx] max_outbox_fixes` the intake takes no more reports
//! (acks held back), so an InfluxDB outage never grows the log without bound.

use super::config::InfluxConfig;
use super::line_protocol::{self, SchemaConfig};
use crate::store::{LogEntry, Store, StoreError};
use std::sync::Arc;
use tokio::sync::Notify;

/// The lines of one log entry as the shipper reads it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The log id, big-endian (the shipper's "after" position).
    pub(crate) key: sled::IVec,
    /// Newline-separated lines.
    pub(crate) value: sled::IVec,
    /// How many lines `value` holds.
    pub(crate) lines: u64,
}

impl Entry {
    /// Each line, as a slice of the entry's buffer (no copy).
    pub(crate) fn split_lines(&self) -> impl Iterator<Item = sled::IVec> + '_ {
        let mut start = 0;
        lines_of(&self.value).map(move |line| {
            let piece = self.value.subslice(start, line.len());
            start += line.len() + 1;
            piece
        })
    }

    fn id(&self) -> u64 {
        self.key.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0)
    }
}

/// The lines of an outbox value.
pub fn lines_of(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b'\n')
}

/// The shipper's view of the commit log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    schema: SchemaConfig,
    max_fixes: u64,
    batch_lines: u64,
    /// Wakes the shipper when a full batch is waiting.
    batch_ready: Notify,
    /// Set when someone waits for what is in the outbox (acks in cluster mode): the shipper
    /// sends what it has without waiting for a full batch or its interval.
    urgent: std::sync::atomic::AtomicBool,
}

impl Outbox {
    /// The outbox of `store` (opened with `keep_for_shipper`), with what was left from before.
    pub fn open(store: &Store, config: &InfluxConfig) -> Outbox {
        let waiting = store.shipper_pending();
        if waiting > 0 {
            tracing::info!(
                lines = waiting,
                "InfluxDB outbox holds fixes from before; shipping them"
            );
        }
        Outbox {
            inner: Arc::new(Inner {
                store: store.clone(),
                schema: config.schema(),
                max_fixes: config.max_outbox_fixes,
                batch_lines: config.batch_lines as u64,
                batch_ready: Notify::new(),
                urgent: false.into(),
            }),
        }
    }

    /// Tells the shipper a commit was written (it wakes once a full batch waits).
    pub fn committed(&self) {
        if self.depth() >= self.inner.batch_lines {
            self.inner.batch_ready.notify_one();
        }
    }

    /// Asks the shipper to send what is waiting now, not at its next interval: something
    /// waits for it (in cluster mode, acks are sent only once their fixes are in InfluxDB).
    pub fn ship_now(&self) {
        self.inner.urgent.store(true, std::sync::atomic::Ordering::Release);
        self.inner.batch_ready.notify_one();
    }

    /// Whether [`Outbox::ship_now`] was asked since the last call.
    pub(crate) fn take_urgent(&self) -> bool {
        self.inner.urgent.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Fixes (lines) waiting.
    pub fn depth(&self) -> u64 {
        self.inner.store.shipper_pending()
    }

    /// The configured size limit, fixes.
    pub fn max_fixes(&self) -> u64 {
        self.inner.max_fixes
    }

    /// Whether the outbox holds `max_outbox_fixes` fixes or more: the intake must stop taking
    /// reports.
    pub fn at_limit(&self) -> bool {
        self.depth() >= self.inner.max_fixes
    }

    /// Server receive time (Unix ms) of the oldest waiting fix, `None` when nothing waits.
    pub fn oldest_received_ms(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.store.shipper_read(None, 1)?.first().and_then(|(_, entry)| match entry {
            LogEntry::Commit(record) => Some(record.received_ms),
            LogEntry::LegacyLines(lines) => {
                lines_of(lines).next().and_then(line_protocol::received_ms_of_line)
            }
            LogEntry::Orders(record) => Some(record.received_ms),
            LogEntry::Replica(record) => Some(record.received_ms),
        }))
    }

    /// The oldest entries after the one with key `after` (from the shipper's cursor when
    /// `None`), whole, until they hold at least `max_lines` lines (so a batch exceeds
    /// `max_lines` by less than one commit). Entries without fixes are finished on the spot.
    pub(crate) fn read_batch(
        &self,
        after: Option<&[u8]>,
        max_lines: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let after = after.and_then(|k| k.try_into().ok()).map(u64::from_be_bytes);
        let mut batch = Vec::new();
        let mut empty = Vec::new();
        for (id, entry) in self.inner.store.shipper_read(after, max_lines as u64)? {
            // Fixes are lines: one point each (a legacy entry counts its lines).
            let lines = entry.fixes();
            let value = match entry {
                LogEntry::Commit(record) => {
                    let mut value = String::with_capacity(record.fixes.len() * 128);
                    for (i, (courier, fix)) in record.stored_fixes().enumerate() {
                        if i > 0 {
                            value.push('\n');
                        }
                        line_protocol::write_point(&mut value, courier, &fix, &self.inner.schema);
                    }
                    value.into_bytes()
                }
                LogEntry::LegacyLines(lines) => lines,
                // Order events are not time series, and another worker ships its own
                // commits: nothing to ship.
                LogEntry::Orders(_) | LogEntry::Replica(_) => Vec::new(),
            };
            if lines == 0 {
                empty.push((id, 0));
                continue;
            }
            let key = sled::IVec::from(&id.to_be_bytes());
            batch.push(Entry { key, value: sled::IVec::from(value), lines });
        }
        if !empty.is_empty() {
            self.inner.store.shipper_done(&empty)?;
        }
        Ok(batch)
    }

    /// Finishes shipped (or dead-lettered) entries. Not flushed: if a crash undoes it, the
    /// lines are written again, and InfluxDB overwrites identical points.
    pub(crate) fn remove<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<(), StoreError> {
        let done: Vec<(u64, u64)> = entries.into_iter().map(|e| (e.id(), e.lines)).collect();
        self.inner.store.shipper_done(&done)
    }

    /// Resolves when a full batch may be waiting.
    pub(crate) async fn batch_ready(&self) {
        self.inner.batch_ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Commit, RecordBuilder, StoreOptions};
    use locus_sdk::wire::Fix;

    fn config(max: u64, batch: usize) -> InfluxConfig {
        InfluxConfig { max_outbox_fixes: max, batch_lines: batch, ..InfluxConfig::default() }
    }

    fn commit(store: &Store, times: &[u64]) {
        let mut record = RecordBuilder::new(10);
        for &ts in times {
            record.fix("c1", Fix::from_degrees(ts, 1.0, 2.0), vec![]);
        }
        store.commit(Commit { record: record.finish(), ..Commit::default() }).unwrap();
    }

    #[test]
    fn counts_fixes_limits_and_reads_whole_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(
            dir.path(),
            StoreOptions { keep_for_shipper: true, ..StoreOptions::default() },
        )
        .unwrap();
        // Left from before: lines an older release queued.
        store.append_lines(b"left from before".to_vec()).unwrap();
        let outbox = Outbox::open(&store, &config(4, 2));
        assert_eq!(outbox.depth(), 1);
        assert!(!outbox.at_limit());

        commit(&store, &[2, 3]);
        commit(&store, &[4]);
        assert_eq!(outbox.depth(), 4);
        assert!(outbox.at_limit());
        // The oldest line was not written by `point`: no receive time to read.
        assert_eq!(outbox.oldest_received_ms().unwrap(), None);

        // Whole entries until the batch holds at least two lines.
        let batch = outbox.read_batch(None, 2).unwrap();
        assert_eq!(batch.iter().map(|e| e.lines).collect::<Vec<_>>(), [1, 2]);
        let lines: Vec<_> = batch[1].split_lines().collect();
        assert!(lines[0].starts_with(b"courier_location,courier=c1 lat=1,lon=2"), "{lines:?}");
        // After a batch in flight: the next entries.
        let next = outbox.read_batch(Some(&batch[1].key), 10).unwrap();
        assert_eq!(next.iter().map(|e| e.lines).collect::<Vec<_>>(), [1]);
        outbox.remove(&batch).unwrap();
        assert_eq!(outbox.depth(), 1);
        assert!(!outbox.at_limit());
        assert_eq!(outbox.oldest_received_ms().unwrap(), Some(10));
        outbox.remove(&next).unwrap();
        assert_eq!(outbox.depth(), 0);
        assert!(outbox.read_batch(None, 10).unwrap().is_empty());
    }
}
