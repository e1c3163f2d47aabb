//! The cluster state: what the Raft log decides, and nothing else.
//!
//! [`ClusterState::apply`] is a pure function of the state and one
//! [`Command`]: it returns the [`Effect`]s of the command or a [`Rejection`]
//! that changes nothing. Every node applies the same committed commands in
//! the same order, so every node holds the same state. No sockets, disks or
//! clocks here: times come in the commands (the leader's wall clock).
//!
//! Invariants kept by `apply`:
//! * a node id is held by one control address; removing the node frees it;
//! * every node of the cluster has the same shard count;
//! * `primary` and `compactor`, when set, name nodes of `nodes`;
//! * `writer_epoch` grows by one on every change of `primary` (including
//!   to and from none), and never otherwise;
//! * while a failover runs, `primary` is none: no node takes writes; a
//!   failover ends only by promoting a node (`Promote`), which names the
//!   epoch it was started for, so a stale decision changes nothing.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use tidemark_shards::WalSeq;

use crate::config::Role;

/// A node's id in the cluster (`cluster.node_id`), also its Raft id.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl From<u64> for NodeId {
    fn from(id: u64) -> NodeId {
        NodeId(id)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The writer epoch: bumped on every change of primary writer. A primary
/// acts for exactly one epoch; entries and streams of an older epoch are
/// stale.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct WriterEpoch(pub u64);

impl WriterEpoch {
    #[must_use]
    pub fn next(self) -> WriterEpoch {
        WriterEpoch(self.0.checked_add(1).expect("WriterEpoch overflow"))
    }
}

impl fmt::Display for WriterEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A node's health, as the leader last decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Healthy,
    Unhealthy,
    Dead,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Healthy => "healthy",
            NodeState::Unhealthy => "unhealthy",
            NodeState::Dead => "dead",
        }
    }
}

/// How far one shard of a node has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShardPosition {
    /// The last WAL entry on disk under the node's sync mode.
    pub durable_seq: WalSeq,
    /// The last WAL entry applied to the node's buffer (queryable).
    pub applied_seq: WalSeq,
}

/// What a node says of itself when it joins (and in every heartbeat, so a
/// restarted node's new addresses or version reach the state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub id: NodeId,
    pub role: Role,
    /// Takes part in Raft votes (`cluster.voter`).
    pub voter: bool,
    pub http_addr: String,
    pub control_addr: String,
    /// Where shard 0 of its WAL streams (`replication.listen_addr`); empty
    /// when the node cannot be a primary.
    pub replication_addr: String,
    pub shard_count: u32,
    pub version: String,
}

/// A node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub spec: NodeSpec,
    pub state: NodeState,
    /// Wall-clock ms (the leader's) of the last heartbeat recorded.
    pub last_heartbeat_ms: u64,
    /// Per shard, in shard order; empty until the first heartbeat.
    pub shards: Vec<ShardPosition>,
    /// The newest writer epoch the node has fenced itself for: it follows
    /// no stream of an older epoch (and, as primary, takes no writes of
    /// one), so its positions no longer move for an older primary.
    #[serde(default)]
    pub fenced_epoch: WriterEpoch,
}

/// One node's heartbeat, as recorded by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRecord {
    pub id: NodeId,
    pub at_ms: u64,
    pub shards: Vec<ShardPosition>,
    #[serde(default)]
    pub fenced_epoch: WriterEpoch,
}

/// A failover in progress: no primary until a candidate is promoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The epoch committed when the failover began (primary none).
    pub epoch: WriterEpoch,
    /// The deposed primary.
    pub from: Option<NodeId>,
    /// The operator's choice of the next primary, if any.
    pub target: Option<NodeId>,
    /// An operator's hand-over (the old primary is alive and fenced).
    pub planned: bool,
    /// Wall-clock ms (the leader's) when it began.
    pub started_ms: u64,
    /// Set once a candidate is chosen and must first copy what others hold.
    pub catch_up: Option<CatchUp>,
}

