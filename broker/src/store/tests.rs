use super::*;
use locus_sdk::wire::Fix;

fn stored(ts: u64) -> StoredFix {
    StoredFix { fix: Fix::from_degrees(ts, 1.0, 2.0), attributes: vec![], received_ms: ts }
}

/// A commit of `courier`'s reports `seqs`, one fix each at device time 1000 × seq.
fn reports(courier: &str, seqs: &[u64]) -> Commit {
    let mut builder = RecordBuilder::new(1);
    for &seq in seqs {
        builder.report(courier, seq);
        builder.fix(courier, Fix::from_degrees(seq * 1000, 1.0, 2.0), vec![]);
    }
    Commit { record: builder.finish(), ..Commit::default() }
}

fn times(fixes: &[StoredFix]) -> Vec<u64> {
    fixes.iter().map(|f| f.fix.ts_ms).collect()
}

fn reopen(dir: &std::path::Path, options: StoreOptions) -> Store {
    Store::reopen_in_test(dir, options)
}

#[test]
fn commits_are_visible_at_once_and_survive_a_reopen_without_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.commit(reports("c1", &[1, 3])).unwrap();
    assert_eq!(store.seq_window("c1").watermark(), 1, "2 is missing");
    assert_eq!(store.last_location("c1").unwrap().unwrap().fix.ts_ms, 3000);
    assert_eq!(times(&store.track("c1", None, None, 10).unwrap()), [1000, 3000]);
    store.flush().unwrap();
    drop(store);

    // Like a kill -9 after the flush: no checkpoint ever ran, the log has it all.
    let store = reopen(dir.path(), StoreOptions::default());
    assert_eq!(store.seq_window("c1").highest(), 3);
    store.commit(reports("c1", &[2])).unwrap();
    assert_eq!(store.seq_window("c1").watermark(), 3);
    assert_eq!(store.acks(), [("c1".to_owned(), 3)]);
    assert_eq!(times(&store.track("c1", None, None, 10).unwrap()), [1000, 2000, 3000]);
    assert_eq!(store.last_location("c1").unwrap().unwrap().fix.ts_ms, 3000, "newest wins");
}

#[test]
fn a_checkpoint_moves_the_views_to_sled_and_empties_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for seq in 1..=200 {
        store.commit(reports("c1", &[seq])).unwrap();
    }
    use crate::orders::EventKind::*;
    commit_orders(&store, &[("o1", "e1", Placed, None), ("o1", "e2", Assigned, Some("c2"))]);
    store.commit(fix_naming("c2", 999_000, None)).unwrap();

    let stats = store.checkpoint().unwrap();
    assert_eq!((stats.couriers, stats.orders), (2, 1));
    assert!(stats.blocks >= 200 / track::BLOCK_FIXES);
    assert_eq!(stats.log_entries_removed, 0, "not before the checkpoint is durable");
    // Nothing flushed since (an idle store): the next checkpoint flushes and removes.
    assert_eq!(store.checkpoint().unwrap().log_entries_removed, 202);
    assert_eq!(store.inner.log.len(), 0);
    assert_eq!(store.checkpoint().unwrap().log_entries_removed, 0);
    drop(store);

    let store = reopen(dir.path(), StoreOptions::default());
    assert_eq!(store.seq_window("c1").watermark(), 200);
    assert_eq!(store.track("c1", None, None, 1_000).unwrap().len(), 200);
    assert_eq!(store.order_location("o1").unwrap().unwrap().0, "c2");
    // After a checkpoint the log starts from where it was: ids never go back.
    store.commit(reports("c1", &[201])).unwrap();
    assert_eq!(store.inner.log.first().unwrap().map(|(k, _)| log::id_of(&k)), Some(203));
}

