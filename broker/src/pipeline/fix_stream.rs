//! The live fix stream: every fix a commit made durable, after plugins, published as JSON on
//! `fixes/{courier}` for other teams' consumers (subscribed with a `reader` token,
//! `mqtt::policy`).
//!
//! Enters: a commit's record, taken by the intake before the store consumes it
//! ([`StreamBatch::of`]). Leaves, once the flush made it durable: one message per courier of
//! that commit, `{"courier","fixes":[{"ts","lat","lon",...,"attributes"?,"received_ms"}]}`,
//! oldest first, the fix fields as everywhere else (`locus_sdk::wire::json::FixJson`), on
//! `fixes/{courier}`; and/or the same fixes in the wire format (`locus_sdk::wire::FixBatch`,
//! postcard) on `fixes-wire/{courier}`, each form only once a reader subscribed to it.
//!
//! Nothing is built until a reader has subscribed (`mqtt::StreamDemand`). Then the intake
//! only clones the record's fixes; the JSON is written on the committer thread after the acks
//! went out, so the stream costs the hot path a copy, and devices no ack latency.
//!
//! Published at QoS 0 and not retained: the stream is "what was committed just now". A
//! consumer that needs every fix after a disconnect reads the gap from the track API or from
//! InfluxDB.

use crate::store::{CommitRecord, FixFields, LoggedFix};
use locus_sdk::wire;
use serde::Serialize;

/// Most fixes in one stream message (about 12 KB of JSON): a courier whose backlog lands in
/// one commit gets several messages, so a consumer's packet limit bounds nothing it needs.
pub(super) const MAX_FIXES_PER_MESSAGE: usize = 100;

/// What one commit adds to the stream, waiting for its flush.
#[derive(Debug, Default)]
pub(super) struct StreamBatch {
    received_ms: u64,
    couriers: Vec<String>,
    fixes: Vec<LoggedFix>,
    /// Which forms to publish: JSON on `fixes/…`, the wire format on `fixes-wire/…`.
    json: bool,
    wire: bool,
}

/// One message: a courier's fixes from one commit.
#[derive(Debug, Serialize)]
struct StreamMessage<'a> {
    courier: &'a str,
    /// As in a track page.
    fixes: Vec<FixFields>,
}

impl StreamBatch {
    /// The fixes `record` commits, copied before the store takes it, for the JSON stream,
    /// the wire-format stream or both. Nothing is copied when neither is wanted.
    pub(super) fn of(record: &CommitRecord, json: bool, wire: bool) -> StreamBatch {
        if !(json || wire) {
            return StreamBatch::default();
        }
        StreamBatch {
            received_ms: record.received_ms,
            couriers: record.couriers.clone(),
            fixes: record.fixes.clone(),
            json,
            wire,
        }
    }

    /// Whether it holds no fix.
    pub(super) fn is_empty(&self) -> bool {
        self.fixes.is_empty()
    }

    /// The messages, `(topic, payload)`: per courier with fixes, in the order couriers first
    /// appear in the commit, its JSON message and/or its wire-format one, each of at most
    /// [`MAX_FIXES_PER_MESSAGE`] fixes.
    pub(super) fn messages(&self) -> Vec<(String, Vec<u8>)> {
        let mut by_courier: Vec<Vec<&LoggedFix>> =
            self.couriers.iter().map(|_| Vec::new()).collect();
        for logged in &self.fixes {
            let Some(fixes) = by_courier.get_mut(logged.courier as usize) else { continue };
            fixes.push(logged);
        }
        let mut messages = Vec::new();
        let chunks = self.couriers.iter().zip(by_courier).flat_map(|(courier, fixes)| {
            fixes
                .chunks(MAX_FIXES_PER_MESSAGE)
                .map(move |c| (courier, c.to_vec()))
                .collect::<Vec<_>>()
        });
        for (courier, fixes) in chunks {
            if self.json {
                let fields = fixes
                    .iter()
                    .map(|f| FixFields::new(&f.fix, &f.attributes, self.received_ms))
                    .collect();
                let message = StreamMessage { courier, fixes: fields };
                let json = serde_json::to_vec(&message).expect("a stream message serializes");
                messages.push((locus_sdk::topics::fixes(courier), json));
            }
            if self.wire {
                let fixes = fixes
                    .iter()
                    .map(|f| wire::CommittedFix {
                        fix: f.fix.clone(),
                        attributes: f.attributes.clone(),
                        received_ms: self.received_ms,
                    })
                    .collect();
                let batch = wire::FixBatch { courier: courier.clone(), fixes };
                messages
                    .push((locus_sdk::topics::fixes_wire(courier), wire::encode_fix_batch(&batch)));
            }
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RecordBuilder;
    use locus_sdk::wire::Fix;
    use serde_json::json;

    #[test]
    fn one_message_per_courier_with_its_fixes_in_order_and_their_attributes() {
        let mut builder = RecordBuilder::new(1_000);
        builder.fix("c1", Fix::from_degrees(10, 1.5, 2.5), vec![("zone".into(), "north".into())]);
        builder.fix("c2", Fix::from_degrees(11, -1.0, 0.0), Vec::new());
        builder.fix("c1", Fix::from_degrees(12, 1.6, 2.6), Vec::new());
        let record = builder.finish();
        let batch = StreamBatch::of(&record, true, false);
        assert!(!batch.is_empty());
        let messages = batch.messages();
        let topics: Vec<&str> = messages.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(topics, ["fixes/c1", "fixes/c2"]);
        let c1: serde_json::Value = serde_json::from_slice(&messages[0].1).unwrap();
        assert_eq!(
            c1,
            json!({"courier": "c1", "fixes": [
                {"ts": 10, "lat": 1.5, "lon": 2.5, "attributes": {"zone": "north"}, "received_ms": 1000},
                {"ts": 12, "lat": 1.6, "lon": 2.6, "received_ms": 1000},
            ]})
        );
        assert!(StreamBatch::default().messages().is_empty());
        assert!(StreamBatch::of(&record, false, false).is_empty());

        // The wire form: the same fixes, postcard, on fixes-wire/{courier}.
        let both = StreamBatch::of(&record, true, true).messages();
        let topics: Vec<&str> = both.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(topics, ["fixes/c1", "fixes-wire/c1", "fixes/c2", "fixes-wire/c2"]);
        let c1 = wire::decode_fix_batch(&both[1].1).unwrap();
        assert_eq!(c1.courier, "c1");
        assert_eq!(c1.fixes.len(), 2);
        assert_eq!(c1.fixes[0].fix, Fix::from_degrees(10, 1.5, 2.5));
        assert_eq!(c1.fixes[0].attributes, [("zone".to_owned(), "north".to_owned())]);
        assert_eq!(c1.fixes[1].received_ms, 1000);

        // A backlog in one commit: messages of at most MAX_FIXES_PER_MESSAGE fixes, in order.
        let mut builder = RecordBuilder::new(1_000);
        for ts in 0..250 {
            builder.fix("c3", Fix::from_degrees(ts, 1.0, 2.0), Vec::new());
        }
        let messages = StreamBatch::of(&builder.finish(), true, false).messages();
        let sizes: Vec<usize> = messages
            .iter()
            .map(|(_, json)| serde_json::from_slice::<serde_json::Value>(json).unwrap())
            .map(|m| m["fixes"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
    }
}
