//! A locusd worker on a RabbitMQ cluster: the AMQP side of cluster mode.
//!
//! Enters: devices' MQTT publishes as RabbitMQ routes them. Leaves: [`Delivery`]s for the
//! pipeline; the committer's acks, order announcements and fix stream published back on
//! `amq.topic` (where RabbitMQ's MQTT plugin delivers them to MQTT subscribers); deliveries
//! settled once their commit is acked.
//!
//! Topology, declared (idempotently) by every worker on every connection:
//!
//! ```text
//! amq.topic ──couriers.*.locations, edge.*.batches──▶ locus.reports
//!     (x-consistent-hash: the routing key, so the courier or the edge, picks the partition)
//!     ──▶ quorum queues locus.reports.0 … locus.reports.{N-1} (single active consumer)
//! amq.topic ──couriers.*.events──▶ quorum queue locus.events (single active consumer)
//!     ──▶ one worker forwards each to locus.reports as couriers.{id}.locations, with header
//!     x-locus-topic = couriers/{id}/events: events share the courier's seqs with its
//!     reports, so they must reach the partition of its locations, and the hash only sees
//!     the whole routing key
//! amq.topic ──fixes.#, fixes-wire.#──▶ locus.fixes (topic): the live fix stream for AMQP
//!     consumers; MQTT readers subscribe to fixes/+ (fixes-wire/+) as in embedded mode
//! locus.log (a RabbitMQ stream): every log entry a worker committed and acked, which every
//!     other worker applies to its views, so any worker answers any read
//! ```
//!
//! Each partition queue has one active consumer among the workers; the others wait as
//! standbys and RabbitMQ hands the queue to one of them when the active one's connection
//! goes, with every unsettled delivery. Before the first delivery a consumer passes on, the
//! worker reads every courier's ack record from InfluxDB ([`AckRecords`]) into its store, so
//! what the previous owner acked is a duplicate here, whatever this worker's disk says.
//!
//! The log stream keeps `log_max_age` of entries. A worker reads it from the offset after the
//! last entry it applied (kept in its store with that entry), or from the start of what is
//! kept when its disk is new; it skips its own entries (by the worker id in `app_id`).

use super::config::{redact, RabbitConfig};
use crate::influx::ack_records::AckRecords;
use crate::mqtt::external_auth::{mqtt_topic, routing_key};
use crate::pipeline::{
    Delivery, DeliveryKind, ExternalBroker, ExternalOutlet, OutletError, Settle,
    REPLICA_PROGRESS_KEY,
};
use crate::store::{SeqWindow, Store};
use amqprs::callbacks::{DefaultChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments, ExchangeBindArguments, ExchangeDeclareArguments, QueueBindArguments,
    QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::security::SecurityCredentials;
use amqprs::{BasicProperties, FieldTable, FieldValue, DELIVERY_MODE_PERSISTENT};
use bytes::Bytes;
use locus_sdk::topics;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The exchange devices' MQTT publishes arrive on (RabbitMQ's MQTT plugin default).
pub const MQTT_EXCHANGE: &str = "amq.topic";
/// The consistent-hash exchange that partitions reports.
pub const REPORTS_EXCHANGE: &str = "locus.reports";
/// The fix stream's exchange for AMQP consumers.
pub use crate::mqtt::external_auth::FIXES_EXCHANGE;
/// The stream of log entries workers share.
pub const LOG_STREAM: &str = "locus.log";
/// The consumer number of the log stream in [`Settle`]s (partitions are `0..N`).
const LOG_CONSUMER: u32 = u32::MAX;
/// Routing keys (AMQP form of the MQTT topics) of what the partitions take.
const REPORT_KEYS: [&str; 2] = ["couriers.*.locations", "edge.*.batches"];
/// Couriers' order events, on their way to their courier's partition.
pub const EVENTS_QUEUE: &str = "locus.events";
/// The header a forwarded event carries: its MQTT topic (its routing key is its courier's
/// locations topic, for the hash).
const TOPIC_HEADER: &str = "x-locus-topic";

/// The name of partition `p`'s queue.
pub fn partition_queue(p: u32) -> String {
    format!("{REPORTS_EXCHANGE}.{p}")
}

