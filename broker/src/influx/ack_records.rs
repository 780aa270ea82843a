//! Ack records: in cluster mode, the couriers' committed seqs kept in InfluxDB, the shared
//! record, so that a worker taking over a partition knows what was acked without the dead
//! worker's disk.
//!
//! Enters: `(courier, committed seqs)` as of commits whose fixes InfluxDB already holds.
//! Leaves: points of measurement [`MEASUREMENT`] (tag `courier`; fields `watermark`, an
//! integer, and `ranges`, the committed ranges above it as `"lo-hi lo-hi"`), written before
//! the acks they back are published; and, read back with InfluxQL over `/query`, the newest
//! record of every courier.
//!
//! Why this is enough: a worker acks only seqs whose fixes are in InfluxDB (the shipper passed
//! their log entries) and only after their record is written, so a record never claims a seq
//! InfluxDB lacks, and every ack a device got is covered by a record. A record written by a
//! worker that died before settling its deliveries only makes the next worker call those
//! deliveries duplicates, which they are.

use super::config::{InfluxApi, InfluxConfig};
use super::writer::{encode_body, Outcome, Writer};
use super::InfluxError;
use crate::store::SeqWindow;
use reqwest::header::AUTHORIZATION;
use reqwest::Url;
use std::fmt::Write as _;

/// The measurement of ack records.
pub const MEASUREMENT: &str = "locus_acks";

/// Writes and reads ack records.
#[derive(Debug)]
pub struct AckRecords {
    writer: Writer,
    query: Url,
}

impl AckRecords {
    /// Ack records in the InfluxDB of `config`. Reads go to the 1.x query API (`/query`), which
    /// 2.x and 3.x also serve for a database mapped to the bucket.
    pub fn new(config: &InfluxConfig) -> Result<AckRecords, InfluxError> {
        let writer = Writer::new(config)?;
        let mut query = writer.endpoint().clone();
        let base = query.path().rsplit_once('/').map_or("", |(base, _)| base).to_owned();
        let base = base.strip_suffix("/api/v2").unwrap_or(&base).to_owned();
        query.set_path(&format!("{base}/query"));
        let database = match config.api {
            InfluxApi::V1 => config.database.clone(),
            InfluxApi::V2 => config.bucket.clone().unwrap_or_default(),
        };
        query.query_pairs_mut().clear().append_pair("db", &database);
        if let Some(rp) = &config.retention_policy {
            query.query_pairs_mut().append_pair("rp", rp);
        }
        Ok(AckRecords { writer, query })
    }

    /// Writes one record per courier, timestamped `now_ms`; `Ok` once InfluxDB took them all.
    pub async fn write(&self, acks: &[(&str, &SeqWindow)], now_ms: u64) -> Result<(), String> {
        if acks.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = acks.iter().map(|(c, w)| line(c, w, now_ms)).collect();
        match self.writer.write(encode_body(&lines, true)).await {
            Outcome::Written => Ok(()),
            Outcome::Rejected { detail } | Outcome::TooLarge { detail } => Err(detail),
            Outcome::Failed { detail, .. } => Err(detail),
        }
    }

    /// The newest record of every courier.
    pub async fn read_all(&self) -> Result<Vec<(String, SeqWindow)>, String> {
        let q = format!(
            "SELECT last(watermark) AS watermark, last(ranges) AS ranges FROM {MEASUREMENT} \
             GROUP BY courier"
        );
        let mut url = self.query.clone();
        url.query_pairs_mut().append_pair("q", &q);
        let (client, authorization) = self.writer.client();
        let mut request = client.get(url);
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("HTTP {}: {}", status.as_u16(), body.trim()));
        }
        parse_query_answer(&body)
    }
}

/// One record as line protocol (ms precision). Courier ids need no escaping: they are
/// `A-Z a-z 0-9 - _ . :` ([`locus_sdk::topics::is_valid_id`]).
fn line(courier: &str, window: &SeqWindow, now_ms: u64) -> String {
    let mut ranges = String::new();
    for (i, (lo, hi)) in window.ranges().iter().enumerate() {
        let _ = write!(ranges, "{}{lo}-{hi}", if i > 0 { " " } else { "" });
    }
    format!(
        "{MEASUREMENT},courier={courier} watermark={}i,ranges=\"{ranges}\" {now_ms}",
        window.watermark()
    )
}

/// The records in an InfluxQL answer (`results[0].series[]`, one per courier).
fn parse_query_answer(body: &str) -> Result<Vec<(String, SeqWindow)>, String> {
    let answer: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let result = &answer["results"][0];
    if let Some(error) = result["error"].as_str() {
        return Err(error.to_owned());
    }
    let mut records = Vec::new();
    for series in result["series"].as_array().into_iter().flatten() {
        let Some(courier) = series["tags"]["courier"].as_str() else { continue };
        let Some(row) = series["values"].get(0) else { continue };
        let watermark = row.get(1).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let ranges: Vec<(u64, u64)> = row
            .get(2)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|range| {
                let (lo, hi) = range.split_once('-')?;
                Some((lo.parse().ok()?, hi.parse().ok()?))
            })
            .collect();
        records.push((courier.to_owned(), SeqWindow::from_parts(watermark, &ranges)));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_the_window_it_was_written_from() {
        let mut window = SeqWindow::from_watermark(7);
        let _ = window.take(9);
        let _ = window.take(10);
        let _ = window.take(12);
        assert_eq!(
            line("c-1", &window, 1_700_000_000_000),
            "locus_acks,courier=c-1 watermark=7i,ranges=\"9-10 12-12\" 1700000000000"
        );
        // What InfluxDB 1.8 answers for the query in `read_all`.
        let body = r#"{"results":[{"statement_id":0,"series":[
            {"name":"locus_acks","tags":{"courier":"c-1"},"columns":["time","watermark","ranges"],
             "values":[["1970-01-01T00:00:00Z",7,"9-10 12-12"]]},
            {"name":"locus_acks","tags":{"courier":"c-2"},"columns":["time","watermark","ranges"],
             "values":[["1970-01-01T00:00:00Z",3,""]]}]}]}"#;
        let records = parse_query_answer(body).unwrap();
        assert_eq!(
            records,
            [("c-1".to_owned(), window), ("c-2".to_owned(), SeqWindow::from_watermark(3))]
        );
        assert_eq!(parse_query_answer(r#"{"results":[{"statement_id":0}]}"#).unwrap(), []);
        assert!(parse_query_answer(r#"{"results":[{"error":"database not found: x"}]}"#).is_err());
    }
}
