//! The shipper: a tokio task that drains the outbox into InfluxDB.
//!
//! Enters: outbox entries (a commit's lines each, oldest first). Leaves: write requests (see
//! [`writer`](super::writer)); lines InfluxDB refuses as invalid, as [`DeadLetter`]s through the
//! [`DeadLetterSink`]; metrics and health.
//!
//! A batch (whole entries) is sent when `batch_lines` lines wait, or when the oldest has waited
//! `batch_interval_ms`. Entries leave the outbox only after a 2xx for all their lines. A failed write (no answer, 5xx,
//! 429, 401/403/404) is retried with capped exponential back-off and jitter, forever: the outbox
//! is durable and bounded, and at its limit the pipeline stops acking, so devices hold the
//! data. A batch refused as invalid (400/422) is bisected until the invalid lines stand alone;
//! those become dead letters with InfluxDB's error and the rest is written, so one bad point
//! never blocks the outbox. A 413 splits the batch the same way.
//!
//! Up to `concurrent_requests` batches are in flight at once, each in a task of its own (so a
//! batch being retried does not hold back the next); a new batch starts after the newest entry
//! in flight, and once nothing is in flight the next read starts from the oldest entry again.
//!
//! Stopping: every await point is safe to abandon (lines are removed only after the answer, in
//! one synchronous step), so shutdown simply stops the task; whatever was in flight is sent
//! again at the next start, and InfluxDB overwrites identical points.

