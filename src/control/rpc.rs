//! The messages of the control port (the payloads `wire.rs` seals): Raft's
//! three RPCs, and the cluster's own: join, heartbeat, remove, each with
//! its answer. JSON, so a captured message reads as what it means; the
//! snapshot test pins the shape.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::state::{NodeId, NodeSpec, ShardPosition, WriterEpoch};
use super::types::TypeConfig;

/// A request to a node's control port.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A new node asks to join (sent to any seed; answered by the leader).
    Join(NodeSpec),
    /// A member tells the leader it is alive, and how far its shards are.
    Heartbeat {
        spec: NodeSpec,
        shards: Vec<ShardPosition>,
        /// The newest writer epoch this node is fenced for.
        #[serde(default)]
        fenced_epoch: WriterEpoch,
    },
    /// An operator's change, forwarded by a follower to the leader.
    Admin(super::Admin),
}

/// Where the leader is, when the node asked is not it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    pub id: Option<NodeId>,
    /// The leader's control address, when known.
    pub addr: Option<String>,
}

/// The answer to a request.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The request must go to the leader.
    NotLeader(LeaderHint),
    /// Join accepted: the node is in the cluster state and will be added
    /// to the Raft membership.
    Joined {
        leader: NodeId,
    },
    HeartbeatOk,
    /// The heartbeat's sender is the primary of `epoch`, and the leader
    /// confirmed its own leadership with a quorum after receiving it: the
    /// primary's lease runs from when it sent the heartbeat.
    HeartbeatLease {
        epoch: WriterEpoch,
    },
    /// As `HeartbeatLease`, for the holder of the compactor lease of
    /// `compactor` (its compactor epoch), and the primary's lease too when
    /// `writer` is set.
    HeartbeatLeases {
        writer: Option<WriterEpoch>,
        compactor: u64,
    },
    /// The node is not (or no longer) a member: it must not act as one.
    NotAMember,
    /// The operator's change is committed.
    Done,
    /// Refused for a reason that will not change by asking again.
    Refused(String),
    /// Failed for now (no quorum, a timeout): ask again later.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use tidemark_shards::WalSeq;

    #[test]
    fn message_shapes_snapshot() {
        let spec = NodeSpec {
            id: NodeId(2),
            role: Role::Reader,
            voter: false,
            http_addr: "127.0.0.1:8002".into(),
            control_addr: "127.0.0.1:9002".into(),
            replication_addr: String::new(),
            shard_count: 1,
            version: "0.1.0".into(),
        };
        let reqs = [
            serde_json::to_string(&Request::Join(spec.clone())).unwrap(),
            serde_json::to_string(&Request::Heartbeat {
                spec,
                shards: vec![ShardPosition {
                    durable_seq: WalSeq(9),
                    applied_seq: WalSeq(8),
                }],
                fenced_epoch: WriterEpoch(4),
            })
            .unwrap(),
            serde_json::to_string(&Request::Admin(crate::control::Admin::RemoveNode(NodeId(
                3,
            ))))
            .unwrap(),
            serde_json::to_string(&Request::Vote(VoteRequest {
                vote: openraft::Vote::new(3, NodeId(1)),
                last_log_id: None,
            }))
            .unwrap(),
            serde_json::to_string(&Response::NotLeader(LeaderHint {
                id: Some(NodeId(1)),
                addr: Some("127.0.0.1:9001".into()),
            }))
            .unwrap(),
            serde_json::to_string(&Response::Joined { leader: NodeId(1) }).unwrap(),
            serde_json::to_string(&Response::HeartbeatLease {
                epoch: WriterEpoch(4),
            })
            .unwrap(),
            serde_json::to_string(&Response::Refused("no".into())).unwrap(),
        ];
        insta::assert_snapshot!("control_messages", reqs.join("\n"));
    }
}
