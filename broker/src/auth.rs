//! Courier and admin tokens.
//!
//! A token is `locus1.{id}.{mac}`: a random token id and an HMAC-SHA256 over the role, the
//! subject (courier id or `admin`) and the token id, keyed by a secret kept in the data dir
//! (`token.key`, created on first use, mode 0600). Verifying is one HMAC: no lookup per token on
//! the hot path. Revoking adds the token id to `revoked-tokens` in the data dir (one id per line),
//! which the server re-reads when the file changes — so `locusd token revoke` works while the
//! server runs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

const SECRET_FILE: &str = "token.key";
const REVOKED_FILE: &str = "revoked-tokens";
const PREFIX: &str = "locus1";
/// Bytes of the MAC kept in a token: 128 bits is plenty against forgery and keeps tokens short.
const MAC_BYTES: usize = 16;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publish locations as the courier named in the token's subject.
    Courier,
    /// Use every HTTP API endpoint.
    Admin,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Courier => "courier",
            Role::Admin => "admin",
        }
    }
}

/// The subject of admin tokens.
pub const ADMIN_SUBJECT: &str = "admin";

/// Why a token was not accepted, or tokens could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Missing, malformed, or not signed for this role and subject.
    #[error("invalid token")]
    Invalid,
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

    /// A new token for `role` and `subject`.
    pub fn issue(&self, role: Role, subject: &str) -> String {
        let id = hex::encode(rand::random::<[u8; 8]>());
        let mac = self.mac(role, subject, &id).finalize().into_bytes();
        format!("{PREFIX}.{id}.{}", URL_SAFE_NO_PAD.encode(&mac[..MAC_BYTES]))
    }

    /// Checks that `token` was issued for `role` and `subject` and is not revoked.
    pub fn verify(&self, role: Role, subject: &str, token: &str) -> Result<(), AuthError> {
        let (id, mac) = parse(token).ok_or(AuthError::Invalid)?;
        self.mac(role, subject, id).verify_truncated_left(&mac).map_err(|_| AuthError::Invalid)?;
        if self.revoked.contains(id) {
            return Err(AuthError::Revoked(id.to_owned()));
        }
        Ok(())
    }

    fn mac(&self, role: Role, subject: &str, id: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        for part in [role.label(), subject, id] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }
}

/// Revokes a token in `data_dir` (works whether or not the server runs). Returns the token id.
pub fn revoke(data_dir: &Path, token: &str) -> Result<String, AuthError> {
    let (id, _) = parse(token).ok_or(AuthError::Invalid)?;
    let path = data_dir.join(REVOKED_FILE);
    let io = |source| AuthError::Io { path: path.clone(), source };
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
    writeln!(file, "{id}").map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(id.to_owned())
}

fn parse(token: &str) -> Option<(&str, Vec<u8>)> {
    let mut parts = token.trim().split('.');
    let (prefix, id, mac) = (parts.next()?, parts.next()?, parts.next()?);
    if prefix != PREFIX || parts.next().is_some() || id.is_empty() {
        return None;
    }
    let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
    (mac.len() == MAC_BYTES).then_some((id, mac))
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

/// The revoked token ids, re-read when the file's modification time changes.
#[derive(Debug)]
struct RevocationList {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, HashSet<String>)>,
}

impl RevocationList {
    fn new(path: PathBuf) -> Self {
        RevocationList { path, cache: Mutex::new((None, HashSet::new())) }
    }

    fn contains(&self, id: &str) -> bool {
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.0 != modified {
            let ids = std::fs::read_to_string(&self.path).unwrap_or_default();
            *cache = (modified, ids.lines().map(|l| l.trim().to_owned()).collect());
        }
        cache.1.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_only_for_their_role_and_subject() {
        let dir = tempfile::tempdir().unwrap();
        let auth = TokenAuthority::open(dir.path()).unwrap();
        let token = auth.issue(Role::Courier, "c1");
        auth.verify(Role::Courier, "c1", &token).unwrap();
        assert!(auth.verify(Role::Courier, "c2", &token).is_err());
        assert!(auth.verify(Role::Admin, ADMIN_SUBJECT, &token).is_err());
        assert!(auth.verify(Role::Courier, "c1", "locus1.x.y").is_err());
        assert!(auth.verify(Role::Courier, "c1", "").is_err());
        // The same secret is used after reopening.
        let reopened = TokenAuthority::open(dir.path()).unwrap();
        reopened.verify(Role::Courier, "c1", &token).unwrap();
    }

    #[test]
    fn revoked_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let auth = TokenAuthority::open(dir.path()).unwrap();
        let token = auth.issue(Role::Admin, ADMIN_SUBJECT);
        let other = auth.issue(Role::Admin, ADMIN_SUBJECT);
        auth.verify(Role::Admin, ADMIN_SUBJECT, &token).unwrap();
        revoke(dir.path(), &token).unwrap();
        assert!(matches!(
            auth.verify(Role::Admin, ADMIN_SUBJECT, &token),
            Err(AuthError::Revoked(_))
        ));
        auth.verify(Role::Admin, ADMIN_SUBJECT, &other).unwrap();
    }
}
