//! # locus-sim
//!
//! A courier simulator and realistic load generator: N couriers riding a city's streets, each a
//! real `locus-sdk` client with its own durable outbox, reporting a fix every `--interval-ms`.
//!
//! Layout:
//! - this file: the CLI, one driver thread per courier (ride → `Courier::report` → sleep), a
//!   progress line on stderr every few seconds, and the end: flush every courier until all it
//!   sent is acknowledged (or `--flush-timeout-s`), then print `sent=N acked=M` as the last line
//!   of stdout.
//! - [`route`]: how a courier moves (jobs between pickups and drop-offs on a street grid).
//!
//! Outboxes live in `--data-dir/{courier}`; running again on the same folder first delivers what
//! an earlier (killed) run left unacknowledged, so `acked` can exceed `sent`.
//!
//! Exit status: 0 when every outbox is empty at the end, 1 when the flush timed out, 2 on an
//! error (bad flags, refused credentials, an outbox that cannot be opened).

mod route;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use locus_sdk::client::{BatchConfig, ClientError, Courier, CourierConfig, FixInput, WhenFull};
use locus_sdk::wire::now_ms;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Couriers riding a city through locus-sdk, against a running locusd.
#[derive(Debug, Parser)]
#[command(name = "locus-sim", version)]
struct Args {
    /// The MQTT broker (locusd's `--mqtt-listen`), HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// How many couriers.
    #[arg(long, default_value_t = 10)]
    couriers: u32,
    /// Milliseconds between two fixes of one courier.
    #[arg(long, default_value_t = 1_000)]
    interval_ms: u64,
    /// How long the couriers ride, seconds (0: only deliver what earlier runs left).
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// Stop each courier after this many fixes, even before `--duration-s`.
    #[arg(long)]
    fixes_per_courier: Option<u64>,
    /// Folder of the couriers' outboxes (one subfolder per courier).
    #[arg(long, default_value = "locus-sim-data")]
    data_dir: PathBuf,
    /// Courier ids are this prefix and a number from 0.
    #[arg(long, default_value = "sim-")]
    id_prefix: String,
    /// A file of `COURIER TOKEN` lines (as printed by `locusd token issue`); `#` starts a
    /// comment.
    #[arg(long, conflicts_with = "password")]
    tokens_file: Option<PathBuf>,
    /// One password for every courier (for a server configured that way).
    #[arg(long)]
    password: Option<String>,
    /// Most fixes per report.
    #[arg(long, default_value_t = BatchConfig::default().max_fixes)]
    batch_max_fixes: u32,
    /// Longest a fix waits to be batched, milliseconds.
    #[arg(long, default_value_t = BatchConfig::default().max_age_ms)]
    batch_max_age_ms: u64,
    /// Most encoded bytes per report (keep at or below the server's
    /// `[pipeline] max_report_bytes`).
    #[arg(long, default_value_t = BatchConfig::default().max_report_bytes)]
    batch_max_report_bytes: u32,
    /// Outbox bound per courier, in fixes.
    #[arg(long)]
    outbox_max_fixes: Option<u64>,
    /// What the outbox does at its bound.
    #[arg(long, value_enum, default_value_t = FullPolicy::DropOldest)]
    when_full: FullPolicy,
    /// Do not fsync each fix (survives a kill of the simulator, not a power cut).
    #[arg(long)]
    no_fsync: bool,
    /// How long to wait at the end for the server to acknowledge everything, seconds.
    #[arg(long, default_value_t = 60)]
    flush_timeout_s: u64,
    /// Longest wait between reconnect attempts, milliseconds.
    #[arg(long, default_value_t = 5_000)]
    backoff_max_ms: u64,
    /// How long without ack progress before everything in flight is published again,
    /// milliseconds (the SDK's `ack_timeout_ms`; its default when not given).
    #[arg(long)]
    ack_timeout_ms: Option<u64>,
    /// Print `reported COURIER TS_MS` on stdout once each fix is durably in the outbox.
    #[arg(long)]
    log_reported: bool,
    /// Seed of the couriers' routes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FullPolicy {
    DropOldest,
    RefuseNew,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read_tokens(path: &Path) -> Result<HashMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut tokens = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(courier), Some(token), None) => {
                tokens.insert(courier.to_owned(), token.to_owned());
            }
            _ => bail!("{}:{}: expected `COURIER TOKEN`", path.display(), n + 1),
        }
    }
    Ok(tokens)
}

