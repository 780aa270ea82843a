//! Hooks for the embedding application (vendored patch, see PATCHES.md): topic ACL, connection
//! events, listener events and the rate limits behind them.
//!
//! Enters: handlers the application sets on [`crate::ConnectionSettings`] /
//! [`crate::ServerSettings`]. Leaves: ACL verdicts used by the router and the remote links,
//! and events reported to the application.
//!
//! Names follow upstream rumqtt PR 1071 ("feat(rumqttd): add topic ACL enforcement":
//! `ClientIdentity`, `AclAction`, `ConnectionSettings::set_acl_handler`) so that moving to an
//! upstream release later is cheap.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Who a remote connection is: the client id the router knows it by (after a broker-assigned
/// id or a tenant prefix is applied) and the username of its CONNECT, if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientIdentity {
    pub client_id: String,
    pub username: Option<String>,
}

/// What a client asks to do; the ACL handler answers `true` (allow) or `false` (deny).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AclAction<'a> {
    /// A PUBLISH (any QoS, retained included), after topic-alias resolution. Denied: the
    /// connection is closed (MQTT 5: DISCONNECT 0x87 Not authorized) before the publish is
    /// acknowledged or stored.
    Publish { topic: &'a str, qos: u8, retain: bool },
    /// One filter of a SUBSCRIBE, as sent (`$share/group/...` included). Denied: that filter
    /// gets SUBACK return code 0x80 (Failure), the others are handled as usual.
    Subscribe { filter: &'a str },
    /// The last will of a CONNECT. Denied: the connection is refused with CONNACK
    /// "not authorized" (3.1.1 code 5, MQTT 5 reason 0x87), so a client never believes a
    /// will is in place that the broker would not publish.
    Will { topic: &'a str, retain: bool },
}

/// The ACL handler. Called synchronously: for publishes and subscribes on the router thread
/// (every client of the broker waits while it runs), for wills on the connection's task. It
/// must be fast and must never block (no I/O, no locks held for long, no async runtime calls).
pub type AclHandler = Arc<dyn Fn(&ClientIdentity, &AclAction<'_>) -> bool + Send + Sync>;

/// Why a remote connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The client closed the network connection without DISCONNECT.
    ConnectionClosed,
    /// Nothing arrived within 1.5 × the client's keep-alive.
    KeepAliveTimeout,
    /// A packet exceeded `max_payload_size` (reported first as
    /// [`ConnectionEvent::PacketTooLarge`]).
    PacketTooLarge,
    /// The broker ended the session: a denied publish, a protocol violation seen by the
    /// router, or a newer connection with the same client id.
    ClosedByBroker,
    /// A malformed packet or another network error; the text says which.
    Error(String),
}

/// Something that happened to one remote connection, reported to the application (for
/// example to count it in its metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The connection was accepted (CONNACK success sent).
    Connected,
    /// A packet of `size` bytes (remaining length) arrived while at most `max` are allowed.
    /// The connection is closed right after, as the protocol demands.
    PacketTooLarge { size: usize, max: usize },
    /// The connection publishes faster than `max_publish_rate`: its network reads pause until
    /// the rate allows more. Reported once per throttled spell (a run of consecutive reads that
    /// each needed a pause), not per packet.
    PublishThrottled,
    /// The connection ended.
    Disconnected { reason: DisconnectReason },
}

/// Receives [`ConnectionEvent`]s. Called synchronously on the connection's task: it must be
/// fast and must never block.
pub type ConnectionEventHandler = Arc<dyn Fn(&ClientIdentity, ConnectionEvent) + Send + Sync>;

/// Something that happened on a listener before any connection existed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerEvent {
    /// A connection from `peer` arrived while the listener was over `max_connection_rate`.
    /// It is answered with CONNACK "server unavailable" (3.1.1 code 3) / "connection rate
    /// exceeded" (MQTT 5 reason 0x9F) and closed.
    ConnectionRateExceeded { listener: String, peer: SocketAddr },
}

/// Receives [`ListenerEvent`]s, on the listener's accept loop: it must be fast and must never
/// block.
#[derive(Clone)]
pub struct ListenerEventHandler(pub Arc<dyn Fn(&ListenerEvent) + Send + Sync>);

impl fmt::Debug for ListenerEventHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ListenerEventHandler")
    }
}

/// A token-bucket rate: `per_second` sustained, up to `burst` at once. Zero values are read as
/// 1 (a rate of 0 would stop the connection for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRate {
    /// Publishes per second, sustained.
    pub per_second: u32,
    /// Publishes allowed at once before throttling starts.
    pub burst: u32,
}

/// The identity and ACL handler the router checks a remote connection's actions against.
/// Local links (`Broker::link`) have none and stay trusted.
#[derive(Clone)]
pub(crate) struct ConnectionAcl {
    pub identity: ClientIdentity,
    pub handler: AclHandler,
}

impl ConnectionAcl {
    pub fn allows(&self, action: &AclAction<'_>) -> bool {
        (self.handler)(&self.identity, action)
    }
}

impl fmt::Debug for ConnectionAcl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionAcl")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Where one remote connection reports its [`ConnectionEvent`]s.
#[derive(Clone)]
pub(crate) struct EventSink {
    pub identity: ClientIdentity,
    pub handler: Option<ConnectionEventHandler>,
}

impl EventSink {
    pub fn emit(&self, event: ConnectionEvent) {
        if let Some(handler) = &self.handler {
            handler(&self.identity, event);
        }
    }
}

/// A token bucket. Tokens may go into debt: a batch that was already read from the network is
/// let through, and the debt becomes the pause before the next read.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_second: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            per_second: f64::from(per_second.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
    }

    /// Takes `n` tokens, going into debt if needed; returns how long to wait until the bucket
    /// is out of debt, or `None` when no wait is needed.
    pub fn take(&mut self, n: usize, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            return None;
        }
        Some(Duration::from_secs_f64(-self.tokens / self.per_second))
    }

    /// How many whole tokens there are now (0 when in debt).
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.max(0.0) as usize
    }

    /// Takes one token if there is one (no debt): `false` means over the rate.
    pub fn try_take_one(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_asks_for_a_pause_proportional_to_the_debt() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 5, start);
        assert_eq!(bucket.take(5, start), None);
        let wait = bucket.take(3, start).expect("in debt");
        assert!((wait.as_secs_f64() - 0.3).abs() < 1e-9);
        // After the pause the debt is paid, and nothing more.
        assert_eq!(bucket.take(0, start + wait), None);
        assert!(!bucket.try_take_one(start + wait));
        assert!(bucket.try_take_one(start + wait + Duration::from_millis(100)));
    }

    #[test]
    fn zero_rate_is_read_as_one() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(0, 0, start);
        assert!(bucket.try_take_one(start));
        assert!(!bucket.try_take_one(start));
        assert!(bucket.try_take_one(start + Duration::from_secs(1)));
    }
}
