//! # locus-sdk
//!
//! Everything a Locus client needs to talk to `locusd`.
//!
//! Layout:
//! - [`wire`]: the wire format — `Report`s and order events (`CourierEvent`) from couriers,
//!   `Ack`s from the server — as versioned, compact postcard (`no_std` + `alloc`, so Wasm
//!   guests and the edge component share it), plus the JSON view of every message used by
//!   tools, tests and other languages.
//! - [`topics`]: the one place MQTT topic names are built and parsed.
//! - `client` (feature `client`): the courier client — durable on-device outbox, batching,
//!   MQTT with end-to-end acks and reconnects. See `sdk/README.md`.
//!
//! Data goes: app fix → [`wire::Fix`] → [`wire::Report`] → [`wire::encode`] → MQTT
//! `couriers/{courier}/locations`, and an order's pickup or delivery → [`wire::CourierEvent`]
//! (numbered in the same sequence) → MQTT `couriers/{courier}/events`; the server answers on
//! `couriers/{courier}/acks` with an [`wire::Ack`] once they are durable.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "client")]
pub mod client;
pub mod topics;
pub mod wire;
