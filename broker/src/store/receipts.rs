//! Receipts of edge requests: what an HTTP client that posted fixes through an edge reads to
//! learn they are stored.
//!
//! Tree `edge_receipts`: key = `{edge}\0{idempotency key}`, value = a postcard [`EdgeReceipt`].
//! The intake writes a receipt in the same transaction as the fixes of the parts it records
//! ([`super::Commit::receipts`]), so a receipt never says a part is in that is not, and a part
//! that is in is never taken again (that is the deduplication). The store answers `committed`
//! only once a flush has made the receipt durable ([`super::Store::edge_receipt`]).

use serde::{Deserialize, Serialize};

/// The sled tree of receipts.
pub(super) const RECEIPTS_TREE: &str = "edge_receipts";

/// The key of `edge`'s receipt for idempotency key `key` (ids and keys hold no NUL byte).
pub fn key(edge: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(edge.len() + 1 + key.len());
    out.extend_from_slice(edge.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

/// What is known of one request an edge forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeReceipt {
    /// The courier the fixes are for.
    pub courier: String,
    /// The request's digest: a part with the same key and another digest is other data.
    pub digest: [u8; 16],
    /// How many parts the request has.
    pub parts: u16,
    /// The parts committed, ascending.
    pub committed_parts: Vec<u16>,
    /// Fixes in the committed parts.
    pub fixes: u64,
    /// Of those, fixes validation refused (each in a dead letter).
    pub fixes_refused: u64,
    /// The last refusal of a part as a whole (reason code, detail), if any: a part refused for
    /// its client's token or the edge's scope. A later part that is taken does not clear it,
    /// but once every part is in, the request is committed.
    pub rejected: Option<(String, String)>,
    /// Server time the first part arrived, Unix ms.
    pub first_ms: u64,
    /// Server time the last part arrived, Unix ms.
    pub last_ms: u64,
    /// Unix ms after which the receipt may be pruned (`[edges.{edge}] receipts_kept_s` after
    /// its last part).
    pub keep_until_ms: u64,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// Not every part is durably stored yet (or the key is unknown: not arrived, never sent,
    /// or pruned).
    Pending,
    /// Every part is durably stored: the client may stop retrying.
    Committed,
    /// A part was refused as a whole and not every part is in: retrying the same request does
    /// not help unless what was refused is fixed (the client's token, the edge's scope).
    Rejected,
}

impl EdgeReceipt {
    /// A receipt of a request with `parts` parts for `courier`, none of them in yet.
    pub fn new(courier: &str, digest: [u8; 16], parts: u16, received_ms: u64) -> EdgeReceipt {
        EdgeReceipt {
            courier: courier.to_owned(),
            digest,
            parts,
            committed_parts: Vec::new(),
            fixes: 0,
            fixes_refused: 0,
            rejected: None,
            first_ms: received_ms,
            last_ms: received_ms,
            keep_until_ms: received_ms,
        }
    }

    /// Whether part `part` is in.
    pub fn has_part(&self, part: u16) -> bool {
        self.committed_parts.binary_search(&part).is_ok()
    }

    /// Records that part `part` is in, with `fixes` fixes of which `refused` were refused.
    pub fn take_part(&mut self, part: u16, fixes: u64, refused: u64) {
        if let Err(at) = self.committed_parts.binary_search(&part) {
            self.committed_parts.insert(at, part);
            self.fixes += fixes;
            self.fixes_refused += refused;
        }
    }

    /// Records a part refused as a whole.
    pub fn reject(&mut self, reason: &str, detail: &str) {
        self.rejected = Some((reason.to_owned(), detail.to_owned()));
    }

    /// Notes that a part arrived at `received_ms`; the receipt is kept `kept_ms` after it.
    pub fn touch(&mut self, received_ms: u64, kept_ms: u64) {
        self.last_ms = self.last_ms.max(received_ms);
        self.keep_until_ms = self.last_ms.saturating_add(kept_ms);
    }

    /// Where the request stands, from what is written (durability is the store's to add).
    pub fn status(&self) -> ReceiptStatus {
        if self.committed_parts.len() == usize::from(self.parts) {
            ReceiptStatus::Committed
        } else if self.rejected.is_some() {
            ReceiptStatus::Rejected
        } else {
            ReceiptStatus::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_committed_once_every_part_is_in_whatever_the_order() {
        let mut receipt = EdgeReceipt::new("c1", [1; 16], 3, 10);
        assert_eq!(receipt.status(), ReceiptStatus::Pending);
        receipt.take_part(3, 600, 0);
        receipt.take_part(1, 600, 2);
        receipt.take_part(3, 600, 0); // a resend changes nothing
        assert_eq!((receipt.fixes, receipt.fixes_refused), (1200, 2));
        assert!(receipt.has_part(1) && !receipt.has_part(2));
        receipt.reject("client_token_refused", "expired");
        assert_eq!(receipt.status(), ReceiptStatus::Rejected);
        receipt.take_part(2, 10, 0);
        assert_eq!(receipt.status(), ReceiptStatus::Committed);
        receipt.touch(50, 1000);
        assert_eq!((receipt.first_ms, receipt.last_ms, receipt.keep_until_ms), (10, 50, 1050));
        assert_eq!(key("web-1", "k"), b"web-1\0k");
    }
}
