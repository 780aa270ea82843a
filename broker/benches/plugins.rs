//! Plugin host overhead: fixes/s through chains of 0, 1 and 3 plugins, and the per-fix cost of
//! one plugin call, by batch size. Not a test: it prints figures for the README.
//!
//!     cargo bench -p locus-broker --bench plugins
//!
//! The plugins are built from `plugins/` for wasm32-wasip2 first (cargo, release).

use std::time::{Duration, Instant};

use locus_broker::pipeline::{FixInput, PendingFix};
use locus_broker::plugins::{PluginHost, PluginHostConfig, PluginRegistry, PluginSettings};
use locus_broker::store::DeadLetterSource;
use locus_sdk::wire::{Fix, FixDetails};

// The one component helper of the tests and benchmarks, shared with locus-tests; why it is
// included rather than a dependency is in the file.
#[path = "../../tests/src/plugin_components.rs"]
mod plugin_components;
use plugin_components::component;

const FIXES_PER_RUN: usize = 200_000;
const COURIERS: usize = 1_000;

/// A chain to measure: a label and its plugins (name, component, settings).
type ChainSpec<'a> = (&'a str, Vec<(&'a str, Vec<u8>, PluginSettings)>);

fn main() {
    let zone = |k: &str, v: &str| PluginSettings {
        config: [(k.to_string(), v.to_string())].into_iter().collect(),
        ..Default::default()
    };
    let zones = zone("zone.eixample", "41.38 2.15, 41.40 2.15, 41.40 2.18, 41.38 2.18");
    let chains: Vec<ChainSpec> = vec![
        ("0 plugins", vec![]),
        ("1 plugin: noop", vec![("noop", component("noop"), PluginSettings::default())]),
        ("1 plugin: zone-tagger", vec![("zones", component("zone_tagger"), zones.clone())]),
        (
            "3 plugins: jitter-filter, motion, zone-tagger",
            vec![
                (
                    "jitter",
                    component("jitter_filter"),
                    PluginSettings { position: 1, ..Default::default() },
                ),
                (
                    "motion",
                    component("motion"),
                    PluginSettings { position: 2, ..Default::default() },
                ),
                ("zones", component("zone_tagger"), PluginSettings { position: 3, ..zones }),
            ],
        ),
    ];

    println!("{:<46} {:>6} {:>12} {:>10}", "chain", "batch", "fixes/s", "ns/fix");
    let mut baseline = std::collections::HashMap::new();
    for (label, plugins) in chains {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let host = PluginHost::new(&PluginHostConfig::default()).expect("host");
        let (registry, _) =
            PluginRegistry::open(host, db.open_tree("p").expect("tree"), None).expect("registry");
        for (name, bytes, settings) in plugins {
            registry.deploy(name, &bytes, settings).expect("deploy");
        }
        let mut chain = registry.chain();
        for batch in [1usize, 10, 100, 1000] {
            let batches = make_batches(batch);
            // Warm up: instances, caches, the couriers' state in stateful plugins.
            for b in batches.iter().take(batches.len() / 10) {
                let out = chain.process(b.clone());
                assert!(out.dead_letters.is_empty());
            }
            let started = Instant::now();
            let mut kept = 0;
            for b in batches {
                kept += chain.process(b).kept.len();
            }
            let elapsed = started.elapsed();
            assert!(kept > 0);
            let ns_per_fix = elapsed.as_nanos() as f64 / FIXES_PER_RUN as f64;
            let rate = FIXES_PER_RUN as f64 / elapsed.as_secs_f64();
            let overhead = match baseline.get(&batch) {
                None => {
                    baseline.insert(batch, ns_per_fix);
                    String::new()
                }
                Some(base) => format!("  (+{:.0} ns/fix over 0 plugins)", ns_per_fix - base),
            };
            println!("{label:<46} {batch:>6} {rate:>12.0} {ns_per_fix:>10.0}{overhead}");
        }
        for info in registry.list() {
            let t = info.stats.call_time;
            println!(
                "    {}: {} calls, call time p50 {} µs, p99 {} µs, max {} µs",
                info.name, info.stats.calls, t.p50_us, t.p99_us, t.max_us
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Batches adding up to FIXES_PER_RUN fixes from COURIERS couriers moving ~10 m/s, one fix per
/// courier per second, inside the zone half of the time.
fn make_batches(batch: usize) -> Vec<Vec<PendingFix>> {
    let mut all = Vec::with_capacity(FIXES_PER_RUN);
    // What the fixes were read from (only a dead letter would look at it).
    let source = DeadLetterSource::Mqtt { topic: "couriers/bench/locations".into() };
    let input = FixInput::new(source, Default::default(), 0);
    for i in 0..FIXES_PER_RUN {
        let courier = i % COURIERS;
        let step = (i / COURIERS) as f64;
        let mut fix = Fix::from_degrees(
            1_763_700_000_000 + (i / COURIERS) as u64 * 1000,
            41.37 + (courier as f64) * 0.00004 + step * 0.00009,
            2.16,
        );
        fix.details = Some(FixDetails { accuracy_cm: Some(500), ..Default::default() });
        all.push(PendingFix::new(format!("courier-{courier}"), fix, input.clone()));
    }
    let mut batches = Vec::new();
    let mut iter = all.into_iter().peekable();
    while iter.peek().is_some() {
        batches.push(iter.by_ref().take(batch).collect());
    }
    batches
}
