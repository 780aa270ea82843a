//! End to end through locusd into a real influxd: MQTT reports → commit → outbox → InfluxDB,
//! across an InfluxDB outage and a kill -9 of locusd with a non-empty outbox.

use locus_tests::influxd::Influxd;
use locus_tests::{now_ms, report, wait_for, LocusServer, TestCourier};

fn influx_config(influxd: &Influxd) -> String {
    format!(
        "[influx]\nurl = \"{}\"\napi = \"v1\"\ndatabase = \"{}\"\nbatch_interval_ms = 100\n",
        influxd.url(),
        influxd.database()
    )
}

fn count(influxd: &Influxd) -> i64 {
    influxd.scalar("SELECT count(lat) FROM courier_location").unwrap_or(0)
}

fn wait_for_count(influxd: &Influxd, expected: i64) {
    wait_for(&format!("{expected} points in InfluxDB"), || {
        let n = count(influxd);
        assert!(n <= expected, "{n} points, more than the {expected} published: duplicates");
        (n == expected).then_some(())
    });
}

/// Publishes `n` one-fix reports with seqs `first..first+n` and waits for their acks.
fn publish(courier: &mut TestCourier, first: u64, n: u64, t0: u64) {
    for seq in first..first + n {
        courier.publish(&report(seq, t0 + seq, 41.0, 2.0));
    }
    courier.wait_ack(first + n - 1);
}

#[test]
fn published_fixes_reach_influxdb_once_across_an_outage() {
    let mut influxd = Influxd::start("locus").unwrap();
    let server = LocusServer::start_with(true, Some(&influx_config(&influxd)));
    let mut courier = TestCourier::connect(server.mqtt, "influx-1", None).unwrap();
    let t0 = now_ms() - 100_000;

    publish(&mut courier, 1, 500, t0);
    wait_for_count(&influxd, 500);
    let health = server.get_ok("/healthz");
    assert_eq!(health["influx"]["state"], "ok", "{health}");

    // InfluxDB goes away: acks continue, the outbox holds the points.
    influxd.stop().unwrap();
    publish(&mut courier, 501, 300, t0);
    wait_for("outbox depth", || {
        (server.metric("locus_influx_outbox_depth") >= 300.0).then_some(())
    });
    influxd.start_again().unwrap();
    wait_for_count(&influxd, 800);
    wait_for("an empty outbox", || {
        (server.metric("locus_influx_outbox_depth") == 0.0).then_some(())
    });
}

#[test]
fn the_outbox_survives_kill_9_of_locusd() {
    let mut influxd = Influxd::start("locus").unwrap();
    let mut server = LocusServer::start_with(true, Some(&influx_config(&influxd)));
    let mut courier = TestCourier::connect(server.mqtt, "influx-2", None).unwrap();
    let t0 = now_ms() - 100_000;
    publish(&mut courier, 1, 100, t0);
    wait_for_count(&influxd, 100);

    influxd.stop().unwrap();
    publish(&mut courier, 101, 400, t0);
    server.kill9();
    influxd.start_again().unwrap();
    server.restart();
    wait_for_count(&influxd, 500);
}

#[test]
fn a_full_outbox_holds_back_acks_until_influxdb_takes_writes() {
    let mut influxd = Influxd::start("locus").unwrap();
    influxd.stop().unwrap();
    let config = format!("{}max_outbox_fixes = 5\n", influx_config(&influxd));
    let server = LocusServer::start_with(true, Some(&config));
    let mut courier = TestCourier::connect(server.mqtt, "influx-3", None).unwrap();
    let t0 = now_ms() - 100_000;

    // Five fixes fill the outbox; the server says it holds acks back.
    publish(&mut courier, 1, 5, t0);
    wait_for("acks paused", || (server.metric("locus_acks_paused") == 1.0).then_some(()));
    courier.publish(&report(6, t0 + 6, 41.0, 2.0));
    // The sixth report stays in the broker: not committed, not acked (the device keeps it).
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(courier.ack_now(), 5);
    assert_eq!(server.metric("locus_fixes_committed_total"), 5.0);

    // InfluxDB back: the outbox drains, the sixth is taken in and acked, nothing twice.
    influxd.start_again().unwrap();
    courier.wait_ack(6);
    wait_for_count(&influxd, 6);
    wait_for("acks flowing", || (server.metric("locus_acks_paused") == 0.0).then_some(()));
}

