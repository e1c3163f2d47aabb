//! Durable Raft log store for openraft 0.9 (`storage-v2` API).
//!
//! # What it owns
//!
//! [`LogStore`] owns one directory and everything in it:
//!
//! * `vote` — the current vote: one frame (see below) whose payload is the JSON encoded
//!   `Vote`. It is replaced atomically: written to `vote.tmp`, `fdatasync`ed, renamed over
//!   `vote`, then the directory is fsynced.
//! * `log` — an append-only sequence of frames. Each payload is a JSON encoded record:
//!   `Append(Vec<Entry>)`, `TruncateFrom(index)`, `Purge(LogId)` or `Committed(Option<LogId>)`.
//!   Replaying the records in order rebuilds the in-memory log (`BTreeMap<index, Entry>`), the
//!   last purged log id and the committed log id.
//! * `vote.tmp`, `log.tmp` — transient files of an atomic replace; deleted on open.
//!
//! A frame is `[u32 LE payload length][u32 LE crc32c(payload)][payload]`.
//!
//! On open, the first frame that is short, fails its CRC or does not decode ends the log: it
//! and everything after it are cut off (a torn write from a crash), a warning is logged and
//! the file is synced. I/O errors while reading are returned, never "repaired".
//!
//! When `log` is larger than [`LogStoreOptions::compact_threshold`] and less than half of it
//! is still live (not purged or truncated), it is rewritten as `log.tmp` — one `Purge`, one
//! `Committed`, then `Append` records holding the live entries — `fdatasync`ed, renamed over
//! `log`, and the directory is fsynced.
//!
//! # Threading
//!
//! All file I/O happens on one dedicated thread, `tidemark-raft-io`. The async methods update
//! the in-memory state (so readers see appended entries at once), then queue a job on a
//! bounded channel (`send().await` applies backpressure; nothing is dropped). The thread takes
//! every queued job at once and writes them with one `write` and at most one `fdatasync`
//! (group commit). It exits when every handle is gone (the last handle's drop waits for it) or
//! on [`LogStore::close`].
//!
//! # Durability contract
//!
//! * `append`: the flush callback fires only after the entries (and every earlier record) are
//!   `fdatasync`ed. I/O errors are passed to the callback.
//! * `save_vote`: returns only after the vote is durable (only then does `read_vote` see it).
//!   Log records queued before it are written (and, if an append is among them, synced)
//!   before the vote file is replaced.
//! * `truncate`, `purge`, `save_committed`: return once their record is written to the log file
//!   in order; they become durable with the next `fdatasync` (the next append, close, or
//!   shutdown). Losing them in a crash is safe: replay stops at the first bad frame, so a
//!   surviving record implies every earlier record survived, and an append acknowledged after
//!   them was synced together with them.
//! * After any write or sync error on `log` the store is poisoned: every later write fails,
//!   because what reached the disk is unknown. Reopening replays whatever is valid.
//!
//! # Limitations
//!
//! * Compaction runs on the I/O thread and stalls writes while it re-reads `log` and rewrites
//!   the live entries; it suits logs that are purged after snapshots (small live set).
//! * A write-method future dropped before completion can leave memory ahead of the disk;
//!   openraft does not cancel these calls.
//! * Replay cannot tell a torn write from mid-file corruption: both end the log there.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::fmt;
use std::fmt::Debug;
use std::fs;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::marker::PhantomData;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::LogId;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogId;
use openraft::RaftLogReader;
use openraft::RaftTypeConfig;
use openraft::StorageError;
use openraft::Vote;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

/// Default size above which a mostly dead `log` file is rewritten.
pub const DEFAULT_COMPACT_THRESHOLD: u64 = 4 << 20;
/// Default capacity of the job channel to the I/O thread.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 256;

const IO_THREAD_NAME: &str = "tidemark-raft-io";
const LOG_FILE: &str = "log";
const LOG_TMP_FILE: &str = "log.tmp";
const VOTE_FILE: &str = "vote";
const VOTE_TMP_FILE: &str = "vote.tmp";
const HEADER_LEN: usize = 8;
/// Largest payload accepted, written or read. Larger lengths in a header mean corruption.
const MAX_PAYLOAD_LEN: u32 = 1 << 30;
/// At most this many jobs are taken in one group commit.
const MAX_BATCH_JOBS: usize = 4096;
/// Entries per `Append` record when rewriting the log.
const COMPACT_CHUNK_ENTRIES: usize = 1024;

