//! `[notify]`: who is told about which order events, and how hard the sender tries.
//!
//! Enters: the `[notify]` TOML section (absent or without rules = nobody is notified). Leaves:
//! a checked [`NotifyConfig`] ([`NotifyConfig::check`] names the offending key and the fix).
//!
//! ```toml
//! [notify]
//! webhook_secret = "…"            # openssl rand -hex 32; required with any webhook rule
//!
//! [[notify.rules]]
//! on = ["placed"]
//! email = "maker@example.com"
//!
//! [[notify.rules]]
//! on = ["ready"]
//! webhook = "https://dispatch.example.com/locus"
//!
//! [notify.smtp]                   # required with any email rule
//! host = "smtp.example.com"
//! from = "Locus <orders@example.com>"
//! ```

use crate::orders::EventKind;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Shortest `webhook_secret` accepted, characters: a receiver's only proof that a request comes
/// from this server, so it must not be guessable (`openssl rand -hex 32` gives 64).
pub const MIN_SECRET_CHARS: usize = 32;

/// Most `concurrent_attempts` allowed.
const MAX_CONCURRENT_ATTEMPTS: usize = 256;

/// `[notify]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// `[[notify.rules]]`: each sends the events named in `on` to one webhook or one address.
    pub rules: Vec<RuleConfig>,
    /// The key webhook requests are signed with (`Locus-Signature`), shared with every
    /// receiver; at least 32 characters. Required when a rule has a `webhook`.
    pub webhook_secret: Option<String>,
    /// Attempts per delivery before it becomes a dead letter (kept, listed and replayable).
    pub max_attempts: u32,
    /// The longest wait before the first retry, milliseconds; the longest wait doubles with
    /// every failure up to `backoff_max_ms`, and each wait is drawn at random below it.
    pub backoff_initial_ms: u64,
    /// The cap of the wait between attempts, milliseconds.
    pub backoff_max_ms: u64,
    /// One attempt's time limit, milliseconds: a webhook's whole request (connect, send, the
    /// receiver's answer), an email's whole SMTP conversation.
    pub request_timeout_ms: u64,
    /// Attempts in flight at once, over every target. One target has at most 4 of them, so a
    /// dead or slow receiver cannot hold up the others.
    pub concurrent_attempts: usize,
    /// `[notify.smtp]`: the mail server. Required when a rule has an `email`.
    pub smtp: Option<SmtpConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            rules: Vec::new(),
            webhook_secret: None,
            // With the back-off below, the 11 waits between 12 attempts add up to 18.5 minutes at
            // most (9 on average): a receiver's restart or short outage, not a long one (raise it).
            max_attempts: 12,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
            request_timeout_ms: 10_000,
            concurrent_attempts: 8,
            smtp: None,
        }
    }
}

// Hand-written so that logging the config never prints a secret.
impl fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("rules", &self.rules)
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "<redacted>"))
            .field("max_attempts", &self.max_attempts)
            .field("backoff_initial_ms", &self.backoff_initial_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("concurrent_attempts", &self.concurrent_attempts)
            .field("smtp", &self.smtp)
            .finish()
    }
}

/// `[[notify.rules]]`: `on` and exactly one of `webhook` and `email`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The event kinds that trigger it (`placed`, `ready`, `assigned`, `picked_up`,
    /// `delivered`, `cancelled`, `feedback`).
    pub on: Vec<EventKind>,
    /// POST the notice (JSON) to this `http://` or `https://` URL.
    pub webhook: Option<String>,
    /// Mail the notice to this address.
    pub email: Option<String>,
}

/// How the connection to the mail server is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (a relay on the same host or network only).
    None,
    /// Plain text upgraded with STARTTLS, which the server must offer (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte ("SMTPS", port 465).
    Tls,
}

impl SmtpTls {
    /// The port this kind of connection uses unless `port` says otherwise.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

/// `[notify.smtp]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// The mail server's host name (checked against its certificate with TLS).
    pub host: String,
    /// Its port; default 25, 587 or 465 for `tls` = `none`, `starttls` or `tls`.
    pub port: Option<u16>,
    /// The sender, `orders@example.com` or `Locus <orders@example.com>`.
    pub from: String,
    /// User name for SMTP AUTH, with `password`; none = no authentication.
    pub username: Option<String>,
    /// Password for SMTP AUTH.
    pub password: Option<String>,
    /// `none`, `starttls` (default) or `tls`.
    #[serde(default)]
    pub tls: SmtpTls,
}

impl SmtpConfig {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.tls.default_port())
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("from", &self.from)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// A `[notify]` section that cannot work. Each message names the key and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct NotifyConfigError {
    /// The key, as written in the file (`notify.rules[2].webhook`).
    pub key: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

