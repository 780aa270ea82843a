//! Which report seqs of one courier are committed: the dedup state behind every ack.
//!
//! A courier's reports carry increasing seqs, but they do not always arrive in order: a broker
//! that drops under pressure, an app with two senders, a gateway, a client that is not the SDK.
//! So the state is not a high-water mark but a contiguous **watermark** `W` (every seq ≤ `W` is
//! committed, or was consumed by a report refused as a whole) plus the **ranges** of seqs
//! committed above `W`. An ack carries `W`: the SDK drops every report up to the ack, so it may
//! only ever drop what the server has.
//!
//! - seq ≤ `W`, or inside a range: a duplicate (not stored again; acked again).
//! - otherwise: fresh. It is stored, and when it fills the gap after `W`, `W` moves up through
//!   every range that now touches it.
//! - a fresh seq that would open more than [`MAX_GAPS`] ranges is not taken: the report is
//!   neither stored nor acked, the device keeps it and sends it again (by then the gaps have
//!   usually filled: the SDK resends everything unacked when acks stop advancing).
//!
//! Example: 1, 3, 2 → after 1: `W`=1; after 3: `W`=1, ranges [3,3], ack 1 (the device keeps 2
//! and 3); after 2: `W`=3, ack 3.

use serde::{Deserialize, Serialize};

/// Most ranges of committed seqs kept above the watermark per courier (each one is a gap the
/// device has not filled yet). A well-behaved device has at most a few.
pub const MAX_GAPS: usize = 64;

/// What taking a seq did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqTake {
    /// New: the report is to be stored.
    Fresh,
    /// Already committed: acked again, not stored again.
    Duplicate,
    /// Would open one gap too many: not taken (not stored, not acked).
    TooManyGaps,
}

/// One courier's committed seqs: a watermark and the ranges committed above it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqWindow {
    watermark: u64,
    /// Sorted, disjoint, not touching each other or `watermark + 1`; inclusive bounds.
    above: Vec<(u64, u64)>,
}

impl SeqWindow {
    /// A window whose watermark is `seq` (every seq up to it committed), as the single
    /// committed seq of older releases meant.
    pub fn from_watermark(seq: u64) -> SeqWindow {
        SeqWindow { watermark: seq, above: Vec::new() }
    }

    /// Every seq up to this one is committed: what an ack carries.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// The highest committed seq (the watermark when nothing is committed above it).
    pub fn highest(&self) -> u64 {
        self.above.last().map_or(self.watermark, |r| r.1)
    }

    /// How many gaps there are above the watermark.
    pub fn gaps(&self) -> usize {
        self.above.len()
    }

