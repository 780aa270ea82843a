//! End-to-end backfill: `locusd replay FILE` against the data dir of a real, stopped locusd,
//! then the server restarted and read back over HTTP.

use locus_tests::plugin_components::component;
use locus_tests::{locusd, now_ms, report, LocusServer, TestCourier};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Live fixes older than an hour are refused; the track keeps 100 days, so backfill stays.
const CONFIG: &str = "[pipeline]\nmax_age_ms = 3600000\n[track]\nmax_age_s = 8640000\n";
const DAY_MS: u64 = 24 * 3600 * 1000;

/// Runs `locusd replay` on the server's data dir with [`CONFIG`].
fn replay(server: &LocusServer, file: &Path, extra: &[&str]) -> Output {
    replay_with(server, file, CONFIG, extra)
}

/// Runs `locusd replay` on the server's data dir with the configuration `config`.
fn replay_with(server: &LocusServer, file: &Path, config: &str, extra: &[&str]) -> Output {
    let config_text = config;
    let config = server.data_dir().with_file_name("replay.toml");
    std::fs::write(&config, config_text).expect("config file");
    Command::new(locusd())
        .arg("replay")
        .arg(file)
        .arg("--data-dir")
        .arg(server.data_dir())
        .arg("--config")
        .arg(config)
        .args(extra)
        .output()
        .expect("running locusd replay")
}

/// The summary line of a successful replay.
fn summary(output: &Output) -> String {
    assert!(output.status.success(), "replay failed: {output:?}");
    summary_line(output)
}

/// The summary line, which replay prints also when it stops early.
fn summary_line(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout.lines().last().expect("a summary line").to_owned()
}

