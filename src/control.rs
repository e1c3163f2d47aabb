//! The control core: one thread (`tidemark-control`) running a tokio
//! current-thread runtime with openraft over the cluster state, the health
//! checks and the cluster API's writes; and, on every node, the signal
//! watch and housekeeping.
//!
//! Shard cores never wait on it. They read [`ClusterView`], an immutable
//! snapshot the control core publishes (`ArcSwap`) after every change, and
//! send the rare API write (`DELETE /api/v1/cluster/nodes/{id}`,
//! `POST /api/v1/cluster/failover`) on a bounded channel. The primary's
//! write lease ([`PrimaryLease`]) is an atomic the shard cores check.
//!
//! Rooms: [`state`] (the replicated state machine, pure), [`plan`] (the
//! leader's decisions, pure), [`failover`] (the writer failover's
//! decisions, pure), [`types`] (openraft's type config),
//! [`store`] (durable Raft log and vote), [`machine`] (state machine
//! storage and snapshots), [`wire`] (the control port's bytes), [`rpc`]
//! (its messages), [`net`] (sockets, TLS, openraft's network), [`member`]
//! (the control loop of a cluster member), [`api`] (`/api/v1/cluster`).

pub mod api;
pub mod failover;
pub mod machine;
pub mod member;
pub mod net;
pub mod plan;
pub mod rpc;
pub mod state;
pub mod store;
pub mod types;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, Role};
use state::{ClusterState, NodeId};

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No cluster: a standalone node.
    Standalone,
    /// A writer or reader configured by hand (`replication.writer_addr`).
    Static,
    /// A member of a Raft cluster (`cluster.control_addr`).
    Cluster,
}

/// The published, immutable view of the cluster. Cheap to load.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub mode: Mode,
    pub node_id: Option<NodeId>,
    pub role: Role,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Raft voters and learners, by id.
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub state: Arc<ClusterState>,
}

impl ClusterView {
    fn new(config: &Config) -> ClusterView {
        ClusterView {
            mode: if config.in_cluster() {
                Mode::Cluster
            } else if config.cluster.role == Role::Standalone {
                Mode::Standalone
            } else {
                Mode::Static
            },
            node_id: config.in_cluster().then(|| NodeId(config.raft_id())),
            role: config.cluster.role,
            leader_id: None,
            term: 0,
            commit_index: 0,
            applied_index: 0,
            voters: Vec::new(),
            learners: Vec::new(),
            state: Arc::new(ClusterState::default()),
        }
    }

    /// The primary writer's id and replication address (shard 0's port).
    pub fn primary_replication(&self) -> Option<(NodeId, String)> {
        let p = self.state.primary_node()?;
        Some((p.spec.id, p.spec.replication_addr.clone()))
    }

    /// In a cluster: whether this node is the primary writer.
    pub fn is_primary(&self) -> bool {
        self.node_id.is_some() && self.state.primary == self.node_id
    }

    /// Where this node's shard `shard` copies entries from now: the primary
    /// (unless this node is it); during a failover nobody, except for the
    /// chosen candidate catching up, which copies from the node its plan
    /// names for that shard.
    pub fn replication_source(&self, shard: usize) -> Option<(NodeId, String)> {
        let me = self.node_id?;
        let st = &self.state;
        let id = match &st.failover {
            None => st.primary.filter(|p| *p != me)?,
            Some(f) => {
                let c = f.catch_up.as_ref().filter(|c| c.target == me)?;
                (*c.sources.get(shard)?)?
            }
        };
        let n = st.nodes.get(&id)?;
        (!n.spec.replication_addr.is_empty()).then(|| (id, n.spec.replication_addr.clone()))
    }
}

/// The primary's write lease: it acknowledges writes of `epoch` only until
/// `until` (monotonic), which moves on each time the Raft leader, having
/// confirmed its own leadership with a quorum, answers a heartbeat saying
/// this node is still the primary of that epoch. The lease runs from when
/// the heartbeat was *sent*, so it ends no later than the leader thinks.
#[derive(Debug)]
pub struct PrimaryLease {
    base: std::time::Instant,
    /// Nanoseconds after `base`; 0: no lease.
    until_ns: std::sync::atomic::AtomicU64,
    epoch: std::sync::atomic::AtomicU64,
}