/// Tuning knobs of a [`LogStore`].
#[derive(Debug, Clone)]
pub struct LogStoreOptions {
    /// Rewrite `log` when it is at least this large and less than half of it is live.
    pub compact_threshold: u64,
    /// Capacity of the bounded job channel to the I/O thread.
    pub channel_capacity: usize,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        Self {
            compact_threshold: DEFAULT_COMPACT_THRESHOLD,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
        }
    }
}

mod format;
mod worker;

use format::*;
use worker::*;

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

struct MemState<C: RaftTypeConfig> {
    log: BTreeMap<u64, C::Entry>,
    last_purged: Option<LogId<C::NodeId>>,
    committed: Option<LogId<C::NodeId>>,
    vote: Option<Vote<C::NodeId>>,
}

struct Inner<C: RaftTypeConfig> {
    dir: PathBuf,
    state: Mutex<MemState<C>>,
    // Field order matters: `tx` must drop before `io_thread` joins.
    tx: mpsc::Sender<Job<C>>,
    _io_thread: IoThread,
}

/// Durable Raft log store; see the module documentation.
///
/// Cloning is cheap and yields another handle to the same store (used as the log reader).
/// The I/O thread stops when the last handle is dropped — the drop blocks until queued writes
/// are done — or when [`LogStore::close`] is called.
pub struct LogStore<C: RaftTypeConfig> {
    inner: Arc<Inner<C>>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    /// The index of the last entry known committed (0 before any).
    pub fn committed_index(&self) -> u64 {
        self.state().committed.as_ref().map_or(0, |l| l.index)
    }

    fn state(&self) -> MutexGuard<'_, MemState<C>> {
        // The state is only mutated by simple map operations; a panic elsewhere can't leave it
        // half-updated in a way that matters, so a poisoned lock is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C: RaftTypeConfig> Debug for LogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("LogStore")
            .field("dir", &self.inner.dir)
            .field("entries", &state.log.len())
            .field("last_purged", &state.last_purged)
            .field("committed", &state.committed)
            .field("vote", &state.vote)
            .finish()
    }
}

fn log_err<NID: openraft::NodeId>(verb: ErrorVerb, e: io::Error) -> StorageError<NID> {
    StorageError::from_io_error(ErrorSubject::Logs, verb, e)
}

fn vote_err<NID: openraft::NodeId>(verb: ErrorVerb, e: io::Error) -> StorageError<NID> {
    StorageError::from_io_error(ErrorSubject::Vote, verb, e)
}

