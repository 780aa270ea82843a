//! MQTT topic names: the only module that formats or parses them.
//!
//! | topic                        | direction          | payload              |
//! |------------------------------|--------------------|----------------------|
//! | `couriers/{courier}/locations` | device → server  | [`crate::wire::Report`] |
//! | `couriers/{courier}/acks`      | server → device  | [`crate::wire::Ack`] (retained) |
//! | `couriers/{courier}/events`    | device → server  | [`crate::wire::CourierEvent`] (picked up, delivered) |
//! | `orders/{order}/status`        | server → customers | the order's status, JSON (retained) |
//! | `orders/{order}/location`      | server → customers | the active order's position, JSON (retained) |
//! | `edge/{edge}/batches`          | edge → server      | [`crate::wire::EdgeBatch`] (fixes posted over HTTP) |
//! | `fixes/{courier}`              | server → readers   | the live fix stream, JSON |
//! | `fixes-wire/{courier}`         | server → readers   | the live fix stream, [`crate::wire::FixBatch`] |

use alloc::format;
use alloc::string::String;

/// Filter the server subscribes to for location reports from every courier.
pub const ALL_LOCATIONS: &str = "couriers/+/locations";

/// Filter the server subscribes to for order events from every courier.
pub const ALL_EVENTS: &str = "couriers/+/events";

/// Filter the server subscribes to for batches from every edge component.
pub const ALL_EDGE_BATCHES: &str = "edge/+/batches";

/// Longest courier or order id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Topic a courier publishes its location reports on.
pub fn locations(courier: &str) -> String {
    format!("couriers/{courier}/locations")
}

/// Topic the server publishes a courier's acks on.
pub fn acks(courier: &str) -> String {
    format!("couriers/{courier}/acks")
}

/// Topic a courier publishes order events on.
pub fn events(courier: &str) -> String {
    format!("couriers/{courier}/events")
}

/// Topic customers subscribe to for an order's status.
pub fn order_status(order: &str) -> String {
    format!("orders/{order}/status")
}

/// Topic customers subscribe to for an active order's position.
pub fn order_location(order: &str) -> String {
    format!("orders/{order}/location")
}

/// Topic of the live fix stream: every fix locusd commits for `courier`, after plugins, as
/// JSON, for readers (other teams' consumers).
pub fn fixes(courier: &str) -> String {
    format!("fixes/{courier}")
}

/// Filter for every courier's live fix stream.
pub const ALL_FIXES: &str = "fixes/+";

/// Topic of the live fix stream in the wire format ([`crate::wire::FixBatch`]): the same
/// fixes as [`fixes`], postcard instead of JSON.
pub fn fixes_wire(courier: &str) -> String {
    format!("fixes-wire/{courier}")
}

/// Filter for every courier's live fix stream in the wire format.
pub const ALL_FIXES_WIRE: &str = "fixes-wire/+";

/// Topic an edge component publishes the fixes posted to it on.
pub fn edge_batches(edge: &str) -> String {
    format!("edge/{edge}/batches")
}

/// The edge id in an `edge/{edge}/batches` topic, if the topic is one and the id is valid.
pub fn edge_of_batches(topic: &str) -> Option<&str> {
    let edge = topic.strip_prefix("edge/")?.strip_suffix("/batches")?;
    is_valid_id(edge).then_some(edge)
}

/// The courier id in a `couriers/{courier}/events` topic, if the topic is one and the id is
/// valid.
pub fn courier_of_events(topic: &str) -> Option<&str> {
    let courier = topic.strip_prefix("couriers/")?.strip_suffix("/events")?;
    is_valid_id(courier).then_some(courier)
}

/// The courier id in a `couriers/{courier}/locations` topic, if the topic is one and the id is
/// valid.
pub fn courier_of_locations(topic: &str) -> Option<&str> {
    let courier = topic.strip_prefix("couriers/")?.strip_suffix("/locations")?;
    is_valid_id(courier).then_some(courier)
}

/// Whether `id` can be used as a courier or order id: 1 to [`MAX_ID_LEN`] bytes of ASCII
/// letters, digits, `-`, `_`, `.` and `:`. This keeps ids safe inside topics (no `/`, `+`, `#`),
/// URLs and storage keys.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_courier_topics() {
        assert_eq!(courier_of_locations(&locations("c-1")), Some("c-1"));
        assert_eq!(courier_of_locations("couriers/c-1/acks"), None);
        assert_eq!(courier_of_locations("couriers//locations"), None);
        assert_eq!(courier_of_locations("couriers/a/b/locations"), None);
        assert_eq!(courier_of_locations("couriers/a+b/locations"), None);
        assert_eq!(courier_of_events(&events("c-1")), Some("c-1"));
        assert_eq!(courier_of_events(&locations("c-1")), None);
        assert_eq!(courier_of_locations(&events("c-1")), None);
        assert_eq!(courier_of_events("couriers//events"), None);
        assert_eq!(courier_of_events("couriers/a/b/events"), None);
        assert_eq!(fixes("c-1"), "fixes/c-1");
        assert_eq!(edge_of_batches(&edge_batches("web-1")), Some("web-1"));
        assert_eq!(edge_of_batches("edge/a/b/batches"), None);
        assert_eq!(edge_of_batches("edge//batches"), None);
    }

    #[test]
    fn id_rules() {
        assert!(is_valid_id("sim-0"));
        assert!(is_valid_id("a.b:c_d"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("has space"));
        assert!(!is_valid_id(&"x".repeat(MAX_ID_LEN + 1)));
    }
}
