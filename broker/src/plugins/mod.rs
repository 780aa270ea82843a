//! The WebAssembly plugin host: runs the configured chain of plugins over each batch of fixes.
//!
//! What enters: the pipeline's validated, deduplicated fixes ([`PendingFix`]), one batch at a
//! time, on the pipeline thread ([`PluginChain::process`]); and plugin deployments from the HTTP
//! API, the CLI and the plugins directory ([`PluginRegistry`]). What leaves: the fixes to commit
//! (possibly changed, with attributes), dead letters for fixes a plugin rejected or a failed
//! plugin took down with its batch, and a count of dropped fixes ([`ChainOutput`]).
//!
//! Layout:
//! - [`host`]: the one wasmtime [`Engine`](wasmtime::Engine) (component model, epoch
//!   interruption, an epoch ticker thread), the linker with the sandbox (logging, and a WASI
//!   context that grants nothing), compiling and validating components against the contract.
//! - [`instance`]: one live instance of one plugin: its store, memory cap and time budget per
//!   call, and the conversion of fixes to and from the guest's types, checking what comes back.
//! - [`chain`]: [`PluginChain`], the pipeline thread's view: instances reused across batches,
//!   replaced after a trap, the failure policy applied, a new chain version picked up between
//!   batches only.
//! - [`registry`]: [`PluginRegistry`], shared with the API: deploy (validate, persist in sled,
//!   publish), list with stats, remove, rollback, the plugins directory at start.
//! - [`stats`]: per-plugin counters and call-time percentiles.
//! - [`scaffold`]: `locusd plugin new | build | test` — a new plugin crate, building it for
//!   `wasm32-wasip2`, running a component over JSON fixes.
//!
//! The contract is the WIT package in `plugins/wit/` ([`CONTRACT`]); the guest kit for authors is
//! `plugins/locus-plugin`.
//!
//! Sandbox, in short: no files, network, environment variables or arguments; clocks read as the
//! Unix epoch unless the `clocks` capability is granted; randomness is available (Rust's `HashMap`
//! needs it); stdout and stderr are discarded; anything that would block (sleeping, waiting on a
//! stream) traps instead of stalling the pipeline. Memory is capped per instance, time per call.

pub mod chain;
pub mod host;
pub mod instance;
pub mod registry;
pub mod scaffold;
pub mod stats;

#[cfg(test)]
mod tests;

pub use chain::{ChainOutput, PluginChain};
pub use host::{PluginHost, PluginHostConfig};
pub use registry::{PluginInfo, PluginRegistry, StartupProblem};
pub use stats::{CallTimes, PluginStatsSnapshot};

/// Starts the plugin host and loads the deployed plugins (the store's plugins tree) and the
/// plugins directory. A plugin that cannot load is logged and left out; it never stops the
/// server.
pub fn start(
    config: &PluginHostConfig,
    store: &crate::store::Store,
) -> anyhow::Result<std::sync::Arc<PluginRegistry>> {
    use anyhow::Context as _;
    let host = PluginHost::new(config).context("starting the plugin host")?;
    let tree = store.plugins_tree().context("opening the plugins tree")?;
    let (registry, problems) =
        PluginRegistry::open(host, tree, config.dir.as_deref()).context("loading plugins")?;
    let loaded = registry.list();
    tracing::info!(
        plugins = loaded.len(),
        not_loaded = problems.len(),
        "plugin chain: {}",
        loaded.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(" → ")
    );
    Ok(std::sync::Arc::new(registry))
}

use serde::{Deserialize, Serialize};

#[allow(unused_imports)] // named by the docs above
use crate::pipeline::PendingFix;

/// The contract package this host implements, as written in `plugins/wit/plugin.wit`.
pub const CONTRACT: &str = "locus:plugin@0.1.0";
/// The contract's version.
pub const CONTRACT_VERSION: &str = "0.1.0";
/// The interface a plugin must export (without version).
pub const TRANSFORM_INTERFACE: &str = "locus:plugin/transform";

/// How a plugin is run: where in the chain, with what configuration, what happens when it fails,
/// and its limits. The body of `PUT /v1/plugins/{name}` (with the component) and of `NAME.toml`
/// in the plugins directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Place in the chain: plugins run in increasing `position`, ties by name. Default 100.
    #[serde(default = "default_position")]
    pub position: i32,
    /// Configuration given to the plugin's `init`, as key/value pairs (passed sorted by key).
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, String>,
    /// What happens to a batch when the plugin fails (traps, runs out of time or memory, or
    /// answers nonsense). Default `dead-letter`.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Time and memory limits.
    #[serde(default)]
    pub limits: PluginLimits,
    /// What the plugin may use beyond pure computation. Default: nothing.
    #[serde(default)]
    pub capabilities: Capabilities,
}

fn default_position() -> i32 {
    100
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            position: default_position(),
            config: Default::default(),
            failure_policy: FailurePolicy::default(),
            limits: PluginLimits::default(),
            capabilities: Capabilities::default(),
        }
    }
}

