//! `locusd replay FILE`: backfills historical fixes from JSON lines or CSV.
//!
//! Each line becomes a [`PendingFix`] and goes through [`Intake::build_fixes`]: the same
//! validation (without the `max_age_ms` window: backfill is old by nature), the same plugin
//! chain, and one sled batch per `--batch` lines into the track, the last locations (the newest
//! device time wins, so old fixes never move them backwards) and, with `[influx]`, the InfluxDB
//! outbox (shipped when locusd next runs). No seq, no ack, no live notification. At the outbox
//! limit replay stops (exit status 1, saying why) before the next batch: nothing ships while
//! it runs, and a rerun once locusd has shipped the outbox resumes.
//!
//! Resumable: the batch also records the byte offset after its last line in the
//! `replay_progress` tree, keyed by the file's identity (canonical path, size, modification
//! time), so a rerun continues where the last committed batch ended and never doubles a fix.
//! A fix whose (courier, device time) is already in the track counts as a duplicate and is
//! skipped. Bad lines are dead letters from [`DeadLetterSource::Replay`] (the file and line;
//! topic `replay:FILE` in the API) holding the line as read, never a panic; so are the fixes
//! plugins refuse.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::{now_ms, FixInput, Intake, PendingFix};
use crate::store::{
    DeadLetter, DeadLetterReason, DeadLetterSource, Store, StoreError, StoreOptions,
};
use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use locus_sdk::wire::json::FixJson;
use serde::Deserialize;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead as _, BufReader, IsTerminal as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Flags of `locusd replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// JSON lines (`{"courier":"c1","ts":…,"lat":…,"lon":…}`) or CSV with a header row of the
    /// same names (accuracy, speed, heading, battery and order are optional).
    file: PathBuf,
    /// Input format [default: csv for *.csv, jsonl otherwise].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// TOML configuration file: [pipeline], [plugins] and [influx] apply as in `serve`.
    #[arg(long, env = "LOCUS_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./locus-data]. locusd must not be running on it.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Lines per committed batch.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Stop after this many lines, as if interrupted (for testing resumption).
    #[arg(long, hide = true)]
    max_lines: Option<u64>,
}

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

/// A line of JSON lines: parsed where the pipeline reads it too (replayed dead letters).
pub use crate::pipeline::validate::JsonLine;

/// A CSV row (csv cannot deserialize through `#[serde(flatten)]`, so the fields are spelled out).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CsvRow {
    courier: String,
    ts: u64,
    lat: f64,
    lon: f64,
    accuracy: Option<f64>,
    speed: Option<f64>,
    heading: Option<f64>,
    battery: Option<u8>,
    order: Option<String>,
}

impl From<CsvRow> for JsonLine {
    fn from(row: CsvRow) -> JsonLine {
        let CsvRow { courier, ts, lat, lon, accuracy, speed, heading, battery, order } = row;
        let order = order.filter(|o| !o.is_empty());
        JsonLine {
            courier,
            fix: FixJson { ts, lat, lon, accuracy, speed, heading, battery, order },
        }
    }
}

/// Where a replay stopped: byte offset after the last committed line, and that line's number.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    offset: u64,
    line: u64,
}

impl Progress {
    fn encode(self) -> Vec<u8> {
        [self.offset.to_be_bytes(), self.line.to_be_bytes()].concat()
    }

    fn decode(bytes: &[u8]) -> Progress {
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes)
        };
        Progress { offset: word(0), line: word(1) }
    }
}

#[derive(Debug, Default)]
struct Counts {
    accepted: u64,
    rejected: u64,
    duplicates: u64,
}

