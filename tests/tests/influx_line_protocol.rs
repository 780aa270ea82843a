//! Escaping checked by the real parser: awkward courier ids and plugin attributes written
//! through the shipper into influxd read back as written.

mod influx_common;

use anyhow::Result;
use influx_common::{base_ts, config, wait_until, Env};
use locus_broker::store::StoredFix;
use locus_sdk::wire::{Fix, FixDetails};
use locus_tests::influxd::Influxd;

#[test]
fn awkward_names_and_values_round_trip() -> Result<()> {
    let influxd = Influxd::start("locus")?;
    let mut cfg = config(&influxd.url(), "locus");
    cfg.tag_attributes = vec!["zone name".into()];
    let env = Env::new(cfg);
    let awkward = [
        "plain",
        "with space",
        "com,ma",
        "equals=sign",
        "quote\"d",
        "back\\slash",
        "trailing\\",
        "\\,\\ \\=",
        "ünïcødé ✓",
    ];
    let base = base_ts();
    let fixes: Vec<(String, StoredFix)> = awkward
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut fix = Fix::from_degrees(base + i as u64, 1.0, 2.0);
            fix.details =
                Some(FixDetails { order: Some(format!("o {text}")), ..Default::default() });
            let stored = StoredFix {
                fix,
                attributes: vec![
                    ("zone name".into(), format!("z {text}")),
                    ("note, \"x\"=".into(), format!("n {text}\nline two")),
                    ("lat".into(), format!("shadow {text}")),
                ],
                received_ms: base + i as u64,
            };
            (format!("c {text}"), stored)
        })
        .collect();
    env.enqueue(fixes);
    let _running = env.ship();
    let count = "SELECT count(lat) FROM courier_location";
    wait_until("all points", || Ok(influxd.scalar(count)? == awkward.len() as i64))?;
    assert!(env.dead_letters().is_empty(), "{:?}", env.dead_letters());

    let rows = influxd.rows(
        "SELECT courier, \"order\", \"zone name\", \"note, \\\"x\\\"=\", attr_lat, lat \
         FROM courier_location ORDER BY time",
    )?;
    assert_eq!(rows.len(), awkward.len());
    for (row, text) in rows.iter().zip(awkward) {
        // A backslash ending a tag value cannot be expressed in line protocol: it is dropped.
        let tag = |prefix: &str| format!("{prefix} {text}").trim_end_matches('\\').to_owned();
        assert_eq!(row["courier"], tag("c"), "{row:?}");
        assert_eq!(row["order"], tag("o"), "{row:?}");
        assert_eq!(row["zone name"], tag("z"), "{row:?}");
        // Line protocol cannot carry a newline: it becomes a space.
        assert_eq!(row["note, \"x\"="], format!("n {text} line two"), "{row:?}");
        assert_eq!(row["attr_lat"], format!("shadow {text}"), "{row:?}");
        assert_eq!(row["lat"].as_f64(), Some(1.0));
    }
    Ok(())
}
