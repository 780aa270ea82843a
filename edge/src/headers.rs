//! The request headers the POST of fixes depends on: `Authorization`, `Idempotency-Key` and
//! `Content-Type`.
//!
//! Enters: header values (the first of each name; `None` when absent or not UTF-8 text).
//! Leaves: the client's token, the request's idempotency key, the body's format, or the 4xx
//! to answer.
//!
//! The edge does not check the token: it has no secret to check it with. It forwards it to
//! locusd inside each message (`EdgeBatch::token`), and locusd refuses the batch when the token
//! may not report for the courier (the receipt then says `rejected`).

use crate::errors::EdgeError;
use locus_sdk::wire::{is_valid_edge_key, MAX_CLIENT_TOKEN_BYTES, MAX_EDGE_KEY_LEN};

/// The header carrying the idempotency key, on requests and answers.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The media type of JSON fixes.
pub const JSON: &str = "application/json";

/// The media type of a Locus wire report (postcard, `locus_sdk::wire::encode_report`).
pub const WIRE: &str = "application/x-locus-wire";

/// How the body of a POST of fixes is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One fix object, or `{"fixes": [...]}`.
    Json,
    /// A Locus wire report.
    Wire,
}

/// The bearer token of an `Authorization` header: 401 without one, 400 when it is longer than
/// locusd takes in a message.
pub fn bearer_token(authorization: Option<&str>) -> Result<String, EdgeError> {
    let value = authorization.ok_or(EdgeError::Unauthorized)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(EdgeError::Unauthorized)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(EdgeError::Unauthorized);
    }
    if token.len() > MAX_CLIENT_TOKEN_BYTES {
        return Err(EdgeError::bad_request(
            "Authorization",
            format!("the bearer token is longer than {MAX_CLIENT_TOKEN_BYTES} bytes"),
        ));
    }
    Ok(token.to_string())
}

/// The request's idempotency key: the header's when present (and valid), else a fresh one from
/// `random` (16 bytes written as 32 hex digits), so every accepted request has a receipt.
pub fn idempotency_key(
    header: Option<&str>,
    random: impl FnOnce() -> [u8; 16],
) -> Result<String, EdgeError> {
    match header {
        Some(key) if is_valid_edge_key(key) => Ok(key.to_string()),
        Some(key) => Err(EdgeError::bad_request(
            IDEMPOTENCY_KEY,
            format!(
                "Idempotency-Key {key:?} must be 1-{MAX_EDGE_KEY_LEN} characters of letters, \
                 digits, - _ . : (a UUID or 32 hex digits fit)"
            ),
        )),
        None => Ok(hex(&random())),
    }
}

/// The body format a `Content-Type` names (parameters such as `charset` are ignored). No
/// content type is taken as JSON, so `curl -d` works without `-H`.
pub fn body_format(content_type: Option<&str>) -> Result<BodyFormat, EdgeError> {
    let Some(content_type) = content_type else {
        return Ok(BodyFormat::Json);
    };
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case(JSON) {
        Ok(BodyFormat::Json)
    } else if media_type.eq_ignore_ascii_case(WIRE) {
        Ok(BodyFormat::Wire)
    } else {
        Err(EdgeError::UnsupportedMediaType {
            content_type: content_type.to_string(),
            supported: "application/json (one fix, or {\"fixes\": [...]}) or \
                        application/x-locus-wire (a Locus wire report)",
        })
    }
}

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_is_required_and_bounded() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc".into()));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc".into()));
        for bad in
            [None, Some(""), Some("Bearer"), Some("Bearer  "), Some("Basic abc"), Some("abc")]
        {
            assert_eq!(bearer_token(bad), Err(EdgeError::Unauthorized), "{bad:?}");
        }
        let long = format!("Bearer {}", "t".repeat(MAX_CLIENT_TOKEN_BYTES + 1));
        assert!(matches!(
            bearer_token(Some(&long)),
            Err(EdgeError::BadRequest { field, .. }) if field == "Authorization"
        ));
        let longest = format!("Bearer {}", "t".repeat(MAX_CLIENT_TOKEN_BYTES));
        assert!(bearer_token(Some(&longest)).is_ok());
    }

    #[test]
    fn a_key_is_taken_checked_or_made() {
        let never = || -> [u8; 16] { unreachable!("a key was given") };
        assert_eq!(idempotency_key(Some("order-1:try.2_x"), never), Ok("order-1:try.2_x".into()));
        for bad in ["", "a b", "a/b", "ключ"] {
            assert!(matches!(
                idempotency_key(Some(bad), || [0; 16]),
                Err(EdgeError::BadRequest { field, .. }) if field == "Idempotency-Key"
            ));
        }
        let made = idempotency_key(None, || [0xab; 16]).unwrap();
        assert_eq!(made, "ab".repeat(16));
        assert!(is_valid_edge_key(&made));
    }

    #[test]
    fn content_types_pick_the_format() {
        assert_eq!(body_format(None), Ok(BodyFormat::Json));
        assert_eq!(body_format(Some("application/json")), Ok(BodyFormat::Json));
        assert_eq!(body_format(Some("Application/JSON; charset=utf-8")), Ok(BodyFormat::Json));
        assert_eq!(body_format(Some("application/x-locus-wire")), Ok(BodyFormat::Wire));
        for other in ["text/plain", "application/x-www-form-urlencoded", "", "application/jsonx"] {
            assert_eq!(body_format(Some(other)).map_err(|e| e.status()), Err(415), "{other}");
        }
    }

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