/// The chosen candidate copies, per shard, the entries another node holds
/// beyond its own, before it is promoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUp {
    pub target: NodeId,
    /// Per shard: the node to copy from (none: the target has the most).
    pub sources: Vec<Option<NodeId>>,
    /// Per shard: the position the target must reach.
    pub goal: Vec<WalSeq>,
}

/// A change to the cluster state, decided through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a node; the same spec again is a no-op (a repeated join).
    AddNode(NodeSpec),
    /// Replaces a known node's spec (addresses, version, voter flag).
    UpdateNode(NodeSpec),
    RemoveNode {
        id: NodeId,
    },
    SetNodeState {
        id: NodeId,
        state: NodeState,
    },
    /// The latest heartbeats the leader received; unknown ids are ignored
    /// (a node removed while its heartbeat was on the way).
    Heartbeats(Vec<HeartbeatRecord>),
    AssignPrimary {
        id: Option<NodeId>,
    },
    AssignCompactor {
        id: Option<NodeId>,
    },
    /// A database's retention in seconds (0: forever; `None`: back to
    /// each node's `retention.default`).
    SetRetention {
        database: String,
        seconds: Option<u64>,
    },
    /// Deposes the primary (if any): the epoch moves on with no primary.
    BeginFailover {
        target: Option<NodeId>,
        planned: bool,
        at_ms: u64,
    },
    /// The chosen candidate must first copy entries from other nodes.
    CatchUp {
        epoch: WriterEpoch,
        plan: CatchUp,
    },
    /// Ends the failover begun at `epoch`: `id` becomes the primary, its
    /// shards continuing at `start` (one past what it holds).
    Promote {
        epoch: WriterEpoch,
        id: NodeId,
        start: Vec<WalSeq>,
        at_ms: u64,
    },
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("node id {id} is already held by the node at {holder}")]
    IdTaken { id: NodeId, holder: String },
    #[error("the cluster's nodes have {cluster} shard cores, this node {node}: set node.shard_cores = {cluster}")]
    ShardCount { cluster: u32, node: u32 },
    #[error("no node {0} in the cluster")]
    UnknownNode(NodeId),
    #[error("node {id} is a {role:?}, which cannot be the primary writer")]
    CannotBePrimary { id: NodeId, role: Role },
    #[error("a failover is already in progress (epoch {0})")]
    FailoverInProgress(WriterEpoch),
    #[error("no failover of epoch {0} is in progress (a newer decision came first)")]
    StaleFailover(WriterEpoch),
    #[error(
        "the last failover ended {ago_ms} ms ago; cluster.failover_cooldown_ms is {cooldown_ms}"
    )]
    Cooldown { ago_ms: u64, cooldown_ms: u64 },
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    RetentionSet {
        database: String,
    },
    NodeAdded(NodeId),
    NodeUpdated(NodeId),
    NodeRemoved(NodeId),
    StateChanged {
        id: NodeId,
        from: NodeState,
        to: NodeState,
    },
    PrimaryChanged {
        from: Option<NodeId>,
        to: Option<NodeId>,
        epoch: WriterEpoch,
    },
    CompactorChanged {
        from: Option<NodeId>,
        to: Option<NodeId>,
    },
    FailoverBegun {
        from: Option<NodeId>,
        epoch: WriterEpoch,
        planned: bool,
    },
    CatchUpStarted {
        target: NodeId,
        epoch: WriterEpoch,
    },
    Promoted {
        id: NodeId,
        epoch: WriterEpoch,
        start: Vec<WalSeq>,
    },
}

/// The result of applying one command, as the Raft response.
pub type Applied = Result<Vec<Effect>, Rejection>;

