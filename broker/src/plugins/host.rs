//! The engine, the sandbox and the contract check.
//!
//! What enters: component bytes. What leaves: a [`CompiledPlugin`] — the compiled component and
//! its pre-linked [`PluginPre`] (imports resolved once, so instantiating is cheap) — or a
//! [`PluginError`] saying why the bytes are refused: not Wasm, not a component, the wrong
//! contract version, not a plugin, imports the sandbox does not offer.
//!
//! There is one [`PluginHost`] per process: one [`Engine`] (compiled code and its caches are
//! per engine), one [`Linker`] and one epoch ticker thread that advances the engine's epoch every
//! [`PluginHostConfig::epoch_tick_ms`]; each call into a guest gets a deadline in ticks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime::component::{Component, Linker, Val};
use wasmtime::{Config, Engine};

use super::instance::{HostState, PluginPre};
use super::{PluginError, CONTRACT, CONTRACT_VERSION, TRANSFORM_INTERFACE};

/// Host-wide plugin settings (the `[plugins]` section of the server configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginHostConfig {
    /// How often the epoch ticker advances the engine's epoch, milliseconds: the granularity of
    /// the per-call time budgets. Default 5.
    #[serde(default = "default_epoch_tick_ms")]
    pub epoch_tick_ms: u64,
    /// A directory of plugins deployed at start: `NAME.wasm`, with optional settings in
    /// `NAME.toml` (the same fields as the API's settings). Default: none.
    #[serde(default)]
    pub dir: Option<std::path::PathBuf>,
}

fn default_epoch_tick_ms() -> u64 {
    5
}

impl Default for PluginHostConfig {
    fn default() -> Self {
        PluginHostConfig { epoch_tick_ms: default_epoch_tick_ms(), dir: None }
    }
}

/// The engine, the sandbox linker and the epoch ticker. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    engine: Engine,
    linker: Linker<HostState>,
    epoch_tick: Duration,
    ticker: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").field("epoch_tick", &self.inner.epoch_tick).finish()
    }
}

impl Drop for HostInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            ticker.thread().unpark();
            let _ = ticker.join();
        }
    }
}

/// A component that passed the contract check and links in the sandbox.
#[derive(Clone)]
pub struct CompiledPlugin {
    /// Pre-linked: instantiating it only allocates the instance.
    pub(crate) pre: PluginPre<HostState>,
}

impl std::fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPlugin").finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Creates the engine, the sandbox linker and starts the epoch ticker thread (stopped when
    /// the last clone of the host is dropped).
    pub fn new(config: &PluginHostConfig) -> Result<Self, PluginError> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&wasm).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let linker = sandbox_linker(&engine).map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let epoch_tick = Duration::from_millis(config.epoch_tick_ms.clamp(1, 1000));
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // park_timeout, not sleep: Drop unparks the thread to stop it promptly.
                        std::thread::park_timeout(epoch_tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Engine(format!("epoch ticker thread: {e}")))?
        };
        Ok(PluginHost {
            inner: Arc::new(HostInner { engine, linker, epoch_tick, ticker: Some(ticker), stop }),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The epoch deadline, in ticks, that gives a call at least `timeout_ms`.
    pub(crate) fn deadline_ticks(&self, timeout_ms: u64) -> u64 {
        let tick = self.inner.epoch_tick.as_millis().max(1) as u64;
        // +1: the next tick may come right after the deadline is set.
        timeout_ms.div_ceil(tick) + 1
    }

    /// Compiles `bytes`, checks them against the contract and links them in the sandbox.
    ///
    /// CPU-heavy (Cranelift compiles the whole component): call it off async executors, e.g. in
    /// `tokio::task::spawn_blocking`.
    pub fn compile(&self, bytes: &[u8]) -> Result<CompiledPlugin, PluginError> {
        let engine = &self.inner.engine;
        if !bytes.starts_with(b"\0asm") {
            return Err(PluginError::NotAComponent(
                "the bytes do not start with the WebAssembly magic number".into(),
            ));
        }
        if is_core_module(bytes) {
            return Err(PluginError::NotAComponent(
                "this is a core WebAssembly module, not a component: build the plugin for \
                 wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
                    .into(),
            ));
        }
        let component = Component::new(engine, bytes)
            .map_err(|e| PluginError::NotAComponent(format!("{e:#}")))?;
        check_contract(engine, &component)?;
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link(format!("{e:#}")))?;
        let pre = PluginPre::new(instance_pre).map_err(|e| PluginError::Link(format!("{e:#}")))?;
        Ok(CompiledPlugin { pre })
    }
}

