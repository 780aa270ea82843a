//! `locusd plugin new|build|deploy|test`: from nothing to a running plugin in three commands.

use crate::plugins::{scaffold, PluginHost, PluginHostConfig, PluginSettings};
use anyhow::Context as _;
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub(super) enum PluginCommand {
    /// Create a plugin crate NAME in the current directory (or --dir). Unchanged, it adds the
    /// attribute `scaffold` = NAME to every fix.
    New {
        /// The plugin's name (lowercase letters, digits, `-`).
        name: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build the plugin crate in DIR for wasm32-wasip2; the last line is the component's path.
    Build {
        /// The crate's directory (or its Cargo.toml).
        dir: PathBuf,
    },
    /// Deploy a component to a running server.
    Deploy {
        /// The component (.wasm).
        file: PathBuf,
        /// The plugin's name on the server.
        #[arg(long)]
        name: String,
        /// The server's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// An admin token (`locusd token admin`).
        #[arg(long, env = "LOCUS_ADMIN_TOKEN")]
        token: String,
        /// Settings as JSON: position, config, failure_policy, limits, capabilities.
        #[arg(long)]
        settings: Option<String>,
    },
    /// Run a component locally over a JSON array of fixes and print the outcomes.
    Test {
        /// The component (.wasm).
        file: PathBuf,
        /// A JSON file: an array of fixes ({"courier","ts","lat","lon",...}).
        #[arg(long)]
        input: PathBuf,
        /// Settings as JSON (the plugin's config is under "config").
        #[arg(long)]
        settings: Option<String>,
    },
}

fn settings(json: Option<&str>) -> anyhow::Result<PluginSettings> {
    json.map_or_else(
        || Ok(PluginSettings::default()),
        |text| serde_json::from_str(text).context("--settings is not valid plugin settings JSON"),
    )
}

fn read(file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

impl PluginCommand {
    pub(super) fn run(self) -> anyhow::Result<()> {
        match self {
            PluginCommand::New { name, dir } => {
                let path = scaffold::new_plugin(&dir, &name)?;
                eprintln!(
                    "created plugin crate; build it with: locusd plugin build {}",
                    path.display()
                );
                println!("{}", path.display());
            }
            PluginCommand::Build { dir } => {
                let manifest =
                    if dir.ends_with("Cargo.toml") { dir } else { dir.join("Cargo.toml") };
                let components = scaffold::build_components(&manifest)?;
                let last = components.last().context("the build produced no component")?;
                println!("{}", last.display());
            }
            PluginCommand::Deploy { file, name, server, token, settings: json } => {
                let bytes = read(&file)?;
                // Validate locally first for a quicker, clearer error; the server checks again.
                let settings_json = serde_json::to_string(&settings(json.as_deref())?)?;
                let url = format!("{}/v1/plugins/{name}", server.trim_end_matches('/'));
                let response = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(async {
                        let response = reqwest::Client::new()
                            .put(&url)
                            .bearer_auth(&token)
                            .header("content-type", "application/wasm")
                            .header("locus-plugin-settings", settings_json)
                            .body(bytes)
                            .send()
                            .await?;
                        let status = response.status();
                        Ok::<_, reqwest::Error>((status, response.text().await?))
                    })
                    .with_context(|| format!("PUT {url}"))?;
                let (status, body) = response;
                anyhow::ensure!(status.is_success(), "deploy refused ({status}): {body}");
                println!("{body}");
            }
            PluginCommand::Test { file, input, settings: json } => {
                let bytes = read(&file)?;
                let fixes = std::fs::read_to_string(&input)
                    .with_context(|| format!("reading {}", input.display()))?;
                // Building a host validates the engine config the server would use.
                drop(PluginHost::new(&PluginHostConfig::default())?);
                let report =
                    scaffold::test_plugin_json(&bytes, &settings(json.as_deref())?, &fixes)?;
                println!("{report}");
            }
        }
        Ok(())
    }
}
