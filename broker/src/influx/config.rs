//! `[influx]`: where committed fixes go in InfluxDB and how the shipper batches and retries.
//!
//! Enters: the `[influx]` TOML section (absent = nothing is queued).
//! Leaves: a validated [`InfluxConfig`], the [`SchemaConfig`] the commit path writes points
//! with, and the credentials resolved from the environment ([`InfluxConfig::credentials`]).
//!
//! Secrets: `password` / `token` may be written inline, but the intended way is to name an
//! environment variable with `password_env` / `token_env` (read once at start; a named variable
//! that is not set is an error, so a typo never silently sends no credentials).

use super::line_protocol::SchemaConfig;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Most `concurrent_requests` allowed (more only queues requests inside InfluxDB).
const MAX_CONCURRENT_REQUESTS: usize = 64;

/// Which InfluxDB write API to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// `POST /write?db=&rp=&precision=ms`: InfluxDB 1.x, and the 1.x compatibility endpoint of
    /// 2.x, 3.x and Cloud. Credentials: `username` + `password` (HTTP basic auth).
    #[default]
    V1,
    /// `POST /api/v2/write?org=&bucket=&precision=ms`: InfluxDB 2.x, 3.x and Cloud.
    /// Credentials: `token` (`Authorization: Token …`).
    V2,
}

impl InfluxApi {
    /// `"v1"` or `"v2"`, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            InfluxApi::V1 => "v1",
            InfluxApi::V2 => "v2",
        }
    }
}

/// `[influx]`
///
/// ```toml
/// [influx]
/// url = "http://127.0.0.1:8086"
/// api = "v1"
/// database = "locus"
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL of InfluxDB, `http://` or `https://`; may carry a path prefix when InfluxDB sits
    /// behind a proxy (`https://proxy/influx` → `https://proxy/influx/write`).
    pub url: String,
    /// `"v1"` (default) or `"v2"`.
    pub api: InfluxApi,
    /// v1: the database to write to.
    pub database: String,
    /// v1: the retention policy; none = the database's default.
    pub retention_policy: Option<String>,
    /// v1: user name for HTTP basic auth; none = no authentication.
    pub username: Option<String>,
    /// v1: password, inline. Prefer `password_env`.
    pub password: Option<String>,
    /// v1: name of the environment variable holding the password.
    pub password_env: Option<String>,
    /// v2: organization name (or id).
    pub org: Option<String>,
    /// v2: bucket name.
    pub bucket: Option<String>,
    /// v2: API token, inline. Prefer `token_env`.
    pub token: Option<String>,
    /// v2: name of the environment variable holding the API token.
    pub token_env: Option<String>,
    /// Plugin attributes written as tags (indexed, for `GROUP BY` and `WHERE`); every other
    /// attribute is a string field. Keep these to low-cardinality values.
    pub tag_attributes: Vec<String>,
    /// Most lines per write request.
    pub batch_lines: usize,
    /// Longest a line waits in the outbox for a batch to fill, milliseconds.
    pub batch_interval_ms: u64,
    /// Write requests in flight at once. InfluxDB parses each request on one core, so two or
    /// more let it use several; batches may then land out of order, which InfluxDB does not
    /// mind (a point is identified by series and time).
    pub concurrent_requests: usize,
    /// Outbox size limit: fixes in the commit log not yet shipped (each becomes one line). At
    /// the limit the server takes no new reports (devices keep them and resend) until the
    /// shipper has drained below it. A fix takes about 40–80 bytes in the log, so the default
    /// (10 M) is under 1 GB of disk. (`max_outbox_entries`, its older name, is still read.)
    #[serde(alias = "max_outbox_entries")]
    pub max_outbox_fixes: u64,
    /// TCP connect timeout, milliseconds.
    pub connect_timeout_ms: u64,
    /// Whole-request timeout (connect, send, InfluxDB's answer), milliseconds.
    pub request_timeout_ms: u64,
    /// First retry delay after a failed write, milliseconds; doubles per failure.
    pub backoff_initial_ms: u64,
    /// Longest retry delay, milliseconds (the delay is jittered between half and all of it).
    pub backoff_max_ms: u64,
    /// Compress request bodies with gzip (`Content-Encoding: gzip`).
    pub gzip: bool,
}

impl Default for InfluxConfig {
    fn default() -> Self {
        InfluxConfig {
            url: "http://127.0.0.1:8086".into(),
            api: InfluxApi::V1,
            database: "locus".into(),
            retention_policy: None,
            username: None,
            password: None,
            password_env: None,
            org: None,
            bucket: None,
            token: None,
            token_env: None,
            tag_attributes: Vec::new(),
            batch_lines: 5_000,
            batch_interval_ms: 1_000,
            concurrent_requests: 2,
            max_outbox_fixes: 10_000_000,
            connect_timeout_ms: 2_000,
            request_timeout_ms: 30_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            gzip: true,
        }
    }
}

