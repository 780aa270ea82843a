//! Test harness for end-to-end tests: real `locusd` processes on free loopback ports in temp
//! dirs, real MQTT clients (rumqttc here, `mosquitto_pub` from the tests), the HTTP API read
//! back with a real HTTP client.
//!
//! - [`LocusServer`]: start, stop (SIGTERM), kill -9, restart on the same data dir and ports;
//!   with TLS listeners too ([`LocusServer::start_tls`]).
//! - [`TestCourier`]: a rumqttc connection that publishes reports and waits for acks.
//! - [`locusd`], [`locus_sim`]: the paths of the binaries, built on first use.
//! - [`influxd`]: a real InfluxDB 1.x server on free ports.
//! - [`rabbitmq::RabbitNode`]: a throwaway RabbitMQ node (`scripts/rabbitmq-node.sh`).
//! - [`free_port`]: the one port picker (outside the ephemeral range: see [`ports`]).
//! - [`plugin_components::component`]: a component of `plugins/`, built on first use.
//! - [`browser::Browser`]: headless Chromium over WebDriver, for the console's page tests.
//! - [`edge_host::EdgeHost`]: the edge component (`edge/`) served over HTTP by wasmtime, in place
//!   of Spin.

use anyhow::{bail, Context as _};
use locus_sdk::{topics, wire};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long tests wait for something that should happen quickly. Generous: CI machines are
/// slow and loaded; tests never assert on how fast things happen.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The `locusd` binary, built once per test process with the same profile as the tests.
pub fn locusd() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/{profile}/deps/test-binary → target/{profile}/locusd
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/{profile}");
        let release = profile_dir.ends_with("release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "locus-broker", "--bin", "locusd"]);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build for locusd");
        assert!(status.success(), "building locusd failed");
        profile_dir.join("locusd")
    })
}

/// The `locus-sim` binary (the SDK's simulator), built once per test process with the same
/// profile as the tests.
pub fn locus_sim() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/{profile}");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "locus-sim", "--bin", "locus-sim"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(
            build.status().expect("running cargo build").success(),
            "building locus-sim failed"
        );
        profile_dir.join("locus-sim")
    })
}

pub mod browser;
pub mod edge_host;
pub mod plugin_components;
pub mod ports;
pub mod rabbitmq;
pub use ports::free_port;

pub use locus_sdk::wire::now_ms;

/// Waits until `check` returns `Some`, or fails after [`PATIENCE`] naming `what`.
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running (or stopped) `locusd` with its own data dir and ports.
#[derive(Debug)]
pub struct LocusServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// MQTT 3.1.1 address.
    pub mqtt: SocketAddr,
    /// MQTT 5 address.
    pub mqtt5: SocketAddr,
    /// HTTP API address.
    pub http: SocketAddr,
    /// The TLS listeners, for a server started with [`LocusServer::start_tls`].
    pub tls: Option<TlsListeners>,
    /// Whether the plain-text listeners above are on (they are unless `TlsSetup::plain` is false).
    pub plain: bool,
    tls_files: Option<TlsSetup>,
    anonymous: bool,
    config: Option<String>,
    admin_token: String,
    http_client: reqwest::blocking::Client,
    starts: usize,
}

impl LocusServer {
    /// Starts a server that requires credentials.
    pub fn start() -> LocusServer {
        Self::start_with(false, None)
    }

    /// Starts a server with `--allow-anonymous`.
    pub fn start_anonymous() -> LocusServer {
        Self::start_with(true, None)
    }

    /// Starts a server with extra TOML configuration.
    pub fn start_with(anonymous: bool, config: Option<&str>) -> LocusServer {
        Self::start_full(anonymous, config, None, |_| {})
    }

    /// Starts on a data dir that `prepare` fills first (for example with one an older release
    /// wrote).
    pub fn start_on_data_dir(
        anonymous: bool,
        config: Option<&str>,
        prepare: impl FnOnce(&Path),
    ) -> LocusServer {
        Self::start_full(anonymous, config, None, prepare)
    }

    /// Starts a server that also listens with TLS (MQTT 3.1.1, MQTT 5 and HTTPS) on free ports,
    /// with `tls`'s certificate; the harness's own HTTP calls go over HTTPS when the plain
    /// listeners are off, trusting `tls.ca_pem`.
    pub fn start_tls(anonymous: bool, config: Option<&str>, tls: TlsSetup) -> LocusServer {
        Self::start_full(anonymous, config, Some(tls), |_| {})
    }

