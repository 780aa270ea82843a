//! `locusd serve`: starts every part and stops them in order.
//!
//! Start, each part through its own `start`: store (and its checkpoint thread) → tokens →
//! `influx::start` (with `[influx]`) → `plugins::start` → `mqtt::start` (plain and TLS
//! listeners) → `PipelineHandle::start` (or, with `[broker] mode = "rabbitmq"`, no MQTT
//! listener: `cluster::rabbitmq::start` → `PipelineHandle::start_external`) → pruner →
//! `api::start` (HTTP and/or HTTPS).
//! Stop (the `shutdown` future; SIGINT/SIGTERM from the command line): HTTP and HTTPS stop
//! accepting, the pipeline stops taking reports, commits, flushes and acks what it took, a last
//! checkpoint is written, then `serve` returns. Reports still in the broker were never acked, so
//! devices resend them. If the pipeline ends on its own (the embedded broker's router died), the
//! same stop runs and `serve` returns an error, so locusd exits non-zero and its supervisor
//! restarts it.

use crate::api::{self, ApiState, HealthProbe};
use crate::auth::TokenAuthority;
use crate::cluster::BrokerMode;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::{Intake, PipelineHandle};
use crate::store::{Checkpointer, Store, StoreOptions};
use crate::{influx, mqtt, plugins};
use anyhow::Context as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Runs the server until `shutdown` resolves (the command line passes SIGINT/SIGTERM; tests
/// pass whatever they like), then stops every part in order.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
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
    let (stop_shipper, mut shipper_stopped) = tokio::sync::watch::channel(false);
    let mut shipper = None;
    if let Some(influx_config) = &config.influx {
        let stopped = async move {
            let _ = shipper_stopped.changed().await;
        };
        let started = influx::start(influx_config, &store, &metrics, stopped)
            .context("configuring the InfluxDB shipper ([influx])")?;
        intake = intake.with_influx_outbox(started.outbox);
        let handle = started.health;
        health.push(Arc::new(move || {
            ("influx".to_owned(), serde_json::to_value(handle.snapshot()).unwrap_or_default())
        }));
        shipper = Some(started.task);
    }

    let plugins = plugins::start(&config.plugins, &store)?;
    intake = intake.with_transform(Box::new(plugins.chain()));
    let deliveries = Arc::new(
        crate::notify::Deliveries::open(store.notifications_tree())
            .context("opening the notifications in the store")?,
    );
    intake =
        intake.with_notifications(crate::notify::Rules::new(&config.notify), deliveries.clone());
    let edges = crate::edges::EdgeRules::new(config.edges.clone(), auth.clone());
    intake = intake.with_edges(edges.clone());
    let (intake, orders) = intake.with_orders(&config.orders);
    let (intake, dead_letters) = intake.with_letter_desk();

    let active_orders = store.clone();
    let order_gate = Arc::new(move |order: &str| {
        active_orders.order_status(order).is_some_and(|status| !status.is_ended())
    });
    // The same policy, for a RabbitMQ broker's auth backend when it is on.
    let external_auth = config.http.rabbitmq_auth_backend.then(|| {
        let policy = mqtt::policy::TopicPolicy::new(order_gate.clone(), edges.clone());
        Arc::new(mqtt::external_auth::ExternalAuth::new(auth.clone(), policy, metrics.clone()))
    });
    let (stop_cluster, cluster_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut cluster = None;
    let mut pipeline = match (config.broker.mode, &config.broker.rabbitmq, &config.influx) {
        (BrokerMode::Rabbitmq, Some(rabbit), Some(influx_config)) => {
            // Devices connect to RabbitMQ: no MQTT listener here.
            drop((order_gate, edges));
            let records = influx::ack_records::AckRecords::new(influx_config)
                .context("configuring the ack records in InfluxDB ([influx])")?;
            let stopped = async move {
                let _ = cluster_stopped.await;
            };
            let worker_id = crate::cluster::worker_id(&config.data_dir)
                .with_context(|| format!("keeping a worker id in {}", config.data_dir.display()))?;
            let records = Arc::new(records);
            let started =
                crate::cluster::rabbitmq::start(rabbit, worker_id, records, store.clone(), stopped)
                    .map_err(anyhow::Error::msg)?;
            cluster = Some(started.task);
            PipelineHandle::start_external(intake, started.broker)?
        }
        _ => {
            let link = mqtt::start(
                &config.mqtt,
                config.tls.as_ref(),
                auth.clone(),
                order_gate,
                edges,
                metrics.clone(),
            )?;
            PipelineHandle::start(intake, link)?
        }
    };
    let pipeline_ended = pipeline.ended();

    let pruner = tokio::spawn(prune_forever(store.clone(), config.clone()));
    // Always running, rules or not: deliveries staged under an earlier configuration still go
    // (or die saying their channel is gone).
    let notifier = crate::notify::start(deliveries.clone(), config.notify.clone(), metrics.clone())
        .context("starting the notifier ([notify])")?;

    let state = ApiState {
        store: store.clone(),
        metrics: metrics.clone(),
        auth,
        max_page: config.http.max_page,
        health,
        plugins,
        orders,
        notifications: deliveries,
        external_auth,
        dead_letters,
        console: Arc::new(config.console.clone()),
        stopping: api::Stopping::default(),
    };
    // The API stops on `shutdown`; everything else stops after it, in order.
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = api::start(&config.http, config.tls.as_ref(), state, metrics.clone(), async {
        let _ = api_stopped.await;
    })
    .await?;
    let embedded = config.broker.mode == BrokerMode::Embedded;
    tracing::info!(
        broker = ?config.broker.mode,
        mqtt = ?config.mqtt.listen.filter(|_| embedded),
        mqtt5 = ?config.mqtt.listen_v5.filter(|_| embedded),
        mqtt_tls = ?config.mqtt.tls_listen.filter(|_| embedded),
        mqtt5_tls = ?config.mqtt.tls_listen_v5.filter(|_| embedded),
        http = ?config.http.listen,
        https = ?config.http.tls_listen,
        data_dir = %config.data_dir.display(),
        "locusd ready"
    );
    let http = tokio::spawn(http);
    // The pipeline ends on its own only when the embedded broker's router died: then stop, with
    // an error, so that a supervisor (systemd, Kubernetes) restarts locusd instead of it going on
    // accepting connections and answering health checks while storing and acking nothing.
    let failure = tokio::select! {
        () = shutdown => None,
        () = pipeline_ended => Some(anyhow::anyhow!(
            "the pipeline lost its link to the broker (the embedded broker's router stopped, or \
             the RabbitMQ connection task ended; see the error above): locusd stops so that it \
             can be restarted"
        )),
    };
    let _ = stop_api.send(());
    http.await?;

    tracing::info!("shutting down: draining the pipeline");
    pruner.abort();
    // A delivery cut off here is attempted again at the next start (at least once).
    notifier.abort();
    tokio::task::spawn_blocking(move || pipeline.shutdown()).await?;
    // After the pipeline: its last acks and settles go out through the connection first.
    let _ = stop_cluster.send(());
    if let Some(task) = cluster {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    store.flush().context("final flush")?;
    tokio::task::spawn_blocking(move || checkpointer.stop()).await?;
    if let Some(task) = shipper {
        // The log is durable: whatever the shipper has not written yet goes at the next start.
        let _ = stop_shipper.send(true);
        if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
            tracing::warn!("InfluxDB shipper did not stop in 5 s; the rest stays in the outbox");
        }
    }
    if let Some(failure) = failure {
        return Err(failure);
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn prune_forever(store: Store, config: Config) {
    let mut every = tokio::time::interval(Duration::from_secs(config.track.prune_interval_s));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let store = store.clone();
        let track = config.track.clone();
        let max_dead_letters = config.dead_letters.max_entries;
        let now = crate::pipeline::now_ms();
        let min_ts = now.saturating_sub(track.max_age_s * 1000);
        let ended_before = now.saturating_sub(config.orders.keep_ended_s * 1000);
        let pruned = tokio::task::spawn_blocking(move || {
            let fixes_and_letters =
                store.prune(min_ts, track.max_fixes_per_courier, max_dead_letters)?;
            let orders_and_receipts =
                store.prune_orders(ended_before)? + store.prune_receipts(now)?;
            Ok::<_, crate::store::StoreError>(fixes_and_letters + orders_and_receipts)
        })
        .await;
        match pruned {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => {
                tracing::debug!(removed, "pruned tracks, dead letters, orders and edge receipts")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "pruning task failed"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
