//! One live instance of one plugin, and the fixes crossing into and out of it.
//!
//! What enters: the pipeline's [`PendingFix`]es, converted to the contract's `fix` record
//! ([`to_guest`]). What leaves: the guest's outcomes, each kept fix converted back and checked
//! ([`from_guest`]): a plugin cannot change the courier, put a fix off the globe, or bloat a fix
//! with attributes beyond [`MAX_ATTRIBUTES`]. A call that traps, exceeds its time budget or its
//! memory cap, or answers nonsense is a [`CallFailure`] with a readable reason.
//!
//! The instance's store holds the sandbox: a WASI context that grants nothing — no arguments,
//! environment variables, preopened directories or sockets (TCP, UDP and name lookups all
//! refused), stdin closed, stdout and stderr discarded, both clocks frozen at zero unless the
//! `clocks` capability is granted, randomness available — and a [`ResourceLimiter`] capping the
//! linear memory. Waiting is refused by the linker (see [`super::host`]).

use std::sync::Arc;
use std::time::Duration;

use locus_sdk::wire::{self, Fix as WireFix, FixDetails};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::host::{CompiledPlugin, PluginHost};
use super::{PluginError, PluginSettings};
use crate::pipeline::PendingFix;

#[allow(missing_docs, clippy::all)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "plugin",
    });
}

pub(crate) use bindings::locus::plugin::log::Level;
pub use bindings::locus::plugin::types::{Fix, Outcome};
pub(crate) use bindings::PluginPre;

/// Most attributes a kept fix may carry.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute key, bytes.
pub const MAX_ATTRIBUTE_KEY: usize = 64;
/// Longest attribute value, bytes.
pub const MAX_ATTRIBUTE_VALUE: usize = 1024;
/// Most log lines a plugin may write per call; the rest are counted, not written.
const MAX_LOG_LINES_PER_CALL: u32 = 20;
/// Longest log line kept, bytes.
const MAX_LOG_LINE: usize = 1024;

/// What a store holds for its instance.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    /// The plugin's name, for its log lines.
    plugin: Arc<str>,
    /// Log lines written during the current call.
    logs_this_call: u32,
    /// The last error-level line the guest logged during the current call (a panic message,
    /// typically), for the failure's reason.
    last_error_log: Option<String>,
    /// When set (`plugin test`), log lines are collected here as well.
    captured_logs: Option<Vec<String>>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl bindings::locus::plugin::types::Host for HostState {}

impl bindings::locus::plugin::log::Host for HostState {
    fn log(&mut self, level: Level, mut message: String) {
        truncate(&mut message, MAX_LOG_LINE);
        if let Some(captured) = &mut self.captured_logs {
            captured.push(format!("{}: {message}", level_name(level)));
        }
        if matches!(level, Level::Error) {
            self.last_error_log = Some(message.clone());
        }
        self.logs_this_call += 1;
        if self.logs_this_call > MAX_LOG_LINES_PER_CALL {
            return;
        }
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(target: "locus::plugin", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "locus::plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "locus::plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "locus::plugin", plugin, "{message}"),
            Level::Error => tracing::error!(target: "locus::plugin", plugin, "{message}"),
        }
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut with `…`.
fn truncate(s: &mut String, max: usize) {
    if super::truncate_on_char_boundary(s, max) {
        s.push('…');
    }
}

pub(crate) fn add_log_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    bindings::locus::plugin::log::add_to_linker::<
        HostState,
        wasmtime::component::HasSelf<HostState>,
    >(linker, |state| state)?;
    bindings::locus::plugin::types::add_to_linker::<
        HostState,
        wasmtime::component::HasSelf<HostState>,
    >(linker, |state| state)
}

/// Caps the total linear memory of an instance. Refusing a `memory.grow` makes it return -1 in
/// the guest, whose allocator then fails (Rust aborts with a trap): contained to the call.
struct MemoryCap {
    max_bytes: usize,
    used_bytes: usize,
    /// The total the guest asked for when refused.
    refused: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used_bytes.saturating_sub(current).saturating_add(desired);
        if total > self.max_bytes {
            self.refused = Some(total);
            return Ok(false);
        }
        self.used_bytes = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        64
    }
}

