//! End-to-end tests of the courier SDK (`locus-sdk`, feature `client`) against a real locusd.
//!
//! The SDK runs inside real `locus-sim` processes (the simulator is a thin driver of the SDK), so
//! these tests can also kill the SDK with -9 mid-send. What the simulator reports is read from
//! its `--log-reported` lines (`reported COURIER TS`, printed once the fix is durably in the
//! outbox) and its last line (`sent=N acked=M`); what the server committed is read back from the
//! HTTP API's track.

use locus_tests::{free_port, LocusServer, PATIENCE};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A tokens file (`COURIER TOKEN` lines) for `ids`, issued by the server.
fn tokens_file(server: &LocusServer, dir: &Path, ids: &[String]) -> PathBuf {
    let tokens = server.issue_tokens(ids);
    let lines: Vec<String> =
        ids.iter().zip(tokens).map(|(id, token)| format!("{id} {token}")).collect();
    let path = dir.join("tokens.txt");
    std::fs::write(&path, lines.join("\n") + "\n").expect("tokens file");
    path
}

fn sim_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("sim-{i}")).collect()
}

/// `locus-sim` with common flags: fast batching, quick reconnects, fixes logged.
fn sim_command(broker: &str, data_dir: &Path, tokens: Option<&Path>, extra: &[&str]) -> Command {
    let mut command = Command::new(locus_tests::locus_sim());
    command
        .args(["--broker", broker])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--batch-max-age-ms", "100", "--backoff-max-ms", "1000", "--log-reported"])
        .args(extra)
        .stdin(Stdio::null());
    if let Some(tokens) = tokens {
        command.arg("--tokens-file").arg(tokens);
    }
    command
}

/// `couriers` simulated apps with tokens (outboxes under `work`), each reporting every
/// `interval_ms` for `duration_s` seconds, plus `extra` flags.
fn spawn_fleet(
    server: &LocusServer,
    work: &Path,
    couriers: usize,
    interval_ms: u64,
    duration_s: u64,
    extra: &[&str],
) -> Running {
    let tokens = tokens_file(server, work, &sim_ids(couriers));
    let (couriers, interval_ms, duration_s) =
        (couriers.to_string(), interval_ms.to_string(), duration_s.to_string());
    let mut args =
        vec!["--couriers", &couriers, "--interval-ms", &interval_ms, "--duration-s", &duration_s];
    args.extend_from_slice(extra);
    Running::spawn(sim_command(
        &server.mqtt.to_string(),
        &work.join("outboxes"),
        Some(&tokens),
        &args,
    ))
}

/// The fixes a simulator run logged as durably reported, per courier, in order.
fn reported(stdout: &str) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in stdout.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("reported"), Some(courier), Some(ts)) =
            (parts.next(), parts.next(), parts.next())
        {
            out.entry(courier.to_owned()).or_default().push(ts.parse().expect("ts"));
        }
    }
    out
}

