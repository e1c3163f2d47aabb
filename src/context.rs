//! What the threads of a node share ([`NodeShared`]: config, catalog,
//! query engine, manifest, metrics, the control core's handle) and what one
//! shard core owns ([`CoreCtx`]: its shard, connections, replication side).
//!
//! The HTTP server, the replication tasks and the control core's API take
//! these; `node.rs` builds them and starts the threads, and nothing imports
//! back into `node.rs`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_listener::Event;
use tidemark_shards::flush::FileStore;
use tidemark_shards::manifest::Manifest;
use tidemark_shards::shard::Shard;
use tidemark_shards::Catalog;

use crate::config::Config;
use crate::metrics::{CoreMetrics, NodeMetrics};

/// What every core shares. Read-mostly; nothing here is touched per row.
#[derive(Debug)]
pub struct NodeShared {
    pub config: Config,
    pub catalog: Arc<Catalog>,
    pub query: Arc<crate::query::QueryEngine>,
    pub tokens: Vec<String>,
    pub metrics: Arc<NodeMetrics>,
    pub manifest: Arc<Manifest>,
    pub store: Arc<FileStore>,
    pub shard_count: usize,
    /// Inter-node TLS (`tls.*`), when on.
    pub tls: Option<crate::tls::Tls>,
    /// The control core: the published cluster view and its API channel.
    pub control: crate::control::ControlHandle,
    /// Per shard: the last durable and applied WAL sequence numbers,
    /// refreshed by each core's housekeeping (heartbeats carry them).
    pub positions: Vec<[AtomicU64; 2]>,
    /// The primary's write lease (in a cluster).
    pub lease: crate::control::PrimaryLease,
    /// The compactor lease (in a cluster), by compactor epoch.
    pub compactor_lease: crate::control::PrimaryLease,
    /// The compaction and retention thread.
    pub storage: crate::storage::StorageHandle,
    /// Per shard: the writer epoch of the replication stream it follows
    /// now (0: none). Heartbeats derive `fenced_epoch` from it.
    pub following: Vec<AtomicU64>,
    /// Wakes the heartbeat loop: this node's fencing or role changed.
    pub report: Event,
    /// Set when something outside the shard cores must stop the node
    /// (the cluster refused this node): the reason, reported at exit.
    pub fatal: Mutex<Option<String>>,
    pub(crate) recovered: AtomicUsize,
    pub(crate) shutting_down: AtomicBool,
    /// `POST /api/v1/flush`: the latest flush epoch asked for, and per core
    /// the latest epoch it has flushed (or failed: `flush_errors`).
    pub(crate) flush_requested: AtomicU64,
    pub(crate) flush_done: Vec<AtomicU64>,
    pub(crate) flush_errors: Mutex<Vec<(u64, String)>>,
}

impl NodeShared {
    /// Recovered, and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.recovered.load(Ordering::Acquire) == self.shard_count && !self.is_shutting_down()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Asks every core to flush; returns the epoch to wait for.
    pub fn request_flush(&self) -> u64 {
        self.flush_requested.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// `None` while some core has not flushed `epoch` yet.
    pub fn flush_status(&self, epoch: u64) -> Option<Result<(), String>> {
        if self
            .flush_done
            .iter()
            .any(|d| d.load(Ordering::Acquire) < epoch)
        {
            return None;
        }
        let errors = self.flush_errors.lock().expect("flush errors lock");
        match errors.iter().find(|(e, _)| *e >= epoch) {
            Some((_, msg)) => Some(Err(msg.clone())),
            None => Some(Ok(())),
        }
    }

    /// Stops the node for `reason` (it exits with an error).
    pub fn fail(&self, reason: String) {
        tracing::error!(%reason, "stopping the node");
        *self.fatal.lock().expect("fatal lock") = Some(reason);
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Every shard's durable and applied positions, as last refreshed.
    pub fn shard_positions(&self) -> Vec<crate::control::state::ShardPosition> {
        self.positions
            .iter()
            .map(|[d, a]| crate::control::state::ShardPosition {
                durable_seq: tidemark_shards::WalSeq(d.load(Ordering::Acquire)),
                applied_seq: tidemark_shards::WalSeq(a.load(Ordering::Acquire)),
            })
            .collect()
    }

    /// The newest writer epoch this node is fenced for: every shard follows
    /// no stream of an older one. (As the old primary it takes no writes
    /// once the view has moved on, so the view's epoch counts.)
    pub fn fenced_epoch(&self) -> crate::control::state::WriterEpoch {
        let epoch = self.control.view().state.writer_epoch;
        let oldest = self
            .following
            .iter()
            .map(|f| f.load(Ordering::SeqCst))
            .filter(|f| *f != 0)
            .min();
        match oldest {
            Some(f) if f < epoch.0 => crate::control::state::WriterEpoch(f),
            _ => epoch,
        }
    }

    pub(crate) fn update_ready_gauge(&self) {
        self.metrics.ready.set(i64::from(self.is_ready()));
    }
}

/// One shard core's state, owned by its thread.
#[derive(Debug)]
pub struct CoreCtx {
    pub id: usize,
    pub node: Arc<NodeShared>,
    pub metrics: CoreMetrics,
    /// The shard, once recovered.
    pub shard: RefCell<Option<Rc<Shard>>>,
    /// Set at shutdown: finish in-flight requests, accept no more.
    pub draining: Cell<bool>,
    /// Wakes idle connections and the accept loop when draining starts.
    pub drain_event: Event,
    pub connections: Cell<usize>,
    /// On a writer: this core's replication streams and readers' acks.
    pub writer: RefCell<Option<Rc<crate::replication::sender::WriterSide>>>,
    /// Idle keep-alive connections to other nodes (forwarding).
    pub forward_pool: RefCell<crate::forward::Pool>,
    /// Where this core sends queries (`routing.queries = readers`).
    pub balancer: RefCell<crate::routing::Balancer>,
}

impl CoreCtx {
    pub fn shard(&self) -> Option<Rc<Shard>> {
        self.shard.borrow().clone()
    }

    /// Before the first write of a primary's `epoch` on this shard: local
    /// entries are written with that epoch (its first one starts a pair of
    /// the epoch history), and rows are visible only once durable.
    pub fn become_primary(&self, shard: &Shard, epoch: crate::control::state::WriterEpoch) {
        let e = tidemark_shards::Epoch(u32::try_from(epoch.0).unwrap_or(u32::MAX));
        if shard.wal().epoch() != e {
            tracing::info!(shard = self.id, epoch = %epoch, next_seq = %shard.wal().next_seq(), "writing as the primary");
            shard.wal().set_epoch(e);
            shard.set_visible_before_durable(false);
        }
    }

    /// Copies the shard's buffer size into its gauges, and its positions
    /// into the node's.
    pub fn refresh_gauges(&self) {
        if let Some(shard) = self.shard() {
            let (rows, bytes) = shard.buffered();
            self.metrics.buffer_rows.set(rows as i64);
            self.metrics.buffer_bytes.set(bytes as i64);
            self.metrics.update_throttle(shard.throttle_stats());
            self.node
                .metrics
                .forward
                .pool
                .get_or_create(&crate::metrics::ShardLabel {
                    shard: self.id.to_string(),
                })
                .set(self.forward_pool.borrow().idle_connections() as i64);
            let [d, a] = &self.node.positions[self.id];
            d.store(shard.wal().durable_seq().0, Ordering::Release);
            a.store(shard.applied_seq().0, Ordering::Release);
        }
    }
}