/// Counters shared by the driver threads.
#[derive(Debug, Default)]
struct Totals {
    sent: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// Runs the simulation; `Ok(true)` when everything was acknowledged.
fn run(args: &Args) -> Result<bool> {
    if args.couriers == 0 {
        bail!("--couriers must be at least 1");
    }
    let tokens = args.tokens_file.as_deref().map(read_tokens).transpose()?;
    let ids: Vec<String> = (0..args.couriers).map(|i| format!("{}{i}", args.id_prefix)).collect();

    let mut couriers = Vec::with_capacity(ids.len());
    for id in &ids {
        let token = match &tokens {
            Some(tokens) => Some(
                tokens
                    .get(id)
                    .cloned()
                    .with_context(|| format!("no token for {id} in --tokens-file"))?,
            ),
            None => args.password.clone(),
        };
        let mut config = CourierConfig::new(&args.broker, id, token, args.data_dir.join(id));
        config.batch = BatchConfig {
            max_fixes: args.batch_max_fixes,
            max_age_ms: args.batch_max_age_ms,
            max_report_bytes: args.batch_max_report_bytes,
        };
        if let Some(max) = args.outbox_max_fixes {
            config.outbox.max_fixes = max;
        }
        config.outbox.when_full = match args.when_full {
            FullPolicy::DropOldest => WhenFull::DropOldest,
            FullPolicy::RefuseNew => WhenFull::RefuseNew,
        };
        config.outbox.fsync = !args.no_fsync;
        config.backoff.max_ms = args.backoff_max_ms;
        if let Some(ms) = args.ack_timeout_ms {
            config.ack_timeout_ms = ms;
        }
        let courier = Courier::connect(config).with_context(|| format!("courier {id}"))?;
        couriers.push(courier);
    }
    let leftover: u64 = couriers.iter().map(|c| c.status().queued_fixes).sum();
    let connected = couriers.iter().filter(|c| c.status().connected).count();
    eprintln!(
        "locus-sim: {} couriers ({connected} connected) to {}, a fix every {} ms for {} s; {leftover} fixes left from earlier runs",
        ids.len(),
        args.broker,
        args.interval_ms,
        args.duration_s
    );

    let totals = Totals::default();
    let stdout = Mutex::new(std::io::stdout());
    let driving_done = AtomicBool::new(false);
    let start = Instant::now();
    let duration = Duration::from_secs(args.duration_s);
    let interval = Duration::from_millis(args.interval_ms.max(1));

    std::thread::scope(|scope| {
        let drivers: Vec<_> = couriers
            .iter()
            .enumerate()
            .map(|(i, courier)| {
                let (totals, stdout) = (&totals, &stdout);
                // Spread the couriers over the interval so the load is even.
                let offset = interval.mul_f64(i as f64 / ids.len() as f64);
                let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
                scope.spawn(move || {
                    drive(args, courier, seed, start + offset, duration, totals, stdout)
                })
            })
            .collect();
        scope.spawn(|| progress(&couriers, &totals, &driving_done, start));
        for driver in drivers {
            // A driver only panics on a bug; the others go on and the outboxes keep the data.
            let _ = driver.join();
        }
        driving_done.store(true, Ordering::SeqCst);
    });

    // Wait for the server to acknowledge everything, all couriers at once.
    let flush_timeout = Duration::from_secs(args.flush_timeout_s);
    let results: Vec<Result<(), ClientError>> = std::thread::scope(|scope| {
        let flushes: Vec<_> =
            couriers.iter().map(|c| scope.spawn(move || c.flush(flush_timeout))).collect();
        flushes.into_iter().map(|f| f.join().unwrap_or(Err(ClientError::Closed))).collect()
    });

    let mut all_acked = true;
    let mut unauthorized = Vec::new();
    for (courier, result) in couriers.iter().zip(&results) {
        match result {
            Ok(()) => {}
            Err(ClientError::Unauthorized { .. }) => {
                unauthorized.push(courier.courier().to_owned());
                all_acked = false;
            }
            Err(e) => {
                eprintln!("locus-sim: {}: {e}", courier.courier());
                all_acked = false;
            }
        }
    }
    let statuses: Vec<_> = couriers.iter().map(Courier::status).collect();
    let acked: u64 = statuses.iter().map(|s| s.acked_fixes).sum();
    let queued: u64 = statuses.iter().map(|s| s.queued_fixes).sum();
    let dropped: u64 = statuses.iter().map(|s| s.dropped_fixes).sum();
    let reports: u64 = statuses.iter().map(|s| s.sent_reports).sum();
    for courier in couriers {
        courier.close();
    }
    let sent = totals.sent.load(Ordering::SeqCst);
    let mut out = stdout.lock().unwrap_or_else(|p| p.into_inner());
    writeln!(
        out,
        "couriers={} reports={reports} queued={queued} dropped={dropped} refused={} failed={} elapsed_s={:.1}",
        ids.len(),
        totals.refused.load(Ordering::SeqCst),
        totals.failed.load(Ordering::SeqCst),
        start.elapsed().as_secs_f64()
    )?;
    writeln!(out, "sent={sent} acked={acked}")?;
    out.flush()?;
    if !unauthorized.is_empty() {
        bail!("the broker refused the credentials of {}", unauthorized.join(", "));
    }
    Ok(all_acked)
}

/// One courier's ride: a fix every interval until the duration (or the fix count) is reached.
fn drive(
    args: &Args,
    courier: &Courier,
    seed: u64,
    first_at: Instant,
    duration: Duration,
    totals: &Totals,
    stdout: &Mutex<std::io::Stdout>,
) {
    let mut rider = route::Rider::new(courier.courier(), route::City::default(), seed);
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let end = first_at + duration;
    let mut next = first_at;
    let mut last_sample = first_at;
    let mut last_ts = 0u64;
    let mut count = 0u64;
    loop {
        if args.fixes_per_courier.is_some_and(|max| count >= max) {
            break;
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let now = Instant::now();
        if now >= end {
            break;
        }
        let sample = rider.step(now.saturating_duration_since(last_sample).as_secs_f64());
        last_sample = now;
        // Strictly increasing device time: a track never has two fixes at one instant.
        let ts = now_ms().max(last_ts + 1);
        last_ts = ts;
        let fix = FixInput {
            ts_ms: Some(ts),
            lat: sample.lat,
            lon: sample.lon,
            accuracy_m: Some(sample.accuracy_m),
            speed_m_s: Some(sample.speed_m_s),
            heading_deg: Some(sample.heading_deg),
            battery_pct: Some(sample.battery_pct),
            order: sample.order,
        };
        count += 1;
        match courier.report(fix) {
            Ok(()) => {
                totals.sent.fetch_add(1, Ordering::SeqCst);
                if args.log_reported {
                    let mut out = stdout.lock().unwrap_or_else(|p| p.into_inner());
                    // A lost line only makes the kill test's check weaker, never wrong.
                    let _ = writeln!(out, "reported {} {ts}", courier.courier());
                    let _ = out.flush();
                }
            }
            Err(ClientError::OutboxFull { .. }) => {
                totals.refused.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                totals.failed.fetch_add(1, Ordering::SeqCst);
                eprintln!("locus-sim: {}: {e}", courier.courier());
            }
        }
        // Skip ticks we are late for rather than bursting to catch up.
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now + interval;
        }
    }
}

/// A line on stderr every five seconds while the couriers ride.
fn progress(couriers: &[Courier], totals: &Totals, done: &AtomicBool, start: Instant) {
    let mut next = start + Duration::from_secs(5);
    while !done.load(Ordering::SeqCst) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next += Duration::from_secs(5);
        let statuses: Vec<_> = couriers.iter().map(Courier::status).collect();
        let connected = statuses.iter().filter(|s| s.connected).count();
        let acked: u64 = statuses.iter().map(|s| s.acked_fixes).sum();
        let queued: u64 = statuses.iter().map(|s| s.queued_fixes).sum();
        eprintln!(
            "locus-sim: t={:.0}s connected={connected}/{} sent={} acked={acked} queued={queued}",
            start.elapsed().as_secs_f64(),
            couriers.len(),
            totals.sent.load(Ordering::SeqCst),
        );
    }
}
