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
