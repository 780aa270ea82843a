//! The fuzz targets, one test each (see `fuzz/README.md`). Each runs for `LOCUS_FUZZ_SECONDS`
//! (default 2) and fails on the first panic, printing the input as hex.
//!
//! Every target calls the functions the server and CLI use on untrusted input, and checks the
//! properties they promise beyond not panicking.

use axum::extract::Query;
use axum::http::{HeaderValue, Uri};
use bytes::Bytes;
use locus_broker::api::{DeadLetterQuery, TrackQuery};
use locus_broker::cli::{replay, wire as wire_cli};
use locus_broker::config::PipelineConfig;
use locus_broker::metrics::Metrics;
use locus_broker::pipeline::{validate, Intake};
use locus_broker::plugins::{scaffold, PluginSettings};
use locus_broker::store::{
    Commit, DeadLetter, DeadLetterReason, DeadLetterSource, RecordBuilder, Store,
};
use locus_fuzz::{Outcome, Target};
use locus_sdk::wire::{self, json::MessageJson, Fix, FixDetails, Message, Report};
use std::sync::Arc;

/// The device time of the test vectors; "now" for the validator target is near it.
const VECTOR_TS: u64 = 1_763_700_000_000;

#[derive(serde::Deserialize)]
struct Vector {
    hex: String,
    json: serde_json::Value,
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("../../sdk/wire-vectors.json")).expect("wire-vectors.json")
}

fn vector_bytes() -> Vec<Vec<u8>> {
    vectors().iter().map(|v| hex::decode(&v.hex).expect("vector hex")).collect()
}

fn vector_json() -> Vec<Vec<u8>> {
    vectors().iter().map(|v| v.json.to_string().into_bytes()).collect()
}

/// Tokens for JSON inputs: syntax, edge numbers, and the names of fields.
fn json_dictionary() -> Vec<&'static str> {
    vec![
        "\"",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "null",
        "true",
        "false",
        "-",
        "-0",
        "0.0",
        "1e309",
        "-1e309",
        "NaN",
        "1.7976931348623157e308",
        "5e-324",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "4294967296",
        "65536",
        "255",
        "256",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"seq\"",
        "\"fixes\"",
        "\"ts\"",
        "\"lat\"",
        "\"lon\"",
        "\"accuracy\"",
        "\"speed\"",
        "\"heading\"",
        "\"battery\"",
        "\"order\"",
        "\"courier\"",
        "90.0000001",
        "-180.0",
        "359.995",
        "360",
        "100",
        "101",
        "42949672.95",
        "42949672.96",
    ]
}

fn report_with_everything(seq: u64, fixes: usize) -> Report {
    let fix = Fix {
        ts_ms: VECTOR_TS,
        lat_e7: -900_000_000,
        lon_e7: 1_800_000_000,
        details: Some(FixDetails {
            accuracy_cm: Some(u32::MAX),
            speed_cm_s: Some(0),
            heading_cdeg: Some(35_999),
            battery_pct: Some(100),
            order: Some("o".repeat(64)),
        }),
    };
    Report { seq, fixes: vec![fix; fixes] }
}

/// The message with details that hold nothing (`01 00 00 00 00 00`) written as no details (`00`):
/// WIRE.md says both mean the same, and the JSON view cannot tell them apart.
fn without_empty_details(message: &Message) -> Message {
    let mut message = message.clone();
    let fixes = match &mut message {
        Message::Report(report) => &mut report.fixes,
        Message::EdgeBatch(batch) => &mut batch.fixes,
        Message::Ack(_) | Message::Event(_) => return message,
    };
    for fix in fixes {
        if fix.details.as_ref().is_some_and(|d| *d == FixDetails::default()) {
            fix.details = None;
        }
    }
    message
}

/// Whether every fix of the message is inside the ranges WIRE.md documents (an event: its
/// fields follow their rules; a zero seq, like a report's, is the server's to refuse).
fn in_documented_ranges(message: &Message) -> bool {
    match message {
        Message::Report(report) => report.fixes.iter().all(|f| f.out_of_range().is_none()),
        Message::Ack(_) => true,
        Message::EdgeBatch(batch) => batch.fixes.iter().all(|f| f.out_of_range().is_none()),
        Message::Event(event) => {
            wire::CourierEvent { seq: event.seq.max(1), ..event.clone() }.problem().is_none()
        }
    }
}

