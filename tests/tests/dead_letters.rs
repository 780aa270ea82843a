//! Dead letters an operator acts on, against a real locusd and a real MQTT courier: a plugin
//! deploy that rejects good fixes, then a rollback and a replay that lands them (each once,
//! the last location never moved back); filters, export as JSON lines, purge.

use locus_sdk::wire;
use locus_tests::plugin_components::component;
use locus_tests::{now_ms, wait_for, LocusServer, TestCourier};
use serde_json::{json, Value};
use std::time::Duration;

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

/// `method path` with the admin token; the status and the JSON body.
fn call(server: &LocusServer, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = client()
        .request(method, server.url(path))
        .bearer_auth(server.admin_token())
        .send()
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    (response.status().as_u16(), response.json().unwrap_or(Value::Null))
}

fn deploy_jitter_filter(server: &LocusServer, config: Value) {
    let response = client()
        .put(server.url("/v1/plugins/quality"))
        .bearer_auth(server.admin_token())
        .header("locus-plugin-settings", json!({ "config": config }).to_string())
        .body(component("jitter-filter"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().unwrap());
}

/// A fix at `ts` with `accuracy` metres, in Barcelona.
fn fix(ts: u64, accuracy_m: f64) -> wire::Fix {
    let accuracy_cm = Some((accuracy_m * 100.0) as u32);
    let details = wire::FixDetails { accuracy_cm, ..wire::FixDetails::default() };
    wire::Fix { details: Some(details), ..wire::Fix::from_degrees(ts, 41.3851, 2.1734) }
}

fn letters(server: &LocusServer, query: &str) -> Vec<Value> {
    let body = server.get_ok(&format!("/v1/dead-letters?{query}"));
    body["dead_letters"].as_array().unwrap().clone()
}

#[test]
fn fixes_a_bad_plugin_rejected_land_once_when_replayed_after_its_rollback() {
    let server = LocusServer::start();
    // The version that works, then a bad deploy that rejects every fix over 50 m of accuracy.
    deploy_jitter_filter(&server, json!({ "max_accuracy_m": "1000", "reject": "true" }));
    deploy_jitter_filter(&server, json!({ "max_accuracy_m": "50", "reject": "true" }));
    let token = server.issue_token("d1");
    let mut courier = TestCourier::connect(server.mqtt, "d1", Some(&token)).unwrap();
    let t0 = now_ms() - 60_000;
    let reports = [
        vec![fix(t0 + 1, 10.0)],
        vec![fix(t0 + 2, 200.0), fix(t0 + 3, 10.0)],
        vec![fix(t0 + 4, 300.0)],
        vec![fix(t0 + 5, 5.0)],
    ];
    for (i, fixes) in reports.iter().enumerate() {
        courier.publish(&wire::Report { seq: i as u64 + 1, fixes: fixes.clone() });
    }
    courier.wait_ack(4);
    assert_eq!(server.track_ts("d1"), [t0 + 1, t0 + 3, t0 + 5]);
    let rejected = letters(&server, "plugin=quality");
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(rejected.iter().all(|l| l["reason"] == "plugin_rejected" && l["courier"] == "d1"));

    // Exported as JSON lines, one letter a line.
    let export = client()
        .get(server.url("/v1/dead-letters/export?plugin=quality"))
        .bearer_auth(server.admin_token())
        .send()
        .unwrap();
    assert_eq!(export.status(), 200);
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let lines: Vec<Value> =
        export.text().unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, rejected);

    // Replayed while the bad version runs: refused again, kept, nothing stored.
    let (status, refused) =
        call(&server, reqwest::Method::POST, "/v1/dead-letters/replay?plugin=quality");
    assert_eq!(status, 200, "{refused}");
    assert_eq!((refused["replayed"].as_u64(), refused["refused"].as_u64()), (Some(2), Some(2)));
    assert!(refused["letters"][0]["detail"].as_str().unwrap().contains("accuracy"), "{refused}");
    assert_eq!(letters(&server, "plugin=quality").len(), 2);
    assert_eq!(server.track_ts("d1"), [t0 + 1, t0 + 3, t0 + 5]);

    // The operator rolls the plugin back and replays what it rejected.
    let (status, body) = call(&server, reqwest::Method::POST, "/v1/plugins/quality/rollback");
    assert_eq!(status, 200, "{body}");
    let (status, replay) =
        call(&server, reqwest::Method::POST, "/v1/dead-letters/replay?plugin=quality");
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["resolved"], 2, "{replay}");
    assert_eq!(replay["fixes_stored"], 2, "{replay}");
    // The second report's good fix was stored the first time: a duplicate now.
    assert_eq!(replay["duplicates"], 1, "{replay}");
    assert_eq!(server.track_ts("d1"), [t0 + 1, t0 + 2, t0 + 3, t0 + 4, t0 + 5], "each fix once");
    assert_eq!(server.get_ok("/v1/couriers/d1/location")["ts"], t0 + 5, "never moved back");
    assert!(letters(&server, "plugin=quality").is_empty(), "resolved letters are removed");

    // Replaying again finds nothing; the same report's fixes are never stored twice.
    let (_, again) = call(&server, reqwest::Method::POST, "/v1/dead-letters/replay");
    assert_eq!(again["replayed"], 0, "{again}");
    assert_eq!(server.track_ts("d1").len(), 5);
    let metrics = server.metrics_text();
    let sample = |name: &str| locus_tests::sample_value(&metrics, name);
    assert_eq!(sample("locus_dead_letters_replayed_total{outcome=\"resolved\"}"), 2.0);
    assert_eq!(sample("locus_dead_letters_replayed_total{outcome=\"refused\"}"), 2.0);
    assert_eq!(sample("locus_dead_letter_fixes_replayed_total"), 2.0);
    assert_eq!(sample("locus_dead_letters_exported_total"), 2.0);
}

