//! Batches from edge components (`edge/{edge}/batches`): fixes an HTTP client posted through
//! an edge, deduplicated by the request's idempotency key instead of a courier seq.
//!
//! A part is taken at most once per `(edge, key, part)`: the receipt of the key
//! ([`crate::store::EdgeReceipt`]) records the parts taken, and it is written in the same
//! commit as their fixes, so a part resent after a lost answer, a broker failover or a locusd
//! crash is seen as in exactly when its fixes are. Nothing is acked to the edge: the broker's
//! PUBACK told it the part is in the broker, and its client reads the receipt.
//!
//! A part is refused as a whole (a dead letter, and the receipt says `rejected`) when the edge
//! may not report for its courier or the client's token does not allow it
//! ([`crate::edges::EdgeRules::refusal`]), and dead-lettered without touching the receipt when
//! its key was taken for other data (another digest): that request is not this one.

use super::{validate, Building, FixInput, Intake, PendingFix};
use crate::store::{DeadLetter, DeadLetterReason, DeadLetterSource, EdgeReceipt, StoreError};
use bytes::Bytes;

impl Intake {
    /// Why `edge` may not post `batch` under the rules as they are now (`None`: it may).
    pub(super) fn edge_refusal(
        &self,
        edge: &str,
        batch: &locus_sdk::wire::EdgeBatch,
    ) -> Option<crate::edges::Refusal> {
        match &self.edges {
            Some(rules) => rules.refusal(edge, &batch.courier, batch.token.as_deref()),
            None => Some(crate::edges::Refusal {
                reason: DeadLetterReason::EdgeNotAllowed,
                detail: "this server takes no edge batches".to_owned(),
            }),
        }
    }
    /// Takes one part of an edge's request into the batch.
    pub(super) fn take_edge_batch(
        &mut self,
        topic: &[u8],
        payload: &Bytes,
        received_ms: u64,
        pending: &mut Vec<PendingFix>,
        building: &mut Building,
    ) -> Result<(), StoreError> {
        let topic_text = String::from_utf8_lossy(topic).into_owned();
        let source = DeadLetterSource::Mqtt { topic: topic_text.clone() };
        let letter = |reason: DeadLetterReason, courier: Option<&str>, detail: String| {
            let courier = courier.map(str::to_owned);
            DeadLetter::new(reason, source.clone(), courier, detail, &payload[..], received_ms)
        };
        let Some(edge) = locus_sdk::topics::edge_of_batches(&topic_text) else {
            let problem = validate::ReportProblem::BadTopic;
            self.refuse(letter(problem.reason(), None, problem.to_string()), &mut building.out);
            return Ok(());
        };
        let batch = match validate::decode_edge_batch(payload, &self.config) {
            Ok(batch) => batch,
            Err(problem) => {
                self.metrics.edge_part("refused");
                let detail = format!("edge {edge}: {problem}");
                self.refuse(letter(problem.reason(), None, detail), &mut building.out);
                return Ok(());
            }
        };
        self.metrics.fixes_received.inc_by(batch.fixes.len() as u64);
        let receipt_key = crate::store::receipts::key(edge, &batch.key);
        if !building.receipts.contains_key(&receipt_key) {
            let written = self.store.edge_receipt_written(edge, &batch.key)?;
            let receipt = written.unwrap_or_else(|| {
                EdgeReceipt::new(&batch.courier, batch.digest, batch.parts, received_ms)
            });
            building.receipts.insert(receipt_key.clone(), receipt);
        }
        let receipt = &building.receipts[&receipt_key];
        if receipt.digest != batch.digest
            || receipt.parts != batch.parts
            || receipt.courier != batch.courier
        {
            self.metrics.edge_part("refused");
            let detail = format!(
                "edge {edge}: key {} was taken for another request (other fixes, courier or \
                 number of parts); it is kept as it was and this part is not stored: send new \
                 data under a new key",
                batch.key
            );
            let letter = letter(DeadLetterReason::EdgeKeyReused, Some(&batch.courier), detail);
            self.refuse(letter, &mut building.out);
            // The receipt was only read: writing it back would cost a write for nothing.
            if receipt.committed_parts.is_empty() && receipt.rejected.is_none() {
                building.receipts.remove(&receipt_key);
            }
            return Ok(());
        }
        if receipt.has_part(batch.part) {
            self.metrics.edge_part("duplicate");
            return Ok(());
        }
        let kept_ms = self.edges.as_ref().map_or(0, |rules| rules.receipts_kept_ms(edge));
        if let Some(refusal) = self.edge_refusal(edge, &batch) {
            self.metrics.edge_part("rejected");
            let detail = format!("edge {edge}, key {}: {}", batch.key, refusal.detail);
            if let Some(receipt) = building.receipts.get_mut(&receipt_key) {
                receipt.reject(refusal.reason.as_str(), &refusal.detail);
                receipt.touch(received_ms, kept_ms);
            }
            let letter = letter(refusal.reason, Some(&batch.courier), detail);
            self.refuse(letter, &mut building.out);
            return Ok(());
        }
        self.metrics.edge_part("taken");
        let fixes = batch.fixes.len() as u64;
        let input = FixInput::new(source.clone(), payload.clone(), received_ms);
        let refused = self.take_fixes(&batch.courier, batch.fixes, input, pending, building)?;
        if let Some(receipt) = building.receipts.get_mut(&receipt_key) {
            receipt.take_part(batch.part, fixes, refused as u64);
            receipt.touch(received_ms, kept_ms);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, TokenAuthority};
    use crate::edges::{EdgeRules, EdgesConfig};
    use crate::metrics::Metrics;
    use crate::pipeline::{now_ms, PipelineConfig};
    use crate::store::{ReceiptStatus, Store};
    use locus_sdk::wire::{self, EdgeBatch, Fix};
    use std::sync::Arc;

    struct Setup {
        _dir: tempfile::TempDir,
        store: Store,
        intake: Intake,
        token: String,
        metrics: Arc<Metrics>,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let authority = Arc::new(TokenAuthority::open(dir.path()).unwrap());
        let token = authority.issue(Role::Courier, "c1");
        let edges: EdgesConfig =
            toml::from_str("[web-1]\ncouriers = [\"c1\"]\n").expect("valid [edges]");
        let metrics = Arc::new(Metrics::new());
        let intake = Intake::new(PipelineConfig::default(), store.clone(), metrics.clone())
            .with_edges(EdgeRules::new(edges, Some(authority)));
        Setup { _dir: dir, store, intake, token, metrics }
    }

    fn part(key: &str, part: u16, parts: u16, token: &str, times: &[u64]) -> (Bytes, Bytes) {
        let batch = EdgeBatch {
            key: key.into(),
            part,
            parts,
            digest: [9; 16],
            courier: "c1".into(),
            token: Some(token.into()),
            fixes: times.iter().map(|&ts| Fix::from_degrees(ts, 41.0, 2.0)).collect(),
        };
        let payload = Bytes::from(wire::encode_edge_batch(&batch));
        (Bytes::from(locus_sdk::topics::edge_batches("web-1")), payload)
    }

    impl Setup {
        fn take(&mut self, publishes: &[(Bytes, Bytes)]) -> Vec<String> {
            let built = self.intake.build(publishes, now_ms()).unwrap();
            let reasons = built.commit.dead_letters.iter().map(|l| l.reason.to_string()).collect();
            self.intake.commit(built.commit).unwrap();
            reasons
        }

        fn status(&self, key: &str) -> Option<(ReceiptStatus, usize)> {
            let found = self.store.edge_receipt("web-1", key).unwrap();
            found.map(|(receipt, status)| (status, receipt.committed_parts.len()))
        }

        fn track_len(&self) -> usize {
            self.store.track("c1", None, None, 100).unwrap().len()
        }
    }

    #[test]
    fn parts_are_taken_once_and_the_receipt_commits_only_when_every_part_is_durable() {
        let mut s = setup();
        let now = now_ms();
        let token = s.token.clone();
        let (one, two) =
            (part("k1", 1, 2, &token, &[now - 30]), part("k1", 2, 2, &token, &[now - 20]));
        assert_eq!(s.take(std::slice::from_ref(&one)), Vec::<String>::new());
        assert_eq!(s.status("k1"), Some((ReceiptStatus::Pending, 1)));
        // The same part again, in the next batch and twice in one: stored once.
        assert!(s.take(&[one.clone(), two.clone(), two.clone()]).is_empty());
        assert_eq!(s.track_len(), 2);
        assert_eq!(s.status("k1"), Some((ReceiptStatus::Pending, 2)), "written, not yet flushed");
        s.store.flush().unwrap();
        assert_eq!(s.status("k1"), Some((ReceiptStatus::Committed, 2)));
        assert!(s.take(&[one]).is_empty());
        assert_eq!(s.track_len(), 2);
        let duplicates = s.metrics.encode();
        assert!(
            duplicates.contains("locus_edge_parts_total{outcome=\"duplicate\"} 3"),
            "{duplicates}"
        );
        assert_eq!(s.status("never-sent"), None);
    }

    #[test]
    fn a_refused_client_token_rejects_the_part_until_a_good_one_comes() {
        let mut s = setup();
        let now = now_ms();
        assert_eq!(s.take(&[part("k2", 1, 1, "locus2.forged", &[now])]), ["client_token_refused"]);
        assert_eq!(s.status("k2"), Some((ReceiptStatus::Rejected, 0)));
        assert_eq!(s.track_len(), 0);
        let token = s.token.clone();
        assert!(s.take(&[part("k2", 1, 1, &token, &[now])]).is_empty());
        s.store.flush().unwrap();
        assert_eq!(s.status("k2"), Some((ReceiptStatus::Committed, 1)));
        assert_eq!(s.track_len(), 1);
    }

    #[test]
    fn a_key_reused_for_other_data_is_refused_and_the_first_request_kept() {
        let mut s = setup();
        let now = now_ms();
        let token = s.token.clone();
        assert!(s.take(&[part("k3", 1, 1, &token, &[now - 5])]).is_empty());
        let (topic, _) = part("k3", 1, 1, &token, &[now]);
        let other = EdgeBatch {
            key: "k3".into(),
            part: 1,
            parts: 1,
            digest: [8; 16],
            courier: "c1".into(),
            token: Some(token.clone()),
            fixes: vec![Fix::from_degrees(now, 1.0, 1.0)],
        };
        let other = (topic, Bytes::from(wire::encode_edge_batch(&other)));
        assert_eq!(s.take(&[other]), ["edge_key_reused"]);
        assert_eq!(s.track_len(), 1);
        // A courier outside the edge's scope, and a malformed batch.
        let outside = EdgeBatch {
            key: "k4".into(),
            part: 1,
            parts: 1,
            digest: [1; 16],
            courier: "c2".into(),
            token: Some(token),
            fixes: vec![Fix::from_degrees(now, 1.0, 1.0)],
        };
        let topic = Bytes::from(locus_sdk::topics::edge_batches("web-1"));
        let outside = (topic.clone(), Bytes::from(wire::encode_edge_batch(&outside)));
        assert_eq!(
            s.take(&[outside, (topic, Bytes::from_static(b"\x01\x03"))]),
            ["edge_not_allowed", "malformed"]
        );
        assert_eq!(s.status("k4").map(|(status, _)| status), Some(ReceiptStatus::Rejected));
    }
}