    /// Whether `seq` is committed.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.watermark || self.above.iter().any(|&(lo, hi)| lo <= seq && seq <= hi)
    }

    /// A window with watermark `watermark` and the committed `ranges` above it (inclusive;
    /// any order, may overlap or touch the watermark): as read back from an ack record.
    pub fn from_parts(watermark: u64, ranges: &[(u64, u64)]) -> SeqWindow {
        let mut window = SeqWindow::from_watermark(watermark);
        window.add_ranges(ranges);
        window
    }

    /// The ranges committed above the watermark (inclusive bounds, ascending).
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.above
    }

    /// Adds every seq `other` holds: a seq committed in either is committed.
    pub fn merge(&mut self, other: &SeqWindow) {
        self.watermark = self.watermark.max(other.watermark);
        self.add_ranges(&other.above.clone());
    }

    /// Adds inclusive ranges of committed seqs, then restores the invariants: sorted,
    /// disjoint, not touching, none at or below `watermark + 1`. Beyond [`MAX_GAPS`] ranges,
    /// the highest are forgotten: they are only seqs a device will be told again are missing,
    /// so it resends them and they are stored again (idempotent downstream), never an ack
    /// that covers something missing.
    fn add_ranges(&mut self, ranges: &[(u64, u64)]) {
        let mut all: Vec<(u64, u64)> = self.above.drain(..).chain(ranges.iter().copied()).collect();
        all.retain(|&(lo, hi)| lo <= hi);
        all.sort_unstable();
        for (lo, hi) in all {
            if lo <= self.watermark.saturating_add(1) {
                self.watermark = self.watermark.max(hi);
                continue;
            }
            match self.above.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => self.above.push((lo, hi)),
            }
        }
        self.above.truncate(MAX_GAPS);
    }

    /// Takes `seq`: marks it committed when it is fresh.
    pub fn take(&mut self, seq: u64) -> SeqTake {
        if self.contains(seq) {
            return SeqTake::Duplicate;
        }
        // The first range that ends at or after seq - 1 (it may touch seq from below).
        let at = self.above.partition_point(|&(_, hi)| hi.saturating_add(1) < seq);
        let joins_below = at < self.above.len() && self.above[at].1 + 1 == seq;
        let joins_above = |above: &[(u64, u64)], i: usize| i < above.len() && above[i].0 == seq + 1;
        if seq == self.watermark + 1 {
            self.watermark = seq;
            if self.above.first().is_some_and(|r| r.0 == seq + 1) {
                self.watermark = self.above.remove(0).1;
            }
            return SeqTake::Fresh;
        }
        if joins_below {
            self.above[at].1 = seq;
            if joins_above(&self.above, at + 1) {
                self.above[at].1 = self.above.remove(at + 1).1;
            }
        } else if joins_above(&self.above, at) {
            self.above[at].0 = seq;
        } else {
            if self.above.len() >= MAX_GAPS {
                return SeqTake::TooManyGaps;
            }
            self.above.insert(at, (seq, seq));
        }
        SeqTake::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taking(seqs: &[u64]) -> (SeqWindow, Vec<SeqTake>) {
        let mut window = SeqWindow::default();
        let takes = seqs.iter().map(|&s| window.take(s)).collect();
        (window, takes)
    }

    #[test]
    fn merging_keeps_every_seq_either_window_holds() {
        let (mut a, _) = taking(&[1, 2, 5, 6, 9]);
        let b = SeqWindow::from_parts(3, &[(8, 8), (12, 14)]);
        a.merge(&b);
        // 1..=3 from b and 1..=2 from a: 3; then 4 is missing.
        assert_eq!(a.watermark(), 3);
        assert_eq!(a.ranges(), &[(5, 6), (8, 9), (12, 14)]);
        for seq in [1, 2, 3, 5, 6, 8, 9, 12, 13, 14] {
            assert!(a.contains(seq), "{seq}");
        }
        for seq in [4, 7, 10, 11, 15] {
            assert!(!a.contains(seq), "{seq}");
        }
        // A range that reaches the watermark moves it through.
        a.merge(&SeqWindow::from_parts(0, &[(4, 4), (7, 7)]));
        assert_eq!(a.watermark(), 9);
        assert_eq!(a.ranges(), &[(12, 14)]);
        // Merging an older view changes nothing.
        let before = a.clone();
        a.merge(&SeqWindow::from_watermark(2));
        assert_eq!(a, before);
    }

    #[test]
    fn in_order_moves_the_watermark() {
        let (window, takes) = taking(&[1, 2, 3]);
        assert_eq!(window.watermark(), 3);
        assert!(takes.iter().all(|t| *t == SeqTake::Fresh));
        assert_eq!(window.gaps(), 0);
    }

    #[test]
    fn a_late_report_fills_its_gap_instead_of_being_a_duplicate() {
        let mut window = SeqWindow::default();
        assert_eq!(window.take(1), SeqTake::Fresh);
        assert_eq!(window.take(3), SeqTake::Fresh);
        assert_eq!(window.watermark(), 1, "2 is missing: the ack must not cover it");
        assert_eq!(window.highest(), 3);
        assert_eq!(window.take(3), SeqTake::Duplicate);
        assert_eq!(window.take(2), SeqTake::Fresh);
        assert_eq!(window.watermark(), 3);
        assert_eq!(window.take(2), SeqTake::Duplicate);
        assert_eq!(window.gaps(), 0);
    }

    #[test]
    fn ranges_merge_from_both_sides() {
        let (mut window, _) = taking(&[1, 5, 9, 7, 6, 8]);
        assert_eq!(window.watermark(), 1);
        assert_eq!(window.above, [(5, 9)]);
        assert_eq!(window.take(3), SeqTake::Fresh);
        assert_eq!(window.above, [(3, 3), (5, 9)]);
        assert_eq!(window.take(4), SeqTake::Fresh);
        assert_eq!(window.above, [(3, 9)]);
        assert_eq!(window.take(2), SeqTake::Fresh);
        assert_eq!((window.watermark(), window.gaps()), (9, 0));
    }

    #[test]
    fn every_order_of_a_permutation_ends_at_the_same_watermark() {
        // A fixed pseudo-random shuffle of 1..=200, taken twice: the second pass is all
        // duplicates and the watermark is 200 with no gaps left.
        let mut seqs: Vec<u64> = (1..=200).collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for i in (1..seqs.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            seqs.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut window = SeqWindow::default();
        for &s in &seqs {
            let take = window.take(s);
            assert!(take == SeqTake::Fresh || take == SeqTake::TooManyGaps, "{s}: {take:?}");
            if take == SeqTake::TooManyGaps {
                assert_eq!(window.gaps(), MAX_GAPS);
            }
        }
        // Whatever was refused for too many gaps is taken when it comes again.
        for &s in &seqs {
            let _ = window.take(s);
        }
        assert_eq!((window.watermark(), window.gaps()), (200, 0));
        assert!(seqs.iter().all(|&s| window.take(s) == SeqTake::Duplicate));
    }

    #[test]
    fn too_many_gaps_refuses_only_new_gaps() {
        let mut window = SeqWindow::default();
        for gap in 0..MAX_GAPS as u64 {
            assert_eq!(window.take(10 + 2 * gap), SeqTake::Fresh);
        }
        assert_eq!(window.take(1_000), SeqTake::TooManyGaps);
        assert!(!window.contains(1_000));
        // Extending an existing range or filling the first gap is still taken.
        assert_eq!(window.take(11), SeqTake::Fresh);
        assert_eq!(window.take(1), SeqTake::Fresh);
        assert_eq!(window.watermark(), 1);
    }

    #[test]
    fn a_watermark_from_an_older_release_covers_everything_below_it() {
        let mut window = SeqWindow::from_watermark(7);
        assert_eq!(window.take(7), SeqTake::Duplicate);
        assert_eq!(window.take(8), SeqTake::Fresh);
        assert_eq!(window.watermark(), 8);
    }
}
