//! Plugins deployed over HTTP into a running locusd while a courier publishes: every fix is
//! committed exactly once, untagged before the swap and tagged after; bad deploys change
//! nothing; rollback; plugins survive a restart. Components are built from `plugins/` source.

use locus_sdk::wire;
use locus_tests::plugin_components::component;
use locus_tests::{now_ms, report, wait_for, LocusServer, TestCourier};
use serde_json::{json, Value};
use std::time::Duration;

/// PUT /v1/plugins/{name}; the status and JSON body.
fn deploy(server: &LocusServer, name: &str, bytes: Vec<u8>, settings: Value) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .put(server.url(&format!("/v1/plugins/{name}")))
        .bearer_auth(server.admin_token())
        .header("locus-plugin-settings", settings.to_string())
        .body(bytes)
        .timeout(Duration::from_secs(120))
        .send()
        .unwrap();
    (response.status().as_u16(), response.json().unwrap_or(Value::Null))
}

fn zone_settings(zone: &str) -> Value {
    // A box around central Barcelona.
    json!({ "config": { format!("zone.{zone}"): "41.30 2.10, 41.30 2.25, 41.45 2.25, 41.45 2.10" } })
}

#[test]
fn hot_deploy_tags_every_fix_after_the_swap_exactly_once() {
    let zone_tagger = component("zone-tagger");
    let mut server = LocusServer::start();
    let token = server.issue_token("p1");
    let mut courier = TestCourier::connect(server.mqtt, "p1", Some(&token)).unwrap();
    let t0 = now_ms() - 600_000;
    const TOTAL: u64 = 300;

    // Publish at a steady rate from another thread while the plugin is deployed.
    let publisher = std::thread::spawn(move || {
        for seq in 1..=TOTAL {
            courier.publish(&report(seq, t0 + seq, 41.3851, 2.1734));
            std::thread::sleep(Duration::from_millis(10));
        }
        courier.wait_ack(TOTAL);
        courier
    });
    wait_for("some fixes before the deploy", || (server.track_ts("p1").len() >= 50).then_some(()));
    let (status, info) = deploy(&server, "zones", zone_tagger.clone(), zone_settings("centre"));
    assert_eq!(status, 200, "{info}");
    let mut courier = publisher.join().unwrap();

    let track = server.get_ok("/v1/couriers/p1/track?limit=10000");
    let fixes = track["fixes"].as_array().unwrap();
    let ts: Vec<u64> = fixes.iter().map(|f| f["ts"].as_u64().unwrap()).collect();
    assert_eq!(ts, (1..=TOTAL).map(|s| t0 + s).collect::<Vec<_>>(), "each fix exactly once");
    let tagged: Vec<bool> = fixes.iter().map(|f| f["attributes"]["zone"] == "centre").collect();
    let first_tagged = tagged.iter().position(|t| *t).expect("fixes after the deploy are tagged");
    assert!(first_tagged >= 50, "fixes before the deploy are untagged");
    assert!(tagged[first_tagged..].iter().all(|t| *t), "every fix after the swap is tagged");
    assert_eq!(server.get_ok("/v1/couriers/p1/location")["attributes"]["zone"], "centre");

    // Random bytes are refused and the running chain is unchanged.
    let version = server.get_ok("/v1/plugins/zones")["version"].clone();
    let (status, body) = deploy(&server, "zones", b"definitely not wasm".to_vec(), json!({}));
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].is_string());
    assert_eq!(server.get_ok("/v1/plugins/zones")["version"], version);

    // A second version, then a rollback to the first.
    let (status, _) = deploy(&server, "zones", zone_tagger, zone_settings("downtown"));
    assert_eq!(status, 200);
    courier.publish(&report(TOTAL + 1, t0 + TOTAL + 1, 41.3851, 2.1734));
    courier.wait_ack(TOTAL + 1);
    assert_eq!(server.get_ok("/v1/couriers/p1/location")["attributes"]["zone"], "downtown");
    let rolled = reqwest::blocking::Client::new()
        .post(server.url("/v1/plugins/zones/rollback"))
        .bearer_auth(server.admin_token())
        .send()
        .unwrap();
    assert_eq!(rolled.status(), 200);

    // Plugins and their settings survive a restart.
    assert!(server.stop());
    server.restart();
    let plugins = server.get_ok("/v1/plugins");
    assert_eq!(plugins["plugins"][0]["name"], "zones");
    assert!(plugins["plugins"][0]["settings"]["config"]["zone.centre"].is_string(), "{plugins}");
    let mut courier = TestCourier::connect(server.mqtt, "p1", Some(&token)).unwrap();
    courier.publish(&report(TOTAL + 2, t0 + TOTAL + 2, 41.3851, 2.1734));
    courier.wait_ack(TOTAL + 2);
    assert_eq!(server.get_ok("/v1/couriers/p1/location")["attributes"]["zone"], "centre");
    let metrics = reqwest::blocking::get(server.url("/metrics")).unwrap().text().unwrap();
    let calls = metrics
        .lines()
        .find(|l| l.starts_with("locus_plugin_calls_total{plugin=\"zones\""))
        .unwrap_or_else(|| panic!("no plugin calls metric in:\n{metrics}"));
    assert!(!calls.ends_with(" 0"), "the restarted chain was called: {calls}");
}

