//! Opening a data dir written by an older release (layout 1: a sled key per track fix).
//!
//! Layout 1 trees and what they become:
//! - `committed_seq` (courier → highest committed seq, u64 BE) and `last_location` (courier →
//!   [`StoredFix`]) → one [`CourierRecord`] per courier in `courier_state`; the seq becomes the
//!   watermark (layout 1 acked it, so every seq up to it was taken);
//! - `track` (courier `0x00` device time → [`StoredFix`]) → blocks in `track_blocks`;
//! - `influx_outbox` (id → newline-separated lines) → [`LogEntry::LegacyLines`] entries at the
//!   start of the log, which the shipper sends first;
//! - `order_location`, `dead_letters`, `replay_progress`, `plugins`: unchanged.
//!
//! Crash-safe: the new trees are cleared and written, the layout version is set and flushed,
//! and only then are the old trees dropped. A crash before the version is durable redoes the
//! migration from the start; after it, only the dropping.

use super::live::CourierRecord;
use super::log::{self, LogEntry};
use super::seqs::SeqWindow;
use super::track::{block_key, TrackBlock, BLOCK_FIXES, BLOCK_SPAN_MS};
use super::{decode, encode, StoreError, StoredFix, FORMAT, META_FORMAT, META_NEXT_BLOCK_ID};
use super::{META_SHIPPER_CURSOR, META_VIEWS_CURSOR};
use std::collections::BTreeMap;

const OLD_TREES: [&str; 4] = ["committed_seq", "last_location", "track", "influx_outbox"];

/// Migrates layout 1 when the data dir holds it; otherwise does nothing.
pub(super) fn run(
    db: &sled::Db,
    meta: &sled::Tree,
    log: &sled::Tree,
    courier_state: &sled::Tree,
    track: &sled::Tree,
) -> Result<(), StoreError> {
    let names = db.tree_names();
    let present: Vec<&str> = OLD_TREES
        .into_iter()
        .filter(|t| names.iter().any(|n| n.as_ref() == t.as_bytes()))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    if meta.get(META_FORMAT)?.is_none() {
        let started = std::time::Instant::now();
        tracing::info!("data dir from an older release: migrating it to the commit-log layout");
        for tree in [log, courier_state, track] {
            tree.clear()?;
        }
        let couriers = migrate_couriers(db, courier_state)?;
        let (fixes, next_block_id) = migrate_track(db, track)?;
        let outbox_entries = migrate_outbox(db, log)?;
        meta.insert(META_VIEWS_CURSOR, &outbox_entries.to_be_bytes())?;
        meta.insert(META_SHIPPER_CURSOR, &0u64.to_be_bytes())?;
        meta.insert(META_NEXT_BLOCK_ID, &next_block_id.to_be_bytes())?;
        meta.insert(META_FORMAT, &FORMAT.to_be_bytes())?;
        db.flush()?;
        tracing::info!(
            couriers,
            fixes,
            outbox_entries,
            seconds = started.elapsed().as_secs_f64(),
            "migrated the data dir"
        );
    }
    for name in present {
        db.drop_tree(name)?;
    }
    db.flush()?;
    Ok(())
}

fn migrate_couriers(db: &sled::Db, courier_state: &sled::Tree) -> Result<usize, StoreError> {
    let mut records: BTreeMap<Vec<u8>, CourierRecord> = BTreeMap::new();
    for entry in db.open_tree("committed_seq")?.iter() {
        let (courier, seq) = entry?;
        let seq = seq.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
        records.entry(courier.to_vec()).or_default().seqs = SeqWindow::from_watermark(seq);
    }
    for entry in db.open_tree("last_location")?.iter() {
        let (courier, fix) = entry?;
        records.entry(courier.to_vec()).or_default().last =
            Some(decode::<StoredFix>("last_location", &fix)?);
    }
    let mut batch = sled::Batch::default();
    for (courier, record) in &records {
        batch.insert(courier.as_slice(), encode(record));
    }
    courier_state.apply_batch(batch)?;
    Ok(records.len())
}

