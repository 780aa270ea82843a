//! `locusd token issue|admin|revoke`: credentials, made from the data dir's secret.
//!
//! Enters: a role, a subject and an optional lifetime. Leaves: the token, alone on the last line
//! of stdout (what it is for goes to stderr), so scripts can take `| tail -n1`.

use crate::auth::{self, unix_now_s, Role, TokenAuthority};
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Print a token. Without --role: a courier token (MQTT password; the username is the
    /// courier id).
    Issue {
        /// Whom the token is for: the courier id (courier), merchant name (merchant) or order
        /// id (order); none for admin and reader.
        subject: Option<String>,
        /// What the token may do.
        #[arg(long, value_enum, default_value_t = RoleArg::Courier)]
        role: RoleArg,
        /// Refuse the token after this long: a number and a unit, e.g. 3600s, 30m, 24h, 7d.
        /// Without it the token never expires (revoke it to end it).
        #[arg(long, value_parser = parse_lifetime)]
        expires_in: Option<u64>,
        /// The server's data directory.
        #[arg(long, default_value = "./locus-data")]
        data_dir: PathBuf,
    },
    /// Print a customer's token for one order: MQTT (username ORDER, client id order@ORDER or
    /// order@ORDER@anything) to follow `orders/ORDER/status` and `orders/ORDER/location` while
    /// the order is active, and `GET /v1/orders/ORDER` over HTTP. The same as
    /// `issue --role order ORDER`.
    Order {
        /// The order id.
        order: String,
        /// Refuse the token after this long (e.g. 24h); it stops working anyway once the
        /// order is delivered or cancelled.
        #[arg(long, value_parser = parse_lifetime)]
        expires_in: Option<u64>,
        /// The server's data directory.
        #[arg(long, default_value = "./locus-data")]
        data_dir: PathBuf,
    },
    /// Print an admin token for the HTTP API (Authorization: Bearer TOKEN); the same as
    /// `issue --role admin`.
    Admin {
        /// The server's data directory.
        #[arg(long, default_value = "./locus-data")]
        data_dir: PathBuf,
    },
    /// Revoke a token (takes effect at the next connection or request, server running or not).
    Revoke {
        /// The token.
        token: String,
        /// The server's data directory.
        #[arg(long, default_value = "./locus-data")]
        data_dir: PathBuf,
    },
}

/// The roles as the command line names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum RoleArg {
    /// MQTT only: publish locations as the courier SUBJECT.
    Courier,
    /// Every HTTP API route.
    Admin,
    /// Read-only HTTP: couriers' locations and tracks, orders.
    Reader,
    /// The merchant SUBJECT: order routes (order events once they exist).
    Merchant,
    /// The order SUBJECT only: its status and location over MQTT while it is active, and
    /// `GET /v1/orders/SUBJECT`, `GET /v1/orders/SUBJECT/location` over HTTP.
    Order,
    /// The edge component SUBJECT (declared in `[edges.SUBJECT]`): MQTT publish on
    /// `edge/SUBJECT/batches`, and `GET /v1/edges/SUBJECT/receipts/KEY` over HTTP.
    Edge,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Courier => Role::Courier,
            RoleArg::Admin => Role::Admin,
            RoleArg::Reader => Role::Reader,
            RoleArg::Merchant => Role::Merchant,
            RoleArg::Order => Role::Order,
            RoleArg::Edge => Role::Edge,
        }
    }
}

