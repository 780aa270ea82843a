//! Shared by the `influx_*` tests: a sled store with an outbox, a shipper on its own runtime,
//! generous waiting, and a tiny HTTP server that records write requests (for what no real
//! server here can answer: the v2 API, chosen failures).

#![allow(dead_code)] // each test file uses a different part

use anyhow::{bail, Result};
use locus_broker::influx::outbox::lines_of;
use locus_broker::influx::{
    point, DeadLetterSink, HealthHandle, InfluxConfig, InfluxMetrics, InfluxState, Outbox, Shipper,
};
use locus_broker::store::{
    Commit, DeadLetter, LogEntry, RecordBuilder, Store, StoreOptions, StoredFix,
};
use locus_sdk::wire::{Fix, FixDetails};
use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Device time of the first generated fix (recent, so InfluxDB's default retention keeps it).
pub fn base_ts() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    // Whole seconds, an hour back: far from "now" but well inside any retention policy.
    (now.as_secs() - 3600) * 1000
}

/// Fix number `i` of a run: couriers `c0..c{couriers}`, distinct device times per courier.
pub fn fix(base: u64, i: u64, couriers: u64) -> (String, StoredFix) {
    let courier = format!("c{}", i % couriers);
    let mut fix = Fix::from_degrees(base + i, 41.38 + (i % 1000) as f64 * 1e-5, 2.17);
    fix.details = Some(FixDetails {
        accuracy_cm: Some(500),
        speed_cm_s: Some((i % 2000) as u32),
        heading_cdeg: Some((i % 36000) as u16),
        battery_pct: Some((i % 100) as u8),
        order: matches!(i % 3, 0).then(|| format!("o{}", i % 7)),
    });
    (courier, StoredFix { fix, attributes: vec![], received_ms: base + i + 150 })
}

/// Fixes per commit in [`Env::enqueue`]: under load the pipeline commits hundreds of reports
/// at once; 100 keeps several entries in every test batch.
pub const LINES_PER_COMMIT: usize = 100;

/// A store in a temp dir and its outbox.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub outbox: Outbox,
    pub config: InfluxConfig,
}

impl Env {
    pub fn new(config: InfluxConfig) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(
            dir.path(),
            StoreOptions { keep_for_shipper: true, ..StoreOptions::default() },
        )
        .unwrap();
        let outbox = Outbox::open(&store, &config);
        Env { dir, store, outbox, config }
    }

    /// Queues fixes the way the commit path does under load: a commit (one outbox entry) per
    /// [`LINES_PER_COMMIT`] fixes.
    pub fn enqueue(&self, fixes: impl IntoIterator<Item = (String, StoredFix)>) {
        self.enqueue_commits(fixes, LINES_PER_COMMIT);
    }

    /// Queues fixes in commits of `per_commit` fixes.
    pub fn enqueue_commits(
        &self,
        fixes: impl IntoIterator<Item = (String, StoredFix)>,
        per_commit: usize,
    ) {
        for commit in self.lines(fixes).chunks(per_commit) {
            self.commit(commit.to_vec());
        }
    }

    /// Commits fixes the way the pipeline does, `per_commit` to a log entry (the shipper then
    /// turns them into lines itself). Each entry's receive time is its first fix's.
    pub fn commit_fixes(
        &self,
        fixes: impl IntoIterator<Item = (String, StoredFix)>,
        per_commit: usize,
    ) {
        let fixes: Vec<(String, StoredFix)> = fixes.into_iter().collect();
        for chunk in fixes.chunks(per_commit) {
            let mut record = RecordBuilder::new(chunk[0].1.received_ms);
            for (courier, fix) in chunk {
                record.fix(courier, fix.fix.clone(), fix.attributes.clone());
            }
            self.store.commit(Commit { record: record.finish(), ..Commit::default() }).unwrap();
            self.outbox.committed();
        }
    }

    /// Queues raw lines (for points the schema would never produce), a commit each.
    pub fn enqueue_raw(&self, lines: &[&str]) {
        for line in lines {
            self.commit(vec![(*line).to_owned()]);
        }
    }

    /// The lines of fixes, as the commit path makes them.
    pub fn lines(&self, fixes: impl IntoIterator<Item = (String, StoredFix)>) -> Vec<String> {
        let schema = self.config.schema();
        fixes.into_iter().map(|(courier, fix)| point(&courier, &fix, &schema)).collect()
    }

    /// One log entry of ready-made `lines` (what a migrated outbox holds; the shipper sends
    /// them as they are), so tests choose every byte InfluxDB sees.
    pub fn commit(&self, lines: Vec<String>) {
        self.store.append_lines(lines.join("\n").into_bytes()).unwrap();
        self.outbox.committed();
    }

    /// Lines waiting in the outbox, counted from the log (not from the store's counter).
    pub fn outbox_lines(&self) -> usize {
        let waiting = self.store.shipper_read(None, u64::MAX).unwrap();
        waiting
            .iter()
            .map(|(_, entry)| match entry {
                LogEntry::LegacyLines(lines) => lines_of(lines).count(),
                LogEntry::Commit(record) => record.fixes.len(),
                LogEntry::Orders(_) | LogEntry::Replica(_) => 0,
            })
            .sum()
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.store.dead_letters(0, 10_000).unwrap().into_iter().map(|(_, l)| l).collect()
    }

    /// Starts a shipper on its own runtime.
    pub fn ship(&self) -> Running {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let metrics = InfluxMetrics::default();
        let store = self.store.clone();
        let sink: DeadLetterSink = Arc::new(move |letters| Ok(store.record_dead_letters(letters)?));
        let shipper =
            Shipper::new(self.outbox.clone(), &self.config, metrics.clone(), sink).unwrap();
        let health = shipper.health();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(shipper.run(async move {
            let _ = stopped.await;
        }));
        Running { runtime, metrics, health, stop: Some(stop), task: Some(task) }
    }
}