/// Whether two messages say the same: an event's details are JSON, compared as values (the
/// JSON view writes them compact, whatever spacing and key order they came with).
fn same_message(a: &Message, b: &Message) -> bool {
    match (a, b) {
        (Message::Event(a), Message::Event(b)) => {
            let value = |details: &Option<String>| {
                details.as_deref().map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            };
            let without_details =
                |e: &wire::CourierEvent| wire::CourierEvent { details: None, ..e.clone() };
            without_details(a) == without_details(b) && value(&a.details) == value(&b.details)
        }
        _ => a == b,
    }
}

/// The wire decoder: never panics; the three entry points agree; anything that decodes
/// re-encodes (in as many bytes or fewer) to bytes that decode to the same value; and the JSON
/// view is lossless for messages inside the documented ranges (and refuses the others), up to
/// empty details, which mean no details.
#[test]
fn wire_decode() {
    Target::new("wire_decode", |input: &[u8]| -> Outcome {
        let as_report = wire::decode_report(input);
        let as_ack = wire::decode_ack(input);
        let as_event = wire::decode_event(input);
        let message = match wire::decode(input) {
            Ok(message) => message,
            Err(e) => {
                assert!(
                    as_report.is_err() && as_ack.is_err() && as_event.is_err(),
                    "decode failed but a kind decoded"
                );
                return match e {
                    wire::WireError::Malformed(postcard) => format!("refused:{postcard:?}"),
                    other => format!("refused:{}", other.code()),
                };
            }
        };
        match &message {
            Message::Report(report) => assert_eq!(as_report.as_ref(), Ok(report)),
            Message::Ack(ack) => assert_eq!(as_ack, Ok(*ack)),
            Message::Event(event) => assert_eq!(as_event.as_ref(), Ok(event)),
            Message::EdgeBatch(batch) => {
                assert_eq!(wire::decode_edge_batch(input).as_ref(), Ok(batch))
            }
        }
        let bytes = wire::encode(&message);
        assert_eq!(wire::decode(&bytes).as_ref(), Ok(&message), "re-encoded differs");
        assert!(bytes.len() <= input.len(), "re-encoding is longer than the input");

        let text = serde_json::to_string(&MessageJson::from(&message)).expect("JSON view");
        let parsed: MessageJson = serde_json::from_str(&text).expect("own JSON parses");
        let valid = in_documented_ranges(&message);
        match Message::try_from(&parsed) {
            Ok(back) => {
                assert!(valid, "JSON → wire took an out-of-range message: {text}");
                let expected = without_empty_details(&message);
                assert!(same_message(&back, &expected), "JSON view is lossy: {text}");
            }
            Err(e) => assert!(!valid, "JSON → wire refused a valid message ({e}): {text}"),
        }
        // Which detail fields occur: a stand-in for coverage of the decoder's branches.
        let (fixes, fields) = match &message {
            Message::Report(r) => {
                let fields = r.fixes.iter().filter_map(|f| f.details.as_ref()).fold(0u8, |m, d| {
                    m | u8::from(d.accuracy_cm.is_some())
                        | u8::from(d.speed_cm_s.is_some()) << 1
                        | u8::from(d.heading_cdeg.is_some()) << 2
                        | u8::from(d.battery_pct.is_some()) << 3
                        | u8::from(d.order.is_some()) << 4
                });
                (r.fixes.len().min(3), fields)
            }
            Message::Ack(_) | Message::Event(_) | Message::EdgeBatch(_) => (0, 0),
        };
        format!("{}:{fixes}:{fields}:{valid}", message.kind())
    })
    .seeds(vector_bytes())
    .seeds([
        wire::encode_report(&report_with_everything(u64::MAX, 2)),
        wire::encode_ack(wire::Ack { seq: u64::MAX }),
        wire::encode_event(&wire::CourierEvent {
            seq: u64::MAX,
            order: "o".repeat(64),
            kind: wire::CourierEventKind::Delivered,
            event_id: "e".repeat(64),
            at_ms: u64::MAX,
            details: Some(r#"{"signed_by": "Ana", "photo": [1, 2]}"#.to_owned()),
        }),
    ])
    .run();
}

/// The validator on decoded reports with varied configs and clocks: never panics; what it
/// accepts is inside the documented ranges and the time window; what is outside a documented
/// range is refused; and the pipeline's intake keeps exactly the accepted fixes, with dead
/// letters that hold the payload as received.
#[test]
fn report_validator() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let configs = |selector: u8| {
        let pick =
            |shift: u8, options: &[u64]| options[usize::from(selector >> shift) % options.len()];
        PipelineConfig {
            max_fixes_per_report: pick(0, &[1, 2, 1000]) as usize,
            max_report_bytes: pick(2, &[16, 64, 65_536]) as usize,
            max_future_ms: pick(4, &[0, 60_000, u64::MAX]),
            max_age_ms: pick(6, &[0, 86_400_000, u64::MAX]),
            ..PipelineConfig::default()
        }
    };
    let nows = [VECTOR_TS, VECTOR_TS + 1_000, VECTOR_TS - 1, 0, u64::MAX, VECTOR_TS + 86_400_001];
    let topics = [
        "couriers/c1/locations",
        "couriers/c2/locations",
        "couriers//locations",
        "couriers/c1/acks",
        "couriers/a+b/locations",
    ];
    Target::new("report_validator", |input: &[u8]| -> Outcome {
        let [config_selector, now_selector, topic_selector, payload @ ..] = input else {
            return "short".into();
        };
        let config = configs(*config_selector);
        let now = nows[usize::from(*now_selector) % nows.len()];
        let topic = topics[usize::from(*topic_selector) % topics.len()];

        let mut accepted = 0;
        let mut reasons: Vec<String> = Vec::new();
        let decoded = validate::decode_report(payload, &config);
        match &decoded {
            Ok(report) => {
                assert!(payload.len() <= config.max_report_bytes);
                assert!(report.seq >= 1);
                assert!((1..=config.max_fixes_per_report).contains(&report.fixes.len()));
                assert_eq!(wire::decode_report(payload).as_ref(), Ok(report));
                // A courier has one fix per device millisecond: a second one is refused.
                let mut times = std::collections::HashSet::new();
                for fix in &report.fixes {
                    match validate::check_fix(fix, now, &config) {
                        Ok(()) if !times.insert(fix.ts_ms) => {
                            reasons.push("same_device_time".into())
                        }
                        Ok(()) => {
                            accepted += 1;
                            assert_eq!(fix.out_of_range(), None, "accepted {fix:?}");
                            assert!(fix.ts_ms <= now.saturating_add(config.max_future_ms));
                            assert!(fix.ts_ms >= now.saturating_sub(config.max_age_ms));
                        }
                        Err(problem) => reasons.push(problem.reason().to_string()),
                    }
                }
            }
            Err((problem, _)) => reasons.push(problem.reason().to_string()),
        }

        // The intake, over an empty store: fresh seq, so every accepted fix is kept.
        let mut intake = Intake::new(config.clone(), store.clone(), metrics.clone());
        let publishes = [(Bytes::from(topic), Bytes::copy_from_slice(payload))];
        let built = intake.build(&publishes, now).expect("intake over a working store");
        let commit: &Commit = &built.commit;
        for letter in &commit.dead_letters {
            assert_eq!(letter.payload, payload, "a dead letter holds the payload as received");
        }
        if locus_broker::pipeline::courier_of(topic).is_some() && decoded.is_ok() {
            let kept = commit.record.fixes.len();
            assert_eq!(kept, accepted, "the intake keeps exactly the valid fixes");
            reasons.sort_unstable();
            reasons.dedup();
            assert_eq!(commit.dead_letters.len(), reasons.len(), "one letter per reason");
        }
        reasons.sort_unstable();
        reasons.dedup();
        format!("{}:{}:{}", topic_selector % 5, accepted.min(3), reasons.join(","))
    })
    .seeds(vector_bytes().into_iter().map(|v| [&[0x15, 0, 0][..], &v].concat()))
    .seeds([[&[0x2a, 1, 1][..], &wire::encode_report(&report_with_everything(7, 3))].concat()])
    .run();
}