#[test]
fn the_shipper_keeps_log_entries_until_it_has_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { keep_for_shipper: true, ..StoreOptions::default() };
    let store = Store::open_with(dir.path(), options).unwrap();
    store.commit(reports("c1", &[1, 2])).unwrap();
    store.commit(reports("c1", &[3])).unwrap();
    store.append_lines(b"x 1\ny 2".to_vec()).unwrap();
    assert_eq!(store.shipper_pending(), 5);
    store.checkpoint().unwrap();
    let waiting = store.shipper_read(None, 100).unwrap();
    assert_eq!(waiting.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2, 3]);
    // Finished out of order: the cursor waits for the first.
    store.shipper_done(&[(2, 1)]).unwrap();
    assert_eq!(store.shipper_read(None, 100).unwrap().len(), 2);
    assert_eq!(store.shipper_read(Some(1), 100).unwrap()[0].0, 3);
    store.shipper_done(&[(1, 2)]).unwrap();
    assert_eq!(store.shipper_pending(), 2);
    assert_eq!(store.checkpoint().unwrap().log_entries_removed, 2);
    drop(store);

    let store = reopen(dir.path(), options);
    assert_eq!(store.shipper_pending(), 2, "the lines are still waiting");
    assert_eq!(store.shipper_read(None, 1).unwrap()[0].0, 3);
}

#[test]
fn dead_letters_page_and_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let letter = |n: u8| {
        let source = DeadLetterSource::Mqtt { topic: "t".into() };
        DeadLetter::new(DeadLetterReason::Malformed, source, None, format!("#{n}"), vec![n], 0)
    };
    store.record_dead_letters((0..5).map(letter).collect()).unwrap();
    let page = store.dead_letters(0, 2).unwrap();
    assert_eq!(page.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(store.dead_letters(2, 10).unwrap().len(), 3);
    store.prune(0, 10, 2).unwrap();
    let left = store.dead_letters(0, 10).unwrap();
    assert_eq!(left.iter().map(|(_, l)| l.payload[0]).collect::<Vec<_>>(), [3, 4]);
    // Ids keep increasing after a reopen.
    drop(store);
    let store = reopen(dir.path(), StoreOptions::default());
    store.record_dead_letters(vec![letter(9)]).unwrap();
    assert_eq!(store.dead_letters(5, 10).unwrap()[0].0, 6);
}

#[test]
fn same_device_times_are_found_in_memory_and_in_sled() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.commit(reports("c1", &[1, 2])).unwrap();
    assert!(store.has_track_fix("c1", 2000).unwrap());
    assert!(!store.has_track_fix("c1", 2001).unwrap());
    store.checkpoint().unwrap();
    store.checkpoint().unwrap();
    store.checkpoint().unwrap();
    assert!(store.has_track_fix("c1", 1000).unwrap());
    assert!(!store.has_track_fix("c2", 1000).unwrap());
    assert_eq!(store.dedup_state("c1").1, Some(2000));
    let _ = stored(0);
}

#[test]
fn a_checkpoint_cut_off_halfway_is_completed_by_the_replay_without_doubling_the_track() {
    let order_fix = |ts: u64| fix_naming("c2", ts, None);
    let check = |store: &Store, at: &str| {
        let c1: Vec<u64> = (1..=140).map(|seq| seq * 1000).collect();
        assert_eq!(times(&store.track("c1", None, None, 1_000).unwrap()), c1, "{at}");
        assert_eq!(times(&store.track("c3", None, None, 1_000).unwrap()), [1000, 2000], "{at}");
        assert_eq!(store.seq_window("c1").watermark(), 140, "{at}");
        assert_eq!(store.seq_window("c3").watermark(), 2, "{at}");
        assert_eq!(store.last_location("c1").unwrap().unwrap().fix.ts_ms, 140_000, "{at}");
        assert_eq!(store.order_location("o1").unwrap().unwrap().1.fix.ts_ms, 9_000, "{at}");
    };
    // Like a kill -9 in the middle of a checkpoint, stopped before each of its writes in turn.
    let mut writes_before_the_crash = 0;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        use crate::orders::EventKind::*;
        commit_orders(&store, &[("o1", "e1", Placed, None), ("o1", "e2", Assigned, Some("c2"))]);
        for seq in 1..=70 {
            store.commit(reports("c1", &[seq])).unwrap();
        }
        store.commit(order_fix(5_000)).unwrap();
        store.checkpoint().unwrap();
        // The next one rewrites c1's open block, starts new ones, and adds c3 and o1.
        for seq in 71..=140 {
            store.commit(reports("c1", &[seq])).unwrap();
        }
        store.commit(reports("c3", &[1, 2])).unwrap();
        store.commit(order_fix(9_000)).unwrap();
        let mut left = writes_before_the_crash;
        let finished = store
            .checkpoint_until(|| match left {
                0 => Err(StoreError::Sled(sled::Error::Unsupported("crash".into()))),
                _ => {
                    left -= 1;
                    Ok(())
                }
            })
            .is_ok();
        store.flush().unwrap();
        drop(store);

        let at = format!("crashed after {writes_before_the_crash} writes");
        let store = reopen(dir.path(), StoreOptions::default());
        check(&store, &at);
        // What the replay rebuilt is checkpointed like anything else.
        store.checkpoint().unwrap();
        store.checkpoint().unwrap();
        drop(store);
        check(&reopen(dir.path(), StoreOptions::default()), &format!("{at}, then checkpointed"));
        if finished {
            break;
        }
        writes_before_the_crash += 1;
    }
    assert!(writes_before_the_crash >= 6, "the checkpoint has a write per courier, order, block");
}

