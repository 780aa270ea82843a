//! The analyst files in `dashboards/` work: every dashboard is valid JSON whose InfluxQL
//! queries (Grafana macros filled in) run against a real influxd holding Locus points, and
//! every `queries/*.influxql` file runs as it is. Flux cannot run here (InfluxDB 1.6 has no
//! Flux engine), so `*.flux` files are only checked for shape.

mod influx_common;

use anyhow::{ensure, Context as _, Result};
use influx_common::{base_ts, config, fix, wait_until, Env};
use locus_tests::influxd::Influxd;
use std::path::{Path, PathBuf};

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn files(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    found.retain(|p| p.extension().is_some_and(|e| e == extension));
    found.sort();
    Ok(found)
}

/// Every `"query"` string anywhere in a dashboard (panel targets, template variables).
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("query", serde_json::Value::String(q)) if q != "influxdb" => {
                        out.push(q.clone())
                    }
                    _ => queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// What Grafana substitutes before sending a query.
fn fill_macros(query: &str) -> String {
    query
        .replace("$timeFilter", "time > now() - 2h")
        .replace("$__interval_ms", "10000")
        .replace("$__interval", "10s")
        .replace("$courier", "c1")
}

#[test]
fn dashboards_parse_and_their_queries_run() -> Result<()> {
    let influxd = Influxd::start("locus")?;
    // Real points to query: recent device times, several couriers and orders.
    let env = Env::new(config(&influxd.url(), "locus"));
    let now_ms = base_ts() + 3_600_000;
    env.enqueue((0..2_000).map(|i| fix(now_ms - 1_800_000, i * 500, 7)));
    let _running = env.ship();
    let count = "SELECT count(lat) FROM courier_location";
    wait_until("the sample points", || Ok(influxd.scalar(count)? == 2_000))?;

    let dashboards = files(&dashboards_dir(), "json")?;
    ensure!(!dashboards.is_empty(), "no dashboard in {}", dashboards_dir().display());
    for path in dashboards {
        let text = std::fs::read_to_string(&path)?;
        let dashboard: serde_json::Value =
            serde_json::from_str(&text).with_context(|| path.display().to_string())?;
        ensure!(dashboard["panels"].as_array().is_some_and(|p| !p.is_empty()), "{path:?}");
        let mut found = Vec::new();
        queries(&dashboard, &mut found);
        ensure!(found.len() >= 6, "{path:?} has only {} queries", found.len());
        for query in found {
            influxd
                .query(&fill_macros(&query))
                .with_context(|| format!("{}: {query}", path.display()))?;
        }
    }

    let query_files = files(&dashboards_dir().join("queries"), "influxql")?;
    ensure!(query_files.len() >= 6, "expected the six analyst queries");
    for path in query_files {
        let text = std::fs::read_to_string(&path)?;
        let body = influxd.query(&text).with_context(|| format!("running {}", path.display()))?;
        // Each file's first statement returns data for the sample points.
        let first = &body["results"][0];
        ensure!(first.get("series").is_some(), "{} returned nothing: {body}", path.display());
    }

    for path in files(&dashboards_dir().join("queries"), "flux")? {
        let text = std::fs::read_to_string(&path)?;
        ensure!(text.contains("from(bucket:"), "{path:?}");
        ensure!(text.contains("courier_location"), "{path:?}");
        for (open, close) in [('(', ')'), ('[', ']'), ('{', '}')] {
            ensure!(text.matches(open).count() == text.matches(close).count(), "{path:?}");
        }
    }
    Ok(())
}