#[test]
fn a_hostile_plugin_costs_its_batch_not_the_server_and_the_sandbox_grants_nothing() {
    let server = LocusServer::start_anonymous();
    let (status, body) = deploy(
        &server,
        "hostile",
        component("hostile"),
        json!({ "limits": { "call_timeout_ms": 100 } }),
    );
    assert_eq!(status, 200, "{body}");
    let mut courier = TestCourier::connect(server.mqtt, "loop", None).unwrap();
    let now = now_ms();
    courier.publish(&report(1, now, 41.0, 2.0));
    courier.wait_ack(1);
    let letters = wait_for("the plugin_failed dead letter", || {
        let body = server.get_ok("/v1/dead-letters");
        let found = body["dead_letters"]
            .as_array()?
            .iter()
            .find(|l| l["reason"] == "plugin_failed")?
            .clone();
        Some(found)
    });
    assert!(letters["detail"].as_str().unwrap().contains("hostile"), "{letters}");
    // The letter holds the report as published, and names the plugin and where the fix came from.
    let published = wire::encode_report(&report(1, now, 41.0, 2.0));
    let published_hex: String = published.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(letters["payload_hex"], published_hex.as_str(), "{letters}");
    assert_eq!(letters["topic"], "couriers/loop/locations", "{letters}");
    assert_eq!(letters["source"]["kind"], "plugin", "{letters}");
    assert_eq!(letters["source"]["name"], "hostile", "{letters}");
    let input = json!({ "kind": "mqtt", "topic": "couriers/loop/locations" });
    assert_eq!(letters["source"]["input"], input, "{letters}");
    // A memory bomb is contained too.
    let mut bomb = TestCourier::connect(server.mqtt, "bomb", None).unwrap();
    bomb.publish(&report(1, now, 41.0, 2.0));
    bomb.wait_ack(1);
    let info = wait_for("two plugin errors", || {
        let info = server.get_ok("/v1/plugins/hostile");
        (info["stats"]["errors"].as_u64()? >= 2).then_some(info)
    });
    assert!(info["stats"]["last_error"].is_object() || info["stats"]["errors"].as_u64() >= Some(2));
    assert!(server.metric("locus_dead_letters_total{reason=\"plugin_failed\"}") >= 2.0);

    // A guest that reaches for the clock, the environment, the file system and the network gets
    // nothing (no grants were given), and the server goes on.
    let mut probe = TestCourier::connect(server.mqtt, "probe", None).unwrap();
    probe.publish(&report(1, now, 41.0, 2.0));
    probe.wait_ack(1);
    let seen = server.get_ok("/v1/couriers/probe/location")["attributes"].clone();
    assert_eq!(seen["clock"], "0", "no wall clock without the grant: {seen}");
    assert_eq!(seen["env"], "0", "no environment: {seen}");
    for denied in ["files", "network"] {
        assert!(seen[denied].as_str().is_some_and(|v| v.starts_with("error")), "{denied}: {seen}");
    }

    // Still serving, and a well-behaved courier's fixes pass through a fresh instance.
    let mut fine = TestCourier::connect(server.mqtt, "fine", None).unwrap();
    fine.publish(&report(1, now, 41.0, 2.0));
    fine.wait_ack(1);
    assert_eq!(server.get_ok("/v1/couriers/fine/location")["attributes"]["hostile"], "benign");
}
