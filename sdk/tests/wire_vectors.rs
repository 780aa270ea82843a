//! Checks the test vectors in `wire-vectors.json` (documented in `WIRE.md`) both ways:
//! hex → message → JSON, and JSON → message → hex. Vectors with `refused` are well-formed wire
//! bytes carrying an out-of-range value (a fix's field, an order event's id or details): they
//! decode, and JSON → wire refuses them, naming the field.

use locus_sdk::wire::{self, json::MessageJson, Message};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    name: String,
    hex: String,
    json: serde_json::Value,
    /// The JSON field that JSON → wire refuses (the vector is out of range).
    #[serde(default)]
    refused: Option<String>,
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("../wire-vectors.json")).expect("wire-vectors.json parses")
}

#[test]
fn hex_decodes_to_json() {
    for v in vectors() {
        let bytes = hex::decode(&v.hex).unwrap();
        let message = wire::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let json = serde_json::to_value(MessageJson::from(&message)).unwrap();
        assert_eq!(json, v.json, "{}", v.name);
        // Out-of-range vectors are exactly the ones the server's checks refuse: a fix's range
        // check, an event's problems.
        let out_of_range = match &message {
            Message::Report(report) => report.fixes.iter().any(|f| f.out_of_range().is_some()),
            Message::Ack(_) => false,
            Message::Event(event) => event.problem().is_some(),
            Message::EdgeBatch(batch) => batch.fixes.iter().any(|f| f.out_of_range().is_some()),
        };
        assert_eq!(out_of_range, v.refused.is_some(), "{}", v.name);
    }
}

#[test]
fn json_encodes_to_hex() {
    for v in vectors() {
        let json: MessageJson = serde_json::from_value(v.json.clone()).unwrap();
        match (Message::try_from(&json), &v.refused) {
            (Ok(message), None) => {
                assert_eq!(hex::encode(wire::encode(&message)), v.hex, "{}", v.name)
            }
            (Err(e), Some(field)) => assert_eq!(&e.field, field, "{}", v.name),
            (result, _) => panic!("{}: {result:?}", v.name),
        }
    }
}

#[test]
fn the_vectors_cover_what_a_reimplementation_gets_wrong() {
    let all = vectors();
    let bytes: Vec<Vec<u8>> = all.iter().map(|v| hex::decode(&v.hex).unwrap()).collect();
    // A byte above 127 in a varint (seq 128 = 80 01) and in the raw u8 battery (200 = c8).
    assert!(all.iter().any(|v| v.hex.starts_with("01008001")));
    assert!(all.iter().any(|v| v.json["fixes"][0]["battery"] == 200 && v.hex.contains("01c800")));
    // Every optional field set, in a valid vector.
    let every_field = ["accuracy", "speed", "heading", "battery", "order"];
    assert!(all.iter().filter(|v| v.refused.is_none()).any(|v| {
        v.json["fixes"].as_array().is_some_and(|fixes| {
            fixes.iter().any(|f| every_field.iter().all(|k| f.get(k).is_some()))
        })
    }));
    assert!(bytes.iter().all(|b| b[0] == wire::VERSION));
    // Order events: both kinds, with and without details, and each field an event can get
    // wrong refused.
    let events: Vec<&Vector> = all.iter().filter(|v| v.json.get("event").is_some()).collect();
    for kind in ["picked_up", "delivered"] {
        assert!(events.iter().any(|v| v.refused.is_none() && v.json["event"] == kind), "{kind}");
    }
    let valid = || events.iter().filter(|v| v.refused.is_none());
    assert!(valid().any(|v| v.json.get("details").is_some_and(|d| d.is_object())));
    assert!(valid().any(|v| v.json.get("details").is_none()));
    for field in ["order", "event_id", "details_text"] {
        assert!(events.iter().any(|v| v.refused.as_deref() == Some(field)), "{field}");
    }
}