/// Clocks that always read zero: without the `clocks` capability a plugin's output depends on
/// its input alone, and it cannot measure the host.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// Why a call into a plugin failed. The instance must be replaced when `instance_broken`.
#[derive(Debug, Clone)]
pub(crate) struct CallFailure {
    pub reason: String,
    pub instance_broken: bool,
}

/// One instance of a plugin with its store. Reused for every batch until a call fails.
pub(crate) struct PluginInstance {
    store: Store<HostState>,
    plugin: bindings::Plugin,
    deadline_ticks: u64,
    timeout_ms: u64,
    max_memory_mib: u64,
}

impl PluginInstance {
    /// Instantiates the plugin and calls `init` with its configuration.
    pub fn start(
        host: &PluginHost,
        compiled: &CompiledPlugin,
        name: Arc<str>,
        settings: &PluginSettings,
        capture_logs: bool,
    ) -> Result<Self, PluginError> {
        let mut wasi = WasiCtx::builder();
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        if !settings.capabilities.clocks {
            wasi.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        let max_bytes = usize::try_from(settings.limits.max_memory_mib.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX);
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            memory: MemoryCap { max_bytes, used_bytes: 0, refused: None },
            plugin: name,
            logs_this_call: 0,
            last_error_log: None,
            captured_logs: capture_logs.then(Vec::new),
        };
        let mut store = Store::new(host.engine(), state);
        store.limiter(|state| &mut state.memory);
        let deadline_ticks = host.deadline_ticks(settings.limits.call_timeout_ms);
        store.set_epoch_deadline(deadline_ticks);

        let plugin = compiled.pre.instantiate(&mut store).map_err(|e| {
            PluginError::Instantiate(describe(
                &e,
                store.data(),
                settings.limits.call_timeout_ms,
                settings.limits.max_memory_mib,
            ))
        })?;
        let mut instance = PluginInstance {
            store,
            plugin,
            deadline_ticks,
            timeout_ms: settings.limits.call_timeout_ms,
            max_memory_mib: settings.limits.max_memory_mib,
        };
        instance.begin_call();
        let config = settings.config_pairs();
        match instance.plugin.locus_plugin_transform().call_init(&mut instance.store, &config) {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(message)) => Err(PluginError::InitRefused(message)),
            Err(e) => Err(PluginError::InitFailed(instance.describe(&e))),
        }
    }

    /// Resets the per-call state and arms the deadline.
    fn begin_call(&mut self) {
        let state = self.store.data_mut();
        state.logs_this_call = 0;
        state.last_error_log = None;
        self.store.set_epoch_deadline(self.deadline_ticks);
    }

    /// Runs one batch through the plugin: one outcome per fix, or why not.
    pub fn process(&mut self, fixes: &[Fix]) -> Result<Vec<Outcome>, CallFailure> {
        self.begin_call();
        let result = self.plugin.locus_plugin_transform().call_process(&mut self.store, fixes);
        let outcomes =
            result.map_err(|e| CallFailure { reason: self.describe(&e), instance_broken: true })?;
        if outcomes.len() != fixes.len() {
            return Err(CallFailure {
                reason: format!(
                    "returned {} outcomes for {} fixes (the contract is one per fix)",
                    outcomes.len(),
                    fixes.len()
                ),
                instance_broken: false,
            });
        }
        Ok(outcomes)
    }

    /// The log lines collected so far (`capture_logs` instances only).
    pub fn take_captured_logs(&mut self) -> Vec<String> {
        self.store.data_mut().captured_logs.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn describe(&self, error: &wasmtime::Error) -> String {
        describe(error, self.store.data(), self.timeout_ms, self.max_memory_mib)
    }
}

/// A readable reason for a failed call: the limit it hit, or the trap and the guest's last
/// error log line (a panic message, when the plugin uses the guest kit).
fn describe(
    error: &wasmtime::Error,
    state: &HostState,
    timeout_ms: u64,
    max_memory_mib: u64,
) -> String {
    if matches!(error.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) {
        return format!("exceeded its time budget of {timeout_ms} ms per call (stopped)");
    }
    let mut reason = match state.memory.refused {
        Some(asked) => format!(
            "exceeded its memory cap of {max_memory_mib} MiB (asked for {} MiB): {error:#}",
            asked.div_ceil(1 << 20)
        ),
        None => format!("{error:#}"),
    };
    if let Some(log) = &state.last_error_log {
        reason.push_str("; the plugin logged: ");
        reason.push_str(log);
    }
    truncate(&mut reason, 2048);
    reason
}

