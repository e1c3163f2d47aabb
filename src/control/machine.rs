//! The Raft state machine storage: the [`ClusterState`] in memory, its
//! snapshots on disk (`<data-dir>/raft/snapshot`), and publication of every
//! applied state to the shard cores.
//!
//! The state itself is not written on every apply: on start it is the last
//! snapshot, and openraft applies the committed log entries after it again
//! (the log store keeps `committed`), so a restarted node is back where it
//! was before it answers anything. A snapshot file is written to a
//! temporary, synced and renamed over the old one, then the directory is
//! synced: a crash leaves the old snapshot or the new one.

use std::fs;
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::state::{Applied, ClusterState, Effect, NodeId};
use super::types::{BasicNode, Entry, LogId, StorageError, TypeConfig};

/// Called on the control thread after every batch of applied entries,
/// with the new state and the effects of the batch.
pub type Publish = Arc<dyn Fn(Arc<ClusterState>, &[Effect]) + Send + Sync>;

/// What a snapshot file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    state: ClusterState,
}

#[derive(Debug, Clone)]
struct Stored {
    meta: SnapshotMeta<NodeId, BasicNode>,
    bytes: Vec<u8>,
}

/// The state machine. See the [module docs](self).
pub struct StateMachine {
    dir: PathBuf,
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: Arc<ClusterState>,
    current: Arc<Mutex<Option<Stored>>>,
    publish: Publish,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("dir", &self.dir)
            .field("last_applied", &self.last_applied)
            .finish_non_exhaustive()
    }
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: &io::Error) -> StorageError {
    StorageIOError::new(subject, verb, e).into()
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Writes `bytes` to `path` crash-safely (temporary, sync, rename, sync dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// A checksummed file body: `crc32c (4 bytes LE) | json`.
fn seal(json: &[u8]) -> Vec<u8> {
    let mut out = crc32c::crc32c(json).to_le_bytes().to_vec();
    out.extend_from_slice(json);
    out
}

fn unseal(bytes: &[u8]) -> io::Result<&[u8]> {
    let (crc, body) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| invalid("snapshot file shorter than its checksum"))?;
    if u32::from_le_bytes(*crc) != crc32c::crc32c(body) {
        return Err(invalid("snapshot file checksum mismatch"));
    }
    Ok(body)
}

impl StateMachine {
    /// Opens the state machine of `dir`, from its snapshot if there is one.
    pub fn open(dir: &Path, publish: Publish) -> io::Result<StateMachine> {
        fs::create_dir_all(dir)?;
        let path = dir.join("snapshot");
        let mut sm = StateMachine {
            dir: dir.to_path_buf(),
            last_applied: None,
            membership: StoredMembership::default(),
            state: Arc::new(ClusterState::default()),
            current: Arc::new(Mutex::new(None)),
            publish,
        };
        match fs::read(&path) {
            Ok(bytes) => {
                let body = unseal(&bytes)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                let file: SnapshotFile = serde_json::from_slice(body)
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
                sm.last_applied = file.meta.last_log_id;
                sm.membership = file.meta.last_membership.clone();
                sm.state = Arc::new(file.state);
                *sm.current.lock().expect("snapshot lock") = Some(Stored {
                    meta: file.meta,
                    bytes: body.to_vec(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        (sm.publish)(sm.state.clone(), &[]);
        Ok(sm)
    }

    /// Writes a snapshot file on a blocking thread: its syncs must not
    /// stall the control runtime (Raft's heartbeats run there).
    async fn save(dir: &Path, stored: &Stored) -> io::Result<()> {
        let path = dir.join("snapshot");
        let bytes = seal(&stored.bytes);
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(io::Error::other)?
    }
}

/// Builds a snapshot of the state as it was when the builder was made.
#[derive(Debug)]
pub struct Builder {
    dir: PathBuf,
    file: SnapshotFile,
    current: Arc<Mutex<Option<Stored>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let bytes = serde_json::to_vec(&self.file)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, &invalid(e)))?;
        let stored = Stored {
            meta: self.file.meta.clone(),
            bytes,
        };
        StateMachine::save(&self.dir, &stored).await.map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(stored.meta.signature())),
                ErrorVerb::Write,
                &e,
            )
        })?;
        *self.current.lock().expect("snapshot lock") = Some(stored.clone());
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let mut effects = Vec::new();
        let state = Arc::make_mut(&mut self.state);
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(Ok(Vec::new())),
                EntryPayload::Normal(cmd) => {
                    let r = state.apply(&cmd);
                    if let Ok(e) = &r {
                        effects.extend(e.iter().cloned());
                    }
                    replies.push(r);
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    replies.push(Ok(Vec::new()));
                }
            }
        }
        (self.publish)(self.state.clone(), &effects);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        let id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "0".into(),
        };
        Builder {
            dir: self.dir.clone(),
            file: SnapshotFile {
                meta: SnapshotMeta {
                    last_log_id: self.last_applied,
                    last_membership: self.membership.clone(),
                    snapshot_id: id,
                },
                state: (*self.state).clone(),
            },
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                &invalid(e),
            )
        })?;
        let stored = Stored {
            meta: meta.clone(),
            bytes,
        };
        StateMachine::save(&self.dir, &stored).await.map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                &e,
            )
        })?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.state = Arc::new(file.state);
        *self.current.lock().expect("snapshot lock") = Some(stored);
        (self.publish)(self.state.clone(), &[]);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .current
            .lock()
            .expect("snapshot lock")
            .clone()
            .map(|s| Snapshot {
                meta: s.meta,
                snapshot: Box::new(Cursor::new(s.bytes)),
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::store::LogStore;
    use openraft::testing::{StoreBuilder, Suite};
    use tempfile::TempDir;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore<TypeConfig>, StateMachine, TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(TempDir, LogStore<TypeConfig>, StateMachine), StorageError> {
            let io = |e: io::Error| io_err(ErrorSubject::Store, ErrorVerb::Write, &e);
            let dir = tempfile::tempdir().map_err(io)?;
            let log = LogStore::open(&dir.path().join("log")).map_err(io)?;
            let sm = StateMachine::open(dir.path(), Arc::new(|_, _| {})).map_err(io)?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's storage conformance suite, against the durable log store
    /// and this state machine.
    #[test]
    fn openraft_conformance_suite() {
        Suite::test_all(Builder).expect("the storage suite passes");
    }

    #[test]
    fn a_snapshot_survives_a_restart_and_a_torn_one_is_refused() {
        use crate::config::Role;
        use crate::control::state::{Command, NodeSpec};
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut sm = StateMachine::open(dir.path(), Arc::new(|_, _| {})).unwrap();
            let spec = NodeSpec {
                id: NodeId(1),
                role: Role::Writer,
                voter: true,
                http_addr: "127.0.0.1:1".into(),
                control_addr: "127.0.0.1:2".into(),
                replication_addr: "127.0.0.1:3".into(),
                shard_count: 1,
                version: "0".into(),
            };
            let entry = Entry {
                log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, NodeId(1)), 1),
                payload: EntryPayload::Normal(Command::AddNode(spec)),
            };
            let r = sm.apply([entry]).await.unwrap();
            assert_eq!(r, vec![Ok(vec![Effect::NodeAdded(NodeId(1))])]);
            let mut b = sm.get_snapshot_builder().await;
            b.build_snapshot().await.unwrap();
        });
        let seen = Arc::new(Mutex::new(None));
        let s2 = seen.clone();
        let mut sm = StateMachine::open(
            dir.path(),
            Arc::new(move |st, _| *s2.lock().unwrap() = Some(st)),
        )
        .unwrap();
        let state = seen.lock().unwrap().clone().unwrap();
        assert!(state.nodes.contains_key(&NodeId(1)));
        let (applied, _) = rt.block_on(sm.applied_state()).unwrap();
        assert_eq!(applied.map(|l| l.index), Some(1));
        // A torn snapshot file is an error, not an empty state.
        let path = dir.path().join("snapshot");
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = StateMachine::open(dir.path(), Arc::new(|_, _| {})).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }
}