/// `PUT /v1/plugins/{name}`'s `Locus-Plugin-Settings` header (and `locusd plugin deploy|test
/// --settings`): header value → text → settings → limits check, as the handler does.
#[test]
fn api_plugin_settings_header() {
    Target::new("api_plugin_settings_header", |input: &[u8]| -> Outcome {
        let Ok(value) = HeaderValue::from_bytes(input) else { return "not a header".into() };
        let Ok(text) = value.to_str() else { return "not ascii".into() };
        match serde_json::from_str::<PluginSettings>(text) {
            Err(_) => "refused:json".into(),
            Ok(settings) => match settings.validate() {
                Ok(()) => {
                    let _ = settings.config_pairs();
                    "valid".into()
                }
                Err(_) => "refused:limits".into(),
            },
        }
    })
    .seeds([
        r#"{}"#,
        r#"{"position":5,"config":{"zones":"a:1,2,3"},"failure_policy":"skip"}"#,
        r#"{"limits":{"call_timeout_ms":10000,"max_memory_mib":4096},"capabilities":{"clocks":true}}"#,
        r#"{"position":-2147483648,"failure_policy":"dead-letter","limits":{"call_timeout_ms":0}}"#,
    ])
    .dictionary(json_dictionary())
    .dictionary([
        "\"position\"", "\"config\"", "\"failure_policy\"", "\"limits\"", "\"capabilities\"",
        "\"call_timeout_ms\"", "\"max_memory_mib\"", "\"clocks\"", "\"skip\"", "\"dead-letter\"",
    ])
    .run();
}

