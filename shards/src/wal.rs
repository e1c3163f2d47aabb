//! The write-ahead log of one shard.
//!
//! A shard's WAL is a directory of segment files `<id:020>.wal` (format in
//! [`format`]). The shard's core appends entries through [`Wal::append`];
//! entries that arrive while a write is in flight are committed together
//! (group commit: one `write` and one `fdatasync` for the group) by a single
//! committer task on the same core, through the core's io_uring driver.
//!
//! Invariants (kept by `WriterState`):
//! * sequence numbers are gap-free: each appended entry gets `next_seq`, which
//!   then advances by one; `durable_seq < next_seq`;
//! * an append completes only once its entry is durable under the
//!   [`SyncMode`]: `durable_seq >= seq`;
//! * entries reach the file in sequence order, and a segment holds a
//!   contiguous run of sequence numbers starting at its header's `first_seq`.
//!
//! Nothing is dropped: when `max_pending_bytes` are queued, appenders wait
//! (backpressure); when the disk is full, the group in flight is retried and
//! new appends fail with [`WalError::DiskFull`] until space returns; any other
//! write or sync error poisons the WAL (the node must restart and recover,
//! since after a failed `fsync` the page cache can no longer be trusted).
//!
//! Only the shard's own core may append. Readers ([`Wal::read_from`]) map
//! segments with `memmap2` and may run on the same core or, with a segment
//! list obtained from [`Wal::segments`], elsewhere.

pub mod epochs;
pub mod format;
pub mod payload;
pub mod scan;
mod writer;

use std::fs;
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ids::{SegmentId, ShardId, WalSeq};
pub use format::{EntryKind, EntryRef};
pub use scan::{CorruptRegion, RecoveryMode};
pub use writer::{Chunk, CommitInfo, CommitObserver, ReadCursor, ReadError, Recovered, Wal};

/// When an appended entry counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// `fdatasync` after each group write (the default): survives power loss.
    #[default]
    Fdatasync,
    /// `fsync` after each group write: also flushes file metadata.
    Fsync,
    /// No sync: the entry is in the page cache once written. Survives a crash
    /// of the process (kill -9), not of the machine.
    None,
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fdatasync" => Ok(SyncMode::Fdatasync),
            "fsync" => Ok(SyncMode::Fsync),
            "none" => Ok(SyncMode::None),
            other => Err(format!(
                "unknown sync mode {other:?} (expected fdatasync, fsync or none)"
            )),
        }
    }
}

/// How the WAL's committer issues its group writes and syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalIo {
    /// Through the core's io_uring (the default): the kernel hands buffered
    /// writes and syncs to io_uring worker threads (`iou-wrk-*`) while the
    /// core decodes the next requests. The workers need a CPU: on a CPU the
    /// shard core keeps busy, each hand-off waits for a scheduler slice.
    #[default]
    Uring,
    /// Plain blocking `pwrite` and `fdatasync` on the shard core: no
    /// hand-off, but the core waits for the disk. Measured: less
    /// throughput than `Uring` on one busy CPU, a lower tail at half load
    /// (tuning.md).
    Blocking,
}

/// Settings of one shard's WAL.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// The shard's segment directory (created if missing).
    pub dir: PathBuf,
    pub shard: ShardId,
    /// Default `fdatasync`.
    pub sync_mode: SyncMode,
    /// A segment is sealed and a new one started once it holds this many
    /// bytes. Default 64 MiB; at least 64 KiB.
    pub segment_size: u64,
    /// Appends wait while this many bytes are queued for the next group
    /// write. Default 64 MiB.
    pub max_pending_bytes: usize,
    /// Flushed segments kept (renamed `<n>.spare`) and reused as new
    /// segments: overwriting blocks that are already allocated and written
    /// lets `fdatasync` skip the file system's journal commit. Default 4;
    /// 0: removed segments are deleted.
    pub spare_segments: usize,
    /// What to do about a corrupt entry in the middle of the log. Default
    /// `strict`.
    pub recovery_mode: RecoveryMode,
    /// Bytes of recently committed groups kept in memory for replication
    /// readers (the newest group is kept whatever its size). Default 0: off.
    pub ring_bytes: usize,
    /// Flushed segments that a replication reader still needs are kept while
    /// the kept segments total at most this many bytes. Default 1 GiB.
    pub max_retained_bytes: u64,
    /// How group writes and syncs are issued. Default [`WalIo::Uring`].
    pub io: WalIo,
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>, shard: ShardId) -> WalConfig {
        WalConfig {
            dir: dir.into(),
            shard,
            sync_mode: SyncMode::default(),
            segment_size: 64 << 20,
            max_pending_bytes: 64 << 20,
            spare_segments: 4,
            recovery_mode: RecoveryMode::default(),
            ring_bytes: 0,
            max_retained_bytes: 1 << 30,
            io: WalIo::Uring,
        }
    }
}

