//! `locusd bench`: a load generator for a running locusd.
//!
//! N simulated couriers, each on its own MQTT connection (rumqttc), publish QoS 1 reports and
//! listen for their acks. A report counts as committed when its ack arrives; its latency is
//! publish → ack, the end-to-end promise devices wait for. Without `--rate` every courier keeps
//! `--window` reports outstanding (maximum throughput); with `--rate` the total publish rate is
//! fixed (latency at a given load); with `--interval-ms` each courier sends one report every
//! interval, at a random phase and with ±10% jitter, as a city's phones do (a fleet at 1 Hz).
//! The run also says how long the whole fleet took to connect.
//!
//! A courier whose connection fails reconnects after a short back-off and resends every report
//! not yet acked, as a device does; failures are counted in the summary. A run fails only when
//! no courier could connect at all.
//!
//! `--baseline` then runs the same load against a bare rumqttd started inside this process with
//! locusd's own broker settings ([`crate::mqtt::start`]) and a relay that acks every report the
//! moment it arrives (no validation, no storage), and prints the ratio of the two: what locusd's
//! pipeline costs over the broker alone, measured under the same machine noise.

use crate::auth::{Role, TokenAuthority};
use crate::config::{Config, MqttConfig};
use crate::metrics::Metrics;
use crate::mqtt::BrokerLink;
use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use locus_sdk::topics;
use locus_sdk::wire::{self, Fix, Report};
use rumqttc::{AsyncClient, ClientError, Event, EventLoop, MqttOptions, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, Args)]
pub(super) struct BenchArgs {
    /// The server's MQTT 3.1.1 address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// Simulated couriers (one connection each).
    #[arg(long, default_value_t = 50)]
    couriers: usize,
    /// Total fixes per second to publish; 0 = as fast as acks allow.
    #[arg(long, default_value_t = 0, conflicts_with = "interval_ms")]
    rate: u64,
    /// A city: each courier sends one report every this many milliseconds (random phase,
    /// ±10% jitter per report), e.g. `--couriers 10000 --interval-ms 1000`.
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Fixes per report.
    #[arg(long, default_value_t = 1)]
    fixes_per_report: usize,
    /// Reports each courier may have unacknowledged at once.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Seconds to measure (after every courier connected and a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// The server's data dir, to issue courier tokens; omit for a server started with
    /// --allow-anonymous.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Then run the same load against a bare rumqttd started in this process (locusd's broker
    /// settings, every report acked on arrival: no validation, no storage) and print the ratio.
    #[arg(long)]
    baseline: bool,
    /// A locusd config file whose [mqtt] settings the bare broker of --baseline uses
    /// [default: locusd's defaults].
    #[arg(long, requires = "baseline")]
    config: Option<PathBuf>,
}

impl BenchArgs {
    /// Refuses settings that cannot run.
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.couriers > 0 && self.window > 0 && self.fixes_per_report > 0,
            "--couriers, --window and --fixes-per-report must be at least 1"
        );
        anyhow::ensure!(self.duration_s > 0, "--duration-s must be at least 1");
        anyhow::ensure!(self.interval_ms != Some(0), "--interval-ms must be at least 1");
        Ok(())
    }

    /// The load, as the first line of the output.
    fn describe(&self) -> String {
        format!(
            "couriers={} fixes_per_report={} rate={} window={} duration={}s",
            self.couriers,
            self.fixes_per_report,
            match (self.interval_ms, self.rate) {
                (Some(ms), _) => format!("a report per courier every {ms} ms ±10%"),
                (None, 0) => "max".to_string(),
                (None, rate) => format!("{rate}/s"),
            },
            self.window,
            self.duration_s
        )
    }
}

const WARMUP: Duration = Duration::from_secs(2);

/// How long a run waits for its couriers to connect before the load starts; a run where none
/// did by then (or where every courier failed and none connected) fails.
const CONNECT_GRACE: Duration = Duration::from_secs(30);

