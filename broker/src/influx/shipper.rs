//! The shipper: a tokio task that drains the outbox into InfluxDB.
//!
//! Enters: lines in the [`Outbox`] (oldest first). Leaves: write requests (see
//! [`writer`](super::writer)); lines InfluxDB refuses as invalid, as [`DeadLetter`]s through the
//! [`DeadLetterSink`]; metrics and health.
//!
//! A batch is sent when `batch_lines` lines wait, or when the oldest has waited
//! `batch_interval_ms`. Lines leave the outbox only after a 2xx. A failed write (no answer, 5xx,
//! 429, 401/403/404) is retried with capped exponential back-off and jitter, forever: the outbox
//! is durable and bounded, and at its limit the pipeline stops acking, so devices hold the
//! data. A batch refused as invalid (400/422) is bisected until the invalid lines stand alone;
//! those become dead letters with InfluxDB's error and the rest is written, so one bad point
//! never blocks the outbox. A 413 splits the batch the same way.
//!
//! Stopping: every await point is safe to abandon (lines are removed only after the answer, in
//! one synchronous step), so shutdown simply stops the task; whatever was in flight is sent
//! again at the next start, and InfluxDB overwrites identical points.

use super::config::InfluxConfig;
use super::line_protocol;
use super::metrics::{HealthHandle, HealthState, InfluxMetrics};
use super::outbox::Outbox;
use super::writer::{encode_body, InfluxError, Outcome, Writer};
use crate::pipeline::now_ms;
use crate::store::DeadLetter;
use bytes::Bytes;
use rand::Rng as _;
use sled::IVec;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Stores dead letters (the server passes its store's dead-letter writer and counts them).
/// Lines leave the outbox only after this returns `Ok`.
pub type DeadLetterSink = Arc<
    dyn Fn(Vec<DeadLetter>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync,
>;

/// The `reason` of dead letters for lines InfluxDB refused.
pub const REJECTED_REASON: &str = "influx_rejected";

/// The `topic` of those dead letters.
pub const DEAD_LETTER_TOPIC: &str = "influx";

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
    backoff_initial: Duration,
    backoff_max: Duration,
    /// When a failure was last logged, so a long outage logs every [`LOG_REPEAT`], not per try.
    last_failure_log: Option<Instant>,
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
        metrics.outbox_limit.set(i64::try_from(outbox.max_entries()).unwrap_or(i64::MAX));
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
            backoff_initial: Duration::from_millis(config.backoff_initial_ms),
            backoff_max: Duration::from_millis(config.backoff_max_ms),
            last_failure_log: None,
        })
    }

    /// A handle for `/healthz`.
    pub fn health(&self) -> HealthHandle {
        self.health.clone()
    }

    /// Ships until `shutdown` resolves (spawn it: `tokio::spawn(shipper.run(signal))`).
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        tracing::info!(endpoint = %self.writer.endpoint(), "InfluxDB shipper started");
        tokio::select! {
            () = shutdown => {}
            () = self.drain() => {}
        }
        tracing::info!(waiting = self.outbox.depth(), "InfluxDB shipper stopped");
    }

    async fn drain(&mut self) {
        let mut next_flush = Instant::now() + self.batch_interval;
        loop {
            self.refresh_gauges();
            let batch = match self.read_batch().await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the InfluxDB outbox; trying again");
                    tokio::time::sleep(self.backoff_max.min(Duration::from_secs(5))).await;
                    continue;
                }
            };
            let full = batch.len() >= self.batch_lines;
            if !batch.is_empty() && (full || Instant::now() >= next_flush) {
                self.ship(batch).await;
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
            }
        }
    }

    async fn read_batch(&self) -> Result<Vec<(IVec, IVec)>, String> {
        let outbox = self.outbox.clone();
        let max = self.batch_lines;
        tokio::task::spawn_blocking(move || outbox.read_batch(max))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Writes one batch, retrying and bisecting until every line is written or dead-lettered.
    async fn ship(&mut self, batch: Vec<(IVec, IVec)>) {
        // Sub-batches still to write; the last one is written next (earlier lines first).
        let mut todo = vec![batch];
        let mut backoff = Backoff::new(self.backoff_initial, self.backoff_max);
        while let Some(chunk) = todo.pop() {
            let body = self.encode(&chunk).await;
            loop {
                let started = Instant::now();
                let outcome = self.writer.write(body.clone()).await;
                self.refresh_gauges();
                match outcome {
                    Outcome::Written => {
                        self.metrics.request_seconds.observe(started.elapsed().as_secs_f64());
                        if let Err(e) = self.outbox.remove(chunk.iter().map(|(k, _)| k.clone())) {
                            // The lines stay and are sent again: a duplicate write, no loss.
                            tracing::error!(error = %e, "cannot remove written lines from the outbox");
                        }
                        self.metrics.lines_written.inc_by(chunk.len() as u64);
                        self.metrics.batches_written.inc();
                        self.succeeded();
                        backoff.reset();
                        break;
                    }
                    Outcome::Rejected { detail } | Outcome::TooLarge { detail }
                        if chunk.len() == 1 =>
                    {
                        self.metrics.request_seconds.observe(started.elapsed().as_secs_f64());
                        if self.dead_letter(&chunk[0], &detail) {
                            break;
                        }
                        // The dead letter could not be stored: keep the line, try later.
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Outcome::Rejected { detail } | Outcome::TooLarge { detail } => {
                        self.metrics.request_seconds.observe(started.elapsed().as_secs_f64());
                        tracing::debug!(lines = chunk.len(), %detail, "InfluxDB refused a batch; bisecting");
                        let mut first = chunk;
                        let second = first.split_off(first.len() / 2);
                        todo.push(second);
                        todo.push(first);
                        break;
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
    }

    async fn encode(&self, chunk: &[(IVec, IVec)]) -> Bytes {
        let lines: Vec<IVec> = chunk.iter().map(|(_, line)| line.clone()).collect();
        let gzip = self.gzip;
        // Small chunks (bisection) are cheap enough to encode in place; a full batch is
        // hundreds of kilobytes of gzip work, kept off the async workers.
        if lines.len() < 64 {
            return encode_body(&lines, gzip);
        }
        let shared = Arc::new(lines);
        let job = Arc::clone(&shared);
        match tokio::task::spawn_blocking(move || encode_body(&job, gzip)).await {
            Ok(body) => body,
            // Never send a made-up (empty) body: a 2xx for it would drop the lines.
            Err(_) => encode_body(&shared, gzip),
        }
    }

    /// Moves one refused line to the dead letters; false if they could not be stored.
    fn dead_letter(&self, (key, line): &(IVec, IVec), detail: &str) -> bool {
        let letter = DeadLetter {
            reason: REJECTED_REASON.to_owned(),
            detail: detail.to_owned(),
            topic: DEAD_LETTER_TOPIC.to_owned(),
            courier: line_protocol::tag_of_line(line, "courier"),
            received_ms: line_protocol::received_ms_of_line(line).unwrap_or_else(now_ms),
            payload: line.to_vec(),
        };
        if let Err(e) = (self.dead_letters)(vec![letter]) {
            tracing::error!(error = %e, "cannot store a dead letter for a line InfluxDB refused");
            return false;
        }
        if let Err(e) = self.outbox.remove([key.clone()]) {
            tracing::error!(error = %e, "cannot remove a dead-lettered line from the outbox");
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
        true
    }

    fn succeeded(&mut self) {
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
            self.last_failure_log = None;
        }
    }

    fn failed(&mut self, status: Option<reqwest::StatusCode>, detail: &str, delay: Duration) {
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
        if self.last_failure_log.is_some_and(|at| at.elapsed() < LOG_REPEAT) {
            return;
        }
        self.last_failure_log = Some(Instant::now());
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
        self.metrics.outbox_full.set(i64::from(self.outbox.is_full()));
        let age = match self.outbox.oldest_received_ms() {
            Ok(Some(received)) => now_ms().saturating_sub(received) as f64 / 1000.0,
            _ => 0.0,
        };
        self.metrics.outbox_oldest_age_seconds.set(age);
    }
}

/// Capped exponential back-off with "equal jitter": each delay is between half and all of the
/// current step, so many locusd instances hitting one recovering InfluxDB spread out.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, step: initial }
    }

    fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    fn reset(&mut self) {
        self.step = self.initial;
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
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