fn refuse(key: impl Into<String>, problem: impl Into<String>) -> NotifyConfigError {
    NotifyConfigError { key: key.into(), problem: problem.into() }
}

impl NotifyConfig {
    /// Checks everything that parses but cannot work.
    pub fn check(&self) -> Result<(), NotifyConfigError> {
        let mut webhooks = false;
        let mut emails = false;
        for (i, rule) in self.rules.iter().enumerate() {
            let key = format!("notify.rules[{i}]");
            if rule.on.is_empty() {
                return Err(refuse(
                    format!("{key}.on"),
                    "is empty: name the events that trigger the rule, e.g. on = [\"placed\"]",
                ));
            }
            match (&rule.webhook, &rule.email) {
                (Some(url), None) => {
                    check_url(url).map_err(|why| refuse(format!("{key}.webhook"), why))?;
                    webhooks = true;
                }
                (None, Some(address)) => {
                    check_address(address).map_err(|why| refuse(format!("{key}.email"), why))?;
                    emails = true;
                }
                (Some(_), Some(_)) => {
                    return Err(refuse(
                        key,
                        "has both webhook and email: one rule has one target; write two rules",
                    ))
                }
                (None, None) => {
                    return Err(refuse(
                        key,
                        "has neither webhook nor email: add webhook = \"https://…\" or \
                         email = \"someone@example.com\"",
                    ))
                }
            }
        }
        match &self.webhook_secret {
            None if webhooks => {
                return Err(refuse(
                    "notify.webhook_secret",
                    "is required with a webhook rule (receivers check each request's \
                     Locus-Signature with it): pick one with `openssl rand -hex 32` and give it \
                     to every receiver",
                ))
            }
            Some(secret) if secret.chars().count() < MIN_SECRET_CHARS => {
                return Err(refuse(
                    "notify.webhook_secret",
                    format!(
                        "is {} characters; use at least {MIN_SECRET_CHARS}: pick one with \
                         `openssl rand -hex 32`",
                        secret.chars().count()
                    ),
                ))
            }
            _ => {}
        }
        match &self.smtp {
            None if emails => {
                return Err(refuse(
                    "notify.smtp",
                    "is required with an email rule: add [notify.smtp] with host and from",
                ))
            }
            Some(smtp) => smtp.check()?,
            None => {}
        }
        let ranges = [
            (self.max_attempts == 0, "notify.max_attempts", "must be at least 1"),
            (self.backoff_initial_ms == 0, "notify.backoff_initial_ms", "must be at least 1"),
            (
                self.backoff_max_ms < self.backoff_initial_ms,
                "notify.backoff_max_ms",
                "must be at least notify.backoff_initial_ms",
            ),
            (self.request_timeout_ms == 0, "notify.request_timeout_ms", "must be at least 1"),
            (
                !(1..=MAX_CONCURRENT_ATTEMPTS).contains(&self.concurrent_attempts),
                "notify.concurrent_attempts",
                "must be between 1 and 256",
            ),
        ];
        match ranges.iter().find(|(bad, _, _)| *bad) {
            Some((_, key, problem)) => Err(refuse(*key, *problem)),
            None => Ok(()),
        }
    }
}

impl SmtpConfig {
    fn check(&self) -> Result<(), NotifyConfigError> {
        if self.host.trim().is_empty() {
            return Err(refuse("notify.smtp.host", "is empty: name the mail server"));
        }
        if self.port == Some(0) {
            return Err(refuse(
                "notify.smtp.port",
                format!("is 0: leave it out for {}'s port", self.tls.default_port()),
            ));
        }
        self.from.parse::<lettre::message::Mailbox>().map_err(|e| {
            refuse(
                "notify.smtp.from",
                format!(
                    "{:?} is not an address ({e}): write \"orders@example.com\" or \
                     \"Locus <orders@example.com>\"",
                    self.from
                ),
            )
        })?;
        match (&self.username, &self.password) {
            (Some(_), None) => Err(refuse(
                "notify.smtp.password",
                "is required with notify.smtp.username (or leave both out for no SMTP AUTH)",
            )),
            (None, Some(_)) => Err(refuse(
                "notify.smtp.username",
                "is required with notify.smtp.password (or leave both out for no SMTP AUTH)",
            )),
            _ => Ok(()),
        }
    }
}

/// An `http://` or `https://` URL with a host: what a webhook can be posted to.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("{url:?} is not a URL ({e}): write \"https://host/path\""))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?}: the scheme must be http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

/// A plain address (`maker@example.com`, no display name): one mailbox per rule.
fn check_address(address: &str) -> Result<(), String> {
    address.parse::<lettre::Address>().map(drop).map_err(|e| {
        format!("{address:?} is not an email address ({e}): write \"someone@example.com\"")
    })
}
