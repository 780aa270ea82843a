//! The courier client against a real MQTT broker (embedded rumqttd) with a minimal stand-in for
//! locusd's pipeline: it commits reports with a seq above the courier's mark, drops the rest as
//! duplicates, and publishes the mark as a retained ack. The end-to-end tests against the real
//! locusd are in `tests/tests/sdk_e2e.rs`; these check the client's own logic quickly.
#![cfg(feature = "client")]

// The one port picker of every test (outside the ephemeral range; see its module doc).
#[path = "../../tests/src/ports.rs"]
mod ports;

use locus_sdk::client::{ClientError, Courier, CourierConfig, FixInput};
use locus_sdk::{topics, wire};
use rumqttd::local::LinkTx;
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
struct Committed {
    /// Per courier: the mark and every committed fix's timestamp, in commit order.
    marks: HashMap<String, u64>,
    fixes: HashMap<String, Vec<u64>>,
    /// Per courier: seqs of committed reports, in commit order.
    seqs: HashMap<String, Vec<u64>>,
    duplicates: u64,
}

struct FakeServer {
    addr: SocketAddr,
    committed: Arc<Mutex<Committed>>,
    /// While false, reports are committed but no ack is published (an ack lost on the way).
    acking: Arc<AtomicBool>,
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
        std::thread::spawn(move || {
            // The broker runs until the test process ends; an error here fails the tests' connects.
            let _ = broker.start();
        });
        let committed = Arc::new(Mutex::new(Committed::default()));
        let acking = Arc::new(AtomicBool::new(true));
        let tx = Arc::new(Mutex::new(tx));
        let (c, a, t) = (committed.clone(), acking.clone(), tx.clone());
        std::thread::spawn(move || {
            while let Ok(notification) = rx.recv() {
                let Some(Notification::Forward(forward)) = notification else { continue };
                let topic = String::from_utf8_lossy(&forward.publish.topic).into_owned();
                let Some(courier) = topics::courier_of_locations(&topic) else { continue };
                let Ok(report) = wire::decode_report(&forward.publish.payload) else { continue };
                let mark = {
                    let mut c = c.lock().unwrap();
                    let mark = c.marks.get(courier).copied().unwrap_or(0);
                    if report.seq <= mark {
                        c.duplicates += 1;
                        mark
                    } else {
                        c.marks.insert(courier.to_owned(), report.seq);
                        c.seqs.entry(courier.to_owned()).or_default().push(report.seq);
                        let fixes = c.fixes.entry(courier.to_owned()).or_default();
                        fixes.extend(report.fixes.iter().map(|f| f.ts_ms));
                        report.seq
                    }
                };
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
        FakeServer { addr, committed, acking, tx }
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
        Err(ClientError::Timeout { queued_fixes: 30 })
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
