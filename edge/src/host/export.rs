//! The component's export, `wasi:http/incoming-handler@0.2.0`.
//!
//! `#[http_component]` expands to the WIT glue (wit-bindgen's exports and resource handles),
//! which is unsafe code; this module holds only that expansion, so the crate's `unsafe_code =
//! "deny"` is lifted here and nowhere else.
#![allow(unsafe_code)]

use spin_sdk::http::{IncomingRequest, Response};

/// Spin calls this for every request on the trigger's route (`/...`). It cannot fail: every
/// failure is already a JSON answer.
#[spin_sdk::http_component]
async fn handle(request: IncomingRequest) -> Response {
    super::serve(request).await
}
