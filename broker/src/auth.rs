//! Tokens: issued by `locusd token`, checked by the MQTT broker at CONNECT and by the HTTP API.
//!
//! Enters: a token string (MQTT password, HTTP `Authorization: Bearer`). Leaves: the token's
//! [`Claims`] (role, subject, expiry, id) or why it is refused ([`AuthError`]).
//!
//! # Formats
//!
//! `locus2.{role}.{subject}.{expires}.{id}.{mac}` (issued today):
//! - `role`: `courier`, `admin`, `reader`, `merchant`, `order` or `edge` ([`Role`]);
//! - `subject`: base64url (no padding) of the subject: the courier id, merchant name, order id
//!   or edge id, or the role's own name for `admin` and `reader`. Encoded because ids may
//!   contain `.`;
//! - `expires`: Unix seconds after which the token is refused, `0` for never;
//! - `id`: 16 random hex digits, the handle for revocation;
//! - `mac`: base64url of the first 16 bytes of an HMAC-SHA256 over every field before it (each
//!   length-prefixed, after the `locus2` label), under a secret kept in the data dir
//!   (`token.key`, created on first use, mode 0600).
//!
//! The token says everything needed to check it, so a check is one HMAC and no lookup.
//!
//! `locus1.{id}.{mac}` (issued by earlier releases, still accepted): the MAC covers role, subject
//! and id, but the token names neither role nor subject, so the checker must supply them:
//! [`TokenAuthority::verify`] does (MQTT: courier, username), and
//! [`TokenAuthority::authenticate`] (the HTTP API) takes a `locus1` token as an admin token,
//! the only kind the API accepted before. `locus1` tokens never expire.
//!
//! # Revocation
//!
//! `locusd token revoke` appends the token id to `revoked-tokens` in the data dir, one id per
//! line; the checker re-reads the file when its modification time or length changes, so
//! revocation takes effect at the next CONNECT or request while the server runs. It stays a
//! plain file rather than a sled tree because operators can revoke with the server down or up
//! alike (sled allows one process to open the database, so the CLI could not write it while
//! locusd runs), it needs no database lock on the hot path, and it stays small (only revoked
//! ids, a few bytes each).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET_FILE: &str = "token.key";
const REVOKED_FILE: &str = "revoked-tokens";
const LEGACY_PREFIX: &str = "locus1";
const PREFIX: &str = "locus2";
/// Bytes of the MAC kept in a token: 128 bits is plenty against forgery and keeps tokens short.
const MAC_BYTES: usize = 16;
/// Longest subject a token may carry (courier and order ids are at most 64 bytes).
const MAX_SUBJECT_BYTES: usize = 256;

/// What a token lets its holder do (its scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// MQTT only: connect and publish locations as the courier named in the subject.
    Courier,
    /// Every HTTP API route: plugins, dead letters, and everything a reader may do.
    Admin,
    /// Read-only HTTP: courier locations and tracks, order locations.
    Reader,
    /// A merchant (the subject names it): order routes; order events once they exist.
    Merchant,
    /// One order (the subject is the order id): that order's status and location only.
    Order,
    /// An edge component (the subject is its id): MQTT publish on `edge/{id}/batches`, and its
    /// receipts over HTTP.
    Edge,
}

impl Role {
    /// Every role, in the order the docs list them.
    pub const ALL: [Role; 6] =
        [Role::Courier, Role::Admin, Role::Reader, Role::Merchant, Role::Order, Role::Edge];

    /// The role's name in tokens, the CLI and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Courier => "courier",
            Role::Admin => "admin",
            Role::Reader => "reader",
            Role::Merchant => "merchant",
            Role::Order => "order",
            Role::Edge => "edge",
        }
    }

    /// The subject of every token of this role when the role names no one (admin, reader);
    /// `None` when the subject is a courier id, merchant name or order id.
    pub fn fixed_subject(self) -> Option<&'static str> {
        match self {
            Role::Admin => Some(ADMIN_SUBJECT),
            Role::Reader => Some("reader"),
            Role::Courier | Role::Merchant | Role::Order | Role::Edge => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;

    fn from_str(name: &str) -> Result<Role, AuthError> {
        Role::ALL.into_iter().find(|role| role.as_str() == name).ok_or(AuthError::Invalid)
    }
}

