//! The topic policy for an external broker: the four questions RabbitMQ's HTTP auth backend
//! (`rabbitmq_auth_backend_http`) asks, answered by the same token check and the same
//! [`TopicPolicy`] the embedded broker uses, so a device has the same rights on either.
//!
//! Enters: the form fields RabbitMQ 3.10 posts (captured with `scripts/rabbitmq-node.sh`; see
//! ARCHITECTURE.md, "Running at scale"). Leaves: allow or deny, which the API answers as the
//! bare words `allow` / `deny` (`api::rabbitmq`).
//!
//! - **user** (CONNECT): `username`, `password`, `client_id`: exactly the embedded broker's
//!   CONNECT check ([`super::check_connect`]).
//! - **vhost**: only `/`, where RabbitMQ's MQTT plugin puts everything by default.
//! - **resource**: the MQTT exchange `amq.topic` (read, write), and the client's own
//!   subscription queues `mqtt-subscription-{client_id}qos0|qos1`. The exchange must be
//!   allowed: a client denied it hangs with no answer; the topic check below decides.
//! - **topic**: the routing key back into an MQTT topic (`.` → `/`, `*` → `+`), write as a
//!   publish and read as a subscription of the client `variable_map.client_id`, asked of
//!   [`TopicPolicy::check`]. RabbitMQ does not escape a `.` inside a topic level, so ids with
//!   a `.` cannot be told apart from two levels there: they are refused in this mode.
//!
//! AMQP clients (no client id) are known only as fix stream readers: username `reader` with a
//! reader token. They may read the exchange [`FIXES_EXCHANGE`], bind to it what a reader may
//! subscribe to over MQTT (`fixes.*`, `fixes.#`, `fixes.{courier}`), and own queues named by
//! the server (`amq.gen-…`) or `reader.…` (shared by every reader token: one principal).
//! locusd's workers log in as an internal RabbitMQ user, never through here.

use super::policy::{Action, Principal, TopicPolicy};
use crate::auth::{Role, TokenAuthority};
use crate::metrics::Metrics;
use serde::Deserialize;
use std::sync::Arc;

/// The only virtual host the policy knows.
const VHOST: &str = "/";

/// The exchange RabbitMQ's MQTT plugin publishes to and binds subscriptions on.
const MQTT_EXCHANGE: &str = "amq.topic";

/// The live fix stream's exchange for AMQP readers in cluster mode (`cluster::rabbitmq`
/// declares it and binds it to `amq.topic`'s `fixes.#`).
pub const FIXES_EXCHANGE: &str = "locus.fixes";

/// The `user` path's form.
#[derive(Debug, Deserialize)]
pub struct UserForm {
    /// MQTT username.
    pub username: String,
    /// MQTT password: a Locus token.
    #[serde(default)]
    pub password: String,
    /// MQTT client id (RabbitMQ sends it for MQTT connections).
    pub client_id: Option<String>,
}

/// The `vhost` path's form.
#[derive(Debug, Deserialize)]
pub struct VhostForm {
    /// The user.
    pub username: String,
    /// The virtual host.
    pub vhost: String,
}

/// The `resource` path's form.
#[derive(Debug, Deserialize)]
pub struct ResourceForm {
    /// The user.
    pub username: String,
    /// The virtual host.
    pub vhost: String,
    /// `exchange` or `queue`.
    pub resource: String,
    /// The exchange's or queue's name.
    pub name: String,
    /// `configure`, `write` or `read`.
    pub permission: String,
    /// The MQTT client id.
    pub client_id: Option<String>,
}

/// The `topic` path's form.
#[derive(Debug, Deserialize)]
pub struct TopicForm {
    /// The user.
    pub username: String,
    /// The virtual host.
    pub vhost: String,
    /// The exchange (`amq.topic`).
    pub name: String,
    /// `write` (publish) or `read` (subscribe).
    pub permission: String,
    /// The topic (publish) or filter (subscribe) in AMQP form: `couriers.c1.locations`.
    pub routing_key: String,
    /// The MQTT client id.
    #[serde(rename = "variable_map.client_id")]
    pub client_id: Option<String>,
}

/// Answers an external broker's questions.
#[derive(Clone)]
pub struct ExternalAuth {
    /// `None`: anonymous access, everything allowed.
    auth: Option<Arc<TokenAuthority>>,
    policy: TopicPolicy,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ExternalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAuth").field("anonymous", &self.auth.is_none()).finish()
    }
}

