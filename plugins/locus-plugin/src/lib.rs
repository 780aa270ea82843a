//! # locus-plugin — the guest kit for Locus plugins
//!
//! A Locus plugin is a WebAssembly component for the `locus:plugin` world (`plugins/wit/`). This
//! crate wraps the wit-bindgen glue so that a plugin is a type, one trait impl and one macro call:
//!
//! ```ignore
//! use locus_plugin::{export_plugin, Config, Fix, Outcome, Plugin};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn init(_config: &Config) -> Result<Self, String> {
//!         Ok(Hello)
//!     }
//!     fn process_fix(&mut self, mut fix: Fix) -> Outcome {
//!         fix.set_attribute("hello", "world");
//!         Outcome::Keep(fix)
//!     }
//! }
//!
//! export_plugin!(Hello);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`).
//!
//! What enters: `init` once per instance with the configuration, then `process` once per batch of
//! fixes. What leaves: one [`Outcome`] per fix, in order. The host reuses one instance for many
//! batches, so the plugin value lives across batches: that is where per-courier state goes (see
//! the jitter-filter example). It is lost when the instance is replaced (a trap, a redeploy, a
//! server restart), so plugins must treat it as a cache.
//!
//! The host grants no files, network, environment or clocks (clocks read as the Unix epoch), and
//! discards stdout and stderr: use [`log`] to write to the server's log. A panic is logged with
//! its message and fails the batch (the host then applies the plugin's failure policy).

#![warn(missing_docs)]

// Lets the paths in the generated glue (`::locus_plugin::...`) resolve inside this crate too.
extern crate self as locus_plugin;

/// The wit-bindgen glue for the `locus:plugin` world. Generated code; use the re-exports.
#[allow(unsafe_code, missing_docs, missing_debug_implementations)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "::locus_plugin::bindings",
        runtime_path: "::locus_plugin::__private::wit_bindgen::rt",
    });
}

use std::any::Any;
use std::cell::RefCell;

pub use bindings::locus::plugin::log::Level;
pub use bindings::locus::plugin::types::{Fix, Outcome};

/// A plugin: built from its configuration once per instance, then called once per batch.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its configuration, or refuses the configuration with a message
    /// (which refuses the deploy).
    fn init(config: &Config) -> Result<Self, String>;

    /// Decides the fate of one fix. The default keeps it unchanged.
    fn process_fix(&mut self, fix: Fix) -> Outcome {
        Outcome::Keep(fix)
    }

    /// Decides the fate of a batch of fixes, one outcome per fix, in order. The default calls
    /// [`Plugin::process_fix`] for each; override it to work on the batch as a whole.
    fn process(&mut self, fixes: Vec<Fix>) -> Vec<Outcome> {
        fixes.into_iter().map(|fix| self.process_fix(fix)).collect()
    }
}

/// A plugin's configuration: key/value pairs, in the order they were given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    /// A configuration from pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Config { pairs }
    }

    /// The value of `key` (the last one if given more than once).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key` parsed as `T`, `default` when absent, an error naming the key when it
    /// does not parse.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|e| format!("config `{key}` = {raw:?}: {e}")),
        }
    }

    /// All pairs whose key starts with `prefix`, with the prefix removed from the key.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.pairs.iter().filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
    }

    /// All pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl Fix {
    /// The value of attribute `key`, if set.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Sets attribute `key` to `value`, replacing an earlier value of the same key.
    pub fn set_attribute(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((key, value)),
        }
    }
}

/// Writes a line to the server's log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    bindings::locus::plugin::log::log(level, message);
}

/// Exports a [`Plugin`] type as the component's `locus:plugin/transform` implementation.
///
/// Call it once, at the top level of the plugin crate: `export_plugin!(MyPlugin);`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        #[allow(unsafe_code)]
        mod __locus_plugin_export {
            #[allow(unused_imports)]
            use super::*;

            pub struct Export;

            impl $crate::bindings::exports::locus::plugin::transform::Guest for Export {
                fn init(config: Vec<(String, String)>) -> Result<(), String> {
                    $crate::__private::init::<$plugin>(config)
                }

                fn process(fixes: Vec<$crate::Fix>) -> Vec<$crate::Outcome> {
                    $crate::__private::process::<$plugin>(fixes)
                }
            }

            $crate::bindings::__export_plugin_world!(Export with_types_in $crate::bindings);
        }
    };
}

/// Not public API: what `export_plugin!` expands to.
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub use wit_bindgen;

    thread_local! {
        // The plugin value of this instance. A component instance is single-threaded, and the
        // host never calls into it re-entrantly, so a thread-local cell is the whole story.
        static PLUGIN: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<P: Plugin>(config: Vec<(String, String)>) -> Result<(), String> {
        install_panic_hook();
        let plugin = P::init(&Config::new(config))?;
        PLUGIN.with(|cell| *cell.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    pub fn process<P: Plugin>(fixes: Vec<Fix>) -> Vec<Outcome> {
        PLUGIN.with(|cell| {
            let mut slot = cell.borrow_mut();
            match slot.as_mut().and_then(|plugin| plugin.downcast_mut::<P>()) {
                Some(plugin) => plugin.process(fixes),
                // The host always calls `init` first; answer sensibly anyway.
                None => fixes
                    .into_iter()
                    .map(|_| Outcome::Reject("plugin called before a successful init".into()))
                    .collect(),
            }
        })
    }

    fn install_panic_hook() {
        // stderr goes nowhere in the sandbox: send the panic message to the host's log, where it
        // also becomes part of the failed batch's dead-letter detail.
        std::panic::set_hook(Box::new(|info| {
            log(Level::Error, &format!("panic: {info}"));
        }));
    }
}