impl TokenCommand {
    pub(super) fn run(self) -> anyhow::Result<()> {
        match self {
            TokenCommand::Order { order, expires_in, data_dir } => {
                let issue = TokenCommand::Issue {
                    subject: Some(order),
                    role: RoleArg::Order,
                    expires_in,
                    data_dir,
                };
                return issue.run();
            }
            TokenCommand::Issue { subject, role, expires_in, data_dir } => {
                let role = Role::from(role);
                let subject = subject_for(role, subject)?;
                let authority = TokenAuthority::open(&data_dir)?;
                let expires_at_s = expires_in.map(|lifetime| unix_now_s().saturating_add(lifetime));
                let token = authority.issue_with_expiry(role, &subject, expires_at_s);
                let until = match expires_at_s {
                    Some(at) => format!(", expires at {at} (Unix seconds)"),
                    None => String::new(),
                };
                match role {
                    Role::Courier => eprintln!(
                        "courier token for {subject} (MQTT username {subject}, client id {subject}){until}:"
                    ),
                    Role::Order => eprintln!(
                        "order token for {subject} (MQTT username {subject}, client id \
                         order@{subject}[@...]; HTTP header Authorization: Bearer TOKEN){until}:"
                    ),
                    Role::Edge => eprintln!(
                        "edge token for {subject} (MQTT username {subject}, client id \
                         edge@{subject}@...; HTTP header Authorization: Bearer TOKEN for its \
                         receipts; the server needs an [edges.{subject}] section){until}:"
                    ),
                    Role::Merchant => eprintln!(
                        "{role} token for {subject} (HTTP header Authorization: Bearer TOKEN){until}:"
                    ),
                    Role::Admin | Role::Reader => {
                        eprintln!("{role} token (HTTP header Authorization: Bearer TOKEN){until}:")
                    }
                }
                println!("{token}");
            }
            TokenCommand::Admin { data_dir } => {
                let authority = TokenAuthority::open(&data_dir)?;
                eprintln!("admin token (HTTP header Authorization: Bearer TOKEN):");
                println!("{}", authority.issue(Role::Admin, auth::ADMIN_SUBJECT));
            }
            TokenCommand::Revoke { token, data_dir } => {
                let id = auth::revoke(&data_dir, &token)?;
                println!("revoked token {id}");
            }
        }
        Ok(())
    }
}

/// The token's subject: the given id for roles that name someone, the role's own name for the
/// others (which take none).
fn subject_for(role: Role, subject: Option<String>) -> anyhow::Result<String> {
    match (role.fixed_subject(), subject) {
        (Some(fixed), None) => Ok(fixed.to_owned()),
        (Some(_), Some(given)) => {
            anyhow::bail!("--role {role} takes no subject (got {given:?}): it names no one")
        }
        (None, None) => {
            let what = match role {
                Role::Merchant => "merchant name",
                Role::Order => "order id",
                Role::Edge => "edge id",
                _ => "courier id",
            };
            anyhow::bail!("--role {role} needs the {what}: locusd token issue --role {role} ID")
        }
        (None, Some(given)) => {
            anyhow::ensure!(
                locus_sdk::topics::is_valid_id(&given),
                "{role} id {given:?} must be 1-64 characters of letters, digits, - _ . :"
            );
            anyhow::ensure!(
                !(role == Role::Courier && crate::mqtt::policy::is_reserved_client_id(&given)),
                "courier id {given:?} is reserved for locusd's own link into its broker"
            );
            Ok(given)
        }
    }
}

/// `--expires-in`: seconds from a number and a unit (`s`, `m`, `h`, `d`).
fn parse_lifetime(text: &str) -> Result<u64, String> {
    let help = "use a whole number and a unit s, m, h or d, e.g. 3600s, 30m, 24h, 7d";
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_s: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => return Err(format!("{text:?} has no unit: {help}")),
        _ => return Err(format!("{text:?} has an unknown unit {unit:?}: {help}")),
    };
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a lifetime: {help}"))?;
    let seconds = number.checked_mul(unit_s).ok_or_else(|| format!("{text:?} is too long"))?;
    if seconds == 0 {
        return Err("a token that expires at once is useless: give a lifetime above 0".into());
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_with_units_and_refuse_the_rest() {
        assert_eq!(parse_lifetime("3600s"), Ok(3600));
        assert_eq!(parse_lifetime("30m"), Ok(1800));
        assert_eq!(parse_lifetime("24h"), Ok(86_400));
        assert_eq!(parse_lifetime("7d"), Ok(604_800));
        for bad in ["", "24", "h", "1.5h", "-1h", "24 h", "2w", "0s", "99999999999999999999d"] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subjects_fit_their_role() {
        assert_eq!(subject_for(Role::Reader, None).unwrap(), "reader");
        assert_eq!(subject_for(Role::Admin, None).unwrap(), auth::ADMIN_SUBJECT);
        assert!(subject_for(Role::Reader, Some("x".into())).is_err());
        assert!(subject_for(Role::Order, None).is_err());
        assert!(subject_for(Role::Courier, Some("has space".into())).is_err());
        assert_eq!(subject_for(Role::Merchant, Some("shop-1".into())).unwrap(), "shop-1");
        let reserved = subject_for(Role::Courier, Some(crate::mqtt::PIPELINE_CLIENT_ID.into()));
        assert!(reserved.unwrap_err().to_string().contains("reserved"));
    }
}
