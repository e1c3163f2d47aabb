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

// ---------------------------------------------------------------------------------------------
// On-disk records and frames
// ---------------------------------------------------------------------------------------------

/// A log record as written (borrowing, so entries are serialized without a clone).
#[derive(Serialize)]
#[serde(bound = "")]
enum RecordRef<'a, C: RaftTypeConfig> {
    Append(&'a [C::Entry]),
    TruncateFrom(u64),
    Purge(&'a LogId<C::NodeId>),
    Committed(&'a Option<LogId<C::NodeId>>),
}

/// A log record as read back. Same serde shape as [`RecordRef`].
#[derive(Deserialize)]
#[serde(bound = "")]
enum Record<C: RaftTypeConfig> {
    Append(Vec<C::Entry>),
    TruncateFrom(u64),
    Purge(LogId<C::NodeId>),
    Committed(Option<LogId<C::NodeId>>),
}

/// Serializes `value` into a complete frame: header followed by the JSON payload.
fn encode_frame<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut buf, value).map_err(io::Error::other)?;
    let payload = &buf[HEADER_LEN..];
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_PAYLOAD_LEN)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "record of {} bytes exceeds the {MAX_PAYLOAD_LEN} byte limit",
                    payload.len()
                ),
            )
        })?;
    let crc = crc32c::crc32c(payload);
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads into `buf` until it is full or EOF; returns how many bytes were read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

enum FrameRead {
    Frame(Vec<u8>),
    /// Clean end of file at a frame boundary.
    End,
    /// A torn or corrupt frame; the reason.
    Bad(String),
}

/// Reads the next frame. `remaining` is the number of file bytes left from the frame start.
fn read_frame(r: &mut impl Read, remaining: u64) -> io::Result<FrameRead> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_up_to(r, &mut header)?;
    if got == 0 {
        return Ok(FrameRead::End);
    }
    if got < HEADER_LEN {
        return Ok(FrameRead::Bad(format!(
            "short header ({got} of {HEADER_LEN} bytes)"
        )));
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_PAYLOAD_LEN {
        return Ok(FrameRead::Bad(format!("implausible payload length {len}")));
    }
    if u64::from(len) + HEADER_LEN as u64 > remaining {
        return Ok(FrameRead::Bad(format!(
            "payload length {len} runs past the end of the file ({} bytes left)",
            remaining.saturating_sub(HEADER_LEN as u64)
        )));
    }
    let mut payload = vec![0u8; len as usize];
    let got = read_up_to(r, &mut payload)?;
    if got < payload.len() {
        return Ok(FrameRead::Bad(format!(
            "short payload ({got} of {len} bytes)"
        )));
    }
    let actual = crc32c::crc32c(&payload);
    if actual != crc {
        return Ok(FrameRead::Bad(format!(
            "crc mismatch (stored {crc:#010x}, computed {actual:#010x})"
        )));
    }
    Ok(FrameRead::Frame(payload))
}

/// Approximate number of bytes in `log` that still hold live entries, kept as runs of
/// consecutive indexes. Only used to decide when to compact; correctness never depends on it.
#[derive(Debug, Default)]
struct LiveBytes {
    runs: VecDeque<Run>,
    total: u64,
}

#[derive(Debug)]
struct Run {
    first: u64,
    count: u64,
    bytes: u64,
}

impl Run {
    fn scaled(&self, keep: u64) -> u64 {
        let bytes = u128::from(self.bytes) * u128::from(keep) / u128::from(self.count.max(1));
        u64::try_from(bytes).unwrap_or(self.bytes)
    }
}

impl LiveBytes {
    fn append(&mut self, first: u64, count: u64, bytes: u64) {
        if count == 0 {
            return;
        }
        self.truncate_from(first);
        self.runs.push_back(Run {
            first,
            count,
            bytes,
        });
        self.total += bytes;
    }

