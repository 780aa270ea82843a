//! The `locusd` command line.
//!
//! - `locusd [serve]`: the server (embedded default config, flags override a `--config` file)
//! - `locusd wire encode|decode`: JSON ⇄ wire bytes on stdin/stdout
//! - `locusd token issue|admin|revoke`: credentials
//! - `locusd plugin new|build|deploy|test`: WebAssembly plugins
//! - `locusd bench`: load generator against a running server
//! - `locusd replay FILE`: backfill historical fixes (JSON lines or CSV) while locusd is stopped

mod bench;
mod plugin;
pub mod replay;
mod token;
pub mod wire;

use crate::config::Config;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Locus: real-time courier location ingestion.
#[derive(Debug, Parser)]
#[command(name = "locusd", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Convert Locus wire messages between JSON and bytes.
    #[command(subcommand)]
    Wire(wire::WireCommand),
    /// Issue and revoke credentials.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Create, build, deploy and try WebAssembly plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Load-test a running server: fixes/s committed and publish→ack latency.
    Bench(bench::BenchArgs),
    /// Backfill historical fixes (JSON lines or CSV) into the track and InfluxDB outbox; run
    /// it while locusd is stopped. Resumable: a rerun continues where the last one stopped.
    Replay(replay::ReplayArgs),
}

/// Flags of `locusd serve`; each overrides the config file.
#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// TOML configuration file (see locusd.example.toml).
    #[arg(long, env = "LOCUS_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./locus-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// MQTT 3.1.1 listen address, or `off` [default: 127.0.0.1:1883].
    #[arg(long, value_name = "ADDR|off", value_parser = parse_listener)]
    mqtt_listen: Option<Listener>,
    /// MQTT 5 listen address, or `off` [default: 127.0.0.1:1884].
    #[arg(long, value_name = "ADDR|off", value_parser = parse_listener)]
    mqtt5_listen: Option<Listener>,
    /// MQTT 3.1.1 over TLS listen address (e.g. 0.0.0.0:8883), or `off` [default: off];
    /// needs --tls-cert and --tls-key (or [tls]).
    #[arg(long, value_name = "ADDR|off", value_parser = parse_listener)]
    mqtt_tls_listen: Option<Listener>,
    /// MQTT 5 over TLS listen address, or `off` [default: off].
    #[arg(long, value_name = "ADDR|off", value_parser = parse_listener)]
    mqtt5_tls_listen: Option<Listener>,
    /// HTTP API listen address, or `off` [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR|off", value_parser = parse_listener)]
    http_listen: Option<Listener>,
    /// HTTPS API listen address (e.g. 0.0.0.0:8443), or `off` [default: off].
    #[arg(long, value_name = "ADDR|off", value_parser = parse_listener)]
    http_tls_listen: Option<Listener>,
    /// PEM certificate chain of the TLS listeners ([tls] cert_path).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the TLS listeners ([tls] key_path).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Accept any MQTT client and API caller without credentials (development only).
    #[arg(long)]
    allow_anonymous: bool,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        let listeners = [
            (self.mqtt_listen, &mut config.mqtt.listen),
            (self.mqtt5_listen, &mut config.mqtt.listen_v5),
            (self.mqtt_tls_listen, &mut config.mqtt.tls_listen),
            (self.mqtt5_tls_listen, &mut config.mqtt.tls_listen_v5),
            (self.http_listen, &mut config.http.listen),
            (self.http_tls_listen, &mut config.http.tls_listen),
        ];
        for (flag, setting) in listeners {
            if let Some(Listener(addr)) = flag {
                *setting = addr;
            }
        }
        if let (Some(cert_path), Some(key_path)) = (self.tls_cert, self.tls_key) {
            config.tls = Some(crate::config::TlsConfig { cert_path, key_path });
        }
        config.allow_anonymous |= self.allow_anonymous;
        config.check()?;
        Ok(config)
    }
}

/// A listen address from the command line; `None` = `off`.
#[derive(Debug, Clone, Copy)]
struct Listener(Option<SocketAddr>);

fn parse_listener(text: &str) -> Result<Listener, String> {
    crate::listener::parse(text).map(Listener)
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    crate::tls::install_crypto_provider();
    let result = match cli.command {
        None => run_server(cli.serve),
        Some(Command::Serve(args)) => run_server(args),
        Some(Command::Wire(command)) => command.run(),
        Some(Command::Token(command)) => command.run(),
        Some(Command::Plugin(command)) => command.run(),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Replay(args)) => replay::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_server(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("locusd")
        .build()?
        .block_on(crate::serve::serve(config, crate::serve::shutdown_signal()))
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // rumqttd logs every connection at info; keep it at warn unless asked.
    let filter = EnvFilter::try_from_env("LOCUS_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