/// Core modules have version 1 in the 4 bytes after the magic, components a different layer.
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(&[1, 0, 0, 0])
}

/// Refuses components that do not export the transform interface of a compatible version.
fn check_contract(engine: &Engine, component: &Component) -> Result<(), PluginError> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let prefix = format!("{TRANSFORM_INTERFACE}@");
    let mut found = None;
    for name in &exports {
        if let Some(version) = name.strip_prefix(&prefix) {
            if compatible(version, CONTRACT_VERSION) {
                return Ok(());
            }
            found = Some(name.to_string());
        } else if *name == TRANSFORM_INTERFACE {
            found = Some(format!("{name} (unversioned)"));
        }
    }
    match found {
        Some(found) => Err(PluginError::ContractMismatch {
            found,
            needed: CONTRACT,
            compatible: compatible_range(CONTRACT_VERSION),
        }),
        None => Err(PluginError::NotAPlugin { exports: exports.join(", ") }),
    }
}

/// Semver compatibility as the component model uses it: same major, and below 1.0 same minor.
fn compatible(version: &str, ours: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(version), parse(ours)) {
        (Some((major, minor)), Some((our_major, our_minor))) => {
            major == our_major && (major > 0 || minor == our_minor)
        }
        _ => false,
    }
}

fn compatible_range(ours: &str) -> String {
    let mut parts = ours.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}.x"),
        (Some(major), _) => format!("{major}.x"),
        _ => ours.to_string(),
    }
}

/// The linker every plugin is instantiated with: the `log` import, and WASI with nothing granted.
///
/// Why WASI at all: Rust's standard library for `wasm32-wasip2` imports WASI interfaces (stderr
/// for panic messages, random for `HashMap`, clocks), so a component built with plain `cargo
/// build` needs them to link. Rather than stubbing each, the host gives a real WASI context that
/// grants nothing (see [`super::instance`] for what each part returns), and replaces the two
/// functions that could block the pipeline thread — `wasi:io/poll.poll` and `pollable.block`,
/// which sleeping and waiting go through — with traps. A plugin never waits: it computes.
fn sandbox_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::<HostState>::new(engine);
    super::instance::add_log_to_linker(&mut linker)?;
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;

    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_POLL)?;
    poll.func_new("poll", |_store, _ty, _params: &[Val], _results: &mut [Val]| {
        Err(wasmtime::format_err!("{BLOCKING_REFUSED}"))
    })?;
    poll.func_new(
        "[method]pollable.block",
        |_store, _ty, _params: &[Val], _results: &mut [Val]| {
            Err(wasmtime::format_err!("{BLOCKING_REFUSED}"))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// The `wasi:io/poll` instance name wasmtime-wasi registers (guests importing an older 0.2.x are
/// matched to it by semver).
const WASI_POLL: &str = "wasi:io/poll@0.2.12";

/// The trap message when a guest tries to wait.
pub(crate) const BLOCKING_REFUSED: &str =
    "plugins may not block (sleep or wait on a stream): the call was stopped";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_compatibility() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.7", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("1.1.0", "0.1.0"));
        assert!(compatible("1.4.0", "1.0.0"));
        assert!(!compatible("garbage", "0.1.0"));
        assert_eq!(compatible_range("0.1.0"), "0.1.x");
        assert_eq!(compatible_range("2.3.0"), "2.x");
    }

    #[test]
    fn wit_declares_the_contract_version() {
        let wit = include_str!("../../../plugins/wit/plugin.wit");
        assert!(
            wit.contains(&format!("package {CONTRACT};")),
            "plugin.wit must declare {CONTRACT}"
        );
    }
}