/// The subject of admin tokens.
pub const ADMIN_SUBJECT: &str = "admin";

/// What a valid token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The scope.
    pub role: Role,
    /// Courier id, merchant name, order id, or [`Role::fixed_subject`].
    pub subject: String,
    /// Unix seconds from which the token is refused; `None` = never expires.
    pub expires_at_s: Option<u64>,
    /// The token id (what revocation lists).
    pub id: String,
}

/// Why a token was not accepted, or tokens could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Missing, malformed, or not signed for this role and subject.
    #[error("invalid token")]
    Invalid,
    /// Correctly signed but past its expiry.
    #[error("token {id} expired at {expired_at_s} (Unix seconds)")]
    Expired {
        /// The token id.
        id: String,
        /// When it expired.
        expired_at_s: u64,
    },
    /// Correctly signed but revoked.
    #[error("token {0} is revoked")]
    Revoked(String),
    /// The secret or revocation list could not be read or written.
    #[error("token store in {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Issues and verifies tokens for one data dir.
#[derive(Debug)]
pub struct TokenAuthority {
    secret: Vec<u8>,
    revoked: RevocationList,
}

impl TokenAuthority {
    /// Opens the data dir's secret, creating the dir and a new random secret if needed.
    pub fn open(data_dir: &Path) -> Result<TokenAuthority, AuthError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AuthError::Io { path, source }
        };
        std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        let path = data_dir.join(SECRET_FILE);
        let secret = match std::fs::read_to_string(&path) {
            Ok(text) => hex::decode(text.trim()).map_err(|e| AuthError::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret: [u8; 32] = rand::random();
                write_private(&path, hex::encode(secret).as_bytes()).map_err(io(&path))?;
                secret.to_vec()
            }
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(TokenAuthority { secret, revoked: RevocationList::new(data_dir.join(REVOKED_FILE)) })
    }

    /// A new token for `role` and `subject` that never expires.
    pub fn issue(&self, role: Role, subject: &str) -> String {
        self.issue_with_expiry(role, subject, None)
    }

    /// A new token for `role` and `subject`, refused from `expires_at_s` (Unix seconds) on.
    /// Callers check the subject (e.g. [`locus_sdk::topics::is_valid_id`]); any string is
    /// encoded unambiguously.
    pub fn issue_with_expiry(
        &self,
        role: Role,
        subject: &str,
        expires_at_s: Option<u64>,
    ) -> String {
        let id = hex::encode(rand::random::<[u8; 8]>());
        let expires = expires_at_s.unwrap_or(0).to_string();
        let subject = URL_SAFE_NO_PAD.encode(subject);
        let mac = self.mac_v2(role.as_str(), &subject, &expires, &id).finalize().into_bytes();
        let mac = URL_SAFE_NO_PAD.encode(&mac[..MAC_BYTES]);
        format!("{PREFIX}.{role}.{subject}.{expires}.{id}.{mac}")
    }

    /// Checks that `token` was issued for `role` and `subject`, has not expired and is not
    /// revoked. This is the MQTT CONNECT check (`Role::Courier`, username); it accepts
    /// `locus1` tokens as well.
    pub fn verify(&self, role: Role, subject: &str, token: &str) -> Result<(), AuthError> {
        if let Some((id, mac)) = parse_legacy(token) {
            self.mac_v1(role, subject, id)
                .verify_truncated_left(&mac)
                .map_err(|_| AuthError::Invalid)?;
            return self.check_revoked(id);
        }
        let claims = self.authenticate(token)?;
        if claims.role != role || claims.subject != subject {
            return Err(AuthError::Invalid);
        }
        Ok(())
    }

    /// Checks `token` on its own and says what it allows: a `locus2` token names its role,
    /// subject and expiry; a `locus1` token is taken as an admin token (the only kind the HTTP
    /// API accepted before `locus2`), so an old courier token is [`AuthError::Invalid`] here.
    pub fn authenticate(&self, token: &str) -> Result<Claims, AuthError> {
        self.authenticate_at(token, unix_now_s())
    }

    fn authenticate_at(&self, token: &str, now_s: u64) -> Result<Claims, AuthError> {
        if let Some((id, mac)) = parse_legacy(token) {
            self.mac_v1(Role::Admin, ADMIN_SUBJECT, id)
                .verify_truncated_left(&mac)
                .map_err(|_| AuthError::Invalid)?;
            self.check_revoked(id)?;
            return Ok(Claims {
                role: Role::Admin,
                subject: ADMIN_SUBJECT.to_owned(),
                expires_at_s: None,
                id: id.to_owned(),
            });
        }
        let fields = parse_v2(token).ok_or(AuthError::Invalid)?;
        self.mac_v2(fields.role, fields.subject, fields.expires, fields.id)
            .verify_truncated_left(&fields.mac)
            .map_err(|_| AuthError::Invalid)?;
        // Signed by us: the fields below were written by `issue_with_expiry`.
        let role = fields.role.parse()?;
        let subject = URL_SAFE_NO_PAD
            .decode(fields.subject)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(AuthError::Invalid)?;
        let expires_at_s = match fields.expires.parse::<u64>().map_err(|_| AuthError::Invalid)? {
            0 => None,
            at => Some(at),
        };
        if let Some(expired_at_s) = expires_at_s.filter(|&at| now_s >= at) {
            return Err(AuthError::Expired { id: fields.id.to_owned(), expired_at_s });
        }
        self.check_revoked(fields.id)?;
        Ok(Claims { role, subject, expires_at_s, id: fields.id.to_owned() })
    }

    fn check_revoked(&self, id: &str) -> Result<(), AuthError> {
        if self.revoked.contains(id) {
            return Err(AuthError::Revoked(id.to_owned()));
        }
        Ok(())
    }

    fn keyed(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts keys of any length")
    }

    /// The `locus1` MAC: role, subject, id, each followed by a newline.
    fn mac_v1(&self, role: Role, subject: &str, id: &str) -> Hmac<Sha256> {
        let mut mac = self.keyed();
        for part in [role.as_str(), subject, id] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    /// The `locus2` MAC: the label, then every field as written in the token, each
    /// length-prefixed so no two tokens share an input. A `locus1` input cannot collide with
    /// it: it would have to start with the role name `locus2`.
    fn mac_v2(&self, role: &str, subject: &str, expires: &str, id: &str) -> Hmac<Sha256> {
        let mut mac = self.keyed();
        mac.update(PREFIX.as_bytes());
        mac.update(b"\n");
        for part in [role, subject, expires, id] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }
}