impl Default for PrimaryLease {
    fn default() -> PrimaryLease {
        PrimaryLease {
            base: std::time::Instant::now(),
            until_ns: std::sync::atomic::AtomicU64::new(0),
            epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl PrimaryLease {
    /// Extends the lease of `epoch` to `sent + duration`.
    pub fn grant(&self, epoch: state::WriterEpoch, sent: std::time::Instant, duration: Duration) {
        use std::sync::atomic::Ordering::SeqCst;
        let until = (sent + duration)
            .saturating_duration_since(self.base)
            .as_nanos() as u64;
        if self.epoch.load(SeqCst) != epoch.0 {
            self.until_ns.store(0, SeqCst);
            self.epoch.store(epoch.0, SeqCst);
        }
        self.until_ns.fetch_max(until, SeqCst);
    }

    /// Whether writes of `epoch` may be acknowledged now.
    pub fn holds(&self, epoch: state::WriterEpoch) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.base.elapsed().as_nanos() as u64;
        self.epoch.load(SeqCst) == epoch.0 && now < self.until_ns.load(SeqCst)
    }
}

/// A change an operator asks for through the API; carried out by the
/// Raft leader (a follower forwards it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Admin {
    /// `DELETE /api/v1/cluster/nodes/{id}`.
    RemoveNode(NodeId),
    /// `PUT /api/v1/cluster/compactor`: who holds the compactor lease.
    AssignCompactor(Option<NodeId>),
    /// `PUT /api/v1/databases/{db}/retention` in a cluster.
    SetRetention {
        database: String,
        seconds: Option<u64>,
    },
    /// `POST /api/v1/cluster/failover`: a planned hand-over to `target`
    /// (or to the best candidate).
    Failover { target: Option<NodeId> },
}

/// An API write for the control core, with where to send the answer.
#[derive(Debug)]
pub struct ApiRequest {
    pub admin: Admin,
    pub reply: oneshot::Sender<Result<(), ApiError>>,
}

/// Why an API write failed, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::Unavailable(_) => 503,
        }
    }
}

/// The shard cores' side of the control core.
#[derive(Debug)]
pub struct ControlHandle {
    view: Arc<ArcSwap<ClusterView>>,
    requests: mpsc::Sender<ApiRequest>,
    /// Notified after every published change of the view.
    pub changed: Arc<event_listener::Event>,
}

/// The control core's side, handed to its thread.
#[derive(Debug)]
pub struct ControlParts {
    pub view: Arc<ArcSwap<ClusterView>>,
    pub changed: Arc<event_listener::Event>,
    pub requests: mpsc::Receiver<ApiRequest>,
    /// The control port, bound at start so a taken port fails the start.
    pub listener: Option<std::net::TcpListener>,
}

/// How long an API write may take before it is answered 503.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

impl ControlHandle {
    /// Makes the handle and the parts; binds the control port in a cluster.
    pub fn new(config: &Config) -> std::io::Result<(ControlHandle, ControlParts)> {
        let view = Arc::new(ArcSwap::from_pointee(ClusterView::new(config)));
        let (tx, rx) = mpsc::channel(64);
        let listener = if config.in_cluster() {
            let l = std::net::TcpListener::bind(&config.cluster.control_addr)?;
            l.set_nonblocking(true)?;
            Some(l)
        } else {
            None
        };
        let changed = Arc::new(event_listener::Event::new());
        Ok((
            ControlHandle {
                view: view.clone(),
                requests: tx,
                changed: changed.clone(),
            },
            ControlParts {
                view,
                changed,
                requests: rx,
                listener,
            },
        ))
    }

    /// The latest published view.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.load_full()
    }

    /// Carries out `admin` through the Raft leader.
    pub async fn admin(&self, admin: Admin) -> Result<(), ApiError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .try_send(ApiRequest { admin, reply })
            .map_err(|_| ApiError::Unavailable("the control core is busy; retry".into()))?;
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Unavailable(
                "the control core stopped before answering".into(),
            )),
        }
    }
}