/// Runs `locusd replay`.
pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    config.check()?;
    // Backfill is old by nature: only the future-time, coordinate and detail checks apply.
    config.pipeline.max_age_ms = u64::MAX;
    let format = args.format.unwrap_or_else(|| {
        if args.file.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            Format::Csv
        } else {
            Format::Jsonl
        }
    });

    let mut file =
        File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let identity = file_identity(&args.file, &file)?;
    let file_len = file.metadata()?.len();
    let file_name = args.file.display().to_string();

    let options = StoreOptions::new(&config.store, config.influx.is_some());
    let store = open_store(&config.data_dir, options)?;
    let metrics = Arc::new(Metrics::new());
    let mut intake = Intake::new(config.pipeline.clone(), store.clone(), metrics);
    // Nothing ships while replay runs (locusd, which ships, holds the database), so the outbox
    // only grows: replay stops at its limit, and a rerun after locusd has shipped resumes.
    let mut outbox = None;
    if let Some(influx_config) = &config.influx {
        let opened = crate::influx::Outbox::open(&store, influx_config);
        intake = intake.with_influx_outbox(opened.clone());
        outbox = Some(opened);
    }
    let plugins = crate::plugins::start(&config.plugins, &store)?;
    intake = intake.with_transform(Box::new(plugins.chain()));

    let mut progress =
        store.replay_progress(&identity)?.map(|v| Progress::decode(&v)).unwrap_or_default();
    if progress.offset >= file_len && file_len > 0 {
        eprintln!(
            "{} was already replayed completely ({} lines); nothing to do",
            args.file.display(),
            progress.line
        );
    } else if progress.offset > 0 {
        eprintln!("resuming {} at line {}", args.file.display(), progress.line + 1);
    }

    let mut reader = BufReader::new(&mut file);
    // CSV: the header row names the columns; it is read again on every (re)start.
    let mut headers = None;
    if format == Format::Csv {
        let mut header = Vec::new();
        let header_len = reader.read_until(b'\n', &mut header)? as u64;
        headers = Some(csv_record(&header).context("reading the CSV header row")?);
        if progress.offset == 0 {
            progress = Progress { offset: header_len, line: 1 };
        }
    }
    reader.seek(SeekFrom::Start(progress.offset))?;

    let bar = progress_bar(file_len, progress.offset);
    let mut counts = Counts::default();
    let mut lines_read = 0u64;
    let mut line = Vec::new();
    let mut done = false;
    let mut stopped_at_limit = None;
    let mut last_checkpoint = std::time::Instant::now();
    while !done {
        if let Some(outbox) = outbox.as_ref().filter(|o| o.at_limit()) {
            stopped_at_limit = Some(outbox.max_fixes());
            break;
        }
        let mut fixes = Vec::new();
        let mut malformed = Vec::new();
        let mut in_batch = HashSet::new();
        let received_ms = now_ms();
        let mut lines_in_batch = 0;
        while lines_in_batch < args.batch {
            if args.max_lines.is_some_and(|max| lines_read >= max) {
                done = true;
                break;
            }
            line.clear();
            let read = reader.read_until(b'\n', &mut line)? as u64;
            if read == 0 {
                done = true;
                break;
            }
            progress.offset += read;
            progress.line += 1;
            lines_read += 1;
            lines_in_batch += 1;
            let text = String::from_utf8_lossy(&line);
            if text.trim().is_empty() {
                continue;
            }
            let source = DeadLetterSource::Replay { file: file_name.clone(), line: progress.line };
            let letter = |reason: DeadLetterReason, detail: String, courier: Option<String>| {
                let detail = format!("line {}: {detail}", progress.line);
                DeadLetter::new(reason, source.clone(), courier, detail, &line[..], received_ms)
            };
            let parsed = match &headers {
                None => JsonLine::parse(text.trim()),
                Some(headers) => parse_csv(&line, headers),
            };
            let row = match parsed {
                Ok(row) => row,
                Err(e) => {
                    malformed.push(letter(DeadLetterReason::Malformed, e, None));
                    continue;
                }
            };
            if !locus_sdk::topics::is_valid_id(&row.courier) {
                let detail = "courier id is not 1-64 characters of letters, digits, - _ . :";
                let reason = DeadLetterReason::BadCourier;
                malformed.push(letter(reason, detail.to_owned(), Some(row.courier)));
                continue;
            }
            let fix = match row.fix.to_wire(0) {
                Ok(fix) => fix,
                Err(e) => {
                    // Out of range: the reason the server gives the same fix.
                    let detail = e.to_string().replacen("fixes[0].", "", 1);
                    let reason = DeadLetterReason::from_code(e.code);
                    malformed.push(letter(reason, detail, Some(row.courier)));
                    continue;
                }
            };
            // Already in the track (an earlier replay or the live stream): idempotent, skip.
            if !in_batch.insert((row.courier.clone(), fix.ts_ms))
                || store.has_track_fix(&row.courier, fix.ts_ms)?
            {
                counts.duplicates += 1;
                continue;
            }
            // The line is the fix's input: its dead letter's payload, should a plugin refuse it.
            let input = FixInput::new(source, Bytes::copy_from_slice(&line), received_ms);
            fixes.push(PendingFix::new(row.courier, fix, input));
        }
        if lines_in_batch == 0 {
            break;
        }
        let mut built = intake.build_fixes(fixes, received_ms)?;
        counts.accepted += built.commit.record.fixes.len() as u64;
        counts.rejected += (built.commit.dead_letters.len() + malformed.len()) as u64;
        built.commit.dead_letters.extend(malformed);
        built.commit.replay_progress = Some((identity.clone(), progress.encode()));
        intake.commit(built.commit)?;
        store.flush()?;
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            // Keeps the replay's memory (open track blocks) and the log after it bounded.
            store.checkpoint()?;
            last_checkpoint = std::time::Instant::now();
        }
        bar.set_position(progress.offset);
    }
    bar.finish_and_clear();
    store.flush()?;
    // The views into sled now, so the next start does not replay the whole backfill.
    store.checkpoint()?;
    println!(
        "accepted={} rejected={} duplicates={}",
        counts.accepted, counts.rejected, counts.duplicates
    );
    if let Some(limit) = stopped_at_limit {
        anyhow::bail!(
            "stopped before line {}: the InfluxDB outbox is at its limit ({limit} lines, \
             [influx] max_outbox_fixes). Start locusd so it ships the outbox to InfluxDB, then \
             run the same replay again: it resumes there.",
            progress.line + 1
        );
    }
    Ok(())
}

