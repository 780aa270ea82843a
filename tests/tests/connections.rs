//! The embedded broker under a fleet's connections, with real MQTT clients (rumqttc) against a
//! real locusd with token checks on: thousands of CONNECTs at once are all accepted, and the
//! connection gauge and counters say what happened.
//!
//! How fast a storm is accepted is a benchmark figure (`locusd bench --couriers 10000`, see the
//! README), not asserted here.

use locus_tests::{wait_for, LocusServer};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet};
use std::net::SocketAddr;
use std::time::Duration;

const FLEET: usize = 2_000;

/// Connects `courier` and waits for its CONNACK; the connection stays open while the returned
/// pair lives (nothing polls it afterwards, well within its keep-alive).
async fn connect(
    mqtt: SocketAddr,
    courier: String,
    token: String,
) -> Result<(AsyncClient, EventLoop), String> {
    let mut options = MqttOptions::new(courier.clone(), mqtt.ip().to_string(), mqtt.port());
    options.set_keep_alive(Duration::from_secs(120)).set_credentials(courier, token);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let mut network = eventloop.network_options();
    network.set_connection_timeout(60);
    eventloop.set_network_options(network);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                return Ok((client, eventloop))
            }
            Ok(Event::Incoming(other)) => return Err(format!("expected CONNACK, got {other:?}")),
            Ok(Event::Outgoing(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Sends DISCONNECT and lets the event loop write it.
async fn disconnect((client, mut eventloop): (AsyncClient, EventLoop)) {
    client.disconnect().await.expect("queue DISCONNECT");
    while let Ok(event) = eventloop.poll().await {
        if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
}

#[test]
fn a_fleet_connecting_at_once_is_accepted_and_counted_until_it_leaves() {
    let server = LocusServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    let ids: Vec<String> = (0..FLEET).map(|i| format!("fleet-{i}")).collect();
    let tokens = server.issue_tokens(&ids);

    // Every CONNECT at once: the default `[mqtt]` limits (a connection burst of 10,000) let a
    // fleet of this size in without refusing anyone.
    let mqtt = server.mqtt;
    let mut connections = runtime.block_on(async {
        let attempts: Vec<_> = ids
            .iter()
            .zip(&tokens)
            .map(|(id, token)| tokio::spawn(connect(mqtt, id.clone(), token.clone())))
            .collect();
        let mut connections = Vec::new();
        for (id, attempt) in ids.iter().zip(attempts) {
            match attempt.await.expect("connect task") {
                Ok(connection) => connections.push(connection),
                Err(e) => panic!("{id} did not connect: {e}"),
            }
        }
        connections
    });
    let gauge = || server.metric("locus_mqtt_connected_clients");
    wait_for("the gauge to count the fleet", || (gauge() == FLEET as f64).then_some(()));
    assert_eq!(server.metric("locus_mqtt_connections_total"), FLEET as f64);
    assert_eq!(server.metric("locus_mqtt_connection_rate_refused_total"), 0.0);

    // A wrong token is refused and counted, and changes neither gauge nor connections.
    let refused = runtime.block_on(connect(mqtt, "fleet-0-impostor".into(), tokens[0].clone()));
    assert!(refused.is_err(), "a wrong token was accepted");
    assert_eq!(server.metric("locus_mqtt_auth_refused_total"), 1.0);

    // A quarter say goodbye, a quarter just vanish (their sockets close).
    let mut polite: Vec<_> = connections.drain(..FLEET / 2).collect();
    let vanishing = polite.split_off(FLEET / 4);
    // Sockets are tokio's: closed inside its runtime.
    let _in_runtime = runtime.enter();
    runtime.block_on(async {
        for connection in polite {
            disconnect(connection).await;
        }
    });
    drop(vanishing);
    wait_for("the gauge to drop by half", || (gauge() == (FLEET / 2) as f64).then_some(()));
    let disconnections = |reason: &str| {
        server.metric(&format!("locus_mqtt_disconnections_total{{reason=\"{reason}\"}}"))
    };
    assert_eq!(disconnections("client_disconnect"), (FLEET / 4) as f64);
    assert_eq!(disconnections("connection_closed"), (FLEET / 4) as f64);

    drop(connections);
    wait_for("the gauge to reach 0", || (gauge() == 0.0).then_some(()));
    assert_eq!(server.metric("locus_mqtt_connections_total"), FLEET as f64);
}
