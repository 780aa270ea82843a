//! A broker outside locusd (cluster mode, `cluster/`): what the pipeline takes from it and
//! gives back, so that the intake and the committer stay the same in both modes.
//!
//! Enters: [`Delivery`]s (a device's publish as the broker routed it, or another worker's log
//! entry, and how to settle it) on a channel. Leaves, through an [`Outlet`], once InfluxDB
//! holds a commit's fixes: its fix stream messages and its log entries for the other
//! workers, confirmed by the broker; then an ack record per courier in the shared record;
//! then the same acks and order announcements as in embedded mode; last, the settlement of
//! every delivery of the commit.
//!
//! In this mode a commit is acked only once its fixes are in InfluxDB (the shipper's cursor
//! passed its log entries) and the couriers' committed seqs are recorded there too, so a
//! worker that takes over a partition learns from InfluxDB, not from the dead worker's disk,
//! what was acked. The committer waits for that; see `run_committer`.

use crate::store::SeqWindow;
use bytes::Bytes;

/// One message from the external broker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// What it is.
    pub kind: DeliveryKind,
    /// The payload as the device sent it, or the log entry as its worker committed it.
    pub payload: Bytes,
    /// What to give back to the broker once the commit holding it is acked.
    pub settle: Settle,
}

/// What a [`Delivery`] carries.
#[derive(Debug, Clone)]
pub enum DeliveryKind {
    /// A device's publish on MQTT topic `topic` (`couriers/{id}/locations`,
    /// `couriers/{id}/events`, `edge/{edge}/batches`).
    Publish {
        /// The topic.
        topic: Bytes,
    },
    /// A log entry another worker committed and acked (the shared log stream), at `offset`
    /// in that stream: applied to the views, not acked to anyone, not shipped.
    Replica {
        /// Its offset in the stream; kept with it, so a restart resumes after it.
        offset: u64,
    },
}

/// Identifies a delivery to the broker that made it: its consumer, that consumer's
/// connection (a delivery tag means nothing on another connection), and its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settle {
    /// Which consumer (partition) it came from.
    pub consumer: u32,
    /// Which connection of that consumer.
    pub generation: u64,
    /// The broker's delivery tag.
    pub tag: u64,
}

/// The external broker is gone or refused a publish.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OutletError(pub String);

/// Where the committer's output goes in cluster mode.
pub trait Outlet: Send {
    /// Publishes `payload` on MQTT topic `topic` (`retain` is what embedded mode would do; a
    /// broker that cannot retain from a server-side publisher ignores it).
    fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), OutletError>;

    /// Records in the shared record every courier's committed seqs as of the commits about to
    /// be acked. Blocks until the record is durable there; an error means nothing may be
    /// acked yet.
    fn record_acks(&mut self, acks: &[(&str, &SeqWindow)]) -> Result<(), OutletError>;

    /// Tells the broker these deliveries are done with: it will not deliver them again.
    fn settle(&mut self, settles: Vec<Settle>);

    /// Publishes the commits' live fix stream messages (MQTT topic, JSON) and shares their log
    /// entries (encoded [`crate::store::LogEntry`]) with the other workers, whose views apply
    /// them; returns once the broker confirmed every one. Called before their ack records are
    /// written, so whatever a device was acked for is in both (at least once: a worker that
    /// dies between the two leaves its successor to send them again).
    fn publish_confirmed(
        &mut self,
        stream: Vec<(String, Vec<u8>)>,
        log_entries: Vec<Vec<u8>>,
    ) -> Result<(), OutletError>;
}

/// What the pipeline needs of an external broker.
#[allow(missing_debug_implementations)] // holds a trait object
pub struct ExternalBroker {
    /// Deliveries from every partition this worker consumes.
    pub deliveries: flume::Receiver<Delivery>,
    /// Where acks and announcements go.
    pub outlet: Box<dyn Outlet>,
    /// Whether anyone reads the live fix stream (always, in cluster mode: the exchange has
    /// no way to say).
    pub stream_demand: crate::mqtt::StreamDemand,
}

/// The `replay_progress` key under which the offset of the last log entry taken from the
/// shared log stream is kept, in the same transaction as the entry's changes.
pub const REPLICA_PROGRESS_KEY: &[u8] = b"cluster:locus.log";
