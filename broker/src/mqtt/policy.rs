//! Who may publish and subscribe where: the one topic policy of locusd.
//!
//! Enters: who an authenticated client is ([`Principal`]: a courier, or a customer following one
//! order) and what it asks to do (publish on a topic, subscribe to a filter, leave a last will).
//! Leaves: allowed, or a [`Denial`] that says why.
//!
//! The rules, for a connection authenticated as courier `{id}`:
//!
//! | action    | allowed                                                            |
//! |-----------|--------------------------------------------------------------------|
//! | publish   | `couriers/{id}/locations` and `couriers/{id}/events`, nothing else  |
//! | subscribe | exactly `couriers/{id}/acks` (no wildcards, no `$share/…`)         |
//! | last will | the topics it may publish on                                        |
//!
//! and for a customer with an order token for order `{order}` (client id `order@{order}` or
//! `order@{order}@{anything}`, a namespace no courier id can enter since ids have no `@`):
//!
//! | action    | allowed                                                                     |
//! |-----------|-----------------------------------------------------------------------------|
//! | publish   | nothing                                                                     |
//! | subscribe | exactly `orders/{order}/status` and `orders/{order}/location`, while the order is active |
//! | last will | nothing                                                                     |
//!
//! "Active" means placed and neither delivered nor cancelled ([`OrderGate`]); a customer who
//! subscribed before the end still gets the last status (`delivered` or `cancelled`).
//!
//! and for an edge component with an edge token for edge `{edge}` (client id `edge@{edge}` or
//! `edge@{edge}@{anything}`, one per HTTP request it forwards), declared in `[edges.{edge}]`:
//!
//! | action    | allowed                                  |
//! |-----------|------------------------------------------|
//! | publish   | exactly `edge/{edge}/batches`            |
//! | subscribe | nothing                                  |
//! | last will | nothing                                  |
//!
//! Which couriers an edge may post for is checked per batch by the intake
//! ([`crate::edges::EdgeRules::refusal`]): the topic does not name the courier.
//!
//! and for a consumer of the live fix stream with a `reader` token (username `reader`, client
//! id `reader@{anything}`):
//!
//! | action    | allowed                                                   |
//! |-----------|-----------------------------------------------------------|
//! | publish   | nothing                                                   |
//! | subscribe | `fixes/+`, `fixes/#` or exactly `fixes/{courier}`; the same under `fixes-wire/` |
//! | last will | nothing                                                   |
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
use std::sync::Arc;

/// Client id of locusd's own link into the embedded broker (reports in, acks and statuses
/// out). Not a courier: refused at CONNECT and by `locusd token issue`
/// ([`is_reserved_client_id`]), so no device can take over the pipeline's session.
pub const PIPELINE_CLIENT_ID: &str = "locusd-pipeline";

/// Client id of locusd's second link, which reads couriers' order events. A link of its own:
/// a second filter on the reports' link doubled its p50 and p99 under a city's load (the
/// router serves a link's filters in turn).
pub const PIPELINE_EVENTS_CLIENT_ID: &str = "locusd-pipeline-events";

/// Whether a client id is one of locusd's own links.
pub fn is_reserved_client_id(client_id: &str) -> bool {
    [PIPELINE_CLIENT_ID, PIPELINE_EVENTS_CLIENT_ID].contains(&client_id)
}

/// Prefix of the client ids of customers following an order.
pub const CUSTOMER_CLIENT_PREFIX: &str = "order@";

/// Prefix of the client ids of edge components.
pub const EDGE_CLIENT_PREFIX: &str = "edge@";

/// Prefix of the client ids of fix stream consumers (reader tokens).
pub const READER_CLIENT_PREFIX: &str = "reader@";

