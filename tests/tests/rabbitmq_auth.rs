//! locusd's policy enforced by a real RabbitMQ (Debian's rabbitmq-server 3.10, MQTT plugin,
//! HTTP auth backend pointed at locusd's `/rabbitmq/auth/...`), with real MQTT clients
//! (`mosquitto_pub`, `mosquitto_sub`): a courier publishes its own locations and subscribes to
//! its own acks, and nothing of another courier's; a forged token or another courier's name
//! cannot connect; nobody writes acks. One RabbitMQ node for the whole file: it takes 10-15 s
//! to start (`scripts/rabbitmq-node.sh`).

use locus_tests::rabbitmq::RabbitNode;
use locus_tests::{wait_for, LocusServer};
use std::process::{Command, Output};

/// `mosquitto_pub` of one QoS 1 message as `user`/`client` with `token` on the node.
fn publish(node: &RabbitNode, client: &str, user: &str, token: &str, topic: &str) -> Output {
    Command::new("timeout")
        .args(["30", "mosquitto_pub", "-h", "127.0.0.1", "-p", &node.mqtt_port.to_string()])
        .args(["-V", "mqttv311", "-i", client, "-u", user, "-P", token, "-q", "1"])
        .args(["-t", topic, "-m", "x"])
        .output()
        .expect("mosquitto_pub is installed (scripts/test.sh)")
}

/// `mosquitto_sub` to `filter` for at most 5 s, one message at most.
fn subscribe(node: &RabbitNode, client: &str, token: &str, filter: &str) -> Output {
    Command::new("timeout")
        .args(["30", "mosquitto_sub", "-h", "127.0.0.1", "-p", &node.mqtt_port.to_string()])
        .args(["-V", "mqttv311", "-i", client, "-u", client, "-P", token, "-q", "1"])
        .args(["-t", filter, "-C", "1", "-W", "5"])
        .output()
        .expect("mosquitto_sub is installed (scripts/test.sh)")
}

#[test]
fn rabbitmq_enforces_the_same_policy_as_the_embedded_broker() {
    let server = LocusServer::start_with(false, Some("[http]\nrabbitmq_auth_backend = true\n"));
    let node = RabbitNode::start(&format!("http://{}/rabbitmq/auth", server.http), &[]);
    let (c1, c2) = (server.issue_token("c1"), server.issue_token("c2"));
    let denied =
        |action: &str| server.metric(&format!("locus_mqtt_denied_total{{action=\"{action}\"}}"));

    // Its own locations: PUBACK (mosquitto_pub exits 0 only after it).
    let own = publish(&node, "c1", "c1", &c1, "couriers/c1/locations");
    assert!(own.status.success(), "{own:?}");
    // Another courier's locations, or an ack: the connection is closed, no PUBACK.
    for topic in ["couriers/c2/locations", "couriers/c1/acks", "orders/o1/status"] {
        let refused = publish(&node, "c1", "c1", &c1, topic);
        assert!(!refused.status.success(), "{topic}: {refused:?}");
    }
    assert_eq!(denied("publish"), 3.0);

    // Subscriptions: its own acks are granted (nothing arrives: -W times out); another
    // courier's, or a wildcard, are refused (RabbitMQ closes the connection).
    let own = subscribe(&node, "c1", &c1, "couriers/c1/acks");
    assert!(own.stdout.is_empty(), "{own:?}");
    for filter in ["couriers/c2/acks", "couriers/+/acks"] {
        let before = denied("subscribe");
        let refused = subscribe(&node, "c1", &c1, filter);
        assert!(refused.stdout.is_empty(), "{filter}: {refused:?}");
        wait_for(&format!("{filter} to be refused"), || {
            (denied("subscribe") > before).then_some(())
        });
    }

    // Credentials: a forged token, another courier's token, a name that is not the client id.
    let refused_before = server.metric("locus_mqtt_auth_refused_total");
    for (client, user, token) in
        [("c1", "c1", "forged"), ("c1", "c1", c2.as_str()), ("c2", "c1", c1.as_str())]
    {
        let refused = publish(&node, client, user, token, &format!("couriers/{client}/locations"));
        assert!(!refused.status.success(), "{client}/{user}: {refused:?}");
    }
    assert_eq!(server.metric("locus_mqtt_auth_refused_total") - refused_before, 3.0);
    // And c2 with its own token is fine.
    assert!(publish(&node, "c2", "c2", &c2, "couriers/c2/locations").status.success());

    // Malformed questions get a clear 4xx, never an `allow`, and the server goes on.
    let http = reqwest::blocking::Client::new();
    for (path, body) in [
        ("user", "password=x"),
        ("topic", "username=c1&vhost=%2F"),
        ("resource", "%%%"),
        ("vhost", ""),
    ] {
        let response = http
            .post(server.url(&format!("/rabbitmq/auth/{path}")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .expect("POST");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        assert!((400..500).contains(&status), "{path} {body:?}: {status} {text}");
        assert!(!text.contains("allow"), "{path}: {text}");
    }
    assert!(publish(&node, "c2", "c2", &c2, "couriers/c2/locations").status.success());
}

#[test]
fn the_auth_backend_routes_are_off_unless_configured() {
    let server = LocusServer::start();
    let response = reqwest::blocking::Client::new()
        .post(server.url("/rabbitmq/auth/user"))
        .form(&[("username", "c1"), ("password", "x"), ("client_id", "c1")])
        .send()
        .expect("POST");
    assert_eq!(response.status().as_u16(), 404);
}
