use super::*;
use crate::metrics::ChannelLabel;
use crate::orders::{notice_json, EventKind, EventSource, Order, OrderEvent};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn event(id: &str, kind: EventKind) -> OrderEvent {
    OrderEvent {
        event_id: id.to_owned(),
        kind,
        at_ms: 1_765_000_000_000,
        actor: "merchant:bakery".to_owned(),
        courier: None,
        details: None,
    }
}

fn placed_event() -> OrderEvent {
    let mut placed = event("p1", EventKind::Placed);
    placed.details = Some(
        r#"{"items":["cake",{"name":"bread","quantity":2}],"address":"Carrer 1, Barcelona"}"#
            .to_owned(),
    );
    placed
}

fn placed_order() -> (Order, OrderEvent) {
    let placed = placed_event();
    (Order::place("o1", placed.clone(), EventSource::Api).unwrap(), placed)
}

fn parse(text: &str) -> NotifyConfig {
    let config: NotifyConfig = toml::from_str(text).unwrap();
    config.check().unwrap();
    config
}

/// The issue's example: the maker hears of new orders, the delivery company of ready ones,
/// customer service of feedback.
fn issue_rules(webhook_base: &str) -> String {
    format!(
        r#"
        webhook_secret = "{SECRET}"
        [[rules]]
        on = ["placed"]
        email = "maker@example.com"
        [[rules]]
        on = ["ready", "cancelled"]
        webhook = "{webhook_base}/dispatch"
        [[rules]]
        on = ["feedback"]
        webhook = "{webhook_base}/service"
        [[rules]]
        on = ["placed", "cancelled"]
        email = "maker@example.com"
        [smtp]
        host = "127.0.0.1"
        from = "Locus <orders@example.com>"
        tls = "none"
        "#
    )
}

#[test]
fn rules_match_event_kinds_with_one_delivery_per_target() {
    let rules = Rules::new(&parse(&issue_rules("https://partner.example.com")));
    let (order, placed) = placed_order();

    let made = rules.deliveries_for(&order, &placed, 1_765_000_000_123);
    assert_eq!(made.len(), 1, "two rules name the maker for `placed`: one mail");
    let mail = &made[0];
    assert_eq!((mail.channel, mail.target.as_str()), (Channel::Email, "maker@example.com"));
    assert_eq!((mail.order.as_str(), mail.event_id.as_str()), ("o1", "p1"));
    assert_eq!(mail.event, EventKind::Placed);
    assert_eq!((mail.state, mail.attempts), (DeliveryState::Pending, 0));
    assert_eq!((mail.created_ms, mail.next_attempt_ms), (1_765_000_000_123, 1_765_000_000_123));
    let notice: serde_json::Value = serde_json::from_str(&mail.body).unwrap();
    assert_eq!(notice, notice_json(&order, &placed));
    let text = mail.email.as_ref().expect("an email has a subject and text");
    assert_eq!(text.subject, "New order o1");
    for words in ["Items:", "  - cake", "  - 2 x bread", "Address: Carrer 1, Barcelona"] {
        assert!(text.text.contains(words), "{words:?} missing from\n{}", text.text);
    }
    assert!(text.text.contains("2025-12-06 05:46:40 UTC"), "{}", text.text);
    assert!(text.text.ends_with(&format!("{}\n", mail.body)), "the notice JSON closes the mail");

    let mut ready_order = order.clone();
    ready_order.apply(event("r1", EventKind::Ready), EventSource::Api).unwrap();
    let made = rules.deliveries_for(&ready_order, &event("r1", EventKind::Ready), 5);
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].channel, Channel::Webhook);
    assert_eq!(made[0].target, "https://partner.example.com/dispatch");
    assert!(made[0].email.is_none());

    let cancelled = rules.deliveries_for(&order, &event("c1", EventKind::Cancelled), 5);
    let targets: Vec<&str> = cancelled.iter().map(|d| d.target.as_str()).collect();
    assert_eq!(targets, ["https://partner.example.com/dispatch", "maker@example.com"]);
    assert!(rules.deliveries_for(&order, &event("d1", EventKind::Delivered), 5).is_empty());
    assert!(Rules::new(&NotifyConfig::default()).is_empty());
}

