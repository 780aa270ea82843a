//! Notifications of order events against real processes: a locusd with `[notify]` rules, a
//! local SMTP sink (Python's aiosmtpd, installed by `scripts/test.sh`) that gets the maker's
//! email, and a local webhook receiver (a Python `http.server`) that is down while the events
//! happen and while locusd is killed with -9, then comes up and gets every notification,
//! signed, with one idempotency key per notification.

use hmac::{Hmac, Mac};
use locus_sdk::wire::{CourierEvent, CourierEventKind};
use locus_tests::{free_port, now_ms, wait_for, LocusServer, TestCourier};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A process that ends with the test, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's python3, which has aiosmtpd from `python3-aiosmtpd` (a pyenv `python3` first on
/// the PATH may not).
const PYTHON: &str = "/usr/bin/python3";

/// An SMTP sink on `port` printing every mail it receives to `out`.
fn smtp_sink(port: u16, out: &Path) -> Process {
    let child = Command::new(PYTHON)
        .args(["-u", "-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with aiosmtpd (scripts/test.sh installs python3-aiosmtpd)");
    wait_for("the SMTP sink", || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    Process(child)
}

/// A webhook receiver on `port` answering 200 and writing each request to `log` as a JSON
/// line: `{"path","headers" (lower-case names),"body"}`.
fn webhook_receiver(port: u16, log: &Path) -> Process {
    let script = r#"
import http.server, json, sys
log = open(sys.argv[2], "a")
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        log.write(json.dumps({"path": self.path, "headers": headers, "body": body.decode()}) + "\n")
        log.flush()
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
"#;
    let child = Command::new(PYTHON)
        .args(["-c", script, &port.to_string()])
        .arg(log)
        .spawn()
        .expect("python3");
    wait_for("the webhook receiver", || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    Process(child)
}

/// The requests the receiver logged.
fn received(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().map(|line| serde_json::from_str(line).expect("a logged request")).collect()
}

/// Whether `header` (`t=…,v1=…`) signs `body` with [`SECRET`], computed here from the
/// documented scheme (HMAC-SHA256 of "{t}.{body}"), not with locusd's code.
fn signed(header: &str, body: &str) -> bool {
    let fields: BTreeMap<&str, &str> =
        header.split(',').filter_map(|f| f.split_once('=')).collect();
    let (Some(t), Some(v1)) = (fields.get("t"), fields.get("v1")) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    hex::encode(mac.finalize().into_bytes()) == *v1
}

#[test]
fn the_maker_gets_an_email_and_a_webhook_down_for_a_while_and_across_kill_9_gets_every_event() {
    let (webhook_port, smtp_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let (mail_out, hook_log) = (dir.path().join("mail.txt"), dir.path().join("hooks.jsonl"));
    let _smtp = smtp_sink(smtp_port, &mail_out);
    let config = format!(
        r#"
[notify]
webhook_secret = "{SECRET}"
backoff_initial_ms = 100
backoff_max_ms = 500
max_attempts = 1000
[[notify.rules]]
on = ["placed"]
email = "maker@bakery.test"
[[notify.rules]]
on = ["ready", "picked_up", "delivered", "feedback"]
webhook = "http://127.0.0.1:{webhook_port}/locus"
[notify.smtp]
host = "127.0.0.1"
port = {smtp_port}
from = "Locus <orders@locus.test>"
tls = "none"
"#
    );
    let mut server = LocusServer::start_with(false, Some(&config));
    let merchant = server.token_command(&["issue", "--role", "merchant", "bakery"]);
    let post = |server: &LocusServer, body: Value| {
        let (status, body) = server.post("/v1/orders/o1/events", &merchant, &body);
        assert_eq!(status, 200, "{body}");
        body
    };
    let placed = json!({
        "event": "placed",
        "event_id": "p1",
        "details": {"items": ["chocolate cake"], "address": "Carrer de Mallorca 401"},
    });
    post(&server, placed.clone());
    post(&server, json!({"event": "ready", "event_id": "r1"}));
    post(&server, json!({"event": "assigned", "event_id": "a1", "courier": "c1"}));
    // A resent event notifies nobody again.
    assert_eq!(post(&server, placed)["applied"], false);

    // The courier's own events notify like the merchant's.
    let token = server.issue_token("c1");
    let mut c1 = TestCourier::connect(server.mqtt, "c1", Some(&token)).unwrap();
    for (seq, kind, id) in
        [(1, CourierEventKind::PickedUp, "c1-p"), (2, CourierEventKind::Delivered, "c1-d")]
    {
        let event = CourierEvent {
            seq,
            order: "o1".into(),
            kind,
            event_id: id.into(),
            at_ms: now_ms(),
            details: None,
        };
        c1.publish_event(&event);
        c1.wait_ack(seq);
    }
    post(&server, json!({"event": "feedback", "event_id": "f1", "details": {"stars": 5}}));

    // The maker's email arrives, naming the order, what is in it and where it goes.
    let mail = wait_for("the maker's email", || {
        let mail = std::fs::read_to_string(&mail_out).unwrap_or_default();
        mail.contains("chocolate cake").then_some(mail)
    });
    assert!(mail.contains("maker@bakery.test"), "{mail}");
    assert!(mail.contains("o1") && mail.contains("Carrer de Mallorca 401"), "{mail}");

    // The receiver is down: four webhook deliveries wait, retried with their errors.
    let pending = wait_for("four retried webhook deliveries", || {
        let (_, listed) = server.get("/v1/notifications?state=pending");
        let pending = listed["notifications"].as_array().cloned().unwrap_or_default();
        let retried = pending.iter().filter(|d| d["attempts"].as_u64() >= Some(1)).count();
        (pending.len() == 4 && retried == 4).then_some(pending)
    });
    assert!(pending.iter().all(|d| d["channel"] == "webhook" && !d["last_error"].is_null()));

    // kill -9 while they are still pending: nothing is lost.
    server.kill9();
    server.restart();
    let _receiver = webhook_receiver(webhook_port, &hook_log);
    let requests = wait_for("every webhook at the receiver", || {
        let requests = received(&hook_log);
        let events: BTreeSet<String> = requests
            .iter()
            .map(|r| r["headers"]["locus-event"].as_str().unwrap_or_default().to_owned())
            .collect();
        (events.len() == 4).then_some(requests)
    });
    wait_for("no delivery left pending", || {
        let listed = server.get_ok("/v1/notifications");
        listed["notifications"].as_array().is_some_and(|all| all.is_empty()).then_some(())
    });
    let requests = received(&hook_log).into_iter().chain(requests).collect::<Vec<_>>();

    // Each signed, each notification under one key (a repeat, if any, carries the same key).
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for request in &requests {
        let headers = &request["headers"];
        let body = request["body"].as_str().unwrap();
        assert_eq!(request["path"], "/locus");
        assert_eq!(headers["content-type"], "application/json");
        let signature = headers["locus-signature"].as_str().expect("a signature");
        assert!(signed(signature, body), "bad signature {signature} for {body}");
        let notice: Value = serde_json::from_str(body).unwrap();
        let key = headers["idempotency-key"].as_str().expect("a key").to_owned();
        let event_id = notice["event"]["event_id"].as_str().unwrap().to_owned();
        assert_eq!(keys.entry(key).or_insert_with(|| event_id.clone()), &event_id);
    }
    let notified: Vec<&str> =
        keys.values().map(String::as_str).collect::<BTreeSet<_>>().into_iter().collect();
    assert_eq!(notified, ["c1-d", "c1-p", "f1", "r1"], "one key per notification: {keys:?}");
    let feedback = requests
        .iter()
        .map(|r| serde_json::from_str::<Value>(r["body"].as_str().unwrap()).unwrap())
        .find(|notice| notice["event"]["event"] == "feedback")
        .unwrap();
    assert_eq!(feedback["event"]["details"]["stars"], 5);
    assert_eq!(feedback["status"], "delivered");
    assert_eq!(server.metric("locus_notifications_pending"), 0.0);
    let mail = std::fs::read_to_string(&mail_out).unwrap();
    let mails = mail.lines().filter(|l| l.to_ascii_lowercase().starts_with("message-id:")).count();
    assert_eq!(mails, 1, "one email for the placed order, none for its resend: {mail}");
}
