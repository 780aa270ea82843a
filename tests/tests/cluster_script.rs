//! The README's cluster, as a new user runs it: `scripts/cluster.sh` (three RabbitMQ nodes in
//! one cluster, an influxd, two locusd workers), `locus-sim` couriers (the SDK, with its
//! on-device outbox) publishing through RabbitMQ, a `reader` on the live fix stream. Mid-run
//! a worker is killed with -9, then a RabbitMQ node (not the one the couriers are on: in
//! production a load balancer moves them, here it would only stop the run). Every fix the SDK
//! reported is acked, is in InfluxDB and in the API exactly once, also at the killed worker
//! once it is back (its first node is the dead one), and the reader saw every one.

use locus_tests::rabbitmq::stream_reader;
use locus_tests::{locus_sim, locusd, sample_value, wait_for, PATIENCE};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster.sh"))
}

/// A running `scripts/cluster.sh` cluster; stopped on drop.
struct Cluster {
    env: HashMap<String, String>,
    http: reqwest::blocking::Client,
}

impl Cluster {
    fn start(workers: u32) -> Cluster {
        let output = Command::new(script())
            .args(["start", &workers.to_string()])
            .env("LOCUSD", locusd())
            .env("PARTITIONS", "4")
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/cluster.sh");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "scripts/cluster.sh start failed:\n{text}");
        let env = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        let http = reqwest::blocking::Client::builder().timeout(PATIENCE).build().unwrap();
        Cluster { env, http }
    }

    fn var(&self, key: &str) -> &str {
        self.env.get(key).unwrap_or_else(|| panic!("no {key} in {:?}", self.env))
    }

    fn nth(&self, key: &str, i: usize) -> String {
        self.var(key).split_whitespace().nth(i).expect("enough values").to_owned()
    }

    fn run(&self, args: &[&str]) {
        let status = Command::new(script())
            .arg(args[0])
            .arg(self.var("CLUSTER_DIR"))
            .args(&args[1..])
            .env("LOCUSD", locusd())
            .status()
            .expect("running scripts/cluster.sh");
        assert!(status.success(), "scripts/cluster.sh {args:?} failed");
    }

    /// `GET path` at worker `i` (0-based) with the admin token.
    fn get(&self, i: usize, path: &str) -> Option<Value> {
        let url = format!("http://{}{path}", self.nth("WORKER_HTTP", i));
        let response = self.http.get(url).bearer_auth(self.var("ADMIN_TOKEN")).send().ok()?;
        response.status().is_success().then(|| response.json().ok()).flatten()
    }

    fn track(&self, i: usize, courier: &str) -> Vec<u64> {
        let path = format!("/v1/couriers/{courier}/track?limit=100000");
        let Some(track) = self.get(i, &path) else { return Vec::new() };
        track["fixes"].as_array().unwrap().iter().map(|f| f["ts"].as_u64().unwrap()).collect()
    }

    /// Device times of `courier`'s points in InfluxDB.
    fn influx_times(&self, courier: &str) -> Vec<u64> {
        let q = format!("SELECT lat FROM courier_location WHERE courier = '{courier}'");
        let url = format!("{}/query", self.var("INFLUX_URL"));
        let query = [("db", self.var("INFLUX_DB")), ("q", &q), ("epoch", "ms")];
        let answer: Value = self.http.get(url).query(&query).send().unwrap().json().unwrap();
        let values = answer["results"][0]["series"][0]["values"].as_array().cloned();
        values.unwrap_or_default().iter().map(|row| row[0].as_u64().unwrap()).collect()
    }

    fn token(&self, args: &[&str]) -> String {
        let output = Command::new(locusd())
            .arg("token")
            .args(args)
            .arg("--data-dir")
            .arg(PathBuf::from(self.var("CLUSTER_DIR")).join("tokens"))
            .output()
            .expect("locusd token");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().lines().last().unwrap().trim().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(dir) = self.env.get("CLUSTER_DIR") {
            let _ = Command::new(script()).args(["stop", dir]).status();
        }
    }
}