#[test]
fn idempotency_keys_are_stable_per_event_and_target() {
    let rules = Rules::new(&parse(&issue_rules("https://partner.example.com")));
    let (order, placed) = placed_order();
    let first = rules.deliveries_for(&order, &placed, 1);
    let again = rules.deliveries_for(&order, &placed, 99);
    assert_eq!(first[0].idempotency_key, again[0].idempotency_key, "not tied to the time");
    assert_eq!(first[0].idempotency_key, idempotency_key("o1", "p1", "maker@example.com"));
    assert_eq!(first[0].idempotency_key.len(), 32);
    assert!(first[0].idempotency_key.chars().all(|c| c.is_ascii_hexdigit()));
    let others = [
        idempotency_key("o1", "p2", "maker@example.com"),
        idempotency_key("o2", "p1", "maker@example.com"),
        idempotency_key("o1", "p1", "other@example.com"),
        // The parts are separated: moving a character between them changes the key.
        idempotency_key("o1p", "1", "maker@example.com"),
    ];
    for other in others {
        assert_ne!(other, first[0].idempotency_key);
    }
}

#[test]
fn config_errors_name_the_key_and_the_fix() {
    let refused = |text: &str| {
        let config: NotifyConfig = toml::from_str(text).unwrap();
        config.check().unwrap_err().to_string()
    };
    let webhook = "[[rules]]\non = [\"ready\"]\nwebhook = \"https://x.example.com/h\"\n";
    let err = refused(webhook);
    assert!(err.contains("notify.webhook_secret") && err.contains("openssl rand -hex 32"), "{err}");
    let err = refused(&format!("webhook_secret = \"short\"\n{webhook}"));
    assert!(err.contains("notify.webhook_secret") && err.contains("at least 32"), "{err}");
    let err = refused("[[rules]]\non = []\nemail = \"a@example.com\"\n[smtp]\nhost = \"h\"\nfrom = \"a@example.com\"\n");
    assert!(err.contains("notify.rules[0].on"), "{err}");
    let err = refused("[[rules]]\non = [\"placed\"]\n");
    assert!(err.contains("notify.rules[0]") && err.contains("neither webhook nor email"), "{err}");
    let both = "[[rules]]\non = [\"placed\"]\nwebhook = \"https://x.example.com\"\nemail = \"a@example.com\"\n";
    assert!(refused(both).contains("both webhook and email"));
    let err = refused("[[rules]]\non = [\"placed\"]\nwebhook = \"ftp://x.example.com\"\n");
    assert!(err.contains("notify.rules[0].webhook") && err.contains("http or https"), "{err}");
    let err = refused("[[rules]]\non = [\"placed\"]\nwebhook = \"dispatch.example.com\"\n");
    assert!(err.contains("notify.rules[0].webhook"), "{err}");
    let mail = "[[rules]]\non = [\"placed\"]\nemail = \"maker.example.com\"\n";
    assert!(refused(mail).contains("notify.rules[0].email"));
    let err = refused("[[rules]]\non = [\"placed\"]\nemail = \"maker@example.com\"\n");
    assert!(err.contains("notify.smtp") && err.contains("host and from"), "{err}");
    let smtp =
        "[[rules]]\non = [\"placed\"]\nemail = \"maker@example.com\"\n[smtp]\nhost = \"h\"\n";
    assert!(refused(&format!("{smtp}from = \"nobody\"\n")).contains("notify.smtp.from"));
    let err = refused(&format!("{smtp}from = \"a@example.com\"\nusername = \"u\"\n"));
    assert!(err.contains("notify.smtp.password"), "{err}");
    assert!(refused("max_attempts = 0").contains("notify.max_attempts"));
    let err = refused("backoff_initial_ms = 10\nbackoff_max_ms = 5");
    assert!(err.contains("notify.backoff_max_ms"), "{err}");
    assert!(refused("concurrent_attempts = 0").contains("notify.concurrent_attempts"));
    // Typos are refused by serde, naming the key; unknown event kinds list the known ones.
    let err = toml::from_str::<NotifyConfig>("max_atempts = 3").unwrap_err().to_string();
    assert!(err.contains("max_atempts"), "{err}");
    let err = toml::from_str::<NotifyConfig>("[[rules]]\non = [\"shipped\"]\nemail = \"a@b.c\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("shipped") && err.contains("picked_up"), "{err}");
    // The defaults work, and no rules need no secret and no server.
    NotifyConfig::default().check().unwrap();
    let config = parse(&issue_rules("http://127.0.0.1:9"));
    assert_eq!(config.smtp.as_ref().unwrap().port(), 25);
    assert!(!format!("{config:?}").contains(SECRET), "Debug never prints the secret");
}

#[test]
fn backoff_doubles_to_its_cap_with_full_jitter() {
    let policy =
        RetryPolicy { max_attempts: 12, backoff_initial_ms: 1_000, backoff_max_ms: 300_000 };
    let ceilings: Vec<u64> = (1..=12).map(|failures| policy.ceiling_ms(failures)).collect();
    assert_eq!(
        ceilings,
        [
            1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000, 300_000,
            300_000
        ]
    );
    // Far past the cap nothing overflows.
    assert_eq!(policy.ceiling_ms(200), 300_000);
    assert_eq!(policy.ceiling_ms(u32::MAX), 300_000);
    for failures in [1, 3, 10, 40] {
        let ceiling = policy.ceiling_ms(failures);
        let delays: Vec<u64> = (0..500).map(|_| policy.delay_ms(failures)).collect();
        assert!(delays.iter().all(|d| *d <= ceiling), "a delay over {ceiling}: {delays:?}");
        // Full jitter: spread over the whole range, not bunched at the top.
        assert!(delays.iter().any(|d| *d < ceiling / 4), "no low delay for {failures}");
        assert!(delays.iter().any(|d| *d > ceiling / 4 * 3), "no high delay for {failures}");
    }
}

#[test]
fn signatures_match_an_independent_computation() {
    let body = br#"{"order":"o1","status":"placed"}"#;
    // Computed with Python's hmac and with `openssl dgst -sha256 -hmac` (the README's snippets).
    assert_eq!(
        signature(SECRET.as_bytes(), 1_765_000_000, body),
        "t=1765000000,v1=85b12623598b752235e48455051570e2cc250418056d06c65a812ed9afb14171"
    );
    assert_ne!(
        signature(b"another secret", 1_765_000_000, body),
        signature(SECRET.as_bytes(), 1_765_000_000, body)
    );
    assert_ne!(
        signature(SECRET.as_bytes(), 1_765_000_001, body),
        signature(SECRET.as_bytes(), 1_765_000_000, body)
    );
}

#[test]
fn utc_times_read_as_dates() {
    assert_eq!(email::utc(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(email::utc(1_765_000_000_999), "2025-12-06 05:46:40 UTC");
    assert_eq!(email::utc(1_709_251_199_000), "2024-02-29 23:59:59 UTC");
}

/// A store in a temporary directory and its deliveries.
struct Fixture {
    dir: tempfile::TempDir,
    store: Option<(Store, Arc<Deliveries>)>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut fixture = Fixture { dir, store: None };
        fixture.open();
        fixture
    }

    fn open(&mut self) {
        let store = Store::reopen_in_test(self.dir.path(), Default::default());
        let deliveries = Arc::new(Deliveries::open(store.notifications_tree()).unwrap());
        self.store = Some((store, deliveries));
    }

    fn store(&self) -> &Store {
        &self.store.as_ref().unwrap().0
    }

    fn deliveries(&self) -> &Arc<Deliveries> {
        &self.store.as_ref().unwrap().1
    }

    /// Closes and opens the store again, as a restart would (sled allows one open database).
    fn reopen(&mut self) {
        let (store, deliveries) = self.store.take().unwrap();
        assert_eq!(Arc::strong_count(&deliveries), 1, "a sender still holds the deliveries");
        store.flush().unwrap();
        drop((store, deliveries));
        self.open();
    }

    /// What the intake and the store do for an event: stage its deliveries and write them in
    /// one transaction. Returns the ids, not yet durable.
    fn commit(&self, new: Vec<Delivery>) -> Vec<u64> {
        let staged = self.deliveries().stage(new);
        let tree = self.store().notifications_tree();
        tree.transaction(|tx| {
            for (id, value) in &staged {
                tx.insert(&deliveries::key(*id), value.as_slice())?;
            }
            Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
        })
        .unwrap();
        staged.iter().map(|(id, _)| *id).collect()
    }
}

fn webhook_delivery(rules: &Rules) -> Vec<Delivery> {
    let (order, placed) = placed_order();
    let made = rules.deliveries_for(&order, &placed, locus_sdk::wire::now_ms());
    assert_eq!(made.len(), 1);
    made
}

fn webhook_config(url: &str, max_attempts: u32) -> NotifyConfig {
    parse(&format!(
        r#"
        webhook_secret = "{SECRET}"
        max_attempts = {max_attempts}
        backoff_initial_ms = 5
        backoff_max_ms = 20
        request_timeout_ms = 2000
        [[rules]]
        on = ["placed"]
        webhook = "{url}"
        "#
    ))
}

const POLICY: RetryPolicy =
    RetryPolicy { max_attempts: 3, backoff_initial_ms: 1, backoff_max_ms: 1 };

#[test]
fn nothing_staged_is_due_before_it_is_durable() {
    let fixture = Fixture::new();
    let rules = Rules::new(&webhook_config("http://127.0.0.1:9/hook", 3));
    let ids = fixture.commit(webhook_delivery(&rules));
    let later = locus_sdk::wire::now_ms() + 60_000;
    assert!(fixture.deliveries().take_due(later, 10, 4).is_empty(), "staged is not durable");
    assert_eq!(fixture.deliveries().pending(), 0);
    assert!(fixture.deliveries().list(&all()).unwrap().is_empty(), "listed only once durable");
    assert!(matches!(fixture.deliveries().replay(ids[0], later), Err(ReplayError::Unknown(_))));

    fixture.deliveries().durable_through(ids[0]);
    assert_eq!(fixture.deliveries().pending(), 1);
    let due = fixture.deliveries().take_due(later, 10, 4);
    assert_eq!(due.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    assert!(fixture.deliveries().take_due(later, 10, 4).is_empty(), "in flight: taken once");
    assert!(matches!(fixture.deliveries().replay(ids[0], later), Err(ReplayError::Pending(_))));
}

fn all() -> ListFilter {
    ListFilter { limit: 1000, ..ListFilter::default() }
}

#[test]
fn one_target_does_not_take_every_slot() {
    let fixture = Fixture::new();
    let rules = Rules::new(&parse(&issue_rules("http://127.0.0.1:9")));
    let (order, placed) = placed_order();
    let mut ids = Vec::new();
    // Five notices to the dispatch webhook, then one to customer service.
    for i in 0..5 {
        let cancelled = event(&format!("c{i}"), EventKind::Cancelled);
        let made: Vec<Delivery> = rules
            .deliveries_for(&order, &cancelled, 1)
            .into_iter()
            .filter(|d| d.channel == Channel::Webhook)
            .collect();
        ids.extend(fixture.commit(made));
    }
    ids.extend(fixture.commit(rules.deliveries_for(&order, &event("f", EventKind::Feedback), 1)));
    ids.extend(fixture.commit(rules.deliveries_for(&order, &placed, 1)));
    fixture.deliveries().durable_through(*ids.last().unwrap());
    assert_eq!(fixture.deliveries().pending(), 7);

    let taken = fixture.deliveries().take_due(10, 10, 2);
    let targets: Vec<&str> = taken.iter().map(|(_, d)| d.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            "http://127.0.0.1:9/dispatch",
            "http://127.0.0.1:9/dispatch",
            "http://127.0.0.1:9/service",
            "maker@example.com"
        ],
        "at most 2 per target, oldest first, the others not held up"
    );
    // A slot of the dispatch webhook frees up: its next delivery goes, in id order.
    fixture.deliveries().finish(taken[0].0, Ok(()), &POLICY, 10).unwrap();
    let next = fixture.deliveries().take_due(10, 10, 2);
    assert_eq!(next.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [ids[2]]);
}

#[test]
fn failures_back_off_then_die_and_replays_revive_them() {
    let fixture = Fixture::new();
    let rules = Rules::new(&parse(&issue_rules("http://127.0.0.1:9")));
    let (order, placed) = placed_order();
    let ids = fixture.commit(rules.deliveries_for(&order, &placed, 100));
    fixture.deliveries().durable_through(ids[0]);
    let policy = RetryPolicy { max_attempts: 3, backoff_initial_ms: 1_000, backoff_max_ms: 1_000 };
    let mut now = 100;
    for attempt in 1..=3 {
        let due = fixture.deliveries().take_due(now, 1, 4);
        assert_eq!(due.len(), 1, "attempt {attempt}");
        let (id, _) = due[0];
        assert_eq!(id, ids[0]);
        let (finished, after) = fixture
            .deliveries()
            .finish(id, Err(format!("HTTP 500 #{attempt}")), &policy, now)
            .unwrap()
            .unwrap();
        assert_eq!(after.attempts, attempt);
        assert_eq!(after.last_error.as_deref(), Some(format!("HTTP 500 #{attempt}").as_str()));
        match finished {
            Finished::Retry { at_ms } => {
                assert!(attempt < 3 && (now..=now + 1_000).contains(&at_ms), "{at_ms}");
                assert!(
                    fixture.deliveries().take_due(now - 1, 10, 4).iter().all(|(i, _)| *i != id),
                    "not due before its back-off"
                );
                now = at_ms;
            }
            Finished::Dead => assert_eq!(attempt, 3),
            Finished::Delivered => panic!("not delivered"),
        }
    }
    let dead = ListFilter { state: Some(DeliveryState::Dead), ..all() };
    let listed = fixture.deliveries().list(&dead).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].0, listed[0].1.attempts), (ids[0], 3));
    assert!(fixture.deliveries().take_due(u64::MAX - 1, 10, 4).iter().all(|(i, _)| *i != ids[0]));

    let revived = fixture.deliveries().replay(ids[0], 5_000).unwrap();
    assert_eq!(
        (revived.state, revived.attempts, revived.next_attempt_ms),
        (DeliveryState::Pending, 0, 5_000)
    );
    assert!(matches!(fixture.deliveries().replay(ids[0], 5_000), Err(ReplayError::Pending(_))));
    assert!(matches!(fixture.deliveries().replay(9_999, 5_000), Err(ReplayError::Unknown(9_999))));
    let due = fixture.deliveries().take_due(5_000, 10, 4);
    assert!(due.iter().any(|(id, _)| *id == ids[0]));
    let (finished, _) =
        fixture.deliveries().finish(ids[0], Ok(()), &policy, 5_000).unwrap().unwrap();
    assert_eq!(finished, Finished::Delivered);
    assert!(fixture.deliveries().get(ids[0]).unwrap().is_none(), "delivered = removed");
}

