//! Orders over the HTTP API against a real locusd: the lifecycle, refusals that name the
//! current status, resent event ids, who may send events, and the lifecycle surviving kill -9.

use locus_tests::LocusServer;
use serde_json::{json, Value};

/// POSTs an order event with `token`; the status and the JSON body.
fn post_event(server: &LocusServer, token: &str, order: &str, body: Value) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(server.url(&format!("/v1/orders/{order}/events")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .expect("POST order event");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn an_order_goes_through_its_lifecycle_over_http_and_survives_kill_9() {
    let mut server = LocusServer::start();
    let merchant = server.token_command(&["issue", "--role", "merchant", "bakery"]);
    let event = |server: &LocusServer, body: Value| post_event(server, &merchant, "o1", body);

    let details = r#"{"items":["cake"],"address":"Carrer 1","z":1,"a":2}"#;
    let placed = json!({
        "event": "placed",
        "event_id": "p1",
        "at_ms": 1_000,
        "details": serde_json::from_str::<Value>(details).unwrap(),
    });
    let (status, body) = event(&server, placed.clone());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], true);
    assert_eq!(body["order"]["status"], "placed");
    assert_eq!(body["order"]["timeline"][0]["actor"], "merchant:bakery");

    // Assigned before the maker is done: allowed, but no pickup yet.
    let (status, body) = event(&server, json!({"event": "assigned", "courier": "c1"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["order"]["courier"], "c1");
    let generated = body["event_id"].as_str().expect("an event id is given").to_owned();
    assert_eq!(generated.len(), 32);
    let (status, body) = event(&server, json!({"event": "picked_up", "event_id": "u1"}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        "cannot apply `picked_up` to order o1: it is assigned; the maker has not made it yet"
    );

    // A resent event id is answered again and changes nothing.
    let (status, body) = event(&server, placed);
    assert_eq!((status, &body["applied"]), (200, &json!(false)), "{body}");
    assert_eq!(body["order"]["status"], "assigned");

    for (id, kind) in [("r1", "ready"), ("u1", "picked_up"), ("d1", "delivered")] {
        let (status, body) = event(&server, json!({"event": kind, "event_id": id}));
        assert_eq!(status, 200, "{kind}: {body}");
    }
    let (status, body) = event(&server, json!({"event": "cancelled"}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "cannot apply `cancelled` to order o1: it is delivered");

    // Bad input names what is wrong.
    let (status, body) = event(&server, json!({"event": "eaten"}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("unknown variant `eaten`"), "{body}");
    let (status, body) = event(&server, json!({"event": "ready", "courier": "c1"}));
    assert_eq!(status, 400, "{body}");
    let (status, body) = event(&server, json!({"event": "ready", "event_id": "a/b"}));
    assert_eq!((status, &body["error"]), (400, &json!("invalid event id \"a/b\"")), "{body}");
    let (status, body) = event(&server, json!({"event": "ready", "colour": "red"}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("unknown field `colour`"), "{body}");
    let not_json = reqwest::blocking::Client::new()
        .post(server.url("/v1/orders/o1/events"))
        .bearer_auth(&merchant)
        .body("placed, please")
        .send()
        .expect("POST");
    assert_eq!(not_json.status().as_u16(), 400);
    let (status, body) = server.get("/v1/orders?state=eaten");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("invalid state \"eaten\""), "{body}");
    let (status, body) = post_event(&server, &merchant, "o2", json!({"event": "ready"}));
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "order o2 does not exist: it must be `placed` before `ready`");
    // Readers read orders; only merchants and operators move them.
    let reader = server.token_command(&["issue", "--role", "reader"]);
    let (status, _) = post_event(&server, &reader, "o1", json!({"event": "feedback"}));
    assert_eq!(status, 403);

    let (status, body) = post_event(&server, &merchant, "o3", json!({"event": "placed"}));
    assert_eq!(status, 200, "{body}");
    let active = server.get_ok("/v1/orders?state=active");
    let ids: Vec<&str> =
        active["orders"].as_array().unwrap().iter().map(|o| o["order"].as_str().unwrap()).collect();
    assert_eq!(ids, ["o3"]);
    let of_c1 = server.get_ok("/v1/orders?courier=c1");
    assert_eq!(of_c1["orders"][0]["status"], "delivered");

    // Answered means durable: kill -9 right after the last answer.
    server.kill9();
    server.restart();
    let order = server.get_ok("/v1/orders/o1");
    assert_eq!(order["status"], "delivered");
    let events: Vec<&str> = order["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["placed", "assigned", "ready", "picked_up", "delivered"]);
    assert_eq!(order["timeline"][0]["at_ms"], 1_000);
    assert_eq!(order["timeline"][1]["event_id"], generated.as_str());
    assert_eq!(
        order["timeline"][0]["details"],
        serde_json::from_str::<Value>(details).unwrap(),
        "details are kept"
    );
    let (status, body) = event(&server, json!({"event": "feedback", "details": "lovely"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get_ok("/v1/orders/o3")["status"], "placed");
}

#[test]
fn a_merchant_reaches_only_the_orders_it_placed() {
    let server = LocusServer::start();
    let bakery = server.token_command(&["issue", "--role", "merchant", "bakery"]);
    let florist = server.token_command(&["issue", "--role", "merchant", "florist"]);
    let reader = server.token_command(&["issue", "--role", "reader"]);
    let placed = json!({"event": "placed", "details": {"address": "Carrer 1"}});
    assert_eq!(post_event(&server, &bakery, "cake-1", placed.clone()).0, 200);
    assert_eq!(post_event(&server, &florist, "rose-1", placed.clone()).0, 200);
    let get = |token: &str, path: &str| {
        let response = reqwest::blocking::Client::new()
            .get(server.url(path))
            .bearer_auth(token)
            .send()
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json::<Value>().unwrap_or(Value::Null))
    };

    // Its own order, as before.
    let (status, body) = get(&bakery, "/v1/orders/cake-1");
    assert_eq!((status, &body["status"]), (200, &json!("placed")), "{body}");
    // Another merchant's order does not exist for it: not readable, not movable, no tokens,
    // not even re-placeable, and it is not listed.
    for path in ["/v1/orders/rose-1", "/v1/orders/rose-1/location"] {
        let (status, body) = get(&bakery, path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.to_string().contains("Carrer"), "{path}: {body}");
    }
    for event in [json!({"event": "ready"}), json!({"event": "cancelled"}), placed] {
        let (status, body) = post_event(&server, &bakery, "rose-1", event.clone());
        assert_eq!(status, 404, "{event}: {body}");
    }
    let (status, _) = server.post("/v1/orders/rose-1/tokens", &bakery, &json!({}));
    assert_eq!(status, 404);
    let listed = |token: &str| -> Vec<String> {
        let (status, body) = get(token, "/v1/orders");
        assert_eq!(status, 200, "{body}");
        let orders = body["orders"].as_array().expect("orders").iter();
        orders.map(|o| o["order"].as_str().expect("id").to_owned()).collect()
    };
    assert_eq!(listed(&bakery), ["cake-1"]);
    assert_eq!(listed(&florist), ["rose-1"]);
    // Operators and readers see every order; the florist's order is untouched.
    assert_eq!(listed(&reader), ["cake-1", "rose-1"]);
    assert_eq!(server.get_ok("/v1/orders/rose-1")["status"], "placed");
    assert_eq!(server.get_ok("/v1/orders/rose-1")["timeline"].as_array().unwrap().len(), 1);
}