/// The replicated cluster state. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub primary: Option<NodeId>,
    pub writer_epoch: WriterEpoch,
    pub compactor: Option<NodeId>,
    /// Bumped on every change of `compactor`: a compaction commits only
    /// under the lease of the epoch it started in.
    #[serde(default)]
    pub compactor_epoch: u64,
    #[serde(default)]
    pub failover: Option<Failover>,
    /// Wall-clock ms (the leader's) when the last failover ended.
    #[serde(default)]
    pub last_failover_ms: u64,
    /// Per shard, the first entry the current primary wrote as primary.
    #[serde(default)]
    pub primary_start: Vec<WalSeq>,
    /// Databases' retention set through the API, in seconds (0: forever;
    /// `None`: cleared, each node's default applies). Every node copies it
    /// into its manifest.
    #[serde(default)]
    pub retention: BTreeMap<String, Option<u64>>,
}

impl ClusterState {
    /// The primary writer's entry.
    pub fn primary_node(&self) -> Option<&NodeInfo> {
        self.primary.and_then(|id| self.nodes.get(&id))
    }

    /// Applies one committed command. See the [module docs](self).
    pub fn apply(&mut self, cmd: &Command) -> Applied {
        match cmd {
            Command::AddNode(spec) => {
                if let Some(n) = self.nodes.get(&spec.id) {
                    if n.spec.control_addr != spec.control_addr {
                        return Err(Rejection::IdTaken {
                            id: spec.id,
                            holder: n.spec.control_addr.clone(),
                        });
                    }
                }
                self.check_shard_count(spec)?;
                match self.nodes.get_mut(&spec.id) {
                    Some(n) if n.spec == *spec => Ok(Vec::new()),
                    Some(n) => {
                        n.spec = spec.clone();
                        Ok(vec![Effect::NodeUpdated(spec.id)])
                    }
                    None => {
                        self.nodes.insert(
                            spec.id,
                            NodeInfo {
                                spec: spec.clone(),
                                state: NodeState::Healthy,
                                last_heartbeat_ms: 0,
                                shards: Vec::new(),
                                fenced_epoch: WriterEpoch::default(),
                            },
                        );
                        Ok(vec![Effect::NodeAdded(spec.id)])
                    }
                }
            }
            Command::UpdateNode(spec) => {
                if !self.nodes.contains_key(&spec.id) {
                    return Err(Rejection::UnknownNode(spec.id));
                }
                self.check_shard_count(spec)?;
                let n = self.nodes.get_mut(&spec.id).expect("checked above");
                if n.spec == *spec {
                    return Ok(Vec::new());
                }
                n.spec = spec.clone();
                Ok(vec![Effect::NodeUpdated(spec.id)])
            }
            Command::RemoveNode { id } => {
                if self.nodes.remove(id).is_none() {
                    return Err(Rejection::UnknownNode(*id));
                }
                let mut effects = vec![Effect::NodeRemoved(*id)];
                if self.primary == Some(*id) {
                    effects.push(self.set_primary(None));
                }
                if self.compactor == Some(*id) {
                    self.compactor = None;
                    self.compactor_epoch += 1;
                    effects.push(Effect::CompactorChanged {
                        from: Some(*id),
                        to: None,
                    });
                }
                Ok(effects)
            }
            Command::SetNodeState { id, state } => {
                let n = self.nodes.get_mut(id).ok_or(Rejection::UnknownNode(*id))?;
                if n.state == *state {
                    return Ok(Vec::new());
                }
                let from = std::mem::replace(&mut n.state, *state);
                Ok(vec![Effect::StateChanged {
                    id: *id,
                    from,
                    to: *state,
                }])
            }
            Command::Heartbeats(beats) => {
                for b in beats {
                    if let Some(n) = self.nodes.get_mut(&b.id) {
                        if b.at_ms >= n.last_heartbeat_ms {
                            n.last_heartbeat_ms = b.at_ms;
                            n.shards.clone_from(&b.shards);
                            n.fenced_epoch = b.fenced_epoch;
                        }
                    }
                }
                Ok(Vec::new())
            }
            Command::AssignPrimary { id } => {
                if let Some(f) = &self.failover {
                    return Err(Rejection::FailoverInProgress(f.epoch));
                }
                if let Some(id) = id {
                    self.check_can_be_primary(*id)?;
                }
                if self.primary == *id {
                    return Ok(Vec::new());
                }
                Ok(vec![self.set_primary(*id)])
            }
            Command::BeginFailover {
                target,
                planned,
                at_ms,
            } => {
                if let Some(f) = &self.failover {
                    return Err(Rejection::FailoverInProgress(f.epoch));
                }
                if let Some(t) = target {
                    self.check_can_be_primary(*t)?;
                }
                let from = self.primary;
                let mut effects = Vec::new();
                if from.is_some() {
                    effects.push(self.set_primary(None));
                } else {
                    // No primary to depose: the epoch still moves on, so
                    // every stream of the last one ends.
                    self.writer_epoch = self.writer_epoch.next();
                }
                self.failover = Some(Failover {
                    epoch: self.writer_epoch,
                    from,
                    target: *target,
                    planned: *planned,
                    started_ms: *at_ms,
                    catch_up: None,
                });
                effects.push(Effect::FailoverBegun {
                    from,
                    epoch: self.writer_epoch,
                    planned: *planned,
                });
                Ok(effects)
            }
            Command::CatchUp { epoch, plan } => {
                self.check_failover(*epoch)?;
                self.check_can_be_primary(plan.target)?;
                for src in plan.sources.iter().flatten() {
                    if !self.nodes.contains_key(src) {
                        return Err(Rejection::UnknownNode(*src));
                    }
                }
                let f = self.failover.as_mut().expect("checked above");
                f.catch_up = Some(plan.clone());
                Ok(vec![Effect::CatchUpStarted {
                    target: plan.target,
                    epoch: *epoch,
                }])
            }
            Command::Promote {
                epoch,
                id,
                start,
                at_ms,
            } => {
                self.check_failover(*epoch)?;
                self.check_can_be_primary(*id)?;
                let mut effects = vec![self.set_primary(Some(*id))];
                self.failover = None;
                self.last_failover_ms = *at_ms;
                self.primary_start.clone_from(start);
                effects.push(Effect::Promoted {
                    id: *id,
                    epoch: self.writer_epoch,
                    start: start.clone(),
                });
                Ok(effects)
            }
            Command::SetRetention { database, seconds } => {
                self.retention.insert(database.clone(), *seconds);
                Ok(vec![Effect::RetentionSet {
                    database: database.clone(),
                }])
            }
            Command::AssignCompactor { id } => {
                if let Some(id) = id {
                    if !self.nodes.contains_key(id) {
                        return Err(Rejection::UnknownNode(*id));
                    }
                }
                if self.compactor == *id {
                    return Ok(Vec::new());
                }
                let from = std::mem::replace(&mut self.compactor, *id);
                self.compactor_epoch += 1;
                Ok(vec![Effect::CompactorChanged { from, to: *id }])
            }
        }
    }

