//! The shipper against a real influxd (InfluxDB 1.x, v1 API): everything queued arrives exactly
//! once, across outages, and invalid points become dead letters without blocking the rest.

mod influx_common;

use anyhow::Result;
use influx_common::{base_ts, config, fix, wait_until, Env};
use locus_broker::influx::InfluxState;
use locus_broker::store::{DeadLetterReason, DeadLetterSource};
use locus_tests::influxd::Influxd;

const COUNT: &str = "SELECT count(lat) FROM courier_location";

#[test]
fn drains_the_outbox_into_influxdb() -> Result<()> {
    let influxd = Influxd::start("locus")?;
    let env = Env::new(config(&influxd.url(), "locus"));
    let base = base_ts();
    let n = 12_345;
    env.enqueue((0..n).map(|i| fix(base, i, 50)));
    assert_eq!(env.outbox.depth(), n);

    let running = env.ship();
    wait_until("every line counted", || Ok(influxd.scalar(COUNT)? == n as i64))?;
    wait_until("the outbox emptied", || Ok(env.outbox_lines() == 0))?;
    assert_eq!(running.metrics.lines_written.get(), n);
    assert!(running.metrics.batches_written.get() >= n / 1_000);
    assert_eq!(running.state(), InfluxState::Ok);
    assert!(running.health.snapshot().last_success_ms.is_some());
    assert_eq!(env.outbox.depth(), 0);

    // The schema as documented: tags, typed fields, device time.
    let rows = influxd.rows(
        "SELECT lat, lon, accuracy, speed, heading, battery, delay_ms, courier, \"order\" \
         FROM courier_location WHERE courier = 'c3' ORDER BY time LIMIT 1",
    )?;
    let row = &rows[0];
    let (_, expected) = fix(base, 3, 50);
    assert_eq!(row["time"], serde_json::json!(base + 3));
    assert_eq!(row["lat"].as_f64(), Some(expected.fix.lat()));
    assert_eq!(row["accuracy"].as_f64(), Some(5.0));
    assert_eq!(row["speed"].as_f64(), Some(0.03));
    assert_eq!(row["heading"].as_f64(), Some(0.03));
    assert_eq!(row["battery"].as_i64(), Some(3));
    assert_eq!(row["delay_ms"].as_i64(), Some(150));
    assert_eq!(row["courier"], "c3");
    assert_eq!(row["order"], "o3");
    // Fixes queued while the shipper runs go too, batched by time.
    env.enqueue((n..n + 10).map(|i| fix(base, i, 50)));
    wait_until("late lines counted", || Ok(influxd.scalar(COUNT)? == n as i64 + 10))?;
    running.stop();
    Ok(())
}

#[test]
fn an_outage_loses_nothing_and_writes_nothing_twice() -> Result<()> {
    let mut influxd = Influxd::start("locus")?;
    let env = Env::new(config(&influxd.url(), "locus"));
    let base = base_ts();
    let (n, m) = (60_000, 5_000);
    env.enqueue((0..n).map(|i| fix(base, i, 200)));
    let running = env.ship();

    // Stop influxd mid-way through the backlog.
    wait_until("a first batch written", || Ok(running.metrics.lines_written.get() > 0))?;
    influxd.stop()?;
    wait_until("the shipper sees the outage", || Ok(running.state() == InfluxState::Unreachable))?;
    // Fixes committed during the outage queue up (ingestion is not blocked).
    env.enqueue((n..n + m).map(|i| fix(base, i, 200)));
    let health = running.health.snapshot();
    assert!(health.outbox_depth > 0 && health.last_error.is_some(), "{health:?}");
    assert!(running.metrics.retries.get() > 0);

    influxd.start_again()?;
    let total = (n + m) as i64;
    wait_until("everything counted", || Ok(influxd.scalar(COUNT)? >= total))?;
    wait_until("the outbox emptied", || Ok(env.outbox_lines() == 0))?;
    assert_eq!(influxd.scalar(COUNT)?, total, "no point may be counted twice");
    // Per courier too (each has its own series).
    let per_courier = influxd.query(&format!("{COUNT} GROUP BY courier"))?;
    let series = per_courier["results"][0]["series"].as_array().unwrap();
    let sum: i64 = series.iter().map(|s| s["values"][0][1].as_i64().unwrap()).sum();
    assert_eq!(sum, total);
    wait_until("healthy again", || Ok(running.state() == InfluxState::Ok))?;
    assert!(env.dead_letters().is_empty());
    Ok(())
}

