//! The live fix stream against a real locusd: a consumer with a `reader` token subscribed to
//! `fixes/+` (rumqttc) and one on `fixes/{courier}` (`mosquitto_sub`) receive every committed
//! fix, after plugins (a zone-tagger plugin adds its attribute), once; couriers and other
//! tokens cannot read the stream, and nobody but locusd writes it.

use locus_sdk::{topics, wire};
use locus_tests::plugin_components::component;
use locus_tests::{now_ms, report, wait_for, LocusServer, TestCourier, PATIENCE};
use rumqttc::{Event, Packet, QoS, SubscribeReasonCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A stream consumer: connects as `reader@{name}` with `token`, subscribes to `filter`, and
/// sends every message it receives (topic, payload) on the returned channel once the
/// subscription is granted. The SUBACK's code is the first thing sent back.
fn consumer(
    server: &LocusServer,
    name: &str,
    token: &str,
    filter: &str,
) -> (SubscribeReasonCode, mpsc::Receiver<(String, Vec<u8>)>) {
    let mut options =
        rumqttc::MqttOptions::new(format!("reader@{name}"), "127.0.0.1", server.mqtt.port());
    options.set_credentials("reader", token);
    let (client, mut connection) = rumqttc::Client::new(options, 100);
    client.subscribe(filter, QoS::AtLeastOnce).expect("subscribe");
    let (granted_tx, granted) = mpsc::channel();
    let (messages_tx, messages) = mpsc::channel();
    std::thread::spawn(move || {
        let _client = client; // the connection lives as long as this thread
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let _ = granted_tx.send(ack.return_codes[0]);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let topic = publish.topic.clone();
                    if messages_tx.send((topic, publish.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("stream consumer lost its connection: {e}"),
            }
        }
    });
    let code = granted.recv_timeout(PATIENCE).expect("a SUBACK");
    (code, messages)
}

#[test]
fn a_reader_receives_every_committed_fix_after_plugins_once() {
    let server = LocusServer::start();
    let reader = server.token_command(&["issue", "--role", "reader"]);
    // A plugin that tags fixes inside a box around Barcelona: the stream carries its attribute.
    let settings =
        json!({"config": {"zone.centre": "41.30 2.10, 41.30 2.25, 41.45 2.25, 41.45 2.10"}});
    let deployed = reqwest::blocking::Client::new()
        .put(server.url("/v1/plugins/zones"))
        .bearer_auth(server.admin_token())
        .header("locus-plugin-settings", settings.to_string())
        .body(component("zone-tagger"))
        .timeout(Duration::from_secs(120))
        .send()
        .expect("deploy");
    assert_eq!(deployed.status().as_u16(), 200);

    let (code, all) = consumer(&server, "all", &reader, topics::ALL_FIXES);
    assert!(matches!(code, SubscribeReasonCode::Success(_)), "{code:?}");
    // The same stream in the wire format.
    let (code, all_wire) = consumer(&server, "wire", &reader, topics::ALL_FIXES_WIRE);
    assert!(matches!(code, SubscribeReasonCode::Success(_)), "{code:?}");
    // One courier's stream with a real client of another make.
    let only_c2 = Command::new("timeout")
        .args(["60", "mosquitto_sub", "-h", "127.0.0.1", "-p", &server.mqtt.port().to_string()])
        .args(["-i", "reader@mosquitto", "-u", "reader", "-P", &reader, "-q", "1"])
        .args(["-t", &topics::fixes("c2"), "-C", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub is installed (scripts/test.sh)");
    // Both consumers connected (mosquitto_sub subscribes right after): c2's commits below are
    // five, so it gets two of them even if its SUBSCRIBE comes a moment late.
    wait_for("mosquitto_sub to connect", || {
        (server.metric("locus_mqtt_connected_clients") >= 3.0).then_some(())
    });

    let t0 = now_ms() - 60_000;
    let mut sent: BTreeMap<(String, u64), f64> = BTreeMap::new();
    for courier in ["c1", "c2"] {
        let token = server.issue_token(courier);
        let mut device = TestCourier::connect(server.mqtt, courier, Some(&token)).unwrap();
        for seq in 1..=5u64 {
            // c1 inside the box, c2 outside it (its fixes carry no zone).
            let (lat, lon) = if courier == "c1" { (41.38, 2.17) } else { (40.0, -3.7) };
            let lat = lat + seq as f64 * 1e-4;
            device.publish(&report(seq, t0 + seq * 1000, lat, lon));
            sent.insert((courier.to_owned(), t0 + seq * 1000), lat);
            if courier == "c2" {
                // One commit each: five messages on fixes/c2.
                device.wait_ack(seq);
            }
        }
        device.wait_ack(5);
    }

    let mut received: BTreeMap<(String, u64), Value> = BTreeMap::new();
    wait_for("every committed fix on the stream", || {
        while let Ok((topic, payload)) = all.try_recv() {
            let message: Value = serde_json::from_slice(&payload).expect("stream JSON");
            let courier = message["courier"].as_str().expect("courier").to_owned();
            assert_eq!(topic, topics::fixes(&courier));
            for fix in message["fixes"].as_array().expect("fixes") {
                let key = (courier.clone(), fix["ts"].as_u64().expect("ts"));
                assert!(received.insert(key, fix.clone()).is_none(), "a fix twice: {fix}");
            }
        }
        (received.len() >= sent.len()).then_some(())
    });
    assert_eq!(received.keys().collect::<Vec<_>>(), sent.keys().collect::<Vec<_>>());
    for ((courier, _), fix) in &received {
        let lat = sent[&(courier.clone(), fix["ts"].as_u64().unwrap())];
        assert!((fix["lat"].as_f64().unwrap() - lat).abs() < 1e-6, "{fix}");
        assert!(fix["received_ms"].as_u64().is_some(), "{fix}");
        let zone = if courier == "c1" { json!("centre") } else { Value::Null };
        assert_eq!(fix["attributes"]["zone"], zone, "{courier}: {fix}");
    }
    assert!(server.metric("locus_fix_stream_messages_total") >= 2.0);

    // The wire-format stream holds the same fixes, attributes and receive times.
    let mut received_wire: BTreeMap<(String, u64), wire::CommittedFix> = BTreeMap::new();
    wait_for("every committed fix on the wire-format stream", || {
        while let Ok((topic, payload)) = all_wire.try_recv() {
            let batch = wire::decode_fix_batch(&payload).expect("a FixBatch");
            assert_eq!(topic, topics::fixes_wire(&batch.courier));
            for fix in batch.fixes {
                let key = (batch.courier.clone(), fix.fix.ts_ms);
                assert!(received_wire.insert(key, fix).is_none(), "a fix twice");
            }
        }
        (received_wire.len() >= sent.len()).then_some(())
    });
    assert_eq!(received_wire.keys().collect::<Vec<_>>(), received.keys().collect::<Vec<_>>());
    for (key, fix) in &received_wire {
        let json = &received[key];
        assert_eq!(Some(fix.received_ms), json["received_ms"].as_u64());
        assert!((fix.fix.lat() - json["lat"].as_f64().unwrap()).abs() < 1e-6);
        let zone = fix.attributes.iter().find(|(k, _)| k == "zone").map(|(_, v)| v.as_str());
        assert_eq!(zone, json["attributes"]["zone"].as_str());
    }

    let only_c2 = only_c2.wait_with_output().expect("mosquitto_sub");
    assert!(only_c2.status.success(), "{only_c2:?}");
    let text = String::from_utf8(only_c2.stdout).expect("utf-8");
    for line in text.lines() {
        let message: Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(message["courier"], "c2", "{line}");
    }
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[test]
fn only_reader_tokens_read_the_stream_and_nobody_writes_it() {
    let server = LocusServer::start();
    let c1 = server.issue_token("c1");
    let reader = server.token_command(&["issue", "--role", "reader"]);

    // A courier's own connection: the stream is not its to read.
    let mut options = rumqttc::MqttOptions::new("c1", "127.0.0.1", server.mqtt.port());
    options.set_credentials("c1", &c1);
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    client.subscribe(topics::ALL_FIXES, QoS::AtLeastOnce).unwrap();
    let code = connection.iter().find_map(|event| match event {
        Ok(Event::Incoming(Packet::SubAck(ack))) => Some(ack.return_codes[0]),
        Ok(_) => None,
        Err(e) => panic!("{e}"),
    });
    assert_eq!(code, Some(SubscribeReasonCode::Failure));

    // A courier token is no reader token, whatever the client id says.
    let mut options = rumqttc::MqttOptions::new("reader@x", "127.0.0.1", server.mqtt.port());
    options.set_credentials("reader", &c1);
    let (_client, mut connection) = rumqttc::Client::new(options, 10);
    let refused = connection.iter().next().expect("an event");
    assert!(refused.is_err(), "a courier token connected as a reader: {refused:?}");

    // A reader may not publish on the stream (or anywhere): the connection is closed.
    let (code, _messages) = consumer(&server, "r1", &reader, &topics::fixes("c1"));
    assert!(matches!(code, SubscribeReasonCode::Success(_)));
    let forged = Command::new("timeout")
        .args(["30", "mosquitto_pub", "-h", "127.0.0.1", "-p", &server.mqtt.port().to_string()])
        .args(["-i", "reader@forger", "-u", "reader", "-P", &reader, "-q", "1"])
        .args(["-t", &topics::fixes("c1"), "-m", r#"{"courier":"c1","fixes":[]}"#])
        .output()
        .expect("mosquitto_pub");
    assert!(!forged.status.success(), "a reader published on the stream: {forged:?}");
    wait_for("the refused publish to be counted", || {
        let denied = server.metric("locus_mqtt_denied_total{action=\"publish\"}");
        (denied >= 1.0).then_some(())
    });
}