    fn check_shard_count(&self, spec: &NodeSpec) -> Result<(), Rejection> {
        // The node itself does not count (an update of the only node).
        match self
            .nodes
            .values()
            .find(|n| n.spec.id != spec.id)
            .map(|n| n.spec.shard_count)
        {
            Some(cluster) if cluster != spec.shard_count => Err(Rejection::ShardCount {
                cluster,
                node: spec.shard_count,
            }),
            _ => Ok(()),
        }
    }

    fn check_can_be_primary(&self, id: NodeId) -> Result<(), Rejection> {
        let n = self.nodes.get(&id).ok_or(Rejection::UnknownNode(id))?;
        if n.spec.role == Role::Standalone || n.spec.replication_addr.is_empty() {
            return Err(Rejection::CannotBePrimary {
                id,
                role: n.spec.role,
            });
        }
        Ok(())
    }

    fn check_failover(&self, epoch: WriterEpoch) -> Result<(), Rejection> {
        match &self.failover {
            Some(f) if f.epoch == epoch => Ok(()),
            _ => Err(Rejection::StaleFailover(epoch)),
        }
    }

    fn set_primary(&mut self, to: Option<NodeId>) -> Effect {
        let from = std::mem::replace(&mut self.primary, to);
        self.writer_epoch = self.writer_epoch.next();
        Effect::PrimaryChanged {
            from,
            to,
            epoch: self.writer_epoch,
        }
    }
}