/// A pending fix as the guest sees it.
pub(crate) fn to_guest(pending: &PendingFix) -> Fix {
    let fix = &pending.fix;
    let details = fix.details.as_ref();
    Fix {
        courier: pending.courier.clone(),
        order: details.and_then(|d| d.order.clone()),
        ts_ms: fix.ts_ms,
        lat: fix.lat(),
        lon: fix.lon(),
        accuracy_m: details.and_then(|d| d.accuracy_cm).map(|cm| f64::from(cm) / 100.0),
        speed_m_s: details.and_then(|d| d.speed_cm_s).map(|cm| f64::from(cm) / 100.0),
        heading_deg: details.and_then(|d| d.heading_cdeg).map(|cdeg| f64::from(cdeg) / 100.0),
        battery_pct: details.and_then(|d| d.battery_pct),
        attributes: pending.attributes.clone(),
    }
}

/// A fix the guest kept, converted back and checked against the original. Unchanged values
/// convert back exactly (the fixed-point values round-trip through `f64`).
pub(crate) fn from_guest(original: &PendingFix, fix: Fix) -> Result<PendingFix, String> {
    if fix.courier != original.courier {
        return Err(format!(
            "changed the courier of a fix from {:?} to {:?} (the courier is read-only)",
            original.courier, fix.courier
        ));
    }
    // The same conversions as the JSON view's: out-of-range values are refused, never wrapped.
    let lat_e7 = wire::latitude_to_e7(fix.lat)
        .ok_or_else(|| format!("returned latitude {} (must be -90..=90)", fix.lat))?;
    let lon_e7 = wire::longitude_to_e7(fix.lon)
        .ok_or_else(|| format!("returned longitude {} (must be -180..=180)", fix.lon))?;
    let centi = |what: &str, value: Option<f64>| -> Result<Option<u32>, String> {
        value
            .map(|v| {
                wire::metres_to_cm(v)
                    .ok_or_else(|| format!("returned {what} {v} (must be 0..=42949672.95)"))
            })
            .transpose()
    };
    let accuracy_cm = centi("accuracy", fix.accuracy_m)?;
    let speed_cm_s = centi("speed", fix.speed_m_s)?;
    let heading_cdeg = fix
        .heading_deg
        .map(|h| {
            wire::heading_deg_to_cdeg(h)
                .ok_or_else(|| format!("returned heading {h} (must be 0 <= heading < 360)"))
        })
        .transpose()?;
    if let Some(battery) = fix.battery_pct {
        if wire::battery_pct_checked(battery).is_none() {
            return Err(format!("returned battery {battery}% (must be 0..=100)"));
        }
    }
    if let Some(order) = &fix.order {
        if !locus_sdk::topics::is_valid_id(order) {
            return Err(format!("returned an invalid order id {order:?}"));
        }
    }
    if fix.attributes.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "returned {} attributes on one fix (at most {MAX_ATTRIBUTES})",
            fix.attributes.len()
        ));
    }
    for (key, value) in &fix.attributes {
        if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY || value.len() > MAX_ATTRIBUTE_VALUE {
            return Err(format!(
                "returned attribute {:?} with a {}-byte value (keys 1..={MAX_ATTRIBUTE_KEY} \
                 bytes, values at most {MAX_ATTRIBUTE_VALUE} bytes)",
                key.chars().take(80).collect::<String>(),
                value.len()
            ));
        }
    }
    let details = FixDetails {
        accuracy_cm,
        speed_cm_s,
        heading_cdeg,
        battery_pct: fix.battery_pct,
        order: fix.order,
    };
    let details = (details != FixDetails::default()).then_some(details);
    Ok(PendingFix {
        // Equal to the original's (checked above); moving it saves an allocation per fix.
        courier: fix.courier,
        fix: WireFix { ts_ms: fix.ts_ms, lat_e7, lon_e7, details },
        attributes: fix.attributes,
        input: original.input.clone(),
    })
}