/// Errors of the WAL. I/O errors name the file and the operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("WAL {op} {path}: {message}")]
    Io {
        op: &'static str,
        path: PathBuf,
        message: String,
        kind: io::ErrorKind,
    },
    #[error("WAL segment {path} has a bad header: {reason}")]
    BadHeader { path: PathBuf, reason: String },
    #[error(
        "WAL segment {path} is corrupt at offset {offset} (expected seq {expected_seq}): {reason}; \
         start with recovery_mode = \"skip\" to skip it"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        expected_seq: WalSeq,
        reason: &'static str,
    },
    #[error("WAL segment {path} starts at seq {found}, expected {expected}: entries are missing")]
    Missing {
        path: PathBuf,
        expected: WalSeq,
        found: WalSeq,
    },
    #[error("WAL failed earlier and accepts no more writes until restart: {0}")]
    Poisoned(String),
    #[error("WAL disk is full ({path}); retry later")]
    DiskFull { path: PathBuf },
    #[error("WAL is closed")]
    Closed,
    #[error("WAL expected entry {expected} next, got {got}")]
    OutOfOrder { expected: WalSeq, got: WalSeq },
    #[error("WAL entry could not be encoded: {0}")]
    Encode(String),
    #[error("WAL epoch history: {0}")]
    Epoch(String),
}

impl WalError {
    fn io(op: &'static str, path: &Path, e: io::Error) -> WalError {
        WalError::Io {
            op,
            path: path.to_path_buf(),
            message: e.to_string(),
            kind: e.kind(),
        }
    }

    /// Whether the caller should retry later (the disk is full) rather than
    /// treat the WAL as broken.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WalError::DiskFull { .. })
    }
}

/// One segment file and the entries it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    pub id: SegmentId,
    pub path: PathBuf,
    pub first_seq: WalSeq,
    /// `None` while the segment holds no entry.
    pub last_seq: Option<WalSeq>,
    /// Bytes of the segment that hold durable entries (header included).
    pub len: u64,
}

/// What recovery found when the WAL was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// The last durable entry, if any.
    pub last_seq: Option<WalSeq>,
    /// Bytes of a torn tail that were truncated from the last segment.
    pub truncated_bytes: u64,
    /// Segment files removed because their header was never completely written.
    pub removed_empty_segments: usize,
    /// Corrupt regions skipped (only in [`RecoveryMode::Skip`]).
    pub corrupt: Vec<CorruptRegion>,
}

pub(crate) fn segment_path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(format!("{:020}.wal", id.0))
}

/// Where the spare kept from segment `id` lives (see
/// [`WalConfig::spare_segments`]); recovery does not read spares.
pub(crate) fn spare_path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(format!("{:020}.spare", id.0))
}

