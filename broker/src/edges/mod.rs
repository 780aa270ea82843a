//! Edge components: who may post fixes over HTTP through an edge, and the receipts that tell
//! an HTTP client its request is stored.
//!
//! An edge (the Spin component in `edge/`, or anything speaking the same contract) takes fixes
//! over HTTP and publishes them on `edge/{edge}/batches` as [`locus_sdk::wire::EdgeBatch`]es.
//! It is a principal of its own: it connects with an `edge` token as client `edge@{edge}[@…]`,
//! may publish only on its own batches topic (`mqtt::policy`), and reports only for the
//! couriers its `[edges.{edge}]` section names. It cannot check its HTTP clients' tokens (it has
//! no secret), so it forwards them in each batch and the intake checks them here
//! ([`EdgeRules::refusal`]).
//!
//! Enters: the `[edges]` configuration; a batch's edge, courier and client token. Leaves:
//! whether the batch may be taken, or why not (a dead-letter reason and a detail).
//!
//! Receipts (the store's `edge_receipts` tree, `store::receipts`) are written by the intake
//! with the fixes they cover and served by `GET /v1/edges/{edge}/receipts/{key}`.

use crate::auth::{Role, TokenAuthority};
use crate::store::DeadLetterReason;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// `[edges.{edge}]`: one edge allowed to connect, by its id.
pub type EdgesConfig = BTreeMap<String, EdgeConfig>;

/// One `[edges.{edge}]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The couriers this edge may report for: `"*"` for every courier, or a list of ids.
    pub couriers: CourierScope,
    /// How long a receipt is kept after its last part arrived, seconds: a client that retries
    /// a key within this time gets it stored once (default a week).
    #[serde(default = "default_receipts_kept_s")]
    pub receipts_kept_s: u64,
}

fn default_receipts_kept_s() -> u64 {
    7 * 24 * 3600
}

/// Which couriers an edge may report for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CourierScope {
    /// Every courier (`couriers = "*"`).
    All,
    /// These couriers.
    Only(BTreeSet<String>),
}

impl CourierScope {
    /// Whether `courier` is in the scope.
    pub fn allows(&self, courier: &str) -> bool {
        match self {
            CourierScope::All => true,
            CourierScope::Only(couriers) => couriers.contains(courier),
        }
    }
}

impl Serialize for CourierScope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            CourierScope::All => serializer.serialize_str("*"),
            CourierScope::Only(couriers) => couriers.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for CourierScope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Star(String),
            List(BTreeSet<String>),
        }
        let wrong = || {
            serde::de::Error::custom(
                "couriers must be \"*\" (every courier) or a list of courier ids, e.g. \
                 [\"c1\", \"c2\"]",
            )
        };
        match Written::deserialize(deserializer).map_err(|_| wrong())? {
            Written::Star(star) if star == "*" => Ok(CourierScope::All),
            Written::Star(_) => Err(wrong()),
            Written::List(couriers) => Ok(CourierScope::Only(couriers)),
        }
    }
}

/// Checks `[edges]`: valid ids, and no edge that may report for nobody.
pub fn check(edges: &EdgesConfig) -> Result<(), String> {
    for (edge, config) in edges {
        if !locus_sdk::topics::is_valid_id(edge) {
            return Err(format!(
                "[edges.{edge}]: an edge id must be 1-64 characters of letters, digits, - _ . :"
            ));
        }
        if let CourierScope::Only(couriers) = &config.couriers {
            if couriers.is_empty() {
                return Err(format!(
                    "edges.{edge}.couriers is empty: list the couriers it may report for, or \
                     \"*\" for every courier (remove the section to refuse the edge)"
                ));
            }
            if let Some(bad) = couriers.iter().find(|c| !locus_sdk::topics::is_valid_id(c)) {
                return Err(format!(
                    "edges.{edge}.couriers: {bad:?} is not a courier id (1-64 characters of \
                     letters, digits, - _ . :)"
                ));
            }
        }
        if config.receipts_kept_s == 0 {
            return Err(format!("edges.{edge}.receipts_kept_s must be at least 1"));
        }
    }
    Ok(())
}

/// Why an edge batch is not taken: its dead-letter reason and a detail for the letter and
/// the receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The dead-letter reason.
    pub reason: DeadLetterReason,
    /// What is wrong, for people.
    pub detail: String,
}

/// The edges' rules at run time: `[edges]` and the token authority that checks the HTTP
/// clients' tokens (`None` with `allow_anonymous`: no token is checked).
#[derive(Debug, Clone)]
pub struct EdgeRules {
    edges: Arc<EdgesConfig>,
    tokens: Option<Arc<TokenAuthority>>,
}

impl EdgeRules {
    /// The rules of `edges`, checking client tokens with `tokens`.
    pub fn new(edges: EdgesConfig, tokens: Option<Arc<TokenAuthority>>) -> EdgeRules {
        EdgeRules { edges: Arc::new(edges), tokens }
    }

    /// Whether `[edges]` declares `edge` (an undeclared edge is refused at CONNECT).
    pub fn is_declared(&self, edge: &str) -> bool {
        self.edges.contains_key(edge)
    }

    /// How long `edge`'s receipts are kept, ms.
    pub fn receipts_kept_ms(&self, edge: &str) -> u64 {
        let kept_s =
            self.edges.get(edge).map_or_else(default_receipts_kept_s, |e| e.receipts_kept_s);
        kept_s.saturating_mul(1000)
    }

