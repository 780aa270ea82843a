//! Dead-letter routes: list, show, replay, purge and export, each over a filter.
//!
//! Enters: `GET /v1/dead-letters`, `GET /v1/dead-letters/{id}`, `GET /v1/dead-letters/export`,
//! `POST /v1/dead-letters/replay`, `POST /v1/dead-letters/{id}/replay`,
//! `DELETE /v1/dead-letters`, `DELETE /v1/dead-letters/{id}` (admin). Leaves: letters as JSON
//! ([`super::json::dead_letter`]) or JSON lines; replays handed to the pipeline's
//! [`LetterDesk`](crate::pipeline::LetterDesk) and answered once durable; removals.
//!
//! A filter is any of `reason`, `courier`, `source` (`mqtt`, `replay`, `plugin`, `influxdb`),
//! `plugin` (the plugin that refused it) and `since`/`until` (received time, Unix ms). A purge
//! with no filter must say `all=true`: one mistyped request must not empty the store.

use super::{check_id, json, ApiError, ApiState};
use crate::store::{DeadLetterFilter, SourceKind};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// Letters read per step of a replay, purge or export over a filter.
const STEP: usize = 1000;

/// The query of the dead-letter routes: a filter, paging, and for purges `all`. Public so the
/// fuzz targets parse it the same way. The filter's fields are spelled out rather than a
/// flattened [`DeadLetterFilter`]: serde cannot refuse unknown fields through `flatten`, and a
/// mistyped filter must be a 400, not a purge of everything.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// The reason's code.
    pub reason: Option<String>,
    /// The courier.
    pub courier: Option<String>,
    /// Where it came from.
    pub source: Option<SourceKind>,
    /// The plugin that refused it.
    pub plugin: Option<String>,
    /// Received at or after, Unix ms.
    pub since: Option<u64>,
    /// Received at or before, Unix ms.
    pub until: Option<u64>,
    /// Dead-letter id to continue after (lists).
    pub after: Option<u64>,
    /// Page size (lists).
    pub limit: Option<usize>,
    /// Purge every letter (a purge without a filter needs it).
    pub all: Option<bool>,
}

impl DeadLetterQuery {
    /// The filter it names.
    pub fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            reason: self.reason.clone(),
            courier: self.courier.clone(),
            source: self.source,
            plugin: self.plugin.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

fn query(
    query: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<DeadLetterQuery, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(courier) = &query.courier {
        check_id("courier", courier)?;
    }
    Ok(query)
}

fn letter_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| ApiError::bad_request(format!("invalid dead-letter id {id:?}")))
}

/// Ids of every letter `filter` matches, oldest first.
fn matching_ids(state: &ApiState, filter: &DeadLetterFilter) -> Result<Vec<u64>, ApiError> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = state.store.dead_letters_matching(filter, after, STEP)?;
        ids.extend(page.iter().map(|(id, _)| *id));
        match page.last() {
            Some((last, _)) if page.len() == STEP => after = *last,
            _ => return Ok(ids),
        }
    }
}

pub(super) async fn list(
    State(state): State<ApiState>,
    raw: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let query = query(raw)?;
    let limit = query.limit.unwrap_or(100).clamp(1, state.max_page);
    let letters =
        state.store.dead_letters_matching(&query.filter(), query.after.unwrap_or(0), limit)?;
    let next_after = (letters.len() == limit).then(|| letters.last().map(|(id, _)| *id)).flatten();
    let items: Vec<_> = letters.iter().map(|(id, l)| json::dead_letter(*id, l)).collect();
    Ok(Json(json!({ "dead_letters": items, "next_after": next_after })))
}

pub(super) async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = letter_id(&id)?;
    let letter = state
        .store
        .dead_letter(id)?
        .ok_or_else(|| ApiError::not_found(format!("no dead letter {id}")))?;
    Ok(Json(json::dead_letter(id, &letter)))
}

/// Every letter the filter matches as JSON lines (`application/x-ndjson`), read from the store
/// a step at a time while the answer is sent.
pub(super) async fn export(
    State(state): State<ApiState>,
    raw: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let filter = query(raw)?.filter();
    // The first step now, so a failing store is an error answer, not a cut-off body.
    let first = state.store.dead_letters_matching(&filter, 0, STEP)?;
    let steps = futures_util::stream::unfold(Some(first), move |page| {
        let state = state.clone();
        let filter = filter.clone();
        async move {
            let page = page?;
            if page.is_empty() {
                return None;
            }
            let mut lines = Vec::new();
            for (id, letter) in &page {
                serde_json::to_writer(&mut lines, &json::dead_letter(*id, letter))
                    .expect("JSON of a dead letter");
                lines.push(b'\n');
            }
            state.metrics.dead_letters_exported.inc_by(page.len() as u64);
            let next = match page.last() {
                Some((last, _)) if page.len() == STEP => {
                    match state.store.dead_letters_matching(&filter, *last, STEP) {
                        Ok(next) => Some(next),
                        Err(e) => {
                            // Headers are gone: cutting the body short is the one way left to
                            // say it failed (the client sees an incomplete transfer).
                            tracing::error!(error = %e, "dead-letter export cut short");
                            return Some((Err(std::io::Error::other(e.to_string())), None));
                        }
                    }
                }
                _ => Some(Vec::new()),
            };
            Some((Ok::<_, std::io::Error>(lines), next))
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"dead-letters.jsonl\""),
        ],
        Body::from_stream(steps),
    )
        .into_response())
}

async fn replay_ids(state: &ApiState, ids: Vec<u64>) -> Result<Json<Value>, ApiError> {
    let report =
        state.dead_letters.replay(ids).await.map_err(|e| {
            ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        })?;
    Ok(Json(serde_json::to_value(report).expect("JSON of a replay report")))
}

/// Replays one letter; answered once what it stored is durable.
pub(super) async fn replay_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = letter_id(&id)?;
    if state.store.dead_letter(id)?.is_none() {
        return Err(ApiError::not_found(format!("no dead letter {id}")));
    }
    replay_ids(&state, vec![id]).await
}

/// Replays every letter the filter matches (every letter without one).
pub(super) async fn replay_matching(
    State(state): State<ApiState>,
    raw: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let filter = query(raw)?.filter();
    let ids = matching_ids(&state, &filter)?;
    replay_ids(&state, ids).await
}

pub(super) async fn purge_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = letter_id(&id)?;
    let purged = state.store.remove_dead_letters(&[id])?;
    state.store.flush()?;
    if purged == 0 {
        return Err(ApiError::not_found(format!("no dead letter {id}")));
    }
    state.metrics.dead_letters_purged.inc();
    Ok(Json(json!({ "purged": purged })))
}

pub(super) async fn purge_matching(
    State(state): State<ApiState>,
    raw: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let query = query(raw)?;
    let filter = query.filter();
    if filter.is_empty() && query.all != Some(true) {
        return Err(ApiError::bad_request(
            "a purge without a filter (reason, courier, source, plugin, since, until) removes \
             every dead letter: say so with all=true",
        ));
    }
    let ids = matching_ids(&state, &filter)?;
    let purged = state.store.remove_dead_letters(&ids)?;
    state.store.flush()?;
    state.metrics.dead_letters_purged.inc_by(purged as u64);
    Ok(Json(json!({ "purged": purged })))
}
