//! Checked fixes → the MQTT messages that carry them to locusd, and the answer once the broker
//! has them.
//!
//! Enters: a request's idempotency key, courier, client token and fixes (all checked). Leaves:
//! [`Batches`], the encoded [`EdgeBatch`] messages to publish in order on
//! `edge/{edge}/batches`; the broker URL to publish them through ([`broker_address`]); and the
//! 202 answer ([`accepted`]).
//!
//! A request is split into parts of `max_fixes_per_message` fixes, each one message that fits
//! locusd's default packet limit. Every part carries the key, its number, the number of parts
//! and a digest of the whole request's fixes, so locusd can (1) drop parts it already stored
//! when a client retries the key, (2) refuse a key reused with other data, and (3) say in the
//! receipt when all parts are stored.

use crate::errors::Answer;
use crate::headers::{hex, IDEMPOTENCY_KEY};
use locus_sdk::topics;
use locus_sdk::wire::{encode_edge_batch, encode_report, limits, EdgeBatch, Fix, Report};
use serde_json::json;
use sha2::{Digest, Sha256};

/// MQTT keep-alive of the edge's connection, seconds.
pub const KEEP_ALIVE_SECS: u64 = 30;

/// The packet limit the edge's MQTT client is given, both ways: locusd's default. Spin's MQTT
/// client (rumqttc) otherwise allows 10 KiB, too small for a part of 600 fixes.
pub const MAX_PACKET_BYTES: usize = limits::DEFAULT_MAX_PACKET_BYTES;

/// A request's messages, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batches {
    /// The idempotency key.
    pub key: String,
    /// The courier.
    pub courier: String,
    /// How many fixes in all.
    pub fixes: usize,
    /// The digest every part carries.
    pub digest: [u8; 16],
    /// The encoded messages, part 1 first.
    pub messages: Vec<Vec<u8>>,
}

/// The digest of a request's fixes: the first 16 bytes of SHA-256 over their wire encoding as
/// one report of seq 0 (`locus_sdk::wire::EdgeBatch::digest`).
pub fn digest(fixes: Vec<Fix>) -> ([u8; 16], Vec<Fix>) {
    let report = Report { seq: 0, fixes };
    let hash = Sha256::digest(encode_report(&report));
    let mut digest = [0; 16];
    digest.copy_from_slice(&hash[..16]);
    (digest, report.fixes)
}

/// Splits `fixes` (at least one) into messages of at most `per_message` fixes (1..=600).
/// Returns `None` only when the parts would not fit a `u16`, which the configuration
/// (`max_fixes_per_request` / `max_fixes_per_message` ≤ 65535) rules out.
pub fn split(
    key: &str,
    courier: &str,
    token: &str,
    fixes: Vec<Fix>,
    per_message: usize,
) -> Option<Batches> {
    let per_message = per_message.max(1);
    let count = fixes.len();
    let parts = u16::try_from(count.div_ceil(per_message)).ok()?;
    let (digest, fixes) = digest(fixes);
    let mut messages = Vec::with_capacity(usize::from(parts));
    for (part, chunk) in (1..=parts).zip(fixes.chunks(per_message)) {
        let batch = EdgeBatch {
            key: key.to_string(),
            part,
            parts,
            digest,
            courier: courier.to_string(),
            token: Some(token.to_string()),
            fixes: chunk.to_vec(),
        };
        debug_assert_eq!(batch.problem(), None, "only checked input reaches here");
        let bytes = encode_edge_batch(&batch);
        debug_assert!(bytes.len() <= limits::max_edge_batch_bytes(chunk.len()));
        messages.push(bytes);
    }
    Some(Batches {
        key: key.to_string(),
        courier: courier.to_string(),
        fixes: count,
        digest,
        messages,
    })
}

/// The topic the edge publishes on.
pub fn topic(edge_id: &str) -> String {
    topics::edge_batches(edge_id)
}

/// The address handed to Spin's `mqtt::Connection::open`: `broker_url` (no query; checked by
/// the configuration) with rumqttc's options as its query.
///
/// - `client_id=edge@{edge_id}@{nonce}`: locusd takes `edge@{edge}` or `edge@{edge}@{anything}`
///   as the edge's client ids. A fresh nonce per request, since two connections with one client
///   id take turns kicking each other off the broker.
/// - both packet sizes: rumqttc changes its 10 KiB default only when both are given.
pub fn broker_address(broker_url: &str, edge_id: &str, nonce: [u8; 8]) -> String {
    format!(
        "{broker_url}?client_id=edge@{edge_id}@{nonce}&keep_alive_secs={KEEP_ALIVE_SECS}\
         &max_incoming_packet_size_bytes={MAX_PACKET_BYTES}\
         &max_outgoing_packet_size_bytes={MAX_PACKET_BYTES}",
        nonce = hex(&nonce)
    )
}

/// The path of a key's receipt on this edge.
pub fn receipt_path(key: &str) -> String {
    format!("/v1/receipts/{key}")
}

