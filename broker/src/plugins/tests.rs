//! The plugin host against real components: the example plugins and the hostile test guests in
//! `plugins/`, built for `wasm32-wasip2` by the first test that needs them.

use std::path::PathBuf;
use std::sync::Arc;

use locus_sdk::wire::{Fix, FixDetails};

use super::*;
use crate::pipeline::{FixInput, PendingFix};
use crate::store::{DeadLetterReason, DeadLetterSource};

// The one component helper of the tests and benchmarks, shared with locus-tests; why it is
// included rather than a dependency is in the file.
#[path = "../../../tests/src/plugin_components.rs"]
mod plugin_components;
use plugin_components::component;

fn registry() -> Arc<PluginRegistry> {
    let db = sled::Config::new().temporary(true).open().expect("sled");
    registry_on(db.open_tree("plugins").expect("tree"), None)
}

fn registry_on(tree: sled::Tree, dir: Option<&std::path::Path>) -> Arc<PluginRegistry> {
    let host = PluginHost::new(&PluginHostConfig::default()).expect("host");
    let (registry, problems) = PluginRegistry::open(host, tree, dir).expect("open");
    assert!(problems.is_empty(), "{problems:?}");
    Arc::new(registry)
}

/// A fix read from an input of its own: a report by `courier`, whose bytes name the fix.
fn fix(courier: &str, ts_ms: u64, lat: f64, lon: f64) -> PendingFix {
    let input = report_input(courier, ts_ms);
    PendingFix::new(courier.into(), Fix::from_degrees(ts_ms, lat, lon), input)
}

fn report_input(courier: &str, id: u64) -> Arc<FixInput> {
    let source = DeadLetterSource::Mqtt { topic: locus_sdk::topics::locations(courier) };
    FixInput::new(source, bytes::Bytes::from(format!("report {courier} {id}")), 1_000 + id)
}

fn with_accuracy(mut pending: PendingFix, accuracy_cm: u32) -> PendingFix {
    pending.fix.details = Some(FixDetails { accuracy_cm: Some(accuracy_cm), ..Default::default() });
    pending
}