/// The query strings of `GET /v1/couriers/{id}/track?since=&until=&limit=` and
/// `GET /v1/dead-letters?after=&limit=`: parsed by axum's `Query` as the handlers do, then the
/// store queries the handlers make with them.
#[test]
fn api_query_strings() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut record = RecordBuilder::new(0);
    for ts in [0, 1, VECTOR_TS, u64::MAX] {
        record.fix("c1", Fix::from_degrees(ts, 1.0, 2.0), vec![]);
    }
    store.commit(Commit { record: record.finish(), ..Commit::default() }).unwrap();
    // Half the track in sled blocks, half in memory.
    store.checkpoint().unwrap();
    let mut record = RecordBuilder::new(0);
    record.fix("c1", Fix::from_degrees(VECTOR_TS + 1, 1.0, 2.0), vec![]);
    store.commit(Commit { record: record.finish(), ..Commit::default() }).unwrap();
    let source = DeadLetterSource::Mqtt { topic: "t".into() };
    let letter = DeadLetter::new(DeadLetterReason::Malformed, source, None, "", vec![], 0);
    store.record_dead_letters(vec![letter.clone(), letter]).unwrap();
    let max_page = locus_broker::config::HttpConfig::default().max_page;

    Target::new("api_query_strings", |input: &[u8]| -> Outcome {
        let [route, query @ ..] = input else { return "short".into() };
        let uri = [b"/v1/x?", query].concat();
        let Ok(uri) = Uri::try_from(uri) else { return "not a uri".into() };
        if route % 2 == 0 {
            let Ok(Query(q)) = Query::<TrackQuery>::try_from_uri(&uri) else {
                return "track:refused".into();
            };
            // As `courier_track` does.
            let limit = q.limit.unwrap_or(1000).clamp(1, max_page);
            let fixes = store.track("c1", q.since, q.until, limit).expect("track query");
            assert!(fixes.len() <= limit);
            assert!(fixes.iter().all(|f| q.since.is_none_or(|s| f.fix.ts_ms >= s)
                && q.until.is_none_or(|u| f.fix.ts_ms <= u)));
            format!("track:{}", fixes.len())
        } else {
            let Ok(Query(q)) = Query::<DeadLetterQuery>::try_from_uri(&uri) else {
                return "page:refused".into();
            };
            // As `dead_letters::list` does.
            let limit = q.limit.unwrap_or(100).clamp(1, max_page);
            let letters = store
                .dead_letters_matching(&q.filter(), q.after.unwrap_or(0), limit)
                .expect("page query");
            assert!(letters.len() <= limit);
            format!("page:{}", letters.len())
        }
    })
    .seeds([
        &b"\x00since=1&until=1763700000000&limit=2"[..],
        b"\x00since=18446744073709551615&until=0",
        b"\x00limit=0",
        b"\x01after=1&limit=1",
        b"\x01after=18446744073709551615",
        b"\x01reason=malformed&source=plugin&plugin=p&courier=c1&since=1&until=2",
        b"\x01source=carrier-pigeon&all=true",
    ])
    .dictionary([
        "since=",
        "until=",
        "limit=",
        "after=",
        "reason=",
        "courier=",
        "source=",
        "plugin=",
        "all=",
        "&",
        "=",
        "%",
        "%00",
        "%ff",
        "+",
        "-1",
        "0",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999",
    ])
    .run();
}

