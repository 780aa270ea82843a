//! Orders over MQTT against a real locusd: a customer follows an order with an order token
//! (`mosquitto_sub`), the assigned courier moves it along on `couriers/{id}/events` (rumqttc),
//! the order's location follows that courier only while the order is active, and what the
//! lifecycle refuses is dead-lettered.

use locus_sdk::wire::{self, CourierEvent, CourierEventKind};
use locus_tests::{now_ms, report, wait_for, LocusServer, TestCourier};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

/// A customer's `mosquitto_sub` on an order's topics: every message, as (topic, payload).
struct Customer {
    child: Child,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Customer {
    /// Subscribes to `order`'s status and location with `token` (client id `order@{order}@…`).
    fn follow(server: &LocusServer, order: &str, token: &str) -> Customer {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &server.mqtt.port().to_string()])
            .args(["-i", &format!("order@{order}@phone"), "-u", order, "-P", token])
            .args([
                "-t",
                &format!("orders/{order}/status"),
                "-t",
                &format!("orders/{order}/location"),
            ])
            // Topic, a tab, the payload; one message per line.
            .args(["-F", "%t\t%p"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub is installed (scripts/test.sh)");
        let stdout = child.stdout.take().expect("stdout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lines = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let (topic, payload) = line.split_once('\t').unwrap_or((&line, ""));
                lines.lock().unwrap().push((topic.to_owned(), payload.to_owned()));
            }
        });
        Customer { child, seen }
    }

    /// The events of the statuses received so far, in order (`ready` while assigned leaves
    /// the status `assigned`, with `ready` true).
    fn events(&self) -> Vec<String> {
        let event = |m: &String| {
            let status: Value = serde_json::from_str(m).expect("status JSON");
            status["event"]["event"].as_str().expect("an event").to_owned()
        };
        self.messages("status").iter().map(event).collect()
    }

    /// Payloads received on the order's `kind` topic (`status` or `location`).
    fn messages(&self, kind: &str) -> Vec<String> {
        let suffix = format!("/{kind}");
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|(t, _)| t.ends_with(&suffix)).map(|(_, p)| p.clone()).collect()
    }
}

impl Drop for Customer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `mosquitto_sub` attempt as `client_id`/`username` on `topic`, for at most 3 s.
fn subscribe_once(
    server: &LocusServer,
    client_id: &str,
    user: &str,
    token: &str,
    topic: &str,
) -> Output {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &server.mqtt.port().to_string()])
        .args(["-i", client_id, "-u", user, "-P", token, "-t", topic, "-C", "1", "-W", "3"])
        .output()
        .expect("mosquitto_sub")
}

fn event(seq: u64, order: &str, kind: CourierEventKind, id: &str) -> CourierEvent {
    CourierEvent {
        seq,
        order: order.to_owned(),
        kind,
        event_id: id.to_owned(),
        at_ms: now_ms(),
        details: None,
    }
}