    fn truncate_from(&mut self, index: u64) {
        while let Some(run) = self.runs.back_mut() {
            if run.first >= index {
                self.total -= run.bytes;
                self.runs.pop_back();
            } else {
                if run.first.saturating_add(run.count) > index {
                    let keep = index - run.first;
                    let bytes = run.scaled(keep);
                    self.total -= run.bytes - bytes;
                    run.count = keep;
                    run.bytes = bytes;
                }
                break;
            }
        }
    }

    /// Forgets every index `<= index`.
    fn purge_upto(&mut self, index: u64) {
        while let Some(run) = self.runs.front_mut() {
            let end = run.first.saturating_add(run.count); // exclusive
            if end <= index.saturating_add(1) {
                self.total -= run.bytes;
                self.runs.pop_front();
            } else {
                if run.first <= index {
                    let keep = end - (index + 1);
                    let bytes = run.scaled(keep);
                    self.total -= run.bytes - bytes;
                    run.first = index + 1;
                    run.count = keep;
                    run.bytes = bytes;
                }
                break;
            }
        }
    }

    fn apply(&mut self, op: &LogOp, frame_len: usize) {
        match *op {
            LogOp::Append { first, count } => self.append(first, count, frame_len as u64),
            LogOp::TruncateFrom(index) => self.truncate_from(index),
            LogOp::PurgeUpto(index) => self.purge_upto(index),
            LogOp::Committed => {}
        }
    }
}

/// The result of replaying `log`.
struct Replayed<C: RaftTypeConfig> {
    log: BTreeMap<u64, C::Entry>,
    last_purged: Option<LogId<C::NodeId>>,
    committed: Option<LogId<C::NodeId>>,
    live: LiveBytes,
    /// Length of the valid prefix.
    valid_len: u64,
    /// Length of the file as found.
    file_len: u64,
    /// Why replay stopped before the end of the file, if it did.
    bad_tail: Option<String>,
}

fn replay<C: RaftTypeConfig>(path: &Path) -> io::Result<Replayed<C>> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut out = Replayed::<C> {
        log: BTreeMap::new(),
        last_purged: None,
        committed: None,
        live: LiveBytes::default(),
        valid_len: 0,
        file_len,
        bad_tail: None,
    };
    loop {
        let remaining = file_len - out.valid_len;
        let payload = match read_frame(&mut reader, remaining)? {
            FrameRead::End => break,
            FrameRead::Bad(reason) => {
                out.bad_tail = Some(reason);
                break;
            }
            FrameRead::Frame(payload) => payload,
        };
        let record: Record<C> = match serde_json::from_slice(&payload) {
            Ok(record) => record,
            Err(e) => {
                out.bad_tail = Some(format!("undecodable record: {e}"));
                break;
            }
        };
        let frame_len = (HEADER_LEN + payload.len()) as u64;
        match record {
            Record::Append(entries) => {
                if let Some(first) = entries.first() {
                    let first = first.get_log_id().index;
                    out.live.append(first, entries.len() as u64, frame_len);
                }
                for entry in entries {
                    out.log.insert(entry.get_log_id().index, entry);
                }
            }
            Record::TruncateFrom(index) => {
                drop(out.log.split_off(&index));
                out.live.truncate_from(index);
            }
            Record::Purge(log_id) => {
                let index = log_id.index;
                if out.last_purged.as_ref() < Some(&log_id) {
                    out.last_purged = Some(log_id);
                }
                out.log = match index.checked_add(1) {
                    Some(keep_from) => out.log.split_off(&keep_from),
                    None => BTreeMap::new(),
                };
                out.live.purge_upto(index);
            }
            Record::Committed(committed) => out.committed = committed,
        }
        out.valid_len += frame_len;
    }
    Ok(out)
}

