//! The deployed plugins: deploy, list, remove, roll back; persisted in sled; published to the
//! pipeline's chain.
//!
//! What enters: component bytes with [`PluginSettings`] (from the HTTP API, the plugins
//! directory at start, or the CLI through the API). What leaves: [`PluginInfo`] for the API, and
//! new chain versions for [`PluginChain`]s (an [`ArcSwap`] the pipeline thread reads once per
//! batch).
//!
//! A deploy is validated before anything changes: the bytes compile, match the contract, link in
//! the sandbox, instantiate, and `init` accepts the configuration. Only then is it persisted (and
//! flushed) and published. Any failure leaves the running chain and the stored state untouched.
//!
//! Storage, in the sled tree given to [`PluginRegistry::open`]:
//! - `plugin/{name}` → JSON [`PluginRecord`]: the current version and its settings, the previous
//!   one (for rollback), and where it came from;
//! - `component/{version}` → the component's bytes, shared by every record naming that version
//!   and removed when none does.
//!
//! Management calls are serialised by one mutex; they compile components (tens to hundreds of
//! milliseconds), so call them from a blocking context (`spawn_blocking`), not an async task.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::chain::{ChainVersion, LoadedPlugin, PluginChain};
use super::host::PluginHost;
use super::instance::PluginInstance;
use super::stats::{PluginStats, PluginStatsSnapshot};
use super::{is_valid_name, now_ms, version_of, PluginError, PluginSettings};

const RECORD_PREFIX: &str = "plugin/";
const COMPONENT_PREFIX: &str = "component/";

/// Where a deployed plugin came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginSource {
    /// Deployed over the HTTP API (or by rollback).
    Api,
    /// Loaded from the plugins directory at start.
    Directory,
}

/// One stored version of a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// [`version_of`] the component's bytes.
    pub version: String,
    /// Its settings.
    pub settings: PluginSettings,
    /// When it was (last) activated, Unix milliseconds.
    pub deployed_at_ms: u64,
    /// Size of the component, bytes.
    pub size_bytes: usize,
}

/// What is stored per plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// The running version.
    pub current: VersionRecord,
    /// The version before it, target of a rollback.
    pub previous: Option<VersionRecord>,
    /// Where the current version came from.
    pub source: PluginSource,
}

/// A deployed plugin as `GET /v1/plugins` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginInfo {
    /// Name.
    pub name: String,
    /// Version: the first 16 hex digits of the SHA-256 of the component.
    pub version: String,
    /// `active`, or `failing` when its last call failed.
    pub state: &'static str,
    /// Size of the component, bytes.
    pub size_bytes: usize,
    /// When this version was activated, Unix milliseconds.
    pub deployed_at_ms: u64,
    /// Where it came from.
    pub source: PluginSource,
    /// Its settings (position, config, failure policy, limits, capabilities).
    pub settings: PluginSettings,
    /// The version a rollback would return to.
    pub previous_version: Option<String>,
    /// Stats of this version since it was activated.
    pub stats: PluginStatsSnapshot,
}

/// A stored or directory plugin that could not be loaded at start (it is not in the chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartupProblem {
    /// The plugin's name (or the file, for an unusable file name).
    pub plugin: String,
    /// Why.
    pub error: String,
}

struct Deployed {
    current: Arc<LoadedPlugin>,
    previous: Option<VersionRecord>,
    source: PluginSource,
}

impl Deployed {
    fn record(&self) -> PluginRecord {
        PluginRecord {
            current: version_record(&self.current),
            previous: self.previous.clone(),
            source: self.source,
        }
    }
}

fn version_record(plugin: &LoadedPlugin) -> VersionRecord {
    VersionRecord {
        version: plugin.version.clone(),
        settings: plugin.settings.clone(),
        deployed_at_ms: plugin.deployed_at_ms,
        size_bytes: plugin.size_bytes,
    }
}

struct State {
    deployed: BTreeMap<String, Deployed>,
    generation: u64,
}

