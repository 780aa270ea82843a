//! `locusd wire encode|decode`: JSON ⇄ wire bytes, so any MQTT client can publish reports and
//! order events. Every message kind goes through `locus_sdk::wire::json::MessageJson`.

use anyhow::Context as _;
use clap::Subcommand;
use locus_sdk::wire::{self, json::MessageJson, Message};
use std::io::{Read as _, Write as _};

#[derive(Debug, Subcommand)]
pub(super) enum WireCommand {
    /// Read a JSON message on stdin, write its wire bytes on stdout.
    Encode {
        /// Write hex text instead of raw bytes.
        #[arg(long)]
        hex: bool,
    },
    /// Read wire bytes on stdin, write the message as JSON on stdout.
    Decode {
        /// Read hex text instead of raw bytes.
        #[arg(long)]
        hex: bool,
    },
}

/// What `locusd wire encode` does with its stdin: a JSON message to wire bytes, refusing values
/// outside their documented ranges (`sdk/WIRE.md`).
pub fn encode_json(input: &[u8]) -> anyhow::Result<Vec<u8>> {
    let json: MessageJson = serde_json::from_slice(input).context(
        "stdin is not a Locus message as JSON (a report is \
         {\"seq\":1,\"fixes\":[{\"ts\":1763700000000,\"lat\":41.3851,\"lon\":2.1734}]}, \
         an ack is {\"seq\":1}, an order event is \
         {\"seq\":2,\"order\":\"o-1\",\"event\":\"delivered\",\"event_id\":\"e-1\",\
         \"at\":1763700000000,\"details\":{\"signed_by\":\"Ana\"}})",
    )?;
    let message = Message::try_from(&json)?;
    Ok(wire::encode(&message))
}

impl WireCommand {
    pub(super) fn run(self) -> anyhow::Result<()> {
        let mut input = Vec::new();
        std::io::stdin().read_to_end(&mut input).context("reading stdin")?;
        let mut stdout = std::io::stdout().lock();
        match self {
            WireCommand::Encode { hex } => {
                let bytes = encode_json(&input)?;
                if hex {
                    writeln!(stdout, "{}", ::hex::encode(bytes))?;
                } else {
                    stdout.write_all(&bytes)?;
                }
            }
            WireCommand::Decode { hex } => {
                let bytes = if hex {
                    let text = String::from_utf8(input).context("stdin is not hex text")?;
                    ::hex::decode(text.trim()).context("stdin is not hex text")?
                } else {
                    input
                };
                let message = wire::decode(&bytes).context("stdin is not a Locus wire message")?;
                serde_json::to_writer(&mut stdout, &MessageJson::from(&message))?;
                writeln!(stdout)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_order_events_and_refuses_bad_ones_naming_the_field() {
        let event = br#"{"seq":2,"order":"o-1","event":"delivered","event_id":"e-1",
                         "at":1763700000000,"details":{"signed_by":"Ana"}}"#;
        let bytes = encode_json(event).unwrap();
        let decoded = wire::decode_event(&bytes).unwrap();
        assert_eq!((decoded.seq, decoded.kind.as_str()), (2, "delivered"));
        assert_eq!(decoded.details.as_deref(), Some(r#"{"signed_by":"Ana"}"#));
        let json = serde_json::to_value(MessageJson::from(&wire::decode(&bytes).unwrap())).unwrap();
        assert_eq!(json["details"]["signed_by"], "Ana");

        let bad_order = br#"{"seq":2,"order":"o/1","event":"delivered","event_id":"e-1","at":1}"#;
        let err = encode_json(bad_order).unwrap_err().to_string();
        assert!(err.starts_with("order:"), "{err}");
        let unknown = br#"{"seq":2,"order":"o-1","event":"lost","event_id":"e-1","at":1}"#;
        let err = format!("{:#}", encode_json(unknown).unwrap_err());
        assert!(err.contains("an order event is"), "{err}");
    }
}
