//! From nothing to a running plugin: `locusd plugin new | build | test`.
//!
//! What enters: a plugin name and a directory ([`new_plugin`]), a plugin crate or workspace
//! ([`build_components`]), a component and JSON fixes ([`test_plugin`]). What leaves: a plugin
//! crate on disk, the paths of built components, the plugin's outcomes as JSON.
//!
//! How a scaffold depends on the guest kit: it does not point back at this repository. `locusd`
//! embeds the kit's source (`plugins/locus-plugin/src/lib.rs`) and the contract
//! (`plugins/wit/plugin.wit`) at build time and writes both into the new crate
//! (`NAME/locus-plugin/` and `NAME/wit/`, the same relative layout as in the repository, so the
//! kit's `path: "../wit"` resolves in both). The scaffold is its own Cargo workspace. So it builds
//! from any directory — inside another workspace, or with no Locus checkout at all — against
//! exactly the contract of the `locusd` that created it; it only needs `wit-bindgen` from
//! crates.io and the `wasm32-wasip2` target.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::host::PluginHost;
use super::instance::{from_guest, to_guest, Fix, Outcome, PluginInstance};
use super::{PluginError, PluginHostConfig, PluginSettings};
use crate::pipeline::{FixInput, PendingFix};
use crate::store::DeadLetterSource;

/// The guest kit's source, embedded so scaffolds need no checkout of this repository.
const KIT_LIB: &str = include_str!("../../../plugins/locus-plugin/src/lib.rs");
/// The contract, embedded likewise.
const CONTRACT_WIT: &str = include_str!("../../../plugins/wit/plugin.wit");
/// The target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Writes a new plugin crate `parent/name`. Unchanged, it is a working plugin that adds the
/// attribute `scaffold` = `name` to every fix. Refuses to overwrite an existing directory.
/// Returns the crate's directory.
pub fn new_plugin(parent: &Path, name: &str) -> Result<PathBuf, PluginError> {
    let valid = super::is_valid_name(name)
        && name.as_bytes()[0].is_ascii_lowercase()
        && !matches!(name, "locus-plugin" | "locus_plugin" | "test" | "core" | "std" | "alloc");
    if !valid {
        return Err(PluginError::InvalidName(format!(
            "{name} (a plugin crate name starts with a letter and is not locus-plugin, test, \
             core, std or alloc)"
        )));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(PluginError::Io {
            path: dir,
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists"),
        });
    }
    let files: [(&str, String); 8] = [
        ("Cargo.toml", plugin_manifest(name)),
        ("src/lib.rs", plugin_lib(name)),
        ("locus-plugin/Cargo.toml", KIT_MANIFEST.to_string()),
        ("locus-plugin/src/lib.rs", KIT_LIB.to_string()),
        ("wit/plugin.wit", CONTRACT_WIT.to_string()),
        ("fixes.json", SAMPLE_FIXES.to_string()),
        ("README.md", plugin_readme(name)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, contents) in files {
        let path = dir.join(file);
        let io = |source| PluginError::Io { path: path.clone(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, contents).map_err(io)?;
    }
    Ok(dir)
}

fn plugin_manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
# The Locus guest kit, vendored by `locusd plugin new` together with the contract in wit/.
locus-plugin = {{ path = "locus-plugin" }}

# A workspace of its own, so the plugin builds wherever it lives.
[workspace]

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = "debuginfo"
"#
    )
}

const KIT_MANIFEST: &str = r#"[package]
name = "locus-plugin"
description = "The guest kit for Locus plugins (vendored by `locusd plugin new`)"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
wit-bindgen = "0.61"
"#;

fn plugin_lib(name: &str) -> String {
    format!(
        r#"//! {name}: a Locus plugin.
//!
//! As generated, it adds the attribute `scaffold` = `{name}` to every fix. Change
//! `process_fix` (or override `process` to see whole batches) and `init` to read configuration.

use locus_plugin::{{export_plugin, Config, Fix, Outcome, Plugin}};

struct MyPlugin;

impl Plugin for MyPlugin {{
    fn init(_config: &Config) -> Result<Self, String> {{
        Ok(MyPlugin)
    }}

    fn process_fix(&mut self, mut fix: Fix) -> Outcome {{
        fix.set_attribute("scaffold", "{name}");
        Outcome::Keep(fix)
    }}
}}

export_plugin!(MyPlugin);
"#
    )
}

