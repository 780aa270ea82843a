//! Dead letters replayed: an operator fixed the cause (rolled back or corrected a plugin,
//! raised a limit) and sends what was refused through the pipeline again.
//!
//! Enters: ids of dead letters from the HTTP API ([`LetterDesk::replay`]). Leaves: the fixes the
//! letters hold, validated and run through the current plugin chain like new ones, in a commit
//! of their own that also removes every letter it resolved; and, once that commit is durable,
//! what became of each letter ([`ReplayReport`]).
//!
//! The intake thread does it, as it does everything that writes the log, so a replay sees and
//! is seen by the reports around it. What a replay guarantees:
//! - **Stored once.** A fix whose courier already has one at its device time is a duplicate,
//!   not stored again: replaying a letter twice, or two letters holding one report, stores
//!   each fix once. A letter is resolved, and removed, when every fix it holds is stored or
//!   was already there.
//! - **Last locations never go back.** Replayed fixes are usually old; they go into the track
//!   and InfluxDB, and move a last location only if newer than it (the newest device time
//!   wins, as for any fix).
//! - **Judged as when they came.** The device-time window is measured from when the letter
//!   was received, not from now: an hour-old letter is not too old for being an hour old.
//! - **No seqs, no acks.** The device was acked long ago (its seq was consumed when the report
//!   was refused); a replay changes no courier's seqs.
//! - **Refused again: kept.** A letter the pipeline still refuses stays as it was (no second
//!   letter), and its outcome names why. Letters that cannot be replayed say so: order events
//!   (post them through the API), points InfluxDB refused, CSV lines (replay the file).
//! - **Authorization is checked again.** A replayed edge batch goes through the edge's rules
//!   as they are now; letters refused for who sent them (a reused edge key, a bad topic) are
//!   not replayable.

use super::{courier_of, validate, FixInput, Intake, PendingFix, TransformOutput};
use crate::store::{DeadLetter, DeadLetterReason, DeadLetterSource, StoreError};
use bytes::Bytes;
use locus_sdk::wire::Fix;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Most letters in one replay commit: the API splits larger replays.
pub const MAX_LETTERS_PER_REPLAY: usize = 500;

/// What became of one replayed letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every fix it holds is stored now (or was already): the letter is removed.
    Resolved,
    /// The pipeline refused it again (the detail says why): the letter is kept.
    Refused,
    /// It cannot be replayed (the detail says why): the letter is kept.
    Unsupported,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Resolved => "resolved",
            Outcome::Refused => "refused",
            Outcome::Unsupported => "unsupported",
        }
    }
}

/// One letter's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LetterOutcome {
    /// The letter's id.
    pub id: u64,
    /// What became of it.
    pub outcome: Outcome,
    /// Why, when it was not resolved.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Fixes it stored.
    pub fixes_stored: u64,
    /// Fixes that were already stored.
    pub duplicates: u64,
}

/// What a replay did: totals, and each letter's outcome. Letters no longer kept (replayed or
/// purged meanwhile) are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Letters found and replayed.
    pub replayed: u64,
    /// Of them, resolved (and removed).
    pub resolved: u64,
    /// Refused again.
    pub refused: u64,
    /// Not replayable.
    pub unsupported: u64,
    /// Fixes stored.
    pub fixes_stored: u64,
    /// Fixes already stored.
    pub duplicates: u64,
    /// Each letter.
    pub letters: Vec<LetterOutcome>,
}

impl ReplayReport {
    /// Adds `other`'s letters and totals (the API's replays of more than one commit).
    pub fn merge(&mut self, other: ReplayReport) {
        self.replayed += other.replayed;
        self.resolved += other.resolved;
        self.refused += other.refused;
        self.unsupported += other.unsupported;
        self.fixes_stored += other.fixes_stored;
        self.duplicates += other.duplicates;
        self.letters.extend(other.letters);
    }

    fn add(&mut self, letter: LetterOutcome) {
        self.replayed += 1;
        match letter.outcome {
            Outcome::Resolved => self.resolved += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Unsupported => self.unsupported += 1,
        }
        self.fixes_stored += letter.fixes_stored;
        self.duplicates += letter.duplicates;
        self.letters.push(letter);
    }
}

/// Why a replay did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dead letters cannot be replayed now: {0}")]
pub struct ReplayUnavailable(pub String);

/// What the API is answered once the replay is durable.
pub type ReplayAnswer = Result<ReplayReport, ReplayUnavailable>;

