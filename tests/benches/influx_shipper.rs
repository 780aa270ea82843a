//! Shipper throughput against a local influxd: a backlog of N fixes in the commit log, in
//! commits of C fixes (one log entry each, as the pipeline writes them), is turned into lines and
//! shipped with the
//! default batching (5,000 lines per request, two in flight; gzip and plain, and one request in
//! flight for comparison); reports lines/s and the CPU time
//! the shipping process spends per line (from /proc/self/stat), with influxd's CPU alongside.
//! Also the commit-path cost of encoding one point.
//!
//! `cargo bench -p locus-tests --bench influx_shipper`. Environment: `LOCUS_BENCH_LINES=N`
//! (default 500,000), `LOCUS_BENCH_COMMIT=C` (default 100; under load the pipeline commits
//! hundreds of reports at once, so 100 is on the small side; 1 is the worst case, a commit per
//! fix). Not a test: it asserts nothing about speed.

#[path = "../tests/influx_common/mod.rs"]
mod influx_common;

use anyhow::{ensure, Result};
use influx_common::{base_ts, fix, Env};
use locus_broker::influx::{InfluxConfig, SchemaConfig};
use locus_tests::influxd::Influxd;
use std::time::{Duration, Instant};

/// Linux reports CPU times in clock ticks of 1/100 s (USER_HZ) on every common platform.
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of a process, seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / TICKS_PER_SECOND
}

fn run(lines: u64, per_commit: usize, gzip: bool, concurrency: usize) -> Result<()> {
    let influxd = Influxd::start("bench")?;
    let influxd_pid = influxd.pid().map(|p| p.to_string()).unwrap_or_default();
    let config = InfluxConfig {
        url: influxd.url(),
        database: "bench".into(),
        gzip,
        concurrent_requests: concurrency,
        ..InfluxConfig::default()
    };
    let env = Env::new(config);
    let base = base_ts();
    for start in (0..lines).step_by(100_000) {
        env.commit_fixes(
            (start..(start + 100_000).min(lines)).map(|i| fix(base, i, 1_000)),
            per_commit,
        );
    }
    ensure!(env.outbox.depth() == lines);

    let (cpu_before, influx_cpu_before) = (cpu_seconds("self"), cpu_seconds(&influxd_pid));
    let started = Instant::now();
    let running = env.ship();
    while running.metrics.lines_written.get() < lines {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds("self") - cpu_before;
    let influx_cpu = cpu_seconds(&influxd_pid) - influx_cpu_before;
    let requests = running.metrics.batches_written.get();
    running.stop();
    let counted = influxd.scalar("SELECT count(lat) FROM courier_location")?;
    ensure!(counted == lines as i64, "influxd counted {counted} of {lines}");

    println!(
        "gzip={gzip:<5} in flight={concurrency} commits of {per_commit:<4} {lines} lines in {elapsed:.2} s = {:>7.0} lines/s | shipper CPU {:.2} s = \
         {:.2} µs/line | influxd CPU {:.2} s = {:.2} µs/line | {} requests",
        lines as f64 / elapsed,
        cpu,
        cpu * 1e6 / lines as f64,
        influx_cpu,
        influx_cpu * 1e6 / lines as f64,
        requests,
    );
    Ok(())
}

fn encode_cost() {
    let schema = SchemaConfig::default();
    let base = base_ts();
    let fixes: Vec<_> = (0..200_000).map(|i| fix(base, i, 1_000)).collect();
    let started = Instant::now();
    let mut bytes = 0;
    for (courier, fix) in &fixes {
        bytes += locus_broker::influx::point(courier, fix, &schema).len();
    }
    let per_line = started.elapsed().as_secs_f64() * 1e9 / fixes.len() as f64;
    println!(
        "point(): {per_line:.0} ns per line, {:.0} bytes per line",
        bytes as f64 / fixes.len() as f64
    );
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    let lines: u64 =
        std::env::var("LOCUS_BENCH_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(500_000);
    let per_commit: usize =
        std::env::var("LOCUS_BENCH_COMMIT").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    println!("influx shipper benchmark: {} cores", std::thread::available_parallelism()?.get());
    encode_cost();
    // The default (two requests in flight), then one at a time for comparison.
    run(lines, per_commit, true, 2)?;
    run(lines, per_commit, false, 2)?;
    run(lines, per_commit, true, 1)?;
    Ok(())
}
