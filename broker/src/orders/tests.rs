use super::*;

fn event(id: &str, kind: EventKind) -> OrderEvent {
    OrderEvent {
        event_id: id.to_owned(),
        kind,
        at_ms: 1_000,
        actor: "merchant:bakery".to_owned(),
        courier: None,
        details: None,
    }
}

fn assigned(id: &str, courier: &str) -> OrderEvent {
    OrderEvent { courier: Some(courier.to_owned()), ..event(id, EventKind::Assigned) }
}

fn placed() -> Order {
    let mut placed = event("e1", EventKind::Placed);
    placed.details = Some(r#"{"items":["cake"],"address":"Carrer 1"}"#.to_owned());
    Order::place("o1", placed, EventSource::Api).unwrap()
}

fn changed(kind: EventKind) -> Result<Applied, Refusal> {
    Ok(Applied::Changed { kind })
}

#[test]
fn an_order_goes_from_placed_to_feedback_and_keeps_its_timeline() {
    let mut order = placed();
    assert_eq!(
        order.apply(event("e2", EventKind::Ready), EventSource::Api),
        changed(EventKind::Ready)
    );
    assert_eq!(order.status, Status::Ready);
    assert_eq!(order.apply(assigned("e3", "c1"), EventSource::Api), changed(EventKind::Assigned));
    assert!(order.follows("c1") && !order.follows("c2"));
    let by_courier = EventSource::Courier("c1");
    assert_eq!(
        order.apply(event("e4", EventKind::PickedUp), by_courier),
        changed(EventKind::PickedUp)
    );
    assert!(order.follows("c1"));
    assert_eq!(order.ended_at_ms(), None);
    let mut delivered = event("e5", EventKind::Delivered);
    delivered.at_ms = 5_000;
    assert_eq!(order.apply(delivered, by_courier), changed(EventKind::Delivered));
    assert!(!order.follows("c1"), "a delivered order stops following its courier");
    assert_eq!(order.ended_at_ms(), Some(5_000));
    assert_eq!(
        order.apply(event("e6", EventKind::Feedback), EventSource::Api),
        changed(EventKind::Feedback)
    );
    let kinds: Vec<_> = order.timeline.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["placed", "ready", "assigned", "picked_up", "delivered", "feedback"]);
    assert_eq!(
        order.timeline[0].details.as_deref(),
        Some(r#"{"items":["cake"],"address":"Carrer 1"}"#),
        "details are kept exactly as given"
    );
}

#[test]
fn a_courier_may_be_assigned_before_the_order_is_made_but_picks_it_up_only_after() {
    let mut order = placed();
    order.apply(assigned("e2", "c1"), EventSource::Api).unwrap();
    let early = order.apply(event("e3", EventKind::PickedUp), EventSource::Courier("c1"));
    let message = early.unwrap_err().to_string();
    assert_eq!(
        message,
        "cannot apply `picked_up` to order o1: it is assigned; the maker has not made it yet"
    );
    assert_eq!(
        order.apply(event("e4", EventKind::Ready), EventSource::Api),
        changed(EventKind::Ready)
    );
    assert_eq!(order.status, Status::Assigned, "made, and still with its courier");
    assert!(order.ready);
    // The refused event's id was not used up: the app may resend it now.
    assert_eq!(
        order.apply(event("e3", EventKind::PickedUp), EventSource::Courier("c1")),
        changed(EventKind::PickedUp)
    );
}

#[test]
fn an_order_can_be_reassigned_until_it_is_picked_up() {
    let mut order = placed();
    order.apply(assigned("e2", "c1"), EventSource::Api).unwrap();
    let again = order.apply(assigned("e3", "c1"), EventSource::Api).unwrap_err();
    assert!(again.to_string().contains("already assigned to c1"), "{again}");
    order.apply(assigned("e4", "c2"), EventSource::Api).unwrap();
    assert!(order.follows("c2") && !order.follows("c1"));
    let stale = order.apply(event("e5", EventKind::PickedUp), EventSource::Courier("c1"));
    assert_eq!(
        stale.unwrap_err().to_string(),
        "courier c1 may not send `picked_up` for order o1; it is assigned to c2"
    );
    order.apply(event("e6", EventKind::Ready), EventSource::Api).unwrap();
    order.apply(event("e7", EventKind::PickedUp), EventSource::Courier("c2")).unwrap();
    let late = order.apply(assigned("e8", "c3"), EventSource::Api).unwrap_err();
    assert_eq!(late.to_string(), "cannot apply `assigned` to order o1: it is picked_up");
    let nobody = order.apply(event("e9", EventKind::Assigned), EventSource::Api).unwrap_err();
    assert_eq!(nobody, Refusal::NoCourier { order: "o1".to_owned() });
}

#[test]
fn a_repeated_event_id_changes_nothing_and_is_not_notified_again() {
    let mut order = placed();
    order.apply(event("e2", EventKind::Ready), EventSource::Api).unwrap();
    let before = order.clone();
    assert_eq!(
        order.apply(event("e2", EventKind::Ready), EventSource::Api),
        Ok(Applied::Duplicate)
    );
    // Even an old event replayed after later ones: a duplicate, not a refusal.
    order.apply(assigned("e3", "c1"), EventSource::Api).unwrap();
    assert_eq!(
        order.apply(event("e1", EventKind::Placed), EventSource::Api),
        Ok(Applied::Duplicate)
    );
    assert_eq!(order.timeline.len(), before.timeline.len() + 1);
}

#[test]
fn invalid_transitions_name_the_current_status_and_change_nothing() {
    let mut order = placed();
    let cases = [
        (EventKind::Delivered, "cannot apply `delivered` to order o1: it is placed"),
        (EventKind::PickedUp, "cannot apply `picked_up` to order o1: it is placed"),
        (
            EventKind::Feedback,
            "cannot apply `feedback` to order o1: it is placed; feedback comes after delivery",
        ),
        (EventKind::Placed, "order o1 was already placed; it is now placed"),
    ];
    for (i, (kind, message)) in cases.into_iter().enumerate() {
        let before = order.clone();
        let refused = order.apply(event(&format!("x{i}"), kind), EventSource::Api).unwrap_err();
        assert_eq!(refused.to_string(), message);
        assert_eq!(order, before);
    }
    order.apply(event("c", EventKind::Cancelled), EventSource::Api).unwrap();
    assert!(order.status.is_ended());
    let after_end = order.apply(event("r", EventKind::Ready), EventSource::Api).unwrap_err();
    assert_eq!(after_end.to_string(), "cannot apply `ready` to order o1: it is cancelled");
    let twice = order.apply(event("c2", EventKind::Cancelled), EventSource::Api).unwrap_err();
    assert_eq!(twice.to_string(), "cannot apply `cancelled` to order o1: it is cancelled");
}

#[test]
fn only_placed_creates_an_order_and_only_over_the_api() {
    let refused = Order::place("o9", event("e1", EventKind::Ready), EventSource::Api).unwrap_err();
    assert_eq!(refused.to_string(), "order o9 does not exist: it must be `placed` before `ready`");
    let by_courier = Order::place("o9", event("e1", EventKind::Placed), EventSource::Courier("c1"));
    assert_eq!(
        by_courier.unwrap_err().to_string(),
        "courier c1 may not send `placed` for order o9; orders are placed over the API"
    );
}

#[test]
fn a_courier_sends_only_pickup_and_delivery_for_its_own_open_order() {
    let mut order = placed();
    let unassigned = order.apply(event("e2", EventKind::PickedUp), EventSource::Courier("c1"));
    assert_eq!(
        unassigned.unwrap_err().to_string(),
        "courier c1 may not send `picked_up` for order o1; it is placed"
    );
    let ready = order.apply(event("e3", EventKind::Ready), EventSource::Courier("c1"));
    assert_eq!(
        ready.unwrap_err().to_string(),
        "courier c1 may not send `ready` for order o1; a courier sends only `picked_up` and \
         `delivered`"
    );
    order.apply(event("e4", EventKind::Ready), EventSource::Api).unwrap();
    order.apply(assigned("e5", "c1"), EventSource::Api).unwrap();
    order.apply(event("e6", EventKind::Cancelled), EventSource::Api).unwrap();
    let after_cancel = order.apply(event("e7", EventKind::PickedUp), EventSource::Courier("c1"));
    assert_eq!(
        after_cancel.unwrap_err().to_string(),
        "courier c1 may not send `picked_up` for order o1; it is cancelled"
    );
    assert!(!order.follows("c1"));
}

#[test]
fn feedback_is_taken_once() {
    let mut order = placed();
    for (id, e) in [
        ("e2", event("e2", EventKind::Ready)),
        ("e3", assigned("e3", "c1")),
        ("e4", event("e4", EventKind::PickedUp)),
        ("e5", event("e5", EventKind::Delivered)),
        ("e6", event("e6", EventKind::Feedback)),
    ] {
        assert!(order.apply(e, EventSource::Api).is_ok(), "{id}");
    }
    let again = order.apply(event("e7", EventKind::Feedback), EventSource::Api).unwrap_err();
    assert_eq!(
        again.to_string(),
        "cannot apply `feedback` to order o1: it is delivered; feedback was already given"
    );
}

#[test]
fn orders_round_trip_through_postcard_and_json() {
    let mut order = placed();
    order.apply(assigned("e2", "c1"), EventSource::Api).unwrap();
    let bytes = postcard::to_allocvec(&order).unwrap();
    assert_eq!(postcard::from_bytes::<Order>(&bytes).unwrap(), order);
    let json = serde_json::to_value(&order).unwrap();
    assert_eq!(json["status"], "assigned");
    assert_eq!(json["timeline"][1]["kind"], "assigned");
}