impl PluginSettings {
    /// The configuration as the pairs `init` receives.
    pub fn config_pairs(&self) -> Vec<(String, String)> {
        self.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Checks the limits are within what the host allows.
    pub fn validate(&self) -> Result<(), PluginError> {
        let limits = &self.limits;
        if !(1..=MAX_CALL_TIMEOUT_MS).contains(&limits.call_timeout_ms) {
            return Err(PluginError::InvalidSettings(format!(
                "limits.call_timeout_ms must be 1..={MAX_CALL_TIMEOUT_MS}, got {}",
                limits.call_timeout_ms
            )));
        }
        if !(1..=MAX_MEMORY_MIB).contains(&limits.max_memory_mib) {
            return Err(PluginError::InvalidSettings(format!(
                "limits.max_memory_mib must be 1..={MAX_MEMORY_MIB}, got {}",
                limits.max_memory_mib
            )));
        }
        Ok(())
    }
}

/// Upper bound of [`PluginLimits::call_timeout_ms`]: a plugin holds the pipeline while it runs.
pub const MAX_CALL_TIMEOUT_MS: u64 = 10_000;
/// Upper bound of [`PluginLimits::max_memory_mib`].
pub const MAX_MEMORY_MIB: u64 = 4096;

/// What happens to a batch when its plugin fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// The batch's fixes go to the dead letters (reason `plugin_failed`, with the plugin's name,
    /// version and error). For plugins whose output matters (a filter that must not let bad data
    /// through).
    #[default]
    DeadLetter,
    /// The batch passes on unchanged, as if the plugin were not there. For enrichment plugins
    /// whose absence is better than losing fixes.
    Skip,
}

/// A plugin's limits. The defaults suit plugins doing per-fix arithmetic and lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimits {
    /// Time budget of one call (one batch, or `init`), milliseconds. Enforced with epoch
    /// interruption, so the plugin is stopped at most one epoch tick after it. Default 100.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Linear memory cap of the plugin's instance, MiB. Default 64.
    #[serde(default = "default_max_memory_mib")]
    pub max_memory_mib: u64,
}

fn default_call_timeout_ms() -> u64 {
    100
}

fn default_max_memory_mib() -> u64 {
    64
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            call_timeout_ms: default_call_timeout_ms(),
            max_memory_mib: default_max_memory_mib(),
        }
    }
}

/// Capabilities a plugin may be granted; all off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Real wall and monotonic clocks (reading only: waiting still traps). Without it both
    /// clocks read zero, so a plugin's output depends on its input alone.
    #[serde(default)]
    pub clocks: bool,
}

/// Why a plugin could not be deployed, loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The name is not usable.
    #[error("invalid plugin name {0:?}: use 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    InvalidName(String),
    /// The settings are out of bounds.
    #[error("invalid plugin settings: {0}")]
    InvalidSettings(String),
    /// The bytes are not a WebAssembly component (or not valid).
    #[error("not a valid WebAssembly component: {0}")]
    NotAComponent(String),
    /// A component for another contract version.
    #[error(
        "the component is built for {found}, but this server needs {needed} (a component \
         exporting {TRANSFORM_INTERFACE}@{compatible}); rebuild the plugin against {needed}"
    )]
    ContractMismatch {
        /// What the component exports, e.g. `locus:plugin/transform@0.2.0`.
        found: String,
        /// [`CONTRACT`].
        needed: &'static str,
        /// The compatible version range, e.g. `0.1.x`.
        compatible: String,
    },
    /// A component that is not a Locus plugin at all.
    #[error(
        "the component is not a Locus plugin: it exports [{exports}] but not \
         {TRANSFORM_INTERFACE} (this server needs {CONTRACT})"
    )]
    NotAPlugin {
        /// What it exports instead.
        exports: String,
    },
    /// The component needs imports the sandbox does not provide (or of the wrong type).
    #[error("the component cannot be linked in the plugin sandbox: {0}")]
    Link(String),
    /// Instantiation failed (for example its initial memory exceeds the cap).
    #[error("the plugin could not be instantiated: {0}")]
    Instantiate(String),
    /// `init` refused the configuration.
    #[error("the plugin refused its configuration: {0}")]
    InitRefused(String),
    /// `init` trapped or ran out of time or memory.
    #[error("the plugin failed during init: {0}")]
    InitFailed(String),
    /// No such plugin.
    #[error("no plugin named {0:?}")]
    NotFound(String),
    /// Rollback without a previous version.
    #[error("plugin {0:?} has no previous version to roll back to")]
    NoPreviousVersion(String),
    /// The sled tree failed.
    #[error("plugin storage: {0}")]
    Storage(#[from] sled::Error),
    /// A stored record could not be read back.
    #[error("plugin storage: corrupt record {key}: {problem}")]
    CorruptRecord {
        /// The sled key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// Reading the plugins directory (or a file given to the CLI) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A settings file in the plugins directory is invalid.
    #[error("{path}: {problem}")]
    SettingsFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The engine could not be created.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// Running a plugin over fixes (`plugin test`) failed.
    #[error("the plugin failed: {0}")]
    Run(String),
}

impl PluginError {
    /// Whether the error is the caller's fault (a 4xx on the API) rather than the server's.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            PluginError::Storage(_)
                | PluginError::CorruptRecord { .. }
                | PluginError::Io { .. }
                | PluginError::Engine(_)
        )
    }
}

/// Whether `name` is a usable plugin name (also a file name and a log tag).
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=64).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

/// The version of a component: the hex SHA-256 of its bytes, shortened to 16 hex digits (64 bits:
/// plenty to tell deployed versions apart, short enough to read in logs and dead letters).
pub fn version_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    hex::encode(&digest[..8])
}

pub(crate) use crate::pipeline::now_ms;

/// Cuts `s` to at most `max` bytes on a character boundary; returns whether it cut.
pub(crate) fn truncate_on_char_boundary(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}
