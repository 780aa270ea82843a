//! The commit log: one sled value per commit, the promise behind every ack.
//!
//! Tree `log`: key = log id (u64 big-endian; contiguous and increasing, so the tree is in
//! commit order and a cursor is a number), value = a postcard [`LogEntry`]. The intake writes
//! one entry per group of reports; the views (live state, track blocks, the InfluxDB shipper)
//! read it from their cursors; entries every view has passed are removed.

use super::{decode, encode, StoreError, StoredFix};
use crate::orders::{EventSource, OrderEvent};
use locus_sdk::wire::Fix;
use serde::{Deserialize, Serialize};

/// The sled tree of the log.
pub(super) const LOG_TREE: &str = "log";

/// One entry of the commit log. An enum so that the format can grow (postcard writes the
/// variant index first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogEntry {
    /// A group of reports (or backfilled fixes) as committed.
    Commit(CommitRecord),
    /// InfluxDB line-protocol lines (newline-separated) left in the outbox of a data dir from
    /// an older release; only the shipper reads them.
    LegacyLines(Vec<u8>),
    /// Order events the intake accepted (checked against the orders view), in order.
    Orders(OrderRecord),
    /// In cluster mode, what another worker committed (and acked): applied to the views like
    /// a `Commit`, so every worker answers every read, but never shipped (its owner did).
    Replica(CommitRecord),
}

/// What one commit of order events adds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// Server time the events were taken in, Unix milliseconds.
    pub received_ms: u64,
    /// The events, each with its order and where it came from.
    pub events: Vec<LoggedOrderEvent>,
}

/// An accepted order event in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedOrderEvent {
    /// The order.
    pub order: String,
    /// The event.
    pub event: OrderEvent,
    /// The courier that sent it over MQTT; `None` for the API.
    pub from_courier: Option<String>,
}

impl LoggedOrderEvent {
    /// Where the event came from.
    pub fn source(&self) -> EventSource<'_> {
        self.from_courier.as_deref().map_or(EventSource::Api, EventSource::Courier)
    }
}

/// What one commit adds: the reports taken (their seqs) and their fixes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Server time the reports were taken in, Unix milliseconds.
    pub received_ms: u64,
    /// The couriers this entry names; fixes and reports refer to them by index.
    pub couriers: Vec<String>,
    /// Every report taken: (courier index, seq). Includes reports refused as a whole whose seq
    /// is consumed (they have no fixes here).
    pub reports: Vec<(u32, u64)>,
    /// Every fix committed, in order.
    pub fixes: Vec<LoggedFix>,
}

/// A committed fix in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedFix {
    /// Index into [`CommitRecord::couriers`].
    pub courier: u32,
    /// The fix as sent (possibly changed by plugins).
    pub fix: Fix,
    /// Attributes added by plugins, in the order they were added.
    pub attributes: Vec<(String, String)>,
}

/// Builds a [`CommitRecord`], naming each courier once.
#[derive(Debug, Default)]
pub struct RecordBuilder {
    record: CommitRecord,
    index: std::collections::HashMap<String, u32>,
}

impl RecordBuilder {
    /// A builder for a record received at `received_ms`.
    pub fn new(received_ms: u64) -> RecordBuilder {
        RecordBuilder {
            record: CommitRecord { received_ms, ..CommitRecord::default() },
            index: Default::default(),
        }
    }

    fn courier_index(&mut self, courier: &str) -> u32 {
        if let Some(&i) = self.index.get(courier) {
            return i;
        }
        let i = self.record.couriers.len() as u32;
        self.record.couriers.push(courier.to_owned());
        self.index.insert(courier.to_owned(), i);
        i
    }

    /// Records that `courier`'s report `seq` was taken.
    pub fn report(&mut self, courier: &str, seq: u64) {
        let courier = self.courier_index(courier);
        self.record.reports.push((courier, seq));
    }

    /// Adds a committed fix.
    pub fn fix(&mut self, courier: &str, fix: Fix, attributes: Vec<(String, String)>) {
        let courier = self.courier_index(courier);
        self.record.fixes.push(LoggedFix { courier, fix, attributes });
    }

    /// The record so far.
    pub fn record(&self) -> &CommitRecord {
        &self.record
    }

    /// The finished record.
    pub fn finish(self) -> CommitRecord {
        self.record
    }
}

impl CommitRecord {
    /// The courier of a fix or report.
    pub fn courier(&self, index: u32) -> &str {
        self.couriers.get(index as usize).map_or("", String::as_str)
    }

    /// Whether the record commits nothing.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty() && self.fixes.is_empty()
    }

    /// Each fix with its courier, as stored.
    pub fn stored_fixes(&self) -> impl Iterator<Item = (&str, StoredFix)> + '_ {
        self.fixes.iter().map(|f| {
            let stored = StoredFix {
                fix: f.fix.clone(),
                attributes: f.attributes.clone(),
                received_ms: self.received_ms,
            };
            (self.courier(f.courier), stored)
        })
    }
}

impl LogEntry {
    /// How many fixes the entry holds (for a legacy entry: lines).
    pub fn fixes(&self) -> u64 {
        match self {
            LogEntry::Commit(record) => record.fixes.len() as u64,
            LogEntry::LegacyLines(lines) => {
                1 + lines.iter().filter(|&&b| b == b'\n').count() as u64
            }
            LogEntry::Orders(_) | LogEntry::Replica(_) => 0,
        }
    }

    /// The entry as stored (postcard).
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// An entry from its stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<LogEntry, StoreError> {
        decode(LOG_TREE, bytes)
    }
}

/// The key of log entry `id`.
pub(super) fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// The id of a log key.
pub(super) fn id_of(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_name_couriers_once() {
        let mut builder = RecordBuilder::new(5);
        for courier in ["a", "b", "a", "a"] {
            builder.fix(courier, Fix::from_degrees(1, 1.0, 2.0), vec![]);
        }
        builder.report("b", 9);
        let record = builder.finish();
        assert_eq!(record.couriers, ["a", "b"]);
        assert_eq!(record.reports, [(1, 9)]);
        assert_eq!(record.courier(record.fixes[2].courier), "a");
        let entry = LogEntry::Commit(record);
        assert_eq!(LogEntry::decode(&entry.encode()).unwrap(), entry);
        assert_eq!(entry.fixes(), 4);
        assert_eq!(LogEntry::LegacyLines(b"x 1\ny 2".to_vec()).fixes(), 2);
    }
}