#[test]
fn replaying_an_orders_dead_letters_leaves_the_others_dead() {
    let fixture = Fixture::new();
    let rules = Rules::new(&parse(&issue_rules("http://127.0.0.1:9")));
    let (order, placed) = placed_order();
    let mut other_order = order.clone();
    other_order.id = "o2".to_owned();
    let mut ids = fixture.commit(rules.deliveries_for(&order, &placed, 1));
    ids.extend(fixture.commit(rules.deliveries_for(&other_order, &placed, 1)));
    fixture.deliveries().durable_through(ids[1]);
    let once = RetryPolicy { max_attempts: 1, ..POLICY };
    for (id, _) in fixture.deliveries().take_due(1, 10, 4) {
        fixture.deliveries().finish(id, Err("refused".to_owned()), &once, 1).unwrap();
    }
    assert_eq!(fixture.deliveries().pending(), 0);
    assert_eq!(fixture.deliveries().replay_dead(Some("o2"), 2).unwrap(), [ids[1]]);
    let of = |order: &str, state| {
        let filter = ListFilter { order: Some(order.to_owned()), state: Some(state), ..all() };
        fixture.deliveries().list(&filter).unwrap().len()
    };
    assert_eq!((of("o1", DeliveryState::Dead), of("o2", DeliveryState::Pending)), (1, 1));
    assert_eq!(fixture.deliveries().replay_dead(None, 3).unwrap(), [ids[0]]);
    assert_eq!(fixture.deliveries().pending(), 2);
    // Paging: one at a time, after the last id seen.
    let page = ListFilter { limit: 1, after: ids[0], ..ListFilter::default() };
    assert_eq!(fixture.deliveries().list(&page).unwrap()[0].0, ids[1]);
}