/// Revokes a token in `data_dir` (works whether or not the server runs). Returns the token id.
/// The token's MAC is not checked: revoking needs no secret, and a forged token's id revokes
/// nothing anyone holds.
pub fn revoke(data_dir: &Path, token: &str) -> Result<String, AuthError> {
    let id = match parse_legacy(token) {
        Some((id, _)) => id,
        None => parse_v2(token).ok_or(AuthError::Invalid)?.id,
    };
    let path = data_dir.join(REVOKED_FILE);
    let io = |source| AuthError::Io { path: path.clone(), source };
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
    writeln!(file, "{id}").map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(id.to_owned())
}

/// Unix time in whole seconds (0 if the clock is before 1970).
pub fn unix_now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn parse_legacy(token: &str) -> Option<(&str, Vec<u8>)> {
    let mut parts = token.trim().split('.');
    let (prefix, id, mac) = (parts.next()?, parts.next()?, parts.next()?);
    if prefix != LEGACY_PREFIX || parts.next().is_some() || id.is_empty() {
        return None;
    }
    let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
    (mac.len() == MAC_BYTES).then_some((id, mac))
}

/// A `locus2` token split into its fields, not yet checked.
struct V2Fields<'a> {
    role: &'a str,
    subject: &'a str,
    expires: &'a str,
    id: &'a str,
    mac: Vec<u8>,
}