/// How long a courier waits for its CONNACK, seconds: long enough that a slow server shows as a
/// long connect time, not as a cascade of retries (a retry makes the broker take over the
/// session of the first attempt it was still completing, closing it).
const CONNECT_TIMEOUT_S: u64 = 30;

/// Outstanding reports may take this long to be acked after a run before the couriers hang up.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Totals {
    /// Couriers publish once this is set: after all of them connected (or CONNECT_GRACE), so a
    /// burst of connections is not slowed by the load of the couriers already in.
    go: AtomicBool,
    measuring: AtomicBool,
    fixes_acked: AtomicU64,
    reports_published: AtomicU64,
    /// Couriers that connected at least once.
    connected_couriers: AtomicUsize,
    /// Couriers that failed to connect before they ever connected.
    failed_before_connecting: AtomicUsize,
    /// Connection failures (a failed connect or a dropped connection), by message.
    errors: Mutex<HashMap<String, u64>>,
    /// Those of them while measuring.
    errors_measuring: AtomicU64,
}

impl Totals {
    fn connection_failed(&self, error: &rumqttc::ConnectionError) {
        if self.measuring.load(Ordering::Relaxed) {
            self.errors_measuring.fetch_add(1, Ordering::Relaxed);
        }
        *self.errors.lock().expect("errors lock").entry(error.to_string()).or_default() += 1;
    }

    /// The failures, most frequent first.
    fn errors(&self) -> Vec<(String, u64)> {
        let mut errors: Vec<_> =
            self.errors.lock().expect("errors lock").iter().map(|(e, n)| (e.clone(), *n)).collect();
        errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        errors
    }
}

pub(super) fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.check()?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let authority = args.data_dir.as_deref().map(TokenAuthority::open).transpose()?;
    // Started first so a bad --config fails before the first run; idle, it costs nothing.
    let bare =
        if args.baseline { Some(BareBroker::start(args.config.as_deref()).await?) } else { None };

    // The limits the bare broker runs with; a locusd with the same settings has the same ones.
    let limits = match &bare {
        Some(bare) => bare.mqtt.clone(),
        None => MqttConfig::default(),
    };

    println!("{}", args.describe());
    let width = if bare.is_some() { "bare rumqttd:".len() } else { "locusd:".len() };
    eprintln!("bench: locusd at {}", args.mqtt);
    let locusd = measure(&args, args.mqtt, authority.as_ref()).await?;
    report_errors("locusd", &locusd);
    println!("{}", locusd.summary("locusd:", width));
    let Some(bare) = bare else {
        if let Some(note) = rate_limit_note("locusd", &locusd, &limits) {
            eprintln!("{note}");
        }
        return Ok(());
    };

    eprintln!("bench: bare rumqttd at {}", bare.addr);
    let baseline = measure(&args, bare.addr, None).await?;
    report_errors("bare rumqttd", &baseline);
    println!("{}", baseline.summary("bare rumqttd:", width));
    for (label, result) in [("locusd", &locusd), ("bare rumqttd", &baseline)] {
        if let Some(note) = rate_limit_note(label, result, &limits) {
            eprintln!("{note}");
        }
    }
    println!("{}", ratio_line(locusd.fixes_per_s(), baseline.fixes_per_s()));
    Ok(())
}

/// Every kind of connection failure of a run, on stderr (the summary names the commonest).
fn report_errors(label: &str, result: &RunResult) {
    for (error, count) in &result.errors {
        eprintln!("bench: {label}: connection error ×{count}: {error}");
    }
}