use super::config::InfluxConfig;
use super::line_protocol;
use super::metrics::{HealthHandle, HealthState, InfluxMetrics};
use super::outbox::{Entry, Outbox};
use super::writer::{encode_body, InfluxError, Outcome, Writer};
use crate::store::{DeadLetter, DeadLetterReason, DeadLetterSource};
use bytes::Bytes;
use locus_sdk::wire::now_ms;
use rand::Rng as _;
use sled::IVec;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Stores dead letters (the server passes its store's dead-letter writer and counts them).
/// Lines leave the outbox only after this returns `Ok`.
pub type DeadLetterSink = Arc<
    dyn Fn(Vec<DeadLetter>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync,
>;

/// How often a failure that keeps happening is logged again.
const LOG_REPEAT: Duration = Duration::from_secs(30);

/// Drains the outbox into InfluxDB; see the module doc.
#[allow(missing_debug_implementations)] // holds the dead-letter closure
pub struct Shipper {
    outbox: Outbox,
    writer: Writer,
    metrics: InfluxMetrics,
    health: HealthHandle,
    dead_letters: DeadLetterSink,
    gzip: bool,
    batch_lines: usize,
    batch_interval: Duration,
    concurrent_requests: usize,
    backoff_initial: Duration,
    backoff_max: Duration,
    /// When a failure was last logged, so a long outage logs every [`LOG_REPEAT`], not per try
    /// (shared by the requests in flight).
    last_failure_log: Mutex<Option<Instant>>,
}

impl Shipper {
    /// Validates the config, reads the credentials, builds the HTTP client. Does not contact
    /// InfluxDB: an unreachable InfluxDB shows up as retries once [`Shipper::run`] runs.
    pub fn new(
        outbox: Outbox,
        config: &InfluxConfig,
        metrics: InfluxMetrics,
        dead_letters: DeadLetterSink,
    ) -> Result<Shipper, InfluxError> {
        let writer = Writer::new(config)?;
        metrics.outbox_limit.set(i64::try_from(outbox.max_fixes()).unwrap_or(i64::MAX));
        let health = HealthHandle {
            state: Arc::new(Mutex::new(HealthState::default())),
            outbox: outbox.clone(),
            url: config.url.clone(),
            api: config.api.as_str(),
        };
        Ok(Shipper {
            outbox,
            writer,
            metrics,
            health,
            dead_letters,
            gzip: config.gzip,
            batch_lines: config.batch_lines,
            batch_interval: Duration::from_millis(config.batch_interval_ms),
            concurrent_requests: config.concurrent_requests,
            backoff_initial: Duration::from_millis(config.backoff_initial_ms),
            backoff_max: Duration::from_millis(config.backoff_max_ms),
            last_failure_log: Mutex::new(None),
        })
    }

    /// A handle for `/healthz`.
    pub fn health(&self) -> HealthHandle {
        self.health.clone()
    }

    /// Ships until `shutdown` resolves (spawn it: `tokio::spawn(shipper.run(signal))`).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        tracing::info!(endpoint = %self.writer.endpoint(), "InfluxDB shipper started");
        let shipper = Arc::new(self);
        tokio::select! {
            () = shutdown => {}
            () = shipper.drain() => {}
        }
        tracing::info!(waiting = shipper.outbox.depth(), "InfluxDB shipper stopped");
    }

    /// Reads batches and hands each to a task of its own, up to `concurrent_requests` at
    /// once. Dropping this future (shutdown) aborts the tasks, which is safe at any await (see
    /// the module doc).
    async fn drain(self: &Arc<Self>) {
        let mut in_flight = JoinSet::new();
        // The newest entry handed to a request in flight: the next batch starts after it.
        let mut cursor: Option<IVec> = None;
        let mut next_flush = Instant::now() + self.batch_interval;
        loop {
            while in_flight.len() >= self.concurrent_requests {
                finished(in_flight.join_next().await);
            }
            if in_flight.is_empty() {
                // Whatever was handed out has left the outbox, or failed to and goes again.
                cursor = None;
            }
            self.refresh_gauges();
            let batch = match self.read_batch(cursor.clone()).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the InfluxDB outbox; trying again");
                    tokio::time::sleep(self.backoff_max.min(Duration::from_secs(5))).await;
                    continue;
                }
            };
            let lines: u64 = batch.iter().map(|entry| entry.lines).sum();
            let full = lines >= self.batch_lines as u64;
            let urgent = !batch.is_empty() && self.outbox.take_urgent();
            if !batch.is_empty() && (full || urgent || Instant::now() >= next_flush) {
                cursor = batch.last().map(|entry| entry.key.clone());
                let shipper = Arc::clone(self);
                in_flight.spawn(async move { shipper.ship(batch).await });
                next_flush = Instant::now() + self.batch_interval;
                continue;
            }
            if batch.is_empty() {
                // A line arriving now waits at most one interval.
                next_flush = Instant::now() + self.batch_interval;
            }
            tokio::select! {
                () = tokio::time::sleep_until(next_flush.into()) => {}
                () = self.outbox.batch_ready() => {}
                done = in_flight.join_next(), if !in_flight.is_empty() => finished(done),
            }
        }
    }

    /// The oldest entries after `cursor` (from the start when `None`).
    async fn read_batch(&self, cursor: Option<IVec>) -> Result<Vec<Entry>, String> {
        let outbox = self.outbox.clone();
        let max = self.batch_lines;
        tokio::task::spawn_blocking(move || outbox.read_batch(cursor.as_deref(), max))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Writes one batch of outbox entries in one request; if InfluxDB refuses it, bisects.
    async fn ship(&self, batch: Vec<Entry>) {
        let values: Vec<IVec> = batch.iter().map(|entry| entry.value.clone()).collect();
        let body = self.encode(values).await;
        match self.deliver(body).await {
            Ok(()) => {
                self.count_written(batch.iter().map(|entry| entry.lines).sum());
                self.remove(batch.iter());
            }
            Err(refusal) => self.bisect(&batch, refusal).await,
        }
    }

    /// Writes the lines of a refused batch in halves, and halves of those, until every line is
    /// written or stands alone refused (then it becomes a dead letter). An entry leaves the
    /// outbox once all its lines have.
    async fn bisect(&self, batch: &[Entry], refusal: String) {
        // Every line, with the index of its entry (slices of the entries: no copies).
        let lines: Vec<(usize, IVec)> = batch
            .iter()
            .enumerate()
            .flat_map(|(i, entry)| entry.split_lines().map(move |line| (i, line)))
            .collect();
        let mut unfinished: Vec<u64> = batch.iter().map(|entry| entry.lines).collect();
        // Ranges of `lines` still to write, the next one last (so earlier lines go first), each
        // with InfluxDB's refusal when it is already known.
        let mut todo = vec![(0..lines.len(), Some(refusal))];
        while let Some((range, known_refusal)) = todo.pop() {
            let refusal = match known_refusal {
                Some(refusal) => Some(refusal),
                None => {
                    let chunk = lines[range.clone()].iter().map(|(_, line)| line.clone()).collect();
                    let body = self.encode(chunk).await;
                    self.deliver(body).await.err()
                }
            };
            match refusal {
                None => self.count_written(range.len() as u64),
                Some(refusal) if range.len() == 1 => {
                    self.dead_letter(&lines[range.start].1, &refusal).await;
                }
                Some(refusal) => {
                    tracing::debug!(lines = range.len(), %refusal, "InfluxDB refused a batch; bisecting");
                    let middle = range.start + range.len() / 2;
                    todo.push((middle..range.end, None));
                    todo.push((range.start..middle, None));
                    continue;
                }
            }
            let mut finished = Vec::new();
            for (i, _) in &lines[range] {
                unfinished[*i] -= 1;
                if unfinished[*i] == 0 {
                    finished.push(&batch[*i]);
                }
            }
            self.remove(finished);
        }
    }

    /// Sends one body until InfluxDB takes it (`Ok`) or refuses it as invalid or too large
    /// (`Err` with InfluxDB's error). Every other failure is retried with back-off, forever.
    async fn deliver(&self, body: Bytes) -> Result<(), String> {
        let mut backoff = Backoff::new(self.backoff_initial, self.backoff_max);
        loop {
            let started = Instant::now();
            let outcome = self.writer.write(body.clone()).await;
            self.refresh_gauges();
            match outcome {
                Outcome::Written => {
                    self.metrics.request_seconds.observe(started.elapsed().as_secs_f64());
                    self.succeeded();
                    return Ok(());
                }
                Outcome::Rejected { detail } | Outcome::TooLarge { detail } => {
                    self.metrics.request_seconds.observe(started.elapsed().as_secs_f64());
                    return Err(detail);
                }
                Outcome::Failed { status, detail, retry_after } => {
                    if status.is_some() {
                        self.metrics.request_seconds.observe(started.elapsed().as_secs_f64());
                    }
                    let delay = retry_after
                        .map_or_else(|| backoff.next_delay(), |d| d.min(self.backoff_max));
                    self.failed(status, &detail, delay);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn count_written(&self, lines: u64) {
        self.metrics.lines_written.inc_by(lines);
        self.metrics.batches_written.inc();
    }

    /// Removes entries whose every line InfluxDB has (or the dead letters have).
    fn remove<'a>(&self, entries: impl IntoIterator<Item = &'a Entry>) {
        if let Err(e) = self.outbox.remove(entries) {
            // The lines stay and are sent again: a duplicate write, no loss.
            tracing::error!(error = %e, "cannot remove written lines from the outbox");
        }
    }

    /// The request body for `pieces` (lines, or outbox entries of lines).
    async fn encode(&self, pieces: Vec<IVec>) -> Bytes {
        let gzip = self.gzip;
        let size: usize = pieces.iter().map(|piece| piece.len()).sum();
        // Small chunks (bisection) are cheap enough to encode in place; a full batch is
        // hundreds of kilobytes of gzip work, kept off the async workers.
        if size < 16 * 1024 {
            return encode_body(&pieces, gzip);
        }
        let shared = Arc::new(pieces);
        let job = Arc::clone(&shared);
        match tokio::task::spawn_blocking(move || encode_body(&job, gzip)).await {
            Ok(body) => body,
            // Never send a made-up (empty) body: a 2xx for it would drop the lines.
            Err(_) => encode_body(&shared, gzip),
        }
    }

    /// Stores one refused line as a dead letter, retrying until the store takes it (the line
    /// stays in the outbox meanwhile). A crash between storing the dead letter and removing
    /// the line's entry stores it once more after the restart: a duplicate, never a loss.
    async fn dead_letter(&self, line: &[u8], detail: &str) {
        let mut backoff = Backoff::new(self.backoff_initial, self.backoff_max);
        loop {
            let letter = DeadLetter::new(
                DeadLetterReason::InfluxRejected,
                DeadLetterSource::Influx,
                line_protocol::tag_of_line(line, "courier"),
                detail,
                line,
                line_protocol::received_ms_of_line(line).unwrap_or_else(now_ms),
            );
            match (self.dead_letters)(vec![letter]) {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, "cannot store a dead letter for a line InfluxDB refused");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        self.metrics.lines_rejected.inc();
        tracing::warn!(
            line = %String::from_utf8_lossy(line),
            %detail,
            "InfluxDB refused a point as invalid; it is in the dead letters"
        );
        self.health.update(|h| {
            h.last_error = Some(format!("point refused: {detail}"));
            h.last_error_ms = Some(now_ms());
        });
    }

    fn succeeded(&self) {
        let mut recovered = None;
        self.health.update(|h| {
            if h.consecutive_failures > 0 {
                recovered = Some(h.consecutive_failures);
            }
            h.unreachable = false;
            h.failing = false;
            h.consecutive_failures = 0;
            h.last_success_ms = Some(now_ms());
        });
        if let Some(failures) = recovered {
            tracing::info!(
                failures,
                waiting = self.outbox.depth(),
                "InfluxDB takes writes again; shipping the backlog"
            );
            *lock(&self.last_failure_log) = None;
        }
    }

    fn failed(&self, status: Option<reqwest::StatusCode>, detail: &str, delay: Duration) {
        let label = status.map_or_else(|| "network".to_owned(), |s| s.as_u16().to_string());
        self.metrics.failure(&label);
        self.metrics.retries.inc();
        let mut failures = 0;
        self.health.update(|h| {
            h.unreachable = status.is_none();
            h.failing = true;
            h.consecutive_failures += 1;
            failures = h.consecutive_failures;
            h.last_error = Some(detail.to_owned());
            h.last_error_ms = Some(now_ms());
        });
        {
            let mut last_log = lock(&self.last_failure_log);
            if last_log.is_some_and(|at| at.elapsed() < LOG_REPEAT) {
                return;
            }
            *last_log = Some(Instant::now());
        }
        let hint = match status.map(|s| s.as_u16()) {
            None => "InfluxDB is unreachable",
            Some(401 | 403) => {
                "InfluxDB refuses the credentials: check [influx] username/password or token"
            }
            Some(404) => "InfluxDB has no such database or bucket: create it or fix [influx]",
            Some(429) => "InfluxDB asks to slow down",
            Some(_) => "InfluxDB failed the write",
        };
        tracing::warn!(
            endpoint = %self.writer.endpoint(),
            error = %detail,
            failures,
            waiting = self.outbox.depth(),
            retry_in_ms = delay.as_millis() as u64,
            "{hint}; fixes stay in the outbox and are retried (ingestion goes on)"
        );
    }

    fn refresh_gauges(&self) {
        let depth = self.outbox.depth();
        self.metrics.outbox_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.metrics.outbox_full.set(i64::from(self.outbox.at_limit()));
        let age = match self.outbox.oldest_received_ms() {
            Ok(Some(received)) => now_ms().saturating_sub(received) as f64 / 1000.0,
            _ => 0.0,
        };
        self.metrics.outbox_oldest_age_seconds.set(age);
    }
}

/// Logs a shipping task that ended other than by finishing its batch (it panicked: its lines
/// stay in the outbox and go again).
fn finished(task: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(e)) = task {
        tracing::error!(error = %e, "an InfluxDB write task failed; its lines are sent again");
    }
}

/// A lock that outlives a panic of another holder (the data is a timestamp).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Capped exponential back-off with "equal jitter": each delay is between half and all of the
/// current step, so many locusd instances hitting one recovering InfluxDB spread out. One per
/// thing retried: a success ends it.
#[derive(Debug)]
struct Backoff {
    max: Duration,
    step: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { max, step: initial }
    }

    fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let steps = [100, 200, 400, 800, 1000, 1000];
        for step in steps {
            let d = b.next_delay();
            let step = Duration::from_millis(step);
            assert!(d >= step / 2 && d <= step, "{d:?} for step {step:?}");
        }
    }
}
