//! The chain as the pipeline thread runs it.
//!
//! What enters: one batch of [`PendingFix`]es per [`PluginChain::process`] call. What leaves: a
//! [`ChainOutput`] — the fixes to commit, dead letters (fixes a plugin rejected, and the batch of
//! a plugin that failed under policy `dead-letter`), and the number of fixes dropped.
//!
//! Dead letters hold what the fixes were read from ([`PendingFix::input`]: the report's MQTT
//! payload, the replayed line), one letter per input and reason however many of its fixes
//! it covers.
//!
//! Swaps: the registry publishes chain versions ([`ChainVersion`], numbered by `generation`);
//! `process` looks at the published version once, at the start of a batch, so a batch runs
//! entirely on one version and a deploy takes effect from the next batch on. Nothing is lost or
//! doubled across a swap: the batch in hand finishes on the version it started with.
//!
//! Instances: each plugin in the chain has at most one live instance, created on its first batch
//! and reused for every batch after (its memory — per-courier state — lives on). Plugins that are
//! unchanged by a new chain version keep their instance. A call that traps or exceeds its limits
//! leaves the instance unusable; it is dropped, and the next batch starts a fresh one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use super::host::{CompiledPlugin, PluginHost};
use super::instance::{from_guest, to_guest, Outcome, PluginInstance};
use super::stats::PluginStats;
use super::{FailurePolicy, PluginSettings};
use crate::pipeline::{FixInput, FixTransform, PendingFix, TransformOutput};
use crate::store::{DeadLetter, DeadLetterReason, DeadLetterSource};

/// What the chain made of a batch.
#[derive(Debug, Default)]
pub struct ChainOutput {
    /// Fixes to commit, in their original order (possibly changed, with attributes).
    pub kept: Vec<PendingFix>,
    /// Fixes rejected by a plugin, or taken down with a failed plugin's batch.
    pub dead_letters: Vec<DeadLetter>,
    /// Fixes plugins dropped (filtered out; not dead-lettered).
    pub dropped: usize,
    /// The chain version that processed the batch.
    pub generation: u64,
}

/// One deployed plugin version, ready to run: what the chain holds for it.
pub(crate) struct LoadedPlugin {
    pub name: Arc<str>,
    pub version: String,
    pub settings: PluginSettings,
    pub compiled: CompiledPlugin,
    pub stats: Arc<PluginStats>,
    pub deployed_at_ms: u64,
    pub size_bytes: usize,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A published chain: plugins in the order they run.
#[derive(Debug, Default)]
pub(crate) struct ChainVersion {
    pub generation: u64,
    pub plugins: Vec<Arc<LoadedPlugin>>,
}

/// The pipeline thread's chain. Not `Sync` by design: one thread owns it and calls
/// [`process`](Self::process) once per batch. Get it from
/// [`PluginRegistry::chain`](super::PluginRegistry::chain).
pub struct PluginChain {
    host: PluginHost,
    published: Arc<ArcSwap<ChainVersion>>,
    generation: u64,
    slots: Vec<Slot>,
}

impl std::fmt::Debug for PluginChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginChain")
            .field("generation", &self.generation)
            .field("plugins", &self.slots.iter().map(|s| &*s.plugin.name).collect::<Vec<_>>())
            .finish()
    }
}

struct Slot {
    plugin: Arc<LoadedPlugin>,
    instance: Option<PluginInstance>,
}

impl PluginChain {
    pub(crate) fn new(host: PluginHost, published: Arc<ArcSwap<ChainVersion>>) -> Self {
        // Generation 0 is never published, so the first batch loads the current version.
        PluginChain { host, published, generation: u64::MAX, slots: Vec::new() }
    }