fn parse_v2(token: &str) -> Option<V2Fields<'_>> {
    let mut parts = token.trim().split('.');
    if parts.next()? != PREFIX {
        return None;
    }
    let (role, subject, expires, id, mac) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || id.is_empty()
        || subject.len() > MAX_SUBJECT_BYTES * 4 / 3 + 4
        || expires.is_empty()
        || !expires.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
    (mac.len() == MAC_BYTES).then_some(V2Fields { role, subject, expires, id, mac })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The revoked token ids, re-read when the file's modification time or length changes (the
/// length too: two appends within one tick of the file system's clock keep the same mtime).
#[derive(Debug)]
struct RevocationList {
    path: PathBuf,
    cache: Mutex<(Option<FileVersion>, HashSet<String>)>,
}

/// A file's modification time and length: changes when anyone appends to it.
type FileVersion = (SystemTime, u64);

impl RevocationList {
    fn new(path: PathBuf) -> Self {
        RevocationList { path, cache: Mutex::new((None, HashSet::new())) }
    }

    fn contains(&self, id: &str) -> bool {
        let version = std::fs::metadata(&self.path).and_then(|m| Ok((m.modified()?, m.len()))).ok();
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.0 != version {
            let ids = std::fs::read_to_string(&self.path).unwrap_or_default();
            *cache = (version, ids.lines().map(|l| l.trim().to_owned()).collect());
        }
        cache.1.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data dir written by the previous release (`locusd token admin` / `token issue c1`
    /// before `locus2` existed): its secret and two tokens it printed.
    const LEGACY_SECRET: &str = "ee819f7cd5873f3c291d955874cff4f10407b8f04f83d55a6aed5588efab9b34";
    const LEGACY_ADMIN: &str = "locus1.8dadcd7774bd5d8c.5yzEwAmH8wOI-0Yv81EzXA";
    const LEGACY_COURIER_C1: &str = "locus1.b4de935a20725bd5.NeW-5rmnZMWdGzKc2fEfKw";

    fn authority() -> (tempfile::TempDir, TokenAuthority) {
        let dir = tempfile::tempdir().unwrap();
        let auth = TokenAuthority::open(dir.path()).unwrap();
        (dir, auth)
    }

    #[test]
    fn issued_tokens_verify_only_for_their_role_and_subject() {
        let (dir, auth) = authority();
        let token = auth.issue(Role::Courier, "c1");
        assert!(token.starts_with("locus2.courier."), "{token}");
        auth.verify(Role::Courier, "c1", &token).unwrap();
        assert!(auth.verify(Role::Courier, "c2", &token).is_err());
        assert!(auth.verify(Role::Admin, ADMIN_SUBJECT, &token).is_err());
        assert!(auth.verify(Role::Courier, "c1", "locus1.x.y").is_err());
        assert!(auth.verify(Role::Courier, "c1", "locus2.courier.YzE.0.x.y").is_err());
        assert!(auth.verify(Role::Courier, "c1", "").is_err());
        // The same secret is used after reopening.
        let reopened = TokenAuthority::open(dir.path()).unwrap();
        reopened.verify(Role::Courier, "c1", &token).unwrap();
    }

    #[test]
    fn tokens_say_their_role_subject_and_expiry() {
        let (_dir, auth) = authority();
        // Subjects may contain the separator: they are encoded.
        let token = auth.issue_with_expiry(Role::Order, "order.9:a", Some(unix_now_s() + 60));
        let claims = auth.authenticate(&token).unwrap();
        assert_eq!(claims.role, Role::Order);
        assert_eq!(claims.subject, "order.9:a");
        assert!(claims.expires_at_s.is_some());
        for role in Role::ALL {
            let subject = role.fixed_subject().unwrap_or("someone");
            let claims = auth.authenticate(&auth.issue(role, subject)).unwrap();
            assert_eq!((claims.role, claims.subject.as_str()), (role, subject));
            assert_eq!(claims.expires_at_s, None);
        }
    }

    #[test]
    fn changing_any_field_breaks_the_token() {
        let (_dir, auth) = authority();
        let token = auth.issue_with_expiry(Role::Reader, "reader", Some(unix_now_s() + 60));
        let fields: Vec<&str> = token.split('.').collect();
        let swaps = [
            (1, "admin".to_owned()),
            (2, URL_SAFE_NO_PAD.encode("admin")),
            (3, "0".to_owned()),
            (3, (unix_now_s() + 600).to_string()),
            (4, "0000000000000000".to_owned()),
        ];
        for (index, value) in swaps {
            let mut forged = fields.clone();
            forged[index] = &value;
            let forged = forged.join(".");
            assert!(matches!(auth.authenticate(&forged), Err(AuthError::Invalid)), "{forged}");
        }
        // Another data dir's secret does not verify it either.
        let (_other_dir, other) = authority();
        assert!(matches!(other.authenticate(&token), Err(AuthError::Invalid)));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let (_dir, auth) = authority();
        let now = unix_now_s();
        let token = auth.issue_with_expiry(Role::Courier, "c1", Some(now + 10));
        auth.authenticate_at(&token, now + 9).unwrap();
        assert!(matches!(
            auth.authenticate_at(&token, now + 10),
            Err(AuthError::Expired { expired_at_s, .. }) if expired_at_s == now + 10
        ));
        let expired = auth.issue_with_expiry(Role::Courier, "c1", Some(now - 1));
        assert!(matches!(
            auth.verify(Role::Courier, "c1", &expired),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn revoked_tokens_are_refused() {
        let (dir, auth) = authority();
        let token = auth.issue(Role::Admin, ADMIN_SUBJECT);
        let other = auth.issue(Role::Admin, ADMIN_SUBJECT);
        auth.verify(Role::Admin, ADMIN_SUBJECT, &token).unwrap();
        revoke(dir.path(), &token).unwrap();
        assert!(matches!(
            auth.verify(Role::Admin, ADMIN_SUBJECT, &token),
            Err(AuthError::Revoked(_))
        ));
        auth.verify(Role::Admin, ADMIN_SUBJECT, &other).unwrap();
        // A second revocation right after the first is seen too (same mtime tick, new length).
        revoke(dir.path(), &other).unwrap();
        assert!(matches!(auth.authenticate(&other), Err(AuthError::Revoked(_))));
    }

    #[test]
    fn tokens_of_the_previous_release_keep_working() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SECRET_FILE), LEGACY_SECRET).unwrap();
        let auth = TokenAuthority::open(dir.path()).unwrap();
        auth.verify(Role::Admin, ADMIN_SUBJECT, LEGACY_ADMIN).unwrap();
        auth.verify(Role::Courier, "c1", LEGACY_COURIER_C1).unwrap();
        assert!(auth.verify(Role::Courier, "c2", LEGACY_COURIER_C1).is_err());
        let claims = auth.authenticate(LEGACY_ADMIN).unwrap();
        assert_eq!((claims.role, claims.subject.as_str()), (Role::Admin, ADMIN_SUBJECT));
        // The API takes a locus1 token as admin only: an old courier token is not one.
        assert!(matches!(auth.authenticate(LEGACY_COURIER_C1), Err(AuthError::Invalid)));
        revoke(dir.path(), LEGACY_ADMIN).unwrap();
        assert!(matches!(auth.authenticate(LEGACY_ADMIN), Err(AuthError::Revoked(_))));
    }
}
