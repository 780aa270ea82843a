//! Courier A against courier B's topics on a real locusd, with real clients (`mosquitto_pub`,
//! `mosquitto_sub`, rumqttc) on MQTT 3.1.1 and MQTT 5: A can neither publish on, subscribe to,
//! nor leave a will on B's topics; each refusal is counted; B's state and acks are unchanged.
//! Also the reserved pipeline client id, refused CONNECTs without credentials, oversized
//! packets, the publish-rate throttle and the connection-rate limit.

use locus_sdk::{topics, wire};
use locus_tests::{locusd, now_ms, report, wait_for, LocusServer, TestCourier, PATIENCE};
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The two MQTT listeners of a server, with the protocol name mosquitto's `-V` takes.
fn listeners(server: &LocusServer) -> [(SocketAddr, &'static str); 2] {
    [(server.mqtt, "mqttv311"), (server.mqtt5, "mqttv5")]
}

/// `mosquitto_pub` as courier `id` on `addr` with `args`; the payload goes on stdin.
fn mosquitto_pub(
    addr: SocketAddr,
    version: &str,
    id: &str,
    token: &str,
    args: &[&str],
    payload: &[u8],
) -> Output {
    // `timeout`: a client whose publish is refused must never hang the test.
    let mut child = Command::new("timeout")
        .args(["30", "mosquitto_pub"])
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-V", version])
        .args(["-i", id, "-u", id, "-P", token, "-q", "1", "-s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is installed (scripts/test.sh)");
    child.stdin.take().expect("stdin").write_all(payload).expect("write");
    child.wait_with_output().expect("mosquitto_pub")
}

#[test]
fn a_courier_cannot_touch_another_couriers_topics_on_either_protocol() {
    let server = LocusServer::start();
    let (ta, tb) = (server.issue_token("ca"), server.issue_token("cb"));
    let t0 = now_ms() - 60_000;
    let mut cb = TestCourier::connect(server.mqtt, "cb", Some(&tb)).unwrap();
    cb.publish(&report(1, t0, 41.38, 2.17));
    cb.wait_ack(1);

    for (round, (addr, version)) in listeners(&server).into_iter().enumerate() {
        // A retained ack that would make B's SDK drop reports it never got stored.
        let forged = wire::encode_ack(wire::Ack { seq: 1000 });
        mosquitto_pub(addr, version, "ca", &ta, &["-r", "-t", &topics::acks("cb")], &forged);
        // A report on B's topic with a seq high enough to swallow B's next ones.
        let stolen = wire::encode_report(&report(999, t0 + 50_000, 1.0, 1.0));
        mosquitto_pub(addr, version, "ca", &ta, &["-t", &topics::locations("cb")], &stolen);
        // Anything under orders/ is locusd's.
        mosquitto_pub(addr, version, "ca", &ta, &["-r", "-t", "orders/o1/status"], b"delivered");
        // A will on B's acks: the CONNECT itself is refused.
        let will = mosquitto_pub(
            addr,
            version,
            "ca",
            &ta,
            &[
                "-t",
                &topics::locations("ca"),
                "--will-topic",
                &topics::acks("cb"),
                "--will-payload",
                "x",
            ],
            &wire::encode_report(&report(1 + round as u64, t0 + round as u64, 41.0, 2.0)),
        );
        assert!(!will.status.success(), "{version}: a will on B's acks connects: {will:?}");

        // A subscription to everything, or to B's acks, is refused; A learns nothing.
        for filter in ["#", "couriers/+/acks", "couriers/cb/acks"] {
            let sub = Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-V", version])
                .args(["-i", "ca", "-u", "ca", "-P", &ta, "-t", filter, "-C", "1", "-W", "3"])
                .output()
                .expect("mosquitto_sub");
            assert!(sub.stdout.is_empty(), "{version} {filter}: A received {:?}", sub.stdout);
            let said = String::from_utf8_lossy(&sub.stderr);
            assert!(said.contains("denied"), "{version} {filter}: mosquitto_sub said {said:?}");
        }

        // B is untouched: its retained ack is still its own, its next report is stored and
        // acked (not taken for a duplicate of seq 999), and its location is its own.
        let mut fresh = TestCourier::connect(server.mqtt, "cb", Some(&tb)).unwrap();
        fresh.wait_ack(1 + round as u64);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(fresh.ack_now(), 1 + round as u64, "{version}: B sees a forged ack");
        fresh.publish(&report(2 + round as u64, t0 + 1 + round as u64, 41.38, 2.17));
        fresh.wait_ack(2 + round as u64);
        assert_eq!(fresh.ack_now(), 2 + round as u64);
        let location = server.get_ok("/v1/couriers/cb/location");
        assert_eq!(location["ts"], t0 + 1 + round as u64, "{version}: {location}");
        assert_eq!(server.get("/v1/orders/o1/location").0, 404);
    }
    let denied =
        |action: &str| server.metric(&format!("locus_mqtt_denied_total{{action=\"{action}\"}}"));
    assert!(denied("publish") >= 6.0, "publishes refused: {}", denied("publish"));
    assert!(denied("subscribe") >= 6.0, "subscriptions refused: {}", denied("subscribe"));
    assert!(denied("will") >= 2.0, "wills refused: {}", denied("will"));
    // Refusals are INFO lines naming the client, not ERRORs.
    let log = server.log();
    assert!(log.contains("MQTT action refused") && log.contains("ca"), "{log}");
    assert!(!log.lines().any(|l| l.contains("ERROR")), "an ERROR in the log:\n{log}");

    // The same policy holds for rumqttc: A's own acks are fine, B's are refused (0x80).
    let mut options = rumqttc::MqttOptions::new("ca", "127.0.0.1", server.mqtt.port());
    options.set_credentials("ca", &ta);
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    client.subscribe(topics::acks("ca"), rumqttc::QoS::AtLeastOnce).unwrap();
    client.subscribe(topics::acks("cb"), rumqttc::QoS::AtLeastOnce).unwrap();
    let mut codes = Vec::new();
    for event in connection.iter() {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack))) = event {
            codes.extend(ack.return_codes);
            if codes.len() == 2 {
                break;
            }
        }
    }
    assert!(matches!(codes[0], rumqttc::SubscribeReasonCode::Success(_)), "{codes:?}");
    assert_eq!(codes[1], rumqttc::SubscribeReasonCode::Failure, "{codes:?}");
}

