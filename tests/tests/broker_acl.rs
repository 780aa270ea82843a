//! The vendored rumqttd's patches (vendor/rumqttd/PATCHES.md), driven through a real embedded
//! broker on free loopback ports with real MQTT 3.1.1 and MQTT 5 clients (rumqttc) over TCP:
//! the topic ACL hook (publish, subscribe, will), MQTT 5 -> 3.1.1 forwarding with properties,
//! the v5 DISCONNECT encoding, connection events, the publish-rate throttle and the
//! connection-rate limit. Nothing here is mocked; the ACL policy is a test policy, not locusd's.

use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as V5ConnectReturnCode, DisconnectReasonCode as V5DisconnectReasonCode,
    Packet as V5Packet, PublishProperties, SubscribeReasonCode as V5SubscribeReasonCode,
};
use rumqttc::v5::{
    ConnectionError as V5ConnectionError, Event as V5Event, StateError as V5StateError,
};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, Incoming, LastWill, MqttOptions,
    Outgoing, QoS, SubscribeFilter, SubscribeReasonCode,
};
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, Protocol};
use rumqttd::{
    AclAction, Broker, ClientIdentity, Config, ConnectionEvent, ConnectionSettings,
    DisconnectReason, ListenerEvent, PublishRate, RouterConfig, ServerSettings,
};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a test waits for something that should happen (not a speed assertion).
const PATIENCE: Duration = Duration::from_secs(15);

/// The client the test policy distrusts: it may not publish, subscribe or set a will under
/// `secret/`. Everyone else may do anything.
const EVIL: &str = "evil";

type Events = Arc<Mutex<Vec<(String, ConnectionEvent)>>>;

/// A real rumqttd (the vendored one) with an MQTT 3.1.1 and an MQTT 5 listener.
struct TestBroker {
    v4: SocketAddr,
    v5: SocketAddr,
    /// Every ConnectionEvent, with the client id it came from.
    events: Events,
    listener_events: Arc<Mutex<Vec<ListenerEvent>>>,
}

fn free_addr() -> SocketAddr {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn test_policy(who: &ClientIdentity, action: &AclAction<'_>) -> bool {
    if who.client_id != EVIL {
        return true;
    }
    match action {
        AclAction::Publish { topic, .. } | AclAction::Will { topic, .. } => {
            !topic.starts_with("secret/")
        }
        AclAction::Subscribe { filter } => !filter.starts_with("secret/") && *filter != "#",
        _ => false,
    }
}

impl TestBroker {
    fn start(tune: impl Fn(&mut ServerSettings)) -> TestBroker {
        let events: Events = Arc::default();
        let listener_events: Arc<Mutex<Vec<ListenerEvent>>> = Arc::default();
        let mut connections = ConnectionSettings {
            connection_timeout_ms: 5_000,
            max_payload_size: 4096,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
            acl_handler: None,
            event_handler: None,
            max_publish_rate: None,
        };
        connections.set_acl_handler(test_policy);
        let sink = events.clone();
        connections.set_event_handler(move |who: &ClientIdentity, event: ConnectionEvent| {
            sink.lock().unwrap().push((who.client_id.clone(), event));
        });
        let (v4, v5) = (free_addr(), free_addr());
        let server = |name: &str, listen: SocketAddr| {
            let mut settings = ServerSettings {
                name: name.to_owned(),
                listen,
                tls: None,
                next_connection_delay_ms: 0,
                connections: connections.clone(),
                max_connection_rate: None,
                connection_burst: None,
                listener_event_handler: None,
            };
            let sink = listener_events.clone();
            settings.set_listener_event_handler(move |event: &ListenerEvent| {
                sink.lock().unwrap().push(event.clone());
            });
            tune(&mut settings);
            HashMap::from([(name.to_owned(), settings)])
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 100,
                max_outgoing_packet_count: 200,
                max_segment_size: 16 << 20,
                max_segment_count: 4,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some(server("v4", v4)),
            v5: Some(server("v5", v5)),
            ..Default::default()
        };
        let mut broker = Broker::new(config);
        std::thread::spawn(move || {
            if let Err(e) = broker.start() {
                eprintln!("test broker stopped: {e}");
            }
        });
        for addr in [v4, v5] {
            let deadline = std::time::Instant::now() + PATIENCE;
            while TcpStream::connect(addr).is_err() {
                assert!(std::time::Instant::now() < deadline, "broker never listened on {addr}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        TestBroker { v4, v5, events, listener_events }
    }

    fn events_of(&self, client_id: &str) -> Vec<ConnectionEvent> {
        let events = self.events.lock().unwrap();
        events.iter().filter(|(id, _)| id == client_id).map(|(_, e)| e.clone()).collect()
    }

    /// Waits until `client_id` has reported at least `n` events (they are reported by the
    /// connection's task, possibly just after the client saw the effect) and returns them.
    async fn wait_events(&self, client_id: &str, n: usize) -> Vec<ConnectionEvent> {
        let wait = async {
            loop {
                let events = self.events_of(client_id);
                if events.len() >= n {
                    return events;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("{client_id} reported fewer than {n} events"))
    }
}

type V4Events = mpsc::UnboundedReceiver<Result<Event, ConnectionError>>;

/// An MQTT 3.1.1 client whose event loop runs in the background until its first error; every
/// event (or that error) arrives on the receiver. Aborting the task drops the connection
/// without DISCONNECT.
fn spawn_v4(
    addr: SocketAddr,
    id: &str,
    tune: impl FnOnce(&mut MqttOptions),
) -> (AsyncClient, V4Events, tokio::task::JoinHandle<()>) {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    tune(&mut options);
    let (client, mut eventloop) = AsyncClient::new(options, 128);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let failed = event.is_err();
            if tx.send(event).is_err() || failed {
                return;
            }
        }
    });
    (client, rx, task)
}

fn v4_client(
    addr: SocketAddr,
    id: &str,
    tune: impl FnOnce(&mut MqttOptions),
) -> (AsyncClient, V4Events) {
    let (client, rx, _task) = spawn_v4(addr, id, tune);
    (client, rx)
}

/// The MQTT 5 counterpart of [`v4_client`].
fn v5_client(
    addr: SocketAddr,
    id: &str,
) -> (rumqttc::v5::AsyncClient, mpsc::UnboundedReceiver<Result<V5Event, V5ConnectionError>>) {
    let mut options = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 128);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let failed = event.is_err();
            if tx.send(event).is_err() || failed {
                return;
            }
        }
    });
    (client, rx)
}

