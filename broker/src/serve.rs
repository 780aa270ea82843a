//! `locusd serve`: starts every part and stops them in order.
//!
//! Start: store (and its checkpoint thread) → tokens → InfluxDB outbox and shipper (with `[influx]`) → plugin chain →
//! embedded broker (plain and TLS listeners) → pipeline threads → pruner → HTTP API (HTTP and/or
//! HTTPS).
//! Stop (SIGINT/SIGTERM): HTTP and HTTPS stop accepting, the pipeline stops taking reports, commits,
//! flushes and acks what it took, a last checkpoint is written, then the process exits 0. Reports still in the broker were
//! never acked, so devices resend them.

use crate::api::{self, ApiState, HealthProbe};
use crate::auth::TokenAuthority;
use crate::config::Config;
use crate::influx;
use crate::metrics::Metrics;
use crate::pipeline::{Intake, PipelineHandle};
use crate::plugins::{PluginHost, PluginRegistry};
use crate::store::{Checkpointer, DeadLetter, Store, StoreOptions};
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    config.check()?;
    let options = StoreOptions::new(&config.store, config.influx.is_some());
    let store = Store::open_with(&config.data_dir.join("db"), options)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let checkpointer = Checkpointer::start(
        store.clone(),
        Duration::from_millis(config.store.checkpoint_interval_ms),
    )?;
    let auth = if config.allow_anonymous {
        tracing::warn!(
            "anonymous access is allowed: any MQTT client may publish and any HTTP client may \
             read. Use this for development only."
        );
        None
    } else {
        Some(Arc::new(TokenAuthority::open(&config.data_dir)?))
    };
    let metrics = Arc::new(Metrics::new());

    let mut intake = Intake::new(config.pipeline.clone(), store.clone(), metrics.clone());
    let mut health: Vec<HealthProbe> = Vec::new();
    let (stop_shipper, shipper_stopped) = tokio::sync::watch::channel(false);
    let mut shipper = None;
    if let Some(influx_config) = &config.influx {
        let wiring = start_influx(influx_config, &store, &metrics, shipper_stopped)?;
        intake = intake.with_influx_outbox(wiring.outbox);
        health.push(wiring.health);
        shipper = Some(wiring.task);
    }

    let plugins = start_plugins(&config, &store)?;
    intake = intake.with_transform(Box::new(plugins.chain()));

    let link =
        crate::mqtt::start(&config.mqtt, config.tls.as_ref(), auth.clone(), metrics.clone())?;
    let pipeline = PipelineHandle::start(intake, link)?;

    let pruner = tokio::spawn(prune_forever(store.clone(), config.clone()));

    let plain_http = match config.http.listen {
        Some(addr) => Some(bind_http(addr, "--http-listen / [http] listen").await?),
        None => None,
    };
    let https = match (config.http.tls_listen, &config.tls) {
        (Some(addr), Some(tls)) => {
            let server_config = crate::tls::server_config(tls)?;
            let listener = bind_http(addr, "--http-tls-listen / [http] tls_listen").await?;
            Some(crate::tls::TlsListener::new(listener, server_config)?)
        }
        (Some(_), None) => anyhow::bail!("[http] tls_listen needs [tls] cert_path and key_path"),
        (None, _) => None,
    };
    let state = ApiState {
        store: store.clone(),
        metrics: metrics.clone(),
        auth,
        max_page: config.http.max_page,
        health,
        plugins,
    };
    tracing::info!(
        mqtt = ?config.mqtt.listen,
        mqtt5 = ?config.mqtt.listen_v5,
        mqtt_tls = ?config.mqtt.tls_listen,
        mqtt5_tls = ?config.mqtt.tls_listen_v5,
        http = ?config.http.listen,
        https = ?config.http.tls_listen,
        data_dir = %config.data_dir.display(),
        "locusd ready"
    );
    // One signal stops both HTTP servers; each drains its own connections.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let stop_signal = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let limits = api::server::HttpLimits {
        header_read_timeout: Duration::from_millis(config.http.header_read_timeout_ms),
        request_timeout: Duration::from_millis(config.http.request_timeout_ms),
        max_body_bytes: config.http.max_body_bytes,
    };
    let router = api::server::with_limits(api::router(state), limits, metrics.clone());
    let plain_server = async {
        if let Some(listener) = plain_http {
            let stopped = stop_signal(stopped.clone());
            api::server::serve(listener, router.clone(), limits, metrics.clone(), stopped).await;
        }
    };
    let tls_server = async {
        if let Some(listener) = https {
            let stopped = stop_signal(stopped.clone());
            api::server::serve(listener, router.clone(), limits, metrics.clone(), stopped).await;
        }
    };
    tokio::join!(plain_server, tls_server);

    tracing::info!("shutting down: draining the pipeline");
    pruner.abort();
    tokio::task::spawn_blocking(move || pipeline.shutdown()).await?;
    store.flush().context("final flush")?;
    tokio::task::spawn_blocking(move || checkpointer.stop()).await?;
    if let Some(task) = shipper {
        // The outbox is durable: whatever the shipper has not written yet goes at the next start.
        let _ = stop_shipper.send(true);
        if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
            tracing::warn!("InfluxDB shipper did not stop in 5 s; the rest stays in the outbox");
        }
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn bind_http(
    addr: std::net::SocketAddr,
    setting: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for HTTP on {addr} (set {setting} to a free address)")
    })
}