/// Normalizes a range to `[start, end)` with `end == None` meaning unbounded; `None` if empty.
fn normalize_range(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if start >= end => None,
        _ => Some((start, end)),
    }
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone + Serialize + DeserializeOwned,
{
    /// Opens (creating if needed) the store in `dir` with default options.
    pub fn open(dir: &Path) -> io::Result<LogStore<C>> {
        Self::open_with_options(dir, LogStoreOptions::default())
    }

    /// Opens (creating if needed) the store in `dir`.
    pub fn open_with_options(dir: &Path, options: LogStoreOptions) -> io::Result<LogStore<C>> {
        if !dir.try_exists()? {
            fs::create_dir_all(dir)?;
            // Make the new directory entry itself durable.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)?.sync_all()?;
            }
        }
        remove_if_exists(&dir.join(VOTE_TMP_FILE))?;
        remove_if_exists(&dir.join(LOG_TMP_FILE))?;
        let dir_handle = File::open(dir)?;

        let vote = read_vote_file::<C>(&dir.join(VOTE_FILE))?;

        let log_path = dir.join(LOG_FILE);
        let existed = log_path.try_exists()?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        if !existed {
            dir_handle.sync_all()?;
        }
        let replayed = replay::<C>(&log_path)?;
        if let Some(reason) = &replayed.bad_tail {
            tracing::warn!(
                path = %log_path.display(),
                offset = replayed.valid_len,
                dropped_bytes = replayed.file_len - replayed.valid_len,
                reason = %reason,
                "raft log has a torn or corrupt tail; truncating it"
            );
            log.set_len(replayed.valid_len)?;
            log.sync_all()?;
        }

        let worker = Worker::<C> {
            dir: dir.to_path_buf(),
            dir_handle,
            log,
            log_len: replayed.valid_len,
            unsynced: false,
            live: replayed.live,
            compact_threshold: options.compact_threshold,
            compaction_disabled: false,
            poisoned: None,
            _config: PhantomData,
        };
        let (tx, rx) = mpsc::channel(options.channel_capacity.max(1));
        let handle = std::thread::Builder::new()
            .name(IO_THREAD_NAME.to_string())
            .spawn(move || worker.run(rx))?;

        let state = MemState {
            log: replayed.log,
            last_purged: replayed.last_purged,
            committed: replayed.committed,
            vote,
        };
        Ok(LogStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                state: Mutex::new(state),
                tx,
                _io_thread: IoThread(Some(handle)),
            }),
        })
    }

    /// Makes everything durable and stops the I/O thread. Writes through other handles fail
    /// afterwards; reads keep working. Returns once the thread has finished all queued work.
    pub async fn close(self) -> io::Result<()> {
        self.request(|reply| Job::Close { reply }).await
    }

    /// Sends a job that replies on a oneshot and waits for the reply.
    async fn request(&self, make: impl FnOnce(Reply) -> Job<C>) -> io::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(make(reply))
            .await
            .map_err(|_| closed_error())?;
        rx.await.map_err(|_| closed_error())?
    }

    async fn log_request(&self, op: LogOp, record: &RecordRef<'_, C>) -> io::Result<()> {
        let frame = encode_frame(record)?;
        self.request(|reply| Job::Log {
            op,
            frame,
            done: Done::Written(reply),
        })
        .await
    }

    fn read_range(&self, range: &impl RangeBounds<u64>) -> Vec<C::Entry> {
        let Some((start, end)) = normalize_range(range) else {
            return Vec::new();
        };
        let state = self.state();
        match end {
            Some(end) => state
                .log
                .range(start..end)
                .map(|(_, e)| e.clone())
                .collect(),
            None => state.log.range(start..).map(|(_, e)| e.clone()).collect(),
        }
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone + Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        Ok(self.read_range(&range))
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone + Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let state = self.state();
        let last_purged_log_id = state.last_purged.clone();
        let last_log_id = match state.log.last_key_value() {
            Some((_, entry)) => Some(entry.get_log_id().clone()),
            None => last_purged_log_id.clone(),
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let frame = encode_frame(vote).map_err(|e| vote_err(ErrorVerb::Write, e))?;
        self.request(|reply| Job::Vote { frame, reply })
            .await
            .map_err(|e| vote_err(ErrorVerb::Write, e))?;
        // Published only once durable, so `read_vote` never returns a vote a crash could lose.
        self.state().vote = Some(vote.clone());
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.state().vote.clone())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        self.state().committed = committed.clone();
        self.log_request(LogOp::Committed, &RecordRef::Committed(&committed))
            .await
            .map_err(|e| log_err(ErrorVerb::Write, e))
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.state().committed.clone())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        // Even an empty append goes through the thread: its callback must not overtake the
        // flush of earlier appends.
        let (op, frame) = match entries.first() {
            Some(first) => {
                let op = LogOp::Append {
                    first: first.get_log_id().index,
                    count: entries.len() as u64,
                };
                let frame = encode_frame(&RecordRef::<C>::Append(&entries))
                    .map_err(|e| log_err(ErrorVerb::Write, e))?;
                (op, frame)
            }
            None => (LogOp::Append { first: 0, count: 0 }, Vec::new()),
        };
        {
            let mut state = self.state();
            for entry in entries {
                state.log.insert(entry.get_log_id().index, entry);
            }
        }
        let job = Job::Log {
            op,
            frame,
            done: Done::Flushed(callback),
        };
        if let Err(mpsc::error::SendError(job)) = self.inner.tx.send(job).await {
            job.fail(closed_error());
            return Err(log_err(ErrorVerb::Write, closed_error()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let index = log_id.index;
        drop(self.state().log.split_off(&index));
        self.log_request(LogOp::TruncateFrom(index), &RecordRef::TruncateFrom(index))
            .await
            .map_err(|e| {
                StorageError::from_io_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, e)
            })
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let index = log_id.index;
        {
            let mut state = self.state();
            if state.last_purged.as_ref() < Some(&log_id) {
                state.last_purged = Some(log_id.clone());
            }
            state.log = match index.checked_add(1) {
                Some(keep_from) => state.log.split_off(&keep_from),
                None => BTreeMap::new(),
            };
        }
        self.log_request(LogOp::PurgeUpto(index), &RecordRef::Purge(&log_id))
            .await
            .map_err(|e| {
                StorageError::from_io_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, e)
            })
    }
}

#[cfg(test)]
mod tests;