/// The deployed plugins. Shared (in an `Arc`) by the HTTP API and whoever creates the pipeline's
/// [`PluginChain`].
pub struct PluginRegistry {
    host: PluginHost,
    tree: sled::Tree,
    state: Mutex<State>,
    published: Arc<ArcSwap<ChainVersion>>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry")
            .field("generation", &self.published.load().generation)
            .finish_non_exhaustive()
    }
}

impl PluginRegistry {
    /// Loads the plugins stored in `tree`, then deploys the plugins directory `dir` (if any):
    /// each `NAME.wasm` there, with settings from `NAME.toml` when present, unless the stored
    /// plugin of that name already runs exactly that component with those settings.
    ///
    /// A plugin that cannot be loaded is left out of the chain and reported in the returned
    /// problems (and logged); it is not an error for the server as a whole. Errors are storage
    /// failures and an unreadable directory.
    pub fn open(
        host: PluginHost,
        tree: sled::Tree,
        dir: Option<&Path>,
    ) -> Result<(Self, Vec<StartupProblem>), PluginError> {
        let registry = PluginRegistry {
            host,
            tree,
            state: Mutex::new(State { deployed: BTreeMap::new(), generation: 0 }),
            published: Arc::new(ArcSwap::from_pointee(ChainVersion::default())),
        };
        let mut problems = Vec::new();
        {
            let mut state = registry.lock();
            for entry in registry.tree.scan_prefix(RECORD_PREFIX) {
                let (key, value) = entry?;
                let key = String::from_utf8_lossy(&key).into_owned();
                let name = key[RECORD_PREFIX.len()..].to_string();
                match registry.load_stored(&name, &value) {
                    Ok(deployed) => {
                        state.deployed.insert(name, deployed);
                    }
                    Err(e) => problems.push(StartupProblem { plugin: name, error: e.to_string() }),
                }
            }
            registry.publish(&mut state);
        }
        if let Some(dir) = dir {
            problems.extend(registry.deploy_directory(dir)?);
        }
        for problem in &problems {
            tracing::error!(plugin = %problem.plugin, "plugin not loaded: {}", problem.error);
        }
        Ok((registry, problems))
    }

    /// The chain for the pipeline thread. Each call gives an independent chain with its own
    /// instances; the pipeline needs exactly one.
    pub fn chain(&self) -> PluginChain {
        PluginChain::new(self.host.clone(), self.published.clone())
    }

    /// The host (engine and sandbox) this registry compiles with.
    pub fn host(&self) -> &PluginHost {
        &self.host
    }

    /// The number of the published chain version (increases with every change).
    pub fn generation(&self) -> u64 {
        self.published.load().generation
    }

    /// Validates and activates `bytes` as plugin `name` (replacing its current version, which
    /// becomes the rollback target). Deploying exactly the running component with the same
    /// settings changes nothing. On error nothing changes.
    pub fn deploy(
        &self,
        name: &str,
        bytes: &[u8],
        settings: PluginSettings,
    ) -> Result<PluginInfo, PluginError> {
        self.deploy_from(name, bytes, settings, PluginSource::Api)
    }

    fn deploy_from(
        &self,
        name: &str,
        bytes: &[u8],
        settings: PluginSettings,
        source: PluginSource,
    ) -> Result<PluginInfo, PluginError> {
        if !is_valid_name(name) {
            return Err(PluginError::InvalidName(name.to_string()));
        }
        settings.validate()?;
        let version = version_of(bytes);
        {
            let state = self.lock();
            if let Some(existing) = state.deployed.get(name) {
                if existing.current.version == version && existing.current.settings == settings {
                    return Ok(info(name, existing));
                }
            }
        }
        // Compile and validate outside the lock: it is the slow part.
        let loaded = self.load(name, bytes, settings, version, now_ms())?;

        let mut state = self.lock();
        let previous = state.deployed.get(name).map(|d| version_record(&d.current));
        let deployed = Deployed { current: loaded, previous, source };
        let mut batch = sled::Batch::default();
        batch.insert(record_key(name).as_bytes(), encode_record(&deployed.record()));
        batch.insert(component_key(&deployed.current.version).as_bytes(), bytes);
        self.tree.apply_batch(batch)?;
        let old = state.deployed.insert(name.to_string(), deployed);
        self.collect_garbage(&state)?;
        self.tree.flush()?;
        drop(old);
        self.publish(&mut state);
        let info = info(name, &state.deployed[name]);
        tracing::info!(plugin = name, version = %info.version, "plugin deployed");
        Ok(info)
    }