/// A warning when a run came within 10% of (or past, thanks to the burst) the publish rate
/// limit of all its couriers together: then that limit, not the server, set its figure.
fn rate_limit_note(label: &str, result: &RunResult, limits: &MqttConfig) -> Option<String> {
    let cap = u64::from(limits.max_publish_rate) * result.couriers as u64;
    if cap == 0 || result.reports_per_s() < 0.9 * cap as f64 {
        return None;
    }
    Some(format!(
        "bench: note: {label} ran at {:.0}% of [mqtt] max_publish_rate × couriers ({}/s × {} = \
         {} reports/s), so that limit may have set its figure; for a server's own ceiling set \
         max_publish_rate = 0 in its config and give the same file to --config",
        100.0 * result.reports_per_s() / cap as f64,
        thousands(limits.max_publish_rate.into()),
        result.couriers,
        thousands(cap),
    ))
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
struct RunResult {
    fixes_per_report: usize,
    fixes_acked: u64,
    elapsed_s: f64,
    /// Publish → ack latencies in ms: p50, p90, p99, max.
    latency_ms: [f64; 4],
    /// Reports timed.
    samples: u64,
    couriers: usize,
    connected: usize,
    /// Seconds from the first CONNECT until every courier was connected (or the grace ran out).
    connect_s: f64,
    /// Connection failures, most frequent message first.
    errors: Vec<(String, u64)>,
    /// How many of them happened while measuring.
    errors_measuring: u64,
}

impl RunResult {
    fn fixes_per_s(&self) -> f64 {
        self.fixes_acked as f64 / self.elapsed_s
    }

    fn reports_per_s(&self) -> f64 {
        self.fixes_per_s() / self.fixes_per_report as f64
    }

    /// One line: `label` padded to `width`, then throughput, latency and connection figures.
    fn summary(&self, label: &str, width: usize) -> String {
        let [p50, p90, p99, max] = self.latency_ms;
        let errors: u64 = self.errors.iter().map(|(_, n)| n).sum();
        let mut line = format!(
            "{label:<width$} {:>9} fixes/s  p50={p50:.2}ms p90={p90:.2}ms p99={p99:.2}ms \
             max={max:.2}ms  ({} fixes in {:.1} s, {} reports timed, couriers connected {}/{} \
             in {:.1} s, connection errors: {errors} ({} while measuring)",
            thousands(self.fixes_per_s().round() as u64),
            thousands(self.fixes_acked),
            self.elapsed_s,
            thousands(self.samples),
            self.connected,
            self.couriers,
            self.connect_s,
            self.errors_measuring,
        );
        if let Some((first, _)) = self.errors.first() {
            line.push_str(&format!(", most: {first}"));
        }
        line.push(')');
        line
    }
}

/// `ratio locusd / bare: 0.63`, or why there is none.
fn ratio_line(locusd: f64, bare: f64) -> String {
    if bare > 0.0 && bare.is_finite() && locusd.is_finite() {
        format!("ratio locusd / bare: {:.2}", locusd / bare)
    } else {
        "ratio locusd / bare: n/a (the bare broker acked nothing)".to_string()
    }
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs the load against `addr` once: warm-up, measurement, then every courier hangs up.
async fn measure(
    args: &BenchArgs,
    addr: SocketAddr,
    authority: Option<&TokenAuthority>,
) -> anyhow::Result<RunResult> {
    // Fresh courier ids per run: no retained ack of an earlier run applies to them.
    let run_id = hex::encode(rand::random::<[u8; 3]>());
    let totals = Arc::new(Totals::default());
    let latencies =
        Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds")));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let connecting = Instant::now();
    for i in 0..args.couriers {
        let courier = format!("bench-{run_id}-{i}");
        let password = authority.map(|a| a.issue(Role::Courier, &courier));
        let pace = match (args.interval_ms, args.rate) {
            (Some(ms), _) => Pace::City { period: Duration::from_millis(ms) },
            (None, 0) => Pace::Max,
            (None, rate) => {
                let reports_per_s = rate as f64 / args.fixes_per_report as f64;
                Pace::Fixed {
                    period: Duration::from_secs_f64(args.couriers as f64 / reports_per_s),
                }
            }
        };
        // 100 couriers a row, about 100 m apart, from the corner of central Barcelona.
        let home = (41.36 + (i / 100) as f64 * 0.0009, 2.12 + (i % 100) as f64 * 0.0012);
        tasks.push(tokio::spawn(run_courier(CourierRun {
            courier,
            home,
            password,
            mqtt: addr,
            fixes_per_report: args.fixes_per_report,
            window: args.window,
            pace,
            totals: totals.clone(),
            latencies: latencies.clone(),
            stop: stop.clone(),
        })));
    }
    let finish = |tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>| async {
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.context("courier task")??;
        }
        anyhow::Ok(())
    };

    // The load and the warm-up start once every courier is connected, or at the latest after
    // CONNECT_GRACE.
    let deadline = Instant::now() + CONNECT_GRACE;
    while totals.connected_couriers.load(Ordering::Relaxed) < args.couriers
        && Instant::now() < deadline
        && !(totals.connected_couriers.load(Ordering::Relaxed) == 0
            && totals.failed_before_connecting.load(Ordering::Relaxed) == args.couriers)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_s = connecting.elapsed().as_secs_f64();
    let connected = totals.connected_couriers.load(Ordering::Relaxed);
    if connected == 0 {
        finish(tasks).await?;
        let why = totals.errors().first().map_or("no answer".to_string(), |(e, _)| e.clone());
        anyhow::bail!("no courier could connect to {addr}: {why}");
    }
    if connected < args.couriers {
        eprintln!(
            "bench: {connected} of {} couriers connected within {} s; measuring anyway",
            args.couriers,
            CONNECT_GRACE.as_secs()
        );
    }
    totals.go.store(true, Ordering::Relaxed);
    tokio::time::sleep(WARMUP).await;

    latencies.lock().expect("histogram lock").reset();
    let acked_before = totals.fixes_acked.load(Ordering::Relaxed);
    totals.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration_s)).await;
    let acked = totals.fixes_acked.load(Ordering::Relaxed) - acked_before;
    let elapsed_s = started.elapsed().as_secs_f64();
    totals.measuring.store(false, Ordering::Relaxed);
    finish(tasks).await?;

    let h = latencies.lock().expect("histogram lock");
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(RunResult {
        fixes_per_report: args.fixes_per_report,
        fixes_acked: acked,
        elapsed_s,
        latency_ms: [
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
        ],
        samples: h.len(),
        couriers: args.couriers,
        connected: totals.connected_couriers.load(Ordering::Relaxed),
        connect_s,
        errors: totals.errors(),
        errors_measuring: totals.errors_measuring.load(Ordering::Relaxed),
    })
}