fn read_vote_file<C: RaftTypeConfig>(path: &Path) -> io::Result<Option<Vote<C::NodeId>>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut reader = bytes.as_slice();
    let payload = match read_frame(&mut reader, bytes.len() as u64)? {
        FrameRead::Frame(payload) => payload,
        FrameRead::End => return Err(invalid_data(format!("{} is empty", path.display()))),
        FrameRead::Bad(reason) => {
            return Err(invalid_data(format!(
                "{} is corrupt: {reason}",
                path.display()
            )))
        }
    };
    if !reader.is_empty() {
        return Err(invalid_data(format!(
            "{} has trailing bytes",
            path.display()
        )));
    }
    let vote = serde_json::from_slice(&payload)
        .map_err(|e| invalid_data(format!("{} does not decode: {e}", path.display())))?;
    Ok(Some(vote))
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs for the I/O thread
// ---------------------------------------------------------------------------------------------

/// What a log record does to the set of live entries (for compaction accounting).
#[derive(Debug)]
enum LogOp {
    Append { first: u64, count: u64 },
    TruncateFrom(u64),
    PurgeUpto(u64),
    Committed,
}

type Reply = oneshot::Sender<io::Result<()>>;

/// How to report that a log job is done.
enum Done<C: RaftTypeConfig> {
    /// An append: requires `fdatasync` before completion.
    Flushed(LogFlushed<C>),
    /// Truncate / purge / committed: completes once written in order.
    Written(Reply),
}

impl<C: RaftTypeConfig> Done<C> {
    fn complete(self, result: io::Result<()>) {
        match self {
            Done::Flushed(callback) => callback.log_io_completed(result),
            // The caller may have given up waiting; nothing to do then.
            Done::Written(reply) => drop(reply.send(result)),
        }
    }
}

enum Job<C: RaftTypeConfig> {
    Log {
        op: LogOp,
        frame: Vec<u8>,
        done: Done<C>,
    },
    Vote {
        frame: Vec<u8>,
        reply: Reply,
    },
    Close {
        reply: Reply,
    },
}

impl<C: RaftTypeConfig> Job<C> {
    fn fail(self, err: io::Error) {
        match self {
            Job::Log { done, .. } => done.complete(Err(err)),
            Job::Vote { reply, .. } | Job::Close { reply } => drop(reply.send(Err(err))),
        }
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "raft log store is closed")
}

/// Log records waiting to be written as one group.
struct Pending<C: RaftTypeConfig> {
    buf: Vec<u8>,
    dones: Vec<Done<C>>,
    sync: bool,
}

/// State owned by the I/O thread.
struct Worker<C: RaftTypeConfig> {
    dir: PathBuf,
    dir_handle: File,
    log: File,
    log_len: u64,
    /// Bytes were written to `log` since the last `fdatasync`.
    unsynced: bool,
    live: LiveBytes,
    compact_threshold: u64,
    compaction_disabled: bool,
    /// Set by the first write/sync error on `log`.
    poisoned: Option<String>,
    _config: PhantomData<fn() -> C>,
}