    fn start_full(
        anonymous: bool,
        config: Option<&str>,
        tls: Option<TlsSetup>,
        prepare: impl FnOnce(&Path),
    ) -> LocusServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut http_client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10));
        if let Some(tls) = &tls {
            let ca = reqwest::Certificate::from_pem(&tls.ca_pem).expect("CA certificate PEM");
            http_client = http_client.add_root_certificate(ca);
        }
        let mut server = LocusServer {
            child: None,
            mqtt: loopback(free_port()),
            mqtt5: loopback(free_port()),
            http: loopback(free_port()),
            tls: tls.as_ref().map(|_| TlsListeners {
                mqtt: loopback(free_port()),
                mqtt5: loopback(free_port()),
                https: loopback(free_port()),
            }),
            plain: tls.as_ref().is_none_or(|tls| tls.plain),
            tls_files: tls,
            anonymous,
            config: config.map(str::to_owned),
            admin_token: String::new(),
            http_client: http_client.build().expect("HTTP client"),
            dir,
            starts: 0,
        };
        // The data dir first: it may bring its own token secret.
        prepare(&server.data_dir());
        server.admin_token = server.token_command(&["admin"]);
        server.launch();
        server
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("locusd-{}.log", self.starts))
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let mut command = Command::new(locusd());
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .env("LOCUS_LOG", "info,rumqttd=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        let listen = |addr: SocketAddr, on: bool| if on { addr.to_string() } else { "off".into() };
        command
            .args(["--mqtt-listen", &listen(self.mqtt, self.plain)])
            .args(["--mqtt5-listen", &listen(self.mqtt5, self.plain)])
            .args(["--http-listen", &listen(self.http, self.plain)]);
        if let (Some(addrs), Some(files)) = (&self.tls, &self.tls_files) {
            command
                .args(["--mqtt-tls-listen", &addrs.mqtt.to_string()])
                .args(["--mqtt5-tls-listen", &addrs.mqtt5.to_string()])
                .args(["--http-tls-listen", &addrs.https.to_string()])
                .arg("--tls-cert")
                .arg(&files.cert_path)
                .arg("--tls-key")
                .arg(&files.key_path);
        }
        if self.anonymous {
            command.arg("--allow-anonymous");
        }
        if let Some(config) = &self.config {
            let path = self.dir.path().join("locusd.toml");
            std::fs::write(&path, config).expect("config file");
            command.arg("--config").arg(path);
        }
        self.child = Some(command.spawn().expect("starting locusd"));
        let started = Instant::now();
        loop {
            if let Ok(response) = self.http_client.get(self.url("/healthz")).send() {
                if response.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("locusd exited with {status} at start:\n{}", self.log());
            }
            assert!(started.elapsed() < PATIENCE, "locusd did not become healthy:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the current process logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `locusd token ARGS --data-dir DIR` and returns the token (last line of stdout).
    pub fn token_command(&self, args: &[&str]) -> String {
        let output = Command::new(locusd())
            .arg("token")
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .output()
            .expect("running locusd token");
        assert!(output.status.success(), "locusd token failed: {output:?}");
        let stdout = String::from_utf8(output.stdout).expect("utf-8 token");
        stdout.lines().last().expect("a token line").trim().to_owned()
    }

    /// A courier token.
    pub fn issue_token(&self, courier: &str) -> String {
        self.token_command(&["issue", courier])
    }

    /// Courier tokens for a whole fleet, issued in this process by the code behind `locusd
    /// token issue` (thousands of CLI runs would take most of a minute).
    pub fn issue_tokens(&self, couriers: &[String]) -> Vec<String> {
        use locus_broker::auth::{Role, TokenAuthority};
        let authority = TokenAuthority::open(&self.data_dir()).expect("the server's token key");
        couriers.iter().map(|courier| authority.issue(Role::Courier, courier)).collect()
    }

    /// The admin token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// `http://127.0.0.1:PORT{path}`, or `https://localhost:PORT{path}` when the plain
    /// listeners are off.
    pub fn url(&self, path: &str) -> String {
        match &self.tls {
            Some(tls) if !self.plain => format!("https://localhost:{}{path}", tls.https.port()),
            _ => format!("http://{}{path}", self.http),
        }
    }

    /// GET with the admin token; the status and the JSON body.
    pub fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http_client
            .get(self.url(path))
            .bearer_auth(&self.admin_token)
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let body = response.json().unwrap_or(Value::Null);
        (status, body)
    }

    /// POST of JSON `body` with `token`; the status and the JSON body.
    pub fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http_client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    /// GET that must answer 200 with JSON.
    pub fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// The value of a Prometheus sample (`name` with labels as written, e.g.
    /// `locus_dead_letters_total{reason="malformed"}`), 0 if absent.
    pub fn metric(&self, sample: &str) -> f64 {
        sample_value(&self.metrics_text(), sample)
    }

    /// `GET /metrics`: the Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.http_client
            .get(self.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .expect("GET /metrics")
    }

    /// The committed track of a courier (up to 10,000 fixes), as `ts` values.
    pub fn track_ts(&self, courier: &str) -> Vec<u64> {
        let (status, body) = self.get(&format!("/v1/couriers/{courier}/track?limit=10000"));
        if status == 404 {
            return Vec::new();
        }
        assert_eq!(status, 200, "track of {courier}: {body}");
        body["fixes"]
            .as_array()
            .expect("fixes array")
            .iter()
            .map(|f| f["ts"].as_u64().expect("ts"))
            .collect()
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("locusd did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("wait");
    }

    /// Starts again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.launch();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for LocusServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- locusd log ---\n{}", self.log());
        }
    }
}