/// `(sent, acked)` from the simulator's last line, which must be exactly `sent=N acked=M`.
fn last_line(stdout: &str) -> (u64, u64) {
    let line = stdout.lines().last().expect("a last line");
    let rest = line.strip_prefix("sent=").unwrap_or_else(|| panic!("last line {line:?}"));
    let (sent, acked) = rest.split_once(" acked=").unwrap_or_else(|| panic!("last line {line:?}"));
    (sent.parse().expect("sent"), acked.parse().expect("acked"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run_to_end(mut command: Command) -> Output {
    let output = command.output().expect("running locus-sim");
    eprintln!("--- locus-sim stderr ---\n{}", text(&output.stderr));
    output
}

/// A simulator running in the background, its stdout collected line by line.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn spawn(mut command: Command) -> Running {
        let mut child = command.stdout(Stdio::piped()).spawn().expect("starting locus-sim");
        let pipe = child.stdout.take().expect("stdout pipe");
        let stdout = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stdout);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut sink = sink.lock().expect("stdout buffer");
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        Running { child, stdout, reader: Some(reader) }
    }

    fn reported_count(&self) -> usize {
        reported(&self.stdout.lock().expect("stdout buffer")).values().map(Vec::len).sum()
    }

    fn wait_reported(&self, at_least: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.reported_count() < at_least {
            assert!(
                Instant::now() < deadline,
                "locus-sim reported only {} fixes",
                self.reported_count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit (generously); the exit code and all of stdout.
    fn finish(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("locus-sim did not finish");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stdout = self.stdout.lock().expect("stdout buffer").clone();
        (status.code(), stdout)
    }

    fn kill9(mut self) -> String {
        self.child.kill().expect("kill -9 locus-sim");
        self.child.wait().expect("wait");
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stdout = self.stdout.lock().expect("stdout buffer").clone();
        stdout
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every courier's committed track is exactly what it reported: same fixes, same order, none
/// missing, none twice.
fn assert_tracks_match(server: &LocusServer, reported: &BTreeMap<String, Vec<u64>>) {
    for (courier, sent) in reported {
        let track = server.track_ts(courier);
        assert_eq!(&track, sent, "track of {courier} differs from what it reported");
    }
}

#[test]
fn fixes_arrive_in_order_without_gaps() {
    let server = LocusServer::start();
    let work = tempfile::tempdir().expect("temp dir");
    let ids = sim_ids(3);
    let tokens = tokens_file(&server, work.path(), &ids);
    let output = run_to_end(sim_command(
        &server.mqtt.to_string(),
        &work.path().join("outboxes"),
        Some(&tokens),
        &[
            "--couriers",
            "3",
            "--interval-ms",
            "10",
            "--fixes-per-courier",
            "120",
            "--duration-s",
            "120",
            "--batch-max-fixes",
            "7",
        ],
    ));
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert_eq!(last_line(&stdout), (360, 360));
    let reported = reported(&stdout);
    assert_eq!(reported.len(), 3);
    assert!(reported.values().all(|ts| ts.len() == 120 && ts.windows(2).all(|w| w[0] < w[1])));
    assert_tracks_match(&server, &reported);
}

/// `couriers` simulated apps report every `interval_ms` for `duration_s` seconds. After
/// `before` reported fixes `take_down` takes locusd away; once `during` more were reported it
/// comes back. The apps must then finish and every fix they reported be in the tracks exactly
/// once. Returns what they reported.
fn reports_survive_an_outage(
    couriers: usize,
    interval_ms: u64,
    duration_s: u64,
    (before, during): (usize, usize),
    take_down: impl FnOnce(&mut LocusServer),
) -> BTreeMap<String, Vec<u64>> {
    let mut server = LocusServer::start();
    let work = tempfile::tempdir().expect("temp dir");
    let sim = spawn_fleet(
        &server,
        work.path(),
        couriers,
        interval_ms,
        duration_s,
        &["--flush-timeout-s", "120"],
    );
    sim.wait_reported(before);
    take_down(&mut server);
    let down_from = sim.reported_count();
    sim.wait_reported(down_from + during);
    server.restart();
    let (code, stdout) = sim.finish();
    assert_eq!(code, Some(0), "{stdout}");
    let reported = reported(&stdout);
    let total: usize = reported.values().map(Vec::len).sum();
    assert_eq!(last_line(&stdout), (total as u64, total as u64));
    assert_tracks_match(&server, &reported);
    reported
}

#[test]
fn fifty_couriers_survive_locusd_kill9_and_restart_exactly_once() {
    // Killed in the middle of the run, kept away a while, brought back.
    let reported = reports_survive_an_outage(50, 200, 10, (300, 300), LocusServer::kill9);
    assert_eq!(reported.len(), 50);
}

/// A city's fleet after a server crash: 2,000 SDK couriers (one `locus-sim`) at a fix a
/// second, locusd killed with -9 and restarted. The whole fleet reconnects at once, spread only
/// by the SDK's jittered back-off, with token checks on: the connected-clients gauge comes back
/// to 2,000 and every fix the couriers reported is committed exactly once. The time to full
/// reconnection is printed (a figure for the README, not a timed assertion).
#[test]
fn two_thousand_couriers_reconnect_after_locusd_is_killed_and_every_fix_is_acked() {
    const COURIERS: usize = 2_000;
    let mut server = LocusServer::start();
    let work = tempfile::tempdir().expect("temp dir");
    // 2,000 fsyncs a second would measure the test machine's disk, not the fleet.
    let extra = ["--no-fsync", "--flush-timeout-s", "120"];
    let sim = spawn_fleet(&server, work.path(), COURIERS, 1000, 25, &extra);
    let all_connected = |server: &LocusServer, what: &str| {
        locus_tests::wait_for(what, || {
            (server.metric("locus_mqtt_connected_clients") == COURIERS as f64).then_some(())
        })
    };
    all_connected(&server, "the fleet connected");
    sim.wait_reported(COURIERS * 3);

    server.kill9();
    let down_from = sim.reported_count();
    sim.wait_reported(down_from + COURIERS);
    let restarted = Instant::now();
    server.restart();
    all_connected(&server, "the fleet reconnected after the restart");
    eprintln!(
        "{COURIERS} couriers reconnected {:?} after locusd was restarted",
        restarted.elapsed()
    );
    assert_eq!(server.metric("locus_mqtt_connection_rate_refused_total"), 0.0);
    assert_eq!(server.metric("locus_mqtt_auth_refused_total"), 0.0);

    let (code, stdout) = sim.finish();
    assert_eq!(code, Some(0), "{stdout}");
    let reported = reported(&stdout);
    assert_eq!(reported.len(), COURIERS);
    let total: usize = reported.values().map(Vec::len).sum();
    assert_eq!(last_line(&stdout), (total as u64, total as u64));
    assert_tracks_match(&server, &reported);
}

#[test]
fn locusd_stopped_while_the_app_reports_then_back_delivers_exactly_once() {
    reports_survive_an_outage(2, 20, 8, (50, 100), |server| {
        assert!(server.stop(), "locusd exits 0 on SIGTERM");
    });
}

#[test]
fn sdk_killed_mid_send_and_restarted_on_its_outbox_loses_and_duplicates_nothing() {
    let server = LocusServer::start();
    let work = tempfile::tempdir().expect("temp dir");
    let ids = sim_ids(2);
    let tokens = tokens_file(&server, work.path(), &ids);
    let outboxes = work.path().join("outboxes");
    let args =
        ["--couriers", "2", "--interval-ms", "5", "--duration-s", "60", "--batch-max-fixes", "5"];
    let sim =
        Running::spawn(sim_command(&server.mqtt.to_string(), &outboxes, Some(&tokens), &args));
    sim.wait_reported(400);
    let first = reported(&sim.kill9());

    // The same outboxes, no new fixes: deliver what the killed run left.
    let output = run_to_end(sim_command(
        &server.mqtt.to_string(),
        &outboxes,
        Some(&tokens),
        &["--couriers", "2", "--duration-s", "0"],
    ));
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert_eq!(last_line(&stdout).0, 0);

    for (courier, logged) in &first {
        let track = server.track_ts(courier);
        let unique: HashSet<u64> = track.iter().copied().collect();
        assert_eq!(unique.len(), track.len(), "{courier}: a fix committed twice");
        assert!(track.windows(2).all(|w| w[0] < w[1]), "{courier}: track out of order");
        // Every fix the app was told is durable arrived.
        let missing: Vec<_> = logged.iter().filter(|ts| !unique.contains(ts)).collect();
        assert!(missing.is_empty(), "{courier}: lost {missing:?}");
        // At most the one fix that was durable but not yet logged when the kill came, and it is
        // newer than everything logged.
        let extra: Vec<_> = track.iter().filter(|ts| !logged.contains(ts)).collect();
        assert!(extra.len() <= 1, "{courier}: unexpected fixes {extra:?}");
        assert!(extra.iter().all(|ts| Some(*ts) > logged.last()), "{courier}: stray fix {extra:?}");
    }
}

/// Reports while the broker is unreachable, with a bound of 20 fixes; returns the reported
/// timestamps and the summary lines.
fn fill_offline(outboxes: &Path, tokens: &Path, policy: &str) -> (Vec<u64>, String) {
    // A port nobody listens on: the SDK queues everything.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let output = run_to_end(sim_command(
        &nowhere,
        outboxes,
        Some(tokens),
        &[
            "--couriers",
            "1",
            "--interval-ms",
            "5",
            "--fixes-per-courier",
            "50",
            "--duration-s",
            "60",
            "--outbox-max-fixes",
            "20",
            "--when-full",
            policy,
            "--flush-timeout-s",
            "1",
        ],
    ));
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "not everything acked: {stdout}");
    let logged = reported(&stdout).remove("sim-0").unwrap_or_default();
    (logged, stdout)
}

#[test]
fn outbox_bound_holds_with_either_policy() {
    let server = LocusServer::start();
    let work = tempfile::tempdir().expect("temp dir");
    let tokens = tokens_file(&server, work.path(), &sim_ids(1));

    // Refuse new: the first 20 are kept, 30 refused.
    let refuse = work.path().join("refuse");
    let (logged, stdout) = fill_offline(&refuse, &tokens, "refuse-new");
    assert!(stdout.contains("queued=20 dropped=0 refused=30"), "{stdout}");
    assert_eq!(last_line(&stdout), (20, 0));
    assert_eq!(logged.len(), 20);
    let deliver = |outboxes: &Path| {
        let output = run_to_end(sim_command(
            &server.mqtt.to_string(),
            outboxes,
            Some(&tokens),
            &["--couriers", "1", "--duration-s", "0"],
        ));
        let stdout = text(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{stdout}");
        assert_eq!(last_line(&stdout), (0, 20));
    };
    deliver(&refuse);
    assert_eq!(server.track_ts("sim-0"), logged);

    // Drop oldest: all 50 accepted, the newest 20 kept.
    let drop = work.path().join("drop");
    let (logged, stdout) = fill_offline(&drop, &tokens, "drop-oldest");
    assert!(stdout.contains("queued=20 dropped=30 refused=0"), "{stdout}");
    assert_eq!(last_line(&stdout), (50, 0));
    assert_eq!(logged.len(), 50);
    let before = server.track_ts("sim-0");
    deliver(&drop);
    let track = server.track_ts("sim-0");
    assert_eq!(track[before.len()..], logged[30..]);
}

#[test]
fn a_wrong_token_is_a_clear_error_not_a_retry_loop() {
    let server = LocusServer::start();
    let work = tempfile::tempdir().expect("temp dir");
    let tokens = work.path().join("tokens.txt");
    std::fs::write(&tokens, "sim-0 not-the-token\n").expect("tokens file");
    let output = run_to_end(sim_command(
        &server.mqtt.to_string(),
        &work.path().join("outboxes"),
        Some(&tokens),
        &["--couriers", "1", "--duration-s", "5"],
    ));
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("refused the credentials of courier sim-0"), "{stderr}");
    assert!(server.track_ts("sim-0").is_empty());
}

/// An MQTT-aware TCP relay in front of locusd that forwards everything except the `drop_nth`
/// PUBLISH (counting from 1) from client to server, the way a broker that drops under
/// pressure loses a message. A test double on purpose: no real broker here drops one chosen
/// message on demand.
struct DroppingRelay {
    addr: std::net::SocketAddr,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

fn dropping_relay(upstream: std::net::SocketAddr, drop_nth: usize) -> DroppingRelay {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind(("127.0.0.1", free_port())).expect("relay port");
    let addr = listener.local_addr().expect("relay address");
    let publishes = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let dropped_count = Arc::clone(&dropped);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let Ok(mut server) = std::net::TcpStream::connect(upstream) else { continue };
            let (mut client_out, mut server_in) =
                (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server_in, &mut client_out);
            });
            let (publishes, dropped) = (Arc::clone(&publishes), Arc::clone(&dropped_count));
            std::thread::spawn(move || {
                // One MQTT packet at a time: a fixed-header byte, the remaining length (a varint
                // of up to 4 bytes), the rest.
                loop {
                    let mut packet = vec![0u8; 1];
                    if client.read_exact(&mut packet).is_err() {
                        break;
                    }
                    let (mut length, mut shift) = (0usize, 0);
                    loop {
                        let mut byte = [0u8];
                        if client.read_exact(&mut byte).is_err() {
                            return;
                        }
                        packet.push(byte[0]);
                        length |= usize::from(byte[0] & 0x7f) << shift;
                        shift += 7;
                        if byte[0] & 0x80 == 0 || shift > 21 {
                            break;
                        }
                    }
                    let start = packet.len();
                    packet.resize(start + length, 0);
                    if client.read_exact(&mut packet[start..]).is_err() {
                        break;
                    }
                    if packet[0] >> 4 == 3
                        && publishes.fetch_add(1, Ordering::SeqCst) + 1 == drop_nth
                    {
                        dropped.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    if server.write_all(&packet).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    DroppingRelay { addr, dropped }
}

/// A report lost on the way (here: dropped by a relay) while later ones get through: the
/// server stores the later ones, its ack stays below the gap, the SDK sends what is unacked
/// again when acks stop advancing, and the late report is stored, not taken for a duplicate.
#[test]
fn a_report_lost_in_transit_is_resent_by_the_sdk_and_stored_after_later_ones() {
    let server = LocusServer::start();
    let relay = dropping_relay(server.mqtt, 5);
    let work = tempfile::tempdir().expect("temp dir");
    let ids = sim_ids(1);
    let tokens = tokens_file(&server, work.path(), &ids);
    let output = run_to_end(sim_command(
        &relay.addr.to_string(),
        &work.path().join("outboxes"),
        Some(&tokens),
        &[
            "--couriers",
            "1",
            "--interval-ms",
            "20",
            "--fixes-per-courier",
            "40",
            "--duration-s",
            "5",
            "--batch-max-fixes",
            "1",
            "--ack-timeout-ms",
            "1000",
        ],
    ));
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert_eq!(relay.dropped.load(std::sync::atomic::Ordering::SeqCst), 1, "one report dropped");
    assert_eq!(last_line(&stdout), (40, 40));
    let reported = reported(&stdout);
    assert_eq!(reported.values().map(Vec::len).sum::<usize>(), 40);
    assert_tracks_match(&server, &reported);
}

/// `text` without terminal colour codes (`ESC [ ... m`), for quoting log lines.
fn without_ansi_codes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Under load, locusd is killed with -9 again and again at moments that vary between runs:
/// no acked fix is lost, nothing is committed twice, and every restart recovers from the
/// last checkpoint plus a short stretch of log (the times are printed).
#[test]
fn locusd_killed_again_and_again_under_load_loses_no_acked_fix() {
    let mut server = LocusServer::start();
    let work = tempfile::tempdir().expect("temp dir");
    let sim = spawn_fleet(&server, work.path(), 20, 20, 30, &["--flush-timeout-s", "120"]);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos() as u64
        | 1;
    eprintln!("kill schedule seed {seed}");
    for round in 1..=6 {
        // Under load: more fixes committed since the last start, then a moment that varies.
        let committed = server.metric("locus_fixes_committed_total");
        locus_tests::wait_for("fixes committed since the restart", || {
            (server.metric("locus_fixes_committed_total") >= committed + 300.0).then_some(())
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 1_000));
        server.kill9();
        let started = Instant::now();
        server.restart();
        let log = server.log();
        let replayed: String = log
            .lines()
            .find(|l| l.contains("replayed the commit log"))
            .and_then(|l| l.rsplit("entries").next())
            .map_or_else(|| "none".into(), without_ansi_codes);
        eprintln!(
            "restart {round}: healthy after {:?}; log entries replayed: {replayed}",
            started.elapsed()
        );
    }
    let run_started = Instant::now();
    let (code, stdout) = sim.finish();
    eprintln!("the simulator finished {:?} after the last restart", run_started.elapsed());
    assert_eq!(code, Some(0), "{stdout}");
    let reported = reported(&stdout);
    let total: usize = reported.values().map(Vec::len).sum();
    assert_eq!(last_line(&stdout), (total as u64, total as u64));
    assert_tracks_match(&server, &reported);
    eprintln!("{total} fixes checked {:?} after the last restart", run_started.elapsed());
}