    /// Runs a batch through every plugin, in chain order, on the chain version published when
    /// the call starts. Never fails: plugin failures become dead letters or pass-throughs per
    /// each plugin's policy, and are counted in its stats.
    pub fn process(&mut self, batch: Vec<PendingFix>) -> ChainOutput {
        self.refresh();
        let mut output =
            ChainOutput { kept: batch, generation: self.generation, ..Default::default() };
        for slot in &mut self.slots {
            if output.kept.is_empty() {
                break;
            }
            let batch = std::mem::take(&mut output.kept);
            output.kept =
                run_slot(&self.host, slot, batch, &mut output.dead_letters, &mut output.dropped);
        }
        output
    }

    /// The chain version the last batch ran on.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Picks up a newly published chain version, keeping the instances of unchanged plugins.
    fn refresh(&mut self) {
        let current = self.published.load();
        if current.generation == self.generation {
            return;
        }
        let mut old = std::mem::take(&mut self.slots);
        self.slots = current
            .plugins
            .iter()
            .map(|plugin| Slot {
                plugin: plugin.clone(),
                instance: old
                    .iter_mut()
                    .find(|slot| Arc::ptr_eq(&slot.plugin, plugin))
                    .and_then(|slot| slot.instance.take()),
            })
            .collect();
        self.generation = current.generation;
    }
}

/// The pipeline's seam: dropped fixes are simply not in `kept` (their count is in the plugins'
/// stats).
impl FixTransform for PluginChain {
    fn process(&mut self, batch: Vec<PendingFix>) -> TransformOutput {
        let output = PluginChain::process(self, batch);
        TransformOutput { kept: output.kept, dead_letters: output.dead_letters }
    }
}

/// Runs one plugin over a batch; returns what goes on down the chain.
fn run_slot(
    host: &PluginHost,
    slot: &mut Slot,
    batch: Vec<PendingFix>,
    dead_letters: &mut Vec<DeadLetter>,
    dropped: &mut usize,
) -> Vec<PendingFix> {
    let plugin = slot.plugin.clone();
    let mut instance = match slot.instance.take() {
        Some(instance) => instance,
        None => match PluginInstance::start(
            host,
            &plugin.compiled,
            plugin.name.clone(),
            &plugin.settings,
            false,
        ) {
            Ok(instance) => {
                plugin.stats.instance_started();
                instance
            }
            Err(e) => {
                return fail(
                    &plugin,
                    batch,
                    format!("could not start an instance: {e}"),
                    dead_letters,
                )
            }
        },
    };

    let fixes: Vec<_> = batch.iter().map(to_guest).collect();
    let started = Instant::now();
    let result = instance.process(&fixes);
    plugin.stats.call(started.elapsed(), batch.len());
    drop(fixes);

    let outcomes = match result {
        Ok(outcomes) => {
            slot.instance = Some(instance);
            outcomes
        }
        Err(failure) => {
            if !failure.instance_broken {
                slot.instance = Some(instance);
            }
            return fail(&plugin, batch, failure.reason, dead_letters);
        }
    };

    // Convert every outcome before acting on any: one bad answer fails the whole batch.
    let mut kept = Vec::with_capacity(batch.len());
    let mut rejected = Vec::new();
    let mut dropped_here = 0;
    let mut bad_output = None;
    for (index, (original, outcome)) in batch.iter().zip(outcomes).enumerate() {
        match outcome {
            Outcome::Keep(fix) => match from_guest(original, fix) {
                Ok(fix) => kept.push(fix),
                Err(problem) => {
                    bad_output =
                        Some(format!("bad output for fix {index} of the batch: {problem}"));
                    break;
                }
            },
            Outcome::Drop => dropped_here += 1,
            Outcome::Reject(reason) => rejected.push((index, reason)),
        }
    }
    if let Some(reason) = bad_output {
        return fail(&plugin, batch, reason, dead_letters);
    }

    plugin.stats.succeeded(kept.len(), dropped_here, rejected.len());
    *dropped += dropped_here;
    for (_, reason) in &mut rejected {
        super::truncate_on_char_boundary(reason, 1024);
    }
    let refused = rejected.iter().map(|(index, reason)| (&batch[*index], reason.as_str()));
    for (reason, fixes) in by_input_and_reason(refused) {
        let (name, version) = (&plugin.name, &plugin.version);
        let detail = match &fixes[..] {
            [_] => format!("plugin {name} version {version} rejected the fix: {reason}"),
            _ => format!(
                "plugin {name} version {version} rejected {} fixes ({}): {reason}",
                fixes.len(),
                device_times(&fixes)
            ),
        };
        let reason = DeadLetterReason::PluginRejected(reason.to_owned());
        dead_letters.push(dead_letter(&plugin, reason, detail, &fixes));
    }
    kept
}

