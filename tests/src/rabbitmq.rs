//! Throwaway RabbitMQ nodes (Debian's rabbitmq-server 3.10) started by
//! `scripts/rabbitmq-node.sh`: the MQTT plugin for devices, the HTTP auth backend pointed at a
//! locusd, an internal user for locusd workers, the consistent-hash exchange. A node takes
//! 10-15 s to start, so a test file starts one (or one cluster) for all its checks.

use rumqttc::{Event, Packet, QoS};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// A node; stopped (and its dir removed) on drop.
#[derive(Debug)]
pub struct RabbitNode {
    /// The Erlang node name.
    pub node: String,
    /// Its temp dir.
    pub dir: String,
    /// The MQTT listener's port (loopback).
    pub mqtt_port: u16,
    /// The AMQP listener's port (loopback).
    pub amqp_port: u16,
    /// The internal user locusd workers log in with, and its password.
    pub worker_user: String,
    /// See `worker_user`.
    pub worker_pass: String,
}

/// `scripts/rabbitmq-node.sh`.
pub fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/rabbitmq-node.sh"))
}

impl RabbitNode {
    /// Starts a node whose auth backend is `auth_url` (its `user`, `vhost`, ... paths), with
    /// extra environment for the script (`RMQ_AMQP_PORT`, `RMQ_COOKIE`, ...).
    pub fn start(auth_url: &str, env: &[(&str, String)]) -> RabbitNode {
        let mut command = Command::new(script());
        command.args(["start", "0", auth_url]);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("running scripts/rabbitmq-node.sh");
        assert!(
            output.status.success(),
            "RabbitMQ did not start (scripts/test.sh installs rabbitmq-server): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).expect("utf-8");
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .trim_matches(['\'', '"'])
                .to_owned()
        };
        RabbitNode {
            node: value("RMQ_NODE"),
            dir: value("RMQ_DIR"),
            mqtt_port: value("RMQ_MQTT_PORT").parse().expect("a port"),
            amqp_port: value("RMQ_AMQP_PORT").parse().expect("a port"),
            worker_user: value("RMQ_WORKER_USER"),
            worker_pass: value("RMQ_WORKER_PASS"),
        }
    }

    /// The AMQP URL a worker logs in with.
    pub fn amqp_url(&self) -> String {
        format!("amqp://{}:{}@127.0.0.1:{}/%2f", self.worker_user, self.worker_pass, self.amqp_port)
    }

    /// `rabbitmqctl ARGS` against this node; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let output = Command::new(script())
            .arg("ctl")
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("running rabbitmqctl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["stop", &self.node, &self.dir]).output();
    }
}

/// What a [`stream_reader`] saw: per (courier, device time), one lag per arrival.
pub type StreamSeen = BTreeMap<(String, u64), Vec<u64>>;

/// A consumer of the live fix stream through RabbitMQ's MQTT plugin, with a reader token:
/// every (courier, device time) it received, and for each time it came, how long after the
/// server received the fix (ms; both clocks are this machine's).
pub fn stream_reader(mqtt_port: u16, token: &str) -> Arc<Mutex<StreamSeen>> {
    let mut options = rumqttc::MqttOptions::new("reader@cluster-test", "127.0.0.1", mqtt_port);
    // A stream message holds up to 100 fixes of one courier (about 12 KB of JSON).
    options.set_credentials("reader", token).set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = rumqttc::Client::new(options, 100);
    client.subscribe("fixes/+", QoS::AtLeastOnce).expect("subscribe");
    let seen: Arc<Mutex<StreamSeen>> = Arc::default();
    let (granted_tx, granted) = std::sync::mpsc::channel();
    let into = seen.clone();
    std::thread::spawn(move || {
        let _client = client; // the connection lives as long as this thread
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = granted_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let json: Value = serde_json::from_slice(&publish.payload).expect("JSON");
                    let courier = json["courier"].as_str().expect("courier").to_owned();
                    let mut seen = into.lock().unwrap();
                    let now = crate::now_ms();
                    for fix in json["fixes"].as_array().expect("fixes") {
                        let ts = fix["ts"].as_u64().expect("ts");
                        let lag = now.saturating_sub(fix["received_ms"].as_u64().unwrap_or(now));
                        seen.entry((courier.clone(), ts)).or_default().push(lag);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // The test waiting for fixes says what is missing; this says why.
                    eprintln!("the stream reader lost its connection: {e}");
                    return;
                }
            }
        }
    });
    granted.recv_timeout(crate::PATIENCE).expect("the reader's SUBACK");
    seen
}