fn attr<'a>(pending: &'a PendingFix, key: &str) -> Option<&'a str> {
    pending.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn settings(config: &[(&str, &str)]) -> PluginSettings {
    PluginSettings {
        config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

const EIXAMPLE: &str = "41.38 2.15, 41.40 2.15, 41.40 2.18, 41.38 2.18";

/// The hostile guest with a 16 MiB memory cap and a `call_timeout_ms` budget. Tests of other
/// limits use a generous budget, so that a loaded machine cannot turn them into time-outs.
fn hostile_with(policy: FailurePolicy, call_timeout_ms: u64) -> PluginSettings {
    PluginSettings {
        failure_policy: policy,
        limits: PluginLimits { call_timeout_ms, max_memory_mib: 16 },
        ..Default::default()
    }
}

fn hostile(policy: FailurePolicy) -> PluginSettings {
    hostile_with(policy, 50)
}

#[test]
fn zone_tagger_tags_fixes_in_their_zones() {
    let registry = registry();
    registry
        .deploy(
            "zones",
            &component("zone-tagger"),
            settings(&[
                ("zone.eixample", EIXAMPLE),
                ("zone.north", "41.39 2.10, 41.50 2.10, 41.50 2.20, 41.39 2.20"),
            ]),
        )
        .expect("deploy");
    let mut chain = registry.chain();
    let out = chain.process(vec![
        fix("c1", 1, 41.385, 2.16),
        fix("c2", 1, 41.395, 2.17),
        fix("c3", 1, 40.0, 3.0),
    ]);
    assert_eq!(out.kept.len(), 3);
    assert!(out.dead_letters.is_empty());
    assert_eq!(attr(&out.kept[0], "zone"), Some("eixample"));
    assert_eq!(attr(&out.kept[1], "zone"), Some("eixample,north"));
    assert_eq!(attr(&out.kept[2], "zone"), None);
    // Untouched fields round-trip exactly through the guest's f64 degrees.
    assert_eq!(out.kept[2].fix, Fix::from_degrees(1, 40.0, 3.0));

    let info = registry.get("zones").expect("listed");
    assert_eq!(info.stats.calls, 1);
    assert_eq!(info.stats.fixes_in, 3);
    assert_eq!(info.stats.fixes_out, 3);
    assert_eq!(info.state, "active");
}

#[test]
fn zone_tagger_refuses_bad_config_and_the_chain_is_unchanged() {
    let registry = registry();
    let generation = registry.generation();
    let err = registry
        .deploy("zones", &component("zone-tagger"), settings(&[("zone.x", "41 2, 42")]))
        .expect_err("refused");
    assert!(matches!(err, PluginError::InitRefused(_)), "{err}");
    assert!(err.to_string().contains("zone x"), "{err}");
    assert_eq!(registry.generation(), generation);
    assert!(registry.list().is_empty());
}

#[test]
fn jitter_filter_drops_inaccurate_fixes_and_jumps_remembering_couriers_across_batches() {
    let registry = registry();
    registry.deploy("jitter", &component("jitter-filter"), settings(&[])).expect("deploy");
    let mut chain = registry.chain();
    let out = chain.process(vec![fix("c1", 1_000, 41.0, 2.0), fix("c2", 1_000, 41.0, 2.0)]);
    assert_eq!(out.kept.len(), 2);
    // 10 s later: c1 jumped ~111 km (11 km/s), c2 moved ~100 m, c3 is new but inaccurate.
    let out = chain.process(vec![
        fix("c1", 11_000, 42.0, 2.0),
        fix("c2", 11_000, 41.0009, 2.0),
        with_accuracy(fix("c3", 11_000, 41.0, 2.0), 50_000),
    ]);
    assert_eq!(out.dropped, 2);
    assert_eq!(out.kept.len(), 1);
    assert_eq!(out.kept[0].courier, "c2");

    // With `reject`, filtered fixes become dead letters with the reason.
    registry
        .deploy("jitter", &component("jitter-filter"), settings(&[("reject", "true")]))
        .expect("redeploy");
    let out = chain.process(vec![with_accuracy(fix("c4", 1, 41.0, 2.0), 10_000)]);
    assert_eq!(out.dead_letters.len(), 1);
    let letter = &out.dead_letters[0];
    let text = "accuracy 100 m is worse than 50 m";
    assert_eq!(letter.reason, DeadLetterReason::PluginRejected(text.into()));
    assert_eq!(letter.reason.as_str(), "plugin_rejected");
    assert!(letter.detail.ends_with("rejected the fix: accuracy 100 m is worse than 50 m"));
    // The payload is the input the fix was read from, not the fix.
    assert_eq!((letter.payload.as_slice(), letter.received_ms), (&b"report c4 1"[..], 1_001));
    let DeadLetterSource::Plugin { name, version, input } = &letter.source else {
        panic!("{:?}", letter.source)
    };
    assert_eq!((name.as_str(), version.len()), ("jitter", 16));
    assert_eq!(**input, DeadLetterSource::Mqtt { topic: "couriers/c4/locations".into() });
    assert_eq!(letter.source.topic(), "couriers/c4/locations");

    // Fixes of one report refused for one reason share one letter holding the report once;
    // another reason, or another report, gets its own.
    let report = report_input("c5", 7);
    let of_report = |ts_ms, accuracy_cm| {
        let fix = PendingFix::new("c5".into(), Fix::from_degrees(ts_ms, 41.0, 2.0), report.clone());
        with_accuracy(fix, accuracy_cm)
    };
    let out = chain.process(vec![
        of_report(10, 10_000),
        with_accuracy(fix("c6", 10, 41.0, 2.0), 10_000),
        of_report(11, 10_000),
        of_report(12, 100),
        of_report(13, 20_000),
    ]);
    assert_eq!(out.kept.len(), 1);
    let letters: Vec<(&str, &[u8])> =
        out.dead_letters.iter().map(|l| (l.detail.as_str(), l.payload.as_slice())).collect();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(
        letters[0]
            .0
            .ends_with("rejected 2 fixes (device times 10, 11): accuracy 100 m is worse than 50 m"),
        "{letters:?}"
    );
    assert_eq!(letters[0].1, b"report c5 7");
    assert_eq!(letters[1].1, b"report c6 10");
    assert!(
        letters[2].0.ends_with("rejected the fix: accuracy 200 m is worse than 50 m"),
        "{letters:?}"
    );
    assert_eq!(letters[2].1, b"report c5 7");
}

#[test]
fn motion_derives_speed_and_heading_from_consecutive_fixes() {
    let registry = registry();
    registry.deploy("motion", &component("motion"), settings(&[])).expect("deploy");
    let mut chain = registry.chain();
    let out = chain.process(vec![fix("c1", 0, 41.0, 2.0)]);
    assert_eq!(out.kept[0].fix.details, None, "nothing to derive from yet");
    // ~111 m due east... no: 0.001 degree of latitude north, 10 s later.
    let out = chain.process(vec![fix("c1", 10_000, 41.001, 2.0)]);
    let details = out.kept[0].fix.details.clone().expect("derived");
    let speed = details.speed_cm_s.expect("speed");
    assert!((1100..=1125).contains(&speed), "{speed} cm/s");
    let heading = details.heading_cdeg.expect("heading");
    assert!(heading <= 1 || heading >= 35_999, "{heading} cdeg");
    assert_eq!(attr(&out.kept[0], "motion"), Some("derived"));
}

#[test]
fn chain_runs_in_position_order_and_swaps_between_batches() {
    let registry = registry();
    let mut chain = registry.chain();
    let before = chain.process(vec![fix("c1", 1, 41.385, 2.16)]);
    assert_eq!(before.kept[0].attributes, vec![]);

    // The jitter filter runs first (position 10): its drop means the tagger never sees the fix.
    registry
        .deploy("zones", &component("zone-tagger"), settings(&[("zone.eixample", EIXAMPLE)]))
        .expect("deploy zones");
    let jitter = PluginSettings { position: 10, ..settings(&[("max_accuracy_m", "20")]) };
    registry.deploy("jitter", &component("jitter-filter"), jitter).expect("deploy jitter");
    let names: Vec<_> = registry.list().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["jitter", "zones"]);

    let after = chain.process(vec![
        fix("c1", 2, 41.385, 2.16),
        with_accuracy(fix("c2", 2, 41.385, 2.16), 5_000),
    ]);
    assert!(after.generation > before.generation);
    assert_eq!(after.kept.len(), 1);
    assert_eq!(after.dropped, 1);
    assert_eq!(attr(&after.kept[0], "zone"), Some("eixample"));
    assert_eq!(registry.get("zones").expect("zones").stats.fixes_in, 1);
}

#[test]
fn infinite_loop_hits_the_deadline_and_a_fresh_instance_takes_the_next_batch() {
    let registry = registry();
    registry
        .deploy("hostile", &component("hostile"), hostile(FailurePolicy::DeadLetter))
        .expect("deploy");
    let mut chain = registry.chain();
    let out = chain.process(vec![fix("loop", 1, 41.0, 2.0), fix("c1", 1, 41.0, 2.0)]);
    assert!(out.kept.is_empty());
    assert_eq!(out.dead_letters.len(), 2);
    let letter = &out.dead_letters[0];
    assert_eq!(letter.reason, DeadLetterReason::PluginFailed);
    assert!(letter.detail.contains("plugin hostile version "), "{}", letter.detail);
    assert!(letter.detail.contains("time budget of 50 ms"), "{}", letter.detail);
    assert_eq!(letter.courier.as_deref(), Some("loop"));
    assert_eq!(letter.source.topic(), "couriers/loop/locations");
    assert!(matches!(&letter.source, DeadLetterSource::Plugin { name, .. } if name == "hostile"));
    assert_eq!(letter.payload, b"report loop 1", "the input as received, not the fix");
    let info = registry.get("hostile").expect("listed");
    assert_eq!(info.state, "failing");
    assert!(info.stats.last_error.expect("last error").reason.contains("time budget"));

    let out = chain.process(vec![fix("c1", 2, 41.0, 2.0)]);
    assert_eq!(out.kept.len(), 1);
    assert_eq!(attr(&out.kept[0], "hostile"), Some("benign"));
    let stats = registry.get("hostile").expect("listed").stats;
    assert_eq!((stats.calls, stats.errors, stats.instances_started), (2, 1, 2));
    assert_eq!(registry.get("hostile").expect("listed").state, "active");
}

#[test]
fn skip_policy_passes_the_batch_on_and_the_next_plugin_still_runs() {
    let registry = registry();
    let looping = PluginSettings { position: 1, ..hostile(FailurePolicy::Skip) };
    registry.deploy("hostile", &component("hostile"), looping).expect("deploy hostile");
    registry
        .deploy("zones", &component("zone-tagger"), settings(&[("zone.eixample", EIXAMPLE)]))
        .expect("deploy zones");
    let mut chain = registry.chain();
    for courier in ["loop", "bomb", "panic", "sleep"] {
        let out = chain.process(vec![fix(courier, 1, 41.385, 2.16)]);
        assert!(out.dead_letters.is_empty(), "{courier}");
        assert_eq!(out.kept.len(), 1, "{courier}");
        assert_eq!(attr(&out.kept[0], "hostile"), None, "{courier}: passed on unchanged");
        assert_eq!(attr(&out.kept[0], "zone"), Some("eixample"), "{courier}: next plugin ran");
    }
    let stats = registry.get("hostile").expect("listed").stats;
    assert_eq!(stats.errors, 4);
    assert_eq!(registry.get("zones").expect("listed").stats.errors, 0);
}

fn failure_detail(courier: &str) -> String {
    let registry = registry();
    let settings = hostile_with(FailurePolicy::DeadLetter, 5_000);
    registry.deploy("hostile", &component("hostile"), settings).expect("deploy");
    let mut chain = registry.chain();
    let out = chain.process(vec![fix(courier, 1, 41.0, 2.0)]);
    assert_eq!(out.dead_letters.len(), 1, "{courier}");
    assert!(out.kept.is_empty());
    // Contained: the plugin works again on the next batch.
    let out = chain.process(vec![fix("c1", 2, 41.0, 2.0)]);
    assert_eq!(attr(&out.kept[0], "hostile"), Some("benign"), "{courier}");
    out_detail(&registry)
}

fn out_detail(registry: &PluginRegistry) -> String {
    registry.get("hostile").and_then(|p| p.stats.last_error).map(|e| e.reason).unwrap_or_default()
}

#[test]
fn memory_bomb_is_refused_by_the_cap() {
    let detail = failure_detail("bomb");
    assert!(detail.contains("memory cap of 16 MiB"), "{detail}");
}

#[test]
fn panic_is_a_trap_with_the_message() {
    let detail = failure_detail("panic");
    assert!(detail.contains("hostile guest panics on purpose"), "{detail}");
}

#[test]
fn sleeping_is_refused_not_waited_for() {
    let detail = failure_detail("sleep");
    assert!(detail.contains("may not block"), "{detail}");
}

#[test]
fn bad_output_fails_the_batch() {
    for (courier, expected) in [
        ("short", "returned 0 outcomes for 1 fixes"),
        ("impostor", "changed the courier"),
        ("nan", "latitude NaN"),
        ("flood", "attributes on one fix"),
    ] {
        let detail = failure_detail(courier);
        assert!(detail.contains(expected), "{courier}: {detail}");
    }
}

#[test]
fn the_sandbox_grants_no_clock_environment_files_or_network() {
    let registry = registry();
    registry.deploy("hostile", &component("hostile"), settings(&[])).expect("deploy");
    let out = registry.chain().process(vec![fix("probe", 1, 41.0, 2.0)]);
    let probed = &out.kept[0];
    assert_eq!(attr(probed, "clock"), Some("0"));
    assert_eq!(attr(probed, "env"), Some("0"));
    assert!(attr(probed, "files").is_some_and(|v| v.starts_with("error")), "{probed:?}");
    assert!(attr(probed, "network").is_some_and(|v| v.starts_with("error")), "{probed:?}");

    // The clocks capability grants real clocks.
    let clocks = PluginSettings { capabilities: Capabilities { clocks: true }, ..settings(&[]) };
    registry.deploy("hostile", &component("hostile"), clocks).expect("redeploy");
    let out = registry.chain().process(vec![fix("probe", 1, 41.0, 2.0)]);
    let seconds: u64 = attr(&out.kept[0], "clock").and_then(|v| v.parse().ok()).expect("clock");
    assert!(seconds > 1_700_000_000);
}

#[test]
fn refuses_components_of_another_contract_or_world_and_non_wasm() {
    let registry = registry();
    registry
        .deploy("zones", &component("zone-tagger"), settings(&[("zone.eixample", EIXAMPLE)]))
        .expect("deploy");
    let generation = registry.generation();

    let err =
        registry.deploy("zones", &component("wrong-contract"), settings(&[])).expect_err("version");
    assert!(matches!(err, PluginError::ContractMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("locus:plugin/transform@0.2.0"), "{message}");
    assert!(message.contains("needs locus:plugin@0.1.0"), "{message}");

    let err =
        registry.deploy("zones", &component("wrong-world"), settings(&[])).expect_err("world");
    assert!(matches!(err, PluginError::NotAPlugin { .. }), "{err}");
    assert!(err.to_string().contains("greet"), "{err}");

    let err = registry.deploy("zones", b"definitely not wasm", settings(&[])).expect_err("bytes");
    assert!(matches!(err, PluginError::NotAComponent(_)), "{err}");
    let err = registry.deploy("zones", b"\0asm\x01\0\0\0", settings(&[])).expect_err("core");
    assert!(err.to_string().contains("core WebAssembly module"), "{err}");
    let mut truncated = component("zone-tagger");
    truncated.truncate(truncated.len() / 2);
    let err = registry.deploy("zones", &truncated, settings(&[])).expect_err("truncated");
    assert!(matches!(err, PluginError::NotAComponent(_)), "{err}");

    let err = registry.deploy("zones", &component("hostile"), settings(&[("fail_init", "nope")]));
    assert!(matches!(err, Err(PluginError::InitRefused(ref m)) if m == "nope"), "{err:?}");
    let err = registry.deploy("Bad/Name", &component("hostile"), settings(&[])).expect_err("name");
    assert!(matches!(err, PluginError::InvalidName(_)));

    // Nothing changed: same chain version, the tagger still runs.
    assert_eq!(registry.generation(), generation);
    let out = registry.chain().process(vec![fix("c1", 1, 41.385, 2.16)]);
    assert_eq!(attr(&out.kept[0], "zone"), Some("eixample"));
}

#[test]
fn deployments_persist_roll_back_and_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::open(dir.path().join("db")).expect("sled");
    let tree = db.open_tree("plugins").expect("tree");
    let zones_v1 = settings(&[("zone.eixample", EIXAMPLE)]);
    let zones_v2 = settings(&[("zone.eixample", EIXAMPLE), ("attribute", "area")]);
    {
        let registry = registry_on(tree.clone(), None);
        registry.deploy("zones", &component("zone-tagger"), zones_v1.clone()).expect("v1");
        let info =
            registry.deploy("zones", &component("zone-tagger"), zones_v2.clone()).expect("v2");
        assert_eq!(info.previous_version.as_deref(), Some(info.version.as_str()));
        registry.deploy("motion", &component("motion"), settings(&[])).expect("motion");
    }
    // A new registry on the same tree (a restart) has both, with the rollback target.
    let registry = registry_on(tree.clone(), None);
    let names: Vec<_> = registry.list().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["motion", "zones"]);
    let mut chain = registry.chain();
    let out = chain.process(vec![fix("c1", 1, 41.385, 2.16)]);
    assert_eq!(attr(&out.kept[0], "area"), Some("eixample"));

    let info = registry.rollback("zones").expect("rollback");
    assert_eq!(info.settings, zones_v1);
    let out = chain.process(vec![fix("c1", 2, 41.385, 2.16)]);
    assert_eq!(attr(&out.kept[0], "zone"), Some("eixample"));
    assert_eq!(attr(&out.kept[0], "area"), None);
    assert!(matches!(registry.rollback("motion"), Err(PluginError::NoPreviousVersion(_))));

    registry.remove("zones").expect("remove");
    assert!(matches!(registry.remove("zones"), Err(PluginError::NotFound(_))));
    let out = chain.process(vec![fix("c1", 3, 41.385, 2.16)]);
    assert_eq!(attr(&out.kept[0], "zone"), None);
    drop(registry);
    let registry = registry_on(tree.clone(), None);
    assert_eq!(registry.list().len(), 1);
    // Only the motion component is still stored.
    assert_eq!(tree.scan_prefix("component/").count(), 1);
}

