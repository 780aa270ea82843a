//! The sender: one task on the client's own runtime that keeps the outbox flowing to the broker.
//!
//! It runs *sessions*, one per MQTT connection, each with a fresh rumqttc client and event loop.
//! A fresh pair per connection matters: rumqttc replays a dead connection's unacknowledged
//! publishes and queued requests on reconnect, ahead of anything new, which could put a newer
//! report on the wire before an older one — and the server, which accepts gaps, would then take
//! the older one for a duplicate. Here every session starts clean and publishes from the oldest
//! unacknowledged report, in seq order.
//!
//! A session: connect (CONNECT → CONNACK) → subscribe `couriers/{courier}/acks` → for a fresh
//! outbox, wait up to `mark_timeout_ms` for the retained ack that says where the server's
//! numbering is → loop: seal due fixes into reports and order events into events (up to the
//! in-flight window), publish them at QoS 1 in seq order (a report on
//! `couriers/{courier}/locations`, an event on `couriers/{courier}/events`), apply acks to the
//! outbox, republish everything in flight if no ack came for `ack_timeout_ms`. Between
//! sessions: capped exponential back-off with jitter.
//!
//! Refused credentials end the worker instead of retrying: an explicit CONNACK refusal, or (what
//! rumqttd does) the broker closing the connection after reading CONNECT, three times in a row.
//! A broker that is down refuses the TCP connection instead, so this does not misfire on
//! restarts.

use super::config::CourierConfig;
use super::outbox::{Outgoing, ReportSize, Sealed};
use super::Shared;
use crate::topics;
use crate::wire;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
    StateError,
};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout};

/// Consecutive closes during CONNECT taken as a refusal of the credentials.
const HANDSHAKE_CLOSES_MEAN_REFUSED: u32 = 3;

/// How a session ended.
#[derive(Debug)]
enum SessionEnd {
    /// The app closed the client.
    Stop,
    /// The broker refused the credentials.
    Refused(String),
    /// The connection failed or was lost.
    Failed {
        /// The session got as far as CONNACK.
        connected: bool,
        /// The broker closed the connection after reading CONNECT.
        handshake_closed: bool,
        error: String,
    },
}

/// Runs sessions until the app closes the client or the broker refuses the credentials.
pub(crate) async fn run(shared: Arc<Shared>, config: CourierConfig) {
    let mut failures = 0u32;
    let mut handshake_closes = 0u32;
    loop {
        match session(&shared, &config).await {
            SessionEnd::Stop => break,
            SessionEnd::Refused(reason) => {
                shared.refused(reason);
                break;
            }
            SessionEnd::Failed { connected, handshake_closed, error } => {
                if connected {
                    failures = 0;
                }
                if handshake_closed {
                    handshake_closes += 1;
                    if handshake_closes >= HANDSHAKE_CLOSES_MEAN_REFUSED {
                        shared.refused(format!(
                            "the broker closed the connection after CONNECT {handshake_closes} \
                             times in a row (wrong or revoked token, or client id ≠ courier id): \
                             {error}"
                        ));
                        break;
                    }
                } else {
                    handshake_closes = 0;
                }
                // A close during CONNECT is not yet conclusive for `Courier::connect`.
                shared.disconnected(error, !handshake_closed);
            }
        }
        let delay = jitter(config.backoff.delay(failures));
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = sleep(delay) => {}
            _ = shared.stop.notified() => break,
        }
    }
    shared.worker_done();
}

/// Half to all of `delay`, so a fleet of phones does not reconnect in lockstep after an outage.
fn jitter(delay: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let fraction = 0.5 + (random % 1_000) as f64 / 2_000.0;
    delay.mul_f64(fraction)
}

fn mqtt_options(config: &CourierConfig) -> Result<MqttOptions, String> {
    let (host, port) = config.host_port().ok_or("broker must be HOST:PORT")?;
    let mut options = MqttOptions::new(config.courier.clone(), host, port);
    options.set_keep_alive(Duration::from_secs(u64::from(config.keep_alive_s.max(1))));
    // The outbox, not the broker's session, is what resends: a clean session keeps the broker
    // from replaying anything stale.
    options.set_clean_session(true);
    options.set_inflight(config.max_inflight_reports.max(1).saturating_add(8));
    // Reports of many fixes (or with order ids) outgrow rumqttc's 10 KiB default.
    options.set_max_packet_size(256 * 1024, 4 * 1024 * 1024);
    if let Some(token) = &config.token {
        options.set_credentials(config.courier.clone(), token.clone());
    }
    if config.tls {
        options.set_transport(tls_transport(config)?);
    }
    Ok(options)
}

