//! The edge's configuration: Spin variables, checked once per request.
//!
//! Enters: a lookup of Spin variables by name (in the component, `spin_sdk::variables::get`;
//! in tests, a map). Leaves: a [`Config`], or a [`ConfigError`] naming the variable and how
//! to fix it, which the component answers as a 500 (a misconfigured edge must say so, not
//! guess).
//!
//! Variables (declared in `spin.toml`; in Spin every one has a value, the defaults below are
//! for hosts that leave the optional ones undefined):
//!
//! | variable | required | meaning |
//! |---|---|---|
//! | `edge_id` | yes | this edge's id, 1-64 letters, digits, `-` `_` `.` `:` |
//! | `edge_token` | yes (secret) | its locusd token (role `edge`): MQTT password, API bearer |
//! | `broker_url` | yes | `mqtt://host:port` (or `mqtts://`) of locusd's broker |
//! | `api_url` | yes | `http://host:port` (or `https://`) of locusd's HTTP API |
//! | `max_body_bytes` | no (8388608) | largest request body |
//! | `max_fixes_per_request` | no (20000) | most fixes in one POST |
//! | `max_fixes_per_message` | no (600) | fixes per MQTT message, 1..=600 |

use locus_sdk::topics::is_valid_id;
use locus_sdk::wire::limits::DEFAULT_MAX_FIXES_PER_REPORT;

/// Default `max_body_bytes`: 8 MiB, room for 20000 JSON fixes with every detail.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Default `max_fixes_per_request`.
pub const DEFAULT_MAX_FIXES_PER_REQUEST: usize = 20_000;

/// Default and largest `max_fixes_per_message`: locusd's default fixes per report, which its
/// default packet limit always fits (`locus_sdk::wire::limits`).
pub const DEFAULT_MAX_FIXES_PER_MESSAGE: usize = DEFAULT_MAX_FIXES_PER_REPORT;

/// The edge's configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// This edge's id (the MQTT username and the `edge@{edge_id}` client id prefix).
    pub edge_id: String,
    /// Its locusd token: the MQTT password and the bearer token for its receipts.
    pub edge_token: String,
    /// locusd's broker, `mqtt://host:port`, without a query.
    pub broker_url: String,
    /// locusd's HTTP API, `http://host:port`, without a trailing `/`.
    pub api_url: String,
    /// The largest request body, bytes.
    pub max_body_bytes: usize,
    /// The most fixes in one POST.
    pub max_fixes_per_request: usize,
    /// Fixes per MQTT message (1..=600).
    pub max_fixes_per_message: usize,
}

// By hand, so the token never reaches a log.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("edge_id", &self.edge_id)
            .field("edge_token", &"<redacted>")
            .field("broker_url", &self.broker_url)
            .field("api_url", &self.api_url)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_fixes_per_request", &self.max_fixes_per_request)
            .field("max_fixes_per_message", &self.max_fixes_per_message)
            .finish()
    }
}

/// A Spin variable is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Spin variable {variable} {problem}; {fix}")]
pub struct ConfigError {
    /// The variable's name.
    pub variable: &'static str,
    /// What is wrong with it.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl ConfigError {
    fn new(variable: &'static str, problem: impl Into<String>, expected: &str) -> ConfigError {
        let env = variable.to_ascii_uppercase();
        ConfigError {
            variable,
            problem: problem.into(),
            fix: format!(
                "set it to {expected} (spin.toml [variables], or SPIN_VARIABLE_{env} for spin up)"
            ),
        }
    }
}

/// What a variable lookup found: `Ok(None)` when the variable is undefined, `Err` when the host
/// could not say.
pub type Lookup = Result<Option<String>, String>;