/// Applies the plugin's failure policy to a batch it failed.
fn fail(
    plugin: &LoadedPlugin,
    batch: Vec<PendingFix>,
    reason: String,
    dead_letters: &mut Vec<DeadLetter>,
) -> Vec<PendingFix> {
    plugin.stats.failed(batch.len(), &reason);
    tracing::warn!(
        plugin = &*plugin.name,
        version = %plugin.version,
        fixes = batch.len(),
        policy = ?plugin.settings.failure_policy,
        "plugin failed: {reason}"
    );
    match plugin.settings.failure_policy {
        FailurePolicy::Skip => batch,
        FailurePolicy::DeadLetter => {
            let detail = format!("plugin {} version {}: {reason}", plugin.name, plugin.version);
            let failed = batch.iter().map(|fix| (fix, ""));
            for (_, fixes) in by_input_and_reason(failed) {
                let detail = match &fixes[..] {
                    [_] => detail.clone(),
                    _ => format!("{detail} ({} fixes: {})", fixes.len(), device_times(&fixes)),
                };
                dead_letters.push(dead_letter(
                    plugin,
                    DeadLetterReason::PluginFailed,
                    detail,
                    &fixes,
                ));
            }
            Vec::new()
        }
    }
}

/// Refused fixes gathered per input (by identity: the fixes of one report share theirs) and
/// reason, in the order of their first fix: each group is one dead letter, so a report of many
/// fixes a plugin refuses is stored once, not once per fix.
fn by_input_and_reason<'a>(
    refused: impl IntoIterator<Item = (&'a PendingFix, &'a str)>,
) -> Vec<(&'a str, Vec<&'a PendingFix>)> {
    let mut groups: Vec<(&str, Vec<&PendingFix>)> = Vec::new();
    let mut index: HashMap<(*const FixInput, &str), usize> = HashMap::new();
    for (fix, reason) in refused {
        let group = *index.entry((Arc::as_ptr(&fix.input), reason)).or_insert_with(|| {
            groups.push((reason, Vec::new()));
            groups.len() - 1
        });
        groups[group].1.push(fix);
    }
    groups
}

/// The device times of refused fixes, for a letter's detail: the first few, then a count.
fn device_times(fixes: &[&PendingFix]) -> String {
    const LISTED: usize = 5;
    let mut times: Vec<String> =
        fixes.iter().take(LISTED).map(|f| f.fix.ts_ms.to_string()).collect();
    if fixes.len() > LISTED {
        times.push(format!("and {} more", fixes.len() - LISTED));
    }
    format!("device times {}", times.join(", "))
}

/// The dead letter of refused fixes of one input (not empty): its bytes as they came in, from
/// the plugin on the input's source.
fn dead_letter(
    plugin: &LoadedPlugin,
    reason: DeadLetterReason,
    detail: String,
    fixes: &[&PendingFix],
) -> DeadLetter {
    let first = fixes[0];
    let input = &first.input;
    let source = DeadLetterSource::Plugin {
        name: plugin.name.to_string(),
        version: plugin.version.clone(),
        input: Box::new(input.source.clone()),
    };
    let courier = Some(first.courier.clone());
    DeadLetter::new(reason, source, courier, detail, input.bytes.to_vec(), input.received_ms)
}
