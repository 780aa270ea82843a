//! Who may publish and subscribe where: the one topic policy of locusd.
//!
//! Enters: an authenticated courier id and what it asks to do (publish on a topic, subscribe to a
//! filter, leave a last will). Leaves: allowed, or a [`Denial`] that says why.
//!
//! The rules, for a connection authenticated as courier `{id}`:
//!
//! | action    | allowed                                                            |
//! |-----------|--------------------------------------------------------------------|
//! | publish   | `couriers/{id}/locations` and `couriers/{id}/events`, nothing else  |
//! | subscribe | exactly `couriers/{id}/acks` (no wildcards, no `$share/…`)         |
//! | last will | the topics it may publish on                                        |
//!
//! So nobody but locusd writes `couriers/{id}/acks` or anything under `orders/`: locusd publishes
//! through its local link, which the broker trusts (it has no connection settings, so the hook
//! is never asked). A forged ack is what makes this matter: the SDK drops every report up to an
//! ack's seq from its outbox, so one forged ack would erase another courier's unsent reports.
//!
//! The embedded broker asks [`TopicPolicy::check`] through rumqttd's ACL hook (see
//! `vendor/rumqttd/PATCHES.md`); an external broker's auth backend can ask the same function.
//! It runs on the broker's router thread for every publish, so it only compares strings.

use locus_sdk::topics;

/// Client id of locusd's own link into the embedded broker. Not a courier: refused at CONNECT
/// and by `locusd token issue`, so no device can take over the pipeline's session.
pub const PIPELINE_CLIENT_ID: &str = "locusd-pipeline";

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Publish on a topic.
    Publish(&'a str),
    /// Subscribe to a topic filter.
    Subscribe(&'a str),
    /// Store a last will on a topic.
    Will(&'a str),
}

impl Action<'_> {
    /// Stable label, used as the `action` label of `locus_mqtt_denied_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Action::Publish(_) => "publish",
            Action::Subscribe(_) => "subscribe",
            Action::Will(_) => "will",
        }
    }

    /// The topic or filter.
    pub fn topic(&self) -> &str {
        match self {
            Action::Publish(t) | Action::Subscribe(t) | Action::Will(t) => t,
        }
    }
}

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The topic belongs to another courier.
    #[error("topic belongs to another courier")]
    OtherCourier,
    /// Only locusd publishes there (acks, order status).
    #[error("only locusd publishes on this topic")]
    ServerOnly,
    /// Wildcards and shared subscriptions are not allowed to couriers.
    #[error("wildcard or shared subscription")]
    Wildcard,
    /// The courier's own topic, but not for this action (e.g. subscribing to its own locations).
    #[error("not permitted on this topic")]
    NotPermitted,
    /// Not a topic of the Locus topic tree.
    #[error("not a Locus topic")]
    UnknownTopic,
}

/// The topic policy for authenticated couriers.
#[derive(Debug, Clone, Copy, Default)]
pub struct TopicPolicy;

impl TopicPolicy {
    /// Whether courier `courier` may do `action`.
    pub fn check(&self, courier: &str, action: Action<'_>) -> Result<(), Denial> {
        match action {
            Action::Publish(topic) | Action::Will(topic) => may_publish(courier, topic),
            Action::Subscribe(filter) => may_subscribe(courier, filter),
        }
    }
}

fn may_publish(courier: &str, topic: &str) -> Result<(), Denial> {
    if topic == topics::locations(courier) || topic == topics::events(courier) {
        return Ok(());
    }
    Err(classify(courier, topic))
}

fn may_subscribe(courier: &str, filter: &str) -> Result<(), Denial> {
    if filter.starts_with("$share/") || filter.contains(['+', '#']) {
        return Err(Denial::Wildcard);
    }
    if filter == topics::acks(courier) {
        return Ok(());
    }
    Err(classify(courier, filter))
}

/// Why a topic that is not the courier's own is refused (for the log and the metric).
fn classify(courier: &str, topic: &str) -> Denial {
    match topic.split('/').collect::<Vec<_>>().as_slice() {
        ["couriers", owner, "acks"] if *owner == courier => Denial::ServerOnly,
        ["couriers", owner, _] if *owner != courier => Denial::OtherCourier,
        ["couriers", _, _] => Denial::NotPermitted,
        ["orders", ..] => Denial::ServerOnly,
        _ => Denial::UnknownTopic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(courier: &str, action: Action<'_>) -> Result<(), Denial> {
        TopicPolicy.check(courier, action)
    }

    #[test]
    fn a_courier_publishes_only_its_own_reports_and_events() {
        assert_eq!(check("a", Action::Publish("couriers/a/locations")), Ok(()));
        assert_eq!(check("a", Action::Publish("couriers/a/events")), Ok(()));
        assert_eq!(check("a", Action::Publish("couriers/b/locations")), Err(Denial::OtherCourier));
        assert_eq!(check("a", Action::Publish("couriers/b/acks")), Err(Denial::OtherCourier));
        assert_eq!(check("a", Action::Publish("couriers/a/acks")), Err(Denial::ServerOnly));
        assert_eq!(check("a", Action::Publish("orders/o1/status")), Err(Denial::ServerOnly));
        assert_eq!(
            check("a", Action::Publish("couriers/a/locations/x")),
            Err(Denial::UnknownTopic)
        );
        assert_eq!(check("a", Action::Publish("anything")), Err(Denial::UnknownTopic));
        // A prefix of another id is another id.
        assert_eq!(check("a", Action::Publish("couriers/ab/locations")), Err(Denial::OtherCourier));
    }

    #[test]
    fn a_courier_subscribes_only_to_exactly_its_own_acks() {
        assert_eq!(check("a", Action::Subscribe("couriers/a/acks")), Ok(()));
        assert_eq!(check("a", Action::Subscribe("couriers/b/acks")), Err(Denial::OtherCourier));
        assert_eq!(check("a", Action::Subscribe("#")), Err(Denial::Wildcard));
        assert_eq!(check("a", Action::Subscribe("couriers/+/acks")), Err(Denial::Wildcard));
        assert_eq!(check("a", Action::Subscribe("couriers/a/#")), Err(Denial::Wildcard));
        assert_eq!(
            check("a", Action::Subscribe("$share/g/couriers/a/acks")),
            Err(Denial::Wildcard)
        );
        assert_eq!(
            check("a", Action::Subscribe("couriers/a/locations")),
            Err(Denial::NotPermitted)
        );
        assert_eq!(check("a", Action::Subscribe("orders/o1/status")), Err(Denial::ServerOnly));
    }

    #[test]
    fn a_will_follows_the_publish_rules() {
        assert_eq!(check("a", Action::Will("couriers/a/events")), Ok(()));
        assert_eq!(check("a", Action::Will("couriers/b/acks")), Err(Denial::OtherCourier));
        assert_eq!(check("a", Action::Will("couriers/a/acks")), Err(Denial::ServerOnly));
    }

    #[test]
    fn the_pipeline_id_is_a_valid_courier_id_so_it_must_be_reserved() {
        // If this ever fails, the reservation is no longer needed, but keep it anyway.
        assert!(topics::is_valid_id(PIPELINE_CLIENT_ID));
    }
}