impl Config {
    /// Reads and checks every variable through `get`.
    pub fn load(mut get: impl FnMut(&'static str) -> Lookup) -> Result<Config, ConfigError> {
        let edge_id = required(&mut get, "edge_id", "this edge's id")?;
        if !is_valid_id(&edge_id) {
            return Err(ConfigError::new(
                "edge_id",
                format!("is {edge_id:?}"),
                "1-64 characters of letters, digits, - _ . : (the id in locusd's [edges.ID])",
            ));
        }
        let edge_token =
            required(&mut get, "edge_token", "the token of `locusd token issue --role edge ID`")?;
        let broker_url = required(&mut get, "broker_url", "mqtt://HOST:PORT")?;
        let broker_url = checked_url(
            "broker_url",
            broker_url,
            &["mqtt://", "mqtts://"],
            "mqtt://HOST:PORT or mqtts://HOST:PORT, without a query",
        )?;
        let api_url = required(&mut get, "api_url", "http://HOST:PORT")?;
        let api_url = checked_url(
            "api_url",
            api_url,
            &["http://", "https://"],
            "http://HOST:PORT or https://HOST:PORT, without a query",
        )?;
        let max_body_bytes =
            number(&mut get, "max_body_bytes", DEFAULT_MAX_BODY_BYTES, 1, usize::MAX)?;
        let max_fixes_per_request = number(
            &mut get,
            "max_fixes_per_request",
            DEFAULT_MAX_FIXES_PER_REQUEST,
            1,
            usize::MAX,
        )?;
        let max_fixes_per_message = number(
            &mut get,
            "max_fixes_per_message",
            DEFAULT_MAX_FIXES_PER_MESSAGE,
            1,
            DEFAULT_MAX_FIXES_PER_MESSAGE,
        )?;
        // A message says "part p of parts" in u16s: the largest request must fit.
        if max_fixes_per_request.div_ceil(max_fixes_per_message) > usize::from(u16::MAX) {
            return Err(ConfigError::new(
                "max_fixes_per_request",
                format!(
                    "is {max_fixes_per_request}, more than 65535 messages of \
                     max_fixes_per_message = {max_fixes_per_message}"
                ),
                "at most 65535 × max_fixes_per_message",
            ));
        }
        Ok(Config {
            edge_id,
            edge_token,
            broker_url,
            api_url,
            max_body_bytes,
            max_fixes_per_request,
            max_fixes_per_message,
        })
    }
}

fn lookup(
    get: &mut impl FnMut(&'static str) -> Lookup,
    name: &'static str,
    expected: &str,
) -> Result<Option<String>, ConfigError> {
    get(name).map_err(|e| ConfigError::new(name, format!("could not be read ({e})"), expected))
}

fn required(
    get: &mut impl FnMut(&'static str) -> Lookup,
    name: &'static str,
    expected: &str,
) -> Result<String, ConfigError> {
    match lookup(get, name, expected)? {
        Some(value) if !value.trim().is_empty() => Ok(value.trim().to_string()),
        Some(_) => Err(ConfigError::new(name, "is empty", expected)),
        None => Err(ConfigError::new(name, "is not set", expected)),
    }
}

/// A URL with one of `schemes`, a host, and no query or fragment (the edge adds its own query
/// to the broker's URL and paths to the API's), without a trailing `/`.
fn checked_url(
    name: &'static str,
    url: String,
    schemes: &[&str],
    expected: &str,
) -> Result<String, ConfigError> {
    let lower = url.to_ascii_lowercase();
    let rest = schemes.iter().find_map(|s| lower.strip_prefix(s));
    let fine = rest.is_some_and(|rest| {
        !rest.trim_end_matches('/').is_empty() && !rest.contains(['?', '#', ' '])
    });
    if !fine {
        return Err(ConfigError::new(name, format!("is {url:?}"), expected));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn number(
    get: &mut impl FnMut(&'static str) -> Lookup,
    name: &'static str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let expected = if max == usize::MAX {
        format!("a whole number >= {min} (default {default})")
    } else {
        format!("a whole number {min}..={max} (default {default})")
    };
    let Some(text) = lookup(get, name, &expected)? else {
        return Ok(default);
    };
    match text.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(name, format!("is {text:?}"), &expected)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(extra: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        let mut vars: HashMap<&'static str, String> = [
            ("edge_id", "web-1"),
            ("edge_token", "tok"),
            ("broker_url", "mqtt://127.0.0.1:1883"),
            ("api_url", "http://127.0.0.1:8080/"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
        for (k, v) in extra {
            vars.insert(k, v.to_string());
        }
        vars
    }

    fn load(vars: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::load(|name| Ok(vars.get(name).cloned()))
    }

    #[test]
    fn optional_variables_default_and_urls_lose_their_trailing_slash() {
        let config = load(&vars(&[])).unwrap();
        assert_eq!(config.edge_id, "web-1");
        assert_eq!(config.api_url, "http://127.0.0.1:8080");
        assert_eq!(config.broker_url, "mqtt://127.0.0.1:1883");
        assert_eq!(config.max_body_bytes, 8_388_608);
        assert_eq!(config.max_fixes_per_request, 20_000);
        assert_eq!(config.max_fixes_per_message, 600);
        assert!(!format!("{config:?}").contains("tok\""), "the token stays out of Debug");
    }

    #[test]
    fn set_limits_are_used() {
        let config = load(&vars(&[
            ("max_body_bytes", "1024"),
            ("max_fixes_per_request", "10"),
            ("max_fixes_per_message", " 3 "),
        ]))
        .unwrap();
        assert_eq!((config.max_body_bytes, config.max_fixes_per_request), (1024, 10));
        assert_eq!(config.max_fixes_per_message, 3);
    }

    #[test]
    fn bad_values_name_the_variable_and_the_fix() {
        let bad = |extra: &[(&'static str, &str)]| load(&vars(extra)).unwrap_err();
        let e = bad(&[("max_fixes_per_message", "601")]);
        assert_eq!(e.variable, "max_fixes_per_message");
        assert!(e.fix.contains("1..=600"), "{e}");
        assert!(e.to_string().contains("SPIN_VARIABLE_MAX_FIXES_PER_MESSAGE"), "{e}");
        assert_eq!(bad(&[("max_fixes_per_message", "0")]).variable, "max_fixes_per_message");
        assert_eq!(bad(&[("max_body_bytes", "lots")]).variable, "max_body_bytes");
        assert_eq!(bad(&[("max_fixes_per_request", "-1")]).variable, "max_fixes_per_request");
        assert_eq!(bad(&[("edge_id", "web/1")]).variable, "edge_id");
        assert_eq!(bad(&[("edge_token", "  ")]).variable, "edge_token");
        assert_eq!(bad(&[("broker_url", "tcp://h:1883")]).variable, "broker_url");
        assert_eq!(bad(&[("broker_url", "mqtt://h:1883?client_id=x")]).variable, "broker_url");
        assert_eq!(bad(&[("api_url", "127.0.0.1:8080")]).variable, "api_url");
        assert_eq!(bad(&[("api_url", "http://")]).variable, "api_url");
        // 65536 parts of one fix do not fit a u16 part number.
        let e = bad(&[("max_fixes_per_request", "65536"), ("max_fixes_per_message", "1")]);
        assert_eq!(e.variable, "max_fixes_per_request");
    }

    #[test]
    fn a_missing_required_variable_or_a_failed_lookup_is_an_error() {
        let mut without_id = vars(&[]);
        without_id.remove("edge_id");
        let e = load(&without_id).unwrap_err();
        assert_eq!((e.variable, e.problem.as_str()), ("edge_id", "is not set"));
        let e = Config::load(|_| Err("provider down".into())).unwrap_err();
        assert!(e.problem.contains("provider down"), "{e}");
    }
}