/// Certificate files for [`LocusServer::start_tls`] (the tests make them with rcgen).
#[derive(Debug, Clone)]
pub struct TlsSetup {
    /// PEM certificate chain of the server (valid for `localhost` and `127.0.0.1`).
    pub cert_path: PathBuf,
    /// PEM private key of the server.
    pub key_path: PathBuf,
    /// PEM of the CA that signed the certificate, trusted by the harness's HTTP client.
    pub ca_pem: Vec<u8>,
    /// Keep the plain-text listeners on as well.
    pub plain: bool,
}

/// The TLS listeners of a [`LocusServer`].
#[derive(Debug, Clone, Copy)]
pub struct TlsListeners {
    /// MQTT 3.1.1 over TLS.
    pub mqtt: SocketAddr,
    /// MQTT 5 over TLS.
    pub mqtt5: SocketAddr,
    /// HTTPS API.
    pub https: SocketAddr,
}

/// A courier on a real MQTT connection (rumqttc): publishes reports, collects acks.
#[allow(missing_debug_implementations)]
pub struct TestCourier {
    /// The courier id.
    pub id: String,
    client: rumqttc::Client,
    acks: mpsc::Receiver<u64>,
    /// The highest ack seen.
    pub last_ack: u64,
    connection_errors: mpsc::Receiver<String>,
}

impl TestCourier {
    /// Connects (with a token unless `None`) and subscribes to its acks.
    pub fn connect(addr: SocketAddr, id: &str, token: Option<&str>) -> anyhow::Result<TestCourier> {
        Self::connect_with_max_packet(addr, id, token, 10 * 1024)
    }

    /// Like [`TestCourier::connect`], with a larger client-side packet limit (rumqttc refuses to
    /// send packets above it; tests of the server's limits need bigger ones).
    pub fn connect_with_max_packet(
        addr: SocketAddr,
        id: &str,
        token: Option<&str>,
        max_packet: usize,
    ) -> anyhow::Result<TestCourier> {
        let mut options = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(max_packet, max_packet);
        if let Some(token) = token {
            options.set_credentials(id, token);
        }
        let (client, mut connection) = rumqttc::Client::new(options, 256);
        let (ack_tx, acks) = mpsc::channel();
        let (err_tx, connection_errors) = mpsc::channel();
        let (connected_tx, connected) = mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = connected_tx.send(Ok(()));
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if let Ok(ack) = wire::decode_ack(&p.payload) {
                            if ack_tx.send(ack.seq).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = connected_tx.send(Err(e.to_string()));
                        let _ = err_tx.send(e.to_string());
                        return;
                    }
                }
            }
        });
        match connected.recv_timeout(PATIENCE) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("connection refused: {e}"),
            Err(_) => bail!("no CONNACK within {PATIENCE:?}"),
        }
        client.subscribe(topics::acks(id), rumqttc::QoS::AtLeastOnce).context("subscribe")?;
        Ok(TestCourier { id: id.to_owned(), client, acks, last_ack: 0, connection_errors })
    }

    /// Publishes raw bytes on this courier's locations topic (QoS 1).
    pub fn publish_raw(&self, payload: Vec<u8>) {
        self.client
            .publish(topics::locations(&self.id), rumqttc::QoS::AtLeastOnce, false, payload)
            .expect("publish");
    }

    /// Publishes a report.
    pub fn publish(&self, report: &wire::Report) {
        self.publish_raw(wire::encode_report(report));
    }

    /// Publishes an order event on this courier's events topic (QoS 1).
    pub fn publish_event(&self, event: &wire::CourierEvent) {
        let payload = wire::encode_event(event);
        self.client
            .publish(topics::events(&self.id), rumqttc::QoS::AtLeastOnce, false, payload)
            .expect("publish");
    }

    /// The highest ack that has arrived so far, without waiting.
    pub fn ack_now(&mut self) -> u64 {
        while let Ok(ack) = self.acks.try_recv() {
            self.last_ack = self.last_ack.max(ack);
        }
        self.last_ack
    }

    /// Waits until an ack at or above `seq` arrives.
    pub fn wait_ack(&mut self, seq: u64) {
        let deadline = Instant::now() + PATIENCE;
        while self.last_ack < seq {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acks.recv_timeout(left) {
                Ok(ack) => self.last_ack = self.last_ack.max(ack),
                Err(_) => panic!(
                    "courier {}: no ack for seq {seq} (last ack {}, connection error: {:?})",
                    self.id,
                    self.last_ack,
                    self.connection_errors.try_recv().ok()
                ),
            }
        }
    }
}

/// The value of `sample` (a name with its labels, as printed) in Prometheus text; 0 when
/// absent.
pub fn sample_value(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .filter_map(|value| value.split_whitespace().next()?.parse().ok())
        .next()
        .unwrap_or(0.0)
}

/// A one-fix report at `ts` near Barcelona.
pub fn report(seq: u64, ts: u64, lat: f64, lon: f64) -> wire::Report {
    wire::Report { seq, fixes: vec![wire::Fix::from_degrees(ts, lat, lon)] }
}

pub mod influxd;