impl ExternalAuth {
    /// Answers with `auth`'s tokens (`None`: allow everyone) and `policy`.
    pub fn new(
        auth: Option<Arc<TokenAuthority>>,
        policy: TopicPolicy,
        metrics: Arc<Metrics>,
    ) -> ExternalAuth {
        ExternalAuth { auth, policy, metrics }
    }

    /// May this client connect?
    pub fn user(&self, form: &UserForm) -> bool {
        let Some(auth) = &self.auth else { return true };
        let verdict = match &form.client_id {
            Some(client_id) => {
                super::check_connect(auth, &self.policy, client_id, &form.username, &form.password)
            }
            // AMQP: only fix stream readers.
            None => {
                let subject = Role::Reader.fixed_subject().unwrap_or("reader");
                match form.username == subject {
                    true => auth
                        .verify(Role::Reader, subject, &form.password)
                        .map_err(|e| e.to_string()),
                    false => Err("an AMQP login without a client id must be a fix stream reader \
                                  (username reader, a reader token)"
                        .to_owned()),
                }
            }
        };
        if let Err(reason) = &verdict {
            let client_id = form.client_id.as_deref().unwrap_or("");
            super::record_refused_connect(&self.metrics, client_id, &form.username, reason);
        }
        verdict.is_ok()
    }

    /// May this user use this virtual host?
    pub fn vhost(&self, form: &VhostForm) -> bool {
        self.auth.is_none() || form.vhost == VHOST
    }

    /// May this client use this exchange or queue?
    pub fn resource(&self, form: &ResourceForm) -> bool {
        if self.auth.is_none() {
            return true;
        }
        if form.vhost != VHOST {
            return false;
        }
        if form.client_id.is_none() {
            return amqp_reader_resource(form);
        }
        match form.resource.as_str() {
            "exchange" => form.name == MQTT_EXCHANGE && form.permission != "configure",
            "queue" => form.client_id.as_ref().is_some_and(|client_id| {
                ["qos0", "qos1"]
                    .iter()
                    .any(|qos| form.name == format!("mqtt-subscription-{client_id}{qos}"))
            }),
            _ => false,
        }
    }

    /// May this client publish on (write) or subscribe to (read) this topic?
    pub fn topic(&self, form: &TopicForm) -> bool {
        if self.auth.is_none() {
            return true;
        }
        if form.vhost != VHOST {
            return false;
        }
        let (client_id, principal) = match &form.client_id {
            Some(client_id) if form.name == MQTT_EXCHANGE => {
                (client_id.as_str(), Principal::of_client(client_id))
            }
            // An AMQP reader binding a queue to the stream's exchange (it was let in as one).
            None if form.name == FIXES_EXCHANGE && form.username == "reader" => {
                ("reader (AMQP)", Principal::Reader)
            }
            _ => return false,
        };
        let topic = mqtt_topic(&form.routing_key);
        let action = match form.permission.as_str() {
            "write" => Action::Publish(&topic),
            "read" => Action::Subscribe(&topic),
            _ => return false,
        };
        match self.policy.check(principal, action) {
            Ok(()) => true,
            Err(denial) => {
                super::record_denial(&self.metrics, client_id, action, denial);
                false
            }
        }
    }
}

/// What an AMQP fix stream reader may use: read the stream's exchange, and its own queues.
fn amqp_reader_resource(form: &ResourceForm) -> bool {
    if form.username != "reader" {
        return false;
    }
    match form.resource.as_str() {
        "exchange" => form.name == FIXES_EXCHANGE && form.permission == "read",
        "queue" => form.name.starts_with("amq.gen-") || form.name.starts_with("reader."),
        _ => false,
    }
}

/// An AMQP routing key or binding key as the MQTT topic or filter it came from, as
/// RabbitMQ's MQTT plugin maps them (ids have no `.`, so a `.` always separates levels).
pub fn mqtt_topic(routing_key: &str) -> String {
    routing_key
        .split('.')
        .map(|level| if level == "*" { "+" } else { level })
        .collect::<Vec<_>>()
        .join("/")
}

