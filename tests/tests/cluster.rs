//! Cluster mode against real processes: locusd workers (`[broker] mode = "rabbitmq"`) behind
//! a real RabbitMQ 3.10 (`scripts/rabbitmq-node.sh`: MQTT plugin, HTTP auth backend asking
//! worker 1, consistent-hash exchange, quorum queues), a real influxd as the shared record,
//! couriers on real MQTT connections to RabbitMQ.

use locus_sdk::wire::{CourierEvent, CourierEventKind};
use locus_tests::influxd::Influxd;
use locus_tests::rabbitmq::{stream_reader, RabbitNode};
use locus_tests::{free_port, now_ms, report, wait_for, LocusServer, TestCourier};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A worker's configuration: every node's AMQP URL, this worker's share of the partitions.
fn worker_config(amqp_urls: &[String], influxd: &Influxd, index: u32, workers: u32) -> String {
    let urls: Vec<String> = amqp_urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[broker]\nmode = \"rabbitmq\"\n\
         [broker.rabbitmq]\namqp_urls = [{}]\npartitions = 4\nworkers = {workers}\n\
         worker_index = {index}\nstandby_after_ms = 8000\n\
         [http]\nrabbitmq_auth_backend = true\n\
         [influx]\nurl = \"{}\"\ndatabase = \"{}\"\nbatch_interval_ms = 200\n",
        urls.join(", "),
        influxd.url(),
        influxd.database()
    )
}

/// Starts a worker whose token secret is `key` (every worker must accept every token).
fn start_worker(config: &str, key: Option<&Path>) -> LocusServer {
    LocusServer::start_on_data_dir(false, Some(config), |dir| {
        if let Some(key) = key {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::copy(key, dir.join("token.key")).unwrap();
        }
    })
}

/// A consumer of the fix stream's exchange over AMQP with a reader token (username
/// `reader`): a server-named queue bound with `fixes.*`. Every (courier, device time) it
/// received.
fn amqp_stream_reader(amqp_port: u16, token: &str) -> Arc<Mutex<BTreeSet<(String, u64)>>> {
    use amqprs::channel::{BasicConsumeArguments, QueueBindArguments, QueueDeclareArguments};
    use amqprs::connection::{Connection, OpenConnectionArguments};
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (into, token) = (seen.clone(), token.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let args = OpenConnectionArguments::new("127.0.0.1", amqp_port, "reader", &token);
            let connection = Connection::open(&args).await.expect("a reader logs in over AMQP");
            let channel = connection.open_channel(None).await.unwrap();
            let (queue, _, _) = channel
                .queue_declare(QueueDeclareArguments::exclusive_server_named())
                .await
                .unwrap()
                .expect("a declared queue");
            let bind = QueueBindArguments::new(&queue, "locus.fixes", "fixes.*");
            channel.queue_bind(bind).await.expect("a reader binds to the stream");
            let consume = BasicConsumeArguments::new(&queue, "").auto_ack(true).finish();
            let (_, mut messages) = channel.basic_consume_rx(consume).await.unwrap();
            ready_tx.send(()).unwrap();
            while let Some(message) = messages.recv().await {
                let json: Value = serde_json::from_slice(&message.content.unwrap()).unwrap();
                let courier = json["courier"].as_str().unwrap().to_owned();
                let mut seen = into.lock().unwrap();
                for fix in json["fixes"].as_array().unwrap() {
                    seen.insert((courier.clone(), fix["ts"].as_u64().unwrap()));
                }
            }
            drop(connection);
        });
    });
    ready.recv_timeout(locus_tests::PATIENCE).expect("the AMQP reader bound its queue");
    seen
}

/// Points of `courier` in InfluxDB.
fn points(influxd: &Influxd, courier: &str) -> i64 {
    influxd
        .scalar(&format!("SELECT count(lat) FROM courier_location WHERE courier = '{courier}'"))
        .unwrap_or(0)
}