/// A data dir written by the previous release (layout 1: a sled key per track fix, a committed
/// seq per courier, an outbox of line protocol) opens in this one: everything is still served,
/// the acks are where they were, and the 13 lines its outbox held reach InfluxDB.
///
/// `tests/fixtures/layout1-data-dir.tar.gz` was made with the locusd of commit 8584135 (the
/// release before the commit log), anonymous, `[influx]` pointed at a closed port so every
/// point stayed in the outbox: courier `c1` reports seqs 1–5 with two fixes each at
/// base + seq·1000 and base + seq·1000 + 500 ms; `c2` seqs 1–3 with one fix each at
/// base + seq·1000 carrying order `o-7`; `c3` sends `nonsense` (a dead letter); then SIGTERM.
/// base = 1796401078520.
#[test]
fn a_data_dir_of_the_previous_release_is_migrated_and_its_outbox_shipped() {
    const BASE: u64 = 1_796_401_078_520;
    let influxd = Influxd::start("locus").unwrap();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/layout1-data-dir.tar.gz");
    let mut server =
        LocusServer::start_on_data_dir(true, Some(&influx_config(&influxd)), |data_dir| {
            std::fs::create_dir_all(data_dir).unwrap();
            let status = std::process::Command::new("tar")
                .arg("-xzf")
                .arg(&fixture)
                .arg("-C")
                .arg(data_dir)
                .status()
                .expect("tar");
            assert!(status.success(), "unpacking {}", fixture.display());
        });
    assert!(server.log().contains("migrated the data dir"), "{}", server.log());

    let expected: Vec<u64> =
        (1..=5).flat_map(|s| [BASE + s * 1000, BASE + s * 1000 + 500]).collect();
    assert_eq!(server.track_ts("c1"), expected);
    assert_eq!(server.track_ts("c2"), [BASE + 1000, BASE + 2000, BASE + 3000]);
    assert_eq!(server.get_ok("/v1/couriers/c1/location")["ts"], BASE + 5500);
    assert_eq!(server.get_ok("/v1/orders/o-7/location")["courier"], "c2");
    let letters = server.get_ok("/v1/dead-letters");
    assert_eq!(letters["dead_letters"][0]["reason"], "unknown_version", "{letters}");
    // A letter in the old shape (reason and topic as strings) reads as it did, with its source.
    let letter = &letters["dead_letters"][0];
    assert_eq!(letter["topic"], "couriers/c3/locations", "{letter}");
    let source = serde_json::json!({ "kind": "mqtt", "topic": "couriers/c3/locations" });
    assert_eq!(letter["source"], source, "{letter}");
    assert_eq!(letter["courier"], "c3", "{letter}");
    let nonsense_hex: String = b"nonsense".iter().map(|b| format!("{b:02x}")).collect();
    assert!(letter["payload_hex"].as_str().unwrap().starts_with(&nonsense_hex), "{letter}");
    // The outbox of the old release is shipped, exactly once.
    wait_for_count(&influxd, 13);

    // Seqs carried over: the retained ack is the old committed seq, a resend is a duplicate,
    // the next seq is taken.
    let mut courier = TestCourier::connect(server.mqtt, "c1", None).unwrap();
    courier.wait_ack(5);
    courier.publish(&report(5, BASE + 9_000, 41.0, 2.0));
    courier.publish(&report(6, BASE + 10_000, 41.0, 2.0));
    courier.wait_ack(6);
    assert_eq!(server.track_ts("c1").len(), 11);
    wait_for_count(&influxd, 14);

    // And the migrated dir opens again as it is now.
    assert!(server.stop());
    server.restart();
    assert_eq!(server.track_ts("c1").len(), 11);
    assert!(!server.log().contains("migrating"), "migrated only once");
}