#[test]
fn a_worker_and_a_broker_node_killed_mid_run_lose_no_acked_fix() {
    let cluster = Cluster::start(2);
    let mqtt_node1 = cluster.nth("RMQ_MQTT_PORTS", 0);
    let reader = cluster.token(&["issue", "--role", "reader"]);
    let streamed = stream_reader(mqtt_node1.parse().unwrap(), &reader);

    let ids: Vec<String> = (0..16).map(|i| format!("sim-{i}")).collect();
    let sim_dir = tempfile::tempdir().unwrap();
    let tokens: Vec<String> =
        ids.iter().map(|id| format!("{id} {}", cluster.token(&["issue", id]))).collect();
    let tokens_file = sim_dir.path().join("tokens.txt");
    std::fs::write(&tokens_file, tokens.join("\n") + "\n").unwrap();
    let mut sim = Command::new(locus_sim())
        .args(["--broker", &format!("127.0.0.1:{mqtt_node1}")])
        .args(["--couriers", "16", "--interval-ms", "100", "--duration-s", "24"])
        .args(["--batch-max-age-ms", "200", "--backoff-max-ms", "1000", "--log-reported"])
        .args(["--flush-timeout-s", "120"])
        .arg("--tokens-file")
        .arg(&tokens_file)
        .arg("--data-dir")
        .arg(sim_dir.path().join("outboxes"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting locus-sim");
    let reported: Arc<Mutex<BTreeMap<String, BTreeSet<u64>>>> = Arc::default();
    let last_line = Arc::new(Mutex::new(String::new()));
    let stdout = BufReader::new(sim.stdout.take().unwrap());
    let (into, last) = (reported.clone(), last_line.clone());
    let reading = std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["reported", courier, ts] = words[..] {
                let ts = ts.parse().expect("a device time");
                into.lock().unwrap().entry(courier.to_owned()).or_default().insert(ts);
            }
            *last.lock().unwrap() = line;
        }
    });

    // Both workers take reports; then one dies, then a node.
    let committed = |i: usize| {
        let metrics = cluster.get_text(i, "/metrics");
        sample_value(&metrics, "locus_fixes_committed_total")
    };
    wait_for("both workers committing", || {
        (committed(0) > 0.0 && committed(1) > 0.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    cluster.run(&["kill-worker", "2"]);
    std::thread::sleep(Duration::from_secs(5));
    cluster.run(&["kill-node", "2"]);

    let started = Instant::now();
    let status = sim.wait().unwrap();
    reading.join().unwrap();
    let last = last_line.lock().unwrap().clone();
    assert!(status.success(), "locus-sim did not get every fix acked: {last}");
    eprintln!("locus-sim: {last} ({:?} after the node kill)", started.elapsed());

    // Worker 2 comes back; its first node is the dead one, so it connects to another.
    cluster.run(&["start-worker", "2"]);

    let reported = reported.lock().unwrap().clone();
    assert_eq!(reported.len(), ids.len(), "every courier reported");
    for (courier, times) in &reported {
        let want: Vec<u64> = times.iter().copied().collect();
        wait_for(&format!("{courier}'s fixes in InfluxDB, once each"), || {
            let mut got = cluster.influx_times(courier);
            got.sort_unstable();
            (got == want).then_some(())
        });
        for worker in [0, 1] {
            wait_for(&format!("{courier}'s track at worker {}", worker + 1), || {
                (cluster.track(worker, courier) == want).then_some(())
            });
        }
    }
    wait_for("every fix on the stream", || {
        let seen = streamed.lock().unwrap();
        let all = reported.iter().flat_map(|(c, times)| times.iter().map(move |t| (c.clone(), *t)));
        all.clone().all(|key| seen.contains_key(&key)).then_some(())
    });
    // For the README, not asserted (tests do not time things): how long after the server took
    // a fix in it reached the reader, through the failovers.
    let mut lags: Vec<u64> = streamed.lock().unwrap().values().map(|lags| lags[0]).collect();
    lags.sort_unstable();
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize];
    eprintln!(
        "stream lag after receipt: p50 {} ms, p99 {} ms, max {} ms ({} fixes)",
        at(0.5),
        at(0.99),
        at(1.0),
        lags.len()
    );
}

impl Cluster {
    fn get_text(&self, i: usize, path: &str) -> String {
        let url = format!("http://{}{path}", self.nth("WORKER_HTTP", i));
        let request = self.http.get(url).bearer_auth(self.var("ADMIN_TOKEN"));
        request.send().and_then(|r| r.text()).unwrap_or_default()
    }
}