#[test]
fn a_customer_follows_an_order_that_its_courier_moves_along_over_mqtt() {
    let mut server = LocusServer::start();
    let merchant = server.token_command(&["issue", "--role", "merchant", "bakery"]);
    let post = |server: &LocusServer, order: &str, body: Value| {
        let (status, body) = server.post(&format!("/v1/orders/{order}/events"), &merchant, &body);
        assert_eq!(status, 200, "{body}");
        body
    };
    let placed = json!({"event": "placed", "details": {"items": ["cake"], "address": "Carrer 1"}});
    post(&server, "o1", placed.clone());
    post(&server, "o2", placed);
    // Bad requests for a token name what is wrong.
    let (status, body) = server.post("/v1/orders/o1/tokens", &merchant, &json!({"ttl": 5}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("unknown field `ttl`"), "{body}");
    let (status, body) =
        server.post("/v1/orders/o1/tokens", &merchant, &json!({"expires_in_s": 0}));
    assert_eq!((status, &body["error"]), (400, &json!("expires_in_s must be above 0")));
    let (status, body) = server.post("/v1/orders/nope/tokens", &merchant, &json!({}));
    assert_eq!((status, &body["error"]), (404, &json!("no order nope")));
    let (status, issued) = server.post("/v1/orders/o1/tokens", &merchant, &json!({}));
    assert_eq!(status, 200, "{issued}");
    assert_eq!(issued["mqtt"]["client_id"], "order@o1");
    let token = issued["token"].as_str().expect("a token").to_owned();
    let customer = Customer::follow(&server, "o1", &token);
    wait_for("the retained `placed` status", || (customer.events() == ["placed"]).then_some(()));

    // The token is for o1's topics alone, and only as a customer.
    let other = subscribe_once(&server, "order@o1@x", "o1", &token, "orders/o2/status");
    assert!(other.stdout.is_empty(), "o1's token read o2: {other:?}");
    assert!(String::from_utf8_lossy(&other.stderr).contains("denied"), "{other:?}");
    let as_courier = subscribe_once(&server, "o1", "o1", &token, "orders/o1/status");
    assert!(!as_courier.status.success() && as_courier.stdout.is_empty(), "{as_courier:?}");
    let o2_token = server.token_command(&["order", "o2"]);
    let wrong_user = subscribe_once(&server, "order@o1@x", "o1", &o2_token, "orders/o1/status");
    assert!(wrong_user.stdout.is_empty(), "o2's token read o1: {wrong_user:?}");
    // A client id the broker's router cannot take (`/`) is refused at CONNECT, however often
    // the client retries, and the listener lives on for everyone else.
    for _ in 0..3 {
        let slash = subscribe_once(&server, "order/o1", "o1", &token, "orders/o1/status");
        assert!(!slash.status.success() && slash.stdout.is_empty(), "{slash:?}");
    }

    // Before it is assigned, a fix naming the order does not move it.
    let (c1_token, c2_token) = (server.issue_token("c1"), server.issue_token("c2"));
    let mut c1 = TestCourier::connect(server.mqtt, "c1", Some(&c1_token)).unwrap();
    let mut c2 = TestCourier::connect(server.mqtt, "c2", Some(&c2_token)).unwrap();
    let t0 = now_ms() - 10_000;
    let mut early = report(1, t0, 41.38, 2.17);
    early.fixes[0].details =
        Some(wire::FixDetails { order: Some("o1".into()), ..Default::default() });
    c1.publish(&early);
    c1.wait_ack(1);
    assert_eq!(server.get("/v1/orders/o1/location").0, 404);

    post(&server, "o1", json!({"event": "assigned", "courier": "c1"}));
    post(&server, "o1", json!({"event": "ready"}));
    // Assigned: c1's fixes locate o1 (they need not name it); c2's do not.
    c1.publish(&report(2, t0 + 1_000, 41.39, 2.18));
    c1.wait_ack(2);
    c2.publish(&report(1, t0 + 5_000, 40.0, 1.0));
    c2.wait_ack(1);
    let location = server.get_ok("/v1/orders/o1/location");
    assert_eq!(
        (location["courier"].as_str(), location["ts"].as_u64()),
        (Some("c1"), Some(t0 + 1_000))
    );
    wait_for("o1's location on MQTT", || (!customer.messages("location").is_empty()).then_some(()));
    let published: Value = serde_json::from_str(&customer.messages("location")[0]).unwrap();
    assert_eq!(published["courier"], "c1", "{published}");

    // c2 is not o1's courier: its `picked_up` is dead-lettered, its seq acked all the same.
    c2.publish_event(&event(2, "o1", CourierEventKind::PickedUp, "c2-p"));
    c2.wait_ack(2);
    let letters = server.get_ok("/v1/dead-letters");
    let refused = letters["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["reason"] == "order_event_refused")
        .unwrap_or_else(|| panic!("no order_event_refused letter: {letters}"));
    assert_eq!(refused["courier"], "c2");
    assert_eq!(
        refused["detail"],
        "courier c2 may not send `picked_up` for order o1; it is assigned to c1"
    );
    // Resent (same seq, as after a lost ack): a duplicate, not a second letter.
    c2.publish_event(&event(2, "o1", CourierEventKind::PickedUp, "c2-p"));
    c2.wait_ack(2);
    // Malformed: details that are not JSON. Dead-lettered naming why, its seq consumed.
    let mut malformed = event(3, "o1", CourierEventKind::Delivered, "c2-d");
    malformed.details = Some("{signed by Ana".into());
    c2.publish_event(&malformed);
    c2.wait_ack(3);
    let letters = server.get_ok("/v1/dead-letters");
    let reasons: Vec<&Value> =
        letters["dead_letters"].as_array().unwrap().iter().map(|l| &l["reason"]).collect();
    assert_eq!(reasons, [&json!("order_event_refused"), &json!("bad_event_details")], "{letters}");

    // c1 picks it up and delivers it; the fix between the two still locates it.
    c1.publish_event(&event(3, "o1", CourierEventKind::PickedUp, "c1-p"));
    c1.wait_ack(3);
    c1.publish(&report(4, t0 + 2_000, 41.40, 2.19));
    c1.wait_ack(4);
    c1.publish_event(&event(5, "o1", CourierEventKind::Delivered, "c1-d"));
    c1.wait_ack(5);
    // Delivered: c1's fixes locate o1 no more, even naming it.
    let mut after = report(6, t0 + 3_000, 42.0, 3.0);
    after.fixes[0].details =
        Some(wire::FixDetails { order: Some("o1".into()), ..Default::default() });
    c1.publish(&after);
    c1.wait_ack(6);
    assert_eq!(server.get_ok("/v1/orders/o1/location")["ts"], t0 + 2_000);
    let order = server.get_ok("/v1/orders/o1");
    assert_eq!(order["status"], "delivered");
    assert_eq!(order["timeline"][3]["actor"], "courier:c1");

    wait_for("every status, in order", || {
        (customer.events() == ["placed", "assigned", "ready", "picked_up", "delivered"])
            .then_some(())
    });
    // The order ended: its location is emptied, and the token works no more.
    wait_for("the emptied location", || {
        customer.messages("location").last().is_some_and(|p| p.is_empty()).then_some(())
    });
    let late = subscribe_once(&server, "order@o1@later", "o1", &token, "orders/o1/status");
    assert!(!late.status.success() && late.stdout.is_empty(), "{late:?}");
    let (status, body) = server.post("/v1/orders/o1/tokens", &merchant, &json!({}));
    assert_eq!(status, 409, "{body}");
    drop(customer);

    // Statuses are retained across a kill -9: o2's customer reads `placed` at once.
    server.kill9();
    server.restart();
    let o2 = subscribe_once(&server, "order@o2", "o2", &o2_token, "orders/o2/status");
    assert!(o2.status.success(), "{o2:?}");
    let status: Value = serde_json::from_slice(&o2.stdout).expect("status JSON");
    assert_eq!(status["status"], "placed", "{status}");
    assert_eq!(status["event"]["details"]["items"][0], "cake", "{status}");
    let log = server.log();
    assert!(!log.lines().any(|l| l.contains("ERROR")), "an ERROR in the log:\n{log}");
}

/// The courier SDK end to end: fixes and order events through its outbox to a real locusd, in
/// one seq sequence; a refused event is acked (a dead letter on the server), never resent.
#[test]
fn the_sdk_picks_up_and_delivers_an_order_through_its_outbox() {
    use locus_sdk::client::{Courier, CourierConfig, FixInput, OrderEventInput};
    let server = LocusServer::start();
    let merchant = server.token_command(&["issue", "--role", "merchant", "bakery"]);
    for body in [
        json!({"event": "placed"}),
        json!({"event": "ready"}),
        json!({"event": "assigned", "courier": "sdk-1"}),
    ] {
        let (status, answer) = server.post("/v1/orders/o1/events", &merchant, &body);
        assert_eq!(status, 200, "{answer}");
    }
    let outbox = tempfile::tempdir().unwrap();
    let token = server.issue_token("sdk-1");
    let connect = || {
        let broker = format!("127.0.0.1:{}", server.mqtt.port());
        let config = CourierConfig::new(broker, "sdk-1", Some(token.clone()), outbox.path());
        Courier::connect(config).expect("the SDK connects")
    };
    let courier = connect();
    let t0 = now_ms() - 5_000;
    let fix = |ts: u64, lat: f64| FixInput { ts_ms: Some(ts), ..FixInput::new(lat, 2.17) };
    courier.report(fix(t0, 41.38)).unwrap();
    let picked = courier.send_event(OrderEventInput::picked_up("o1")).unwrap();
    courier.report(fix(t0 + 1_000, 41.39)).unwrap();
    let proof = r#"{"signed_by":"Ana"}"#;
    courier.send_event(OrderEventInput::delivered("o1").with_details(proof)).unwrap();
    // Not this courier's order (nor anyone's): refused by the server, acked all the same.
    courier.send_event(OrderEventInput::delivered("o2")).unwrap();
    courier.report(fix(t0 + 2_000, 41.40)).unwrap();
    courier.flush(locus_tests::PATIENCE).expect("every fix and event acked");
    courier.close();

    let order = server.get_ok("/v1/orders/o1");
    assert_eq!(order["status"], "delivered", "{order}");
    let timeline = order["timeline"].as_array().unwrap();
    assert_eq!(timeline[3]["event_id"], picked.as_str());
    assert_eq!(
        (&timeline[3]["event"], &timeline[3]["actor"]),
        (&json!("picked_up"), &json!("courier:sdk-1"))
    );
    assert_eq!(timeline[4]["details"], json!({"signed_by": "Ana"}));
    // The fix between pickup and delivery located it; the one after did not.
    assert_eq!(server.get_ok("/v1/orders/o1/location")["ts"], t0 + 1_000);
    assert_eq!(server.track_ts("sdk-1"), [t0, t0 + 1_000, t0 + 2_000]);
    let letters = server.get_ok("/v1/dead-letters");
    let reasons: Vec<&Value> =
        letters["dead_letters"].as_array().unwrap().iter().map(|l| &l["reason"]).collect();
    assert_eq!(reasons, [&json!("order_event_refused")], "{letters}");

    // Reopened on its outbox, the SDK has nothing left to send.
    let again = connect();
    again.flush(locus_tests::PATIENCE).unwrap();
    let status = again.status();
    assert_eq!(status.queued_events, 0, "{status:?}");
    again.close();
    assert_eq!(server.get_ok("/v1/dead-letters")["dead_letters"].as_array().unwrap().len(), 1);
}