    /// Why a batch `edge` sends for `courier` on behalf of a client holding `token` is refused,
    /// or `None` when it may be taken: the edge must be declared and `courier` in its scope,
    /// and the client's token must be valid and either that courier's own or an admin's.
    pub fn refusal(&self, edge: &str, courier: &str, token: Option<&str>) -> Option<Refusal> {
        let not_allowed =
            |detail: String| Some(Refusal { reason: DeadLetterReason::EdgeNotAllowed, detail });
        let Some(config) = self.edges.get(edge) else {
            return not_allowed(format!("edge {edge} is not declared in [edges]"));
        };
        if !config.couriers.allows(courier) {
            return not_allowed(format!(
                "edge {edge} may not report for courier {courier} (edges.{edge}.couriers)"
            ));
        }
        let Some(tokens) = &self.tokens else { return None };
        let refused =
            |detail: String| Some(Refusal { reason: DeadLetterReason::ClientTokenRefused, detail });
        let Some(token) = token else {
            return refused("the HTTP client sent no token".to_owned());
        };
        match tokens.authenticate(token) {
            Ok(claims) => match claims.role {
                Role::Courier if claims.subject == courier => None,
                Role::Admin => None,
                role => refused(format!(
                    "the client's token ({role} {}) may not report for courier {courier}: it \
                     takes that courier's own token or an admin token",
                    claims.subject
                )),
            },
            Err(e) => refused(format!("the client's token is refused: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str, tokens: Option<Arc<TokenAuthority>>) -> EdgeRules {
        #[derive(Deserialize)]
        struct Wrapper {
            edges: EdgesConfig,
        }
        let wrapper: Wrapper = toml::from_str(toml_text).expect("parses");
        check(&wrapper.edges).expect("valid");
        EdgeRules::new(wrapper.edges, tokens)
    }

    #[test]
    fn an_edge_reports_only_for_its_couriers_with_their_own_or_an_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Arc::new(TokenAuthority::open(dir.path()).unwrap());
        let rules = rules(
            "[edges.web-1]\ncouriers = [\"c1\", \"c2\"]\n[edges.all]\ncouriers = \"*\"\n",
            Some(authority.clone()),
        );
        let c1 = authority.issue(Role::Courier, "c1");
        let admin = authority.issue(Role::Admin, crate::auth::ADMIN_SUBJECT);
        let reader = authority.issue(Role::Reader, "reader");
        let reason = |r: Option<Refusal>| r.map(|r| r.reason.as_str().to_owned());
        assert_eq!(reason(rules.refusal("web-1", "c1", Some(&c1))), None);
        assert_eq!(reason(rules.refusal("web-1", "c2", Some(&admin))), None);
        assert_eq!(reason(rules.refusal("all", "c9", Some(&admin))), None);
        assert_eq!(
            reason(rules.refusal("web-1", "c2", Some(&c1))).as_deref(),
            Some("client_token_refused")
        );
        assert_eq!(
            reason(rules.refusal("web-1", "c1", Some(&reader))).as_deref(),
            Some("client_token_refused")
        );
        assert_eq!(
            reason(rules.refusal("web-1", "c1", Some("locus2.forged"))).as_deref(),
            Some("client_token_refused")
        );
        assert_eq!(
            reason(rules.refusal("web-1", "c1", None)).as_deref(),
            Some("client_token_refused")
        );
        assert_eq!(
            reason(rules.refusal("web-1", "c3", Some(&admin))).as_deref(),
            Some("edge_not_allowed")
        );
        assert_eq!(
            reason(rules.refusal("web-2", "c1", Some(&admin))).as_deref(),
            Some("edge_not_allowed")
        );
        assert!(rules.is_declared("web-1") && !rules.is_declared("web-2"));
        // Without token checks (allow_anonymous) the scope still holds.
        let open = self::rules("[edges.web-1]\ncouriers = [\"c1\"]\n", None);
        assert_eq!(reason(open.refusal("web-1", "c1", None)), None);
        assert!(open.refusal("web-1", "c2", None).is_some());
    }

    #[test]
    fn bad_sections_name_the_key_and_the_fix() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)] // only parsed
        struct Wrapper {
            edges: EdgesConfig,
        }
        let parse = |text: &str| -> Result<EdgesConfig, String> {
            let wrapper: Wrapper = toml::from_str(text).map_err(|e| e.to_string())?;
            check(&wrapper.edges)?;
            Ok(wrapper.edges)
        };
        let err = parse("[edges.web-1]\ncouriers = \"all\"\n").unwrap_err();
        assert!(err.contains("\"*\""), "{err}");
        let err = parse("[edges.web-1]\ncouriers = []\n").unwrap_err();
        assert!(err.contains("edges.web-1.couriers is empty"), "{err}");
        let err = parse("[edges.web-1]\ncouriers = [\"a/b\"]\n").unwrap_err();
        assert!(err.contains("a/b"), "{err}");
        let err = parse("[edges.\"a b\"]\ncouriers = \"*\"\n").unwrap_err();
        assert!(err.contains("edge id"), "{err}");
        let err = parse("[edges.web-1]\ncouriers = \"*\"\nkept = 1\n").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }
}