#[test]
fn deliveries_survive_reopening_the_store() {
    let mut fixture = Fixture::new();
    let rules = Rules::new(&parse(&issue_rules("http://127.0.0.1:9")));
    let (order, placed) = placed_order();
    let failing = fixture.commit(rules.deliveries_for(&order, &placed, 1))[0];
    let dying =
        fixture.commit(rules.deliveries_for(&order, &event("f", EventKind::Feedback), 1))[0];
    let delivered =
        fixture.commit(rules.deliveries_for(&order, &event("r", EventKind::Ready), 1))[0];
    fixture.deliveries().durable_through(delivered);
    let policy = RetryPolicy { max_attempts: 2, backoff_initial_ms: 1, backoff_max_ms: 1 };
    fixture.deliveries().take_due(1, 10, 4);
    fixture.deliveries().finish(failing, Err("first".to_owned()), &policy, 1).unwrap();
    let once = RetryPolicy { max_attempts: 1, ..policy };
    fixture.deliveries().finish(dying, Err("gone".to_owned()), &once, 1).unwrap();
    fixture.deliveries().finish(delivered, Ok(()), &policy, 1).unwrap();
    // Staged but never durable: its event's commit is flushed with it or lost with it; here
    // the test wrote it, so after a restart it counts as durable like everything in the tree.
    let staged = fixture.commit(rules.deliveries_for(&order, &event("f2", EventKind::Feedback), 1));

    fixture.reopen();
    let deliveries = fixture.deliveries();
    assert_eq!(deliveries.pending(), 2, "the failed one and the staged one are pending again");
    let kept = deliveries.get(failing).unwrap().unwrap();
    assert_eq!(
        (kept.state, kept.attempts, kept.last_error.as_deref()),
        (DeliveryState::Pending, 1, Some("first"))
    );
    let dead = deliveries.get(dying).unwrap().unwrap();
    assert_eq!((dead.state, dead.last_error.as_deref()), (DeliveryState::Dead, Some("gone")));
    assert!(deliveries.get(delivered).unwrap().is_none());
    assert!(deliveries.get(staged[0]).unwrap().is_some());
    // New ids go on above every id kept.
    let next = fixture.commit(rules.deliveries_for(&order, &event("f3", EventKind::Feedback), 1));
    assert!(next[0] > staged[0]);
    let mut due: Vec<u64> =
        fixture.deliveries().take_due(u64::MAX - 1, 10, 4).iter().map(|(id, _)| *id).collect();
    due.sort_unstable();
    assert_eq!(due, [failing, staged[0]], "the new one waits for durable_through");
}