/// The files of `dir` named `<id>.<ext>` (a decimal id), sorted by id.
fn list_numbered(dir: &Path, ext: &str) -> Result<Vec<(SegmentId, PathBuf)>, WalError> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| WalError::io("list", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| WalError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_suffix(ext))
            .and_then(|n| n.strip_suffix('.'))
        else {
            continue;
        };
        if let Ok(id) = stem.parse::<u64>() {
            out.push((SegmentId(id), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The segment files of `dir`, sorted by id.
fn list_segments(dir: &Path) -> Result<Vec<(SegmentId, PathBuf)>, WalError> {
    list_numbered(dir, "wal")
}

/// The spare files of `dir`, sorted by the id of the segment they were.
fn list_spares(dir: &Path) -> Result<Vec<PathBuf>, WalError> {
    Ok(list_numbered(dir, "spare")?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

/// Maps the first `len` bytes of a segment file.
fn map_segment(path: &Path, len: u64) -> Result<Option<memmap2::Mmap>, WalError> {
    if len == 0 {
        return Ok(None);
    }
    let file = fs::File::open(path).map_err(|e| WalError::io("open", path, e))?;
    // SAFETY: this process's WAL writer writes a segment file only past its
    // durable length (appending, or overwriting a reused file's old bytes),
    // recovery truncates only before any map exists, and a file is reused
    // only when no reader's map of it is alive (`Inner::maps` in writer.rs);
    // the mapped range [0, len) is durable and never rewritten while mapped.
    let map = unsafe { memmap2::MmapOptions::new().len(len as usize).map(&file) }
        .map_err(|e| WalError::io("mmap", path, e))?;
    Ok(Some(map))
}

/// Scans every segment in `dir` and repairs a torn tail. The result is the
/// list of segments with their durable lengths.
///
/// `floor` is the lowest sequence number still needed (the flushed
/// watermark plus one): a run missing between two segments is no corruption
/// when every entry in it is below the floor (a replication reader that
/// bootstrapped restarts its log after the writer's watermark).
fn recover(
    dir: &Path,
    mode: RecoveryMode,
    floor: WalSeq,
) -> Result<(Vec<SegmentMeta>, RecoveryReport), WalError> {
    use format::{SegmentHeader, SEGMENT_HEADER_LEN};

    let files = list_segments(dir)?;
    let mut report = RecoveryReport::default();
    let mut segments: Vec<SegmentMeta> = Vec::new();
    let count = files.len();
    for (i, (id, path)) in files.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let file_len = fs::metadata(&path)
            .map_err(|e| WalError::io("stat", &path, e))?
            .len();
        let map = map_segment(&path, file_len)?;
        let data: &[u8] = map.as_deref().unwrap_or(&[]);
        let header = match SegmentHeader::decode(data) {
            Ok(h) if h.segment == id => Ok(h),
            Ok(h) => Err((format!("the header names segment {}", h.segment), is_last)),
            // A header cut off in the last segment was never completed.
            Err(e) => Err((e.to_string(), is_last && data.len() <= SEGMENT_HEADER_LEN)),
        };
        let header = match header {
            Ok(h) => h,
            // Created (or a spare renamed into place), but its header never
            // became durable: it holds no entry of this log.
            Err((reason, true)) => {
                tracing::warn!(path = %path.display(), reason, "removing WAL segment whose header was never written");
                drop(map);
                fs::remove_file(&path).map_err(|e| WalError::io("remove", &path, e))?;
                report.removed_empty_segments += 1;
                continue;
            }
            Err((reason, false)) => return Err(WalError::BadHeader { path, reason }),
        };
        if let Some(prev) = segments.last() {
            let expected = prev.last_seq.map_or(prev.first_seq, WalSeq::next);
            let flushed_gap = header.first_seq > expected && header.first_seq <= floor;
            if header.first_seq != expected && !flushed_gap {
                let err = WalError::Missing {
                    path: path.clone(),
                    expected,
                    found: header.first_seq,
                };
                if mode == RecoveryMode::Strict {
                    return Err(err);
                }
                tracing::error!(error = %err, "skipping missing WAL entries");
            }
        }
        let scan = scan::scan_segment(data, id, header.first_seq, is_last, mode, |_| {
            ControlFlow::Continue(())
        })
        .map_err(|r| WalError::Corrupt {
            path: path.clone(),
            offset: r.offset,
            expected_seq: r.expected_seq,
            reason: r.reason,
        })?;
        for c in &scan.corrupt {
            tracing::error!(path = %path.display(), offset = c.offset, len = c.len, expected_seq = %c.expected_seq, reason = c.reason, "skipped corrupt WAL region");
        }
        drop(map);
        if scan.torn_bytes > 0 {
            tracing::warn!(path = %path.display(), valid_end = scan.valid_end, torn_bytes = scan.torn_bytes, "truncating the WAL tail after the last valid entry (a torn write, or the old bytes of a reused segment)");
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| WalError::io("open", &path, e))?;
            f.set_len(scan.valid_end)
                .and_then(|()| f.sync_all())
                .map_err(|e| WalError::io("truncate", &path, e))?;
            report.truncated_bytes += scan.torn_bytes;
        }
        report.corrupt.extend(scan.corrupt);
        if scan.last_seq.is_some() {
            report.last_seq = scan.last_seq;
        }
        segments.push(SegmentMeta {
            id,
            path,
            first_seq: header.first_seq,
            last_seq: scan.last_seq,
            len: scan.valid_end,
        });
    }
    report.segments = segments.len();
    Ok((segments, report))
}

/// Calls `f` for every entry with a sequence number of at least `from`, in
/// order, reading the given segments through memory maps. `f` may stop early.
pub fn read_segments(
    segments: &[SegmentMeta],
    from: WalSeq,
    mode: RecoveryMode,
    mut f: impl FnMut(EntryRef<'_>) -> ControlFlow<()>,
) -> Result<(), WalError> {
    let start = segments
        .iter()
        .rposition(|s| s.first_seq <= from)
        .unwrap_or(0);
    let count = segments.len();
    for (i, seg) in segments.iter().enumerate().skip(start) {
        if seg.last_seq.is_none_or(|l| l < from) {
            continue;
        }
        let Some(map) = map_segment(&seg.path, seg.len)? else {
            continue;
        };
        let scan = scan::scan_segment(&map, seg.id, seg.first_seq, i + 1 == count, mode, |e| {
            if e.seq < from {
                ControlFlow::Continue(())
            } else {
                f(e)
            }
        })
        .map_err(|r| WalError::Corrupt {
            path: seg.path.clone(),
            offset: r.offset,
            expected_seq: r.expected_seq,
            reason: r.reason,
        })?;
        if scan.stopped {
            break;
        }
    }
    Ok(())
}
