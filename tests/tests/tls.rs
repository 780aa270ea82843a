//! TLS end to end: a real `locusd` with MQTT-over-TLS and HTTPS listeners, a certificate made
//! at test time (rcgen: a CA and a server certificate for `localhost` and `127.0.0.1`), and real
//! clients: `mosquitto_pub`/`mosquitto_sub --cafile`, `curl --cacert`, the SDK with TLS. Plain
//! TCP clients that send garbage, plain MQTT or plain HTTP to the TLS ports, or nothing at all,
//! must be refused without disturbing TLS clients.

use locus_sdk::client::{CourierConfig, FixInput};
use locus_sdk::wire;
use locus_tests::{locusd, now_ms, report, wait_for, LocusServer, TlsSetup, PATIENCE};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A CA and a server certificate signed by it, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca_path: PathBuf,
    ca_pem: String,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "Locus test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_pem = ca_params.self_signed(&ca_key).expect("CA certificate").pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");

        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        Pki {
            ca_path: write("ca.pem", &ca_pem),
            cert_path: write("cert.pem", &cert.pem()),
            key_path: write("key.pem", &key.serialize_pem()),
            ca_pem,
            dir,
        }
    }

    fn setup(&self, plain: bool) -> TlsSetup {
        TlsSetup {
            cert_path: self.cert_path.clone(),
            key_path: self.key_path.clone(),
            ca_pem: self.ca_pem.clone().into_bytes(),
            plain,
        }
    }
}

/// The TLS listeners of a server started with TLS.
fn tls(server: &LocusServer) -> locus_tests::TlsListeners {
    server.tls.expect("started with TLS")
}

/// Runs `command` with `stdin`; `None` if it has not finished within `limit` (then it is
/// killed), so a hung client fails the test instead of hanging it.
fn run_bounded(mut command: Command, stdin: &[u8], limit: Duration) -> Option<Output> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e} (scripts/test.sh installs it)"));
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().expect("output"))
}

/// `mosquitto_pub --cafile` of one report on `courier`'s locations topic (QoS 1).
fn mosquitto_pub_tls(pki: &Pki, port: u16, courier: &str, token: &str, payload: &[u8]) -> Output {
    let mut command = Command::new("mosquitto_pub");
    command
        .arg("--cafile")
        .arg(&pki.ca_path)
        .args(["-h", "localhost", "-p", &port.to_string(), "-i", courier, "-u", courier])
        .args(["-P", token, "-q", "1", "-t", &format!("couriers/{courier}/locations"), "-s"]);
    run_bounded(command, payload, PATIENCE).expect("mosquitto_pub over TLS finished")
}

/// The SDK's courier over TLS to `addr`, trusting the test CA.
fn sdk_courier(
    pki: &Pki,
    addr: SocketAddr,
    courier: &str,
    token: &str,
    data_dir: &Path,
) -> locus_sdk::client::Courier {
    // This test binary links rustls with two providers (ring through reqwest, aws-lc-rs through
    // the SDK's rumqttc), and then rustls wants the process to pick one before a client
    // config is built; an app that links only the SDK has one and needs nothing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = format!("localhost:{}", addr.port());
    let mut config = CourierConfig::new(broker, courier, Some(token.to_owned()), data_dir);
    config.tls = true;
    config.tls_ca_pem = Some(pki.ca_pem.clone());
    locus_sdk::client::Courier::connect(config).expect("the SDK connects over TLS")
}

/// `curl --cacert ... https://localhost:PORT{path}` with the admin token.
fn curl_https(pki: &Pki, server: &LocusServer, path: &str) -> Output {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--fail", "--max-time", "20", "--cacert"])
        .arg(&pki.ca_path)
        .args(["-H", &format!("Authorization: Bearer {}", server.admin_token())])
        .arg(format!("https://localhost:{}{path}", tls(server).https.port()));
    run_bounded(command, b"", PATIENCE).expect("curl finished")
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON body")
}

/// Connects with plain TCP, sends `bytes`, and reads until the server closes the connection;
/// returns what the server sent. Fails if the server keeps the connection open.
fn plain_client(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("TCP connect to the TLS port");
    stream.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    // The server may close before everything is written: that is a refusal too.
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close a plain-text connection to {addr}: {e}"),
    }
    answer
}

/// What plain-text clients send to TLS ports: a plain MQTT CONNECT, a plain HTTP request,
/// random junk, and a TLS record header followed by junk.
fn garbage() -> Vec<Vec<u8>> {
    vec![
        b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04junk".to_vec(),
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        (0..=255u8).rev().cycle().take(4096).collect(),
        b"\x16\x03\x01\x00\x20not a client hello at all, sorry".to_vec(),
    ]
}