#[test]
fn the_pipeline_client_id_is_reserved_and_connects_without_credentials_are_counted() {
    let server = LocusServer::start_anonymous();
    // Anonymous servers let anyone in, but not as locusd's own link.
    let output = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &server.mqtt.port().to_string()])
        .args(["-i", "locusd-pipeline", "-t", "couriers/x/locations", "-m", "x", "-q", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    assert!(server.metric("locus_mqtt_auth_refused_total") >= 1.0);
    // Nor can a token be issued for it.
    let issued = Command::new(locusd())
        .args(["token", "issue", "locusd-pipeline", "--data-dir"])
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(!issued.status.success(), "{issued:?}");
    assert!(String::from_utf8_lossy(&issued.stderr).contains("reserved"), "{issued:?}");

    // A CONNECT with no credentials at all, to a server that needs them, is refused and counted.
    let secured = LocusServer::start();
    let output = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &secured.mqtt.port().to_string()])
        .args(["-i", "c1", "-t", "couriers/c1/locations", "-m", "x", "-q", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    assert!(secured.metric("locus_mqtt_auth_refused_total") >= 1.0);
}

#[test]
fn an_oversized_packet_is_counted_and_the_connection_gauge_follows_devices() {
    let server = LocusServer::start();
    let token = server.issue_token("big");
    let mut courier = TestCourier::connect(server.mqtt, "big", Some(&token)).unwrap();
    courier.publish(&report(1, now_ms(), 41.0, 2.0));
    courier.wait_ack(1);
    wait_for("the gauge to count one device", || {
        (server.metric("locus_mqtt_connected_clients") == 1.0).then_some(())
    });
    let huge = vec![0u8; 70_000];
    let out = mosquitto_pub(
        server.mqtt,
        "mqttv311",
        "big",
        &token,
        &["-t", &topics::locations("big")],
        &huge,
    );
    assert!(!out.status.success(), "{out:?}");
    wait_for("the oversized packet to be counted", || {
        (server.metric("locus_mqtt_packet_too_large_total") >= 1.0).then_some(())
    });
    drop(courier);
    wait_for("the gauge to drop to zero", || {
        (server.metric("locus_mqtt_connected_clients") == 0.0).then_some(())
    });
    assert!(server.metric("locus_mqtt_connections_total") >= 2.0);
}

#[test]
fn a_flooding_courier_is_throttled_and_others_still_get_through() {
    let config = "[mqtt]\nmax_publish_rate = 20\npublish_burst = 5\n";
    let server = LocusServer::start_with(false, Some(config));
    let (tf, tq) = (server.issue_token("flood"), server.issue_token("quiet"));
    let mut flood = TestCourier::connect(server.mqtt, "flood", Some(&tf)).unwrap();
    let mut quiet = TestCourier::connect(server.mqtt, "quiet", Some(&tq)).unwrap();
    let t0 = now_ms() - 60_000;
    const FLOOD: u64 = 200; // ten seconds' worth at 20/s
    for seq in 1..=FLOOD {
        flood.publish(&report(seq, t0 + seq, 41.0, 2.0));
    }
    wait_for("the throttle to start", || {
        (server.metric("locus_mqtt_publish_throttled_total") >= 1.0).then_some(())
    });
    // While the flood is held back, another courier's report goes straight through.
    quiet.publish(&report(1, t0, 41.0, 2.0));
    quiet.wait_ack(1);
    assert!(flood.ack_now() < FLOOD, "the flood was not held back");
    // Throttled, not dropped: every report of the flood is stored in the end.
    let deadline = std::time::Instant::now() + PATIENCE * 2;
    while flood.ack_now() < FLOOD && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    flood.wait_ack(FLOOD);
    assert_eq!(server.track_ts("flood").len() as u64, FLOOD);
}

#[test]
fn a_connection_burst_over_the_rate_is_refused_at_once_not_left_waiting() {
    // A burst of 5 at once, then 2 a second.
    let config = "[mqtt]\nmax_connection_rate = 2\nconnection_burst = 5\n";
    let server = LocusServer::start_with(true, Some(config));
    let port = server.mqtt.port().to_string();
    let clients: Vec<_> = (0..20)
        .map(|i| {
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port, "-i", &format!("burst-{i}")])
                .args(["-t", &topics::locations(&format!("burst-{i}")), "-m", "x", "-q", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = clients.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let refused = outputs.iter().filter(|o| !o.status.success()).count();
    assert!(refused > 0, "20 connections at once all got in under a limit of 2/s after 5");
    assert!(20 - refused >= 5, "only {} of the burst of 5 got in", 20 - refused);
    let said =
        outputs.iter().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect::<String>();
    assert!(said.to_lowercase().contains("unavailable"), "no CONNACK refusal among: {said}");
    assert!(server.metric("locus_mqtt_connection_rate_refused_total") >= refused as f64);
    // A moment later, a client gets in again.
    std::thread::sleep(Duration::from_millis(1_500));
    let mut late = TestCourier::connect(server.mqtt, "late", None).unwrap();
    late.publish(&report(1, now_ms(), 41.0, 2.0));
    late.wait_ack(1);
}

#[test]
fn a_report_over_the_report_limit_is_dead_lettered_and_acked_so_the_device_moves_on() {
    // Reports of one fix fit; this one carries twenty.
    let config = "[pipeline]\nmax_report_bytes = 200\nmax_fixes_per_report = 1\n";
    let server = LocusServer::start_with(false, Some(config));
    let token = server.issue_token("long");
    let mut courier = TestCourier::connect(server.mqtt, "long", Some(&token)).unwrap();
    let t0 = now_ms() - 60_000;
    let fixes = (0..20).map(|i| wire::Fix::from_degrees(t0 + i, 41.0, 2.0)).collect();
    let oversized = wire::Report { seq: 1, fixes };
    assert!(wire::encode_report(&oversized).len() > 200);
    courier.publish(&oversized);
    courier.wait_ack(1);
    let letters = server.get_ok("/v1/dead-letters");
    assert_eq!(letters["dead_letters"][0]["reason"], "oversized", "{letters}");
    // The next report goes through: nothing is stuck behind the one the server could not take.
    courier.publish(&report(2, t0 + 100, 41.0, 2.0));
    courier.wait_ack(2);
    assert_eq!(server.track_ts("long"), vec![t0 + 100]);
}