#[cfg(feature = "tls")]
fn tls_transport(config: &CourierConfig) -> Result<rumqttc::Transport, String> {
    Ok(match &config.tls_ca_pem {
        Some(ca) => rumqttc::Transport::tls(ca.as_bytes().to_vec(), None, None),
        None => rumqttc::Transport::tls_with_default_config(),
    })
}

#[cfg(not(feature = "tls"))]
fn tls_transport(_config: &CourierConfig) -> Result<rumqttc::Transport, String> {
    Err("TLS requested but locus-sdk was built without the `tls` feature".into())
}

/// Whether the broker accepted TCP, read CONNECT and hung up: rumqttd's answer to refused
/// credentials.
fn is_handshake_close(error: &ConnectionError) -> bool {
    match error {
        ConnectionError::MqttState(StateError::ConnectionAborted) => true,
        ConnectionError::MqttState(StateError::Io(e)) | ConnectionError::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Polls the event loop on its own task, so the session's `select!` never cancels a poll in the
/// middle of writing a packet.
fn spawn_poller(mut events: EventLoop) -> (mpsc::Receiver<Result<Event, ConnectionError>>, Poller) {
    let (tx, rx) = mpsc::channel(256);
    let handle = tokio::spawn(async move {
        loop {
            let event = events.poll().await;
            let failed = event.is_err();
            if tx.send(event).await.is_err() || failed {
                break;
            }
        }
    });
    (rx, Poller(handle))
}

/// Aborts the poller task (and so drops the connection) when the session ends.
struct Poller(tokio::task::JoinHandle<()>);

impl Drop for Poller {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn session(shared: &Shared, config: &CourierConfig) -> SessionEnd {
    let options = match mqtt_options(config) {
        Ok(options) => options,
        // Checked by `Courier::connect`; kept as an error rather than a panic all the same.
        Err(e) => return SessionEnd::Refused(e),
    };
    let (client, mut events) =
        AsyncClient::new(options, usize::from(config.max_inflight_reports) + 16);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(config.connect_timeout().as_secs().max(1));
    events.set_network_options(network);
    let (mut incoming, _poller) = spawn_poller(events);

    // CONNECT → CONNACK.
    let first = tokio::select! {
        first = timeout(config.connect_timeout(), incoming.recv()) => first,
        _ = shared.stop.notified() => return SessionEnd::Stop,
    };
    match first {
        Ok(Some(Ok(Event::Incoming(Packet::ConnAck(ack)))))
            if ack.code == ConnectReturnCode::Success => {}
        Ok(Some(Err(ConnectionError::ConnectionRefused(code)))) => {
            return match code {
                ConnectReturnCode::BadUserNamePassword
                | ConnectReturnCode::NotAuthorized
                | ConnectReturnCode::BadClientId => {
                    SessionEnd::Refused(format!("CONNACK refused: {code:?}"))
                }
                other => SessionEnd::Failed {
                    connected: false,
                    handshake_closed: false,
                    error: format!("CONNACK refused: {other:?}"),
                },
            };
        }
        Ok(Some(Err(e))) => {
            return SessionEnd::Failed {
                connected: false,
                handshake_closed: is_handshake_close(&e),
                error: format!("connecting to {}: {e}", config.broker),
            }
        }
        Ok(Some(Ok(other))) => {
            return SessionEnd::Failed {
                connected: false,
                handshake_closed: false,
                error: format!("expected CONNACK, got {other:?}"),
            }
        }
        Ok(None) | Err(_) => {
            return SessionEnd::Failed {
                connected: false,
                handshake_closed: false,
                error: format!("connecting to {}: timed out", config.broker),
            }
        }
    }
    shared.connected();

    let acks_topic = topics::acks(&config.courier);
    let locations_topic = topics::locations(&config.courier);
    let events_topic = topics::events(&config.courier);
    if let Err(e) = client.try_subscribe(&acks_topic, QoS::AtLeastOnce) {
        return SessionEnd::Failed {
            connected: true,
            handshake_closed: false,
            error: e.to_string(),
        };
    }

    let window = usize::from(config.max_inflight_reports.max(1));
    let report_size = ReportSize {
        max_fixes: config.batch.max_fixes.max(1) as usize,
        max_bytes: config.batch.max_report_bytes as usize,
    };
    let max_age = Duration::from_millis(config.batch.max_age_ms);
    let ack_timeout = Duration::from_millis(config.ack_timeout_ms.max(1));
    // A fresh outbox waits for the retained ack before numbering anything.
    let mut mark_deadline = shared
        .with_outbox(|o| o.mark().is_none())
        .then(|| Instant::now() + Duration::from_millis(config.mark_timeout_ms));
    // Highest seq published on this connection; everything sealed up to it is in flight.
    let mut sent_upto = 0u64;
    let mut last_progress = Instant::now();

    loop {
        let now = Instant::now();
        if mark_deadline.is_some_and(|d| now >= d) {
            // No retained ack in time: the server has no mark for this courier.
            mark_deadline = None;
            if let Err(e) = shared.with_outbox(|o| o.learn_mark(0)) {
                shared.error(e.to_string());
            }
        }

        // Seal and publish, oldest first, within the in-flight window.
        let step = shared.with_outbox(
            |outbox| -> Result<(Vec<Outgoing>, Option<Instant>, bool), String> {
                if outbox.mark().is_none() {
                    return Ok((Vec::new(), None, false));
                }
                let inflight = outbox.sealed().take_while(|r| r.seq <= sent_upto).count();
                let unsent = outbox.sealed_len() - inflight;
                let room = window.saturating_sub(inflight);
                if room > unsent {
                    let force = shared.flush_requested();
                    outbox
                        .seal(report_size, max_age, room - unsent, force, now)
                        .map_err(|e| e.to_string())?;
                }
                // An event is a barrier: it goes alone, once everything before it is acked, and
                // nothing after it goes until it is acked. Reports and events travel on two
                // topics, which the broker does not order against each other, and the server
                // applies an event when it arrives: a fix sent after `delivered` must not reach
                // it first (it would locate a delivered order), nor one sent before arrive after.
                let event_in_flight = outbox.sealed().take(inflight).any(Sealed::is_event);
                let mut to_send: Vec<Outgoing> = Vec::new();
                for sealed in outbox.sealed().skip(inflight).take(room) {
                    if event_in_flight {
                        break;
                    }
                    if sealed.is_event() {
                        if inflight == 0 && to_send.is_empty() {
                            to_send.push(sealed.outgoing());
                        }
                        break;
                    }
                    to_send.push(sealed.outgoing());
                }
                let seal_due =
                    if outbox.sealed_len() < window { outbox.next_seal_due(max_age) } else { None };
                Ok((to_send, seal_due, inflight > 0))
            },
        );
        let (to_send, seal_due, had_inflight) = match step {
            Ok(step) => step,
            Err(e) => {
                // The outbox cannot be written (disk full?): keep the connection and retry later.
                shared.error(e);
                (Vec::new(), Some(now + Duration::from_secs(1)), true)
            }
        };
        if !had_inflight && !to_send.is_empty() {
            last_progress = now;
        }
        for item in &to_send {
            let (topic, payload) = match item {
                Outgoing::Report(report) => (&locations_topic, wire::encode_report(report)),
                Outgoing::Event(event) => (&events_topic, wire::encode_event(event)),
            };
            if client.try_publish(topic, QoS::AtLeastOnce, false, payload).is_err() {
                break;
            }
            sent_upto = item.seq();
            shared.sent(item);
        }
        let inflight = had_inflight || !to_send.is_empty();
        if inflight && now.saturating_duration_since(last_progress) >= ack_timeout {
            // No ack for too long: publish everything in flight again.
            sent_upto = 0;
            last_progress = now;
            shared.error("no ack from the server in time: resending".into());
            continue;
        }

        let mut wake_at = now + Duration::from_secs(3600);
        for t in [mark_deadline, seal_due, inflight.then(|| last_progress + ack_timeout)]
            .into_iter()
            .flatten()
        {
            wake_at = wake_at.min(t);
        }
        tokio::select! {
            biased;
            _ = shared.stop.notified() => return SessionEnd::Stop,
            event = incoming.recv() => match event {
                Some(Ok(Event::Incoming(Packet::Publish(publish)))) if publish.topic == acks_topic => {
                    match wire::decode_ack(&publish.payload) {
                        Ok(ack) => {
                            mark_deadline = None;
                            match shared.ack(ack.seq) {
                                Ok(outcome) => {
                                    if outcome.rebased {
                                        sent_upto = 0;
                                    }
                                    if outcome.acked_fixes > 0
                                        || outcome.acked_events > 0
                                        || outcome.rebased
                                    {
                                        last_progress = Instant::now();
                                    }
                                }
                                Err(e) => shared.error(e.to_string()),
                            }
                        }
                        Err(e) => shared.error(format!("undecodable ack on {acks_topic}: {e}")),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return SessionEnd::Failed { connected: true, handshake_closed: false, error: format!("connection lost: {e}") }
                }
                None => {
                    return SessionEnd::Failed { connected: true, handshake_closed: false, error: "connection lost".into() }
                }
            },
            _ = shared.wake.notified() => {}
            _ = sleep_until(wake_at.into()) => {}
        }
    }
}