/// How often a replay checkpoints the views (what `[store] checkpoint_interval_ms` is for the
/// server).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens the data dir's sled database, which locusd holds locked while it runs.
fn open_store(data_dir: &Path, options: StoreOptions) -> anyhow::Result<Store> {
    let path = data_dir.join("db");
    Store::open_with(&path, options).map_err(|e| match &e {
        StoreError::Sled(sled::Error::Io(io))
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
        {
            anyhow::anyhow!(
                "the database in {} is in use (locked) — stop locusd first, then replay; \
                 the replay writes to the same database",
                path.display()
            )
        }
        _ => anyhow::Error::new(e).context(format!("opening the store in {}", path.display())),
    })
}

/// Canonical path, size and modification time: a changed file is a new file to replay.
fn file_identity(path: &Path, file: &File) -> anyhow::Result<Vec<u8>> {
    let canonical = path.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
    let meta = file.metadata()?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{}\0{}\0{modified}", canonical.display(), meta.len()).into_bytes())
}

/// One CSV line as a record (the header row, too), fields trimmed.
pub fn csv_record(line: &[u8]) -> anyhow::Result<csv::StringRecord> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(line);
    let mut record = csv::StringRecord::new();
    anyhow::ensure!(reader.read_record(&mut record)?, "empty line");
    record.trim();
    Ok(record)
}

/// One CSV data line under `headers` (from [`csv_record`] of the header row).
pub fn parse_csv(line: &[u8], headers: &csv::StringRecord) -> Result<JsonLine, String> {
    let record = csv_record(line).map_err(|e| e.to_string())?;
    if record.len() != headers.len() {
        return Err(format!("{} fields, the header row has {}", record.len(), headers.len()));
    }
    record.deserialize::<CsvRow>(Some(headers)).map(JsonLine::from).map_err(|e| e.to_string())
}

/// A bar over the file's bytes on stderr; hidden when stderr is not a terminal.
fn progress_bar(len: u64, position: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(position);
    bar
}