#[test]
fn the_plugins_directory_is_deployed_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("zones.wasm"), component("zone-tagger")).expect("write");
    std::fs::write(
        dir.path().join("zones.toml"),
        format!("position = 5\nfailure_policy = \"skip\"\n[config]\n\"zone.eixample\" = \"{EIXAMPLE}\"\n"),
    )
    .expect("write");
    let db = sled::Config::new().temporary(true).open().expect("sled");
    let tree = db.open_tree("plugins").expect("tree");
    let registry = registry_on(tree.clone(), Some(dir.path()));
    let info = registry.get("zones").expect("deployed");
    assert_eq!(info.settings.failure_policy, FailurePolicy::Skip);
    assert_eq!(info.source, registry::PluginSource::Directory);
    drop(registry);
    // Unchanged files are not redeployed at the next start (no new previous version).
    let registry = registry_on(tree, Some(dir.path()));
    assert_eq!(registry.get("zones").expect("deployed").previous_version, None);

    std::fs::write(dir.path().join("broken.wasm"), b"nope").expect("write");
    let host = PluginHost::new(&PluginHostConfig::default()).expect("host");
    let db = sled::Config::new().temporary(true).open().expect("sled");
    let (registry, problems) =
        PluginRegistry::open(host, db.open_tree("p").expect("tree"), Some(dir.path()))
            .expect("open");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].plugin, "broken");
    assert!(registry.get("zones").is_some());
}