// Hand-written so that logging the config never prints a secret.
impl fmt::Debug for InfluxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("InfluxConfig")
            .field("url", &self.url)
            .field("api", &self.api)
            .field("database", &self.database)
            .field("retention_policy", &self.retention_policy)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("password_env", &self.password_env)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("token", &redact(&self.token))
            .field("token_env", &self.token_env)
            .field("tag_attributes", &self.tag_attributes)
            .field("batch_lines", &self.batch_lines)
            .field("batch_interval_ms", &self.batch_interval_ms)
            .field("concurrent_requests", &self.concurrent_requests)
            .field("max_outbox_fixes", &self.max_outbox_fixes)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("backoff_initial_ms", &self.backoff_initial_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("gzip", &self.gzip)
            .finish()
    }
}

/// An `[influx]` section that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum InfluxConfigError {
    /// `url` is not an http(s) URL.
    #[error("[influx] url {url:?}: {reason}")]
    BadUrl {
        /// The configured URL.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// A key the chosen API needs is missing or empty.
    #[error("[influx] {key} is required with api = \"{api}\"")]
    Missing {
        /// The missing key.
        key: &'static str,
        /// The configured API.
        api: &'static str,
    },
    /// A secret is given both inline and through an environment variable.
    #[error("[influx] set {inline} or {env}, not both")]
    Ambiguous {
        /// The inline key.
        inline: &'static str,
        /// The environment-variable key.
        env: &'static str,
    },
    /// The environment variable a `*_env` key names is not set (or not UTF-8).
    #[error("[influx] {key} names the environment variable {var}, which is not set")]
    MissingEnv {
        /// The `*_env` key.
        key: &'static str,
        /// The variable's name.
        var: String,
    },
    /// A count or duration that must be positive is zero, or the back-off bounds are reversed.
    #[error("[influx] {0}")]
    OutOfRange(&'static str),
}

/// Credentials as sent on each request.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No authentication header.
    None,
    /// v1: HTTP basic auth.
    Basic {
        /// User name.
        username: String,
        /// Password (may be empty).
        password: Option<String>,
    },
    /// v2: `Authorization: Token …`.
    Token(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => write!(f, "None"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::Token(_) => write!(f, "Token(<redacted>)"),
        }
    }
}

impl InfluxConfig {
    /// Checks everything that can be checked without the environment.
    pub fn validate(&self) -> Result<(), InfluxConfigError> {
        let bad_url = |reason: &str| InfluxConfigError::BadUrl {
            url: self.url.clone(),
            reason: reason.to_owned(),
        };
        let url = reqwest::Url::parse(&self.url).map_err(|e| bad_url(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad_url("the scheme must be http or https"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad_url("no query or fragment: the write parameters come from the config"));
        }
        let api = self.api.as_str();
        let missing = |key| InfluxConfigError::Missing { key, api };
        let blank = |value: &Option<String>| value.as_deref().is_none_or(str::is_empty);
        match self.api {
            InfluxApi::V1 => {
                if self.database.is_empty() {
                    return Err(missing("database"));
                }
                if self.password.is_some() && self.password_env.is_some() {
                    return Err(InfluxConfigError::Ambiguous {
                        inline: "password",
                        env: "password_env",
                    });
                }
            }
            InfluxApi::V2 => {
                if blank(&self.org) {
                    return Err(missing("org"));
                }
                if blank(&self.bucket) {
                    return Err(missing("bucket"));
                }
                if self.token.is_some() && self.token_env.is_some() {
                    return Err(InfluxConfigError::Ambiguous { inline: "token", env: "token_env" });
                }
                if self.token.is_none() && self.token_env.is_none() {
                    return Err(missing("token or token_env"));
                }
            }
        }
        let positive = [
            (self.batch_lines == 0, "batch_lines must be at least 1"),
            (self.batch_interval_ms == 0, "batch_interval_ms must be at least 1"),
            (
                !(1..=MAX_CONCURRENT_REQUESTS).contains(&self.concurrent_requests),
                "concurrent_requests must be between 1 and 64",
            ),
            (self.max_outbox_fixes == 0, "max_outbox_fixes must be at least 1"),
            (self.connect_timeout_ms == 0, "connect_timeout_ms must be at least 1"),
            (self.request_timeout_ms == 0, "request_timeout_ms must be at least 1"),
            (self.backoff_initial_ms == 0, "backoff_initial_ms must be at least 1"),
            (
                self.backoff_max_ms < self.backoff_initial_ms,
                "backoff_max_ms must be at least backoff_initial_ms",
            ),
        ];
        match positive.iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(InfluxConfigError::OutOfRange(why)),
            None => Ok(()),
        }
    }

    /// Validates, then reads the secrets (from the environment where `*_env` says so).
    pub fn credentials(&self) -> Result<Credentials, InfluxConfigError> {
        self.credentials_from(|var| std::env::var(var).ok())
    }

