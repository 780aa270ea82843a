//! One write request to InfluxDB, over either API, and what its answer means for the lines.
//!
//! Enters: a batch of lines. Leaves: an [`Outcome`]: written, some lines invalid (bisect and
//! dead-letter), too large (split), or failed for a reason that retrying can cure.
//!
//! Requests:
//! - v1: `POST {url}/write?db=…[&rp=…]&precision=ms`, HTTP basic auth when `username` is set;
//! - v2: `POST {url}/api/v2/write?org=…&bucket=…&precision=ms`, `Authorization: Token …`;
//!
//! both with `Content-Type: text/plain; charset=utf-8` and, unless `gzip = false`,
//! `Content-Encoding: gzip`.
//!
//! Answers: 2xx is success. 400 and 422 mean InfluxDB refused points as invalid (InfluxDB 1.x
//! still writes the valid points of a batch and answers 400 "partial write"). 413 means the
//! body is too large. Everything else — no answer, 5xx, 429, and also 401/403/404 (wrong
//! credentials, a missing database or bucket: configuration an operator can fix without losing
//! data) — is retried.

use super::config::{Credentials, InfluxApi, InfluxConfig, InfluxConfigError};
use super::line_protocol::PRECISION;
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use std::io::Write as _;
use std::time::Duration;

/// Longest error body kept from an answer (InfluxDB's messages are short; this bounds what a
/// misbehaving proxy can make us store per dead letter).
const MAX_ERROR_BODY: usize = 4096;

/// Why the shipper could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    /// The `[influx]` section is unusable.
    #[error(transparent)]
    Config(#[from] InfluxConfigError),
    /// The HTTP client could not be built (TLS backend initialisation).
    #[error("cannot build the InfluxDB HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A credential cannot be sent as an HTTP header (control characters).
    #[error("[influx] the credentials contain characters an HTTP header cannot carry")]
    BadCredentials,
}

/// What one write request did.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// InfluxDB took every line.
    Written,
    /// Some lines are invalid (400/422); with more than one line, bisect to find them.
    Rejected {
        /// InfluxDB's error.
        detail: String,
    },
    /// The body is too large (413); split it.
    TooLarge {
        /// InfluxDB's (or a proxy's) error.
        detail: String,
    },
    /// Retry later.
    Failed {
        /// The HTTP status, `None` when no answer came.
        status: Option<StatusCode>,
        /// What went wrong, for logs and `/healthz`.
        detail: String,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
}

/// Sends write requests.
#[derive(Debug)]
pub(crate) struct Writer {
    client: reqwest::Client,
    endpoint: Url,
    authorization: Option<HeaderValue>,
    gzip: bool,
}

impl Writer {
    pub(crate) fn new(config: &InfluxConfig) -> Result<Writer, InfluxError> {
        let credentials = config.credentials()?;
        let endpoint = endpoint(config)?;
        let authorization = match credentials {
            Credentials::None => None,
            Credentials::Basic { username, password } => {
                use base64::Engine as _;
                let pair = format!("{username}:{}", password.unwrap_or_default());
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                Some(header(&format!("Basic {encoded}"))?)
            }
            Credentials::Token(token) => Some(header(&format!("Token {token}"))?),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .user_agent(concat!("locusd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(InfluxError::Client)?;
        Ok(Writer { client, endpoint, authorization, gzip: config.gzip })
    }

    pub(crate) fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The HTTP client and the `Authorization` header the writes use, for other requests to
    /// the same InfluxDB.
    pub(crate) fn client(&self) -> (&reqwest::Client, Option<&HeaderValue>) {
        (&self.client, self.authorization.as_ref())
    }

    /// Sends one body made by [`encode_body`].
    pub(crate) async fn write(&self, body: Bytes) -> Outcome {
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body);
        if self.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return Outcome::Failed { status: None, detail: describe(&e), retry_after: None }
            }
        };
        let status = response.status();
        if status.is_success() {
            return Outcome::Written;
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read at most MAX_ERROR_BODY bytes of the answer; a body that fails half-way still
        // leaves the status to act on.
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(MAX_ERROR_BODY);
        let text = String::from_utf8_lossy(&body).trim().to_owned();
        let detail = format!("HTTP {}: {}", status.as_u16(), text);
        match status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                Outcome::Rejected { detail }
            }
            StatusCode::PAYLOAD_TOO_LARGE => Outcome::TooLarge { detail },
            _ => Outcome::Failed { status: Some(status), detail, retry_after },
        }
    }
}

