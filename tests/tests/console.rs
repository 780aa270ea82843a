//! The operator console and the customer tracking page in a real browser (Debian's headless
//! Chromium over WebDriver), against a real locusd fed by `locus-sim` and real MQTT couriers.
//! The tile server is unreachable on purpose: positions must show on the plain background.
//!
//! Screenshots of each page are kept under `target/test-output/console/` (the README shows
//! copies of them).

use locus_tests::browser::Browser;
use locus_tests::{locus_sim, now_ms, report, LocusServer, TestCourier};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Generous: a loaded CI machine, a browser and a simulator share two cores.
const PATIENCE: Duration = Duration::from_secs(60);

/// No tile server listens on port 1: the map must work without tiles.
const CONFIG: &str = r#"
[console]
tile_url = "http://127.0.0.1:1/{z}/{x}/{y}.png"
live_interval_ms = 100
"#;

fn output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-output/console")
}

/// `locus-sim` riding `couriers` couriers (ids `sim-0`...) for `seconds` at 2 Hz.
fn simulate(server: &LocusServer, couriers: usize, seconds: u64, dir: &tempfile::TempDir) -> Child {
    let ids: Vec<String> = (0..couriers).map(|i| format!("sim-{i}")).collect();
    let tokens = server.issue_tokens(&ids);
    let lines: Vec<String> = ids.iter().zip(&tokens).map(|(id, t)| format!("{id} {t}")).collect();
    let tokens_file = dir.path().join("tokens.txt");
    std::fs::write(&tokens_file, lines.join("\n") + "\n").unwrap();
    Command::new(locus_sim())
        .args(["--broker", &server.mqtt.to_string()])
        .args(["--couriers", &couriers.to_string(), "--interval-ms", "500"])
        .args(["--duration-s", &seconds.to_string(), "--batch-max-age-ms", "200", "--no-fsync"])
        .arg("--tokens-file")
        .arg(&tokens_file)
        .arg("--data-dir")
        .arg(dir.path().join("outboxes"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting locus-sim")
}

fn order_event(server: &LocusServer, order: &str, event: Value) {
    let (status, body) =
        server.post(&format!("/v1/orders/{order}/events"), server.admin_token(), &event);
    assert_eq!(status, 200, "{event}: {body}");
}

fn is_shown(css: &str) -> String {
    format!("(e => e !== null && !e.hidden && e.offsetParent !== null)(document.querySelector('{css}'))")
}

/// Errors the page logged that a user would not have expected: anything but the refusals the
/// test provoked (a wrong token) and the unreachable tile server.
fn unexpected_errors(browser: &Browser) -> Vec<String> {
    browser
        .console()
        .into_iter()
        .filter(|line| line.contains("SEVERE"))
        .filter(|line| !line.contains("127.0.0.1:1/") && !line.contains("401"))
        .collect()
}

#[test]
fn operators_sign_in_watch_couriers_move_open_a_track_and_act_on_dead_letters() {
    let server = LocusServer::start_with(false, Some(CONFIG));
    let sim_dir = tempfile::tempdir().unwrap();
    let mut sim = simulate(&server, 12, 40, &sim_dir);
    let browser = Browser::start(1280, 800).expect("headless Chromium");
    browser.goto(&server.url("/"));
    browser.wait_for("the login form", &is_shown("#login"), PATIENCE);

    // A wrong token is refused and kept nowhere.
    browser.type_into("#login-token", "not-a-token");
    browser.click("#login-submit");
    browser.wait_for("the refusal", "document.getElementById('login-error').textContent", PATIENCE);
    assert_eq!(browser.run("return sessionStorage.getItem('locus.token')", json!([])), Value::Null);

    // The admin token opens the console; it lives in session storage, never in the URL.
    browser.run("document.getElementById('login-token').value = ''", json!([]));
    browser.type_into("#login-token", server.admin_token());
    browser.click("#login-submit");
    browser.wait_for("the console", &is_shown("#app"), PATIENCE);
    let stored = browser.run("return sessionStorage.getItem('locus.token')", json!([]));
    assert_eq!(stored, server.admin_token());
    let where_ =
        browser.run("return location.href + document.cookie + localStorage.length", json!([]));
    assert!(!where_.as_str().unwrap().contains(server.admin_token()), "{where_}");

    // Every simulated courier appears, and they move (on a plain background: no tiles).
    browser.wait_for("12 markers", "window.locusConsole.markerCount() >= 12", PATIENCE);
    browser.wait_for(
        "the live feed",
        "document.getElementById('live-status').dataset.state === 'live'",
        PATIENCE,
    );
    let first = browser.run("return window.locusConsole.markerLatLng('sim-3')", json!([]));
    assert!(first.is_array(), "{first}");
    let (lat, lon) = (first[0].as_f64().unwrap(), first[1].as_f64().unwrap());
    browser.wait_for(
        "sim-3 moving on the map",
        &format!("(p => p[0] !== {lat:?} || p[1] !== {lon:?})(window.locusConsole.markerLatLng('sim-3'))"),
        PATIENCE,
    );
    browser.wait_for("the no-tiles notice", &is_shown("#tiles-notice"), PATIENCE);
    let colour = browser.run("return window.locusConsole.markerColour('sim-3')", json!([]));
    assert!(["moving", "idle"].contains(&colour.as_str().unwrap()), "{colour}");

    // The map opened on every courier; let it draw before the picture.
    std::fs::create_dir_all(output_dir()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    browser.screenshot(&output_dir().join("console.png"));

    // A click on a courier in the list shows its recent track.
    browser.type_into("#courier-search", "sim-3\n");
    browser.wait_for("sim-3's track", "window.locusConsole.trackPointCount() >= 3", PATIENCE);
    assert!(browser.text("#track-info").contains("sim-3"));

    // An active order with its courier.
    order_event(&server, "o-console", json!({ "event": "placed" }));
    order_event(&server, "o-console", json!({ "event": "assigned", "courier": "sim-3" }));
    browser.click("#tab-orders");
    browser.wait_for(
        "the order",
        "document.querySelector('#orders-table tr[data-order=\"o-console\"]')",
        PATIENCE,
    );
    let row = browser.text("#orders-table tr[data-order=\"o-console\"]");
    assert!(row.contains("assigned") && row.contains("sim-3"), "{row}");
    browser.screenshot(&output_dir().join("console-order.png"));

    // A bad report becomes a dead letter; the console lists it, replays it (refused again:
    // it is not a report), and purges it.
    let token = server.issue_token("bad-1");
    let courier = TestCourier::connect(server.mqtt, "bad-1", Some(&token)).unwrap();
    courier.publish_raw(vec![1, 0xff, 0xff, 0xff]);
    browser.click("#tab-dead-letters");
    browser.click("#dl-apply");
    browser.wait_for("the letter", "document.querySelector('#dl-table tr[data-id]')", PATIENCE);
    browser.click("#dl-table tr[data-id] button.dl-replay");
    browser.wait_for(
        "the replay's outcome",
        "document.querySelector('#dl-result li[data-outcome=\"refused\"]')",
        PATIENCE,
    );
    browser.screenshot(&output_dir().join("console-dead-letters.png"));
    browser.click("#dl-table tr[data-id] button.dl-purge");
    browser.wait_for("the purge", "!document.querySelector('#dl-table tr[data-id]')", PATIENCE);
    assert_eq!(server.get_ok("/v1/dead-letters")["dead_letters"], json!([]));

    // A reader sees the map but not the operations panels.
    browser.click("#logout");
    browser.wait_for("the login form again", &is_shown("#login"), PATIENCE);
    let reader = server.token_command(&["issue", "--role", "reader"]);
    browser.type_into("#login-token", &reader);
    browser.click("#login-submit");
    browser.wait_for("the console", &is_shown("#app"), PATIENCE);
    browser.wait_for("markers for the reader", "window.locusConsole.markerCount() >= 12", PATIENCE);
    assert_eq!(browser.run(&format!("return {}", is_shown("#tab-dead-letters")), json!([])), false);

    let errors = unexpected_errors(&browser);
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    let _ = sim.kill();
    let _ = sim.wait();
}

#[test]
fn a_tracking_link_shows_its_order_and_courier_only_while_the_order_is_active() {
    let server = LocusServer::start_with(false, Some(CONFIG));
    let t0 = now_ms() - 10_000;
    let mut couriers = Vec::new();
    for (id, lon) in [("rider-1", 2.17), ("rider-2", 2.19)] {
        let token = server.issue_token(id);
        let mut courier = TestCourier::connect(server.mqtt, id, Some(&token)).unwrap();
        courier.publish(&report(1, t0, 41.39, lon));
        courier.wait_ack(1);
        couriers.push(courier);
    }
    for (order, courier) in [("o-mine", "rider-1"), ("o-other", "rider-2")] {
        order_event(&server, order, json!({ "event": "placed" }));
        order_event(&server, order, json!({ "event": "assigned", "courier": courier }));
    }
    let (status, issued) =
        server.post("/v1/orders/o-mine/tokens", server.admin_token(), &json!({}));
    assert_eq!(status, 200, "{issued}");
    let token = issued["token"].as_str().unwrap();
    let link = issued["tracking_path"].as_str().unwrap();
    assert_eq!(link, format!("/track/o-mine?token={token}"));

    let browser = Browser::start(390, 844).expect("headless Chromium"); // a phone
    browser.goto(&server.url(link));
    browser.wait_for("the active order", "window.locusTrack.state === 'active'", PATIENCE);
    browser.wait_for("the courier on the map", "window.locusTrack.markerLatLng()", PATIENCE);
    let marker = browser.run("return window.locusTrack.markerLatLng()", json!([]));
    assert!((marker[1].as_f64().unwrap() - 2.17).abs() < 1e-6, "rider-1's position: {marker}");
    assert!(browser.text("#status").to_lowercase().contains("assigned"));
    // Nothing of the other order or courier is on the page.
    let page = browser.run("return document.documentElement.outerHTML", json!([]));
    for other in ["o-other", "rider-2", "rider-1"] {
        assert!(!page.as_str().unwrap().contains(other), "the page mentions {other}");
    }

    // The courier moves; the page follows.
    couriers[0].publish(&report(2, t0 + 1_000, 41.40, 2.171));
    couriers[0].wait_ack(2);
    browser.wait_for(
        "the new position",
        "(p => p && Math.abs(p[1] - 2.171) < 1e-6)(window.locusTrack.markerLatLng())",
        PATIENCE,
    );
    // Let the map finish panning to it before the picture.
    std::thread::sleep(Duration::from_millis(1500));
    browser.screenshot(&output_dir().join("tracking.png"));

    // Delivered: the courier's position is gone, the page says it ended.
    order_event(&server, "o-mine", json!({ "event": "ready" }));
    order_event(&server, "o-mine", json!({ "event": "picked_up" }));
    order_event(&server, "o-mine", json!({ "event": "delivered" }));
    browser.wait_for("the ended order", "window.locusTrack.state === 'ended'", PATIENCE);
    assert_eq!(browser.run("return window.locusTrack.markerLatLng()", json!([])), Value::Null);
    assert!(browser.text("#ended").to_lowercase().contains("delivered"));
    browser.screenshot(&output_dir().join("tracking-delivered.png"));
    let (_, api) = server.get("/v1/orders/o-mine/tracking");
    assert_eq!(api["location"], Value::Null, "the API gives no position after the end: {api}");

    // A wrong token, or this order's token on another order: refused, nothing shown.
    for url in ["/track/o-mine?token=forged".to_owned(), format!("/track/o-other?token={token}")] {
        browser.goto(&server.url(&url));
        browser.wait_for("the refusal", "window.locusTrack.state === 'invalid'", PATIENCE);
        assert_eq!(browser.run("return window.locusTrack.markerLatLng()", json!([])), Value::Null);
        assert!(browser.text("#invalid").contains("not valid"));
    }
    let errors = unexpected_errors(&browser);
    // The other order's refusal is a 403, which the page explains as an invalid link.
    let errors: Vec<_> = errors.into_iter().filter(|e| !e.contains("403")).collect();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
}

#[test]
fn the_live_feed_sends_every_position_then_what_moved_and_ends_when_the_server_stops() {
    use std::io::{BufRead as _, BufReader};
    let mut server = LocusServer::start_with(false, Some(CONFIG));
    let token = server.issue_token("live-1");
    let mut courier = TestCourier::connect(server.mqtt, "live-1", Some(&token)).unwrap();
    let t0 = now_ms() - 5_000;
    courier.publish(&report(1, t0, 41.39, 2.17));
    courier.wait_ack(1);

    let client = reqwest::blocking::Client::builder().timeout(None).build().unwrap();
    let feed = client.get(server.url("/v1/live")).bearer_auth(server.admin_token()).send().unwrap();
    assert_eq!(feed.status(), 200);
    assert_eq!(feed.headers()["content-type"], "text/event-stream");
    let mut lines = BufReader::new(feed).lines();
    // The next event's name and data.
    let mut next_event = || {
        let mut name = String::new();
        for line in lines.by_ref() {
            let line = line.expect("a line of the feed");
            if let Some(event) = line.strip_prefix("event: ") {
                name = event.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                return Some((name.clone(), serde_json::from_str::<Value>(data).unwrap()));
            }
        }
        None
    };
    let (name, snapshot) = next_event().expect("the snapshot");
    assert_eq!(name, "snapshot");
    assert_eq!(snapshot["couriers"][0]["courier"], "live-1");
    assert_eq!(snapshot["couriers"][0]["ts"], t0);

    // An older fix (backfill) moves nothing; a newer one is the next event.
    courier.publish(&report(2, t0 - 1_000, 41.0, 2.0));
    courier.publish(&report(3, t0 + 1_000, 41.391, 2.171));
    courier.wait_ack(3);
    let (name, moved) = next_event().expect("what moved");
    assert_eq!(name, "positions");
    assert_eq!(moved["couriers"].as_array().unwrap().len(), 1, "{moved}");
    assert_eq!(moved["couriers"][0]["ts"], t0 + 1_000, "{moved}");

    // A server stopping ends its feeds: it exits 0 with a follower connected.
    assert!(server.stop(), "locusd stops cleanly while the feed is open");
    assert!(next_event().is_none(), "the feed ended");
}