/// Returns the fixes moved and the next free block id.
fn migrate_track(db: &sled::Db, track: &sled::Tree) -> Result<(u64, u64), StoreError> {
    let mut next_id = 1u64;
    let mut fixes_moved = 0u64;
    let mut batch = sled::Batch::default();
    let mut batched = 0usize;
    // Keys are courier 0x00 ts, so one courier's fixes come together, oldest first.
    let mut current: Option<(Vec<u8>, u64, Vec<StoredFix>)> = None;
    let flush_block =
        |block: (Vec<u8>, u64, Vec<StoredFix>), batch: &mut sled::Batch, next_id: &mut u64| {
            let (courier, first_ts, fixes) = block;
            let key = block_key(&String::from_utf8_lossy(&courier), first_ts, *next_id);
            *next_id += 1;
            batch.insert(key, encode(&TrackBlock { fixes }));
        };
    for entry in db.open_tree("track")?.iter() {
        let (key, value) = entry?;
        // Courier ids never hold a 0 byte; the device time after it may.
        let Some(split) = key.len().checked_sub(9).filter(|&i| key[i] == 0) else {
            continue;
        };
        let courier = &key[..split];
        let fix: StoredFix = decode("track", &value)?;
        let ts = fix.fix.ts_ms;
        let fits = current.as_ref().is_some_and(|(c, first, fixes)| {
            c.as_slice() == courier && fixes.len() < BLOCK_FIXES && ts - first < BLOCK_SPAN_MS
        });
        if !fits {
            if let Some(block) = current.take() {
                flush_block(block, &mut batch, &mut next_id);
                batched += 1;
            }
            current = Some((courier.to_vec(), ts, Vec::with_capacity(BLOCK_FIXES)));
        }
        current.as_mut().expect("set above").2.push(fix);
        fixes_moved += 1;
        if batched >= 1_000 {
            track.apply_batch(std::mem::take(&mut batch))?;
            batched = 0;
        }
    }
    if let Some(block) = current.take() {
        flush_block(block, &mut batch, &mut next_id);
    }
    track.apply_batch(batch)?;
    Ok((fixes_moved, next_id))
}

/// Moves the outbox's entries to the start of the log, in order; returns how many.
fn migrate_outbox(db: &sled::Db, log_tree: &sled::Tree) -> Result<u64, StoreError> {
    let mut id = 0u64;
    for entry in db.open_tree("influx_outbox")?.iter() {
        let (_, lines) = entry?;
        id += 1;
        log_tree.insert(log::key(id), LogEntry::LegacyLines(lines.to_vec()).encode())?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::super::{Store, StoreOptions};
    use super::*;
    use locus_sdk::wire::Fix;

    fn stored(ts: u64) -> StoredFix {
        StoredFix { fix: Fix::from_degrees(ts, 1.0, 2.0), attributes: vec![], received_ms: ts }
    }

    /// Writes the layout-1 trees the way release 0.1's `Store::apply` did.
    fn layout_1(dir: &std::path::Path) {
        let db = sled::open(dir).unwrap();
        let track = db.open_tree("track").unwrap();
        for ts in 1..=100u64 {
            let mut key = b"c1\0".to_vec();
            key.extend_from_slice(&ts.to_be_bytes());
            track.insert(key, encode(&stored(ts))).unwrap();
        }
        db.open_tree("last_location").unwrap().insert("c1", encode(&stored(100))).unwrap();
        db.open_tree("committed_seq").unwrap().insert("c1", &42u64.to_be_bytes()).unwrap();
        let outbox = db.open_tree("influx_outbox").unwrap();
        outbox.insert(7u64.to_be_bytes(), &b"a 1\nb 2"[..]).unwrap();
        outbox.insert(9u64.to_be_bytes(), &b"c 3"[..]).unwrap();
        db.flush().unwrap();
    }

    #[test]
    fn a_layout_1_data_dir_opens_with_everything_in_it() {
        let dir = tempfile::tempdir().unwrap();
        layout_1(dir.path());
        let store = Store::open_with(
            dir.path(),
            StoreOptions { keep_for_shipper: true, ..StoreOptions::default() },
        )
        .unwrap();
        assert_eq!(store.seq_window("c1").watermark(), 42);
        assert_eq!(store.last_location("c1").unwrap(), Some(stored(100)));
        let track = store.track("c1", None, None, 1_000).unwrap();
        assert_eq!(
            track.iter().map(|f| f.fix.ts_ms).collect::<Vec<_>>(),
            (1..=100).collect::<Vec<_>>()
        );
        assert_eq!(store.shipper_pending(), 3);
        let waiting = store.shipper_read(None, 10).unwrap();
        let lines: Vec<_> = waiting.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(
            lines,
            [LogEntry::LegacyLines(b"a 1\nb 2".to_vec()), LogEntry::LegacyLines(b"c 3".to_vec())]
        );
        assert!(store.inner.db.tree_names().iter().all(|n| n.as_ref() != b"track"));
    }
}
