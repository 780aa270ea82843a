//! The broker crate's top-level modules form no cycle, and the parts of the flow never reach up
//! into the modules that assemble them.
//!
//! The graph comes from the `crate::<module>` paths in each module's source (comments left
//! out). The rule:
//! - `cli` (the commands), `serve` (starts every part) and `config` (gathers every part's
//!   section) sit on top and may use any part;
//! - a part (`mqtt`, `pipeline`, `plugins`, `store`, `influx`, `api`, `auth`, `tls`,
//!   `metrics`, `listener`, `orders`, `notify`, `cluster`) never uses `cli`, `serve` or `config`: its settings type lives
//!   next to it;
//! - no module reaches itself through others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const TOP: &[&str] = &["cli", "serve", "config"];
const PARTS: &[&str] = &[
    "mqtt", "pipeline", "plugins", "store", "influx", "api", "auth", "tls", "metrics", "listener",
    "orders", "notify", "cluster",
];

fn sources(src: &Path, module: &str) -> Vec<PathBuf> {
    let file = src.join(format!("{module}.rs"));
    let dir = src.join(module);
    let mut found = Vec::new();
    if file.exists() {
        found.push(file);
    }
    let mut dirs = vec![dir];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found
}

/// The modules `module` uses, from `crate::X` in its code (not in comments).
fn uses(src: &Path, module: &str, known: &BTreeSet<&str>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for path in sources(src, module) {
        let text = std::fs::read_to_string(&path).expect("readable source");
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                let name: String = code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if name != module && known.contains(name.as_str()) {
                    used.insert(name);
                }
            }
        }
    }
    used
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known: BTreeSet<&str> = TOP.iter().chain(PARTS).copied().collect();
    known.iter().map(|m| (m.to_string(), uses(&src, m, &known))).collect()
}

/// A cycle through `start`, if there is one.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack: Vec<Vec<String>> = vec![vec![start.to_owned()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().expect("non-empty path");
        for next in &graph[last] {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycle_and_parts_never_use_the_top() {
    let graph = graph();
    assert!(graph["serve"].contains("pipeline"), "the graph is read from the sources: {graph:?}");
    for part in PARTS {
        let up: Vec<&String> = graph[*part].iter().filter(|m| TOP.contains(&m.as_str())).collect();
        assert!(up.is_empty(), "`{part}` uses {up:?}; its settings belong next to it");
    }
    for module in graph.keys() {
        if let Some(cycle) = cycle_through(&graph, module) {
            panic!("module cycle: {}", cycle.join(" → "));
        }
    }
}
