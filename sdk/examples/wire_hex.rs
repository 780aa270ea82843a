//! Prints the hex encoding of a JSON message read from stdin (used to write test vectors).
use locus_sdk::wire::{self, json::MessageJson, Message};
use std::io::Read;

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).expect("read stdin");
    let json: MessageJson = serde_json::from_str(&input).expect("a JSON message");
    let message = Message::try_from(&json).expect("fits the wire format");
    let bytes = wire::encode(&message);
    println!("{} ({} bytes)", hex::encode(&bytes), bytes.len());
}