#[test]
fn unreachable_at_start_blocks_nothing() -> Result<()> {
    let mut influxd = Influxd::start("locus")?;
    influxd.stop()?;
    let env = Env::new(config(&influxd.url(), "locus"));
    let running = env.ship();
    env.enqueue((0..100).map(|i| fix(base_ts(), i, 5)));
    wait_until("unreachable reported", || Ok(running.state() == InfluxState::Unreachable))?;
    let health = running.health.snapshot();
    assert_eq!(health.outbox_depth, 100);
    assert!(health.oldest_received_ms.is_some());
    assert!(health.last_error.as_deref().unwrap_or_default().contains("connect"), "{health:?}");
    influxd.start_again()?;
    wait_until("the backlog arrives", || Ok(influxd.scalar(COUNT)? == 100))?;
    Ok(())
}

#[test]
fn invalid_points_become_dead_letters_and_the_rest_arrives() -> Result<()> {
    let influxd = Influxd::start("locus")?;
    let env = Env::new(config(&influxd.url(), "locus"));
    let base = base_ts();
    // Establish the field types first: `lat` is a float.
    env.enqueue((0..10).map(|i| fix(base, i, 2)));
    let running = env.ship();
    wait_until("the first points", || Ok(influxd.scalar(COUNT)? == 10))?;

    // One batch: good points around a type conflict and an unparseable line, each bad line in
    // the middle of a commit (an outbox entry), plus a commit of the bad line alone.
    let conflict = format!("courier_location,courier=bad lat=\"oops\",lon=1 {}", base + 500);
    let garbage = format!("courier_location,courier=worse lat=1,lon= {}", base + 501);
    let alone = format!("courier_location,courier=alone lat=1,lon=x {}", base + 502);
    let good = |from, to| env.lines((from..to).map(|i| fix(base, i, 2)));
    env.commit([good(10, 400), vec![conflict.clone()], good(400, 800)].concat());
    env.enqueue_raw(&[&alone]);
    env.commit([good(800, 900), vec![garbage.clone()], good(900, 1000)].concat());

    wait_until("the outbox emptied", || Ok(env.outbox_lines() == 0))?;
    assert_eq!(influxd.scalar(COUNT)?, 1000);
    let letters = env.dead_letters();
    assert_eq!(letters.len(), 3, "{letters:?}");
    let conflict_letter = letters.iter().find(|l| l.payload == conflict.as_bytes()).unwrap();
    assert_eq!(conflict_letter.reason, DeadLetterReason::InfluxRejected);
    assert_eq!(conflict_letter.source, DeadLetterSource::Influx);
    assert_eq!(conflict_letter.source.topic(), "influx");
    assert_eq!(conflict_letter.courier.as_deref(), Some("bad"));
    assert!(conflict_letter.detail.contains("conflict"), "{}", conflict_letter.detail);
    let garbage_letter = letters.iter().find(|l| l.payload == garbage.as_bytes()).unwrap();
    assert_eq!(garbage_letter.courier.as_deref(), Some("worse"));
    assert!(letters.iter().any(|l| l.payload == alone.as_bytes()));
    assert_eq!(running.metrics.lines_rejected.get(), 3);
    assert_eq!(running.metrics.lines_written.get(), 1000);
    assert_eq!(running.state(), InfluxState::Ok);
    Ok(())
}