/// Order events as the intake logs them: `(order, event id, kind, courier)`.
fn order_events(events: &[(&str, &str, crate::orders::EventKind, Option<&str>)]) -> OrderRecord {
    let events = events
        .iter()
        .map(|&(order, id, kind, courier)| LoggedOrderEvent {
            order: order.to_owned(),
            event: crate::orders::OrderEvent {
                event_id: id.to_owned(),
                kind,
                at_ms: 1,
                actor: "merchant:m1".to_owned(),
                courier: courier.map(str::to_owned),
                details: None,
            },
            from_courier: None,
        })
        .collect();
    OrderRecord { received_ms: 1, events }
}

/// Commits order events alone.
fn commit_orders(store: &Store, events: &[(&str, &str, crate::orders::EventKind, Option<&str>)]) {
    store.commit(Commit { orders: order_events(events), ..Commit::default() }).unwrap();
}

/// A commit of one fix of `courier` at device time `ts` that names `order` in its own field.
fn fix_naming(courier: &str, ts: u64, order: Option<&str>) -> Commit {
    let mut builder = RecordBuilder::new(ts);
    let mut fix = Fix::from_degrees(ts, 3.0, 4.0);
    fix.details =
        Some(locus_sdk::wire::FixDetails { order: order.map(str::to_owned), ..Default::default() });
    builder.fix(courier, fix, vec![]);
    Commit { record: builder.finish(), ..Commit::default() }
}

/// A commit of an event `courier` sent over MQTT.
fn from_courier(courier: &str, order: &str, id: &str, kind: crate::orders::EventKind) -> Commit {
    let mut record = order_events(&[(order, id, kind, None)]);
    for logged in &mut record.events {
        logged.event.actor = format!("courier:{courier}");
        logged.from_courier = Some(courier.to_owned());
    }
    Commit { orders: record, ..Commit::default() }
}

#[test]
fn a_fix_locates_only_the_orders_its_courier_carries_while_they_are_active() {
    use crate::orders::EventKind::*;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let located = |store: &Store, order: &str| {
        store.order_location(order).unwrap().map(|(courier, f)| (courier, f.fix.ts_ms))
    };
    commit_orders(&store, &[("o1", "e1", Placed, None), ("o2", "e1", Placed, None)]);
    // Placed, not assigned: a fix naming it is only recorded.
    let moved = store.commit(fix_naming("c1", 1_000, Some("o1"))).unwrap().moved_orders;
    assert!(moved.is_empty() && located(&store, "o1").is_none());
    commit_orders(&store, &[("o1", "e2", Assigned, Some("c1"))]);
    // Assigned: the courier's fixes locate it, whatever their own `order` field says.
    let moved = store.commit(fix_naming("c1", 2_000, None)).unwrap().moved_orders;
    assert_eq!(moved, ["o1"]);
    assert_eq!(located(&store, "o1"), Some(("c1".to_owned(), 2_000)));
    store.commit(fix_naming("c2", 2_500, Some("o1"))).unwrap();
    store.commit(fix_naming("c2", 2_600, Some("o2"))).unwrap();
    assert_eq!(located(&store, "o1"), Some(("c1".to_owned(), 2_000)), "c2 does not carry o1");
    assert!(located(&store, "o2").is_none(), "nobody carries o2");
    // Reassigned to c2: c2's fixes locate it from now on, c1's do not.
    commit_orders(&store, &[("o1", "e3", Assigned, Some("c2"))]);
    store.commit(fix_naming("c1", 3_000, None)).unwrap();
    assert_eq!(located(&store, "o1"), Some(("c1".to_owned(), 2_000)));
    store.commit(fix_naming("c2", 3_500, None)).unwrap();
    assert_eq!(located(&store, "o1"), Some(("c2".to_owned(), 3_500)));
    store.checkpoint().unwrap();
    store.flush().unwrap();
    drop(store);

    // Who carries what is rebuilt on open (checkpointed orders, then the log after them).
    let store = reopen(dir.path(), StoreOptions::default());
    commit_orders(&store, &[("o1", "e4", Ready, None)]);
    store.commit(fix_naming("c2", 4_000, None)).unwrap();
    assert_eq!(located(&store, "o1"), Some(("c2".to_owned(), 4_000)));
    // Picked up, still located; delivered, located no more (the last location stays).
    store.commit(from_courier("c2", "o1", "e5", PickedUp)).unwrap();
    store.commit(fix_naming("c2", 5_000, None)).unwrap();
    assert_eq!(located(&store, "o1"), Some(("c2".to_owned(), 5_000)));
    store.commit(from_courier("c2", "o1", "e6", Delivered)).unwrap();
    let moved = store.commit(fix_naming("c2", 6_000, Some("o1"))).unwrap().moved_orders;
    assert!(moved.is_empty());
    assert_eq!(located(&store, "o1"), Some(("c2".to_owned(), 5_000)), "delivered: it stays");
    store.flush().unwrap();
    drop(store);
    let store = reopen(dir.path(), StoreOptions::default());
    store.commit(fix_naming("c2", 7_000, None)).unwrap();
    assert_eq!(located(&store, "o1"), Some(("c2".to_owned(), 5_000)), "and after a replay");
}

