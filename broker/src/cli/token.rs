//! `locusd token issue|admin|revoke`: credentials, made from the data dir's secret.

use crate::auth::{self, Role, TokenAuthority, ADMIN_SUBJECT};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Print a courier token (MQTT password; the username is the courier id).
    Issue {
        /// The courier id.
        courier: String,
        /// The server's data directory.
        #[arg(long, default_value = "./locus-data")]
        data_dir: PathBuf,
    },
    /// Print an admin token for the HTTP API (Authorization: Bearer TOKEN).
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

impl TokenCommand {
    pub(super) fn run(self) -> anyhow::Result<()> {
        match self {
            TokenCommand::Issue { courier, data_dir } => {
                anyhow::ensure!(
                    locus_sdk::topics::is_valid_id(&courier),
                    "courier id {courier:?} must be 1-64 characters of letters, digits, - _ . :"
                );
                let authority = TokenAuthority::open(&data_dir)?;
                eprintln!(
                    "courier token for {courier} (MQTT username {courier}, client id {courier}):"
                );
                println!("{}", authority.issue(Role::Courier, &courier));
            }
            TokenCommand::Admin { data_dir } => {
                let authority = TokenAuthority::open(&data_dir)?;
                eprintln!("admin token (HTTP header Authorization: Bearer TOKEN):");
                println!("{}", authority.issue(Role::Admin, ADMIN_SUBJECT));
            }
            TokenCommand::Revoke { token, data_dir } => {
                let id = auth::revoke(&data_dir, &token)?;
                println!("revoked token {id}");
            }
        }
        Ok(())
    }
}