    /// [`InfluxConfig::credentials`] with an explicit environment (for tests).
    pub fn credentials_from(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Credentials, InfluxConfigError> {
        self.validate()?;
        let secret = |inline: &Option<String>, var: &Option<String>, key: &'static str| match (
            inline, var,
        ) {
            (Some(value), _) => Ok(Some(value.clone())),
            (None, Some(var)) => env(var)
                .map(Some)
                .ok_or_else(|| InfluxConfigError::MissingEnv { key, var: var.clone() }),
            (None, None) => Ok(None),
        };
        match self.api {
            InfluxApi::V1 => {
                let password = secret(&self.password, &self.password_env, "password_env")?;
                Ok(match &self.username {
                    Some(username) => Credentials::Basic { username: username.clone(), password },
                    None => Credentials::None,
                })
            }
            InfluxApi::V2 => {
                let token = secret(&self.token, &self.token_env, "token_env")?;
                // validate() made sure one of token / token_env is set.
                Ok(token.map_or(Credentials::None, Credentials::Token))
            }
        }
    }

    /// The point schema the commit path writes with.
    pub fn schema(&self) -> SchemaConfig {
        SchemaConfig { tag_attributes: self.tag_attributes.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<InfluxConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, InfluxConfig::default());
        assert_eq!(c.url, "http://127.0.0.1:8086");
        assert_eq!(c.api, InfluxApi::V1);
        assert_eq!(c.database, "locus");
        assert_eq!(c.retention_policy, None);
        assert_eq!(c.batch_lines, 5_000);
        assert_eq!(c.batch_interval_ms, 1_000);
        assert_eq!(c.max_outbox_fixes, 10_000_000);
        assert_eq!(c.connect_timeout_ms, 2_000);
        assert_eq!(c.request_timeout_ms, 30_000);
        assert_eq!(c.backoff_initial_ms, 100);
        assert_eq!(c.backoff_max_ms, 30_000);
        assert!(c.gzip);
        assert!(c.tag_attributes.is_empty());
        c.validate().unwrap();
        assert_eq!(c.credentials_from(|_| None).unwrap(), Credentials::None);
    }

    #[test]
    fn the_issue_example_parses() {
        let c = parse(
            r#"
            url = "http://127.0.0.1:8086"
            api = "v1"
            database = "locus"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("databse = \"x\"").unwrap_err().to_string();
        assert!(err.contains("databse"), "{err}");
        assert!(parse("api = \"v3\"").is_err());
    }

    #[test]
    fn v1_password_from_the_environment() {
        let c = parse(
            r#"
            username = "locus"
            password_env = "LOCUS_TEST_INFLUX_PASSWORD"
            "#,
        )
        .unwrap();
        let env = |var: &str| (var == "LOCUS_TEST_INFLUX_PASSWORD").then(|| "s3cret".to_owned());
        assert_eq!(
            c.credentials_from(env).unwrap(),
            Credentials::Basic { username: "locus".into(), password: Some("s3cret".into()) }
        );
        let err = c.credentials_from(|_| None).unwrap_err().to_string();
        assert!(err.contains("LOCUS_TEST_INFLUX_PASSWORD"), "{err}");
    }

    #[test]
    fn v2_needs_org_bucket_and_token() {
        let c = parse("api = \"v2\"\norg = \"acme\"\nbucket = \"locus\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("token"));
        let c = parse("api = \"v2\"\nbucket = \"locus\"\ntoken = \"t\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("org"));
        let c = parse("api = \"v2\"\norg = \"acme\"\nbucket = \"b\"\ntoken_env = \"T\"").unwrap();
        let env = |var: &str| (var == "T").then(|| "tok".to_owned());
        assert_eq!(c.credentials_from(env).unwrap(), Credentials::Token("tok".into()));
        let both = "api = \"v2\"\norg = \"a\"\nbucket = \"b\"\ntoken = \"t\"\ntoken_env = \"T\"";
        assert!(matches!(
            parse(both).unwrap().validate(),
            Err(InfluxConfigError::Ambiguous { .. })
        ));
    }

    #[test]
    fn refuses_bad_values() {
        for text in [
            "url = \"localhost:8086\"",
            "url = \"ftp://x\"",
            "url = \"http://x/?db=y\"",
            "batch_lines = 0",
            "concurrent_requests = 0",
            "concurrent_requests = 1000",
            "database = \"\"",
            "backoff_initial_ms = 10\nbackoff_max_ms = 5",
        ] {
            assert!(parse(text).unwrap().validate().is_err(), "{text}");
        }
    }

    #[test]
    fn debug_never_prints_secrets() {
        let c = InfluxConfig {
            password: Some("hunter2".into()),
            token: Some("tok-123".into()),
            ..InfluxConfig::default()
        };
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2") && !text.contains("tok-123"), "{text}");
        let creds = Credentials::Basic { username: "u".into(), password: Some("hunter2".into()) };
        assert!(!format!("{creds:?}").contains("hunter2"));
    }
}