/// Whether an order is active (placed, neither delivered nor cancelled): the only time its
/// customers may subscribe. Called on the broker's router thread, so it must be quick (the
/// store's in-memory orders view).
pub type OrderGate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Who an authenticated client is, from its client id (authentication made sure the id and
/// the credentials agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal<'a> {
    /// A courier: the client id is the courier id.
    Courier(&'a str),
    /// A customer following one order: the client id is `order@{order}[@…]`.
    Customer {
        /// The order.
        order: &'a str,
    },
    /// An edge component: the client id is `edge@{edge}[@…]`.
    Edge {
        /// The edge.
        edge: &'a str,
    },
    /// A consumer of the live fix stream: the client id is `reader@{anything}`.
    Reader,
}

impl<'a> Principal<'a> {
    /// The principal a client id names.
    pub fn of_client(client_id: &'a str) -> Principal<'a> {
        let first = |rest: &'a str| rest.split('@').next().unwrap_or(rest);
        if let Some(rest) = client_id.strip_prefix(CUSTOMER_CLIENT_PREFIX) {
            return Principal::Customer { order: first(rest) };
        }
        if let Some(rest) = client_id.strip_prefix(EDGE_CLIENT_PREFIX) {
            return Principal::Edge { edge: first(rest) };
        }
        if client_id.starts_with(READER_CLIENT_PREFIX) {
            return Principal::Reader;
        }
        Principal::Courier(client_id)
    }
}

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
    /// A customer's order token is for another order.
    #[error("topic belongs to another order")]
    OtherOrder,
    /// The order was delivered or cancelled (or never placed): its token no longer works.
    #[error("the order is not active")]
    OrderNotActive,
    /// The topic belongs to another edge.
    #[error("topic belongs to another edge")]
    OtherEdge,
}

/// The topic policy for authenticated clients.
#[derive(Clone)]
pub struct TopicPolicy {
    orders: OrderGate,
    edges: crate::edges::EdgeRules,
}

impl std::fmt::Debug for TopicPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicPolicy").finish_non_exhaustive()
    }
}

impl TopicPolicy {
    /// The policy, asking `orders` whether an order is active and `edges` which edges exist.
    pub fn new(orders: OrderGate, edges: crate::edges::EdgeRules) -> TopicPolicy {
        TopicPolicy { orders, edges }
    }

    /// Whether `[edges]` declares `edge`.
    pub fn edge_is_declared(&self, edge: &str) -> bool {
        self.edges.is_declared(edge)
    }

    /// Whether `who` may do `action`.
    pub fn check(&self, who: Principal<'_>, action: Action<'_>) -> Result<(), Denial> {
        match (who, action) {
            (Principal::Courier(courier), Action::Publish(topic) | Action::Will(topic)) => {
                may_publish(courier, topic)
            }
            (Principal::Courier(courier), Action::Subscribe(filter)) => {
                may_subscribe(courier, filter)
            }
            (Principal::Customer { order }, Action::Subscribe(filter)) => {
                self.may_follow(order, filter)
            }
            (Principal::Customer { .. }, Action::Publish(topic) | Action::Will(topic)) => {
                match topic.starts_with("orders/") || topic.starts_with("couriers/") {
                    true => Err(Denial::ServerOnly),
                    false => Err(Denial::UnknownTopic),
                }
            }
            (Principal::Edge { edge }, Action::Publish(topic)) => {
                match topic == topics::edge_batches(edge) {
                    true => Ok(()),
                    false => Err(classify_for_edge(edge, topic)),
                }
            }
            (Principal::Edge { edge }, Action::Subscribe(topic) | Action::Will(topic)) => {
                match topic.starts_with("$share/") || topic.contains(['+', '#']) {
                    true => Err(Denial::Wildcard),
                    false => Err(classify_for_edge(edge, topic)),
                }
            }
            (Principal::Reader, Action::Subscribe(filter)) => may_read_stream(filter),
            (Principal::Reader, Action::Publish(topic) | Action::Will(topic)) => {
                match topic.split('/').next() {
                    Some("couriers" | "orders" | "fixes" | "fixes-wire") => Err(Denial::ServerOnly),
                    _ => Err(Denial::UnknownTopic),
                }
            }
        }
    }

    /// Whether an order is active now.
    pub fn order_is_active(&self, order: &str) -> bool {
        (self.orders)(order)
    }

