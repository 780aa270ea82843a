//! End-to-end ingest: real locusd, real MQTT clients (rumqttc and mosquitto_pub), the HTTP API
//! read back. No mocks.

use locus_sdk::wire::{self, Fix, FixDetails, Report};
use locus_tests::{locusd, now_ms, report, wait_for, LocusServer, TestCourier};
use std::io::Write as _;
use std::process::{Command, Stdio};

/// `locusd wire encode` of a JSON message.
fn encode_json(json: &str) -> Vec<u8> {
    let mut child = Command::new(locusd())
        .args(["wire", "encode"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("locusd wire encode");
    child.stdin.take().expect("stdin").write_all(json.as_bytes()).expect("write");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success(), "wire encode failed: {output:?}");
    output.stdout
}

/// Publishes `payload` with mosquitto_pub (QoS 1); returns whether mosquitto_pub succeeded.
fn mosquitto_pub(
    server: &LocusServer,
    courier: &str,
    password: Option<&str>,
    payload: &[u8],
) -> bool {
    let mut command = Command::new("mosquitto_pub");
    command
        .args(["-h", "127.0.0.1", "-p", &server.mqtt.port().to_string()])
        .args(["-i", courier, "-q", "1", "-t", &format!("couriers/{courier}/locations"), "-s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(password) = password {
        command.args(["-u", courier, "-P", password]);
    }
    let mut child = command.spawn().expect("mosquitto_pub is installed (scripts/test.sh)");
    child.stdin.take().expect("stdin").write_all(payload).expect("write");
    child.wait().expect("wait").success()
}

#[test]
fn mosquitto_pub_report_shows_at_the_api() {
    let server = LocusServer::start();
    let token = server.issue_token("courier-7");
    let ts = now_ms();
    let json = format!(
        r#"{{"seq":1,"fixes":[{{"ts":{ts},"lat":41.3851,"lon":2.1734,"accuracy":4.5,"battery":80,"order":"order-9"}}]}}"#
    );
    assert!(mosquitto_pub(&server, "courier-7", Some(&token), &encode_json(&json)));

    let location = wait_for("the location", || {
        Some(server.get("/v1/couriers/courier-7/location")).filter(|(s, _)| *s == 200)
    });
    let location = location.1;
    assert_eq!(location["courier"], "courier-7");
    assert_eq!(location["lat"], 41.3851);
    assert_eq!(location["lon"], 2.1734);
    assert_eq!(location["ts"], ts);
    assert_eq!(location["accuracy"], 4.5);
    assert_eq!(location["battery"], 80);
    // The fix's own order id is recorded with it; it locates no order (none is assigned to
    // courier-7: see tests/tests/order_tracking.rs).
    assert_eq!(location["order"], "order-9");
    assert_eq!(server.get("/v1/orders/order-9/location").0, 404);
    assert_eq!(server.track_ts("courier-7"), [ts]);
}

#[test]
fn rumqttc_reports_are_acked_and_tracked_in_device_time_order() {
    let server = LocusServer::start();
    let token = server.issue_token("c1");
    let mut courier = TestCourier::connect(server.mqtt, "c1", Some(&token)).unwrap();
    let t0 = now_ms() - 60_000;
    for seq in 1..=20 {
        courier.publish(&report(seq, t0 + seq * 1000, 41.0 + seq as f64 * 1e-4, 2.0));
    }
    courier.wait_ack(20);
    let expected: Vec<u64> = (1..=20).map(|s| t0 + s * 1000).collect();
    assert_eq!(server.track_ts("c1"), expected);

    // Paging by device time.
    let page = server.get_ok(&format!("/v1/couriers/c1/track?since={}&limit=5", t0 + 3000));
    let ts: Vec<u64> =
        page["fixes"].as_array().unwrap().iter().map(|f| f["ts"].as_u64().unwrap()).collect();
    assert_eq!(ts, (3..=7).map(|s| t0 + s * 1000).collect::<Vec<_>>());
    assert_eq!(page["next_since"], t0 + 7001);
    assert!(server.metric("locus_fixes_committed_total") >= 20.0);
}

#[test]
fn mqtt5_listener_accepts_couriers() {
    let server = LocusServer::start_anonymous();
    let mut options = rumqttc::v5::MqttOptions::new("v5-courier", "127.0.0.1", server.mqtt5.port());
    options.set_keep_alive(std::time::Duration::from_secs(30));
    let (client, mut connection) = rumqttc::v5::Client::new(options, 16);
    let payload = wire::encode_report(&report(1, now_ms(), 1.5, 2.5));
    client
        .publish(
            "couriers/v5-courier/locations",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            payload,
        )
        .unwrap();
    std::thread::spawn(move || for _ in connection.iter() {});
    let location = wait_for("v5 location", || {
        Some(server.get("/v1/couriers/v5-courier/location")).filter(|(s, _)| *s == 200)
    });
    assert_eq!(location.1["lat"], 1.5);
}

#[test]
fn wrong_credentials_are_refused_at_connect() {
    let server = LocusServer::start();
    let token = server.issue_token("c1");
    let other = server.issue_token("c2");
    assert!(TestCourier::connect(server.mqtt, "c1", Some("locus1.0000.AAAAAAAAAAAAAAAAAAAAAA"))
        .is_err());
    assert!(
        TestCourier::connect(server.mqtt, "c1", Some(&other)).is_err(),
        "another courier's token"
    );
    assert!(TestCourier::connect(server.mqtt, "c1", None).is_err(), "no credentials");
    let payload = wire::encode_report(&report(1, now_ms(), 1.0, 1.0));
    assert!(!mosquitto_pub(&server, "c1", Some("wrong"), &payload));
    // A CONNECT without credentials is refused by rumqttd before our check, so it is not counted.
    assert!(server.metric("locus_mqtt_auth_refused_total") >= 3.0);
    // The right token still works, and nothing from the refused attempts was stored.
    assert_eq!(server.get("/v1/couriers/c1/location").0, 404);
    let mut courier = TestCourier::connect(server.mqtt, "c1", Some(&token)).unwrap();
    courier.publish(&report(1, now_ms(), 1.0, 1.0));
    courier.wait_ack(1);

    // A revoked token is refused at the next connection.
    let output = Command::new(locusd())
        .args(["token", "revoke", &token, "--data-dir"])
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(TestCourier::connect(server.mqtt, "c1", Some(&token)).is_err(), "revoked token");
}

#[test]
fn http_api_needs_the_admin_token_and_answers_json_errors() {
    let server = LocusServer::start();
    let client = reqwest::blocking::Client::new();
    let response = client.get(server.url("/v1/couriers/c1/location")).send().unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().unwrap();
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
    let (status, body) = server.get("/v1/couriers/nobody/location");
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("nobody"));
    assert_eq!(server.get("/v1/couriers/x/track?limit=abc").0, 400);
    // Health and metrics are open.
    assert_eq!(client.get(server.url("/healthz")).send().unwrap().status(), 200);
    assert_eq!(client.get(server.url("/metrics")).send().unwrap().status(), 200);
}

#[test]
fn bad_input_is_dead_lettered_with_its_reason_and_harms_nobody_else() {
    let server = LocusServer::start_with(
        true,
        Some("[pipeline]\nmax_report_bytes = 1024\nmax_fixes_per_report = 9\n"),
    );
    let mut good = TestCourier::connect(server.mqtt, "good", None).unwrap();
    let mut bad = TestCourier::connect(server.mqtt, "bad", None).unwrap();
    let now = now_ms();
    let valid = wire::encode_report(&report(1, now, 10.0, 10.0));

    bad.publish_raw(b"\xde\xad\xbe\xef garbage".to_vec()); // unknown version 0xde
    bad.publish_raw(vec![1, 0, 1, 1, 0x80]); // truncated postcard
    bad.publish_raw(valid[..valid.len() - 3].to_vec()); // truncated report
    let mut v9 = valid.clone();
    v9[0] = 9;
    bad.publish_raw(v9); // unknown version
    bad.publish_raw(Vec::new()); // empty
    bad.publish_raw(vec![1u8; 2048]); // oversized (limit set to 1 KiB above)
    bad.publish(&report(1, now, 95.0, 10.0)); // latitude off the globe
    bad.publish(&report(2, now + 3_600_000, 10.0, 10.0)); // an hour in the future
    bad.publish(&report(3, now - 30 * 24 * 3_600_000, 10.0, 10.0)); // a month old
                                                                    // One report, one good and one bad fix: the good one is kept.
    let mut mixed = report(4, now, 10.0, 10.0);
    mixed.fixes.push(Fix::from_degrees(now + 1, 10.0, 200.0));
    bad.publish(&mixed);
    bad.wait_ack(4);
    good.publish(&report(1, now, 41.0, 2.0));
    good.wait_ack(1);

    let expected = [
        "unknown_version",
        "malformed",
        "empty_payload",
        "coordinates_out_of_range",
        "timestamp_in_future",
        "timestamp_too_old",
        "oversized",
    ];
    let letters = wait_for("dead letters", || {
        let body = server.get_ok("/v1/dead-letters?limit=100");
        let reasons: Vec<String> = body["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["reason"].as_str().unwrap().to_owned())
            .collect();
        expected.iter().all(|r| reasons.iter().any(|x| x == r)).then_some(body)
    });
    let letters = letters["dead_letters"].as_array().unwrap();
    assert!(letters
        .iter()
        .all(|l| l["topic"] == "couriers/bad/locations" && l["courier"] == "bad"));
    let source = serde_json::json!({ "kind": "mqtt", "topic": "couriers/bad/locations" });
    assert!(letters.iter().all(|l| l["source"] == source), "{letters:?}");
    assert!(letters.iter().any(|l| l["payload_hex"].as_str().unwrap().starts_with("deadbeef")));
    assert_eq!(letters.iter().filter(|l| l["reason"] == "coordinates_out_of_range").count(), 2);
    assert!(server.metric("locus_dead_letters_total{reason=\"malformed\"}") >= 2.0);
    assert!(server.metric("locus_dead_letters_total{reason=\"unknown_version\"}") >= 2.0);

    // Past the broker's own payload limit (64 KiB) the broker drops that connection; the server
    // and everyone else carry on.
    let huge = TestCourier::connect_with_max_packet(server.mqtt, "huge", None, 1 << 20).unwrap();
    huge.publish_raw(vec![1u8; 70 * 1024]);
    good.publish(&report(2, now + 1, 41.0, 2.0));
    good.wait_ack(2);
    assert_eq!(server.track_ts("good"), [now, now + 1]);
    assert_eq!(server.track_ts("bad"), [now], "only the good fix of the mixed report");
}

/// A report whose middle fixes are bad, published with mosquitto_pub: the good fixes are kept,
/// the bad ones become one dead letter per reason naming them, and each letter holds the
/// payload exactly as published (not a report the server rebuilt).
#[test]
fn bad_fixes_in_a_report_are_dead_lettered_as_received_and_the_rest_kept() {
    let server = LocusServer::start();
    let token = server.issue_token("courier-m");
    let ts = now_ms();
    let with_battery = |mut fix: Fix, pct: u8| {
        fix.details = Some(FixDetails { battery_pct: Some(pct), ..FixDetails::default() });
        fix
    };
    let report = Report {
        seq: 1,
        fixes: vec![
            Fix::from_degrees(ts, 41.0, 2.0),
            Fix::from_degrees(ts + 1, 95.0, 2.0), // off the globe
            Fix::from_degrees(ts + 2, 41.0, 2.0),
            with_battery(Fix::from_degrees(ts + 3, 41.0, 2.0), 200), // battery above 100
            Fix::from_degrees(ts + 4, 41.0, 181.0),                  // off the globe
        ],
    };
    let payload = wire::encode_report(&report);
    let payload_hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    assert!(mosquitto_pub(&server, "courier-m", Some(&token), &payload));

    let letters = wait_for("two dead letters", || {
        let body = server.get_ok("/v1/dead-letters?limit=100");
        let letters = body["dead_letters"].as_array().unwrap().clone();
        (letters.len() >= 2).then_some(letters)
    });
    assert_eq!(letters.len(), 2, "one letter per reason: {letters:?}");
    for letter in &letters {
        assert_eq!(letter["payload_hex"], payload_hex.as_str(), "the payload as published");
        assert_eq!(letter["courier"], "courier-m");
    }
    let detail = |reason: &str| {
        let letter = letters.iter().find(|l| l["reason"] == reason).expect(reason);
        letter["detail"].as_str().unwrap().to_owned()
    };
    let coordinates = detail("coordinates_out_of_range");
    assert!(coordinates.starts_with("2 of the report's 5 fixes refused"), "{coordinates}");
    assert!(coordinates.contains("fixes[1]: ") && coordinates.contains("fixes[4]: "));
    let battery = detail("detail_out_of_range");
    assert!(battery.contains("fixes[3]: battery out of range"), "{battery}");
    assert_eq!(server.track_ts("courier-m"), [ts, ts + 2]);
}

/// `locusd wire encode` refuses out-of-range values instead of wrapping them.
#[test]
fn wire_encode_refuses_out_of_range_values() {
    let fix = |extra: &str| {
        format!(r#"{{"seq":1,"fixes":[{{"ts":1763700000000,"lat":41.0,"lon":2.0{extra}}}]}}"#)
    };
    for (extra, field) in [
        (r#","heading":360"#, "heading"),
        (r#","heading":400"#, "heading"),
        (r#","heading":-90"#, "heading"),
        (r#","battery":101"#, "battery"),
        (r#","speed":-1"#, "speed"),
        (r#","order":"a/b""#, "order"),
    ] {
        let output = Command::new(locusd())
            .args(["wire", "encode", "--hex"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().expect("stdin").write_all(fix(extra).as_bytes())?;
                child.wait_with_output()
            })
            .expect("locusd wire encode");
        assert!(!output.status.success(), "{extra} was encoded: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("fixes[0].{field}")), "{extra}: {stderr}");
    }
    // The edges themselves are valid.
    let edges = encode_json(&fix(r#","heading":359.99,"battery":100,"speed":0"#));
    let details = wire::decode_report(&edges).unwrap().fixes[0].details.clone().unwrap();
    assert_eq!((details.heading_cdeg, details.battery_pct), (Some(35_999), Some(100)));
}

#[test]
fn duplicates_are_acked_not_reapplied_and_newer_device_time_wins() {
    let server = LocusServer::start_anonymous();
    let mut courier = TestCourier::connect(server.mqtt, "dup", None).unwrap();
    let now = now_ms();
    courier.publish(&report(1, now - 5000, 1.0, 1.0));
    courier.publish(&report(2, now, 2.0, 2.0));
    courier.wait_ack(2);
    // A resend of seq 2 (as after a lost ack) and an older one.
    courier.publish(&report(2, now, 2.0, 2.0));
    courier.publish(&report(1, now - 5000, 1.0, 1.0));
    // Out of device-time order: seq 3 carries an older fix than seq 2.
    courier.publish(&report(3, now - 2000, 3.0, 3.0));
    courier.wait_ack(3);
    assert_eq!(server.track_ts("dup"), [now - 5000, now - 2000, now]);
    let location = server.get_ok("/v1/couriers/dup/location");
    assert_eq!(location["ts"], now, "the newest device time wins, not the latest arrival");
    assert_eq!(location["lat"], 2.0);
    assert!(server.metric("locus_duplicate_reports_total") >= 2.0);
}

#[test]
fn state_survives_a_clean_restart() {
    let mut server = LocusServer::start();
    let token = server.issue_token("r1");
    let mut courier = TestCourier::connect(server.mqtt, "r1", Some(&token)).unwrap();
    let now = now_ms();
    courier.publish(&Report {
        seq: 1,
        fixes: vec![Fix {
            details: Some(FixDetails { speed_cm_s: Some(550), ..Default::default() }),
            ..Fix::from_degrees(now, 5.0, 6.0)
        }],
    });
    courier.wait_ack(1);
    assert!(server.stop(), "SIGTERM exits 0");
    server.restart();
    let location = server.get_ok("/v1/couriers/r1/location");
    assert_eq!(location["speed"], 5.5);
    // The committed seq survived too: it is announced (retained ack) on connect, a resend is a
    // duplicate, a new seq is taken.
    let mut courier = TestCourier::connect(server.mqtt, "r1", Some(&token)).unwrap();
    courier.wait_ack(1);
    courier.publish(&report(1, now + 1, 7.0, 7.0));
    courier.publish(&report(2, now + 2, 8.0, 8.0));
    courier.wait_ack(2);
    assert_eq!(server.track_ts("r1"), [now, now + 2]);
}

#[test]
fn an_acked_fix_survives_kill_9() {
    let mut server = LocusServer::start_anonymous();
    let mut courier = TestCourier::connect(server.mqtt, "k9", None).unwrap();
    let now = now_ms();
    for seq in 1..=50 {
        courier.publish(&report(seq, now - 1000 + seq, 1.0, 1.0));
    }
    courier.wait_ack(50);
    server.kill9();
    server.restart();
    assert_eq!(server.track_ts("k9").len(), 50);
    assert_eq!(server.get_ok("/v1/couriers/k9/location")["ts"], now + 50 - 1000);
}

#[test]
fn wire_cli_round_trips_json() {
    let json = r#"{"seq":1,"fixes":[{"ts":1763700000000,"lat":41.3851,"lon":2.1734}]}"#;
    let bytes = encode_json(json);
    assert!(bytes.len() <= 24);
    let mut child = Command::new(locusd())
        .args(["wire", "decode"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    let decoded: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(decoded, serde_json::from_str::<serde_json::Value>(json).unwrap());

    let ack = encode_json(r#"{"seq":42}"#);
    assert_eq!(wire::decode_ack(&ack).unwrap().seq, 42);

    let output =
        Command::new(locusd()).args(["wire", "encode"]).stdin(Stdio::null()).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a Locus message"));
}

#[test]
fn a_bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[pipeline]\nmax_batch = 10\n").unwrap();
    let output = Command::new(locusd()).arg("serve").arg("--config").arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_batch"), "{stderr}");
}

/// The retained ack of `courier` as `mosquitto_sub` reads it (the watermark: every report up to
/// it is committed).
fn retained_ack(server: &LocusServer, courier: &str) -> u64 {
    let output = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &server.mqtt.port().to_string()])
        .args(["-i", &format!("{courier}-ack-reader"), "-t", &format!("couriers/{courier}/acks")])
        .args(["-C", "1", "-W", "10", "-F", "%x"])
        .output()
        .expect("mosquitto_sub is installed (scripts/test.sh)");
    assert!(output.status.success(), "no retained ack for {courier}: {output:?}");
    let hex = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    wire::decode_ack(&bytes).expect("an ack").seq
}

/// Reports published out of order with mosquitto_pub (as a broker that drops under pressure,
/// an app with two senders or a gateway would deliver them): every one is stored, and the ack
/// never covers a seq the server does not have. A second fix at a device millisecond the
/// courier already has is refused with a reason, never overwriting the first.
#[test]
fn reordered_and_same_millisecond_reports_lose_nothing_acked() {
    let server = LocusServer::start_anonymous();
    let now = now_ms() - 60_000;
    let publish = |seq: u64, fixes: &[(u64, f64)]| {
        let fixes: Vec<String> = fixes
            .iter()
            .map(|(ts, lat)| format!(r#"{{"ts":{ts},"lat":{lat},"lon":2.17}}"#))
            .collect();
        let json = format!(r#"{{"seq":{seq},"fixes":[{}]}}"#, fixes.join(","));
        assert!(mosquitto_pub(&server, "ro", None, &encode_json(&json)));
    };
    let committed = |n: usize| {
        wait_for(&format!("{n} fixes"), || (server.track_ts("ro").len() == n).then_some(()))
    };
    // Fixes are readable once written, the ack goes out once they are flushed: wait for it.
    let acked = |seq: u64| {
        wait_for(&format!("ack {seq}"), || (retained_ack(&server, "ro") == seq).then_some(()))
    };

    publish(1, &[(now + 1_000, 41.0)]);
    committed(1);
    acked(1);
    publish(3, &[(now + 3_000, 41.0)]);
    committed(2);
    assert_eq!(retained_ack(&server, "ro"), 1, "2 has not arrived: the ack must not cover it");
    publish(2, &[(now + 2_000, 41.0)]);
    committed(3);
    acked(3);
    assert_eq!(server.track_ts("ro"), [now + 1_000, now + 2_000, now + 3_000]);
    assert_eq!(server.metric("locus_duplicate_reports_total"), 0.0);
    // A resend of 2 now is a duplicate: acked again, not stored again.
    publish(2, &[(now + 2_000, 41.0)]);
    wait_for("the duplicate", || {
        (server.metric("locus_duplicate_reports_total") == 1.0).then_some(())
    });

    // Same device millisecond: twice in one report, and again in a later report.
    publish(4, &[(now + 4_000, 42.0), (now + 4_000, 43.0), (now + 5_000, 44.0)]);
    committed(5);
    publish(5, &[(now + 4_000, 45.0), (now + 6_000, 46.0)]);
    committed(6);
    acked(5);
    let track = server.get_ok("/v1/couriers/ro/track?limit=100");
    let at_4000: Vec<&serde_json::Value> =
        track["fixes"].as_array().unwrap().iter().filter(|f| f["ts"] == now + 4_000).collect();
    assert_eq!(at_4000.len(), 1);
    assert_eq!(at_4000[0]["lat"], 42.0, "the first fix at a millisecond stays");
    assert_eq!(server.metric("locus_dead_letters_total{reason=\"same_device_time\"}"), 2.0);
    let letters = server.get_ok("/v1/dead-letters");
    let same: Vec<&serde_json::Value> = letters["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["reason"] == "same_device_time")
        .collect();
    assert_eq!(same.len(), 2, "{letters}");
    assert!(same[0]["detail"].as_str().unwrap().contains("fixes[1]"), "{}", same[0]);
}
