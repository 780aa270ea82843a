//! The track view: every courier's fixes as blocks, so that writing costs a fraction of a sled
//! insert per fix and reading a stretch of track is a short range scan.
//!
//! Tree `track_blocks`: key = courier, `0x00`, the block's first device time (u64 BE), a block
//! id (u64 BE, unique); value = a postcard [`TrackBlock`]: up to [`BLOCK_FIXES`] fixes sorted by
//! device time, all within [`BLOCK_SPAN_MS`] of the first. The span bound is what lets a read
//! for a time range start its scan a span early and know it has seen every block that can hold
//! a fix in the range, even though late fixes make blocks overlap.
//!
//! Blocks are built in memory ([`OpenTracks`]) as the log is applied and written at each
//! checkpoint (rewritten while they grow); full blocks, and blocks no fix was added to for a
//! whole checkpoint interval, leave memory once written. Reads merge the written blocks with
//! the open ones (an open block replaces its older written copy).

use super::{decode, encode, StoreError, StoredFix};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The sled tree of the track.
pub(super) const TRACK_TREE: &str = "track_blocks";

/// Most fixes in one block.
pub const BLOCK_FIXES: usize = 64;

/// A block holds fixes within this much device time of its first, ms.
pub const BLOCK_SPAN_MS: u64 = 10 * 60 * 1000;

/// Most blocks taking fixes per courier at once (a live one and one for a backlog arriving
/// out of order); another one seals the oldest.
const OPEN_PER_COURIER: usize = 2;

/// One block of a courier's track.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct TrackBlock {
    /// Sorted by device time (stable: equal times keep their commit order).
    pub(super) fixes: Vec<StoredFix>,
}