/// A shipper running on its own runtime; stops on drop.
pub struct Running {
    pub runtime: tokio::runtime::Runtime,
    pub metrics: InfluxMetrics,
    pub health: HealthHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Signals shutdown and waits for the task to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let (Some(stop), Some(task)) = (self.stop.take(), self.task.take()) {
            let _ = stop.send(());
            self.runtime.block_on(task).unwrap();
        }
    }

    pub fn state(&self) -> InfluxState {
        self.health.snapshot().state
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Test config pointing at `url`: small batches, short intervals and back-off, so tests are
/// quick without relying on timing.
pub fn config(url: &str, database: &str) -> InfluxConfig {
    InfluxConfig {
        url: url.to_owned(),
        database: database.to_owned(),
        batch_lines: 1_000,
        batch_interval_ms: 50,
        backoff_initial_ms: 20,
        backoff_max_ms: 300,
        connect_timeout_ms: 1_000,
        request_timeout_ms: 20_000,
        ..InfluxConfig::default()
    }
}

/// Waits (generously) until `check` says yes; never asserts on how long it took.
pub fn wait_until(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last_error = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} (last error: {last_error:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request the recording server got.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    /// The body, gunzipped when `Content-Encoding: gzip`.
    pub body: String,
}

impl Recorded {
    pub fn lines(&self) -> Vec<&str> {
        self.body.lines().collect()
    }
}

/// Chooses the answer (status, body) to the n-th request (0-based).
pub type Responder = Arc<dyn Fn(usize, &Recorded) -> (u16, String) + Send + Sync>;

/// A minimal HTTP/1.1 server on a free loopback port that records every request.
pub struct RecordingServer {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Serves the connections; dropping it ends them.
    _runtime: tokio::runtime::Runtime,
}

impl RecordingServer {
    pub fn start(responder: Responder) -> RecordingServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let recorded = Arc::clone(&recorded);
                let responder = Arc::clone(&responder);
                tokio::spawn(async move {
                    let _ = serve(stream, recorded, responder).await;
                });
            }
        });
        RecordingServer { url, requests, _runtime: runtime }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Every line of every request, in order (including requests answered with an error).
    pub fn all_lines(&self) -> Vec<String> {
        let requests = self.requests();
        requests.iter().flat_map(|r| r.lines()).map(str::to_owned).collect()
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    responder: Responder,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    loop {
        // Headers.
        let header_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
        let mut head_lines = head.split("\r\n");
        let mut request_line = head_lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let target = request_line.next().unwrap_or_default().to_owned();
        let headers: HashMap<String, String> = head_lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buffer.len() < header_end + length {
            let mut chunk = [0u8; 65536];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        let raw: Vec<u8> = buffer[header_end..header_end + length].to_vec();
        buffer.drain(..header_end + length);
        let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&raw[..]).read_to_string(&mut text)?;
            text
        } else {
            String::from_utf8_lossy(&raw).to_string()
        };
        let request = Recorded { method, target, headers, body };
        let (status, answer) = {
            let mut all = recorded.lock().unwrap();
            let n = all.len();
            let answer = responder(n, &request);
            all.push(request);
            answer
        };
        let response = format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
}
