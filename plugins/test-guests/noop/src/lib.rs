//! # noop — keeps every fix unchanged
//!
//! The smallest possible plugin, for measuring the host's per-call and per-fix overhead in the
//! benchmark: whatever it costs is the cost of crossing into a plugin and back.

use locus_plugin::{export_plugin, Config, Plugin};

struct Noop;

impl Plugin for Noop {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Noop)
    }
}

export_plugin!(Noop);
