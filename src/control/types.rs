//! The Raft type configuration of the control core: log entries carry
//! [`Command`]s, applying one answers [`Applied`], node ids are
//! [`NodeId`]s and a Raft member is known by its control address
//! ([`BasicNode`]).

use std::io::Cursor;

pub use openraft::BasicNode;

use super::state::{Applied, Command, NodeId};

openraft::declare_raft_types!(
    /// tidemark's control core.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