    /// Removes plugin `name` from the chain and from storage.
    pub fn remove(&self, name: &str) -> Result<(), PluginError> {
        let mut state = self.lock();
        if !state.deployed.contains_key(name) {
            return Err(PluginError::NotFound(name.to_string()));
        }
        self.tree.remove(record_key(name).as_bytes())?;
        state.deployed.remove(name);
        self.collect_garbage(&state)?;
        self.tree.flush()?;
        self.publish(&mut state);
        tracing::info!(plugin = name, "plugin removed");
        Ok(())
    }

    /// Makes the previous version of `name` (component and settings) current again; the version
    /// rolled back from becomes the previous one, so a second rollback undoes the first.
    pub fn rollback(&self, name: &str) -> Result<PluginInfo, PluginError> {
        let mut state = self.lock();
        let deployed =
            state.deployed.get(name).ok_or_else(|| PluginError::NotFound(name.to_string()))?;
        let previous = deployed
            .previous
            .clone()
            .ok_or_else(|| PluginError::NoPreviousVersion(name.to_string()))?;
        let bytes = self.component_bytes(&previous.version)?;
        let loaded = self.load(name, &bytes, previous.settings, previous.version, now_ms())?;
        let rolled_back = Deployed {
            current: loaded,
            previous: Some(version_record(&deployed.current)),
            source: PluginSource::Api,
        };
        self.tree.insert(record_key(name).as_bytes(), encode_record(&rolled_back.record()))?;
        self.tree.flush()?;
        state.deployed.insert(name.to_string(), rolled_back);
        self.publish(&mut state);
        let info = info(name, &state.deployed[name]);
        tracing::info!(plugin = name, version = %info.version, "plugin rolled back");
        Ok(info)
    }

    /// The deployed plugins, in chain order.
    pub fn list(&self) -> Vec<PluginInfo> {
        let state = self.lock();
        let mut list: Vec<_> = state.deployed.iter().map(|(name, d)| info(name, d)).collect();
        list.sort_by(|a, b| (a.settings.position, &a.name).cmp(&(b.settings.position, &b.name)));
        list
    }

    /// One deployed plugin.
    pub fn get(&self, name: &str) -> Option<PluginInfo> {
        self.lock().deployed.get(name).map(|d| info(name, d))
    }

    /// Deploys every `NAME.wasm` of `dir` (see [`open`](Self::open)); per-plugin failures are
    /// returned as problems.
    fn deploy_directory(&self, dir: &Path) -> Result<Vec<StartupProblem>, PluginError> {
        let io = |source| PluginError::Io { path: dir.to_path_buf(), source };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
            .collect();
        files.sort();
        let mut problems = Vec::new();
        for path in files {
            let name =
                path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            if let Err(e) = self.deploy_file(&name, &path) {
                problems.push(StartupProblem { plugin: name, error: e.to_string() });
            }
        }
        Ok(problems)
    }

