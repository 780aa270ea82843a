//! Email: what a notification mail says, and one SMTP send per attempt (`lettre`).
//!
//! Enters: an order after an event (to write the mail, when the delivery is made), then a
//! pending email [`Delivery`]. Leaves: a plain-text mail from `[notify.smtp] from` to the rule's
//! address; `Ok` once the server accepted it, otherwise the server's answer or why there was
//! none.
//!
//! The mail is written when the delivery is made, so every attempt sends the same words; its
//! `Message-ID` comes from the idempotency key, so a mail sent twice (at least once) is one
//! message to mail clients that merge duplicates. The text says what happened to the order in
//! words — for `placed`, the items and the address from the event's details — and ends with
//! the notice as JSON, the same a webhook gets, for programs that read mail.

use super::config::{SmtpConfig, SmtpTls};
use super::deliveries::Delivery;
use super::NotifyError;
use crate::orders::{EventKind, Order, OrderEvent};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;
use std::fmt::Write as _;
use std::time::Duration;

/// The subject line for `event` of `order`.
pub(super) fn subject(order: &Order, event: &OrderEvent) -> String {
    let id = &order.id;
    match event.kind {
        EventKind::Placed => format!("New order {id}"),
        EventKind::Ready => format!("Order {id} is ready for pickup"),
        EventKind::Assigned => match &event.courier {
            Some(courier) => format!("Order {id} is assigned to courier {courier}"),
            None => format!("Order {id} is assigned"),
        },
        EventKind::PickedUp => format!("Order {id} is on its way"),
        EventKind::Delivered => format!("Order {id} was delivered"),
        EventKind::Cancelled => format!("Order {id} was cancelled"),
        EventKind::Feedback => format!("Feedback on order {id}"),
    }
}

/// The plain text for `event` of `order`: what happened, the event's details in words, the
/// order's state, then `notice` (the notice as JSON).
pub(super) fn text(order: &Order, event: &OrderEvent, notice: &str) -> String {
    let mut out = String::new();
    let what = match event.kind {
        EventKind::Placed => "was placed",
        EventKind::Ready => "is ready: the maker made it",
        EventKind::Assigned => "was assigned to a courier",
        EventKind::PickedUp => "was picked up by its courier",
        EventKind::Delivered => "was delivered",
        EventKind::Cancelled => "was cancelled",
        EventKind::Feedback => "got feedback from its customer",
    };
    let _ = writeln!(out, "Order {} {what}.\n", order.id);
    if let Some(details) = &event.details {
        match serde_json::from_str::<Value>(details) {
            Ok(Value::Object(fields)) => {
                // What was ordered and where it goes first, the rest by name.
                let first = ["items", "address", "delivery_address"];
                let known = first.iter().filter_map(|name| fields.get_key_value(*name));
                let rest = fields.iter().filter(|(name, _)| !first.contains(&name.as_str()));
                for (name, value) in known.chain(rest) {
                    write_field(&mut out, name, value);
                }
            }
            Ok(other) => write_field(&mut out, "details", &other),
            Err(_) => write_field(&mut out, "details", &Value::String(details.clone())),
        }
        out.push('\n');
    }
    let _ = writeln!(out, "Status: {}", order.status);
    if let Some(courier) = &order.courier {
        let _ = writeln!(out, "Courier: {courier}");
    }
    let _ = writeln!(
        out,
        "Event: {} ({}) at {}, by {}",
        event.kind,
        event.event_id,
        utc(event.at_ms),
        event.actor
    );
    let _ = write!(out, "\nThe notice as JSON:\n{notice}\n");
    out
}

/// One field of the details: a list as lines, anything else on one line.
fn write_field(out: &mut String, name: &str, value: &Value) {
    let label = label(name);
    match value {
        Value::Array(items) => {
            let _ = writeln!(out, "{label}:");
            for item in items {
                let _ = writeln!(out, "  - {}", item_words(item));
            }
        }
        other => {
            let _ = writeln!(out, "{label}: {}", words(other));
        }
    }
}

/// `delivery_address` → `Delivery address`.
fn label(name: &str) -> String {
    let spaced = name.replace('_', " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => spaced,
    }
}

/// A value in words: text as it is, an object as `key: value, ...`, anything else as JSON.
fn words(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Object(fields) => fields
            .iter()
            .map(|(name, value)| format!("{}: {}", name.replace('_', " "), words(value)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// An item of a list: `2 x cake` for `{"name":"cake","quantity":2}`, else [`words`].
fn item_words(item: &Value) -> String {
    let Value::Object(fields) = item else { return words(item) };
    let name = ["name", "item", "title", "product"].into_iter().find(|k| fields.contains_key(*k));
    let count = ["quantity", "qty", "count"].into_iter().find(|k| fields.contains_key(*k));
    let (Some(name), Some(count)) = (name, count) else { return words(item) };
    // ASCII, so that a mail of ASCII details stays plain 7-bit text.
    let head = format!("{} x {}", words(&fields[count]), words(&fields[name]));
    let rest: Vec<String> = fields
        .iter()
        .filter(|(k, _)| *k != name && *k != count)
        .map(|(k, v)| format!("{}: {}", k.replace('_', " "), words(v)))
        .collect();
    if rest.is_empty() {
        head
    } else {
        format!("{head} ({})", rest.join(", "))
    }
}

/// Unix milliseconds as `2026-12-06 10:00:00 UTC`.
pub(super) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (rest / 3600, rest % 3600 / 60, rest % 60);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's days_to_civil).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC")
}

/// Sends mails through the configured server.
#[allow(missing_debug_implementations)] // lettre's transport has no Debug
pub(super) struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl EmailSender {
    /// A sender for `[notify.smtp]` (checked), each attempt limited to `timeout`.
    pub(super) fn new(smtp: &SmtpConfig, timeout: Duration) -> Result<EmailSender, NotifyError> {
        let smtp_error = |e: lettre::transport::smtp::Error| NotifyError::Smtp(e.to_string());
        let builder = match smtp.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                .map_err(smtp_error)?,
            SmtpTls::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host).map_err(smtp_error)?
            }
        };
        let mut builder = builder.port(smtp.port()).timeout(Some(timeout));
        if let (Some(username), Some(password)) = (&smtp.username, &smtp.password) {
            builder = builder.credentials(Credentials::new(username.clone(), password.clone()));
        }
        let from = smtp
            .from
            .parse::<Mailbox>()
            .map_err(|e| NotifyError::Smtp(format!("[notify.smtp] from: {e}")))?;
        Ok(EmailSender { transport: builder.build(), from, timeout })
    }

    /// One attempt: `Ok` once the server accepted the mail.
    pub(super) async fn send(&self, delivery: &Delivery) -> Result<(), String> {
        let to: Mailbox = delivery
            .target
            .parse()
            .map_err(|e| format!("{:?} is not an address: {e}", delivery.target))?;
        let (subject, text) = match &delivery.email {
            Some(email) => (email.subject.clone(), email.text.clone()),
            None => {
                (format!("Order {}: {}", delivery.order, delivery.event), delivery.body.clone())
            }
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!(
                "<{}@{}>",
                delivery.idempotency_key,
                self.from.email.domain()
            )))
            .header(ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|e| format!("cannot write the mail: {e}"))?;
        // lettre's timeout is per SMTP command; this bounds the whole conversation.
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("SMTP: {}", super::describe(&e))),
            Err(_) => Err(format!("SMTP: not done within {} ms", self.timeout.as_millis())),
        }
    }
}
