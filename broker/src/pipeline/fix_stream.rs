//! The live fix stream: every fix a commit made durable, after plugins, published as JSON on
//! `fixes/{courier}` for other teams' consumers (subscribed with a `reader` token,
//! `mqtt::policy`).
//!
//! Enters: a commit's record, taken by the intake before the store consumes it
//! ([`StreamBatch::of`]). Leaves, once the flush made it durable: one message per courier of
//! that commit, `{"courier","fixes":[{"ts","lat","lon",...,"attributes"?,"received_ms"}]}`,
//! oldest first, the fix fields as everywhere else (`locus_sdk::wire::json::FixJson`).
//!
//! Nothing is built until a reader has subscribed (`mqtt::StreamDemand`). Then the intake
//! only clones the record's fixes; the JSON is written on the committer thread after the acks
//! went out, so the stream costs the hot path a copy, and devices no ack latency.
//!
//! Published at QoS 0 and not retained: the stream is "what was committed just now". A
//! consumer that needs every fix after a disconnect reads the gap from the track API or from
//! InfluxDB.

use crate::store::{CommitRecord, FixFields, LoggedFix};
use serde::Serialize;

/// What one commit adds to the stream, waiting for its flush.
#[derive(Debug, Default)]
pub(super) struct StreamBatch {
    received_ms: u64,
    couriers: Vec<String>,
    fixes: Vec<LoggedFix>,
}

/// One message: a courier's fixes from one commit.
#[derive(Debug, Serialize)]
struct StreamMessage<'a> {
    courier: &'a str,
    /// As in a track page.
    fixes: Vec<FixFields>,
}

impl StreamBatch {
    /// The fixes `record` commits, copied before the store takes it.
    pub(super) fn of(record: &CommitRecord) -> StreamBatch {
        StreamBatch {
            received_ms: record.received_ms,
            couriers: record.couriers.clone(),
            fixes: record.fixes.clone(),
        }
    }

    /// Whether it holds no fix.
    pub(super) fn is_empty(&self) -> bool {
        self.fixes.is_empty()
    }

    /// The messages, `(topic, JSON)`, one per courier with fixes, in the order couriers first
    /// appear in the commit.
    pub(super) fn messages(&self) -> Vec<(String, Vec<u8>)> {
        let mut by_courier: Vec<Vec<FixFields>> =
            self.couriers.iter().map(|_| Vec::new()).collect();
        for logged in &self.fixes {
            let Some(fixes) = by_courier.get_mut(logged.courier as usize) else { continue };
            fixes.push(FixFields::new(&logged.fix, &logged.attributes, self.received_ms));
        }
        self.couriers
            .iter()
            .zip(by_courier)
            .filter(|(_, fixes)| !fixes.is_empty())
            .map(|(courier, fixes)| {
                let message = StreamMessage { courier, fixes };
                let json = serde_json::to_vec(&message).expect("a stream message serializes");
                (locus_sdk::topics::fixes(courier), json)
            })
            .collect()
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
        let batch = StreamBatch::of(&builder.finish());
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
    }
}
