//! `locusd serve` run inside the test process (`serve(config, shutdown)`): a report goes in over
//! MQTT, its ack comes back, the API serves it, and the shutdown the test fires stops the server
//! cleanly.

use locus_broker::config::Config;
use locus_tests::{free_port, now_ms, report, wait_for, TestCourier};
use std::net::SocketAddr;

#[test]
fn a_server_in_process_takes_a_report_and_stops_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let loopback = |port| Some(SocketAddr::from(([127, 0, 0, 1], port)));
    let mut config =
        Config { data_dir: dir.path().join("data"), allow_anonymous: true, ..Config::default() };
    config.mqtt.listen = loopback(free_port());
    config.mqtt.listen_v5 = None;
    config.http.listen = loopback(free_port());
    let (mqtt, http) = (config.mqtt.listen.unwrap(), config.http.listen.unwrap());

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(locus_broker::serve::serve(
            config,
            async {
                let _ = stopped.await;
            },
        ))
    });

    let mut courier =
        wait_for("the MQTT listener", || TestCourier::connect(mqtt, "in-1", None).ok());
    let ts = now_ms();
    courier.publish(&report(1, ts, 41.39, 2.17));
    courier.wait_ack(1);
    let location: serde_json::Value =
        reqwest::blocking::get(format!("http://{http}/v1/couriers/in-1/location"))
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(location["ts"], ts, "{location}");

    stop.send(()).unwrap();
    let stopped = server.join().expect("the server thread");
    assert!(stopped.is_ok(), "serve returned {stopped:?}");
}
