//! The components of the plugin workspace (`plugins/`: the example plugins and the test guests),
//! built for `wasm32-wasip2` on first use.
//!
//! The one copy of this helper, used by three crates: the end-to-end tests here (as
//! `locus_tests::plugin_components`), and locus-broker's plugin unit tests and plugin benchmark.
//! Those two include this file with `#[path = ...]` instead of depending on locus-tests:
//! locus-tests depends on locus-broker, so a dev-dependency back would be a cycle, and it would
//! link a second copy of locus-broker (and this crate's whole harness) into the broker's unit
//! tests. So this file needs only std and `locus_broker::plugins::scaffold` (the broker's unit
//! tests reach their own crate by that name through `extern crate self` in its lib.rs).

use locus_broker::plugins::scaffold;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The component of the plugin crate `name` (`zone-tagger` and `zone_tagger` both work). The
/// first call in a process builds the whole plugin workspace with
/// [`scaffold::build_components`] (release, into `plugins/target`); later calls reuse that build.
pub fn component(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<Vec<PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        // Every user of this file is a crate beside plugins/ (broker/, tests/).
        let manifest = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/Cargo.toml"));
        scaffold::build_components(&manifest).expect("the plugins workspace builds")
    });
    let file = format!("{}.wasm", name.replace('-', "_"));
    let path = built
        .iter()
        .find(|p| p.file_name().is_some_and(|f| f == file.as_str()))
        .unwrap_or_else(|| panic!("no component {file} among {built:?}"));
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