fn header(value: &str) -> Result<HeaderValue, InfluxError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| InfluxError::BadCredentials)?;
    value.set_sensitive(true);
    Ok(value)
}

/// The write URL with its query.
pub(crate) fn endpoint(config: &InfluxConfig) -> Result<Url, InfluxConfigError> {
    config.validate()?;
    let bad_url = |reason: String| InfluxConfigError::BadUrl { url: config.url.clone(), reason };
    let mut url = Url::parse(&config.url).map_err(|e| bad_url(e.to_string()))?;
    let base = url.path().trim_end_matches('/').to_owned();
    let path = match config.api {
        InfluxApi::V1 => "/write",
        InfluxApi::V2 => "/api/v2/write",
    };
    url.set_path(&format!("{base}{path}"));
    {
        let mut query = url.query_pairs_mut();
        match config.api {
            InfluxApi::V1 => {
                query.append_pair("db", &config.database);
                if let Some(rp) = &config.retention_policy {
                    query.append_pair("rp", rp);
                }
            }
            InfluxApi::V2 => {
                // validate() checked both are set.
                query.append_pair("org", config.org.as_deref().unwrap_or_default());
                query.append_pair("bucket", config.bucket.as_deref().unwrap_or_default());
            }
        }
        query.append_pair("precision", PRECISION);
    }
    Ok(url)
}

/// Newline-separated lines, gzipped (fastest level: the body is large and repetitive, so even
/// level 1 shrinks it about tenfold, and CPU per line is what limits throughput).
pub(crate) fn encode_body<L: AsRef<[u8]>>(lines: &[L], gzip: bool) -> Bytes {
    let size: usize = lines.iter().map(|l| l.as_ref().len() + 1).sum();
    let mut plain = Vec::with_capacity(size);
    for line in lines {
        plain.extend_from_slice(line.as_ref());
        plain.push(b'\n');
    }
    if !gzip {
        return plain.into();
    }
    let mut encoder = GzEncoder::new(Vec::with_capacity(size / 8 + 64), Compression::fast());
    // Compressing into a Vec cannot fail (and an empty body must never be sent for lines).
    encoder.write_all(&plain).expect("gzip into a Vec");
    encoder.finish().expect("gzip into a Vec").into()
}

/// A reqwest error in one line, with its cause chain (reqwest's own Display hides the cause,
/// such as "Connection refused").
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn v1_and_v2_endpoints() {
        let v1 = InfluxConfig {
            url: "http://db.example:8086/".into(),
            database: "lo cus".into(),
            retention_policy: Some("week".into()),
            ..InfluxConfig::default()
        };
        assert_eq!(
            endpoint(&v1).unwrap().as_str(),
            "http://db.example:8086/write?db=lo+cus&rp=week&precision=ms"
        );
        let v2 = InfluxConfig {
            url: "https://proxy.example/influx".into(),
            api: InfluxApi::V2,
            org: Some("acme&co".into()),
            bucket: Some("locus".into()),
            token: Some("t".into()),
            ..InfluxConfig::default()
        };
        assert_eq!(
            endpoint(&v2).unwrap().as_str(),
            "https://proxy.example/influx/api/v2/write?org=acme%26co&bucket=locus&precision=ms"
        );
    }

    #[test]
    fn bodies_are_newline_separated_and_gzipped() {
        let lines = ["a f=1 1", "b f=2 2"];
        assert_eq!(&encode_body(&lines, false)[..], b"a f=1 1\nb f=2 2\n");
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&encode_body(&lines, true)[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, "a f=1 1\nb f=2 2\n");
    }
}