/// A node spec for tests: HTTP on 8000 + id, control on 9000 + id, a
/// writer's replication on 10000 + 10 id, two shards.
#[cfg(test)]
pub(crate) fn test_spec(id: u64, role: Role, voter: bool) -> NodeSpec {
    NodeSpec {
        id: NodeId(id),
        role,
        voter,
        http_addr: format!("127.0.0.1:{}", 8000 + id),
        control_addr: format!("127.0.0.1:{}", 9000 + id),
        replication_addr: if role == Role::Writer {
            format!("127.0.0.1:{}", 10000 + id * 10)
        } else {
            String::new()
        },
        shard_count: 2,
        version: "0.1.0".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u64, role: Role) -> NodeSpec {
        test_spec(id, role, true)
    }

    #[test]
    fn add_is_idempotent_and_updates_a_changed_spec() {
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply(&Command::AddNode(spec(1, Role::Writer))),
            Ok(vec![Effect::NodeAdded(NodeId(1))])
        );
        assert_eq!(
            s.apply(&Command::AddNode(spec(1, Role::Writer))),
            Ok(vec![])
        );
        let mut moved = spec(1, Role::Writer);
        moved.http_addr = "127.0.0.1:7000".into();
        assert_eq!(
            s.apply(&Command::AddNode(moved.clone())),
            Ok(vec![Effect::NodeUpdated(NodeId(1))])
        );
        assert_eq!(s.nodes[&NodeId(1)].spec, moved);
        assert_eq!(s.nodes[&NodeId(1)].state, NodeState::Healthy);
    }

    #[test]
    fn an_id_held_by_another_address_is_refused_and_changes_nothing() {
        let mut s = ClusterState::default();
        s.apply(&Command::AddNode(spec(1, Role::Writer))).unwrap();
        let before = s.clone();
        let mut other = spec(1, Role::Reader);
        other.control_addr = "127.0.0.1:1".into();
        assert_eq!(
            s.apply(&Command::AddNode(other)),
            Err(Rejection::IdTaken {
                id: NodeId(1),
                holder: "127.0.0.1:9001".into()
            })
        );
        assert_eq!(s, before);
    }

    #[test]
    fn a_different_shard_count_is_refused() {
        let mut s = ClusterState::default();
        s.apply(&Command::AddNode(spec(1, Role::Writer))).unwrap();
        let mut n = spec(2, Role::Reader);
        n.shard_count = 3;
        let before = s.clone();
        let e = s.apply(&Command::AddNode(n.clone())).unwrap_err();
        assert_eq!(
            e,
            Rejection::ShardCount {
                cluster: 2,
                node: 3
            }
        );
        assert!(e.to_string().contains("node.shard_cores = 2"), "{e}");
        assert_eq!(s, before);
        // The only node may change its own count (nothing to disagree with).
        let mut only = spec(1, Role::Writer);
        only.shard_count = 4;
        s.apply(&Command::UpdateNode(only)).unwrap();
        assert_eq!(s.nodes[&NodeId(1)].spec.shard_count, 4);
    }

    #[test]
    fn primary_changes_bump_the_epoch_once_each() {
        let mut s = ClusterState::default();
        s.apply(&Command::AddNode(spec(1, Role::Writer))).unwrap();
        s.apply(&Command::AddNode(spec(2, Role::Writer))).unwrap();
        s.apply(&Command::AddNode(spec(3, Role::Reader))).unwrap();
        assert_eq!(s.writer_epoch, WriterEpoch(0));
        assert_eq!(
            s.apply(&Command::AssignPrimary {
                id: Some(NodeId(1))
            }),
            Ok(vec![Effect::PrimaryChanged {
                from: None,
                to: Some(NodeId(1)),
                epoch: WriterEpoch(1)
            }])
        );
        // The same primary again: no new epoch.
        assert_eq!(
            s.apply(&Command::AssignPrimary {
                id: Some(NodeId(1))
            }),
            Ok(vec![])
        );
        assert_eq!(s.writer_epoch, WriterEpoch(1));
        // A reader without a replication address cannot be primary.
        assert_eq!(
            s.apply(&Command::AssignPrimary {
                id: Some(NodeId(3))
            }),
            Err(Rejection::CannotBePrimary {
                id: NodeId(3),
                role: Role::Reader
            })
        );
        assert_eq!(
            s.apply(&Command::AssignPrimary {
                id: Some(NodeId(9))
            }),
            Err(Rejection::UnknownNode(NodeId(9)))
        );
        // Removing the primary leaves none, in a new epoch.
        let effects = s.apply(&Command::RemoveNode { id: NodeId(1) }).unwrap();
        assert_eq!(
            effects,
            vec![
                Effect::NodeRemoved(NodeId(1)),
                Effect::PrimaryChanged {
                    from: Some(NodeId(1)),
                    to: None,
                    epoch: WriterEpoch(2)
                }
            ]
        );
        assert_eq!(s.primary, None);
        assert!(s.primary_node().is_none());
    }

    #[test]
    fn node_states_heartbeats_and_compactor() {
        let mut s = ClusterState::default();
        s.apply(&Command::AddNode(spec(1, Role::Writer))).unwrap();
        s.apply(&Command::AddNode(spec(2, Role::Reader))).unwrap();
        assert_eq!(
            s.apply(&Command::SetNodeState {
                id: NodeId(2),
                state: NodeState::Dead
            }),
            Ok(vec![Effect::StateChanged {
                id: NodeId(2),
                from: NodeState::Healthy,
                to: NodeState::Dead
            }])
        );
        assert_eq!(
            s.apply(&Command::SetNodeState {
                id: NodeId(2),
                state: NodeState::Dead
            }),
            Ok(vec![])
        );
        let pos = vec![
            ShardPosition {
                durable_seq: WalSeq(5),
                applied_seq: WalSeq(4),
            };
            2
        ];
        s.apply(&Command::Heartbeats(vec![
            HeartbeatRecord {
                id: NodeId(1),
                at_ms: 100,
                shards: pos.clone(),
                fenced_epoch: WriterEpoch::default(),
            },
            // A removed node's late heartbeat is ignored.
            HeartbeatRecord {
                id: NodeId(7),
                at_ms: 100,
                shards: pos.clone(),
                fenced_epoch: WriterEpoch::default(),
            },
        ]))
        .unwrap();
        assert_eq!(s.nodes[&NodeId(1)].shards, pos);
        assert_eq!(s.nodes[&NodeId(1)].last_heartbeat_ms, 100);
        assert!(!s.nodes.contains_key(&NodeId(7)));
        // The heartbeat clock never goes back.
        s.apply(&Command::Heartbeats(vec![HeartbeatRecord {
            id: NodeId(1),
            at_ms: 50,
            shards: pos,
            fenced_epoch: WriterEpoch::default(),
        }]))
        .unwrap();
        assert_eq!(s.nodes[&NodeId(1)].last_heartbeat_ms, 100);
        s.apply(&Command::AssignCompactor {
            id: Some(NodeId(2)),
        })
        .unwrap();
        assert_eq!(
            s.apply(&Command::RemoveNode { id: NodeId(2) }),
            Ok(vec![
                Effect::NodeRemoved(NodeId(2)),
                Effect::CompactorChanged {
                    from: Some(NodeId(2)),
                    to: None
                }
            ])
        );
        assert_eq!(
            s.apply(&Command::RemoveNode { id: NodeId(2) }),
            Err(Rejection::UnknownNode(NodeId(2)))
        );
    }
}
