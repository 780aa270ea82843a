//! # locus-edge
//!
//! A Fermyon Spin HTTP component that takes courier fixes over HTTP (from web, partner and
//! merchant clients that do not speak MQTT) and publishes them into locusd's MQTT stream, and
//! passes a few read and order routes through to locusd's HTTP API.
//!
//! **Enters:** HTTP requests on Spin's trigger route `/...`; Spin variables (`config`).
//! **Leaves:** JSON answers; [`locus_sdk::wire::EdgeBatch`] messages on
//! `edge/{edge_id}/batches` at QoS 1 (one MQTT connection per request); HTTP requests to
//! locusd's API for proxied routes.
//!
//! | route | what happens |
//! |---|---|
//! | `POST /v1/couriers/{id}/locations` | fixes (JSON or Locus wire) checked whole, split into parts, published; 202 with a receipt |
//! | `GET /v1/receipts/{key}` | locusd's `GET /v1/edges/{edge_id}/receipts/{key}`, with the edge's token |
//! | `GET /v1/couriers/{id}/location`, `GET /v1/orders/{id}/location` | the same path on locusd, with the client's `Authorization` |
//! | `POST /v1/orders/{id}/events` | the same path on locusd, with the client's `Authorization` and `Content-Type` (body ≤ 64 KiB) |
//! | `GET /healthz` | `{"status":"ok","edge":ID}`, calling nothing |
//!
//! **The contract of a POST:** 202 means the broker took every part at QoS 1; the receipt
//! (`GET /v1/receipts/{key}`) turns `committed` once locusd has stored them durably, or
//! `rejected` (the client's token may not report for the courier, or the key was used before
//! with other fixes). A client that retries with the same `Idempotency-Key` until the receipt
//! is `committed` gets every fix stored exactly once: locusd drops parts it already has. On
//! 503 (broker unavailable) the same retry applies. The edge checks everything it can before
//! publishing anything; it cannot check tokens (it holds no secret), so it forwards the
//! client's token in each message and locusd checks it.
//!
//! ## Modules
//!
//! Every module but `host` is plain Rust, tested on the host (`cargo test --manifest-path
//! edge/Cargo.toml`):
//!
//! - [`routes`]: method and path → a route with checked ids (404 / 405 / 400).
//! - [`config`]: Spin variables → [`config::Config`] (500 naming the variable when bad).
//! - [`headers`]: `Authorization`, `Idempotency-Key`, `Content-Type` of a POST.
//! - [`ingest`]: a POST's body → checked wire fixes (400 naming the field, 413).
//! - [`batches`]: fixes → digest, numbered parts, encoded messages; the broker URL; the 202.
//! - [`proxy`]: upstream URLs and credentials; locusd's answer → the client's.
//! - [`errors`]: every failure as a JSON [`errors::Answer`].
//! - `host` (`wasm32` only): the `#[http_component]` export and the calls into Spin: variables,
//!   body streams, MQTT, outbound HTTP, random bytes.
//!
//! ## Why spin-sdk 5.2.0
//!
//! It is the newest SDK whose export, `wasi:http/incoming-handler@0.2.0`, both the released
//! Spin (4.0.2, whose HTTP trigger takes any `incoming-handler@0.2.*`) and the project's test
//! host (wasmtime-wasi-http 48, WASI HTTP 0.2) can run. spin-sdk 6.0 exports
//! `wasi:http/handler@0.3.0-rc-2026-03-15`, which wasmtime 48 cannot host; 7.0 exports the final
//! `wasi:http/handler@0.3.0`, which no released Spin accepts yet. Its imports
//! (`fermyon:spin/mqtt@2.0.0`, `fermyon:spin/variables@2.0.0`, WASI 0.2) are all in Spin
//! 4.0.2's `platform` world (`allowed-imports.txt`). Moving to 7.0 (async MQTT,
//! `spin:mqtt@3.0.0`) waits for a Spin release with `handler@0.3`.

pub mod batches;
pub mod config;
pub mod errors;
pub mod headers;
pub mod ingest;
pub mod proxy;
pub mod routes;

#[cfg(target_arch = "wasm32")]
mod host;

/// `allowed-imports.txt` is read by the project's tests against the built component; these
/// tests keep the file well formed and pin its rule (the same one the harness applies).
#[cfg(test)]
mod allowed_imports {
    const LIST: &str = include_str!("../allowed-imports.txt");

    /// The component's imports when this was written (`wasm-tools component wit`).
    const IMPORTS: [&str; 19] = [
        "wasi:io/poll@0.2.6",
        "wasi:io/error@0.2.6",
        "wasi:io/streams@0.2.6",
        "wasi:http/types@0.2.6",
        "wasi:http/outgoing-handler@0.2.6",
        "wasi:cli/environment@0.2.6",
        "wasi:cli/exit@0.2.6",
        "wasi:cli/stdin@0.2.6",
        "wasi:cli/stdout@0.2.6",
        "wasi:cli/stderr@0.2.6",
        "wasi:cli/terminal-input@0.2.6",
        "wasi:cli/terminal-output@0.2.6",
        "wasi:cli/terminal-stdin@0.2.6",
        "wasi:cli/terminal-stdout@0.2.6",
        "wasi:cli/terminal-stderr@0.2.6",
        "wasi:random/random@0.2.6",
        "wasi:random/insecure-seed@0.2.6",
        "fermyon:spin/mqtt@2.0.0",
        "fermyon:spin/variables@2.0.0",
    ];

    fn version(text: &str) -> Option<(u64, u64, u64)> {
        let mut parts = text.split('.').map(|p| p.parse::<u64>().ok());
        let v = (parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(v)
    }

    fn entries() -> Vec<(&'static str, (u64, u64, u64))> {
        LIST.lines()
            .map(|line| line.split('#').next().unwrap_or_default().trim())
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (name, v) = line.rsplit_once('@').unwrap_or_else(|| panic!("{line}"));
                assert!(name.contains(':') && name.contains('/'), "{line}");
                (name, version(v).unwrap_or_else(|| panic!("{line}")))
            })
            .collect()
    }

    /// Same interface, same major and minor, patch at most the listed one.
    fn allowed(import: &str) -> bool {
        let Some((name, v)) = import.rsplit_once('@') else { return false };
        let Some(v) = version(v) else { return false };
        entries().iter().any(|&(n, max)| n == name && (v.0, v.1) == (max.0, max.1) && v.2 <= max.2)
    }

    #[test]
    fn the_list_is_well_formed_and_allows_every_import_of_today() {
        assert!(entries().len() >= IMPORTS.len());
        for import in IMPORTS {
            assert!(allowed(import), "{import}");
        }
        assert!(allowed("wasi:io/streams@0.2.0"), "older patches of 0.2 are fine");
    }

    #[test]
    fn newer_prerelease_and_unlisted_imports_are_refused() {
        for import in [
            "wasi:io/streams@0.2.7",
            "wasi:io/streams@0.3.0",
            "wasi:http/types@0.3.0-rc-2026-03-15",
            "fermyon:spin/key-value@2.0.0",
            "spin:mqtt/mqtt@3.0.0",
            "wasi:clocks/timezone@0.2.6",
            "wasi:io/streams",
        ] {
            assert!(!allowed(import), "{import}");
        }
    }
}