/// A replay waiting for the intake.
#[derive(Debug)]
pub(super) struct ReplayRequest {
    ids: Vec<u64>,
    answer: oneshot::Sender<ReplayAnswer>,
}

/// Where the API hands replays to the pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LetterDesk {
    to_intake: mpsc::Sender<ReplayRequest>,
}

impl LetterDesk {
    /// A desk and the intake's end of it.
    pub(super) fn new() -> (LetterDesk, mpsc::Receiver<ReplayRequest>) {
        let (to_intake, from_api) = mpsc::channel();
        (LetterDesk { to_intake }, from_api)
    }

    /// Replays the letters `ids` (at most [`MAX_LETTERS_PER_REPLAY`] are taken in one commit;
    /// more are split) and waits until what they stored is durable.
    pub async fn replay(&self, ids: Vec<u64>) -> ReplayAnswer {
        let mut report = ReplayReport::default();
        for chunk in ids.chunks(MAX_LETTERS_PER_REPLAY) {
            let (answer, answered) = oneshot::channel();
            let stopped = || ReplayUnavailable("the pipeline is not running".to_owned());
            let request = ReplayRequest { ids: chunk.to_vec(), answer };
            self.to_intake.send(request).map_err(|_| stopped())?;
            report.merge(answered.await.map_err(|_| stopped())??);
        }
        Ok(report)
    }
}

/// Answers owed once the replays they answer are durable.
pub(super) type OwedReplays = Vec<(oneshot::Sender<ReplayAnswer>, ReplayAnswer)>;

/// Why a letter's fixes cannot be read.
enum NotReplayable {
    /// The pipeline refuses it again.
    Refused(String),
    /// It is not something a replay can take.
    Unsupported(String),
}

/// The fixes a letter holds: its courier, the fixes, and where they first came from.
type LetterFixes = (String, Vec<Fix>, DeadLetterSource);

