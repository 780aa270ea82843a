//! Listener addresses in TOML and on the command line: `"HOST:PORT"`, or `"off"` for none (TOML
//! has no null, and an absent key means the default). Shared by the `[mqtt]` and `[http]`
//! sections and the command line.

use serde::{Deserialize, Deserializer, Serializer};
use std::net::SocketAddr;

/// The word that turns a listener off.
pub const OFF: &str = "off";

/// Parses `"HOST:PORT"` (an IP address and a port) or `"off"`.
pub fn parse(text: &str) -> Result<Option<SocketAddr>, String> {
    if text.trim().eq_ignore_ascii_case(OFF) {
        return Ok(None);
    }
    text.trim().parse().map(Some).map_err(|_| {
        format!(
            "invalid listen address `{text}`: expected IP:PORT (e.g. 127.0.0.1:1883) or \"off\""
        )
    })
}

pub(crate) fn serialize<S: Serializer>(
    addr: &Option<SocketAddr>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match addr {
        Some(addr) => serializer.collect_str(addr),
        None => serializer.serialize_str(OFF),
    }
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(serde::de::Error::custom)
}
