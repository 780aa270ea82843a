//! Whether the operator console keeps up with a city: N couriers reporting at 1 Hz (`locusd
//! bench --interval-ms 1000`) into a real locusd, the console open in headless Chromium, and what the page measured of
//! itself (`window.locusConsole.stats`) over a window of S seconds once every courier is on
//! the map. Prints one line of figures (the README's "Operator console" quotes them).
//!
//!     cargo bench -p locus-tests --bench console_map -- [COURIERS] [SECONDS]
//!
//! Defaults: 10,000 couriers, 60 s. Needs Debian's chromium and chromium-driver
//! (`scripts/test.sh` installs them). On a 2-core machine the fleet, locusd and the browser
//! share the cores: the figures are for all three at once.

use locus_tests::browser::Browser;
use locus_tests::{locusd, LocusServer};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let couriers: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(60), |a| a.parse())?;
    let server = LocusServer::start_with(false, Some("[console]\ntile_url = \"\"\n"));
    // The fleet: `locusd bench`'s couriers, each on its own MQTT connection on one tokio
    // runtime, one report a second at a random phase. (locus-sim runs each courier as an SDK
    // client with its own threads and outbox: at 10,000 it needs more file descriptors than a
    // process may have here, and its 20,000 threads would take the cores from the browser.)
    let mut fleet = Command::new(locusd())
        .args(["bench", "--mqtt", &server.mqtt.to_string()])
        .args(["--couriers", &couriers.to_string(), "--interval-ms", "1000"])
        .args(["--duration-s", &(seconds + 600).to_string()])
        .arg("--data-dir")
        .arg(server.data_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;

    let browser = Browser::start(1280, 800)?;
    browser.goto(&server.url("/"));
    browser.wait_for(
        "the login form",
        "!document.getElementById('login').hidden",
        Duration::from_secs(60),
    );
    browser.type_into("#login-token", server.admin_token());
    browser.click("#login-submit");
    let started = Instant::now();
    let all_in = format!("window.locusConsole.markerCount() >= {couriers}");
    browser.wait_for("every courier on the map", &all_in, Duration::from_secs(600));
    let connecting = started.elapsed();

    // Measure from here: the counters start again and the page reports what it did.
    browser.run("window.locusConsole.resetStats()", json!([]));
    let mut lags = Vec::new();
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        let lag = browser.run("return window.locusConsole.stats.lag_ms_last", json!([]));
        lags.push(lag.as_f64().unwrap_or(f64::NAN));
    }
    let elapsed = window.elapsed().as_secs_f64();
    let stats =
        browser.run("return JSON.parse(JSON.stringify(window.locusConsole.stats))", json!([]));
    let sim_rate = server.metric("locus_fixes_committed_total");
    lags.sort_by(f64::total_cmp);
    let per_s = |key: &str| stats[key].as_f64().unwrap_or(0.0) / elapsed;
    println!(
        "console_map couriers={couriers} window_s={elapsed:.0} all_on_map_after_s={:.0} \
         positions_received_per_s={:.0} positions_applied_per_s={:.0} frames_per_s={:.1} \
         max_batch={} apply_ms_p99={:.1} apply_ms_max={:.1} rendered_fps={:.1} \
         frame_gap_ms_p99={:.0} frame_gap_ms_max={:.0} lag_ms_p50={:.0} lag_ms_max={:.0} \
         fixes_committed_total={sim_rate}",
        connecting.as_secs_f64(),
        per_s("positions_received"),
        per_s("positions_applied"),
        per_s("frames"),
        stats["max_batch"],
        stats["frame_ms_p99"].as_f64().unwrap_or(f64::NAN),
        stats["max_frame_ms"].as_f64().unwrap_or(f64::NAN),
        per_s("rendered_frames"),
        stats["frame_gap_ms_p99"].as_f64().unwrap_or(f64::NAN),
        stats["frame_gap_ms_max"].as_f64().unwrap_or(f64::NAN),
        lags.get(lags.len() / 2).copied().unwrap_or(f64::NAN),
        stats["lag_ms_max"].as_f64().unwrap_or(f64::NAN),
    );
    let _ = fleet.kill();
    let _ = fleet.wait();
    Ok(())
}