#[test]
fn plugin_test_runs_a_component_over_json_fixes() {
    let json = r#"[{"courier":"c1","ts":1,"lat":41.385,"lon":2.16,"accuracy":3.5},
                   {"courier":"c2","ts":1,"lat":40.0,"lon":3.0}]"#;
    let out = scaffold::test_plugin_json(
        &component("zone-tagger"),
        &settings(&[("zone.eixample", EIXAMPLE)]),
        json,
    )
    .expect("runs");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["outcomes"][0]["outcome"], "keep");
    assert_eq!(report["outcomes"][0]["fix"]["attributes"][0][1], "eixample");
    assert_eq!(report["outcomes"][0]["fix"]["accuracy"], 3.5);
    assert!(report["outcomes"][1]["fix"].get("attributes").is_none());

    let err = scaffold::test_plugin_json(
        &component("hostile"),
        &settings(&[]),
        r#"[{"courier":"panic","ts":1,"lat":1,"lon":1}]"#,
    )
    .expect_err("panics");
    assert!(err.to_string().contains("panics on purpose"), "{err}");
}

#[test]
fn a_new_scaffold_builds_and_tags_every_fix_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crate_dir = scaffold::new_plugin(dir.path(), "hello-world").expect("scaffold");
    // Built into the plugins workspace's target directory, where wit-bindgen is already built
    // (same profile), rather than compiling it again in the scaffold's own.
    let shared = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/target"));
    let built = scaffold::build_components_into(&crate_dir, Some(&shared)).expect("builds");
    assert_eq!(built.len(), 1, "{built:?}");
    assert!(built[0].ends_with("wasm32-wasip2/release/hello_world.wasm"), "{built:?}");
    let registry = registry();
    registry
        .deploy("hello-world", &std::fs::read(&built[0]).expect("read"), settings(&[]))
        .expect("deploy");
    let out = registry.chain().process(vec![fix("c1", 1, 41.0, 2.0)]);
    assert_eq!(attr(&out.kept[0], "scaffold"), Some("hello-world"));
    // The sample input of the scaffold works with `plugin test`.
    let sample = std::fs::read_to_string(crate_dir.join("fixes.json")).expect("sample");
    let report = scaffold::test_plugin_json(
        &std::fs::read(&built[0]).expect("read"),
        &settings(&[]),
        &sample,
    )
    .expect("test");
    assert!(report.contains("hello-world"));
    assert!(scaffold::new_plugin(dir.path(), "hello-world").is_err(), "no overwrite");
}

#[test]
fn the_chain_can_move_to_the_pipeline_thread_and_the_registry_is_shared() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<PluginChain>();
    send_sync::<PluginRegistry>();
    let boxed: Box<dyn crate::pipeline::FixTransform> = Box::new(registry().chain());
    drop(boxed);
}