/// Waits for the first v4 event `pick` accepts; panics on a connection error or after PATIENCE.
async fn next_v4<T>(
    rx: &mut mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            match rx.recv().await {
                Some(Ok(event)) => {
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                }
                Some(Err(e)) => panic!("connection failed while waiting for {what}: {e:?}"),
                None => panic!("event loop gone while waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait).await.unwrap_or_else(|_| panic!("no {what}"))
}

/// Waits until the v4 connection ends; returns every event seen before and the error.
async fn until_v4_error(
    rx: &mut mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
) -> (Vec<Event>, ConnectionError) {
    let wait = async {
        let mut seen = Vec::new();
        loop {
            match rx.recv().await {
                Some(Ok(event)) => seen.push(event),
                Some(Err(e)) => return (seen, e),
                None => panic!("event loop gone without an error"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait).await.expect("the connection was not closed")
}

async fn until_v5_error(
    rx: &mut mpsc::UnboundedReceiver<Result<V5Event, V5ConnectionError>>,
) -> (Vec<V5Event>, V5ConnectionError) {
    let wait = async {
        let mut seen = Vec::new();
        loop {
            match rx.recv().await {
                Some(Ok(event)) => seen.push(event),
                Some(Err(e)) => return (seen, e),
                None => panic!("event loop gone without an error"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait).await.expect("the connection was not closed")
}

fn connack(event: &Event) -> Option<()> {
    matches!(event, Event::Incoming(Incoming::ConnAck(_))).then_some(())
}

fn suback(event: &Event) -> Option<Vec<SubscribeReasonCode>> {
    match event {
        Event::Incoming(Incoming::SubAck(ack)) => Some(ack.return_codes.clone()),
        _ => None,
    }
}

fn publish(event: &Event) -> Option<(String, Vec<u8>)> {
    match event {
        Event::Incoming(Incoming::Publish(p)) => Some((p.topic.clone(), p.payload.to_vec())),
        _ => None,
    }
}

/// A subscriber to `filter` (QoS 1), connected and subscribed.
async fn subscriber(
    addr: SocketAddr,
    id: &str,
    filter: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<Result<Event, ConnectionError>>) {
    let (client, mut rx) = v4_client(addr, id, |_| {});
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let codes = next_v4(&mut rx, "suback", suback).await;
    assert_eq!(codes, [SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    (client, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_publish_is_neither_acknowledged_nor_delivered_nor_retained() {
    let broker = TestBroker::start(|_| {});
    let (_watcher, mut watching) = subscriber(broker.v4, "watcher", "secret/#").await;

    // MQTT 3.1.1, QoS 1, retained: the connection is closed and no PUBACK arrives.
    let (evil, mut evil_rx) = v4_client(broker.v4, EVIL, |_| {});
    next_v4(&mut evil_rx, "connack", connack).await;
    evil.publish("secret/cb/acks", QoS::AtLeastOnce, true, "forged").await.unwrap();
    let (seen, _error) = until_v4_error(&mut evil_rx).await;
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Incoming(Incoming::PubAck(_)))),
        "a denied publish was acknowledged: {seen:?}"
    );

    // MQTT 5, QoS 1 and QoS 2: DISCONNECT 0x87 Not authorized (readable: its length is
    // right), and neither PUBACK nor PUBREC.
    for qos in [rumqttc::v5::mqttbytes::QoS::AtLeastOnce, rumqttc::v5::mqttbytes::QoS::ExactlyOnce]
    {
        let (evil5, mut evil5_rx) = v5_client(broker.v5, EVIL);
        evil5.publish("secret/cb/locations", qos, false, "forged").await.unwrap();
        let (seen, error) = until_v5_error(&mut evil5_rx).await;
        assert!(
            matches!(
                error,
                V5ConnectionError::MqttState(V5StateError::ServerDisconnect {
                    reason_code: V5DisconnectReasonCode::NotAuthorized,
                    ..
                })
            ),
            "expected DISCONNECT 0x87, got {error:?}"
        );
        assert!(
            !seen
                .iter()
                .any(|e| matches!(e, V5Event::Incoming(V5Packet::PubAck(_) | V5Packet::PubRec(_)))),
            "a denied publish was acknowledged: {seen:?}"
        );
    }

    // An allowed publish on the same topic goes through, and is the first the watcher sees.
    let (good, mut good_rx) = v4_client(broker.v4, "good", |_| {});
    good.publish("secret/cb/acks", QoS::AtLeastOnce, false, "real").await.unwrap();
    next_v4(&mut good_rx, "puback", |e| {
        matches!(e, Event::Incoming(Incoming::PubAck(_))).then_some(())
    })
    .await;
    let first = next_v4(&mut watching, "a publish", publish).await;
    assert_eq!(first, ("secret/cb/acks".to_owned(), b"real".to_vec()));

    // The forged retained message was not stored: a new subscriber gets no retained message
    // first, only the next live one.
    let (late, mut late_rx) = v4_client(broker.v4, "late", |_| {});
    late.subscribe("secret/cb/acks", QoS::AtLeastOnce).await.unwrap();
    next_v4(&mut late_rx, "suback", suback).await;
    good.publish("secret/cb/acks", QoS::AtLeastOnce, false, "marker").await.unwrap();
    let first = next_v4(&mut late_rx, "a publish", publish).await;
    assert_eq!(first, ("secret/cb/acks".to_owned(), b"marker".to_vec()));

    // Three connections, each closed by the broker.
    let closed = ConnectionEvent::Disconnected { reason: DisconnectReason::ClosedByBroker };
    let events = broker.wait_events(EVIL, 6).await;
    assert_eq!(events.iter().filter(|e| **e == closed).count(), 3, "{events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_subscribe_filter_gets_failure_while_the_others_are_granted() {
    let broker = TestBroker::start(|_| {});

    let (evil, mut evil_rx) = v4_client(broker.v4, EVIL, |_| {});
    evil.subscribe_many([
        SubscribeFilter::new("secret/cb/acks".into(), QoS::AtLeastOnce),
        SubscribeFilter::new("public/#".into(), QoS::AtLeastOnce),
    ])
    .await
    .unwrap();
    let codes = next_v4(&mut evil_rx, "suback", suback).await;
    assert_eq!(
        codes,
        [SubscribeReasonCode::Failure, SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    // The denied filter delivers nothing: after a publish on each, the first message the
    // client gets is the public one.
    let (good, mut good_rx) = v4_client(broker.v4, "good", |_| {});
    next_v4(&mut good_rx, "connack", connack).await;
    good.publish("secret/cb/acks", QoS::AtLeastOnce, false, "private").await.unwrap();
    good.publish("public/news", QoS::AtLeastOnce, false, "hello").await.unwrap();
    let first = next_v4(&mut evil_rx, "a publish", publish).await;
    assert_eq!(first, ("public/news".to_owned(), b"hello".to_vec()));

    // MQTT 5: the same refusal (0x80 reads as "unspecified error" there).
    let (evil5, mut evil5_rx) = v5_client(broker.v5, EVIL);
    evil5.subscribe("#", rumqttc::v5::mqttbytes::QoS::AtMostOnce).await.unwrap();
    let codes = tokio::time::timeout(PATIENCE, async {
        loop {
            match evil5_rx.recv().await {
                Some(Ok(V5Event::Incoming(V5Packet::SubAck(ack)))) => return ack.return_codes,
                Some(Ok(_)) => {}
                other => panic!("no SUBACK: {other:?}"),
            }
        }
    })
    .await
    .expect("no SUBACK");
    assert_eq!(codes, [V5SubscribeReasonCode::Unspecified]);
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_will_refuses_the_connection_and_an_allowed_will_still_fires() {
    let broker = TestBroker::start(|_| {});
    let (_watcher, mut watching) = subscriber(broker.v4, "watcher", "#").await;

    let (_evil, mut evil_rx) = v4_client(broker.v4, EVIL, |o| {
        o.set_last_will(LastWill::new("secret/cb/acks", "forged", QoS::AtLeastOnce, true));
    });
    let (_, error) = until_v4_error(&mut evil_rx).await;
    assert!(
        matches!(error, ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)),
        "expected CONNACK not authorized, got {error:?}"
    );

    // Control: an allowed will is stored and published when its client vanishes.
    let (_ok, mut ok_rx, ok_task) = spawn_v4(broker.v4, EVIL, |o| {
        o.set_last_will(LastWill::new("public/gone", "bye", QoS::AtLeastOnce, false));
    });
    next_v4(&mut ok_rx, "connack", connack).await;
    ok_task.abort(); // drops the socket without DISCONNECT
    let will = next_v4(&mut watching, "the will", publish).await;
    assert_eq!(will, ("public/gone".to_owned(), b"bye".to_vec()));
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt5_publish_with_properties_reaches_an_mqtt311_subscriber() {
    let broker = TestBroker::start(|_| {});
    let (_subscriber, mut subscribed) = subscriber(broker.v4, "old-device", "couriers/#").await;

    let (publisher, _publisher_rx) = v5_client(broker.v5, "new-device");
    let properties = PublishProperties {
        content_type: Some("application/octet-stream".into()),
        user_properties: vec![("trace".into(), "42".into())],
        message_expiry_interval: Some(60),
        ..Default::default()
    };
    publisher
        .publish_with_properties(
            "couriers/c1/locations",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "report",
            properties,
        )
        .await
        .unwrap();

    let got = next_v4(&mut subscribed, "the forwarded publish", publish).await;
    assert_eq!(got, ("couriers/c1/locations".to_owned(), b"report".to_vec()));
    // And the subscriber's connection is still alive: it gets the next one too.
    publisher
        .publish("couriers/c1/locations", rumqttc::v5::mqttbytes::QoS::AtMostOnce, false, "2")
        .await
        .unwrap();
    let got = next_v4(&mut subscribed, "the next publish", publish).await;
    assert_eq!(got.1, b"2");
}

#[test]
fn v5_disconnect_with_a_reason_encodes_its_true_length() {
    let mut buffer = bytes::BytesMut::new();
    let disconnect = Disconnect { reason_code: DisconnectReasonCode::NotAuthorized };
    let written = V5.write(Packet::Disconnect(disconnect, None), &mut buffer).unwrap();
    assert_eq!(&buffer[..], &[0xE0, 0x02, 0x87, 0x00]);
    assert_eq!(written, buffer.len());
    match V5.read_mut(&mut buffer, 1024).unwrap() {
        Packet::Disconnect(d, None) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::NotAuthorized)
        }
        other => panic!("read back {other:?}"),
    }
    assert!(buffer.is_empty(), "bytes left over after the packet: {buffer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_events_report_connects_disconnects_and_oversized_packets() {
    let broker = TestBroker::start(|_| {});

    let (client, mut rx) = v4_client(broker.v4, "polite", |_| {});
    next_v4(&mut rx, "connack", connack).await;
    client.disconnect().await.unwrap();
    let _ = until_v4_error(&mut rx).await;

    let (client, mut rx) = v4_client(broker.v4, "bulky", |_| {});
    next_v4(&mut rx, "connack", connack).await;
    client.publish("public/big", QoS::AtLeastOnce, false, vec![7u8; 6000]).await.unwrap();
    let _ = until_v4_error(&mut rx).await;

    assert_eq!(
        broker.wait_events("polite", 2).await,
        [
            ConnectionEvent::Connected,
            ConnectionEvent::Disconnected { reason: DisconnectReason::ClientDisconnect }
        ]
    );
    let bulky = broker.wait_events("bulky", 3).await;
    assert_eq!(bulky[0], ConnectionEvent::Connected);
    assert!(
        matches!(bulky[1], ConnectionEvent::PacketTooLarge { size, max: 4096 } if size > 6000),
        "{bulky:?}"
    );
    assert_eq!(
        bulky[2],
        ConnectionEvent::Disconnected { reason: DisconnectReason::PacketTooLarge }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_throttle_slows_a_flooding_client_while_another_gets_through() {
    const FLOOD: usize = 60;
    let broker = TestBroker::start(|s| {
        s.connections.max_publish_rate = Some(PublishRate { per_second: 20, burst: 5 });
    });
    let (_watcher, mut watching) = subscriber(broker.v4, "watcher", "public/#").await;
    let (calm, mut calm_rx) = v4_client(broker.v4, "calm", |_| {});
    next_v4(&mut calm_rx, "connack", connack).await;

    let (flooder, mut flood_rx) = v4_client(broker.v4, "flooder", |_| {});
    next_v4(&mut flood_rx, "connack", connack).await;
    for i in 0..FLOOD {
        flooder.publish("public/flood", QoS::AtMostOnce, false, i.to_string()).await.unwrap();
    }
    // Every flood message has left the flooder (the broker is what holds them back).
    let mut sent = 0;
    next_v4(&mut flood_rx, "the whole flood sent", |e| {
        if matches!(e, Event::Outgoing(Outgoing::Publish(_))) {
            sent += 1;
        }
        (sent == FLOOD).then_some(())
    })
    .await;

    calm.publish("public/calm", QoS::AtMostOnce, false, "hi").await.unwrap();
    let mut flood_before_calm = 0;
    next_v4(&mut watching, "the calm client's message", |e| match publish(e) {
        Some((topic, _)) if topic == "public/calm" => Some(()),
        Some(_) => {
            flood_before_calm += 1;
            None
        }
        None => None,
    })
    .await;
    assert!(
        flood_before_calm < FLOOD,
        "the calm client's message waited for the whole flood ({flood_before_calm})"
    );

    // Throttled, not dropped or disconnected: the rest of the flood arrives, in order.
    let mut flood_after_calm = 0;
    next_v4(&mut watching, "the end of the flood", |e| {
        if publish(e).is_some() {
            flood_after_calm += 1;
        }
        (flood_before_calm + flood_after_calm == FLOOD).then_some(())
    })
    .await;
    assert_eq!(
        broker.events_of("flooder"),
        [ConnectionEvent::Connected, ConnectionEvent::PublishThrottled]
    );
    assert_eq!(broker.events_of("calm"), [ConnectionEvent::Connected]);
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_rate_limit_answers_connack_refused() {
    let broker = TestBroker::start(|s| s.max_connection_rate = Some(1));

    // One connection per second (burst 1): of several quick attempts, at least one is over
    // the rate, and gets a refusal, not a timeout. (TestBroker::start's readiness probes
    // count as connections too, so which attempt is refused is not fixed.)
    let mut refused_v4 = false;
    for i in 0..5 {
        let (_c, mut rx) = v4_client(broker.v4, &format!("next-{i}"), |_| {});
        match rx.recv().await.expect("an event") {
            Err(ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(code, ConnectReturnCode::ServiceUnavailable);
                refused_v4 = true;
                break;
            }
            Ok(Event::Incoming(Incoming::ConnAck(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused_v4, "no MQTT 3.1.1 connection was refused for the rate");

    let mut refused_v5 = false;
    for i in 0..6 {
        let (_c, mut rx) = v5_client(broker.v5, &format!("next5-{i}"));
        match rx.recv().await.expect("an event") {
            Err(V5ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(code, V5ConnectReturnCode::ConnectionRateExceeded);
                refused_v5 = true;
                break;
            }
            Ok(V5Event::Incoming(V5Packet::ConnAck(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused_v5, "no MQTT 5 connection was refused for the rate");

    let refusals = broker.listener_events.lock().unwrap().clone();
    assert!(refusals.iter().any(
        |e| matches!(e, ListenerEvent::ConnectionRateExceeded { listener, .. } if listener == "v4")
    ));
    assert!(refusals.iter().any(
        |e| matches!(e, ListenerEvent::ConnectionRateExceeded { listener, .. } if listener == "v5")
    ));
}
