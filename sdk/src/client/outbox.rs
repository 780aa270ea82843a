//! The on-device outbox: an append-only log of what happened to the courier's fixes.
//!
//! Layout of the data folder:
//! - `outbox.log`: the magic `LOCUSOB1`, then records `[len: u32 LE][crc32: u32 LE][postcard]`.
//! - `outbox.log.tmp`: a compaction in progress (deleted on open; it only replaces the log by an
//!   atomic rename once complete and synced).
//! - `outbox.lock`: held with an exclusive file lock while a client has the outbox open.
//!
//! The way data goes: `report` appends a [`Record::Fix`] (fsynced before it returns) → the fix
//! is *pending*. When the sender is about to publish, it *seals* pending fixes into a report and
//! appends [`Record::Seal`] with the report's sequence number (fsynced before the report is
//! published, so a report's number and contents never change once the server may have seen
//! them). The server's cumulative ack appends [`Record::Ack`] and drops every sealed report up to
//! it. Opening replays the log; a torn or corrupt tail (a crash in the middle of a write) is cut
//! off at the last whole record. When the log is mostly dead records it is compacted into a
//! snapshot of the live state.
//!
//! Sequence numbers: a report's `seq` is assigned when it is sealed, as
//! `max(last assigned, server's mark) + 1`, so it never goes backwards, never skips, and never
//! collides with what the server already committed. The server's *mark* (its highest committed
//! seq) is learned from acks; a fresh outbox has none and does not seal until the sender has
//! learned it (see `worker`). Should an ack ever name a seq above anything this outbox assigned
//! (the server's mark comes from an earlier install of the app whose outbox was lost), the
//! server has refused our unacked reports as duplicates, so they are renumbered after the mark
//! ([`Record::Rebase`]) and sent again instead of being taken as acknowledged.

use super::config::{OutboxConfig, WhenFull};
use super::error::ClientError;
use crate::wire::Fix;
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

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Record {
    /// A fix the app reported; it joins the pending queue.
    Fix(Fix),
    /// The oldest `count` pending fixes form report `seq`.
    Seal { seq: u64, count: u32 },
    /// The server committed everything up to `seq`.
    Ack { seq: u64 },
    /// The server's mark is `above`, beyond anything this outbox assigned: every sealed report is
    /// renumbered `above + 1, above + 2, ...` in order.
    Rebase { above: u64 },
    /// The bound dropped the oldest sealed report (it must be the oldest).
    DropReport { seq: u64 },
    /// The bound dropped the oldest `count` pending fixes.
    DropPending { count: u32 },
    /// Compaction: a sealed report with its fixes.
    Report { seq: u64, fixes: Vec<Fix> },
    /// Compaction: the last assigned seq.
    LastSeq { seq: u64 },
    /// The server's mark, learned without an ack (a fresh outbox that heard none in time: 0), or
    /// kept by compaction.
    Mark { seq: u64 },
}

/// A report whose sequence number is fixed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SealedReport {
    pub seq: u64,
    pub fixes: Vec<Fix>,
    bytes: u64,
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

#[derive(Debug)]
struct PendingFix {
    fix: Fix,
    bytes: u64,
    /// When it was queued in this process; `None` after a reopen (it is old: send it soon).
    queued_at: Option<Instant>,
}