impl<C: RaftTypeConfig> Worker<C> {
    fn run(mut self, mut rx: mpsc::Receiver<Job<C>>) {
        let mut batch = Vec::new();
        while let Some(job) = rx.blocking_recv() {
            batch.push(job);
            while batch.len() < MAX_BATCH_JOBS {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if self.process(&mut batch) {
                // Closed. Jobs still queued fail with `closed_error` when `rx` drops.
                return;
            }
        }
        // Every handle is gone: make the metadata records durable too.
        if let Err(e) = self.sync_log() {
            tracing::error!(dir = %self.dir.display(), error = %e, "final sync of raft log failed");
        }
    }

    /// Processes one group of jobs. Returns true when the store was closed.
    fn process(&mut self, batch: &mut Vec<Job<C>>) -> bool {
        let mut pending = Pending {
            buf: Vec::new(),
            dones: Vec::new(),
            sync: false,
        };
        let mut closed = false;
        for job in batch.drain(..) {
            if closed {
                job.fail(closed_error());
                continue;
            }
            match job {
                Job::Log { op, frame, done } => {
                    self.live.apply(&op, frame.len());
                    pending.buf.extend_from_slice(&frame);
                    pending.sync |= matches!(done, Done::Flushed(_));
                    pending.dones.push(done);
                }
                Job::Vote { frame, reply } => {
                    self.flush(&mut pending);
                    drop(reply.send(self.write_vote(&frame)));
                }
                Job::Close { reply } => {
                    pending.sync = true;
                    self.flush(&mut pending);
                    drop(reply.send(self.sync_log()));
                    closed = true;
                }
            }
        }
        self.flush(&mut pending);
        if !closed {
            self.maybe_compact();
        }
        closed
    }

    fn poisoned_error(&self) -> Option<io::Error> {
        self.poisoned.as_ref().map(|msg| {
            io::Error::other(format!(
                "raft log store is poisoned by an earlier I/O error: {msg}"
            ))
        })
    }

    fn poison(&mut self, e: &io::Error) {
        tracing::error!(dir = %self.dir.display(), error = %e, "raft log write failed; store poisoned");
        self.poisoned = Some(e.to_string());
    }

    /// Writes the pending group (and syncs it if an append is in it), then completes it.
    fn flush(&mut self, pending: &mut Pending<C>) {
        if pending.dones.is_empty() && pending.buf.is_empty() {
            return;
        }
        let result = self.write_log(&pending.buf, pending.sync);
        match result {
            Ok(()) => pending
                .dones
                .drain(..)
                .for_each(|done| done.complete(Ok(()))),
            Err(e) => {
                let (kind, msg) = (e.kind(), e.to_string());
                pending
                    .dones
                    .drain(..)
                    .for_each(|done| done.complete(Err(io::Error::new(kind, msg.clone()))));
            }
        }
        pending.buf.clear();
        pending.sync = false;
    }

    fn write_log(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        if let Some(e) = self.poisoned_error() {
            return Err(e);
        }
        if !buf.is_empty() {
            if let Err(e) = self.log.write_all(buf) {
                self.poison(&e);
                return Err(e);
            }
            self.log_len += buf.len() as u64;
            self.unsynced = true;
        }
        if sync {
            self.sync_log()?;
        }
        Ok(())
    }

    fn sync_log(&mut self) -> io::Result<()> {
        if let Some(e) = self.poisoned_error() {
            return Err(e);
        }
        if self.unsynced {
            if let Err(e) = self.log.sync_data() {
                self.poison(&e);
                return Err(e);
            }
            self.unsynced = false;
        }
        Ok(())
    }

    fn write_vote(&mut self, frame: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(VOTE_TMP_FILE);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(frame)?;
        file.sync_data()?;
        drop(file);
        fs::rename(&tmp, self.dir.join(VOTE_FILE))?;
        self.dir_handle.sync_all()
    }

    fn maybe_compact(&mut self) {
        if self.poisoned.is_some()
            || self.compaction_disabled
            || self.log_len < self.compact_threshold
            || self.live.total.saturating_mul(2) >= self.log_len
        {
            return;
        }
        let before = self.log_len;
        match self.compact() {
            Ok(()) => tracing::debug!(before, after = self.log_len, "compacted raft log"),
            Err(e) => {
                // `compact` poisons the store itself if the live file may be affected.
                tracing::error!(dir = %self.dir.display(), error = %e, "raft log compaction failed; disabled");
                self.compaction_disabled = true;
            }
        }
    }

    /// Rewrites `log` to hold only the live state. Reads back what this thread wrote, so the
    /// result is exactly the state of every processed job.
    fn compact(&mut self) -> io::Result<()> {
        let log_path = self.dir.join(LOG_FILE);
        let tmp_path = self.dir.join(LOG_TMP_FILE);
        let replayed = replay::<C>(&log_path)?;
        if let Some(reason) = replayed.bad_tail {
            return Err(invalid_data(format!(
                "live raft log does not replay cleanly: {reason}"
            )));
        }

        let mut live = LiveBytes::default();
        let mut len = 0u64;
        let mut out = BufWriter::with_capacity(
            1 << 20,
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp_path)?,
        );
        if let Some(purged) = &replayed.last_purged {
            let frame = encode_frame(&RecordRef::<C>::Purge(purged))?;
            out.write_all(&frame)?;
            len += frame.len() as u64;
        }
        if replayed.committed.is_some() {
            let frame = encode_frame(&RecordRef::<C>::Committed(&replayed.committed))?;
            out.write_all(&frame)?;
            len += frame.len() as u64;
        }
        let entries: Vec<C::Entry> = replayed.log.into_values().collect();
        for chunk in entries.chunks(COMPACT_CHUNK_ENTRIES) {
            let frame = encode_frame(&RecordRef::<C>::Append(chunk))?;
            out.write_all(&frame)?;
            if let Some(first) = chunk.first() {
                live.append(
                    first.get_log_id().index,
                    chunk.len() as u64,
                    frame.len() as u64,
                );
            }
            len += frame.len() as u64;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        drop(file);

        // From here on the live file is replaced; a failure leaves the handle state unknown.
        let swap = (|| {
            fs::rename(&tmp_path, &log_path)?;
            self.dir_handle.sync_all()?;
            OpenOptions::new().append(true).open(&log_path)
        })();
        match swap {
            Ok(file) => {
                self.log = file;
                self.log_len = len;
                self.live = live;
                self.unsynced = false;
                Ok(())
            }
            Err(e) => {
                self.poison(&e);
                Err(e)
            }
        }
    }
}

/// Joins the I/O thread when dropped. Declared after the sender in [`Inner`] so the channel is
/// closed first and the thread drains and exits.
struct IoThread(Option<JoinHandle<()>>);

impl Drop for IoThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            if handle.join().is_err() {
                tracing::error!("{IO_THREAD_NAME} thread panicked");
            }
        }
    }
}

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
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Cursor;

    use openraft::storage::RaftLogStorage;
    use openraft::storage::RaftLogStorageExt;
    use openraft::BasicNode;
    use openraft::CommittedLeaderId;
    use openraft::Entry;
    use openraft::EntryPayload;
    use openraft::LogId;
    use openraft::RaftLogReader;
    use openraft::Vote;
    use tempfile::TempDir;

    use super::LogStore;
    use super::LogStoreOptions;
    use super::LOG_FILE;

    openraft::declare_raft_types!(
        pub TestConfig:
            D = String,
            R = String,
            NodeId = u64,
            Node = BasicNode,
    );

    type Store = LogStore<TestConfig>;

    // The conformance suite runs against this store and the real state
    // machine in `machine.rs`.

    // --- Durability tests ---

    fn lid(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn ent(term: u64, index: u64) -> Entry<TestConfig> {
        Entry {
            log_id: lid(term, index),
            payload: EntryPayload::Normal(format!("payload-{term}-{index}")),
        }
    }

    fn ents(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry<TestConfig>> {
        range.map(|i| ent(term, i)).collect()
    }

    async fn all_entries(store: &mut Store) -> Vec<(u64, u64, String)> {
        store
            .try_get_log_entries(..)
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                let data = match e.payload {
                    EntryPayload::Normal(d) => d,
                    other => format!("{other:?}"),
                };
                (e.log_id.leader_id.term, e.log_id.index, data)
            })
            .collect()
    }

    fn expected(
        term_of: impl Fn(u64) -> u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Vec<(u64, u64, String)> {
        range
            .map(|i| (term_of(i), i, format!("payload-{}-{i}", term_of(i))))
            .collect()
    }

    #[tokio::test]
    async fn reopen_keeps_entries_vote_committed_purged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            for i in 1..=10 {
                s.blocking_append([ent(1, i)]).await.unwrap();
            }
            s.save_vote(&Vote::new_committed(3, 7)).await.unwrap();
            s.save_committed(Some(lid(1, 8))).await.unwrap();
            s.purge(lid(1, 3)).await.unwrap();
            s.close().await.unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(all_entries(&mut s).await, expected(|_| 1, 4..=10));
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(lid(1, 3)));
        assert_eq!(st.last_log_id, Some(lid(1, 10)));
        assert_eq!(
            s.read_vote().await.unwrap(),
            Some(Vote::new_committed(3, 7))
        );
        assert_eq!(s.read_committed().await.unwrap(), Some(lid(1, 8)));
    }

    #[tokio::test]
    async fn drop_without_close_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            let reader = s.get_log_reader().await;
            s.blocking_append(ents(1, 1..=5)).await.unwrap();
            s.save_committed(Some(lid(1, 5))).await.unwrap();
            drop(reader);
            drop(s); // last handle: joins the I/O thread after it drained the queue
        }
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(all_entries(&mut s).await, expected(|_| 1, 1..=5));
        assert_eq!(s.read_committed().await.unwrap(), Some(lid(1, 5)));
    }

    #[tokio::test]
    async fn truncate_then_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.blocking_append(ents(1, 1..=10)).await.unwrap();
            s.truncate(lid(1, 6)).await.unwrap();
            assert_eq!(all_entries(&mut s).await, expected(|_| 1, 1..=5));
            s.blocking_append(ents(2, 6..=8)).await.unwrap();
            s.close().await.unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        let term_of = |i| if i <= 5 { 1 } else { 2 };
        assert_eq!(all_entries(&mut s).await, expected(term_of, 1..=8));
        assert_eq!(
            s.get_log_state().await.unwrap().last_log_id,
            Some(lid(2, 8))
        );
    }

    #[tokio::test]
    async fn purge_past_end_then_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.blocking_append(ents(1, 1..=10)).await.unwrap();
            s.purge(lid(2, 12)).await.unwrap();
            s.close().await.unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        assert!(all_entries(&mut s).await.is_empty());
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(lid(2, 12)));
        assert_eq!(st.last_log_id, Some(lid(2, 12)));
        s.blocking_append([ent(2, 13)]).await.unwrap();
        s.close().await.unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(all_entries(&mut s).await, expected(|_| 2, 13..=13));
    }

    #[tokio::test]
    async fn writes_after_close_fail() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut other = s.clone();
        s.close().await.unwrap();
        assert!(other.blocking_append([ent(1, 1)]).await.is_err());
        assert!(other.save_vote(&Vote::new(1, 1)).await.is_err());
        assert_eq!(other.read_vote().await.unwrap(), None);
    }

    /// Writes entries 1..=5, one record each, and returns the log file path.
    async fn five_records(dir: &TempDir) -> std::path::PathBuf {
        let mut s = Store::open(dir.path()).unwrap();
        for i in 1..=5 {
            s.blocking_append([ent(1, i)]).await.unwrap();
        }
        s.close().await.unwrap();
        dir.path().join(LOG_FILE)
    }

    async fn assert_recovers(dir: &TempDir, survivors: u64, expected_len: u64) {
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(all_entries(&mut s).await, expected(|_| 1, 1..=survivors));
        assert_eq!(
            std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len(),
            expected_len
        );
        // New appends go right after the good prefix and survive another reopen.
        s.blocking_append(ents(1, survivors + 1..=6)).await.unwrap();
        s.close().await.unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(all_entries(&mut s).await, expected(|_| 1, 1..=6));
    }

    fn record_len(i: u64) -> u64 {
        super::encode_frame(&super::RecordRef::<TestConfig>::Append(&[ent(1, i)]))
            .unwrap()
            .len() as u64
    }

    #[tokio::test]
    async fn torn_tail_cut_mid_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = five_records(&dir).await;
        let full = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(full - 3)
            .unwrap();
        assert_recovers(&dir, 4, full - record_len(5)).await;
    }

    #[tokio::test]
    async fn torn_tail_cut_mid_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = five_records(&dir).await;
        let full = std::fs::metadata(&path).unwrap().len();
        let prefix = full - record_len(5);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(prefix + 5)
            .unwrap();
        assert_recovers(&dir, 4, prefix).await;
    }

    #[tokio::test]
    async fn garbage_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = five_records(&dir).await;
        let full = std::fs::metadata(&path).unwrap().len();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"\x10\x00\x00\x00garbage garbage garbage");
        std::fs::write(&path, &bytes).unwrap();
        assert_recovers(&dir, 5, full).await;
    }

    #[tokio::test]
    async fn zeroed_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = five_records(&dir).await;
        let full = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(full + 4096)
            .unwrap();
        assert_recovers(&dir, 5, full).await;
    }

    #[tokio::test]
    async fn corrupt_last_record_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = five_records(&dir).await;
        let mut bytes = std::fs::read(&path).unwrap();
        let full = bytes.len() as u64;
        let last = bytes.len() - 2;
        bytes[last] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert_recovers(&dir, 4, full - record_len(5)).await;
    }

    #[tokio::test]
    async fn corrupt_vote_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.save_vote(&Vote::new(5, 1)).await.unwrap();
            s.close().await.unwrap();
        }
        let vote = dir.path().join(super::VOTE_FILE);
        let mut bytes = std::fs::read(&vote).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&vote, &bytes).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn compaction_rewrites_mostly_purged_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let options = LogStoreOptions {
            compact_threshold: 256 << 10,
            ..LogStoreOptions::default()
        };
        let big = |term: u64, i: u64| Entry::<TestConfig> {
            log_id: lid(term, i),
            payload: EntryPayload::Normal(format!("{i:0>200}")),
        };
        {
            let mut s = Store::open_with_options(dir.path(), options.clone()).unwrap();
            for chunk in (1..=3000u64).collect::<Vec<_>>().chunks(10) {
                s.blocking_append(chunk.iter().map(|&i| big(1, i)))
                    .await
                    .unwrap();
                s.save_committed(Some(lid(1, chunk[0]))).await.unwrap();
            }
            let before = std::fs::metadata(&path).unwrap().len();
            assert!(before > 700 << 10, "log is {before} bytes");

            s.purge(lid(1, 2990)).await.unwrap();
            // Goes through the I/O thread after the compaction triggered by the purge.
            s.save_committed(Some(lid(1, 2995))).await.unwrap();
            let after = std::fs::metadata(&path).unwrap().len();
            assert!(
                after < 8 << 10,
                "log was {before} bytes, is {after} after compaction"
            );

            s.blocking_append((3001..=3010).map(|i| big(1, i)))
                .await
                .unwrap();
            s.close().await.unwrap();
        }
        let mut s = Store::open_with_options(dir.path(), options).unwrap();
        let got = s.try_get_log_entries(..).await.unwrap();
        let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (2991..=3010).collect::<Vec<_>>());
        assert!(
            matches!(&got[0].payload, EntryPayload::Normal(d) if d == &format!("{:0>200}", 2991))
        );
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(lid(1, 2990)));
        assert_eq!(st.last_log_id, Some(lid(1, 3010)));
        assert_eq!(s.read_committed().await.unwrap(), Some(lid(1, 2995)));
        assert!(!dir.path().join(super::LOG_TMP_FILE).exists());
    }

    #[tokio::test]
    async fn concurrent_appends_all_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for k in 0..8u64 {
            let mut h = s.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..25u64 {
                    h.blocking_append([ent(1, 1 + j * 8 + k)]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        s.close().await.unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(all_entries(&mut s).await, expected(|_| 1, 1..=200));
    }

    #[test]
    fn range_normalization() {
        use std::ops::Bound;

        use super::normalize_range;
        assert_eq!(normalize_range(&(3..3)), None);
        assert_eq!(
            normalize_range(&(Bound::Included(5), Bound::Excluded(3))),
            None
        );
        assert_eq!(normalize_range(&(3..=3)), Some((3, Some(4))));
        assert_eq!(normalize_range(&(..)), Some((0, None)));
        assert_eq!(
            normalize_range(&(u64::MAX..=u64::MAX)),
            Some((u64::MAX, None))
        );
    }
}