#[test]
fn jsonl_backfill_fills_the_track_without_moving_last_locations_back() {
    let mut server = LocusServer::start_with(true, Some(CONFIG));
    let live_ts = now_ms() - 1000;
    let mut courier = TestCourier::connect(server.mqtt, "c1", None).unwrap();
    courier.publish(&report(1, live_ts, 41.5, 2.5));
    courier.wait_ack(1);
    drop(courier);

    let file = server.data_dir().with_file_name("history.jsonl");
    let old = now_ms() - 30 * DAY_MS;
    let future = now_ms() + DAY_MS;
    let mut lines: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"courier":"c1","ts":{},"lat":41.0,"lon":2.0,"speed":3.5}}"#,
                old + i * 1000
            )
        })
        .collect();
    lines.push(format!(r#"{{"courier":"c2","ts":{old},"lat":40.0,"lon":1.0,"order":"o-9"}}"#));
    lines.push("this is not json".into());
    lines.push(format!(r#"{{"courier":"c1","ts":{},"lat":95.0,"lon":2.0}}"#, old + 9000));
    lines.push(format!(r#"{{"courier":"c1","ts":{future},"lat":41.0,"lon":2.0}}"#));
    lines.push(format!(r#"{{"courier":"c1","ts":{old},"lat":41.0,"lon":2.0,"colour":"red"}}"#));
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    // The database is locked while locusd runs.
    let locked = replay(&server, &file, &[]);
    assert!(!locked.status.success());
    assert!(String::from_utf8_lossy(&locked.stderr).contains("stop locusd first"), "{locked:?}");

    assert!(server.stop());
    let output = replay(&server, &file, &["--batch", "3"]);
    assert_eq!(summary(&output), "accepted=6 rejected=4 duplicates=0");
    server.restart();

    let mut expected: Vec<u64> = (0..5).map(|i| old + i * 1000).collect();
    expected.push(live_ts);
    assert_eq!(server.track_ts("c1"), expected);
    // The live fix is newer than anything replayed: c1's last location stays where it was.
    let location = server.get_ok("/v1/couriers/c1/location");
    assert_eq!((location["ts"].as_u64(), location["lat"].as_f64()), (Some(live_ts), Some(41.5)));
    // c2 had no live fix: its (historical) last location comes from the replay, with the
    // order id its line named (recorded only: no order o-9 is assigned to c2).
    let location = server.get_ok("/v1/couriers/c2/location");
    assert_eq!((location["ts"].as_u64(), location["order"].as_str()), (Some(old), Some("o-9")));
    assert_eq!(server.get("/v1/orders/o-9/location").0, 404);

    let letters = server.get_ok("/v1/dead-letters?limit=100");
    let letters = letters["dead_letters"].as_array().unwrap();
    let topic = format!("replay:{}", file.display());
    let replayed: Vec<(&str, &str)> = letters
        .iter()
        .filter(|l| l["topic"] == topic.as_str())
        .map(|l| (l["reason"].as_str().unwrap(), l["detail"].as_str().unwrap()))
        .collect();
    assert_eq!(replayed.len(), 4, "{letters:?}");
    let line = |n: u32| replayed.iter().find(|(_, d)| d.starts_with(&format!("line {n}: ")));
    assert_eq!(line(7).map(|(r, _)| *r), Some("malformed"), "{replayed:?}");
    let seventh = letters.iter().find(|l| l["source"]["line"] == 7).expect("line 7's letter");
    let file_name = file.display().to_string();
    assert_eq!(
        seventh["source"],
        serde_json::json!({ "kind": "replay", "file": file_name, "line": 7 }),
        "{seventh}"
    );
    let line_hex: String = b"this is not json\n".iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(seventh["payload_hex"], line_hex.as_str(), "the line as read");
    assert_eq!(line(10).map(|(r, _)| *r), Some("malformed"), "{replayed:?}");
    let reasons: Vec<&str> = replayed.iter().map(|(r, _)| *r).collect();
    assert!(reasons.contains(&"coordinates_out_of_range"), "{reasons:?}");
    assert!(reasons.contains(&"timestamp_in_future"), "{reasons:?}");

    // Rerunning the same file finds it done; nothing doubles.
    assert!(server.stop());
    let again = replay(&server, &file, &[]);
    assert_eq!(summary(&again), "accepted=0 rejected=0 duplicates=0");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already replayed"), "{again:?}");
    // The same fixes under another name are recognised as already in the track.
    let copy = server.data_dir().with_file_name("copy.jsonl");
    std::fs::write(&copy, lines[..6].join("\n")).unwrap();
    assert_eq!(summary(&replay(&server, &copy, &[])), "accepted=0 rejected=0 duplicates=6");
    server.restart();
    assert_eq!(server.track_ts("c1"), expected);
}

/// A plugin deployed on the server runs in the replay too; a fix it rejects is dead-lettered
/// with the line it was read from (not the fix re-encoded), naming the plugin, file and line.
#[test]
fn a_fix_a_plugin_rejects_in_a_replay_is_dead_lettered_with_its_line() {
    let mut server = LocusServer::start_with(true, Some(CONFIG));
    let deployed = reqwest::blocking::Client::new()
        .put(server.url("/v1/plugins/jitter"))
        .bearer_auth(server.admin_token())
        .header("locus-plugin-settings", r#"{"config":{"reject":"true"}}"#)
        .body(component("jitter-filter"))
        .timeout(Duration::from_secs(120))
        .send()
        .unwrap();
    assert_eq!(deployed.status().as_u16(), 200, "{:?}", deployed.text());
    assert!(server.stop());

    let file = server.data_dir().with_file_name("plugged.jsonl");
    let old = now_ms() - DAY_MS;
    let lines = [
        format!(r#"{{"courier":"c1","ts":{old},"lat":41.0,"lon":2.0}}"#),
        format!(r#"{{"courier":"c1","ts":{},"lat":41.0,"lon":2.0,"accuracy":500}}"#, old + 1000),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    assert_eq!(summary(&replay(&server, &file, &[])), "accepted=1 rejected=1 duplicates=0");
    server.restart();

    let letters = server.get_ok("/v1/dead-letters?limit=100");
    let letter = letters["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["reason"] == "plugin_rejected")
        .unwrap_or_else(|| panic!("no plugin_rejected letter: {letters}"))
        .clone();
    let line_hex: String = format!("{}\n", lines[1]).bytes().map(|b| format!("{b:02x}")).collect();
    assert_eq!(letter["payload_hex"], line_hex.as_str(), "the line as read: {letter}");
    assert_eq!(letter["courier"], "c1");
    assert_eq!(letter["topic"], format!("replay:{}", file.display()));
    assert_eq!(letter["plugin_reason"], "accuracy 500 m is worse than 50 m", "{letter}");
    assert_eq!(letter["source"]["kind"], "plugin", "{letter}");
    assert_eq!(letter["source"]["name"], "jitter", "{letter}");
    let input =
        serde_json::json!({ "kind": "replay", "file": file.display().to_string(), "line": 2 });
    assert_eq!(letter["source"]["input"], input, "{letter}");
    assert_eq!(server.track_ts("c1"), [old]);
}

#[test]
fn interrupted_csv_backfill_resumes_where_it_stopped() {
    let mut server = LocusServer::start_with(true, Some(CONFIG));
    assert!(server.stop());
    let file = server.data_dir().with_file_name("history.csv");
    let old = now_ms() - 20 * DAY_MS;
    let mut csv = String::from("courier,ts,lat,lon,accuracy,speed,heading,battery,order\n");
    for i in 0..50 {
        let order = if i % 2 == 0 { "o-1" } else { "" };
        csv += &format!("c3,{},41.{i:02},2.0,5.0,,90,80,{order}\n", old + i * 1000);
    }
    std::fs::write(&file, csv).unwrap();

    // Interrupted after 25 lines (committed in batches of 10: all 25 are in).
    let first = replay(&server, &file, &["--batch", "10", "--max-lines", "25"]);
    assert_eq!(summary(&first), "accepted=25 rejected=0 duplicates=0");
    let rest = replay(&server, &file, &["--batch", "10"]);
    assert!(String::from_utf8_lossy(&rest.stderr).contains("resuming"), "{rest:?}");
    assert_eq!(summary(&rest), "accepted=25 rejected=0 duplicates=0");
    assert_eq!(summary(&replay(&server, &file, &[])), "accepted=0 rejected=0 duplicates=0");

    server.restart();
    let expected: Vec<u64> = (0..50).map(|i| old + i * 1000).collect();
    assert_eq!(server.track_ts("c3"), expected);
    let location = server.get_ok("/v1/couriers/c3/location");
    assert_eq!(location["ts"].as_u64(), Some(old + 49_000));
    assert_eq!(location["heading"].as_f64(), Some(90.0));
    let track = server.get_ok("/v1/couriers/c3/track?limit=2");
    let orders: Vec<&Value> =
        track["fixes"].as_array().unwrap().iter().map(|f| &f["order"]).collect();
    assert_eq!(orders, [&json!("o-1"), &Value::Null], "the CSV's order column is kept");
}

#[test]
fn a_full_influx_outbox_stops_the_backfill_and_a_rerun_resumes() {
    let mut server = LocusServer::start_with(true, Some(CONFIG));
    assert!(server.stop());
    let file = server.data_dir().with_file_name("history.jsonl");
    let old = now_ms() - 10 * DAY_MS;
    let lines: Vec<String> = (0..30)
        .map(|i| format!(r#"{{"courier":"c4","ts":{},"lat":41.0,"lon":2.0}}"#, old + i * 1000))
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    // Replay never ships (nothing listens at this URL, and nothing tries): the outbox fills.
    let with_limit = |limit: u64| {
        format!(
            "{CONFIG}[influx]\nurl = \"http://127.0.0.1:9\"\ndatabase = \"x\"\n\
             max_outbox_fixes = {limit}\n"
        )
    };

    // Batches of 4 lines: 4, 8, 12 queued, then the outbox (limit 10) is full.
    let stopped = replay_with(&server, &file, &with_limit(10), &["--batch", "4"]);
    assert!(!stopped.status.success(), "{stopped:?}");
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(
        stderr.contains("stopped before line 13") && stderr.contains("at its limit"),
        "{stderr}"
    );
    assert_eq!(summary_line(&stopped), "accepted=12 rejected=0 duplicates=0");
    // Still full: a rerun takes nothing in.
    let still = replay_with(&server, &file, &with_limit(10), &["--batch", "4"]);
    assert!(!still.status.success());
    assert_eq!(summary_line(&still), "accepted=0 rejected=0 duplicates=0");
    // Room again (here: a higher limit; in real life, locusd shipped): it resumes and finishes.
    let rest = replay_with(&server, &file, &with_limit(1_000), &["--batch", "4"]);
    assert!(String::from_utf8_lossy(&rest.stderr).contains("resuming"), "{rest:?}");
    assert_eq!(summary(&rest), "accepted=18 rejected=0 duplicates=0");

    server.restart();
    let expected: Vec<u64> = (0..30).map(|i| old + i * 1000).collect();
    assert_eq!(server.track_ts("c4"), expected);
}