#[test]
fn tls_only_server_works_with_mosquitto_curl_and_the_sdk() {
    let pki = Pki::new();
    let server = LocusServer::start_tls(false, None, pki.setup(false));
    let addrs = tls(&server);

    // mosquitto_pub over TLS (MQTT 3.1.1) → the ack over TLS (MQTT 5) → the location over HTTPS.
    let token = server.issue_token("tls-1");
    let ts = now_ms();
    let payload = wire::encode_report(&report(1, ts, 41.3851, 2.1734));
    let published = mosquitto_pub_tls(&pki, addrs.mqtt.port(), "tls-1", &token, &payload);
    assert!(published.status.success(), "{published:?}");
    let mut sub = Command::new("mosquitto_sub");
    sub.arg("--cafile")
        .arg(&pki.ca_path)
        .args(["-h", "localhost", "-p", &addrs.mqtt5.port().to_string(), "-V", "mqttv5"])
        .args(["-i", "tls-1", "-u", "tls-1", "-P", &token, "-t", "couriers/tls-1/acks"])
        .args(["-C", "1", "-N", "-W", "30"]);
    let ack = run_bounded(sub, b"", PATIENCE).expect("mosquitto_sub finished");
    assert!(ack.status.success(), "{ack:?}");
    assert_eq!(wire::decode_ack(&ack.stdout).expect("an ack").seq, 1);
    let location = json(&curl_https(&pki, &server, "/v1/couriers/tls-1/location"));
    assert_eq!(location["ts"], ts);
    assert_eq!(location["lat"], 41.3851);

    // The SDK over TLS, trusting the test CA.
    let sdk_dir = tempfile::tempdir().expect("temp dir");
    let courier =
        sdk_courier(&pki, addrs.mqtt, "tls-2", &server.issue_token("tls-2"), sdk_dir.path());
    for i in 0..3 {
        courier.report(FixInput { ts_ms: Some(ts + i), ..FixInput::new(41.39, 2.17) }).unwrap();
    }
    courier.flush(PATIENCE).expect("every fix acked over TLS");
    courier.close();
    // The harness reads over HTTPS here (plain listeners are off).
    assert_eq!(server.track_ts("tls-2"), vec![ts, ts + 1, ts + 2]);

    // Refusals: an untrusted certificate, plain HTTP and plain MQTT on the TLS ports.
    let mut untrusted = Command::new("curl");
    untrusted.args(["-sS", "--max-time", "20"]).arg(server.url("/healthz"));
    let untrusted = run_bounded(untrusted, b"", PATIENCE).expect("curl finished");
    assert!(!untrusted.status.success(), "curl trusted a test certificate: {untrusted:?}");
    let mut plain_http = Command::new("curl");
    plain_http.args(["-sS", "--max-time", "20"]).arg(format!("http://{}/healthz", addrs.https));
    let plain_http = run_bounded(plain_http, b"", PATIENCE).expect("curl finished");
    assert!(!plain_http.status.success(), "plain HTTP answered on HTTPS: {plain_http:?}");
    let mut plain_mqtt = Command::new("mosquitto_pub");
    plain_mqtt
        .args(["-h", "127.0.0.1", "-p", &addrs.mqtt.port().to_string(), "-i", "tls-1"])
        .args(["-u", "tls-1", "-P", &token, "-q", "1", "-t", "couriers/tls-1/locations", "-s"]);
    let plain_mqtt = run_bounded(plain_mqtt, &payload, PATIENCE).expect("mosquitto_pub finished");
    assert!(!plain_mqtt.status.success(), "plain MQTT accepted on the TLS port: {plain_mqtt:?}");
}