/// Loads the deployed plugins (sled tree `plugins`) and the plugins directory. A plugin that
/// cannot load is logged and left out; it never stops the server.
pub(crate) fn start_plugins(config: &Config, store: &Store) -> anyhow::Result<Arc<PluginRegistry>> {
    let host = PluginHost::new(&config.plugins).context("starting the plugin host")?;
    let tree = store.plugins_tree().context("opening the plugins tree")?;
    let (registry, problems) = PluginRegistry::open(host, tree, config.plugins.dir.as_deref())
        .context("loading plugins")?;
    let loaded = registry.list();
    tracing::info!(
        plugins = loaded.len(),
        not_loaded = problems.len(),
        "plugin chain: {}",
        loaded.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(" → ")
    );
    Ok(Arc::new(registry))
}

/// What `[influx]` adds to the server.
struct InfluxWiring {
    outbox: influx::Outbox,
    health: HealthProbe,
    task: tokio::task::JoinHandle<()>,
}

fn start_influx(
    config: &influx::InfluxConfig,
    store: &Store,
    metrics: &Arc<Metrics>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<InfluxWiring> {
    let outbox = influx::Outbox::open(store, config);
    let influx_metrics = influx::InfluxMetrics::default();
    metrics.register_with(|registry| influx_metrics.register(registry));
    let (sink_store, sink_metrics) = (store.clone(), metrics.clone());
    let sink: influx::DeadLetterSink = Arc::new(move |letters: Vec<DeadLetter>| {
        for letter in &letters {
            sink_metrics.dead_letter(&letter.reason);
        }
        sink_store.record_dead_letters(letters)?;
        Ok(())
    });
    let shipper = influx::Shipper::new(outbox.clone(), config, influx_metrics, sink)
        .context("configuring the InfluxDB shipper ([influx])")?;
    let handle = shipper.health();
    tracing::info!(url = %config.url, "shipping fixes to InfluxDB");
    Ok(InfluxWiring {
        outbox,
        health: Arc::new(move || {
            ("influx".to_owned(), serde_json::to_value(handle.snapshot()).unwrap_or_default())
        }),
        task: tokio::spawn(shipper.run(async move {
            let _ = stopped.changed().await;
        })),
    })
}

async fn prune_forever(store: Store, config: Config) {
    let mut every = tokio::time::interval(Duration::from_secs(config.track.prune_interval_s));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let store = store.clone();
        let track = config.track.clone();
        let max_dead_letters = config.dead_letters.max_entries;
        let min_ts = crate::pipeline::now_ms().saturating_sub(track.max_age_s * 1000);
        let pruned = tokio::task::spawn_blocking(move || {
            store.prune(min_ts, track.max_fixes_per_courier, max_dead_letters)
        })
        .await;
        match pruned {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::debug!(removed, "pruned tracks and dead letters"),
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "pruning task failed"),
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
