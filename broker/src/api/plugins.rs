//! Plugin routes: deploy, list, remove, roll back. The registry compiles components with
//! Cranelift, so its calls run on the blocking pool, never on the async workers.

use super::{ApiError, ApiState};
use crate::plugins::{PluginError, PluginInfo, PluginSettings};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Json;
use std::fmt::Write as _;

/// Header carrying a deploy's settings as JSON (position, config, failure_policy, limits,
/// capabilities); absent = defaults.
pub const SETTINGS_HEADER: &str = "locus-plugin-settings";

/// Largest component accepted by `PUT /v1/plugins/{name}`.
const MAX_COMPONENT_BYTES: usize = 64 * 1024 * 1024;

/// `PUT /v1/plugins/{name}`: the deploy handler, with a body limit that fits components (the
/// route table in [`super::access`] registers it).
pub(super) fn deploy_route(filter: MethodFilter) -> MethodRouter<ApiState> {
    on(filter, deploy).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES))
}

impl From<PluginError> for ApiError {
    fn from(e: PluginError) -> Self {
        let status = match &e {
            PluginError::NotFound(_) => StatusCode::NOT_FOUND,
            e if e.is_client_error() => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PluginError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

pub(super) async fn list(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "plugins": state.plugins.list() }))
}

pub(super) async fn show(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PluginInfo>, ApiError> {
    state
        .plugins
        .get(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no plugin named {name}")))
}

async fn deploy(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PluginInfo>, ApiError> {
    let settings = match headers.get(SETTINGS_HEADER) {
        None => PluginSettings::default(),
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::bad_request(format!("{SETTINGS_HEADER} must be ASCII JSON"))
            })?;
            serde_json::from_str(text).map_err(|e| {
                ApiError::bad_request(format!("{SETTINGS_HEADER} is not valid settings: {e}"))
            })?
        }
    };
    if body.is_empty() {
        return Err(ApiError::bad_request("the body must be the plugin's Wasm component"));
    }
    let registry = state.plugins.clone();
    let info = blocking(move || registry.deploy(&name, &body, settings)).await?;
    tracing::info!(plugin = %info.name, version = %info.version, "plugin deployed");
    Ok(Json(info))
}

pub(super) async fn remove(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let registry = state.plugins.clone();
    blocking(move || registry.remove(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn rollback(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PluginInfo>, ApiError> {
    let registry = state.plugins.clone();
    Ok(Json(blocking(move || registry.rollback(&name)).await?))
}

/// Reads one counter out of a plugin's stats.
type StatOf = fn(&PluginInfo) -> u64;

/// Prometheus samples of every deployed plugin.
pub(super) fn metrics_text(plugins: &[PluginInfo]) -> String {
    let mut out = String::new();
    let families: [(&str, &str, StatOf); 6] = [
        ("locus_plugin_calls", "Batches processed by a plugin", |p| p.stats.calls),
        ("locus_plugin_fixes_in", "Fixes passed into a plugin", |p| p.stats.fixes_in),
        ("locus_plugin_fixes_out", "Fixes a plugin kept", |p| p.stats.fixes_out),
        ("locus_plugin_fixes_dropped", "Fixes a plugin dropped", |p| p.stats.fixes_dropped),
        ("locus_plugin_fixes_rejected", "Fixes a plugin rejected", |p| p.stats.fixes_rejected),
        ("locus_plugin_errors", "Failed plugin calls", |p| p.stats.errors),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
        for plugin in plugins {
            let _ = writeln!(
                out,
                "{name}_total{{plugin=\"{}\",version=\"{}\"}} {}",
                plugin.name,
                plugin.version,
                value(plugin)
            );
        }
    }
    out
}
