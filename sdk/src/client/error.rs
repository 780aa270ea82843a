//! The client's errors: what the app can act on, with context, as plain values.

use std::path::PathBuf;

/// Everything that can go wrong in the courier client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration cannot work (bad broker address, invalid courier id, TLS without the
    /// `tls` feature, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The broker refused this courier's credentials (wrong or revoked token, client id not the
    /// courier id). The client does not retry: connect again with a valid token.
    #[error("the broker refused the credentials of courier {courier}: {reason}")]
    Unauthorized {
        /// The courier id that was refused.
        courier: String,
        /// What the broker said (or did).
        reason: String,
    },
    /// Another process (or another `Courier` in this one) has the outbox open.
    #[error("outbox {0} is in use by another client")]
    OutboxLocked(PathBuf),
    /// The outbox could not be read or written.
    #[error("outbox {path}: {source}")]
    Outbox {
        /// The file or folder involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The outbox is at its bound and the new fix or event is refused: the policy is to refuse
    /// new data, or (for an order event, which only ever displaces fixes) no fix is left to drop.
    #[error("outbox full ({fixes} fixes, {events} order events, {bytes} bytes): refused")]
    OutboxFull {
        /// Fixes held.
        fixes: u64,
        /// Order events held.
        events: u64,
        /// Bytes held.
        bytes: u64,
    },
    /// The fix cannot be put on the wire (not finite, off the globe, ...).
    #[error("invalid fix: {0}")]
    InvalidFix(String),
    /// The order event would be refused by the server (an order or event id that is not a
    /// valid id, details that are not JSON or too long).
    #[error("invalid order event: {0}")]
    InvalidEvent(String),
    /// [`crate::client::Courier::flush`] gave up waiting.
    #[error(
        "timed out with {queued_fixes} fixes and {queued_events} order events not yet acknowledged"
    )]
    Timeout {
        /// Fixes still in the outbox.
        queued_fixes: u64,
        /// Order events still in the outbox.
        queued_events: u64,
    },
    /// The client was closed (or its background thread ended).
    #[error("the client is closed")]
    Closed,
    /// The client's background runtime could not start.
    #[error("could not start the client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}