#[test]
fn garbage_on_the_tls_ports_does_not_disturb_tls_clients() {
    let pki = Pki::new();
    let mut server = LocusServer::start_tls(false, None, pki.setup(true));
    let addrs = tls(&server);
    let token = server.issue_token("steady");
    let sdk_dir = tempfile::tempdir().expect("temp dir");
    let courier = sdk_courier(&pki, addrs.mqtt, "steady", &token, sdk_dir.path());

    let ts = now_ms();
    let rounds = 4u64;
    for round in 0..rounds {
        courier.report(FixInput { ts_ms: Some(ts + round), ..FixInput::new(41.4, 2.2) }).unwrap();
        for bytes in garbage() {
            for port in [addrs.mqtt, addrs.mqtt5, addrs.https] {
                let answer = plain_client(port, &bytes);
                // Whatever comes back (a TLS alert at most) is no MQTT or HTTP answer.
                assert!(!answer.starts_with(b"HTTP/") && !answer.starts_with(b"\x20"), "{port}");
            }
        }
        // The TLS client that was connected all along is still answered.
        courier.flush(PATIENCE).expect("acks keep coming over TLS");
    }
    courier.close();
    assert_eq!(server.track_ts("steady").len(), rounds as usize);

    // New TLS clients are still accepted on every TLS port.
    let payload = wire::encode_report(&report(1, ts + 100, 41.4, 2.2));
    let published =
        mosquitto_pub_tls(&pki, addrs.mqtt.port(), "late", &server.issue_token("late"), &payload);
    assert!(published.status.success(), "{published:?}");
    wait_for("the late courier's location", || {
        Some(()).filter(|_| server.get("/v1/couriers/late/location").0 == 200)
    });
    let health = json(&curl_https(&pki, &server, "/healthz"));
    assert_eq!(health["status"], "ok");
    assert!(server.is_running());
}

#[test]
fn a_silent_client_on_the_https_port_does_not_stall_new_connections() {
    let pki = Pki::new();
    let server = LocusServer::start_tls(false, None, pki.setup(false));
    // Connects, starts a TLS record and says nothing more: its handshake waits in its own task.
    let mut silent = TcpStream::connect(tls(&server).https).expect("connect");
    silent.write_all(b"\x16\x03\x01").expect("write");
    for _ in 0..3 {
        let health = json(&curl_https(&pki, &server, "/healthz"));
        assert_eq!(health["status"], "ok");
    }
    drop(silent);
}

#[test]
fn a_silent_client_on_the_mqtt_tls_port_does_not_stall_new_connections() {
    let pki = Pki::new();
    let server = LocusServer::start_tls(false, None, pki.setup(false));
    let addrs = tls(&server);
    let mut silent = TcpStream::connect(addrs.mqtt).expect("connect");
    silent.write_all(b"\x16\x03\x01").expect("write");
    let token = server.issue_token("after-silent");
    let payload = wire::encode_report(&report(1, now_ms(), 41.4, 2.2));
    let mut command = Command::new("mosquitto_pub");
    command
        .arg("--cafile")
        .arg(&pki.ca_path)
        .args(["-h", "localhost", "-p", &addrs.mqtt.port().to_string(), "-i", "after-silent"])
        .args(["-u", "after-silent", "-P", &token, "-q", "1"])
        .args(["-t", "couriers/after-silent/locations", "-s"]);
    let published = run_bounded(command, &payload, PATIENCE);
    drop(silent);
    let published = published.expect("mosquitto_pub over TLS was not accepted in time");
    assert!(published.status.success(), "{published:?}");
}

/// `locusd serve` with HTTPS on and `[tls]` from flags; its exit status and stderr.
fn serve_with_files(cert: &Path, key: &Path) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(locusd());
    command
        .args(["serve", "--allow-anonymous", "--data-dir"])
        .arg(dir.path())
        .args(["--mqtt-listen", "127.0.0.1:0", "--mqtt5-listen", "off", "--http-listen", "off"])
        .args(["--http-tls-listen", "127.0.0.1:0", "--tls-cert"])
        .arg(cert)
        .arg("--tls-key")
        .arg(key);
    let output = run_bounded(command, b"", PATIENCE).expect("locusd refused to start in time");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn unusable_certificate_files_stop_locusd_naming_the_key_and_the_file() {
    let pki = Pki::new();
    let other = Pki::new();
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NOTHING-----\nnope\n").expect("write");
    let missing = pki.dir.path().join("missing.pem");

    let (ok, stderr) = serve_with_files(&pki.cert_path, &garbage);
    assert!(!ok && stderr.contains("tls.key_path") && stderr.contains("garbage.pem"), "{stderr}");
    let (ok, stderr) = serve_with_files(&missing, &pki.key_path);
    assert!(!ok && stderr.contains("tls.cert_path") && stderr.contains("missing.pem"), "{stderr}");
    let (ok, stderr) = serve_with_files(&garbage, &pki.key_path);
    assert!(!ok && stderr.contains("tls.cert_path") && stderr.contains("garbage.pem"), "{stderr}");
    // A key that is not the certificate's.
    let (ok, stderr) = serve_with_files(&pki.cert_path, &other.key_path);
    assert!(!ok && stderr.contains("tls.key_path"), "{stderr}");

    // With every listener off the server refuses to start instead of running deaf.
    let output = Command::new(locusd())
        .args(["serve", "--mqtt-listen", "off", "--mqtt5-listen", "off"])
        .output()
        .expect("locusd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("every MQTT listener is off"), "{stderr}");
}