fn plugin_readme(name: &str) -> String {
    format!(
        r#"# {name}

A Locus plugin. The contract is `wit/plugin.wit`; the guest kit is `locus-plugin/`.

    locusd plugin build .                                   # prints the component's path last
    locusd plugin test target/wasm32-wasip2/release/{file}.wasm --input fixes.json
    locusd plugin deploy target/wasm32-wasip2/release/{file}.wasm --name {name} \
        --server http://127.0.0.1:8080 --token ADMIN_TOKEN

Building needs the target once: `rustup target add wasm32-wasip2`.
"#,
        file = name.replace('-', "_")
    )
}

const SAMPLE_FIXES: &str = r#"[
  {"courier": "c1", "ts": 1763700000000, "lat": 41.3851, "lon": 2.1734},
  {"courier": "c1", "ts": 1763700005000, "lat": 41.3853, "lon": 2.1738, "accuracy": 4.5}
]
"#;

/// Builds every plugin crate of the Cargo package or workspace at `manifest` for
/// `wasm32-wasip2` in release mode and returns the components' paths (cargo's progress goes to
/// stderr). The build uses the manifest's own `target/` directory, never the caller's
/// `CARGO_TARGET_DIR`: a test run holds the lock on that one.
pub fn build_components(manifest: &Path) -> Result<Vec<PathBuf>, PluginError> {
    build_components_into(manifest, None)
}

/// [`build_components`] with another target directory (`None`: the manifest's `target/`). Plugin
/// crates built into one directory share their compiled dependencies (wit-bindgen).
pub fn build_components_into(
    manifest: &Path,
    target_dir: Option<&Path>,
) -> Result<Vec<PathBuf>, PluginError> {
    let manifest =
        if manifest.is_dir() { manifest.join("Cargo.toml") } else { manifest.to_path_buf() };
    let target_dir = match target_dir {
        Some(dir) => dir.to_path_buf(),
        None => manifest.parent().unwrap_or(Path::new(".")).join("target"),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the host (say, -C target-cpu=native) would break the Wasm build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| PluginError::Io { path: manifest.clone(), source })?;
    if !output.status.success() {
        return Err(PluginError::Run(format!(
            "cargo build for {TARGET} of {} failed ({}); if the target is missing: rustup \
             target add {TARGET}",
            manifest.display(),
            output.status
        )));
    }
    let mut components = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<CargoMessage>(line) else { continue };
        if message.reason == "compiler-artifact" {
            components.extend(
                message
                    .filenames
                    .into_iter()
                    .filter(|f| f.extension().is_some_and(|e| e == "wasm")),
            );
        }
    }
    components.sort();
    components.dedup();
    Ok(components)
}

#[derive(Deserialize)]
struct CargoMessage {
    reason: String,
    #[serde(default)]
    filenames: Vec<PathBuf>,
}

/// A fix as JSON for `locusd plugin test`: the wire's JSON fix plus the courier and attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFix {
    /// The courier.
    pub courier: String,
    /// Device time, Unix milliseconds.
    pub ts: u64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Horizontal accuracy, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Ground speed, metres per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Heading, degrees clockwise from true north.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    /// Battery level, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
    /// Order id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// Attributes, as `[key, value]` pairs in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, String)>,
}

/// One outcome of `locusd plugin test`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum TestOutcome {
    /// Kept, as the server would commit it.
    Keep {
        /// The fix.
        fix: TestFix,
    },
    /// Dropped.
    Drop,
    /// Rejected with a reason.
    Reject {
        /// Why.
        reason: String,
    },
}

/// What `locusd plugin test` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestReport {
    /// One outcome per input fix.
    pub outcomes: Vec<TestOutcome>,
    /// What the plugin logged.
    pub logs: Vec<String>,
}