impl Intake {
    /// Takes the replays waiting at the desk: one commit for all of them. Returns it (the
    /// answers owed once durable) or `None` when none waited.
    pub(super) fn take_replays(&mut self) -> Option<(super::BuiltBatch, OwedReplays)> {
        let from_api = self.letters.as_ref()?;
        let requests: Vec<ReplayRequest> = from_api.try_iter().collect();
        if requests.is_empty() {
            return None;
        }
        let received_ms = super::now_ms();
        let mut building = super::Building::new(received_ms);
        // Fixes stored by this commit: a second letter holding one is a duplicate.
        let mut stored: HashSet<(String, u64)> = HashSet::new();
        let mut owed = Vec::with_capacity(requests.len());
        for ReplayRequest { ids, answer } in requests {
            let mut report = ReplayReport::default();
            let mut failed = None;
            for id in ids {
                match self.replay_letter(id, &mut building, &mut stored) {
                    Ok(Some(outcome)) => {
                        self.metrics.dead_letters_replayed_outcome(outcome.outcome.as_str());
                        report.add(outcome)
                    }
                    Ok(None) => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let answered = match failed {
                Some(e) => Err(ReplayUnavailable(e.to_string())),
                None => Ok(report),
            };
            owed.push((answer, answered));
        }
        Some((super::finish(building), owed))
    }

    /// Replays letter `id` into `building`; `None` when it is no longer kept.
    fn replay_letter(
        &mut self,
        id: u64,
        building: &mut super::Building,
        stored: &mut HashSet<(String, u64)>,
    ) -> Result<Option<LetterOutcome>, StoreError> {
        let Some(letter) = self.store.dead_letter(id)? else { return Ok(None) };
        let outcome = |outcome, detail: String| LetterOutcome {
            id,
            outcome,
            detail,
            fixes_stored: 0,
            duplicates: 0,
        };
        let (courier, fixes, source) = match self.letter_fixes(&letter) {
            Ok(found) => found,
            Err(NotReplayable::Refused(why)) => return Ok(Some(outcome(Outcome::Refused, why))),
            Err(NotReplayable::Unsupported(why)) => {
                return Ok(Some(outcome(Outcome::Unsupported, why)))
            }
        };
        let mut result = outcome(Outcome::Resolved, String::new());
        let mut problems: Vec<String> = Vec::new();
        let input = FixInput::new(source, Bytes::from(letter.payload), letter.received_ms);
        let mut pending = Vec::with_capacity(fixes.len());
        for fix in fixes {
            if let Err(problem) = validate::check_fix(&fix, letter.received_ms, &self.config) {
                problems.push(problem.to_string());
            } else if stored.contains(&(courier.clone(), fix.ts_ms))
                || self.store.has_track_fix(&courier, fix.ts_ms)?
            {
                result.duplicates += 1;
            } else {
                pending.push(PendingFix::new(courier.clone(), fix, input.clone()));
            }
        }
        // Each letter through the chain on its own: what a plugin refuses is then known to be
        // this letter's, and is not a new letter (this one stays).
        let TransformOutput { kept, dead_letters } = match &mut self.transform {
            Some(transform) if !pending.is_empty() => transform.process(pending),
            _ => TransformOutput { kept: pending, dead_letters: Vec::new() },
        };
        problems.extend(dead_letters.into_iter().map(|letter| letter.detail));
        for PendingFix { courier, fix, attributes, .. } in kept {
            stored.insert((courier.clone(), fix.ts_ms));
            building.record.fix(&courier, fix, attributes);
            result.fixes_stored += 1;
        }
        self.metrics.dead_letter_fixes_replayed.inc_by(result.fixes_stored);
        building.out.fixes += result.fixes_stored;
        if problems.is_empty() {
            building.out.commit.resolved_dead_letters.push(id);
        } else {
            result.outcome = Outcome::Refused;
            result.detail = format!("{} of its fixes refused: {}", problems.len(), problems[0]);
        }
        Ok(Some(result))
    }

    /// The courier and fixes letter holds, read as the pipeline first read them.
    fn letter_fixes(&self, letter: &DeadLetter) -> Result<LetterFixes, NotReplayable> {
        use NotReplayable::{Refused, Unsupported};
        match letter.reason {
            DeadLetterReason::BadTopic
            | DeadLetterReason::EdgeKeyReused
            | DeadLetterReason::OrderEventRefused
            | DeadLetterReason::InfluxRejected => {
                return Err(Unsupported(format!(
                    "a letter refused as {} is not replayable",
                    letter.reason.as_str()
                )))
            }
            _ => {}
        }
        // A plugin's letter holds the input its fix was read from.
        let origin = match &letter.source {
            DeadLetterSource::Plugin { input, .. } => &**input,
            source => source,
        };
        let payload = &letter.payload[..];
        match origin {
            DeadLetterSource::Mqtt { topic } => {
                if let Some(courier) = courier_of(topic) {
                    let report = validate::decode_report(payload, &self.config)
                        .map_err(|(problem, _)| Refused(problem.to_string()))?;
                    return Ok((courier.to_owned(), report.fixes, origin.clone()));
                }
                if let Some(edge) = locus_sdk::topics::edge_of_batches(topic) {
                    let batch = validate::decode_edge_batch(payload, &self.config)
                        .map_err(|problem| Refused(format!("edge {edge}: {problem}")))?;
                    let refusal = match &self.edges {
                        Some(rules) => rules.refusal(edge, &batch.courier, batch.token.as_deref()),
                        None => Some(crate::edges::Refusal {
                            reason: DeadLetterReason::EdgeNotAllowed,
                            detail: "this server takes no edge batches".to_owned(),
                        }),
                    };
                    if let Some(refusal) = refusal {
                        return Err(Refused(format!("edge {edge}: {}", refusal.detail)));
                    }
                    return Ok((batch.courier, batch.fixes, origin.clone()));
                }
                Err(Unsupported(format!(
                    "{topic} carries no fixes (order events are posted again through the API)"
                )))
            }
            DeadLetterSource::Replay { .. } => {
                let text = std::str::from_utf8(payload).unwrap_or_default().trim();
                if !text.starts_with('{') {
                    return Err(Unsupported(
                        "a CSV line is read with its file's header: run locusd replay on the \
                         file again (fixes already stored are skipped)"
                            .to_owned(),
                    ));
                }
                let line = validate::JsonLine::parse(text).map_err(Refused)?;
                if !locus_sdk::topics::is_valid_id(&line.courier) {
                    return Err(Refused(format!("courier id {:?} is not valid", line.courier)));
                }
                let fix = line.fix.to_wire(0).map_err(|e| Refused(e.to_string()))?;
                Ok((line.courier, vec![fix], origin.clone()))
            }
            DeadLetterSource::Plugin { .. } | DeadLetterSource::Influx => Err(Unsupported(
                "InfluxDB refused this point: it holds line protocol, not a fix".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::pipeline::PipelineConfig;
    use crate::store::Store;
    use locus_sdk::wire;
    use std::sync::Arc;

    /// Replays `letters` (stored first) through an intake without plugins or edges; what became
    /// of each, in order.
    fn replay(store: &Store, letters: Vec<DeadLetter>) -> Vec<LetterOutcome> {
        let count = letters.len();
        store.record_dead_letters(letters).unwrap();
        // Ids are never reused: the new letters are the newest.
        let kept = store.dead_letters(0, usize::MAX).unwrap();
        let ids: Vec<u64> = kept[kept.len() - count..].iter().map(|(id, _)| *id).collect();
        let mut intake =
            Intake::new(PipelineConfig::default(), store.clone(), Arc::new(Metrics::new()));
        let (to_intake, from_api) = mpsc::channel();
        intake.letters = Some(from_api);
        let (answer, mut answered) = oneshot::channel();
        to_intake.send(ReplayRequest { ids, answer }).unwrap();
        let (built, owed) = intake.take_replays().expect("a replay waited");
        intake.commit(built.commit).unwrap();
        for (answer, report) in owed {
            answer.send(report).unwrap();
        }
        answered.try_recv().unwrap().unwrap().letters
    }

    fn letter(reason: DeadLetterReason, topic: &str, payload: Vec<u8>) -> DeadLetter {
        let source = DeadLetterSource::Mqtt { topic: topic.into() };
        DeadLetter::new(reason, source, Some("c1".into()), "", payload, super::super::now_ms())
    }

    #[test]
    fn each_kind_of_letter_is_resolved_refused_or_said_to_be_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = super::super::now_ms();
        let report =
            wire::Report { seq: 1, fixes: vec![Fix::from_degrees(now - 1_000, 41.0, 2.0)] };
        let batch = wire::EdgeBatch {
            key: "k1".into(),
            part: 1,
            parts: 1,
            digest: [0; 16],
            courier: "c1".into(),
            token: None,
            fixes: vec![Fix::from_degrees(now - 2_000, 41.0, 2.0)],
        };
        let line = format!(r#"{{"courier":"c2","ts":{},"lat":41.5,"lon":2.5}}"#, now - 3_000);
        let replayed_line = DeadLetter::new(
            DeadLetterReason::PluginFailed,
            DeadLetterSource::Replay { file: "a.jsonl".into(), line: 3 },
            Some("c2".into()),
            "",
            line.into_bytes(),
            now,
        );
        let letters = vec![
            letter(
                DeadLetterReason::PluginFailed,
                "couriers/c1/locations",
                wire::encode_report(&report),
            ),
            letter(
                DeadLetterReason::PluginFailed,
                "couriers/c1/locations",
                b"\x01\xff\xff".to_vec(),
            ),
            letter(
                DeadLetterReason::PluginFailed,
                "edge/web-1/batches",
                wire::encode_edge_batch(&batch),
            ),
            letter(DeadLetterReason::OrderEventRefused, "couriers/c1/events", vec![1]),
            letter(DeadLetterReason::EdgeKeyReused, "edge/web-1/batches", vec![1]),
            DeadLetter::new(
                DeadLetterReason::InfluxRejected,
                DeadLetterSource::Influx,
                None,
                "",
                b"locations x=1".to_vec(),
                now,
            ),
            replayed_line,
            DeadLetter::new(
                DeadLetterReason::Malformed,
                DeadLetterSource::Replay { file: "a.csv".into(), line: 2 },
                None,
                "",
                b"c1,1,2,3".to_vec(),
                now,
            ),
        ];
        let outcomes: Vec<Outcome> = replay(&store, letters).iter().map(|o| o.outcome).collect();
        use Outcome::{Refused, Resolved, Unsupported};
        assert_eq!(
            outcomes,
            [
                Resolved,
                Refused,
                Refused,
                Unsupported,
                Unsupported,
                Unsupported,
                Resolved,
                Unsupported
            ]
        );
        // The edge batch was refused because this server takes none (the rules as they are).
        assert_eq!(store.track("c1", None, None, 10).unwrap().len(), 1);
        assert_eq!(store.last_location("c2").unwrap().unwrap().fix.ts_ms, now - 3_000);
        // Resolved letters are gone, the rest kept.
        assert_eq!(store.dead_letters(0, usize::MAX).unwrap().len(), 6);

        // The same report again, in a new letter: a duplicate, resolved, nothing stored twice.
        let again = letter(
            DeadLetterReason::PluginFailed,
            "couriers/c1/locations",
            wire::encode_report(&report),
        );
        let outcome = &replay(&store, vec![again])[0];
        assert_eq!((outcome.outcome, outcome.fixes_stored, outcome.duplicates), (Resolved, 0, 1));
        assert_eq!(store.track("c1", None, None, 10).unwrap().len(), 1);
    }
}
