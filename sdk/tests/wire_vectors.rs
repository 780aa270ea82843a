//! Checks the test vectors in `wire-vectors.json` (documented in `WIRE.md`) both ways:
//! hex → message → JSON, and JSON → message → hex.

use locus_sdk::wire::{self, json::MessageJson, Message};

#[derive(serde::Deserialize)]
struct Vector {
    name: String,
    hex: String,
    json: serde_json::Value,
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
    }
}

#[test]
fn json_encodes_to_hex() {
    for v in vectors() {
        let json: MessageJson = serde_json::from_value(v.json.clone()).unwrap();
        let message = Message::try_from(&json).unwrap();
        assert_eq!(hex::encode(wire::encode(&message)), v.hex, "{}", v.name);
    }
}