/// What the committer asks of the connection task.
#[derive(Debug)]
enum Command {
    /// Fire and forget: acks and order announcements (a lost one is sent again when the
    /// device resends, or with the next change).
    Publish {
        routing_key: String,
        payload: Vec<u8>,
    },
    /// Stream messages and log entries, answered once RabbitMQ confirmed them all.
    PublishConfirmed {
        stream: Vec<(String, Vec<u8>)>,
        log_entries: Vec<Vec<u8>>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    Settle(Vec<Settle>),
}

/// A running worker connection: what the pipeline needs, and the task that keeps it up.
#[allow(missing_debug_implementations)] // holds the pipeline's trait object
pub struct Started {
    /// Give this to `PipelineHandle::start_external`.
    pub broker: ExternalBroker,
    /// The connection task; it ends when `shutdown` resolves.
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the worker's connection task (it connects, and reconnects, on its own) and returns
/// the pipeline's side of it.
pub fn start(
    config: &RabbitConfig,
    worker_id: String,
    records: Arc<AckRecords>,
    store: Store,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Started, String> {
    let mut targets = Vec::new();
    for url in &config.amqp_urls {
        let mut args = OpenConnectionArguments::try_from(url.as_str())
            .map_err(|e| format!("broker.rabbitmq.amqp_urls: {url:?}: {e}"))?;
        if let Some(var) = &config.password_env {
            let password = std::env::var(var).map_err(|_| {
                format!("broker.rabbitmq.password_env names {var}, which is not set")
            })?;
            let user =
                reqwest::Url::parse(url).map(|u| u.username().to_owned()).unwrap_or_default();
            args.credentials(SecurityCredentials::new_plain(&user, &password));
        }
        // The AMQP URI spec's vhost is the path, percent-decoded ("/%2f" is "/"); amqprs
        // takes it without decoding.
        args.virtual_host(&vhost_of(url));
        args.connection_name(&format!("locusd-worker-{}", config.worker_index));
        targets.push((redact(url), args));
    }
    let (deliveries_tx, deliveries) = flume::unbounded();
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let worker = Worker {
        config: config.clone(),
        worker_id,
        targets,
        records: records.clone(),
        store,
        deliveries: deliveries_tx,
        recovering: Arc::new(tokio::sync::Mutex::new(())),
    };
    let task = tokio::spawn(async move {
        tokio::select! {
            () = shutdown => {}
            () = worker.run(commands) => {}
        }
    });
    let outlet =
        AmqpOutlet { commands: commands_tx, records, runtime: tokio::runtime::Handle::current() };
    let broker = ExternalBroker {
        deliveries,
        outlet: Box::new(outlet),
        stream_demand: crate::mqtt::StreamDemand::always(),
    };
    Ok(Started { broker, task })
}

/// The vhost an AMQP URL names: its path without the leading `/`, percent-decoded; `/`
/// when it has none.
fn vhost_of(url: &str) -> String {
    let path = reqwest::Url::parse(url).map(|u| u.path().to_owned()).unwrap_or_default();
    let raw = path.strip_prefix('/').unwrap_or(&path).as_bytes();
    if raw.is_empty() {
        return "/".to_owned();
    }
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (raw[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

struct Worker {
    config: RabbitConfig,
    /// Marks this worker's entries in the log stream.
    worker_id: String,
    targets: Vec<(String, OpenConnectionArguments)>,
    records: Arc<AckRecords>,
    store: Store,
    deliveries: flume::Sender<Delivery>,
    /// One ack-record recovery at a time (partitions taken over together share the work).
    recovering: Arc<tokio::sync::Mutex<()>>,
}

impl Worker {
    /// Connects (trying each node in turn), declares the topology, consumes, publishes and
    /// settles until the connection fails, then starts over. Each connection is a new
    /// generation: settles of deliveries from an older one are dropped (RabbitMQ already
    /// delivered those again, to this worker or another).
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut generation = 0u64;
        let mut next = 0usize;
        let mut backoff = Duration::from_millis(200);
        loop {
            let (name, args) = &self.targets[next % self.targets.len()];
            next += 1;
            let connection = match self.connect(args).await {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "cannot reach RabbitMQ; trying the next node");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            generation += 1;
            tracing::info!(node = %name, generation, "connected to RabbitMQ");
            if let Err(e) = self.serve(&connection, generation, &mut commands).await {
                tracing::warn!(node = %name, error = %e, "RabbitMQ connection lost; reconnecting");
            }
            let _ = connection.close().await;
            if self.deliveries.is_disconnected() {
                return;
            }
        }
    }

    async fn connect(&self, args: &OpenConnectionArguments) -> Result<Connection, String> {
        let connection = Connection::open(args).await.map_err(|e| e.to_string())?;
        connection.register_callback(DefaultConnectionCallback).await.map_err(|e| e.to_string())?;
        Ok(connection)
    }

    /// One connection's life.
    async fn serve(
        &self,
        connection: &Connection,
        generation: u64,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), String> {
        let publisher = open_channel(connection).await?;
        declare_topology(&publisher, &self.config).await?;
        // The stream and the log entries go on a channel of their own with publisher
        // confirms: acks wait for them.
        let mut confirmed = ConfirmedChannel::open(connection).await?;
        let mut consumers: HashMap<u32, Channel> = HashMap::new();
        consumers.insert(LOG_CONSUMER, self.follow_log(connection, generation).await?);
        let (first, later): (Vec<u32>, Vec<u32>) = (0..self.config.partitions)
            .partition(|p| p % self.config.workers == self.config.worker_index);
        self.forward_events(connection).await?;
        for &p in &first {
            consumers.insert(p, self.consume(connection, p, generation).await?);
        }
        tracing::info!(partitions = ?first, "registered as first consumer");
        let standby = tokio::time::sleep(Duration::from_millis(self.config.standby_after_ms));
        tokio::pin!(standby);
        let mut later = Some(later);
        loop {
            tokio::select! {
                failed = connection.listen_network_io_failure() => {
                    return Err(format!("connection closed (I/O failure: {failed})"));
                }
                () = &mut standby, if later.is_some() => {
                    let later = later.take().unwrap_or_default();
                    for &p in &later {
                        consumers.insert(p, self.consume(connection, p, generation).await?);
                    }
                    tracing::info!(partitions = ?later, "registered as standby consumer");
                }
                command = commands.recv() => match command {
                    None => return Ok(()),
                    Some(Command::Publish { routing_key, payload }) => {
                        let args = BasicPublishArguments::new(MQTT_EXCHANGE, &routing_key);
                        publisher
                            .basic_publish(BasicProperties::default(), payload, args)
                            .await
                            .map_err(|e| format!("publishing on {routing_key}: {e}"))?;
                    }
                    Some(Command::PublishConfirmed { stream, log_entries, done }) => {
                        let sent = self
                            .publish_confirmed(&mut confirmed, stream, log_entries)
                            .await;
                        let failed = sent.as_ref().err().cloned();
                        let _ = done.send(sent);
                        if let Some(e) = failed {
                            return Err(e);
                        }
                    }
                    Some(Command::Settle(settles)) => {
                        for settle in settles.into_iter().filter(|s| s.generation == generation) {
                            let Some(channel) = consumers.get(&settle.consumer) else { continue };
                            channel
                                .basic_ack(BasicAckArguments::new(settle.tag, false))
                                .await
                                .map_err(|e| format!("settling a delivery: {e}"))?;
                        }
                    }
                },
            }
        }
    }

    /// Registers as a consumer of partition `p` (active or standby, as RabbitMQ decides) on a
    /// channel of its own, and forwards its deliveries to the pipeline.
    async fn consume(
        &self,
        connection: &Connection,
        p: u32,
        generation: u64,
    ) -> Result<Channel, String> {
        let channel = open_consumer_channel(connection, self.config.prefetch).await?;
        let queue = partition_queue(p);
        let args = BasicConsumeArguments::new(&queue, "").manual_ack(true).finish();
        let (_, mut rx) =
            channel.basic_consume_rx(args).await.map_err(|e| format!("consuming {queue}: {e}"))?;
        let deliveries = self.deliveries.clone();
        let (records, store, recovering) =
            (self.records.clone(), self.store.clone(), self.recovering.clone());
        tokio::spawn(async move {
            let mut recovered = false;
            while let Some(message) = rx.recv().await {
                let (Some(deliver), Some(content)) = (message.deliver, message.content) else {
                    continue;
                };
                if !recovered {
                    // Active now (first delivery since registering): learn what the
                    // partition's previous owner acked before taking anything in.
                    tracing::info!(partition = p, "partition active here; reading ack records");
                    recover(&records, &store, &recovering).await;
                    recovered = true;
                }
                // A forwarded event names its topic in a header (only workers can publish to
                // locus.reports); anything else is the MQTT topic of its routing key.
                let forwarded = message.basic_properties.as_ref().and_then(|p| {
                    match p.headers()?.get(&TOPIC_HEADER.try_into().expect("short"))? {
                        FieldValue::S(topic) => Some(topic.to_string()),
                        _ => None,
                    }
                });
                let topic = forwarded.unwrap_or_else(|| mqtt_topic(deliver.routing_key()));
                let topic = Bytes::from(topic);
                let settle = Settle { consumer: p, generation, tag: deliver.delivery_tag() };
                let kind = DeliveryKind::Publish { topic };
                let delivery = Delivery { kind, payload: Bytes::from(content), settle };
                if deliveries.send(delivery).is_err() {
                    return;
                }
            }
        });
        Ok(channel)
    }
}

impl Worker {
    /// Consumes `locus.events` (one worker at a time) and forwards each event into its
    /// courier's partition, acking it once RabbitMQ confirmed the forward: at least once, and
    /// the partition's seqs make a repeat a duplicate.
    async fn forward_events(&self, connection: &Connection) -> Result<(), String> {
        let channel = open_consumer_channel(connection, self.config.prefetch).await?;
        let mut forward = ConfirmedChannel::open(connection).await?;
        let args = BasicConsumeArguments::new(EVENTS_QUEUE, "").manual_ack(true).finish();
        let (_, mut rx) = channel
            .basic_consume_rx(args)
            .await
            .map_err(|e| format!("consuming {EVENTS_QUEUE}: {e}"))?;
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                let (Some(deliver), Some(content)) = (message.deliver, message.content) else {
                    continue;
                };
                let topic = mqtt_topic(deliver.routing_key());
                // Not `topics::courier_of_events`: an invalid id goes on to the partition too,
                // whose intake dead-letters it with its reason (the binding admits nothing but
                // `couriers.*.events`).
                let courier =
                    topic.strip_prefix("couriers/").and_then(|t| t.strip_suffix("/events"));
                let Some(courier) = courier else {
                    let _ = channel
                        .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
                        .await;
                    continue;
                };
                let mut headers = FieldTable::new();
                let Ok(topic_value) = topic.as_str().try_into() else { continue };
                headers.insert(TOPIC_HEADER.try_into().expect("short"), FieldValue::S(topic_value));
                let mut properties = BasicProperties::default();
                properties.with_delivery_mode(DELIVERY_MODE_PERSISTENT).with_headers(headers);
                // Its courier's locations key: the hash puts it in that courier's partition.
                let key = routing_key(&topics::locations(courier));
                let confirmed =
                    match forward.publish(REPORTS_EXCHANGE, &key, properties, content).await {
                        Ok(tag) => forward.wait_through(tag).await,
                        Err(e) => Err(e),
                    };
                if let Err(e) = confirmed {
                    // Not acked: RabbitMQ delivers it again once this connection is gone.
                    tracing::warn!(error = %e, "cannot forward a courier's event to its partition");
                    return;
                }
                let ack = BasicAckArguments::new(deliver.delivery_tag(), false);
                if channel.basic_ack(ack).await.is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    /// Publishes stream messages (persistent, to `amq.topic`, which routes them to MQTT
    /// readers and `locus.fixes`) and log entries (into the log stream, marked with this
    /// worker's id), then waits until RabbitMQ confirmed every one.
    async fn publish_confirmed(
        &self,
        channel: &mut ConfirmedChannel,
        stream: Vec<(String, Vec<u8>)>,
        log_entries: Vec<Vec<u8>>,
    ) -> Result<(), String> {
        let mut last = None;
        for (topic, payload) in stream {
            let content_type = match topic.starts_with("fixes-wire/") {
                true => "application/octet-stream",
                false => "application/json",
            };
            let mut properties = BasicProperties::default();
            properties.with_delivery_mode(DELIVERY_MODE_PERSISTENT).with_content_type(content_type);
            let key = routing_key(&topic);
            last = Some(channel.publish(MQTT_EXCHANGE, &key, properties, payload).await?);
        }
        for entry in log_entries {
            let mut properties = BasicProperties::default();
            properties.with_delivery_mode(DELIVERY_MODE_PERSISTENT).with_app_id(&self.worker_id);
            // The default exchange routes by queue name: straight into the stream.
            last = Some(channel.publish("", LOG_STREAM, properties, entry).await?);
        }
        match last {
            None => Ok(()),
            Some(last) => channel.wait_through(last).await,
        }
    }

    /// Reads the log stream from after the last entry this worker applied (from the start of
    /// what the stream keeps on a new disk) and hands other workers' entries to the pipeline.
    async fn follow_log(
        &self,
        connection: &Connection,
        generation: u64,
    ) -> Result<Channel, String> {
        // A stream consumer needs a prefetch; its acks are credit, not removal.
        let channel = open_consumer_channel(connection, self.config.prefetch).await?;
        let applied = self
            .store
            .replay_progress(REPLICA_PROGRESS_KEY)
            .map_err(|e| e.to_string())?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes));
        let offset = match applied {
            Some(offset) => FieldValue::l(i64::try_from(offset + 1).unwrap_or(i64::MAX)),
            None => FieldValue::S("first".try_into().expect("short")),
        };
        let mut arguments = FieldTable::new();
        arguments.insert("x-stream-offset".try_into().expect("short"), offset);
        let mut args = BasicConsumeArguments::new(LOG_STREAM, "").manual_ack(true).finish();
        args.arguments(arguments);
        let (_, mut rx) = channel
            .basic_consume_rx(args)
            .await
            .map_err(|e| format!("consuming {LOG_STREAM}: {e}"))?;
        let deliveries = self.deliveries.clone();
        let own = self.worker_id.clone();
        let ack_own = channel.clone();
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                let (Some(deliver), Some(content)) = (message.deliver, message.content) else {
                    continue;
                };
                let tag = deliver.delivery_tag();
                let properties = message.basic_properties.unwrap_or_default();
                let stream_offset = properties
                    .headers()
                    .and_then(|h| h.get(&"x-stream-offset".try_into().expect("short")))
                    .and_then(|v| match v {
                        FieldValue::l(offset) => u64::try_from(*offset).ok(),
                        _ => None,
                    });
                let (Some(offset), false) =
                    (stream_offset, properties.app_id().is_some_and(|id| *id == own))
                else {
                    // Its own entries (or one without an offset): nothing to apply.
                    let _ = ack_own.basic_ack(BasicAckArguments::new(tag, false)).await;
                    continue;
                };
                let settle = Settle { consumer: LOG_CONSUMER, generation, tag };
                let kind = DeliveryKind::Replica { offset };
                if deliveries
                    .send(Delivery { kind, payload: Bytes::from(content), settle })
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(channel)
    }
}

/// Publisher confirms of one channel: the tags published and not yet confirmed.
#[derive(Debug, Clone, Default)]
struct Confirms {
    state: Arc<std::sync::Mutex<ConfirmState>>,
    changed: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Default)]
struct ConfirmState {
    waiting: std::collections::BTreeSet<u64>,
    refused: bool,
}

impl Confirms {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConfirmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tag `tag` is about to be published.
    fn expect(&self, tag: u64) {
        self.lock().waiting.insert(tag);
    }

    /// Tags up to `tag` (or just `tag`) are confirmed, or refused.
    fn settled(&self, tag: u64, multiple: bool, refused: bool) {
        let mut state = self.lock();
        match multiple {
            true => state.waiting = state.waiting.split_off(&(tag + 1)),
            false => {
                state.waiting.remove(&tag);
            }
        }
        state.refused |= refused;
        drop(state);
        self.changed.notify_waiters();
    }

    /// Waits until every tag up to `last` is confirmed.
    async fn wait_through(&self, last: u64, patience: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before the state is read, so a confirm that lands in between still
            // wakes it (`notify_waiters` only wakes registered waiters).
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                if std::mem::take(&mut state.refused) {
                    return Err("RabbitMQ refused a stream message or log entry".into());
                }
                if state.waiting.first().is_none_or(|first| *first > last) {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(format!("RabbitMQ did not confirm within {patience:?}"));
            }
        }
    }
}

#[async_trait::async_trait]
impl amqprs::callbacks::ChannelCallback for Confirms {
    async fn close(
        &mut self,
        _channel: &Channel,
        close: amqprs::CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        tracing::warn!(%close, "RabbitMQ closed the confirmed channel");
        self.settled(u64::MAX - 1, true, true);
        Ok(())
    }
    async fn cancel(
        &mut self,
        _channel: &Channel,
        _cancel: amqprs::Cancel,
    ) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(
        &mut self,
        _channel: &Channel,
        active: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _channel: &Channel, ack: amqprs::Ack) {
        self.settled(ack.delivery_tag(), ack.mutiple(), false);
    }
    async fn publish_nack(&mut self, _channel: &Channel, nack: amqprs::Nack) {
        self.settled(nack.delivery_tag(), nack.multiple(), true);
    }
    async fn publish_return(
        &mut self,
        _channel: &Channel,
        _ret: amqprs::Return,
        _basic_properties: BasicProperties,
        _content: Vec<u8>,
    ) {
    }
}

/// Reads every courier's ack record into the store, retrying until InfluxDB answers: taking
/// deliveries in before would ack seqs the previous owner already stored as new, and a device
/// told a lower watermark than it had could wait on gaps that never fill.
async fn recover(records: &AckRecords, store: &Store, recovering: &tokio::sync::Mutex<()>) {
    let _one_at_a_time = recovering.lock().await;
    let mut backoff = Duration::from_millis(200);
    loop {
        match records.read_all().await {
            Ok(all) => {
                for (courier, window) in &all {
                    store.merge_seqs(courier, window);
                }
                tracing::info!(couriers = all.len(), "ack records read from InfluxDB");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read ack records from InfluxDB; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn open_channel(connection: &Connection) -> Result<Channel, String> {
    let channel =
        connection.open_channel(None).await.map_err(|e| format!("opening a channel: {e}"))?;
    channel
        .register_callback(DefaultChannelCallback)
        .await
        .map_err(|e| format!("opening a channel: {e}"))?;
    Ok(channel)
}

/// A channel for a consumer: at most `prefetch` deliveries unsettled on it.
async fn open_consumer_channel(connection: &Connection, prefetch: u16) -> Result<Channel, String> {
    let channel = open_channel(connection).await?;
    channel
        .basic_qos(BasicQosArguments::new(0, prefetch, false))
        .await
        .map_err(|e| format!("setting prefetch: {e}"))?;
    Ok(channel)
}

/// A channel whose publishes RabbitMQ confirms: it numbers them as the broker does (1, 2, …
/// per channel), so a publish's tag is the one its confirm will carry.
struct ConfirmedChannel {
    channel: Channel,
    confirms: Confirms,
    next_tag: u64,
}

impl ConfirmedChannel {
    async fn open(connection: &Connection) -> Result<ConfirmedChannel, String> {
        let channel = connection.open_channel(None).await.map_err(|e| e.to_string())?;
        let confirms = Confirms::default();
        channel.register_callback(confirms.clone()).await.map_err(|e| e.to_string())?;
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await
            .map_err(|e| format!("turning on publisher confirms: {e}"))?;
        Ok(ConfirmedChannel { channel, confirms, next_tag: 1 })
    }

    /// Publishes; returns the tag to wait for.
    async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        payload: Vec<u8>,
    ) -> Result<u64, String> {
        let tag = self.next_tag;
        self.confirms.expect(tag);
        let args = BasicPublishArguments::new(exchange, routing_key);
        self.channel
            .basic_publish(properties, payload, args)
            .await
            .map_err(|e| format!("publishing on {routing_key}: {e}"))?;
        self.next_tag += 1;
        Ok(tag)
    }

    /// Waits until RabbitMQ confirmed every publish up to `tag`.
    async fn wait_through(&self, tag: u64) -> Result<(), String> {
        self.confirms.wait_through(tag, Duration::from_secs(30)).await
    }
}

/// Declares the exchanges, the partition queues, the log stream and their bindings (see the
/// module doc).
async fn declare_topology(channel: &Channel, config: &RabbitConfig) -> Result<(), String> {
    let failed = |what: &str| {
        let what = what.to_owned();
        move |e: amqprs::error::Error| format!("declaring {what}: {e}")
    };
    let mut reports = ExchangeDeclareArguments::new(REPORTS_EXCHANGE, "x-consistent-hash");
    reports.durable(true);
    channel.exchange_declare(reports).await.map_err(failed(REPORTS_EXCHANGE))?;
    let mut fixes = ExchangeDeclareArguments::new(FIXES_EXCHANGE, "topic");
    fixes.durable(true);
    channel.exchange_declare(fixes).await.map_err(failed(FIXES_EXCHANGE))?;
    for key in REPORT_KEYS {
        let bind = ExchangeBindArguments::new(REPORTS_EXCHANGE, MQTT_EXCHANGE, key);
        channel.exchange_bind(bind).await.map_err(failed(key))?;
    }
    for key in ["fixes.#", "fixes-wire.#"] {
        let bind = ExchangeBindArguments::new(FIXES_EXCHANGE, MQTT_EXCHANGE, key);
        channel.exchange_bind(bind).await.map_err(failed(key))?;
    }
    let quorum = |arguments: &mut FieldTable| {
        let key = |k: &str| k.try_into().expect("a short AMQP field name");
        let text = |v: &str| FieldValue::S(v.try_into().expect("short"));
        arguments.insert(key("x-queue-type"), text("quorum"));
        arguments.insert(key("x-single-active-consumer"), FieldValue::t(true));
        // Leaders spread over the nodes, not all on the one workers reached first.
        arguments.insert(key("x-queue-leader-locator"), text("balanced"));
    };
    let mut arguments = FieldTable::new();
    quorum(&mut arguments);
    let mut declare = QueueDeclareArguments::durable_client_named(EVENTS_QUEUE);
    declare.arguments(arguments);
    channel.queue_declare(declare).await.map_err(failed(EVENTS_QUEUE))?;
    let bind = QueueBindArguments::new(EVENTS_QUEUE, MQTT_EXCHANGE, "couriers.*.events");
    channel.queue_bind(bind).await.map_err(failed(EVENTS_QUEUE))?;
    let mut arguments = FieldTable::new();
    let key = |k: &str| k.try_into().expect("a short AMQP field name");
    arguments.insert(key("x-queue-type"), FieldValue::S("stream".try_into().expect("short")));
    let age = config.log_max_age.as_str().try_into().map_err(|_| "log_max_age too long")?;
    arguments.insert(key("x-max-age"), FieldValue::S(age));
    let mut declare = QueueDeclareArguments::durable_client_named(LOG_STREAM);
    declare.arguments(arguments);
    channel.queue_declare(declare).await.map_err(failed(LOG_STREAM))?;
    for p in 0..config.partitions {
        let queue = partition_queue(p);
        let mut arguments = FieldTable::new();
        quorum(&mut arguments);
        let mut declare = QueueDeclareArguments::durable_client_named(&queue);
        declare.arguments(arguments);
        channel.queue_declare(declare).await.map_err(failed(&queue))?;
        // The binding key of a consistent-hash exchange is the partition's weight.
        let bind = QueueBindArguments::new(&queue, REPORTS_EXCHANGE, "1");
        channel.queue_bind(bind).await.map_err(failed(&queue))?;
    }
    Ok(())
}

/// The committer's side: publishes and settles through the connection task, writes ack
/// records itself (the committer thread blocks on them; acks wait for them anyway).
struct AmqpOutlet {
    commands: mpsc::UnboundedSender<Command>,
    records: Arc<AckRecords>,
    runtime: tokio::runtime::Handle,
}

impl ExternalOutlet for AmqpOutlet {
    fn publish(&mut self, topic: &str, payload: Vec<u8>, _retain: bool) -> Result<(), OutletError> {
        let routing_key = routing_key(topic);
        self.commands
            .send(Command::Publish { routing_key, payload })
            .map_err(|_| OutletError("the RabbitMQ connection task stopped".into()))
    }

    fn publish_confirmed(
        &mut self,
        stream: Vec<(String, Vec<u8>)>,
        log_entries: Vec<Vec<u8>>,
    ) -> Result<(), OutletError> {
        if stream.is_empty() && log_entries.is_empty() {
            return Ok(());
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::PublishConfirmed { stream, log_entries, done })
            .map_err(|_| OutletError("the RabbitMQ connection task stopped".into()))?;
        match answer.blocking_recv() {
            Ok(result) => result.map_err(OutletError),
            Err(_) => Err(OutletError("the RabbitMQ connection was lost".into())),
        }
    }

    fn record_acks(&mut self, acks: &[(&str, &SeqWindow)]) -> Result<(), OutletError> {
        let now = crate::pipeline::now_ms();
        self.runtime.block_on(self.records.write(acks, now)).map_err(OutletError)
    }

    fn settle(&mut self, settles: Vec<Settle>) {
        if !settles.is_empty() {
            let _ = self.commands.send(Command::Settle(settles));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vhost_is_the_decoded_path() {
        assert_eq!(vhost_of("amqp://u:p@h:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://u:p@h:5672"), "/");
        assert_eq!(vhost_of("amqp://u:p@h:5672/"), "/");
        assert_eq!(vhost_of("amqp://u:p@h/fleet%2Dwest"), "fleet-west");
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("amqp://w:secret@127.0.0.1:5672/%2f"), "amqp://w:***@127.0.0.1:5672/%2f");
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }
}
