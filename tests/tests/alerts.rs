//! The alerting rules (`dashboards/alerts.yml`): valid and unit-tested by promtool (Debian's
//! `prometheus` package, installed by scripts/test.sh), and naming only metrics a running
//! locusd exports, as do the dashboards and the rules' tests.

use locus_tests::{free_port, LocusServer};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dashboards() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards"))
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dashboards())
        .output()
        .expect("promtool is installed (scripts/test.sh installs Debian's prometheus)");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_alert_rules_are_valid_and_fire_when_they_should() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
}

/// Every `locus_…` name in `text` (a name that ends in `_` is a prefix in prose, not a metric).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("locus_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let starts_a_word = rest[..at].chars().last().is_none_or(|c| !c.is_ascii_alphanumeric());
        if starts_a_word && !name.ends_with('_') {
            names.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The sample names a Prometheus text exposition can hold, from its `# TYPE` lines (a family
/// with labels shows no sample until its first event).
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{}{suffix}", name.trim_end_matches("_total")));
        }
    }
    names
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_metric_the_rules_and_dashboards_name_is_exported() {
    // With [influx] (nothing listening there) so the InfluxDB shipper's metrics exist too.
    let config = format!("[influx]\nurl = \"http://127.0.0.1:{}\"\n", free_port());
    let server = LocusServer::start_with(true, Some(&config));
    let metrics = server.metrics_text();
    let exported = exported(&metrics);
    assert!(exported.contains("locus_fixes_committed_total"), "{metrics}");

    let mut files = vec![dashboards().join("alerts.yml"), dashboards().join("alerts.test.yml")];
    for entry in std::fs::read_dir(dashboards()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    let mut named = 0;
    for file in &files {
        for name in metric_names(&read(file)) {
            named += 1;
            assert!(
                exported.contains(&name),
                "{} names {name}, which locusd does not export; it exports:\n{exported:#?}",
                file.display()
            );
        }
    }
    assert!(named >= 10, "the rules name metrics");
}
