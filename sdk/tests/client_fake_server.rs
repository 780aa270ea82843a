//! The courier client against a real MQTT broker (embedded rumqttd) with a minimal stand-in for
//! locusd's pipeline: it commits reports and order events whose seq it has not committed yet,
//! drops the rest as duplicates, and publishes the courier's watermark (every seq up to it
//! committed) as a retained ack, as locusd does (`sdk/WIRE.md`). Reports and events travel on
//! two topics, which the broker does not order against each other, so a seq may arrive after a
//! higher one. The end-to-end tests against the real locusd are in `tests/tests/sdk_e2e.rs`;
//! these check the client's own logic quickly.
#![cfg(feature = "client")]

// The one port picker of every test (outside the ephemeral range; see its module doc).
#[path = "../../tests/src/ports.rs"]
mod ports;

use locus_sdk::client::{ClientError, Courier, CourierConfig, FixInput, OrderEventInput};
use locus_sdk::wire::CourierEvent;
use locus_sdk::{topics, wire};
use rumqttd::local::LinkTx;
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
struct Committed {
    /// Per courier: the watermark (every seq up to it committed) and the seqs committed above
    /// it.
    marks: HashMap<String, u64>,
    above: HashMap<String, BTreeSet<u64>>,
    /// Per courier: every committed fix's timestamp, in commit order.
    fixes: HashMap<String, Vec<u64>>,
    /// Per courier: seqs of committed reports, in commit order.
    seqs: HashMap<String, Vec<u64>>,
    /// Per courier: what each committed seq held, a report's fixes or an event.
    by_seq: HashMap<String, BTreeMap<u64, Committable>>,
    /// Every order event received, duplicates included, in arrival order.
    events_received: Vec<CourierEvent>,
    duplicates: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum Committable {
    Fixes(Vec<u64>),
    Event(CourierEvent),
}

impl Committed {
    /// Takes `seq` for `courier`: `Some(watermark)` to ack after committing it, `None` for a
    /// duplicate (whose ack is the current watermark).
    fn take(&mut self, courier: &str, seq: u64) -> Option<u64> {
        let mark = self.marks.entry(courier.to_owned()).or_default();
        let above = self.above.entry(courier.to_owned()).or_default();
        if seq <= *mark || !above.insert(seq) {
            self.duplicates += 1;
            return None;
        }
        while above.remove(&(*mark + 1)) {
            *mark += 1;
        }
        Some(*mark)
    }