/// An HTTP receiver on a free port: records every request, answers with the statuses queued
/// (then 200).
#[derive(Default)]
struct Receiver {
    requests: Mutex<Vec<(HeaderMap, Bytes)>>,
    answers: Mutex<VecDeque<StatusCode>>,
}

impl Receiver {
    async fn start(listener: tokio::net::TcpListener, answers: &[StatusCode]) -> Arc<Receiver> {
        let receiver = Arc::new(Receiver {
            requests: Mutex::default(),
            answers: Mutex::new(answers.iter().copied().collect()),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(Receiver::hook))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    async fn hook(
        State(receiver): State<Arc<Receiver>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, &'static str) {
        receiver.requests.lock().unwrap().push((headers, body));
        match receiver.answers.lock().unwrap().pop_front() {
            Some(status) => (status, "receiver is down for maintenance"),
            None => (StatusCode::OK, "thanks"),
        }
    }

    fn requests(&self) -> Vec<(HeaderMap, Bytes)> {
        self.requests.lock().unwrap().clone()
    }
}

async fn free_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Polls `done` every 10 ms for up to 20 s.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(20), "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
}

/// What a receiver does with `Locus-Signature`, computed here on its own: the HMAC of
/// "<t>.<body>" with the secret, compared in constant time, and `t` close to now.
fn receiver_accepts(signature_header: &str, body: &[u8]) -> bool {
    use hmac::Mac as _;
    let Some((t, v1)) = signature_header
        .split_once(',')
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
    else {
        return false;
    };
    let Ok(t_secs) = t.parse::<u64>() else { return false };
    let now = locus_sdk::wire::now_ms() / 1000;
    if now.abs_diff(t_secs) > 300 {
        return false;
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    hex::decode(v1).is_ok_and(|sent| mac.verify_slice(&sent).is_ok())
}

fn count(
    family: &prometheus_client::metrics::family::Family<
        ChannelLabel,
        prometheus_client::metrics::counter::Counter,
    >,
    channel: &'static str,
) -> u64 {
    family.get_or_create(&ChannelLabel { channel }).get()
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test]
async fn a_webhook_is_retried_until_its_receiver_says_yes_and_arrives_signed() {
    let listener = free_listener().await;
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let failures = [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::SERVICE_UNAVAILABLE];
    let receiver = Receiver::start(listener, &failures).await;
    let fixture = Fixture::new();
    let config = webhook_config(&url, 5);
    let metrics = Arc::new(Metrics::new());
    let sender = start(fixture.deliveries().clone(), config.clone(), metrics.clone()).unwrap();

    let made = webhook_delivery(&Rules::new(&config));
    let expected_body = made[0].body.clone();
    let key = made[0].idempotency_key.clone();
    let ids = fixture.commit(made);
    // Staged and written, not durable: the sender leaves it alone (a wrong sender would
    // have posted within a few ms: the receiver is local and the delivery due at once).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.requests().is_empty(), "attempted before its event was durable");

    fixture.deliveries().durable_through(ids[0]);
    wait_until("delivered", || fixture.deliveries().get(ids[0]).unwrap().is_none()).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "two refusals, then delivered once");
    for (headers, body) in &requests {
        assert_eq!(header(headers, "content-type"), "application/json");
        assert_eq!(header(headers, "idempotency-key"), key, "the same key on every attempt");
        assert_eq!(header(headers, "locus-event"), "placed");
        assert!(receiver_accepts(header(headers, "locus-signature"), body), "bad signature");
        assert!(!receiver_accepts(header(headers, "locus-signature"), b"{}"), "signs the body");
        assert_eq!(body, expected_body.as_bytes());
    }
    let notice: serde_json::Value = serde_json::from_slice(&requests[2].1).unwrap();
    assert_eq!(
        (notice["order"].as_str(), notice["event"]["event"].as_str()),
        (Some("o1"), Some("placed"))
    );
    assert_eq!(count(&metrics.notifications_delivered, "webhook"), 1);
    assert_eq!(count(&metrics.notification_failures, "webhook"), 2);
    assert_eq!(count(&metrics.notifications_dead, "webhook"), 0);
    wait_until("pending gauge at 0", || metrics.notifications_pending.get() == 0).await;
    let text = metrics.encode();
    assert!(text.contains("locus_notifications_delivered_total{channel=\"webhook\"} 1"), "{text}");
    sender.abort();
}

#[tokio::test]
async fn a_webhook_nobody_answers_dies_and_a_replay_delivers_it() {
    // A port with nobody listening on it (yet).
    let port = free_listener().await.local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let fixture = Fixture::new();
    let config = webhook_config(&url, 3);
    let metrics = Arc::new(Metrics::new());
    let sender = start(fixture.deliveries().clone(), config.clone(), metrics.clone()).unwrap();
    let made = webhook_delivery(&Rules::new(&config));
    let key = made[0].idempotency_key.clone();
    let id = fixture.commit(made)[0];
    fixture.deliveries().durable_through(id);

    let is_dead =
        || fixture.deliveries().get(id).unwrap().is_some_and(|d| d.state == DeliveryState::Dead);
    wait_until("dead", is_dead).await;
    let dead = fixture.deliveries().get(id).unwrap().unwrap();
    assert_eq!(dead.attempts, 3);
    let error = dead.last_error.unwrap();
    assert!(error.to_lowercase().contains("connect"), "{error}");
    assert_eq!(count(&metrics.notification_failures, "webhook"), 3);
    assert_eq!(count(&metrics.notifications_dead, "webhook"), 1);
    assert_eq!(fixture.deliveries().pending(), 0);

    // The receiver comes up; the operator replays the dead letter.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let receiver = Receiver::start(listener, &[]).await;
    let replayed = fixture.deliveries().replay(id, locus_sdk::wire::now_ms()).unwrap();
    assert_eq!(replayed.attempts, 0);
    wait_until("delivered after the replay", || fixture.deliveries().get(id).unwrap().is_none())
        .await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(header(&requests[0].0, "idempotency-key"), key, "a replay keeps the key");
    assert!(receiver_accepts(header(&requests[0].0, "locus-signature"), &requests[0].1));
    assert_eq!(count(&metrics.notifications_delivered, "webhook"), 1);
    sender.abort();
}

#[tokio::test]
async fn pending_deliveries_go_after_a_restart() {
    let listener = free_listener().await;
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = Receiver::start(listener, &[]).await;
    let mut fixture = Fixture::new();
    let config = webhook_config(&url, 3);
    // Committed and durable while no sender runs (the server died before attempting it).
    let id = fixture.commit(webhook_delivery(&Rules::new(&config)))[0];
    fixture.deliveries().durable_through(id);
    fixture.reopen();

    let metrics = Arc::new(Metrics::new());
    let sender = start(fixture.deliveries().clone(), config, metrics).unwrap();
    wait_until("delivered after the restart", || fixture.deliveries().get(id).unwrap().is_none())
        .await;
    assert_eq!(receiver.requests().len(), 1);
    sender.abort();
}

/// A Python with aiosmtpd, if this machine has one.
fn python_with_aiosmtpd() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

/// Ends the SMTP server when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn an_email_arrives_at_a_real_smtp_server() {
    let Some(python) = python_with_aiosmtpd() else {
        eprintln!(
            "SKIPPED an_email_arrives_at_a_real_smtp_server: no Python with aiosmtpd \
             (apt-get install python3-aiosmtpd, or pip install aiosmtpd)"
        );
        return;
    };
    let port = free_listener().await.local_addr().unwrap().port();
    let out = tempfile::NamedTempFile::new().unwrap();
    // The default handler prints every message it receives.
    let server = Child(
        std::process::Command::new(python)
            .args(["-u", "-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .stdout(out.reopen().unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    within("the SMTP server listening", async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let config = parse(&format!(
        r#"
        max_attempts = 3
        backoff_initial_ms = 5
        backoff_max_ms = 20
        request_timeout_ms = 5000
        [[rules]]
        on = ["placed"]
        email = "maker@example.com"
        [smtp]
        host = "127.0.0.1"
        port = {port}
        from = "Locus <orders@example.com>"
        tls = "none"
        "#
    ));
    let fixture = Fixture::new();
    let metrics = Arc::new(Metrics::new());
    let sender = start(fixture.deliveries().clone(), config.clone(), metrics.clone()).unwrap();
    let (order, placed) = placed_order();
    let made = Rules::new(&config).deliveries_for(&order, &placed, locus_sdk::wire::now_ms());
    let key = made[0].idempotency_key.clone();
    let body = made[0].body.clone();
    let id = fixture.commit(made)[0];
    fixture.deliveries().durable_through(id);
    wait_until("mail accepted", || fixture.deliveries().get(id).unwrap().is_none()).await;
    assert_eq!(count(&metrics.notifications_delivered, "email"), 1);
    sender.abort();

    let printed = || std::fs::read_to_string(out.path()).unwrap();
    within("the mail printed", async {
        while !printed().contains("END MESSAGE") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(server);
    // Quoted-printable: long lines are cut with a soft break ("=" at the end of the line).
    let mail = printed().replace("=\n", "");
    for words in [
        "To: maker@example.com",
        "Subject: New order o1",
        "From: Locus <orders@example.com>",
        &format!("Message-ID: <{key}@example.com>"),
        "Order o1 was placed.\n\nItems:\n  - cake\n  - 2 x bread\nAddress: Carrer 1, Barcelona\n",
        &body,
    ] {
        assert!(mail.contains(words), "{words:?} not in the mail:\n{mail}");
    }
}

#[tokio::test]
async fn smtp_transports_build_for_every_tls_mode() {
    for tls in ["none", "starttls", "tls"] {
        let config = parse(&format!(
            "[[rules]]\non = [\"placed\"]\nemail = \"maker@example.com\"\n\
             [smtp]\nhost = \"smtp.example.com\"\nfrom = \"orders@example.com\"\n\
             username = \"u\"\npassword = \"p\"\ntls = \"{tls}\"\n"
        ));
        let smtp = config.smtp.as_ref().unwrap();
        email::EmailSender::new(smtp, Duration::from_secs(1)).unwrap();
        let expected = match tls {
            "none" => 25,
            "starttls" => 587,
            _ => 465,
        };
        assert_eq!(smtp.port(), expected);
    }
}

#[tokio::test]
async fn a_delivery_whose_channel_is_no_longer_configured_dies_saying_why() {
    // Made while [notify.smtp] existed, attempted after a restart without it.
    let fixture = Fixture::new();
    let with_smtp = parse(&issue_rules("http://127.0.0.1:9"));
    let (order, placed) = placed_order();
    let id = fixture.commit(Rules::new(&with_smtp).deliveries_for(&order, &placed, 1))[0];
    fixture.deliveries().durable_through(id);
    let without = parse("max_attempts = 2\nbackoff_initial_ms = 1\nbackoff_max_ms = 2\n");
    let metrics = Arc::new(Metrics::new());
    let sender = start(fixture.deliveries().clone(), without, metrics.clone()).unwrap();
    let is_dead =
        || fixture.deliveries().get(id).unwrap().is_some_and(|d| d.state == DeliveryState::Dead);
    wait_until("dead", is_dead).await;
    let error = fixture.deliveries().get(id).unwrap().unwrap().last_error.unwrap();
    assert!(error.contains("[notify.smtp]") && error.contains("replay"), "{error}");
    assert_eq!(count(&metrics.notifications_dead, "email"), 1);
    sender.abort();
}