struct CourierRun {
    courier: String,
    /// Where it starts: couriers are spread over a grid, so a map of them looks like a city.
    home: (f64, f64),
    password: Option<String>,
    mqtt: SocketAddr,
    fixes_per_report: usize,
    window: usize,
    pace: Pace,
    totals: Arc<Totals>,
    latencies: Arc<Mutex<Histogram<u64>>>,
    stop: Arc<AtomicBool>,
}

/// When a courier publishes.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// Whenever its window has room.
    Max,
    /// Every `period`, on a shared clock (a fixed total rate).
    Fixed { period: Duration },
    /// Every `period` ±10%, from a random phase: a phone.
    City { period: Duration },
}

/// Waits for a courier's next report.
enum Pacer {
    Max,
    Fixed(tokio::time::Interval),
    City { period: Duration, next: tokio::time::Instant },
}

impl Pacer {
    /// Starts pacing now (no burst of the ticks missed while the fleet connected).
    fn start(pace: Pace) -> Pacer {
        let now = tokio::time::Instant::now();
        match pace {
            Pace::Max => Pacer::Max,
            Pace::Fixed { period } => {
                let mut ticker = tokio::time::interval_at(now, period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                Pacer::Fixed(ticker)
            }
            Pace::City { period } => {
                Pacer::City { period, next: now + period.mul_f64(rand::random::<f64>()) }
            }
        }
    }

    async fn wait(&mut self) {
        match self {
            Pacer::Max => {}
            Pacer::Fixed(ticker) => {
                ticker.tick().await;
            }
            Pacer::City { period, next } => {
                tokio::time::sleep_until(*next).await;
                // A late courier does not catch up: a phone sends its next fix an interval on.
                let from = (*next).max(tokio::time::Instant::now() - *period);
                *next = from + period.mul_f64(0.9 + 0.2 * rand::random::<f64>());
            }
        }
    }
}

/// A report published and not yet acked.
struct Outstanding {
    seq: u64,
    at: Instant,
    payload: Vec<u8>,
}

/// A courier's connection state, shared by its publisher and its event loop. One lock covers
/// both fields, so no report is published between a connection failing and the resend on the
/// next one: reports always leave in seq order.
#[derive(Default)]
struct Link {
    connected: bool,
    /// Set when the courier hangs up at the end: a connection failure then is no failure.
    closing: bool,
    sent: VecDeque<Outstanding>,
}

async fn run_courier(run: CourierRun) -> anyhow::Result<()> {
    let mut options =
        MqttOptions::new(run.courier.clone(), run.mqtt.ip().to_string(), run.mqtt.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(run.window.min(u16::MAX as usize) as u16);
    if let Some(password) = &run.password {
        options.set_credentials(run.courier.clone(), password.clone());
    }
    // At most `window` reports and one SUBSCRIBE wait in the request queue (the window bounds
    // the reports), so `try_publish` always finds room.
    let (client, mut eventloop) = AsyncClient::new(options, run.window * 2 + 8);
    let mut network = eventloop.network_options();
    network.set_connection_timeout(CONNECT_TIMEOUT_S);
    eventloop.set_network_options(network);
    let topic = topics::locations(&run.courier);
    let window = Arc::new(Semaphore::new(run.window));
    let link: Arc<Mutex<Link>> = Arc::default();
    let mut events = tokio::spawn(drive_connection(ConnectionRun {
        eventloop,
        client: client.clone(),
        courier: run.courier.clone(),
        window: window.clone(),
        link: link.clone(),
        fixes_per_report: run.fixes_per_report as u64,
        totals: run.totals.clone(),
        latencies: run.latencies.clone(),
    }));

    let fixes_per_report = run.fixes_per_report as u64;
    let mut seq = 0u64;
    let mut next_ts = 0u64;
    while !run.totals.go.load(Ordering::Relaxed) && !run.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut pacer = Pacer::start(run.pace);
    'publish: while !run.stop.load(Ordering::Relaxed) && !events.is_finished() {
        // Waits are cut into slices so a courier that sends rarely still stops with the run
        // (`Pacer::wait` is cancel-safe: a cut wait leaves the next time as it was).
        if tokio::time::timeout(Duration::from_millis(200), pacer.wait()).await.is_err() {
            continue;
        }
        let Ok(permit) = tokio::time::timeout(Duration::from_millis(200), window.acquire()).await
        else {
            continue;
        };
        permit.context("window closed")?.forget();
        let next_seq = seq + 1;
        // Device times strictly increase per courier, as on a phone, even when a burst of
        // reports leaves within one millisecond: a track (and InfluxDB) keeps one fix per
        // courier and millisecond, so equal times would count as one.
        let first_ts = crate::pipeline::now_ms().max(next_ts);
        let fixes = (0..fixes_per_report)
            .map(|k| {
                let step = (next_seq * fixes_per_report + k) as f64 * 1e-6;
                Fix::from_degrees(first_ts + k, run.home.0 + step, run.home.1 + step)
            })
            .collect();
        let payload = wire::encode_report(&Report { seq: next_seq, fixes });
        // While disconnected, wait: the reconnect resends what is outstanding, then this goes.
        loop {
            {
                let mut link = link.lock().expect("link lock");
                if link.connected {
                    link.sent.push_back(Outstanding {
                        seq: next_seq,
                        at: Instant::now(),
                        payload: payload.clone(),
                    });
                    client
                        .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                        .map_err(|e| queue_full(&run.courier, e))?;
                    break;
                }
            }
            if run.stop.load(Ordering::Relaxed) || events.is_finished() {
                break 'publish;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seq = next_seq;
        next_ts = first_ts + fixes_per_report;
        run.totals.reports_published.fetch_add(1, Ordering::Relaxed);
    }
    // Let outstanding acks arrive so the server is idle for the next run.
    let deadline = Instant::now() + DRAIN;
    while !link.lock().expect("link lock").sent.is_empty()
        && Instant::now() < deadline
        && !events.is_finished()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    link.lock().expect("link lock").closing = true;
    client.try_disconnect().ok();
    if events.is_finished() {
        // It only ends early on an error of this program (see `drive_connection`).
        return (&mut events).await.context("courier connection task")?;
    }
    events.abort();
    Ok(())
}

fn queue_full(courier: &str, error: ClientError) -> anyhow::Error {
    anyhow::anyhow!("courier {courier}: rumqttc request queue refused a request: {error}")
}

struct ConnectionRun {
    eventloop: EventLoop,
    client: AsyncClient,
    courier: String,
    window: Arc<Semaphore>,
    link: Arc<Mutex<Link>>,
    fixes_per_report: u64,
    totals: Arc<Totals>,
    latencies: Arc<Mutex<Histogram<u64>>>,
}

/// Drives one courier's connection until aborted: reads acks, and after a failure backs off,
/// reconnects, subscribes again and resends what is not acked (rumqttc itself drops its
/// pending publishes when the server starts a clean session). Returns only on an error of this
/// program, never on a connection failure.
async fn drive_connection(mut run: ConnectionRun) -> anyhow::Result<()> {
    let acks = topics::acks(&run.courier);
    let locations = topics::locations(&run.courier);
    let mut failures_in_a_row = 0u32;
    let mut ever_connected = false;
    loop {
        match run.eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let mut link = run.link.lock().expect("link lock");
                // The server publishes acks retained, so the subscription also brings the
                // latest one: anything acked while disconnected is released by it.
                run.client
                    .try_subscribe(acks.clone(), QoS::AtMostOnce)
                    .map_err(|e| queue_full(&run.courier, e))?;
                for report in &link.sent {
                    run.client
                        .try_publish(
                            locations.clone(),
                            QoS::AtLeastOnce,
                            false,
                            report.payload.clone(),
                        )
                        .map_err(|e| queue_full(&run.courier, e))?;
                }
                link.connected = true;
                failures_in_a_row = 0;
                if !ever_connected {
                    ever_connected = true;
                    run.totals.connected_couriers.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Ok(ack) = wire::decode_ack(&p.payload) else { continue };
                let now = Instant::now();
                let mut link = run.link.lock().expect("link lock");
                let mut released = 0;
                while link.sent.front().is_some_and(|report| report.seq <= ack.seq) {
                    let report = link.sent.pop_front().expect("front exists");
                    released += 1;
                    if run.totals.measuring.load(Ordering::Relaxed) {
                        let micros = now.duration_since(report.at).as_micros() as u64;
                        run.latencies
                            .lock()
                            .expect("histogram lock")
                            .saturating_record(micros.max(1));
                    }
                }
                run.totals
                    .fixes_acked
                    .fetch_add(released as u64 * run.fixes_per_report, Ordering::Relaxed);
                run.window.add_permits(released);
            }
            Ok(_) => {}
            Err(e) => {
                let closing = {
                    let mut link = run.link.lock().expect("link lock");
                    link.connected = false;
                    // Empty the request queue too (into rumqttc's pending list, which the
                    // next clean session drops): the resend after reconnecting sends all.
                    run.eventloop.clean();
                    link.closing
                };
                if closing {
                    // The end of the run; wait to be aborted.
                    std::future::pending::<()>().await;
                }
                run.totals.connection_failed(&e);
                if !ever_connected && failures_in_a_row == 0 {
                    run.totals.failed_before_connecting.fetch_add(1, Ordering::Relaxed);
                }
                failures_in_a_row += 1;
                tokio::time::sleep(jittered(backoff(failures_in_a_row))).await;
            }
        }
    }
}

/// The pause after the `failures`-th connection failure in a row (from 1): 50 ms, doubling up
/// to 2 s.
fn backoff(failures: u32) -> Duration {
    let ms = 50u64.saturating_mul(1 << failures.saturating_sub(1).min(16));
    Duration::from_millis(ms.min(2_000))
}

/// `pause` × a random factor in [0.5, 1.5), so couriers that failed together do not all
/// reconnect at the same instant.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(0.5 + rand::random::<f64>())
}

/// A bare rumqttd in this process: locusd's broker ([`crate::mqtt::start`], same settings, no
/// authentication) with a relay in place of the pipeline.
#[derive(Debug)]
struct BareBroker {
    addr: SocketAddr,
    mqtt: MqttConfig,
}

impl BareBroker {
    /// Starts the broker on a free loopback port with the `[mqtt]` settings of `config` (or the
    /// defaults), and returns once it accepts MQTT connections. Its threads live until the
    /// process ends.
    async fn start(config: Option<&Path>) -> anyhow::Result<BareBroker> {
        let mut mqtt = match config {
            Some(path) => Config::from_file(path)?.mqtt,
            None => MqttConfig::default(),
        };
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        mqtt.listen = Some(addr);
        mqtt.listen_v5 = None;
        mqtt.tls_listen = None;
        mqtt.tls_listen_v5 = None;
        let link = crate::mqtt::start(
            &mqtt,
            None,
            None,
            Arc::new(|_| false),
            crate::edges::EdgeRules::new(Default::default(), None),
            Arc::new(Metrics::new()),
        )
        .context("starting the bare broker")?;
        std::thread::Builder::new()
            .name("bench-relay".into())
            .spawn(move || relay(link))
            .context("starting the bare broker's relay")?;
        wait_until_serving(addr).await?;
        Ok(BareBroker { addr, mqtt })
    }
}

/// The bare broker's stand-in for locusd's pipeline: for every report, at once, the retained
/// ack of that report's seq. Runs until the broker goes away.
fn relay(link: BrokerLink) {
    use rumqttd::protocol::{Packet, Publish};
    use rumqttd::Notification;
    let BrokerLink { mut tx, mut rx, .. } = link;
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else { return };
    runtime.block_on(async move {
        loop {
            match rx.next().await {
                Ok(Some(Notification::Forward(forward))) => {
                    let topic = &forward.publish.topic;
                    let Some(courier) =
                        std::str::from_utf8(topic).ok().and_then(topics::courier_of_locations)
                    else {
                        continue;
                    };
                    // The whole report is decoded, not just its seq: that is the least any
                    // server acking by seq does, and for these few-fix reports it is well under
                    // a microsecond, noise next to the broker's own work per publish.
                    let Ok(report) = wire::decode_report(&forward.publish.payload) else {
                        continue;
                    };
                    let ack = Publish::new(
                        bytes::Bytes::from(topics::acks(courier)),
                        bytes::Bytes::from(wire::encode_ack(wire::Ack { seq: report.seq })),
                        true,
                    );
                    if tx.send(Packet::Publish(ack, None)).await.is_err() {
                        return;
                    }
                }
                // The router paused the link because its buffer was full; ask for more.
                Ok(Some(Notification::Unschedule)) => {
                    if rx.wake().await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
}

/// Waits until an MQTT client can connect to `addr` (rumqttd binds in its own thread, after
/// [`crate::mqtt::start`] returns), so the first run's couriers see no refused connections.
async fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<()> {
    let options = MqttOptions::new(
        format!("bench-probe-{}", std::process::id()),
        addr.ip().to_string(),
        addr.port(),
    );
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => anyhow::bail!("the bare broker at {addr} does not answer: {e}"),
            Err(_) => anyhow::bail!("the bare broker at {addr} does not answer"),
        }
    }
    client.try_disconnect().ok();
    // Send the DISCONNECT; the broker then closes the connection.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn defaults_are_valid() {
        let args = parse(&[]).unwrap();
        args.check().unwrap();
        assert!(!args.baseline);
        assert_eq!(
            args.describe(),
            "couriers=50 fixes_per_report=1 rate=max window=64 duration=10s"
        );
    }

    #[test]
    fn zero_couriers_window_fixes_or_duration_are_refused() {
        for flag in ["--couriers", "--window", "--fixes-per-report", "--duration-s"] {
            let args = parse(&[flag, "0"]).unwrap();
            assert!(args.check().is_err(), "{flag} 0 accepted");
        }
    }

    #[test]
    fn config_needs_baseline() {
        assert!(parse(&["--config", "locusd.toml"]).is_err());
        let args = parse(&["--baseline", "--config", "locusd.toml", "--rate", "20000"]).unwrap();
        assert!(args.baseline);
        assert_eq!(args.config.as_deref(), Some(Path::new("locusd.toml")));
        assert!(args.describe().contains("rate=20000/s"));
    }

    #[test]
    fn thousands_are_grouped() {
        let cases = [(0, "0"), (999, "999"), (1_000, "1,000"), (152_300, "152,300")];
        for (n, text) in cases {
            assert_eq!(thousands(n), text);
        }
        assert_eq!(thousands(1_234_567_890), "1,234,567,890");
    }

    #[test]
    fn ratio_has_two_decimals_and_survives_an_empty_baseline() {
        assert_eq!(ratio_line(152_300.0, 241_000.0), "ratio locusd / bare: 0.63");
        assert_eq!(ratio_line(300.0, 100.0), "ratio locusd / bare: 3.00");
        assert!(ratio_line(1.0, 0.0).contains("n/a"));
    }

    #[test]
    fn summary_is_one_line_with_the_figures() {
        let result = RunResult {
            fixes_per_report: 1,
            fixes_acked: 761_500,
            elapsed_s: 5.0,
            latency_ms: [0.41, 0.8, 2.1, 9.3],
            samples: 761_500,
            couriers: 100,
            connected: 99,
            connect_s: 1.84,
            errors: vec![("Network timeout".into(), 2), ("I/O: reset".into(), 1)],
            errors_measuring: 1,
        };
        let line = result.summary("locusd:", "bare rumqttd:".len());
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with("locusd:         152,300 fixes/s  p50=0.41ms p90=0.80ms"),
            "{line}"
        );
        assert!(line.contains("couriers connected 99/100 in 1.8 s"), "{line}");
        assert!(
            line.contains("connection errors: 3 (1 while measuring), most: Network timeout)"),
            "{line}"
        );
        assert_eq!(result.reports_per_s(), 152_300.0);
    }

    #[test]
    fn rate_limit_note_only_near_the_limit() {
        let mut result = RunResult {
            fixes_per_report: 10,
            fixes_acked: 5_000_000,
            elapsed_s: 5.0,
            latency_ms: [1.0; 4],
            samples: 500_000,
            couriers: 100,
            connected: 100,
            connect_s: 0.1,
            errors: Vec::new(),
            errors_measuring: 0,
        };
        // 100,000 reports/s against 1,000/s × 100 couriers.
        let limits = MqttConfig::default();
        assert_eq!(limits.max_publish_rate, 1_000);
        let note = rate_limit_note("bare rumqttd", &result, &limits).unwrap();
        assert!(note.contains("bare rumqttd ran at 100% of"), "{note}");
        assert!(note.contains("(1,000/s × 100 = 100,000 reports/s)"), "{note}");
        result.fixes_acked /= 2;
        assert_eq!(rate_limit_note("locusd", &result, &limits), None);
        let unlimited = MqttConfig { max_publish_rate: 0, ..MqttConfig::default() };
        result.fixes_acked *= 4;
        assert_eq!(rate_limit_note("locusd", &result, &unlimited), None);
    }

    #[test]
    fn backoff_doubles_up_to_two_seconds() {
        let ms: Vec<u64> = (1..=8).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1_600, 2_000, 2_000]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(2));
    }
}