    fn deploy_file(&self, name: &str, path: &Path) -> Result<PluginInfo, PluginError> {
        let bytes = std::fs::read(path)
            .map_err(|source| PluginError::Io { path: path.to_path_buf(), source })?;
        let settings_path = path.with_extension("toml");
        let settings = match std::fs::read_to_string(&settings_path) {
            Ok(text) => toml::from_str(&text).map_err(|e| PluginError::SettingsFile {
                path: settings_path.clone(),
                problem: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PluginSettings::default(),
            Err(source) => return Err(PluginError::Io { path: settings_path, source }),
        };
        self.deploy_from(name, &bytes, settings, PluginSource::Directory)
    }

    /// Compiles and validates a plugin version: it instantiates and `init` accepts its config.
    /// The validation instance is dropped; the chain starts its own on the pipeline thread.
    fn load(
        &self,
        name: &str,
        bytes: &[u8],
        settings: PluginSettings,
        version: String,
        deployed_at_ms: u64,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let compiled = self.host.compile(bytes)?;
        let name: Arc<str> = name.into();
        PluginInstance::start(&self.host, &compiled, name.clone(), &settings, false)?;
        Ok(Arc::new(LoadedPlugin {
            name,
            version,
            settings,
            compiled,
            stats: Arc::new(PluginStats::default()),
            deployed_at_ms,
            size_bytes: bytes.len(),
        }))
    }

    fn load_stored(&self, name: &str, record: &[u8]) -> Result<Deployed, PluginError> {
        let record: PluginRecord = serde_json::from_slice(record).map_err(|e| {
            PluginError::CorruptRecord { key: record_key(name), problem: e.to_string() }
        })?;
        let bytes = self.component_bytes(&record.current.version)?;
        let current = self.load(
            name,
            &bytes,
            record.current.settings,
            record.current.version,
            record.current.deployed_at_ms,
        )?;
        Ok(Deployed { current, previous: record.previous, source: record.source })
    }

    fn component_bytes(&self, version: &str) -> Result<Vec<u8>, PluginError> {
        let key = component_key(version);
        match self.tree.get(key.as_bytes())? {
            Some(bytes) => Ok(bytes.to_vec()),
            None => Err(PluginError::CorruptRecord { key, problem: "missing".into() }),
        }
    }

    /// Removes stored components no record refers to any more.
    fn collect_garbage(&self, state: &State) -> Result<(), PluginError> {
        let referenced: BTreeSet<String> = state
            .deployed
            .values()
            .flat_map(|d| {
                std::iter::once(d.current.version.clone())
                    .chain(d.previous.as_ref().map(|p| p.version.clone()))
            })
            .map(|version| component_key(&version))
            .collect();
        for key in self.tree.scan_prefix(COMPONENT_PREFIX).keys() {
            let key = key?;
            if !referenced.contains(&*String::from_utf8_lossy(&key)) {
                self.tree.remove(key)?;
            }
        }
        Ok(())
    }

    /// Publishes the deployed plugins as a new chain version, in chain order.
    fn publish(&self, state: &mut State) {
        let mut plugins: Vec<_> = state.deployed.values().map(|d| d.current.clone()).collect();
        plugins.sort_by(|a, b| (a.settings.position, &a.name).cmp(&(b.settings.position, &b.name)));
        state.generation += 1;
        self.published.store(Arc::new(ChainVersion { generation: state.generation, plugins }));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-changed (each change is one
        // insert or remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn info(name: &str, deployed: &Deployed) -> PluginInfo {
    let current = &deployed.current;
    PluginInfo {
        name: name.to_string(),
        version: current.version.clone(),
        state: if current.stats.is_failing() { "failing" } else { "active" },
        size_bytes: current.size_bytes,
        deployed_at_ms: current.deployed_at_ms,
        source: deployed.source,
        settings: current.settings.clone(),
        previous_version: deployed.previous.as_ref().map(|p| p.version.clone()),
        stats: current.stats.snapshot(),
    }
}

fn record_key(name: &str) -> String {
    format!("{RECORD_PREFIX}{name}")
}

fn component_key(version: &str) -> String {
    format!("{COMPONENT_PREFIX}{version}")
}

fn encode_record(record: &PluginRecord) -> Vec<u8> {
    // Plain data with string keys: serialising to JSON cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}
