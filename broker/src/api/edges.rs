//! `GET /v1/edges/{id}/receipts/{key}`: where a request an edge forwarded stands.
//!
//! An edge answers its HTTP client `202 Accepted` once the broker has every part of the
//! request; the client (through the edge, which proxies this route with its own edge token)
//! reads here whether they are durably stored. Retrying the same key until `committed` stores
//! each fix once.

use super::{ApiError, ApiState};
use crate::store::ReceiptStatus;
use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;

/// The answer.
#[derive(Debug, Serialize)]
pub(super) struct ReceiptView {
    edge: String,
    key: String,
    /// `pending` (not every part is durably in, or nothing of the key has arrived),
    /// `committed` (every part is durably in: stop retrying) or `rejected` (a part was refused
    /// as a whole: `reason` and `detail` say why).
    status: ReceiptStatus,
    /// Whether any part of the key has arrived.
    known: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    courier: Option<String>,
    /// The digest of the request the key was first taken for (32 hex digits, as in the edge's
    /// 202): a client whose own digest differs reused a key another request holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<u16>,
    parts_committed: usize,
    /// Fixes in the committed parts, and how many of them validation refused (dead letters).
    fixes: u64,
    fixes_refused: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_received_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_received_ms: Option<u64>,
}

pub(super) async fn receipt(
    State(state): State<ApiState>,
    Path((edge, key)): Path<(String, String)>,
) -> Result<Json<ReceiptView>, ApiError> {
    super::check_id("edge", &edge)?;
    if !locus_sdk::wire::is_valid_edge_key(&key) {
        return Err(ApiError::bad_request(
            "key must be 1-128 characters of letters, digits, - _ . :",
        ));
    }
    let found = state.store.edge_receipt(&edge, &key)?;
    let mut view = ReceiptView {
        edge,
        key,
        status: ReceiptStatus::Pending,
        known: found.is_some(),
        courier: None,
        digest: None,
        parts: None,
        parts_committed: 0,
        fixes: 0,
        fixes_refused: 0,
        reason: None,
        detail: None,
        first_received_ms: None,
        last_received_ms: None,
    };
    if let Some((receipt, status)) = found {
        let (reason, detail) = receipt.rejected.clone().unzip();
        view = ReceiptView {
            status,
            digest: Some(locus_sdk::wire::digest_hex(&receipt.digest)),
            courier: Some(receipt.courier),
            parts: Some(receipt.parts),
            parts_committed: receipt.committed_parts.len(),
            fixes: receipt.fixes,
            fixes_refused: receipt.fixes_refused,
            reason,
            detail,
            first_received_ms: Some(receipt.first_ms),
            last_received_ms: Some(receipt.last_ms),
            ..view
        };
    }
    Ok(Json(view))
}