/// What an ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AckOutcome {
    /// Fixes removed from the outbox because the server committed them.
    pub acked_fixes: u64,
    /// The unacked reports were renumbered above the server's mark and must be sent again.
    pub rebased: bool,
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
    pending: VecDeque<PendingFix>,
    sealed: VecDeque<SealedReport>,
    /// Highest seq ever assigned by this outbox.
    last_seq: u64,
    /// Highest seq the server is known to have committed; `None`: never heard from the server.
    mark: Option<u64>,
    fixes: u64,
    bytes: u64,
    /// Fixes dropped at the bound since open.
    dropped_fixes: u64,
    /// Fixes refused at the bound since open.
    refused_fixes: u64,
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
            sealed: VecDeque::new(),
            last_seq: 0,
            mark: None,
            fixes: 0,
            bytes: 0,
            dropped_fixes: 0,
            refused_fixes: 0,
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

    /// Encoded bytes of the fixes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Fixes not yet in a report.
    #[cfg(test)]
    pub fn pending_fixes(&self) -> usize {
        self.pending.len()
    }

    /// The server's highest committed seq, if it has ever been heard from.
    pub fn mark(&self) -> Option<u64> {
        self.mark
    }

    /// Fixes dropped and refused at the bound since open.
    pub fn bound_counters(&self) -> (u64, u64) {
        (self.dropped_fixes, self.refused_fixes)
    }

    /// Sealed reports, oldest first.
    pub fn sealed(&self) -> impl Iterator<Item = &SealedReport> {
        self.sealed.iter()
    }

    /// Sealed reports not yet acknowledged.
    pub fn sealed_len(&self) -> usize {
        self.sealed.len()
    }

    /// Appends a fix. It is durable (fsynced, if so configured) when this returns `Ok`. Returns
    /// how many fixes were dropped to make room.
    pub fn push(&mut self, fix: Fix, now: Instant) -> Result<u64, ClientError> {
        let size = fix_bytes(&fix);
        let mut records = Vec::new();
        let (mut fixes, mut bytes) = (self.fixes, self.bytes);
        let mut dropped = 0;
        let (mut sealed_i, mut pending_i) = (0, 0);
        while fixes + 1 > self.config.max_fixes || bytes + size > self.config.max_bytes {
            if self.config.when_full == WhenFull::RefuseNew {
                self.refused_fixes += 1;
                return Err(ClientError::OutboxFull { fixes: self.fixes, bytes: self.bytes });
            }
            // Drop the oldest data: whole sealed reports first (their contents are fixed), then
            // pending fixes.
            if let Some(report) = self.sealed.get(sealed_i) {
                records.push(Record::DropReport { seq: report.seq });
                fixes -= report.fixes.len() as u64;
                bytes -= report.bytes;
                dropped += report.fixes.len() as u64;
                sealed_i += 1;
            } else if let Some(p) = self.pending.get(pending_i) {
                fixes -= 1;
                bytes -= p.bytes;
                dropped += 1;
                pending_i += 1;
            } else {
                // Nothing left to drop: this one fix is larger than the whole bound.
                self.refused_fixes += 1;
                return Err(ClientError::OutboxFull { fixes: self.fixes, bytes: self.bytes });
            }
        }
        if pending_i > 0 {
            records.push(Record::DropPending { count: pending_i as u32 });
        }
        records.push(Record::Fix(fix));
        self.write(&records, self.config.fsync)?;
        for record in records {
            self.apply(record, Some(now));
        }
        self.dropped_fixes += dropped;
        Ok(dropped)
    }

    /// When the oldest pending fix is due to be sealed by age.
    pub fn next_seal_due(&self, max_age: Duration) -> Option<Instant> {
        let oldest = self.pending.front()?;
        Some(oldest.queued_at.map_or_else(Instant::now, |t| t + max_age))
    }

    /// Seals due pending fixes into at most `max_reports` reports within `size`: a
    /// full batch is due at once, a partial one when its oldest fix is `max_age` old or when
    /// `force`. Does nothing until the server's mark is known. The seals are fsynced (if so
    /// configured) before this returns: once published, a report's seq must stay its own even
    /// after a power cut.
    pub fn seal(
        &mut self,
        size: ReportSize,
        max_age: Duration,
        max_reports: usize,
        force: bool,
        now: Instant,
    ) -> Result<usize, ClientError> {
        let Some(mark) = self.mark else { return Ok(0) };
        let mut records = Vec::new();
        let mut next = self.last_seq.max(mark);
        let mut start = 0;
        while start < self.pending.len() && records.len() < max_reports {
            let (take, full) = size.take(self.pending.range(start..).map(|p| p.bytes));
            let oldest_due = self.pending[start]
                .queued_at
                .is_none_or(|t| now.saturating_duration_since(t) >= max_age);
            if !(force || full || oldest_due) {
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
        let before = self.fixes;
        let rebased = matches!(record, Record::Rebase { .. });
        self.apply(record, None);
        self.maybe_compact()?;
        Ok(AckOutcome { acked_fixes: before - self.fixes, rebased })
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
                self.pending.push_back(PendingFix { fix, bytes, queued_at: now });
            }
            Record::Seal { seq, count } => {
                let count = (count as usize).min(self.pending.len());
                let mut fixes = Vec::with_capacity(count);
                let mut bytes = 0;
                for p in self.pending.drain(..count) {
                    bytes += p.bytes;
                    fixes.push(p.fix);
                }
                self.last_seq = self.last_seq.max(seq);
                self.sealed.push_back(SealedReport { seq, fixes, bytes });
            }
            Record::Ack { seq } => {
                self.mark = Some(self.mark.unwrap_or(0).max(seq));
                while self.sealed.front().is_some_and(|r| r.seq <= seq) {
                    if let Some(r) = self.sealed.pop_front() {
                        self.forget(&r);
                    }
                }
            }
            Record::Rebase { above } => {
                self.mark = Some(self.mark.unwrap_or(0).max(above));
                let mut seq = above;
                for report in &mut self.sealed {
                    seq += 1;
                    report.seq = seq;
                }
                self.last_seq = self.last_seq.max(seq);
            }
            Record::DropReport { seq } => {
                if self.sealed.front().is_some_and(|r| r.seq == seq) {
                    if let Some(r) = self.sealed.pop_front() {
                        self.forget(&r);
                    }
                }
            }
            Record::DropPending { count } => {
                let count = (count as usize).min(self.pending.len());
                for p in self.pending.drain(..count) {
                    self.fixes -= 1;
                    self.bytes -= p.bytes;
                }
            }
            Record::Report { seq, fixes } => {
                let bytes = fixes.iter().map(fix_bytes).sum();
                self.fixes += fixes.len() as u64;
                self.bytes += bytes;
                self.last_seq = self.last_seq.max(seq);
                self.sealed.push_back(SealedReport { seq, fixes, bytes });
            }
            Record::LastSeq { seq } => self.last_seq = self.last_seq.max(seq),
            Record::Mark { seq } => self.mark = Some(self.mark.unwrap_or(0).max(seq)),
        }
    }

    fn forget(&mut self, report: &SealedReport) {
        self.fixes -= report.fixes.len() as u64;
        self.bytes -= report.bytes;
    }

    /// Rewrites the log as a snapshot of the live state once it is mostly dead records.
    fn maybe_compact(&mut self) -> Result<(), ClientError> {
        let live = self.bytes + 16 * (self.fixes + self.sealed.len() as u64) + 64;
        if self.len < COMPACT_MIN_BYTES || self.len < 4 * live {
            return Ok(());
        }
        self.compact()
    }

    fn compact(&mut self) -> Result<(), ClientError> {
        let mut buf = MAGIC.to_vec();
        encode_record(&Record::LastSeq { seq: self.last_seq }, &mut buf);
        if let Some(seq) = self.mark {
            encode_record(&Record::Mark { seq }, &mut buf);
        }
        for report in &self.sealed {
            encode_record(
                &Record::Report { seq: report.seq, fixes: report.fixes.clone() },
                &mut buf,
            );
        }
        for p in &self.pending {
            encode_record(&Record::Fix(p.fix.clone()), &mut buf);
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
            .map(|r| (r.seq, r.fixes.iter().map(|f| f.ts_ms - 1_763_700_000_000).collect()))
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
            assert_eq!(outbox.ack(1).unwrap(), AckOutcome { acked_fixes: 3, rebased: false });
            // Dropped without close: like a kill.
        }
        let mut outbox = Outbox::open(dir.path(), config()).unwrap();
        assert_eq!(seqs(&outbox), vec![(2, vec![3, 4, 5])]);
        assert_eq!(outbox.pending_fixes(), 1);
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
        assert_eq!(outbox.bound_counters(), (0, 2));
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
            assert_eq!(outbox.bound_counters(), (3, 0));
            assert_eq!(outbox.fixes(), 4);
        }
        let mut outbox = Outbox::open(dir.path(), cfg).unwrap();
        assert_eq!(outbox.fixes(), 4);
        outbox.seal(ReportSize::fixes(10), AGE, 10, true, now).unwrap();
        // Numbering goes on after the dropped report: the server accepts the gap.
        assert_eq!(seqs(&outbox), vec![(2, vec![3, 4, 5, 6])]);
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
        assert_eq!(outbox.pending_fixes(), 0);
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
        assert_eq!(outbox.ack(42).unwrap(), AckOutcome { acked_fixes: 1, rebased: false });
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
            assert_eq!(outbox.ack(100).unwrap(), AckOutcome { acked_fixes: 0, rebased: true });
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
}