/// An MQTT topic as the routing key RabbitMQ's MQTT plugin gives it on `amq.topic`.
pub fn routing_key(topic: &str) -> String {
    topic.replace('/', ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (ExternalAuth, Arc<TokenAuthority>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let auth = Arc::new(TokenAuthority::open(dir.path()).unwrap());
        let edges = crate::edges::EdgeRules::new(Default::default(), None);
        let policy = TopicPolicy::new(Arc::new(|_: &str| false), edges);
        let external = ExternalAuth::new(Some(auth.clone()), policy, Arc::new(Metrics::new()));
        (external, auth, dir)
    }

    fn topic(external: &ExternalAuth, client: &str, permission: &str, key: &str) -> bool {
        external.topic(&TopicForm {
            username: client.into(),
            vhost: "/".into(),
            name: "amq.topic".into(),
            permission: permission.into(),
            routing_key: key.into(),
            client_id: Some(client.into()),
        })
    }

    #[test]
    fn the_embedded_policy_answers_for_rabbitmq() {
        let (external, auth, _dir) = setup();
        let token = auth.issue(Role::Courier, "c1");
        let user = |client_id: Option<&str>, password: &str| {
            external.user(&UserForm {
                username: "c1".into(),
                password: password.into(),
                client_id: client_id.map(str::to_owned),
            })
        };
        assert!(user(Some("c1"), &token));
        assert!(!user(Some("c1"), "forged"));
        assert!(!user(Some("c2"), &token));
        assert!(!user(None, &token));

        assert!(topic(&external, "c1", "write", "couriers.c1.locations"));
        assert!(!topic(&external, "c1", "write", "couriers.c2.locations"));
        assert!(!topic(&external, "c1", "write", "couriers.c1.acks"));
        assert!(topic(&external, "c1", "read", "couriers.c1.acks"));
        assert!(!topic(&external, "c1", "read", "couriers.*.acks"));
        assert!(!topic(&external, "c1", "read", "couriers.c2.acks"));
        assert_eq!(mqtt_topic("couriers.*.x.#"), "couriers/+/x/#");
        assert_eq!(routing_key("couriers/c1/acks"), "couriers.c1.acks");
        assert_eq!(mqtt_topic(&routing_key("fixes-wire/c-1")), "fixes-wire/c-1");

        let resource = |resource: &str, name: &str, permission: &str| {
            external.resource(&ResourceForm {
                username: "c1".into(),
                vhost: "/".into(),
                resource: resource.into(),
                name: name.into(),
                permission: permission.into(),
                client_id: Some("c1".into()),
            })
        };
        assert!(resource("exchange", "amq.topic", "write"));
        assert!(resource("exchange", "amq.topic", "read"));
        assert!(!resource("exchange", "amq.topic", "configure"));
        assert!(!resource("exchange", "amq.direct", "write"));
        assert!(resource("queue", "mqtt-subscription-c1qos1", "configure"));
        assert!(!resource("queue", "mqtt-subscription-c2qos1", "read"));
        assert!(external.vhost(&VhostForm { username: "c1".into(), vhost: "/".into() }));
        // Over AMQP only readers: the stream's exchange and their own queues.
        let reader_token = auth.issue(Role::Reader, "reader");
        let amqp_user = |username: &str, password: &str| {
            external.user(&UserForm {
                username: username.into(),
                password: password.into(),
                client_id: None,
            })
        };
        assert!(amqp_user("reader", &reader_token));
        assert!(!amqp_user("reader", &token));
        assert!(!amqp_user("c1", &token));
        let amqp = |resource: &str, name: &str, permission: &str| {
            external.resource(&ResourceForm {
                username: "reader".into(),
                vhost: "/".into(),
                resource: resource.into(),
                name: name.into(),
                permission: permission.into(),
                client_id: None,
            })
        };
        assert!(amqp("exchange", FIXES_EXCHANGE, "read"));
        assert!(!amqp("exchange", FIXES_EXCHANGE, "write"));
        assert!(!amqp("exchange", "amq.topic", "read"));
        assert!(amqp("queue", "amq.gen-Xy1", "configure"));
        assert!(amqp("queue", "reader.analytics", "read"));
        assert!(!amqp("queue", "locus.reports.0", "read"));
        let bind = |key: &str| {
            external.topic(&TopicForm {
                username: "reader".into(),
                vhost: "/".into(),
                name: FIXES_EXCHANGE.into(),
                permission: "read".into(),
                routing_key: key.into(),
                client_id: None,
            })
        };
        assert!(bind("fixes.*") && bind("fixes.#") && bind("fixes.c1"));
        assert!(!bind("#") && !bind("couriers.*.locations"));
        assert!(!external.vhost(&VhostForm { username: "c1".into(), vhost: "other".into() }));
    }
}