#[test]
fn order_lifecycles_survive_a_reopen_with_and_without_a_checkpoint() {
    use crate::orders::{EventKind::*, Status};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    commit_orders(
        &store,
        &[
            ("o1", "e1", Placed, None),
            ("o1", "e2", Assigned, Some("c1")),
            ("o2", "e1", Placed, None),
        ],
    );
    store.checkpoint().unwrap();
    // After the checkpoint: only in the log.
    commit_orders(&store, &[("o1", "e3", Ready, None)]);
    store.commit(reports("c1", &[1])).unwrap();
    store.flush().unwrap();
    let active = |store: &Store| store.orders(|o| !o.status.is_ended(), 10);
    assert_eq!(active(&store).len(), 2);
    drop(store);

    let store = reopen(dir.path(), StoreOptions::default());
    let o1 = store.order("o1").expect("o1 after reopen");
    assert_eq!(o1.status, Status::Assigned);
    assert!(o1.ready, "the event after the checkpoint was replayed");
    assert_eq!(o1.courier.as_deref(), Some("c1"));
    assert_eq!(o1.timeline.len(), 3);
    assert_eq!(store.order("o2").map(|o| o.status), Some(Status::Placed));
    assert_eq!(store.seq_window("c1").watermark(), 1, "fixes and order events share the log");
    store.checkpoint().unwrap();
    store.flush().unwrap();
    drop(store);
    let store = reopen(dir.path(), StoreOptions::default());
    assert_eq!(store.order("o1").unwrap().timeline.len(), 3, "no event applied twice");
}

#[test]
fn ended_orders_are_pruned_with_their_locations_once_kept_long_enough() {
    use crate::orders::EventKind::*;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Event times are all 1 ms (see `order_events`): o1 ended at 1, o2 is still open.
    commit_orders(
        &store,
        &[
            ("o1", "e1", Placed, None),
            ("o1", "e2", Assigned, Some("c1")),
            ("o2", "e1", Placed, None),
        ],
    );
    store.commit(fix_naming("c1", 5_000, None)).unwrap();
    commit_orders(&store, &[("o1", "e3", Cancelled, None)]);
    store.checkpoint().unwrap();
    assert!(store.order_location("o1").unwrap().is_some());

    assert_eq!(store.prune_orders(1).unwrap(), 0, "ended at 1 ms: not before 1 ms");
    assert_eq!(store.prune_orders(2).unwrap(), 1);
    assert!(store.order("o1").is_none());
    assert!(store.order_location("o1").unwrap().is_none(), "its location goes with it");
    assert!(store.order("o2").is_some(), "an open order is never pruned");
    store.checkpoint().unwrap();
    store.flush().unwrap();
    drop(store);
    let store = reopen(dir.path(), StoreOptions::default());
    assert!(store.order("o1").is_none(), "pruned for good");
    assert!(store.order("o2").is_some());
}