#[test]
fn letters_are_filtered_replayed_one_at_a_time_and_purged() {
    let server = LocusServer::start();
    let d2 = server.issue_token("d2");
    let d3 = server.issue_token("d3");
    let courier2 = TestCourier::connect(server.mqtt, "d2", Some(&d2)).unwrap();
    let mut courier3 = TestCourier::connect(server.mqtt, "d3", Some(&d3)).unwrap();
    let before = now_ms();
    courier2.publish_raw(b"not a report".to_vec());
    // A fix an hour in the future, from another courier.
    courier3.publish(&wire::Report { seq: 1, fixes: vec![fix(now_ms() + 3_600_000, 5.0)] });
    courier3.wait_ack(1);
    wait_for("both letters", || (letters(&server, "").len() == 2).then_some(()));
    let after = now_ms();

    // Not postcard at all: its first byte reads as a wire version this build does not know.
    let malformed = letters(&server, "reason=unknown_version");
    assert_eq!(malformed.len(), 1);
    assert_eq!(malformed[0]["courier"], "d2");
    assert_eq!(letters(&server, "courier=d3")[0]["reason"], "timestamp_in_future");
    assert_eq!(letters(&server, "source=mqtt").len(), 2);
    assert_eq!(letters(&server, "source=plugin").len(), 0);
    assert_eq!(letters(&server, &format!("since={before}&until={after}")).len(), 2);
    assert_eq!(letters(&server, &format!("since={}", after + 1)).len(), 0);
    let (status, body) =
        call(&server, reqwest::Method::GET, "/v1/dead-letters?source=carrier-pigeon");
    assert_eq!(status, 400, "{body}");

    // One letter replayed: still malformed, kept, the answer says why.
    let id = malformed[0]["id"].as_u64().unwrap();
    let (status, replay) =
        call(&server, reqwest::Method::POST, &format!("/v1/dead-letters/{id}/replay"));
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["letters"][0]["outcome"], "refused", "{replay}");
    assert_eq!(call(&server, reqwest::Method::GET, &format!("/v1/dead-letters/{id}")).0, 200);

    // A purge needs a filter or all=true.
    let (status, body) = call(&server, reqwest::Method::DELETE, "/v1/dead-letters");
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        call(&server, reqwest::Method::DELETE, "/v1/dead-letters?reason=unknown_version");
    assert_eq!((status, body["purged"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(call(&server, reqwest::Method::GET, &format!("/v1/dead-letters/{id}")).0, 404);
    assert_eq!(
        call(&server, reqwest::Method::POST, &format!("/v1/dead-letters/{id}/replay")).0,
        404
    );
    let (status, body) = call(&server, reqwest::Method::DELETE, "/v1/dead-letters?all=true");
    assert_eq!((status, body["purged"].as_u64()), (200, Some(1)), "{body}");
    assert!(letters(&server, "").is_empty());
    assert_eq!(server.metric("locus_dead_letters_purged_total"), 2.0);

    // Readers may look at nothing here.
    let reader = server.token_command(&["issue", "--role", "reader"]);
    let status = client()
        .post(server.url("/v1/dead-letters/replay"))
        .bearer_auth(reader.trim())
        .send()
        .unwrap()
        .status();
    assert_eq!(status, 403);
}