    fn may_follow(&self, order: &str, filter: &str) -> Result<(), Denial> {
        if filter.starts_with("$share/") || filter.contains(['+', '#']) {
            return Err(Denial::Wildcard);
        }
        if filter == topics::order_status(order) || filter == topics::order_location(order) {
            return match self.order_is_active(order) {
                true => Ok(()),
                false => Err(Denial::OrderNotActive),
            };
        }
        match filter.split('/').collect::<Vec<_>>().as_slice() {
            ["orders", other, "status" | "location"] if *other != order => Err(Denial::OtherOrder),
            ["orders", ..] | ["couriers", ..] => Err(Denial::NotPermitted),
            _ => Err(Denial::UnknownTopic),
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
        ["edge", ..] => Denial::NotPermitted,
        _ => Denial::UnknownTopic,
    }
}

/// A reader subscribes to the whole fix stream or one courier's, in JSON (`fixes/…`) or the
/// wire format (`fixes-wire/…`), nothing else.
fn may_read_stream(filter: &str) -> Result<(), Denial> {
    match filter.split('/').collect::<Vec<_>>().as_slice() {
        ["fixes" | "fixes-wire", "+" | "#"] => Ok(()),
        ["fixes" | "fixes-wire", courier] if topics::is_valid_id(courier) => Ok(()),
        ["$share", ..] => Err(Denial::Wildcard),
        ["fixes" | "fixes-wire", ..] | ["couriers", ..] | ["orders", ..] | ["edge", ..] => {
            Err(Denial::NotPermitted)
        }
        _ => Err(Denial::UnknownTopic),
    }
}

/// Why a topic is refused to an edge (its own batches topic is only for publishing).
fn classify_for_edge(edge: &str, topic: &str) -> Denial {
    match topic.split('/').collect::<Vec<_>>().as_slice() {
        ["edge", owner, _] if *owner != edge => Denial::OtherEdge,
        ["couriers", _, "acks"] | ["orders", ..] => Denial::ServerOnly,
        ["edge", ..] | ["couriers", ..] => Denial::NotPermitted,
        _ => Denial::UnknownTopic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(courier: &str, action: Action<'_>) -> Result<(), Denial> {
        policy(&[]).check(Principal::Courier(courier), action)
    }

    /// A policy for which exactly `active` are active orders.
    fn policy(active: &[&str]) -> TopicPolicy {
        let active: Vec<String> = active.iter().map(|o| o.to_string()).collect();
        let edges = crate::edges::EdgeRules::new(Default::default(), None);
        TopicPolicy::new(Arc::new(move |order| active.iter().any(|a| a == order)), edges)
    }

    #[test]
    fn an_edge_publishes_exactly_its_own_batches_and_reads_nothing() {
        let policy = policy(&["o1"]);
        let edge = Principal::of_client("edge@web-1@5f2a");
        assert_eq!(edge, Principal::Edge { edge: "web-1" });
        assert_eq!(Principal::of_client("edge@web-1"), edge);
        let check = |action| policy.check(edge, action);
        assert_eq!(check(Action::Publish("edge/web-1/batches")), Ok(()));
        assert_eq!(check(Action::Publish("edge/web-2/batches")), Err(Denial::OtherEdge));
        assert_eq!(check(Action::Publish("edge/web-1/other")), Err(Denial::NotPermitted));
        assert_eq!(check(Action::Publish("couriers/c1/locations")), Err(Denial::NotPermitted));
        assert_eq!(check(Action::Publish("couriers/c1/acks")), Err(Denial::ServerOnly));
        assert_eq!(check(Action::Publish("orders/o1/status")), Err(Denial::ServerOnly));
        assert_eq!(check(Action::Subscribe("edge/web-1/batches")), Err(Denial::NotPermitted));
        assert_eq!(check(Action::Subscribe("couriers/+/locations")), Err(Denial::Wildcard));
        assert_eq!(check(Action::Subscribe("orders/o1/status")), Err(Denial::ServerOnly));
        assert_eq!(check(Action::Will("edge/web-1/batches")), Err(Denial::NotPermitted));
        // Couriers and customers never write an edge's topic.
        assert_eq!(
            policy.check(Principal::Courier("c1"), Action::Publish("edge/web-1/batches")),
            Err(Denial::NotPermitted)
        );
        let customer = Principal::Customer { order: "o1" };
        assert!(policy.check(customer, Action::Publish("edge/web-1/batches")).is_err());
    }

    #[test]
    fn a_reader_subscribes_to_the_fix_stream_and_nothing_else_and_publishes_nothing() {
        let policy = policy(&["o1"]);
        let reader = Principal::of_client("reader@analytics-1");
        assert_eq!(reader, Principal::Reader);
        let check = |action| policy.check(reader, action);
        for filter in ["fixes/+", "fixes/#", "fixes/c1", "fixes-wire/+", "fixes-wire/c1"] {
            assert_eq!(check(Action::Subscribe(filter)), Ok(()), "{filter}");
        }
        assert_eq!(check(Action::Subscribe("fixes/c1/x")), Err(Denial::NotPermitted));
        assert_eq!(check(Action::Subscribe("#")), Err(Denial::UnknownTopic));
        assert_eq!(check(Action::Subscribe("$share/g/fixes/+")), Err(Denial::Wildcard));
        assert_eq!(check(Action::Subscribe("couriers/c1/acks")), Err(Denial::NotPermitted));
        assert_eq!(check(Action::Subscribe("orders/o1/status")), Err(Denial::NotPermitted));
        assert_eq!(check(Action::Publish("fixes/c1")), Err(Denial::ServerOnly));
        assert_eq!(check(Action::Publish("couriers/c1/locations")), Err(Denial::ServerOnly));
        assert_eq!(check(Action::Will("fixes/c1")), Err(Denial::ServerOnly));
        // Nobody else reads or writes the stream.
        for who in [Principal::Courier("c1"), Principal::Customer { order: "o1" }] {
            assert!(policy.check(who, Action::Subscribe("fixes/c1")).is_err(), "{who:?}");
            assert!(policy.check(who, Action::Publish("fixes/c1")).is_err(), "{who:?}");
        }
        let edge = Principal::Edge { edge: "web-1" };
        assert!(policy.check(edge, Action::Publish("fixes/c1")).is_err());
    }

    #[test]
    fn a_customer_follows_exactly_its_own_order_and_only_while_it_is_active() {
        let policy = policy(&["o1", "o2"]);
        let customer = Principal::of_client("order@o1@phone-1");
        assert_eq!(customer, Principal::Customer { order: "o1" });
        assert_eq!(Principal::of_client("order@o1"), customer);
        let check = |who, action| policy.check(who, action);
        assert_eq!(check(customer, Action::Subscribe("orders/o1/status")), Ok(()));
        assert_eq!(check(customer, Action::Subscribe("orders/o1/location")), Ok(()));
        assert_eq!(check(customer, Action::Subscribe("orders/o2/status")), Err(Denial::OtherOrder));
        assert_eq!(check(customer, Action::Subscribe("orders/+/status")), Err(Denial::Wildcard));
        assert_eq!(check(customer, Action::Subscribe("orders/o1/#")), Err(Denial::Wildcard));
        assert_eq!(
            check(customer, Action::Subscribe("couriers/c1/acks")),
            Err(Denial::NotPermitted)
        );
        assert_eq!(check(customer, Action::Publish("orders/o1/status")), Err(Denial::ServerOnly));
        assert_eq!(
            check(customer, Action::Publish("couriers/o1/locations")),
            Err(Denial::ServerOnly)
        );
        assert_eq!(check(customer, Action::Will("x")), Err(Denial::UnknownTopic));
        // Delivered (or never placed): its topics are closed to its token.
        let ended = Principal::Customer { order: "o3" };
        assert_eq!(
            check(ended, Action::Subscribe("orders/o3/status")),
            Err(Denial::OrderNotActive)
        );
        // A courier never reads an order's topics, even one named like a customer would be.
        assert_eq!(
            check(Principal::Courier("o1"), Action::Subscribe("orders/o1/status")),
            Err(Denial::ServerOnly)
        );
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
        assert!(topics::is_valid_id(PIPELINE_EVENTS_CLIENT_ID));
        assert!(is_reserved_client_id(PIPELINE_EVENTS_CLIENT_ID));
    }
}