/// Runs a component over fixes, as the server would (same sandbox, limits from `settings`), in
/// one batch. A fix that the server would refuse (off the globe, say) is an error here.
pub fn test_plugin(
    bytes: &[u8],
    settings: &PluginSettings,
    fixes: Vec<TestFix>,
) -> Result<TestReport, PluginError> {
    settings.validate()?;
    let host = PluginHost::new(&PluginHostConfig::default())?;
    let compiled = host.compile(bytes)?;
    let pending = test_fixes_to_pending(fixes)?;
    let mut instance = PluginInstance::start(&host, &compiled, "test".into(), settings, true)?;
    let guest: Vec<Fix> = pending.iter().map(to_guest).collect();
    let outcomes = instance.process(&guest).map_err(|failure| PluginError::Run(failure.reason))?;
    let outcomes = pending
        .iter()
        .zip(outcomes)
        .map(|(original, outcome)| match outcome {
            Outcome::Keep(fix) => from_guest(original, fix)
                .map(|fix| TestOutcome::Keep { fix: guest_to_test_fix(to_guest(&fix)) })
                .map_err(|problem| PluginError::Run(format!("bad output: {problem}"))),
            Outcome::Drop => Ok(TestOutcome::Drop),
            Outcome::Reject(reason) => Ok(TestOutcome::Reject { reason }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TestReport { outcomes, logs: instance.take_captured_logs() })
}

/// The input fixes of `locusd plugin test` as the server would hand them to a plugin, checked as
/// the server checks a plugin's output (ranges, ids, attribute limits).
pub fn test_fixes_to_pending(fixes: Vec<TestFix>) -> Result<Vec<PendingFix>, PluginError> {
    fixes
        .into_iter()
        .enumerate()
        .map(|(i, fix)| {
            // As if published by the courier (nothing is dead-lettered here: a test reports
            // rejections as outcomes).
            let topic = locus_sdk::topics::locations(&fix.courier);
            let source = DeadLetterSource::Mqtt { topic };
            let input = FixInput::new(source, bytes::Bytes::new(), 0);
            let blank = locus_sdk::wire::Fix { ts_ms: 0, lat_e7: 0, lon_e7: 0, details: None };
            let original = PendingFix::new(fix.courier.clone(), blank, input);
            from_guest(&original, test_fix_to_guest(fix)).map_err(|problem| {
                PluginError::Run(format!("input fix {i}: {}", problem.replacen("returned ", "", 1)))
            })
        })
        .collect()
}

/// Parses the `--input` of `locusd plugin test`: a JSON array of [`TestFix`]es.
pub fn parse_test_fixes(fixes_json: &str) -> Result<Vec<TestFix>, PluginError> {
    serde_json::from_str(fixes_json)
        .map_err(|e| PluginError::Run(format!("input is not a JSON array of fixes: {e}")))
}

/// [`test_plugin`] over a JSON array of [`TestFix`]es, answering pretty JSON of a
/// [`TestReport`].
pub fn test_plugin_json(
    bytes: &[u8],
    settings: &PluginSettings,
    fixes_json: &str,
) -> Result<String, PluginError> {
    let fixes = parse_test_fixes(fixes_json)?;
    let report = test_plugin(bytes, settings, fixes)?;
    serde_json::to_string_pretty(&report).map_err(|e| PluginError::Run(e.to_string()))
}

fn test_fix_to_guest(fix: TestFix) -> Fix {
    Fix {
        courier: fix.courier,
        order: fix.order,
        ts_ms: fix.ts,
        lat: fix.lat,
        lon: fix.lon,
        accuracy_m: fix.accuracy,
        speed_m_s: fix.speed,
        heading_deg: fix.heading,
        battery_pct: fix.battery,
        attributes: fix.attributes,
    }
}

fn guest_to_test_fix(fix: Fix) -> TestFix {
    TestFix {
        courier: fix.courier,
        ts: fix.ts_ms,
        lat: fix.lat,
        lon: fix.lon,
        accuracy: fix.accuracy_m,
        speed: fix.speed_m_s,
        heading: fix.heading_deg,
        battery: fix.battery_pct,
        order: fix.order,
        attributes: fix.attributes,
    }
}