/// `locusd wire encode`'s JSON: whatever it encodes decodes back, is inside the documented
/// ranges, and shows as the same JSON.
#[test]
fn cli_wire_encode_json() {
    Target::new("cli_wire_encode_json", |input: &[u8]| -> Outcome {
        let bytes = match wire_cli::encode_json(input) {
            Ok(bytes) => bytes,
            Err(e) => {
                let kind =
                    if e.to_string().contains("not a Locus message") { "json" } else { "range" };
                return format!("refused:{kind}");
            }
        };
        let message = wire::decode(&bytes).expect("encoded bytes decode");
        assert!(in_documented_ranges(&message), "encoded an out-of-range value");
        let again = serde_json::to_vec(&MessageJson::from(&message)).expect("JSON view");
        assert_eq!(wire_cli::encode_json(&again).expect("own JSON encodes"), bytes);
        message.kind().to_string()
    })
    .seeds(vector_json())
    .dictionary(json_dictionary())
    .run();
}

/// `locusd replay`'s input: a JSON line or a CSV row under a header row (the first input byte
/// picks), parsed and converted as replay does. What converts is inside the documented ranges.
#[test]
fn cli_replay_rows() {
    Target::new("cli_replay_rows", |input: &[u8]| -> Outcome {
        let [format, rest @ ..] = input else { return "short".into() };
        let (kind, parsed) = if format % 2 == 0 {
            let text = String::from_utf8_lossy(rest);
            ("json", replay::JsonLine::parse(text.trim()))
        } else {
            let mut lines = rest.splitn(2, |b| *b == b'\n');
            let header = lines.next().unwrap_or_default();
            let row = lines.next().unwrap_or_default();
            let Ok(headers) = replay::csv_record(header) else { return "csv:no header".into() };
            ("csv", replay::parse_csv(row, &headers))
        };
        let Ok(line) = parsed else { return format!("{kind}:refused") };
        match line.fix.to_wire(0) {
            Ok(fix) => {
                assert_eq!(fix.out_of_range(), None, "converted an out-of-range value");
                format!("{kind}:ok")
            }
            Err(e) => format!("{kind}:{}", e.code),
        }
    })
    .seeds([
        &b"\x00{\"courier\":\"c1\",\"ts\":1763700000000,\"lat\":41.0,\"lon\":2.0,\"speed\":3.5}"[..],
        b"\x00{\"courier\":\"c2\",\"ts\":1,\"lat\":-90,\"lon\":180,\"heading\":359.99,\"battery\":100,\"order\":\"o-9\"}",
        b"\x01courier,ts,lat,lon,accuracy,speed,heading,battery,order\nc1,1763700000000,41.0,2.0,4.5,,270.5,76,o-1",
        b"\x01courier,ts,lat,lon\n\"c1\",1,2,3",
    ])
    .dictionary(json_dictionary())
    .dictionary(["\n", ",", "\"\"", "\r\n"])
    .run();
}

/// `locusd plugin test --input FIXES.json`: parsed and converted as the server would hand the
/// fixes to a plugin.
#[test]
fn cli_plugin_test_fixes() {
    Target::new("cli_plugin_test_fixes", |input: &[u8]| -> Outcome {
        let text = String::from_utf8_lossy(input);
        let Ok(fixes) = scaffold::parse_test_fixes(&text) else { return "refused:json".into() };
        let count = fixes.len().min(3);
        match scaffold::test_fixes_to_pending(fixes) {
            Ok(pending) => {
                assert!(pending.iter().all(|p| p.fix.out_of_range().is_none()));
                format!("ok:{count}")
            }
            Err(_) => format!("refused:{count}"),
        }
    })
    .seeds([
        r#"[{"courier":"c1","ts":1763700000000,"lat":41.3851,"lon":2.1734}]"#,
        r#"[{"courier":"c1","ts":1,"lat":-90,"lon":180,"accuracy":4.5,"speed":0,"heading":0,"battery":100,"order":"o-1","attributes":[["zone","a"]]},{"courier":"c2","ts":2,"lat":0,"lon":0}]"#,
    ])
    .dictionary(json_dictionary())
    .dictionary(["\"attributes\"", "[\"k\",\"v\"]"])
    .run();
}