    fn commit(&mut self, courier: &str, seq: u64, what: Committable) -> u64 {
        let Some(mark) = self.take(courier, seq) else {
            return self.marks[courier];
        };
        if let Committable::Fixes(fixes) = &what {
            self.seqs.entry(courier.to_owned()).or_default().push(seq);
            self.fixes.entry(courier.to_owned()).or_default().extend(fixes);
        }
        self.by_seq.entry(courier.to_owned()).or_default().insert(seq, what);
        mark
    }
}

struct FakeServer {
    addr: SocketAddr,
    committed: Arc<Mutex<Committed>>,
    /// While false, reports are committed but no ack is published (an ack lost on the way).
    acking: Arc<AtomicBool>,
    /// While set, publishes are lost on their way (neither committed nor acked), as a broker
    /// that fails over without them would.
    losing: Arc<AtomicBool>,
    tx: Arc<Mutex<LinkTx>>,
}

fn publish_blocking(tx: &mut LinkTx, publish: Publish) {
    // `LinkTx::send` only locks a buffer and sends on a channel: a no-op waker drives it.
    let mut future = std::pin::pin!(tx.send(Packet::Publish(publish, None)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(result) = std::future::Future::poll(future.as_mut(), &mut cx)
        {
            result.expect("publish on the local link");
            return;
        }
        std::thread::yield_now();
    }
}

fn ack(tx: &Mutex<LinkTx>, courier: &str, seq: u64) {
    let publish =
        Publish::new(topics::acks(courier).into_bytes(), wire::encode_ack(wire::Ack { seq }), true);
    publish_blocking(&mut tx.lock().unwrap(), publish);
}

impl FakeServer {
    /// A broker on a free port; with `auth`, only these (username, password) pairs connect.
    fn start(auth: Option<HashMap<String, String>>) -> FakeServer {
        let port = ports::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let connections = ConnectionSettings {
            connection_timeout_ms: 5_000,
            max_payload_size: 1 << 20,
            max_inflight_count: 100,
            auth,
            external_auth: None,
            dynamic_filters: true,
            acl_handler: None,
            event_handler: None,
            max_publish_rate: None,
        };
        let server = ServerSettings {
            name: "v4".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 1,
            connections,
            max_connection_rate: None,
            connection_burst: None,
            listener_event_handler: None,
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
            v4: Some(HashMap::from([("v4".to_owned(), server)])),
            ..Default::default()
        };
        let mut broker = Broker::new(config);
        let (mut tx, mut rx) = broker.link("fake-locusd").unwrap();
        tx.subscribe(topics::ALL_LOCATIONS).unwrap();
        tx.subscribe(topics::ALL_EVENTS).unwrap();
        std::thread::spawn(move || {
            // The broker runs until the test process ends; an error here fails the tests' connects.
            let _ = broker.start();
        });
        let committed = Arc::new(Mutex::new(Committed::default()));
        let acking = Arc::new(AtomicBool::new(true));
        let losing = Arc::new(AtomicBool::new(false));
        let tx = Arc::new(Mutex::new(tx));
        let (c, a, t, l) = (committed.clone(), acking.clone(), tx.clone(), losing.clone());
        std::thread::spawn(move || {
            while let Ok(notification) = rx.recv() {
                let Some(Notification::Forward(forward)) = notification else { continue };
                if l.load(Ordering::SeqCst) {
                    continue;
                }
                let topic = String::from_utf8_lossy(&forward.publish.topic).into_owned();
                let payload = &forward.publish.payload;
                let (courier, seq, what) =
                    if let Some(courier) = topics::courier_of_locations(&topic) {
                        let Ok(report) = wire::decode_report(payload) else { continue };
                        let fixes = report.fixes.iter().map(|f| f.ts_ms).collect();
                        (courier, report.seq, Committable::Fixes(fixes))
                    } else if let Some(courier) = topics::courier_of_events(&topic) {
                        let Ok(event) = wire::decode_event(payload) else { continue };
                        c.lock().unwrap().events_received.push(event.clone());
                        (courier, event.seq, Committable::Event(event))
                    } else {
                        continue;
                    };
                let mark = c.lock().unwrap().commit(courier, seq, what);
                if a.load(Ordering::SeqCst) {
                    ack(&t, courier, mark);
                }
            }
        });
        // Wait until the broker accepts connections.
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        FakeServer { addr, committed, acking, losing, tx }
    }

    /// Pretends an earlier install already got `seq` committed.
    fn set_mark(&self, courier: &str, seq: u64) {
        self.committed.lock().unwrap().marks.insert(courier.to_owned(), seq);
        ack(&self.tx, courier, seq);
    }

    fn fixes(&self, courier: &str) -> Vec<u64> {
        self.committed.lock().unwrap().fixes.get(courier).cloned().unwrap_or_default()
    }

    fn seqs(&self, courier: &str) -> Vec<u64> {
        self.committed.lock().unwrap().seqs.get(courier).cloned().unwrap_or_default()
    }

    /// What the courier's committed seqs hold, in seq order: every fix's timestamp, and an
    /// event as its kind and id.
    fn in_seq_order(&self, courier: &str) -> Vec<String> {
        let committed = self.committed.lock().unwrap();
        let Some(by_seq) = committed.by_seq.get(courier) else { return Vec::new() };
        by_seq
            .values()
            .flat_map(|what| match what {
                Committable::Fixes(fixes) => fixes.iter().map(u64::to_string).collect(),
                Committable::Event(e) => vec![format!("{} {}", e.kind, e.event_id)],
            })
            .collect()
    }
}

fn config(
    server: &FakeServer,
    courier: &str,
    token: Option<&str>,
    dir: &std::path::Path,
) -> CourierConfig {
    let mut config =
        CourierConfig::new(server.addr.to_string(), courier, token.map(str::to_owned), dir);
    config.batch.max_fixes = 7;
    config.batch.max_age_ms = 20;
    config.mark_timeout_ms = 300;
    config.backoff.initial_ms = 50;
    config.backoff.max_ms = 200;
    config.outbox.fsync = false;
    config
}

fn report_n(courier: &Courier, from: u64, n: u64) -> Vec<u64> {
    let sent: Vec<u64> = (from..from + n).collect();
    for &ts in &sent {
        courier.report(FixInput { ts_ms: Some(ts), ..FixInput::new(41.38, 2.17) }).unwrap();
    }
    sent
}

const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn delivers_everything_in_order_numbered_without_gaps() {
    let server = FakeServer::start(Some(HashMap::from([("c-1".into(), "secret".into())])));
    let dir = tempfile::tempdir().unwrap();
    let courier = Courier::connect(config(&server, "c-1", Some("secret"), dir.path())).unwrap();
    assert!(courier.status().connected);
    let mut sent = Vec::new();
    for round in 0..10 {
        sent.extend(report_n(&courier, 1_000 + round * 20, 20));
        std::thread::sleep(Duration::from_millis(5));
    }
    courier.flush(PATIENCE).unwrap();
    let status = courier.status();
    assert_eq!((status.queued_fixes, status.acked_fixes), (0, 200));
    assert_eq!(server.fixes("c-1"), sent);
    let seqs = server.seqs("c-1");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(status.last_acked_seq, seqs.last().copied());
}

#[test]
fn a_fresh_outbox_numbers_after_the_servers_mark() {
    let server = FakeServer::start(None);
    server.set_mark("c-2", 41);
    let dir = tempfile::tempdir().unwrap();
    let courier = Courier::connect(config(&server, "c-2", None, dir.path())).unwrap();
    let sent = report_n(&courier, 5_000, 3);
    courier.flush(PATIENCE).unwrap();
    assert_eq!(server.fixes("c-2"), sent);
    assert_eq!(server.seqs("c-2"), vec![42]);
    assert_eq!(server.committed.lock().unwrap().duplicates, 0);
}

#[test]
fn unacked_reports_are_resent_after_a_reopen_and_committed_once() {
    let server = FakeServer::start(None);
    let dir = tempfile::tempdir().unwrap();
    server.acking.store(false, Ordering::SeqCst);
    let courier = Courier::connect(config(&server, "c-3", None, dir.path())).unwrap();
    let mut sent = report_n(&courier, 9_000, 30);
    assert!(matches!(
        courier.flush(Duration::from_secs(2)),
        Err(ClientError::Timeout { queued_fixes: 30, queued_events: 0 })
    ));
    courier.close();

    server.acking.store(true, Ordering::SeqCst);
    let courier = Courier::connect(config(&server, "c-3", None, dir.path())).unwrap();
    sent.extend(report_n(&courier, 9_100, 5));
    courier.flush(PATIENCE).unwrap();
    assert_eq!(server.fixes("c-3"), sent, "each fix committed once, in order");
    assert!(server.committed.lock().unwrap().duplicates > 0, "the resends were duplicates");
}

#[test]
fn a_wrong_password_is_a_clear_error() {
    let server = FakeServer::start(Some(HashMap::from([("c-4".into(), "right".into())])));
    let dir = tempfile::tempdir().unwrap();
    match Courier::connect(config(&server, "c-4", Some("wrong"), dir.path())) {
        Err(ClientError::Unauthorized { courier, reason }) => {
            assert_eq!(courier, "c-4");
            assert!(!reason.is_empty());
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    // The outbox was released: a client with the right password can use it.
    let courier = Courier::connect(config(&server, "c-4", Some("right"), dir.path())).unwrap();
    report_n(&courier, 1, 1);
    courier.flush(PATIENCE).unwrap();
}

#[test]
fn order_events_share_the_report_sequence_and_are_resent_with_their_ids() {
    let server = FakeServer::start(None);
    let dir = tempfile::tempdir().unwrap();
    server.acking.store(false, Ordering::SeqCst);
    let courier = Courier::connect(config(&server, "c-5", None, dir.path())).unwrap();
    let mut expected: Vec<String> =
        report_n(&courier, 7_000, 3).iter().map(u64::to_string).collect();
    let pickup = courier.send_event(OrderEventInput::picked_up("order-7")).unwrap();
    expected.push(format!("picked_up {pickup}"));
    expected.extend(report_n(&courier, 7_100, 2).iter().map(u64::to_string));
    let proof = r#"{"photo":"pod-17.jpg","signed_by":"Ana"}"#;
    let delivery =
        courier.send_event(OrderEventInput::delivered("order-7").with_details(proof)).unwrap();
    expected.push(format!("delivered {delivery}"));
    // Committed, never acked: the outbox keeps all of it through a restart of the app.
    assert!(matches!(
        courier.flush(Duration::from_secs(2)),
        Err(ClientError::Timeout { queued_fixes: 5, queued_events: 2 })
    ));
    courier.close();

    server.acking.store(true, Ordering::SeqCst);
    let courier = Courier::connect(config(&server, "c-5", None, dir.path())).unwrap();
    courier.flush(PATIENCE).unwrap();
    let status = courier.status();
    assert_eq!((status.queued_fixes, status.queued_events, status.acked_events), (0, 0, 2));
    assert!(status.sent_events >= 2);

    // In seq order, the server sees each event after the fixes reported before it and before
    // those reported after it; seqs have no gaps.
    assert_eq!(server.in_seq_order("c-5"), expected);
    let committed = server.committed.lock().unwrap();
    let seqs: Vec<u64> = committed.by_seq["c-5"].keys().copied().collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // Every copy of an event is the same event: same seq, same id, same details.
    let received = &committed.events_received;
    let ids: BTreeSet<&str> = received.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from([pickup.as_str(), delivery.as_str()]));
    for e in received {
        let first = received.iter().find(|f| f.seq == e.seq).unwrap();
        assert_eq!(e, first);
    }
    // An event waits until everything before it is acked (a barrier between the two topics):
    // the session that got no acks never sent one, the next sent each once.
    assert_eq!(received.len(), 2, "each event sent once, in its turn: {received:?}");
    let delivered = received.iter().find(|e| e.event_id == delivery).unwrap();
    assert_eq!((delivered.order.as_str(), delivered.details.as_deref()), ("order-7", Some(proof)));
    assert_eq!(delivered.problem(), None);
}

/// A report sent, lost on the way, then dropped by the outbox's bound: the server never has its
/// seq, and its watermark (what acks say) cannot pass a seq it never got. The outbox keeps the
/// seq as an empty report, which the server consumes, so the courier is acked again.
#[test]
fn a_report_lost_and_then_dropped_by_the_bound_never_strands_the_courier() {
    let server = FakeServer::start(None);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&server, "c-6", None, dir.path());
    config.batch.max_fixes = 2;
    config.outbox.max_fixes = 4;
    config.outbox.when_full = locus_sdk::client::WhenFull::DropOldest;
    config.ack_timeout_ms = 300;
    let courier = Courier::connect(config).unwrap();
    report_n(&courier, 1_000, 1);
    courier.flush(PATIENCE).unwrap();

    server.losing.store(true, Ordering::SeqCst);
    for ts in 2_000..2_012 {
        report_n(&courier, ts, 1);
        // Time to seal and send each pair: the bound then drops reports already sent.
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(courier.status().dropped_fixes > 0, "{:?}", courier.status());
    server.losing.store(false, Ordering::SeqCst);
    courier.flush(PATIENCE).expect("acked again once the server gets what is left");
    let fixes = server.fixes("c-6");
    assert_eq!(fixes[0], 1_000);
    assert_eq!(fixes[fixes.len() - 4..], [2_008, 2_009, 2_010, 2_011], "the newest four kept");
    courier.close();
}