/// 202: the broker took every part at QoS 1. The receipt says when locusd has stored them.
pub fn accepted(batches: &Batches) -> Answer {
    let receipt = receipt_path(&batches.key);
    let body = json!({
        "key": batches.key,
        "status": "accepted",
        "courier": batches.courier,
        "fixes": batches.fixes,
        "parts": batches.messages.len(),
        "digest": locus_sdk::wire::digest_hex(&batches.digest),
        "receipt": receipt,
    });
    Answer::json(202, &body)
        .with_header("location", receipt)
        .with_header(IDEMPOTENCY_KEY, batches.key.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::wire::{decode_edge_batch, FixDetails};

    fn fixes(n: usize) -> Vec<Fix> {
        (0..n).map(|i| Fix::from_degrees(1_763_700_000_000 + i as u64, 41.0, 2.0)).collect()
    }

    #[test]
    fn a_request_is_split_into_numbered_parts_sharing_key_and_digest() {
        let batches = split("k1", "c1", "tok", fixes(1201), 600).unwrap();
        assert_eq!((batches.fixes, batches.messages.len()), (1201, 3));
        let parts: Vec<EdgeBatch> =
            batches.messages.iter().map(|m| decode_edge_batch(m).unwrap()).collect();
        let sizes: Vec<usize> = parts.iter().map(|p| p.fixes.len()).collect();
        assert_eq!(sizes, [600, 600, 1]);
        for (i, part) in parts.iter().enumerate() {
            assert_eq!((part.part, part.parts), (i as u16 + 1, 3));
            assert_eq!((part.key.as_str(), part.courier.as_str()), ("k1", "c1"));
            assert_eq!(part.token.as_deref(), Some("tok"));
            assert_eq!(part.digest, batches.digest);
            assert_eq!(part.problem(), None);
        }
        let rejoined: Vec<Fix> = parts.into_iter().flat_map(|p| p.fixes).collect();
        assert_eq!(rejoined, fixes(1201));
        assert_eq!(split("k", "c", "t", fixes(1), 600).map(|b| b.messages.len()), Some(1));
        assert_eq!(split("k", "c", "t", fixes(600), 600).map(|b| b.messages.len()), Some(1));
        assert_eq!(split("k", "c", "t", fixes(7), 3).map(|b| b.messages.len()), Some(3));
    }

    #[test]
    fn the_digest_is_sha256_of_the_fixes_as_one_report() {
        let (digest, back) = digest(fixes(3));
        assert_eq!(back, fixes(3));
        let full = Sha256::digest(encode_report(&Report { seq: 0, fixes: fixes(3) }));
        assert_eq!(digest[..], full[..16]);
        assert_ne!(digest, super::digest(fixes(4)).0, "other fixes, another digest");
    }

    #[test]
    fn the_largest_parts_fit_the_packet_limit() {
        // 600 fixes with every detail and a 64-byte order id, the longest key and token.
        let mut fix = Fix::from_degrees(u64::MAX, -90.0, -180.0);
        fix.details = Some(FixDetails {
            accuracy_cm: Some(u32::MAX),
            speed_cm_s: Some(u32::MAX),
            heading_cdeg: Some(35_999),
            battery_pct: Some(100),
            order: Some("o".repeat(64)),
        });
        let key = "k".repeat(128);
        let token = "t".repeat(512);
        let batches = split(&key, &"c".repeat(64), &token, vec![fix; 600], 600).unwrap();
        let topic_len = topic(&"e".repeat(64)).len();
        // PUBLISH: fixed header (≤ 5), topic (2 + len), packet id (2), payload.
        let packet = 5 + 2 + topic_len + 2 + batches.messages[0].len();
        assert!(packet <= MAX_PACKET_BYTES, "{packet}");
    }

    #[test]
    fn the_broker_address_carries_a_unique_client_id_and_both_packet_sizes() {
        let address = broker_address("mqtt://127.0.0.1:1883", "web-1", [0, 1, 2, 3, 4, 5, 6, 0xff]);
        assert_eq!(
            address,
            "mqtt://127.0.0.1:1883?client_id=edge@web-1@00010203040506ff&keep_alive_secs=30\
             &max_incoming_packet_size_bytes=65536&max_outgoing_packet_size_bytes=65536"
        );
        assert_eq!(topic("web-1"), "edge/web-1/batches");
    }

    #[test]
    fn the_answer_points_at_the_receipt() {
        let batches = split("k1", "c1", "tok", fixes(2), 600).unwrap();
        let answer = accepted(&batches);
        assert_eq!(answer.status, 202);
        assert_eq!(answer.header("Location"), Some("/v1/receipts/k1"));
        assert_eq!(answer.header("Idempotency-Key"), Some("k1"));
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(
            body,
            json!({"key": "k1", "status": "accepted", "courier": "c1", "fixes": 2, "parts": 1,
                   "digest": locus_sdk::wire::digest_hex(&batches.digest),
                   "receipt": "/v1/receipts/k1"})
        );
    }
}