/// The key of a block.
pub(super) fn block_key(courier: &str, first_ts: u64, id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(courier.len() + 17);
    key.extend_from_slice(courier.as_bytes());
    key.push(0);
    key.extend_from_slice(&first_ts.to_be_bytes());
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn courier_prefix(courier: &str) -> Vec<u8> {
    let mut key = courier.as_bytes().to_vec();
    key.push(0);
    key
}

/// The first device time in a block key.
fn first_ts_of(key: &[u8], prefix_len: usize) -> u64 {
    key.get(prefix_len..prefix_len + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// A block still in memory.
#[derive(Debug)]
struct OpenBlock {
    key: Vec<u8>,
    first_ts: u64,
    fixes: Vec<StoredFix>,
    /// How many of `fixes` the written copy holds.
    written: usize,
    /// Takes no more fixes (full, or pushed out by a newer block).
    sealed: bool,
    /// A fix was added since the last checkpoint.
    touched: bool,
}

impl OpenBlock {
    fn takes(&self, ts: u64) -> bool {
        !self.sealed
            && self.fixes.len() < BLOCK_FIXES
            && ts >= self.first_ts
            && ts - self.first_ts < BLOCK_SPAN_MS
    }
}

/// A block to write at a checkpoint.
#[derive(Debug)]
pub(super) struct BlockWrite {
    pub(super) courier: String,
    pub(super) key: Vec<u8>,
    pub(super) value: Vec<u8>,
    pub(super) len: usize,
}

/// The blocks being built in memory.
#[derive(Debug, Default)]
pub(super) struct OpenTracks {
    couriers: HashMap<String, Vec<OpenBlock>>,
    next_block_id: u64,
}

impl OpenTracks {
    /// Open tracks whose new blocks get ids from `next_block_id` on.
    pub(super) fn new(next_block_id: u64) -> OpenTracks {
        OpenTracks { couriers: HashMap::new(), next_block_id }
    }

    /// The next unused block id (kept with the checkpoint).
    pub(super) fn next_block_id(&self) -> u64 {
        self.next_block_id
    }

    /// Adds a committed fix.
    pub(super) fn add(&mut self, courier: &str, fix: StoredFix) {
        let ts = fix.fix.ts_ms;
        let blocks = match self.couriers.get_mut(courier) {
            Some(blocks) => blocks,
            None => self.couriers.entry(courier.to_owned()).or_default(),
        };
        let block = match blocks.iter().position(|b| b.takes(ts)) {
            Some(i) => &mut blocks[i],
            None => {
                let mut open = blocks.iter_mut().filter(|b| !b.sealed).collect::<Vec<_>>();
                if open.len() >= OPEN_PER_COURIER {
                    open[0].sealed = true;
                }
                let id = self.next_block_id;
                self.next_block_id += 1;
                blocks.push(OpenBlock {
                    key: block_key(courier, ts, id),
                    first_ts: ts,
                    fixes: Vec::with_capacity(8),
                    written: 0,
                    sealed: false,
                    touched: false,
                });
                blocks.last_mut().expect("just pushed")
            }
        };
        let at = block.fixes.partition_point(|f| f.fix.ts_ms <= ts);
        block.fixes.insert(at, fix);
        block.touched = true;
        if block.fixes.len() >= BLOCK_FIXES {
            block.sealed = true;
        }
    }

    /// Whether an open block holds a fix of `courier` at device time `ts`.
    pub(super) fn has_fix_at(&self, courier: &str, ts: u64) -> bool {
        self.couriers.get(courier).is_some_and(|blocks| {
            blocks.iter().any(|b| {
                let at = b.fixes.partition_point(|f| f.fix.ts_ms < ts);
                b.fixes.get(at).is_some_and(|f| f.fix.ts_ms == ts)
            })
        })
    }

    /// The blocks that changed since they were last written, encoded; and drops from memory
    /// the blocks that are written and will not change (sealed, or untouched for a whole
    /// interval).
    pub(super) fn checkpoint_writes(&mut self) -> Vec<BlockWrite> {
        let mut writes = Vec::new();
        self.couriers.retain(|courier, blocks| {
            blocks.retain_mut(|b| {
                let written = b.written == b.fixes.len();
                if written && (b.sealed || !b.touched) {
                    return false;
                }
                if !written {
                    let value = encode(&TrackBlockRef { fixes: &b.fixes });
                    writes.push(BlockWrite {
                        courier: courier.clone(),
                        key: b.key.clone(),
                        value,
                        len: b.fixes.len(),
                    });
                }
                b.touched = false;
                true
            });
            !blocks.is_empty()
        });
        writes
    }

    /// Records that a checkpoint wrote `writes`.
    pub(super) fn written(&mut self, writes: &[BlockWrite]) {
        for write in writes {
            if let Some(block) = self
                .couriers
                .get_mut(&write.courier)
                .and_then(|blocks| blocks.iter_mut().find(|b| b.key == write.key))
            {
                block.written = block.written.max(write.len);
            }
        }
    }

    /// Marks every block unwritten (after a checkpoint failed, so the next one writes all).
    pub(super) fn unwritten(&mut self) {
        for block in self.couriers.values_mut().flatten() {
            block.written = 0;
        }
    }

    /// A copy of `courier`'s open blocks (key and fixes), for a read that must not hold the
    /// live view's lock while it scans sled.
    pub(super) fn snapshot(&self, courier: &str) -> OpenSnapshot {
        self.couriers
            .get(courier)
            .into_iter()
            .flatten()
            .map(|b| (b.key.clone(), b.fixes.clone()))
            .collect()
    }
}

/// Open blocks of one courier: (key, fixes).
pub(super) type OpenSnapshot = Vec<(Vec<u8>, Vec<StoredFix>)>;

fn holds(open: &OpenSnapshot, key: &[u8]) -> bool {
    open.iter().any(|(k, _)| k.as_slice() == key)
}

#[derive(Serialize)]
struct TrackBlockRef<'a> {
    fixes: &'a [StoredFix],
}

/// A courier's track between `since` and `until` (device time, inclusive), ascending. With
/// `since`, the first `limit` fixes from it; without, the last `limit` fixes up to `until`.
pub(super) fn read(
    tree: &sled::Tree,
    open: &OpenSnapshot,
    courier: &str,
    since: Option<u64>,
    until: Option<u64>,
    limit: usize,
) -> Result<Vec<StoredFix>, StoreError> {
    let until = until.unwrap_or(u64::MAX);
    let prefix = courier_prefix(courier);
    let in_range = |ts: u64| since.is_none_or(|s| ts >= s) && ts <= until;
    let mut fixes: Vec<StoredFix> = open
        .iter()
        .flat_map(|(_, fixes)| fixes.iter().filter(|f| in_range(f.fix.ts_ms)).cloned())
        .collect();
    // A block can only hold fixes within a span of its first: start the scan a span early.
    let scan_from = since.unwrap_or(0).saturating_sub(BLOCK_SPAN_MS - 1);
    let start = block_key(courier, scan_from, 0);
    let end = block_key(courier, until, u64::MAX);
    let take_block = |key: &[u8], value: &[u8], fixes: &mut Vec<StoredFix>| {
        if holds(open, key) {
            return Ok(());
        }
        let block: TrackBlock = decode(TRACK_TREE, value)?;
        fixes.extend(block.fixes.into_iter().filter(|f| in_range(f.fix.ts_ms)));
        Ok::<_, StoreError>(())
    };
    if since.is_some() {
        // Oldest first: once `limit` fixes are in hand, a block starting after the limit-th
        // oldest cannot change the answer.
        for entry in tree.range(start..=end) {
            let (key, value) = entry?;
            if fixes.len() >= limit
                && first_ts_of(&key, prefix.len()) > nth_ts(&mut fixes, limit, false)
            {
                break;
            }
            take_block(&key, &value, &mut fixes)?;
        }
        fixes.sort_by_key(|f| f.fix.ts_ms);
        fixes.truncate(limit);
    } else {
        // Newest first: once `limit` fixes are in hand, a block whose span ends before the
        // limit-th newest cannot change the answer.
        for entry in tree.range(start..=end).rev() {
            let (key, value) = entry?;
            if fixes.len() >= limit
                && first_ts_of(&key, prefix.len()).saturating_add(BLOCK_SPAN_MS)
                    <= nth_ts(&mut fixes, limit, true)
            {
                break;
            }
            take_block(&key, &value, &mut fixes)?;
        }
        fixes.sort_by_key(|f| f.fix.ts_ms);
        let skip = fixes.len().saturating_sub(limit);
        fixes.drain(..skip);
    }
    Ok(fixes)
}

/// The device time of the `n`th oldest (or newest) fix; `fixes` holds at least `n`.
fn nth_ts(fixes: &mut [StoredFix], n: usize, newest: bool) -> u64 {
    let index = if newest { fixes.len() - n } else { n - 1 };
    fixes.select_nth_unstable_by_key(index, |f| f.fix.ts_ms);
    fixes[index].fix.ts_ms
}

/// Whether the written blocks hold a fix of `courier` at `ts` (open blocks aside).
pub(super) fn has_fix_at(tree: &sled::Tree, courier: &str, ts: u64) -> Result<bool, StoreError> {
    let start = block_key(courier, ts.saturating_sub(BLOCK_SPAN_MS - 1), 0);
    let end = block_key(courier, ts, u64::MAX);
    for entry in tree.range(start..=end) {
        let (_, value) = entry?;
        let block: TrackBlock = decode(TRACK_TREE, &value)?;
        if block.fixes.iter().any(|f| f.fix.ts_ms == ts) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes `courier`'s written blocks whose every fix is older than `min_ts`, and the oldest
/// blocks beyond the newest `max_fixes` fixes (whole blocks: a block is kept while any of its
/// fixes may be). Blocks still open in memory are left alone. Returns the fixes removed.
///
/// Decodes nothing: a block's age comes from its key (every fix is within a span of its first)
/// and its size from the length prefix of its postcard value, so pruning a long track costs a
/// key scan.
pub(super) fn prune(
    tree: &sled::Tree,
    open: &OpenSnapshot,
    courier: &str,
    min_ts: u64,
    max_fixes: usize,
) -> Result<usize, StoreError> {
    let prefix = courier_prefix(courier);
    let mut kept: usize = open.iter().map(|(_, fixes)| fixes.len()).sum();
    let mut removed = 0;
    // Newest first by first device time: late blocks of old fixes sort with their time.
    for entry in tree.scan_prefix(&prefix).rev() {
        let (key, value) = entry?;
        if holds(open, &key) {
            continue;
        }
        let len = block_len(&value)?;
        let all_old = first_ts_of(&key, prefix.len()).saturating_add(BLOCK_SPAN_MS) <= min_ts;
        if kept >= max_fixes || all_old {
            // One remove at a time: a sled batch stops every other write while it runs.
            tree.remove(key)?;
            removed += len;
        } else {
            kept += len;
        }
    }
    Ok(removed)
}

/// How many fixes a block value holds: its postcard length prefix (a varint).
fn block_len(value: &[u8]) -> Result<usize, StoreError> {
    let (len, _) = postcard::take_from_bytes::<u32>(value)
        .map_err(|source| StoreError::Corrupt { tree: TRACK_TREE, source })?;
    Ok(len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::wire::Fix;

    fn stored(ts: u64) -> StoredFix {
        StoredFix { fix: Fix::from_degrees(ts, 1.0, 2.0), attributes: vec![], received_ms: ts }
    }

    fn times(fixes: &[StoredFix]) -> Vec<u64> {
        fixes.iter().map(|f| f.fix.ts_ms).collect()
    }

    fn write(tree: &sled::Tree, open: &mut OpenTracks) {
        let writes = open.checkpoint_writes();
        for w in &writes {
            tree.insert(&w.key, w.value.as_slice()).unwrap();
        }
        open.written(&writes);
    }

    #[test]
    fn blocks_fill_seal_and_leave_memory_once_written() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(TRACK_TREE).unwrap();
        let mut open = OpenTracks::new(1);
        for ts in 0..(BLOCK_FIXES as u64 + 10) {
            open.add("c1", stored(1_000 + ts));
        }
        write(&tree, &mut open);
        assert_eq!(tree.len(), 2, "one full block and one open one");
        // The next checkpoint drops the full block from memory; the open one stays.
        open.add("c1", stored(5_000));
        write(&tree, &mut open);
        assert_eq!(open.snapshot("c1").len(), 1);
        let all = read(&tree, &open.snapshot("c1"), "c1", None, None, 1_000).unwrap();
        assert_eq!(all.len(), BLOCK_FIXES + 11);
        // Untouched for a whole interval: written and dropped.
        write(&tree, &mut open);
        write(&tree, &mut open);
        assert_eq!(open.snapshot("c1").len(), 0);
        assert_eq!(
            read(&tree, &open.snapshot("c1"), "c1", None, None, 1_000).unwrap().len(),
            BLOCK_FIXES + 11
        );
    }

    #[test]
    fn reads_page_from_either_end_across_memory_and_sled() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(TRACK_TREE).unwrap();
        let mut open = OpenTracks::new(1);
        for ts in 1..=300 {
            open.add("c1", stored(ts * 1_000));
            open.add("c10", stored(ts * 1_000 + 1));
            if ts % 50 == 0 {
                write(&tree, &mut open);
            }
        }
        // A late fix (an offline backlog) lands in its own block.
        open.add("c1", stored(500));
        let newest = read(&tree, &open.snapshot("c1"), "c1", None, None, 3).unwrap();
        assert_eq!(times(&newest), [298_000, 299_000, 300_000]);
        let oldest = read(&tree, &open.snapshot("c1"), "c1", Some(0), None, 3).unwrap();
        assert_eq!(times(&oldest), [500, 1_000, 2_000]);
        let window =
            read(&tree, &open.snapshot("c1"), "c1", Some(100_000), Some(102_000), 100).unwrap();
        assert_eq!(times(&window), [100_000, 101_000, 102_000]);
        // "c1" never sees "c10" although it is a byte prefix of it.
        assert_eq!(read(&tree, &open.snapshot("c1"), "c1", None, None, 1_000).unwrap().len(), 301);
        assert!(open.has_fix_at("c1", 500) && !open.has_fix_at("c1", 501));
        assert!(has_fix_at(&tree, "c1", 2_000).unwrap());
        assert!(!has_fix_at(&tree, "c1", 2_001).unwrap());
    }

    #[test]
    fn equal_device_times_keep_commit_order_and_prune_goes_by_whole_blocks() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(TRACK_TREE).unwrap();
        let mut open = OpenTracks::new(1);
        for ts in 0..200u64 {
            open.add("c1", stored(ts * 10));
        }
        write(&tree, &mut open);
        write(&tree, &mut open);
        write(&tree, &mut open);
        assert_eq!(open.snapshot("c1").len(), 0);
        // Everything before 1_000 is old, and at most 100 fixes are kept: blocks go whole.
        let removed = prune(&tree, &open.snapshot("c1"), "c1", 1_000, 100).unwrap();
        let left = read(&tree, &open.snapshot("c1"), "c1", None, None, 1_000).unwrap();
        assert_eq!(removed + left.len(), 200);
        assert!(left.len() >= 100 && left.len() < 100 + BLOCK_FIXES, "{}", left.len());
        assert_eq!(left.last().unwrap().fix.ts_ms, 1_990);
    }
}
