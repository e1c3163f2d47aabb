//! The control core: one thread (`tidemark-control`) running a tokio
//! current-thread runtime with openraft over the cluster state, the health
//! checks and the cluster API's writes; and, on every node, the signal
//! watch and housekeeping.
//!
//! Shard cores never wait on it. They read [`ClusterView`], an immutable
//! snapshot the control core publishes (`ArcSwap`) after every change, and
//! send the rare API write (`DELETE /api/v1/cluster/nodes/{id}`) on a
//! bounded channel.
//!
//! Rooms: [`state`] (the replicated state machine, pure), [`plan`] (the
//! leader's decisions, pure), [`types`] (openraft's type config),
//! [`store`] (durable Raft log and vote), [`machine`] (state machine
//! storage and snapshots), [`wire`] (the control port's bytes), [`rpc`]
//! (its messages), [`net`] (sockets, TLS, openraft's network), [`member`]
//! (the control loop of a cluster member), [`api`] (`/api/v1/cluster`).

pub mod api;
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
}

/// A change an operator asks for through the API; carried out by the
/// Raft leader (a follower forwards it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Admin {
    /// `DELETE /api/v1/cluster/nodes/{id}`.
    RemoveNode(NodeId),
    /// `PUT /api/v1/cluster/compactor`: who holds the compactor lease.
    AssignCompactor(Option<NodeId>),
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
}

/// The control core's side, handed to its thread.
#[derive(Debug)]
pub struct ControlParts {
    pub view: Arc<ArcSwap<ClusterView>>,
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
        Ok((
            ControlHandle {
                view: view.clone(),
                requests: tx,
            },
            ControlParts {
                view,
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