#[test]
fn a_worker_killed_mid_run_loses_no_acked_fix_and_stores_none_twice() {
    let influxd = Influxd::start("locus").unwrap();
    let amqp_port = free_port();
    // The node's AMQP URL is known before it starts; workers retry until it is up.
    let placeholder =
        format!("amqp://locus-worker:{}@127.0.0.1:{amqp_port}/%2f", "pw-cluster-test");
    let config = |index| worker_config(std::slice::from_ref(&placeholder), &influxd, index, 2);
    let worker1 = start_worker(&config(0), None);
    let key = worker1.data_dir().join("token.key");
    let node = RabbitNode::start(
        &format!("http://{}/rabbitmq/auth", worker1.http),
        &[
            ("RMQ_AMQP_PORT", amqp_port.to_string()),
            ("RMQ_WORKER_PASS", "pw-cluster-test".to_owned()),
        ],
    );
    assert_eq!(node.amqp_url(), placeholder);
    let mut worker2 = start_worker(&config(1), Some(&key));
    // Each worker consumes its own share at once and stands by for the rest a little later.
    for worker in [&worker1, &worker2] {
        wait_for("the worker to connect to RabbitMQ", || {
            worker.log().contains("registered as first consumer").then_some(())
        });
    }

    let mqtt = SocketAddr::from(([127, 0, 0, 1], node.mqtt_port));
    let reader = worker1.token_command(&["issue", "--role", "reader"]);
    let streamed = stream_reader(node.mqtt_port, &reader);
    let amqp_streamed = amqp_stream_reader(amqp_port, &reader);
    let ids: Vec<String> = (0..12).map(|i| format!("cl-{i}")).collect();
    let mut couriers: Vec<TestCourier> = ids
        .iter()
        .map(|id| TestCourier::connect(mqtt, id, Some(&worker1.issue_token(id))).unwrap())
        .collect();
    let t0 = now_ms() - 600_000;
    let send = |couriers: &mut [TestCourier], seqs: std::ops::RangeInclusive<u64>| {
        for seq in seqs.clone() {
            for (i, courier) in couriers.iter().enumerate() {
                courier.publish(&report(seq, t0 + seq * 1000 + i as u64, 41.38, 2.17));
            }
        }
        for courier in couriers.iter_mut() {
            courier.wait_ack(*seqs.end());
        }
    };
    send(&mut couriers, 1..=20);
    // Both workers took reports in: the partitions are shared.
    for worker in [&worker1, &worker2] {
        assert!(worker.metric("locus_reports_committed_total") > 0.0, "{}", worker.log());
    }

    for worker in [&worker1, &worker2] {
        wait_for("the worker to stand by for the other partitions", || {
            worker.log().contains("registered as standby").then_some(())
        });
    }
    // An order placed at worker 1; its courier's event (seq 21, shared with its reports)
    // goes to the courier's partition, whichever worker has it; both workers see the order.
    let merchant = worker1.token_command(&["issue", "--role", "merchant", "shop"]);
    for body in [
        json!({"event": "placed", "event_id": "p1"}),
        json!({"event": "assigned", "courier": "cl-0", "event_id": "a1"}),
        json!({"event": "ready", "event_id": "r1"}),
    ] {
        let (status, answer) = worker1.post("/v1/orders/o-cl/events", &merchant, &body);
        assert_eq!(status, 200, "{answer}");
    }
    couriers[0].publish_event(&CourierEvent {
        seq: 21,
        order: "o-cl".into(),
        kind: CourierEventKind::PickedUp,
        event_id: "u1".into(),
        at_ms: now_ms(),
        details: None,
    });
    couriers[0].wait_ack(21);
    for worker in [&worker1, &worker2] {
        wait_for("the order picked up at every worker", || {
            let order = worker.get_ok("/v1/orders/o-cl");
            (order["status"] == "picked_up").then_some(())
        });
    }

    // Kill -9 one worker while reports are in flight: its partitions go to the other.
    for seq in 21..=30 {
        for (i, courier) in couriers.iter().enumerate().filter(|(i, _)| seq > 21 || *i > 0) {
            courier.publish(&report(seq, t0 + seq * 1000 + i as u64, 41.38, 2.17));
        }
    }
    worker2.kill9();
    send(&mut couriers, 31..=50);

    // Every acked fix is in InfluxDB, once (a point is its courier and device time, so a fix
    // stored twice would still count once: the count also proves none is missing).
    let expected = |i: usize| -> Vec<u64> {
        // Courier 0's seq 21 was its order event.
        let seqs = (1..=50).filter(|&seq| i > 0 || seq != 21);
        seqs.map(|seq| t0 + seq * 1000 + i as u64).collect()
    };
    for (i, id) in ids.iter().enumerate() {
        let want = expected(i).len() as i64;
        wait_for(&format!("courier {id}'s {want} points in InfluxDB"), || {
            (points(&influxd, id) == want).then_some(())
        });
    }
    let acked = influxd.scalar("SELECT count(watermark) FROM locus_acks").unwrap();
    assert!(acked > 0, "ack records are written");
    assert!(worker1.log().contains("partition active here"), "{}", worker1.log());

    // The surviving worker answers for every courier, also for what the dead one committed
    // (from the shared log stream): each fix once, the newest as the last location.
    for (i, id) in ids.iter().enumerate() {
        wait_for(&format!("{id}'s whole track at worker 1"), || {
            (worker1.track_ts(id) == expected(i)).then_some(())
        });
        let location = worker1.get_ok(&format!("/v1/couriers/{id}/location"));
        assert_eq!(location["ts"].as_u64(), expected(i).last().copied(), "{location}");
    }
    // The stream's reader saw every committed fix (at least once: a worker that dies between
    // publishing the stream and acking leaves its successor to publish again).
    let all: BTreeSet<(String, u64)> = ids
        .iter()
        .enumerate()
        .flat_map(|(i, id)| expected(i).into_iter().map(move |ts| (id.clone(), ts)))
        .collect();
    wait_for("every fix on the stream", || {
        let seen = streamed.lock().unwrap();
        all.iter().all(|key| seen.contains_key(key)).then_some(())
    });
    wait_for("every fix at the AMQP reader", || {
        let seen = amqp_streamed.lock().unwrap();
        all.iter().all(|key| seen.contains(key)).then_some(())
    });

    // The killed worker comes back on its own disk and catches up from the log stream.
    worker2.restart();
    for (i, id) in ids.iter().enumerate() {
        wait_for(&format!("{id}'s whole track at the restarted worker 2"), || {
            (worker2.track_ts(id) == expected(i)).then_some(())
        });
    }
}
