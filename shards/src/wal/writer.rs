//! The group-commit writer: appenders queue encoded entries, one committer
//! task per shard writes each group with one write and one sync.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use event_listener::{Event, EventListener};
use monoio::fs::{File, OpenOptions};

use super::epochs::EpochHistory;
use super::format::{self, EntryKind, EntryRef, SegmentHeader, SEGMENT_HEADER_LEN};
use super::{
    list_spares, map_segment, read_segments, recover, segment_path, spare_path, RecoveryReport,
    SegmentMeta, SyncMode, WalConfig, WalError, WalIo,
};
use crate::ids::{Epoch, SegmentId, WalSeq};

/// How long the committer waits before retrying a write that found the disk full.
const DISK_FULL_RETRY: Duration = Duration::from_millis(200);

/// The result of scanning a WAL directory: its segments (torn tail already
/// truncated) and what recovery found. `Send`, unlike [`Wal`].
#[derive(Debug, Clone)]
pub struct Recovered {
    pub segments: Vec<SegmentMeta>,
    pub report: RecoveryReport,
}

impl Recovered {
    /// Scans (and repairs) the WAL in `config.dir`; plain blocking I/O.
    /// `floor`: the lowest sequence number still needed (see [`Wal::open`]).
    pub fn scan(config: &WalConfig, floor: WalSeq) -> Result<Recovered, WalError> {
        fs::create_dir_all(&config.dir).map_err(|e| WalError::io("create", &config.dir, e))?;
        let (segments, report) = recover(&config.dir, config.recovery_mode, floor)?;
        Ok(Recovered { segments, report })
    }
}

/// A shard's WAL, open for appends. Cheap to clone (a shared handle); not
/// `Send`: it lives on its shard's core. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct Wal {
    inner: Rc<Inner>,
}

/// What one group commit did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// Entries in the group.
    pub entries: u64,
    /// The group's last entry (durable once the observer returns).
    pub last: WalSeq,
    /// Bytes written.
    pub bytes: u64,
    /// Time spent in `fdatasync`/`fsync` (`None` with sync mode `none`).
    pub sync: Option<Duration>,
}

/// Called by the committer after every group commit.
pub type CommitObserver = Box<dyn Fn(&CommitInfo)>;

struct Inner {
    config: WalConfig,
    /// The epoch local appends are written with ([`Wal::set_epoch`]).
    epoch: Cell<Epoch>,
    /// Which epoch wrote which entries (saved in `<dir>/epochs`).
    history: RefCell<EpochHistory>,
    observer: RefCell<Option<CommitObserver>>,
    state: RefCell<WriterState>,
    /// The most recent committed groups, as written (replication reads them).
    ring: RefCell<Ring>,
    /// Sealed segments removed while a reader still needed them (retention cap).
    forced_removals: Cell<u64>,
    /// Flushed segment files kept for reuse as new segments (at most
    /// `spare_segments`), the next one to use last.
    spares: RefCell<Vec<PathBuf>>,
    /// One token per segment that a reader has mapped: a chunk handed out
    /// holds it, and a segment whose token is alive is never recycled (its
    /// bytes would change under the chunk).
    maps: RefCell<HashMap<SegmentId, Weak<()>>>,
    /// Wakes the committer: entries are pending, or the WAL is closing.
    work: Event,
    /// Wakes appenders waiting for room in the queue (the committer took a
    /// group), and everyone on failure or close.
    room: Event,
    /// Wakes appenders waiting for their entry: `durable_seq` advanced, a
    /// failure, or the committer stopped.
    durable: Event,
}

impl Inner {
    fn wake_all(&self) {
        self.room.notify(usize::MAX);
        self.durable.notify(usize::MAX);
    }

    /// The token that readers' maps of segment `id` hold.
    fn map_token(&self, id: SegmentId) -> Arc<()> {
        let mut maps = self.maps.borrow_mut();
        if let Some(token) = maps.get(&id).and_then(Weak::upgrade) {
            return token;
        }
        let token = Arc::new(());
        maps.insert(id, Arc::downgrade(&token));
        token
    }

    /// Takes a spare file for a new segment, if there is one.
    fn take_spare(&self) -> Option<PathBuf> {
        self.spares.borrow_mut().pop()
    }

    /// Deletes the spares (the disk is full: their space goes first).
    /// Returns how many were deleted.
    fn release_spares(&self) -> usize {
        let spares = self.spares.take();
        let mut released = 0;
        for spare in &spares {
            match fs::remove_file(spare) {
                Ok(()) => released += 1,
                Err(e) => {
                    tracing::warn!(spare = %spare.display(), error = %e, "cannot delete spare WAL segment");
                }
            }
        }
        if released > 0 {
            tracing::warn!(released, "WAL disk full: deleted the spare segments");
        }
        released
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Invariants: `durable_seq < next_seq`; `pending` holds exactly the entries
/// `pending_first ..= next_seq - 1` (empty when `pending_first == next_seq`);
/// `segments` is sorted and its last element is the active segment.
#[derive(Debug)]
struct WriterState {
    next_seq: WalSeq,
    durable_seq: WalSeq,
    pending: Vec<u8>,
    pending_first: WalSeq,
    segments: Vec<SegmentMeta>,
    /// Entries from this seq on are still needed by a replication reader:
    /// segments holding them are kept (up to `max_retained_bytes`).
    hold: Option<WalSeq>,
    /// Set after a write or sync error other than a full disk.
    failed: Option<String>,
    /// Set while the committer is retrying a write that found the disk full.
    disk_full: bool,
    closing: bool,
    committer_done: bool,
    /// The active segment was replaced under the committer (a truncation):
    /// it must open the active segment's file before the next write.
    reopen: bool,
}

impl Wal {
    /// Opens the WAL in `config.dir`, recovering what is there (torn tail
    /// truncated, corruption handled by `config.recovery_mode`), and starts
    /// its committer task on the current monoio runtime.
    ///
    /// `floor` is the lowest sequence number the next entry may have: the
    /// flushed watermark + 1, so numbering continues after all segments were
    /// deleted.
    pub async fn open(config: WalConfig, floor: WalSeq) -> Result<(Wal, RecoveryReport), WalError> {
        let recovered = Recovered::scan(&config, floor)?;
        let report = recovered.report.clone();
        Ok((Wal::open_recovered(config, floor, recovered).await?, report))
    }

    /// Opens the WAL for appends after [`Recovered::scan`] (which may run on
    /// another thread, so that a long scan does not stall the core).
    pub async fn open_recovered(
        config: WalConfig,
        floor: WalSeq,
        recovered: Recovered,
    ) -> Result<Wal, WalError> {
        let Recovered {
            mut segments,
            report,
        } = recovered;
        let last_seq = report.last_seq.unwrap_or(WalSeq::ZERO);
        let next_seq = last_seq.next().max(floor);
        // Pairs past the end of the log name entries that never became
        // durable (a crash right after the file was saved).
        let mut history = EpochHistory::load(&config.dir)
            .map_err(|e| WalError::io("read", &config.dir.join(super::epochs::FILE), e))?;
        if history.truncate_after(next_seq.prev().unwrap_or(WalSeq::ZERO)) {
            history
                .save(&config.dir)
                .map_err(|e| WalError::io("write", &config.dir.join(super::epochs::FILE), e))?;
        }
        let epoch = history.last_epoch();
        // Append to the last segment only if it continues the numbering;
        // otherwise (no segment, or the floor moved past it) start a new one.
        let reuse_last = segments
            .last()
            .is_some_and(|s| s.last_seq.map_or(s.first_seq, WalSeq::next) == next_seq);
        let mut spares = adopt_spares(&config)?;
        if !reuse_last {
            let id = segments.last().map_or(SegmentId(1), |s| s.id.next());
            let meta = create_segment(&config, id, next_seq, spares.pop()).await?;
            segments.push(meta);
        }
        let wal = Wal {
            inner: Rc::new(Inner {
                state: RefCell::new(WriterState {
                    next_seq,
                    durable_seq: next_seq.prev().unwrap_or(WalSeq::ZERO),
                    pending: Vec::with_capacity(1 << 20),
                    pending_first: next_seq,
                    segments,
                    hold: None,
                    failed: None,
                    disk_full: false,
                    closing: false,
                    reopen: false,
                    committer_done: false,
                }),
                ring: RefCell::new(Ring::new(config.ring_bytes)),
                forced_removals: Cell::new(0),
                spares: RefCell::new(spares),
                maps: RefCell::new(HashMap::new()),
                epoch: Cell::new(epoch),
                history: RefCell::new(history),
                config,
                observer: RefCell::new(None),
                work: Event::new(),
                room: Event::new(),
                durable: Event::new(),
            }),
        };
        let active = wal.inner.state.borrow().segments.last().cloned();
        let file = match active {
            Some(seg) => OpenOptions::new()
                .write(true)
                .open(&seg.path)
                .await
                .map_err(|e| WalError::io("open", &seg.path, e))?,
            None => unreachable!("a segment was created above"),
        };
        monoio::spawn(committer(wal.inner.clone(), file));
        Ok(wal)
    }

    /// Sets the function called after every group commit (for metrics).
    pub fn set_commit_observer(&self, observer: CommitObserver) {
        *self.inner.observer.borrow_mut() = Some(observer);
    }

    pub fn config(&self) -> &WalConfig {
        &self.inner.config
    }

    /// The highest durable sequence number (`ZERO` if none).
    pub fn durable_seq(&self) -> WalSeq {
        self.inner.state.borrow().durable_seq
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> WalSeq {
        self.inner.state.borrow().next_seq
    }

    /// The segments, oldest first; the last one is being appended to.
    pub fn segments(&self) -> Vec<SegmentMeta> {
        self.inner.state.borrow().segments.clone()
    }

    /// Appends one entry whose payload `write_payload` encodes, and returns
    /// its sequence number once it is durable. Waits while too much is
    /// queued. A payload error leaves the WAL unchanged.
    ///
    /// `on_assigned` runs with the entry's sequence number right after the
    /// entry is queued, in the same synchronous step: whatever it records
    /// is recorded even if the caller stops waiting for durability.
    pub async fn append_with<E: std::fmt::Display>(
        &self,
        kind: EntryKind,
        write_payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
        on_assigned: impl FnOnce(WalSeq),
    ) -> Result<WalSeq, WalError> {
        let inner = &self.inner;
        self.wait_room().await?;
        let seq = {
            let epoch = inner.epoch.get();
            self.note_epoch(epoch, inner.state.borrow().next_seq)?;
            let mut st = inner.state.borrow_mut();
            let seq = st.next_seq;
            format::encode_entry(&mut st.pending, seq, epoch, kind, write_payload)
                .map_err(|e| WalError::Encode(e.to_string()))?;
            st.next_seq = seq.next();
            seq
        };
        on_assigned(seq);
        inner.work.notify(1);
        self.wait_durable(seq).await?;
        Ok(seq)
    }

    /// Appends entries `first..=last` exactly as another WAL stored them
    /// (`entries` holds whole framed entries, e.g. received from a
    /// replication writer), once they are durable. `first` must be the
    /// sequence number this WAL gives next, so the two logs stay identical.
    /// `on_assigned` runs once the entries are queued, as in
    /// [`Wal::append_with`]. The caller has checked the entries.
    pub async fn append_raw(
        &self,
        first: WalSeq,
        last: WalSeq,
        entries: &[u8],
        on_assigned: impl FnOnce(),
    ) -> Result<WalSeq, WalError> {
        let inner = &self.inner;
        self.wait_room().await?;
        {
            let st = inner.state.borrow();
            if st.next_seq != first || last < first {
                return Err(WalError::OutOfOrder {
                    expected: st.next_seq,
                    got: first,
                });
            }
        }
        for (seq, epoch) in format::entry_epochs(entries) {
            self.note_epoch(epoch, seq)?;
        }
        {
            let mut st = inner.state.borrow_mut();
            st.pending.extend_from_slice(entries);
            st.next_seq = last.next();
        }
        on_assigned();
        inner.work.notify(1);
        self.wait_durable(last).await?;
        Ok(last)
    }

    /// Backpressure: waits while `max_pending_bytes` are queued.
    async fn wait_room(&self) -> Result<(), WalError> {
        let inner = &self.inner;
        loop {
            let listener = {
                let st = inner.state.borrow();
                st.check_accepting(&inner.config.dir)?;
                if st.pending.len() < inner.config.max_pending_bytes {
                    return Ok(());
                }
                inner.room.listen()
            };
            listener.await;
        }
    }

    async fn wait_durable(&self, seq: WalSeq) -> Result<(), WalError> {
        let inner = &self.inner;
        loop {
            let listener = {
                let st = inner.state.borrow();
                if st.durable_seq >= seq {
                    return Ok(());
                }
                if let Some(f) = &st.failed {
                    return Err(WalError::Poisoned(f.clone()));
                }
                inner.durable.listen()
            };
            listener.await;
        }
    }

    /// A listener that fires when `durable_seq` advances (or the WAL fails
    /// or closes). Take it *before* checking [`Wal::durable_seq`], so no
    /// advance is missed.
    pub fn listen_durable(&self) -> EventListener {
        self.inner.durable.listen()
    }

    /// Makes the next entry `next` (ahead of [`Wal::next_seq`]): entries
    /// before it will never be appended here, because a replication reader
    /// bootstrapped them from the writer's files. Nothing may be queued. The
    /// next group starts a new segment at `next`; older segments go with the
    /// next [`Wal::remove_segments_through`].
    pub fn restart_at(&self, next: WalSeq) -> Result<(), WalError> {
        let mut st = self.inner.state.borrow_mut();
        st.check_accepting(&self.inner.config.dir)?;
        if !st.pending.is_empty() || st.durable_seq.next() != st.next_seq || next < st.next_seq {
            return Err(WalError::OutOfOrder {
                expected: st.next_seq,
                got: next,
            });
        }
        st.next_seq = next;
        st.pending_first = next;
        st.durable_seq = next.prev().unwrap_or(WalSeq::ZERO);
        self.inner.ring.borrow_mut().clear();
        Ok(())
    }

    /// Sets the epoch that local appends are written with. The first entry
    /// of a newer epoch starts a pair of the epoch history.
    pub fn set_epoch(&self, epoch: Epoch) {
        self.inner.epoch.set(epoch);
    }

    /// The epoch local appends are written with.
    pub fn epoch(&self) -> Epoch {
        self.inner.epoch.get()
    }

    /// Which epoch wrote which entries of this log.
    pub fn history(&self) -> EpochHistory {
        self.inner.history.borrow().clone()
    }

    /// Records that entry `seq` is of `epoch`, saving the history file when
    /// that starts a new epoch (before the entry is queued).
    fn note_epoch(&self, epoch: Epoch, seq: WalSeq) -> Result<(), WalError> {
        let dir = &self.inner.config.dir;
        let mut h = self.inner.history.borrow_mut();
        let mut next = h.clone();
        match next.observe(epoch, seq) {
            Ok(false) => Ok(()),
            Ok(true) => {
                next.save(dir)
                    .map_err(|e| WalError::io("write", &dir.join(super::epochs::FILE), e))?;
                *h = next;
                if epoch > self.inner.epoch.get() {
                    self.inner.epoch.set(epoch);
                }
                Ok(())
            }
            Err(e) => Err(WalError::Epoch(e.to_string())),
        }
    }

    /// After a bootstrap up to `upto`: this log's history of entries up to
    /// `upto` is the writer's.
    pub fn adopt_history(&self, writer: &EpochHistory, upto: WalSeq) -> Result<(), WalError> {
        let dir = &self.inner.config.dir;
        let mut h = self.inner.history.borrow_mut();
        let mut next = h.clone();
        next.adopt_through(writer, upto);
        next.save(dir)
            .map_err(|e| WalError::io("write", &dir.join(super::epochs::FILE), e))?;
        *h = next;
        Ok(())
    }

    /// Cuts the log after entry `last`: the segments past it are deleted,
    /// the one holding it is cut right after it, and the epoch history
    /// forgets what came later; the next entry is `last + 1`, in a new
    /// segment. For a replication follower whose log forked from the
    /// primary's. Nothing may be queued. Returns how many entries went.
    pub async fn truncate_after(&self, last: WalSeq) -> Result<u64, WalError> {
        let inner = &self.inner;
        let dir = &inner.config.dir;
        let (doomed, cut, removed, next_id) = {
            let st = inner.state.borrow();
            st.check_accepting(dir)?;
            if !st.pending.is_empty() || st.durable_seq.next() != st.next_seq {
                return Err(WalError::OutOfOrder {
                    expected: st.next_seq,
                    got: last.next(),
                });
            }
            if last >= st.durable_seq {
                return Ok(0);
            }
            let doomed: Vec<SegmentMeta> = st
                .segments
                .iter()
                .filter(|s| s.first_seq > last)
                .cloned()
                .collect();
            let cut = st
                .segments
                .iter()
                .find(|s| s.first_seq <= last && s.last_seq.is_some_and(|l| l > last))
                .cloned();
            let next_id = st.segments.last().map_or(SegmentId(1), |s| s.id.next());
            (doomed, cut, st.durable_seq.0 - last.0, next_id)
        };
        // Spares may hold entries numbered past `last` (flushed ones the
        // primary never had): a segment reusing one must only ever hold
        // older numbers after its entries, so they go.
        for spare in inner.spares.take() {
            fs::remove_file(&spare).map_err(|e| WalError::io("remove", &spare, e))?;
        }
        // Newest first, so a crash leaves a log without a gap.
        for s in doomed.iter().rev() {
            fs::remove_file(&s.path).map_err(|e| WalError::io("remove", &s.path, e))?;
        }
        let mut cut_len = None;
        if let Some(seg) = &cut {
            let mut len = SEGMENT_HEADER_LEN as u64;
            read_segments(
                std::slice::from_ref(seg),
                seg.first_seq,
                inner.config.recovery_mode,
                |e| {
                    if e.seq > last {
                        return ControlFlow::Break(());
                    }
                    len += e.raw.len() as u64;
                    ControlFlow::Continue(())
                },
            )?;
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&seg.path)
                .map_err(|e| WalError::io("open", &seg.path, e))?;
            f.set_len(len)
                .and_then(|()| f.sync_all())
                .map_err(|e| WalError::io("truncate", &seg.path, e))?;
            cut_len = Some(len);
        }
        let fresh = create_segment(&inner.config, next_id, last.next(), None).await?;
        {
            let mut st = inner.state.borrow_mut();
            st.segments.retain(|s| s.first_seq <= last);
            if let (Some(seg), Some(len)) = (&cut, cut_len) {
                if let Some(m) = st.segments.iter_mut().find(|m| m.id == seg.id) {
                    m.last_seq = Some(last);
                    m.len = len;
                }
            }
            st.segments.push(fresh);
            st.next_seq = last.next();
            st.pending_first = last.next();
            st.durable_seq = last;
            st.reopen = true;
        }
        inner.ring.borrow_mut().clear();
        let mut h = inner.history.borrow_mut();
        if h.truncate_after(last) {
            h.save(dir)
                .map_err(|e| WalError::io("write", &dir.join(super::epochs::FILE), e))?;
        }
        Ok(removed)
    }

    /// Whether the WAL has stopped committing (closed or failed).
    pub fn is_stopped(&self) -> bool {
        self.inner.state.borrow().committer_done
    }

    /// The oldest entry still readable through [`Wal::read_chunk`].
    pub fn oldest_seq(&self) -> WalSeq {
        let st = self.inner.state.borrow();
        let seg = st.segments.first().map_or(st.next_seq, |s| s.first_seq);
        match self.inner.ring.borrow().first_seq() {
            Some(r) => r.min(seg),
            None => seg,
        }
    }

    /// Says which entries replication readers still need: segments holding
    /// entries from `hold` on are kept by [`Wal::remove_segments_through`]
    /// (up to `max_retained_bytes`). `None`: no reader holds anything.
    pub fn set_hold(&self, hold: Option<WalSeq>) {
        self.inner.state.borrow_mut().hold = hold;
    }

    /// Segments removed although a reader still needed them, since start.
    pub fn forced_removals(&self) -> u64 {
        self.inner.forced_removals.get()
    }

    /// Reads whole durable entries from `from` on, at most about
    /// `max_bytes` of them (at least one), as they are stored: from the
    /// ring of recent groups when it has them, else from a memory map of
    /// the segment (kept in `cursor` for the next call). No byte is copied.
    /// `Ok(None)`: nothing durable from `from` yet.
    pub fn read_chunk(
        &self,
        from: WalSeq,
        max_bytes: usize,
        cursor: &mut ReadCursor,
    ) -> Result<Option<Chunk>, ReadError> {
        let (durable, seg) = {
            let st = self.inner.state.borrow();
            if from > st.durable_seq {
                return Ok(None);
            }
            let seg = st
                .segments
                .iter()
                .find(|s| s.first_seq <= from && s.last_seq.is_some_and(|l| l >= from))
                .cloned();
            (st.durable_seq, seg)
        };
        if let Some(c) = self.inner.ring.borrow().read(from, max_bytes) {
            return Ok(Some(c));
        }
        let Some(seg) = seg else {
            return Err(ReadError::Gone {
                from,
                oldest: self.oldest_seq(),
            });
        };
        let last = seg.last_seq.expect("found above").min(durable);
        let token = self.inner.map_token(seg.id);
        cursor.read(&seg, from, last, max_bytes, token)
    }

    /// Appends one entry with `payload` as its bytes.
    pub async fn append(&self, kind: EntryKind, payload: &[u8]) -> Result<WalSeq, WalError> {
        self.append_with(
            kind,
            |out| {
                out.extend_from_slice(payload);
                Ok::<(), std::convert::Infallible>(())
            },
            |_| {},
        )
        .await
    }

    /// Calls `f` for every durable entry from sequence number `from` on, in
    /// order, through memory maps of the segments.
    pub fn read_from(
        &self,
        from: WalSeq,
        f: impl FnMut(EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<(), WalError> {
        let segments = self.segments();
        read_segments(&segments, from, self.inner.config.recovery_mode, f)
    }

    /// Deletes the sealed segments whose entries all have sequence numbers
    /// at or below `watermark`. The active segment is never deleted. Returns
    /// the number of segments deleted.
    ///
    /// Segments holding entries a replication reader still needs (see
    /// [`Wal::set_hold`]) are kept while the flushed segments kept for that
    /// reason total at most `max_retained_bytes`; past that cap the oldest are removed anyway and
    /// the reader that needed them must bootstrap (logged, and counted in
    /// [`Wal::forced_removals`]).
    ///
    /// The files are unlinked through the core's I/O driver (io_uring's
    /// `unlinkat`, run by a kernel worker): an unlink can block for tens of
    /// milliseconds (a filesystem mounted with `discard` trims the freed
    /// blocks synchronously: 40-54 ms per segment here), which on the core
    /// itself stalled every request it was serving.
    pub async fn remove_segments_through(&self, watermark: WalSeq) -> Result<usize, WalError> {
        let doomed: Vec<SegmentMeta> = {
            let mut st = self.inner.state.borrow_mut();
            let sealed = st.segments.len().saturating_sub(1);
            let flushed = |s: &SegmentMeta| s.last_seq.is_none_or(|l| l <= watermark);
            let hold = st.hold;
            let all_flushed = st.segments[..sealed]
                .iter()
                .take_while(|s| flushed(s))
                .count();
            let mut n = st.segments[..all_flushed]
                .iter()
                .take_while(|s| hold.is_none_or(|h| s.last_seq.is_none_or(|l| l < h)))
                .count();
            // Flushed segments kept only for readers count against the cap.
            let mut kept: u64 = st.segments[n..all_flushed].iter().map(|s| s.len).sum();
            let mut forced = 0;
            while n < all_flushed && kept > self.inner.config.max_retained_bytes {
                kept -= st.segments[n].len;
                n += 1;
                forced += 1;
            }
            if forced > 0 {
                tracing::warn!(
                    shard = %self.inner.config.shard,
                    segments = forced,
                    ?hold,
                    max_retained_bytes = self.inner.config.max_retained_bytes,
                    "WAL retention cap reached: removing segments a replication reader still needs; it will have to bootstrap"
                );
                self.inner
                    .forced_removals
                    .set(self.inner.forced_removals.get() + forced);
            }
            st.segments.drain(..n).collect()
        };
        for seg in &doomed {
            let mapped = self
                .inner
                .maps
                .borrow_mut()
                .remove(&seg.id)
                .is_some_and(|w| w.strong_count() > 0);
            let room = self.inner.spares.borrow().len() < self.inner.config.spare_segments;
            if room && !mapped {
                let spare = spare_path(&self.inner.config.dir, seg.id);
                match monoio::fs::rename(&seg.path, &spare).await {
                    Ok(()) => {
                        tracing::debug!(path = %seg.path.display(), spare = %spare.display(), "kept flushed WAL segment as a spare");
                        self.inner.spares.borrow_mut().push(spare);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(path = %seg.path.display(), error = %e, "cannot keep flushed WAL segment as a spare; removing it");
                    }
                }
            }
            monoio::fs::remove_file(&seg.path)
                .await
                .map_err(|e| WalError::io("remove", &seg.path, e))?;
            tracing::debug!(path = %seg.path.display(), "removed flushed WAL segment");
        }
        Ok(doomed.len())
    }

    /// Commits what is queued, stops the committer and waits for it.
    pub async fn close(&self) {
        self.inner.state.borrow_mut().closing = true;
        self.inner.work.notify(usize::MAX);
        loop {
            let listener = {
                if self.inner.state.borrow().committer_done {
                    self.cut_reused_tail();
                    return;
                }
                self.inner.durable.listen()
            };
            listener.await;
        }
    }

    /// After a clean stop: cuts the active segment after its entries if it
    /// reuses a spare (the old bytes past them would read as a torn tail
    /// at the next start).
    fn cut_reused_tail(&self) {
        let st = self.inner.state.borrow();
        if st.failed.is_some() {
            return;
        }
        let Some(seg) = st.segments.last() else {
            return;
        };
        let cut = fs::OpenOptions::new()
            .write(true)
            .open(&seg.path)
            .and_then(|f| {
                if f.metadata()?.len() > seg.len {
                    f.set_len(seg.len)?;
                    f.sync_all()?;
                }
                Ok(())
            });
        if let Err(e) = cut {
            tracing::warn!(path = %seg.path.display(), error = %e, "cannot cut the reused WAL segment after its entries");
        }
    }
}

impl WriterState {
    fn check_accepting(&self, dir: &Path) -> Result<(), WalError> {
        if let Some(f) = &self.failed {
            return Err(WalError::Poisoned(f.clone()));
        }
        if self.closing {
            return Err(WalError::Closed);
        }
        if self.disk_full {
            return Err(WalError::DiskFull {
                path: dir.to_path_buf(),
            });
        }
        Ok(())
    }
}

async fn sync(file: &File, mode: SyncMode) -> std::io::Result<()> {
    match mode {
        SyncMode::Fdatasync => file.sync_data().await,
        SyncMode::Fsync => file.sync_all().await,
        SyncMode::None => Ok(()),
    }
}

/// [`WalIo::Blocking`]: writes `group` at `offset` and syncs it with plain
/// syscalls on this thread.
fn write_and_sync_blocking(
    f: &fs::File,
    group: &[u8],
    offset: u64,
    mode: SyncMode,
    sync_time: &mut Option<Duration>,
) -> Result<(), (&'static str, std::io::Error)> {
    use std::os::unix::fs::FileExt;
    f.write_all_at(group, offset).map_err(|e| ("write", e))?;
    let start = std::time::Instant::now();
    let r = match mode {
        SyncMode::Fdatasync => f.sync_data(),
        SyncMode::Fsync => f.sync_all(),
        SyncMode::None => return Ok(()),
    };
    *sync_time = Some(start.elapsed());
    r.map_err(|e| ("sync", e))
}

/// Creates segment `id` whose first entry will be `first_seq` (reusing the
/// file `spare` if given: its old bytes after the header hold entries
/// numbered below `first_seq`, which a scan takes for the segment's end),
/// makes its header and directory entry durable, and returns its metadata.
async fn create_segment(
    config: &WalConfig,
    id: SegmentId,
    first_seq: WalSeq,
    spare: Option<PathBuf>,
) -> Result<SegmentMeta, WalError> {
    let path = segment_path(&config.dir, id);
    let reused = match spare {
        Some(spare) => match monoio::fs::rename(&spare, &path).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(spare = %spare.display(), error = %e, "cannot reuse spare WAL segment; creating a new one");
                false
            }
        },
        None => false,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(!reused)
        .open(&path)
        .await
        .map_err(|e| WalError::io(if reused { "open" } else { "create" }, &path, e))?;
    let header = SegmentHeader {
        shard: config.shard,
        segment: id,
        first_seq,
    }
    .encode()
    .to_vec();
    let (res, _) = file.write_all_at(header, 0).await;
    res.map_err(|e| WalError::io("write", &path, e))?;
    if config.sync_mode != SyncMode::None {
        file.sync_all()
            .await
            .map_err(|e| WalError::io("sync", &path, e))?;
        let dir = File::open(&config.dir)
            .await
            .map_err(|e| WalError::io("open", &config.dir, e))?;
        dir.sync_all()
            .await
            .map_err(|e| WalError::io("sync", &config.dir, e))?;
    }
    file.close()
        .await
        .map_err(|e| WalError::io("close", &path, e))?;
    Ok(SegmentMeta {
        id,
        path,
        first_seq,
        last_seq: None,
        len: SEGMENT_HEADER_LEN as u64,
    })
}

/// The committer task: takes the queued entries as one group, writes them at
/// the end of the active segment (rotating first if it is full), syncs, and
/// publishes the new `durable_seq`.
async fn committer(inner: Rc<Inner>, mut file: File) {
    let mut spare: Vec<u8> = Vec::with_capacity(1 << 20);
    // With `WalIo::Blocking`, a std handle of the active segment.
    let mut blocking: Option<(SegmentId, fs::File)> = None;
    let mut reopen: Option<PathBuf> = None;
    loop {
        let listener = {
            let mut st = inner.state.borrow_mut();
            if st.pending.is_empty() {
                if st.closing {
                    st.committer_done = true;
                    drop(st);
                    inner.wake_all();
                    return;
                }
                Some(inner.work.listen())
            } else {
                None
            }
        };
        if let Some(l) = listener {
            l.await;
            continue;
        }
        let (group, first, last, active) = {
            let mut st = inner.state.borrow_mut();
            let group = std::mem::replace(&mut st.pending, std::mem::take(&mut spare));
            let first = st.pending_first;
            let last = st.next_seq.prev().expect("pending entries have seqs");
            st.pending_first = st.next_seq;
            let active = st.segments.last().expect("active segment").clone();
            if std::mem::take(&mut st.reopen) {
                reopen = Some(active.path.clone());
            }
            (group, first, last, active)
        };
        if let Some(path) = reopen.take() {
            blocking = None;
            match OpenOptions::new().write(true).open(&path).await {
                Ok(f) => {
                    let old = std::mem::replace(&mut file, f);
                    let _ = old.close().await;
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "WAL segment cannot be opened after a truncation; refusing further writes");
                    let mut st = inner.state.borrow_mut();
                    st.failed = Some(format!("open {}: {e}", path.display()));
                    st.committer_done = true;
                    drop(st);
                    inner.wake_all();
                    return;
                }
            }
        }
        // Room for the next group to queue up while this one is written.
        inner.room.notify(usize::MAX);
        match commit_group(&inner, &mut file, &mut blocking, group, first, last, active).await {
            Ok((mut group, sync)) => {
                if let Some(observe) = inner.observer.borrow().as_ref() {
                    observe(&CommitInfo {
                        entries: last.0 - first.0 + 1,
                        last,
                        bytes: group.len() as u64,
                        sync,
                    });
                }
                if inner.config.ring_bytes > 0 {
                    // Keep the bytes as written for replication readers.
                    let cap = group.capacity();
                    inner
                        .ring
                        .borrow_mut()
                        .push(first, last, Bytes::from(group));
                    spare = Vec::with_capacity(cap);
                } else {
                    group.clear();
                    spare = group;
                }
                inner.state.borrow_mut().durable_seq = last;
                inner.durable.notify(usize::MAX);
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL write failed; refusing further writes");
                let mut st = inner.state.borrow_mut();
                st.failed = Some(e.to_string());
                st.committer_done = true;
                drop(st);
                inner.wake_all();
                return;
            }
        }
    }
}

async fn commit_group(
    inner: &Inner,
    file: &mut File,
    blocking: &mut Option<(SegmentId, fs::File)>,
    mut group: Vec<u8>,
    first: WalSeq,
    last: WalSeq,
    mut active: SegmentMeta,
) -> Result<(Vec<u8>, Option<Duration>), WalError> {
    let config = &inner.config;
    let mut sync_time = None;
    // Rotate when the segment is full, or when the group does not continue
    // it (after `restart_at`).
    let continues = active.last_seq.map_or(active.first_seq, WalSeq::next) == first;
    let full = active.last_seq.is_some() && active.len + group.len() as u64 > config.segment_size;
    if full || !continues {
        let meta = create_segment(config, active.id.next(), first, inner.take_spare()).await?;
        let new_file = OpenOptions::new()
            .write(true)
            .open(&meta.path)
            .await
            .map_err(|e| WalError::io("open", &meta.path, e))?;
        let old = std::mem::replace(file, new_file);
        // The old segment's entries are durable already; closing is a formality.
        let _ = old.close().await;
        inner.state.borrow_mut().segments.push(meta.clone());
        active = meta;
    }
    loop {
        let res = if config.io == WalIo::Blocking {
            let f = match blocking {
                Some((id, f)) if *id == active.id => f,
                _ => {
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(&active.path)
                        .map_err(|e| WalError::io("open", &active.path, e))?;
                    &mut blocking.insert((active.id, f)).1
                }
            };
            write_and_sync_blocking(f, &group, active.len, config.sync_mode, &mut sync_time)
        } else {
            let (res, buf) = file.write_all_at(group, active.len).await;
            group = buf;
            match res {
                Ok(()) => {
                    let start = std::time::Instant::now();
                    let r = sync(file, config.sync_mode).await.map_err(|e| ("sync", e));
                    if config.sync_mode != SyncMode::None {
                        sync_time = Some(start.elapsed());
                    }
                    r
                }
                Err(e) => Err(("write", e)),
            }
        };
        match res {
            Ok(()) => break,
            // A full disk may show at the write or, with delayed allocation,
            // at the sync: free the spares' space and retry at once, or hold
            // the group (its appenders wait) and retry.
            Err((_, e)) if e.raw_os_error() == Some(libc::ENOSPC) && inner.release_spares() > 0 => {
            }
            Err((_, e)) if e.raw_os_error() == Some(libc::ENOSPC) => {
                if !inner.state.borrow().disk_full {
                    tracing::error!(path = %active.path.display(), "WAL disk full; holding the group and retrying");
                    inner.state.borrow_mut().disk_full = true;
                    inner.wake_all();
                }
                monoio::time::sleep(DISK_FULL_RETRY).await;
            }
            Err((op, e)) => return Err(WalError::io(op, &active.path, e)),
        }
    }
    let mut st = inner.state.borrow_mut();
    st.disk_full = false;
    let seg = st.segments.last_mut().expect("active segment");
    seg.len = active.len + group.len() as u64;
    seg.last_seq = Some(last);
    Ok((group, sync_time))
}

/// A run of whole entries `first..=last`, exactly as stored in the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub first: WalSeq,
    pub last: WalSeq,
    pub bytes: Bytes,
}

/// Why [`Wal::read_chunk`] cannot read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The entry was removed (flushed, and past the retention cap).
    #[error("WAL entry {from} is gone (the oldest kept is {oldest})")]
    Gone { from: WalSeq, oldest: WalSeq },
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// Where a reader of segments is: the segment it has mapped and the offset
/// of the next entry, so consecutive reads do not rescan the segment.
#[derive(Debug, Default)]
pub struct ReadCursor {
    map: Option<(SegmentId, Bytes)>,
    /// `(seq, offset)` of the next entry in the mapped segment.
    next: Option<(WalSeq, usize)>,
}

impl ReadCursor {
    fn read(
        &mut self,
        seg: &SegmentMeta,
        from: WalSeq,
        last: WalSeq,
        max_bytes: usize,
        token: Arc<()>,
    ) -> Result<Option<Chunk>, ReadError> {
        let stale = match &self.map {
            Some((id, map)) => *id != seg.id || (map.len() as u64) < seg.len,
            None => true,
        };
        if stale {
            let map = match map_segment(&seg.path, seg.len) {
                Ok(Some(map)) => Bytes::from_owner(LiveMap { map, _token: token }),
                Ok(None) => Bytes::new(),
                // Removed since the list was taken.
                Err(WalError::Io {
                    kind: std::io::ErrorKind::NotFound,
                    ..
                }) => {
                    return Err(ReadError::Gone {
                        from,
                        oldest: from.next(),
                    })
                }
                Err(e) => return Err(e.into()),
            };
            if self.map.as_ref().is_none_or(|(id, _)| *id != seg.id) {
                self.next = None;
            }
            self.map = Some((seg.id, map));
        }
        let map = &self.map.as_ref().expect("mapped above").1;
        let (mut seq, mut at) = match self.next {
            Some((s, at)) if s == from => (s, at),
            _ => (seg.first_seq, SEGMENT_HEADER_LEN),
        };
        // Skip to `from`, then take entries up to `max_bytes`.
        while seq < from {
            at += entry_len_at(map, at)?;
            seq = seq.next();
        }
        let start = at;
        loop {
            at += entry_len_at(map, at)?;
            if seq == last || at - start >= max_bytes {
                break;
            }
            seq = seq.next();
        }
        self.next = Some((seq.next(), at));
        Ok(Some(Chunk {
            first: from,
            last: seq,
            bytes: map.slice(start..at),
        }))
    }
}

/// A reader's map of a segment, holding the segment's token (see
/// `Inner::maps`) for as long as any chunk of it lives.
struct LiveMap {
    map: memmap2::Mmap,
    _token: Arc<()>,
}

impl AsRef<[u8]> for LiveMap {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// The spare files in the WAL directory, up to `spare_segments` of them;
/// the others are deleted.
fn adopt_spares(config: &WalConfig) -> Result<Vec<PathBuf>, WalError> {
    let mut spares = list_spares(&config.dir)?;
    let extra = spares.len().saturating_sub(config.spare_segments);
    for path in spares.drain(..extra) {
        fs::remove_file(&path).map_err(|e| WalError::io("remove", &path, e))?;
    }
    Ok(spares)
}

/// The stored length of the entry at `at` of `bytes` (written by this WAL,
/// so only its length field is read).
fn entry_len_at(bytes: &[u8], at: usize) -> Result<usize, ReadError> {
    let len = bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or(ReadError::Wal(WalError::Encode(format!(
            "entry at offset {at} runs past the durable end"
        ))))?;
    let total = format::entry_len(len);
    if at + total > bytes.len() {
        return Err(ReadError::Wal(WalError::Encode(format!(
            "entry at offset {at} runs past the durable end"
        ))));
    }
    Ok(total)
}

/// The most recent committed groups, as written, up to `cap` bytes (the
/// newest group is kept whatever its size).
#[derive(Debug)]
struct Ring {
    cap: usize,
    bytes: usize,
    groups: VecDeque<(WalSeq, WalSeq, Bytes)>,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring {
            cap,
            bytes: 0,
            groups: VecDeque::new(),
        }
    }

    fn push(&mut self, first: WalSeq, last: WalSeq, bytes: Bytes) {
        self.bytes += bytes.len();
        self.groups.push_back((first, last, bytes));
        while self.bytes > self.cap && self.groups.len() > 1 {
            let (_, _, b) = self.groups.pop_front().expect("more than one group");
            self.bytes -= b.len();
        }
    }

    fn clear(&mut self) {
        self.groups.clear();
        self.bytes = 0;
    }

    fn first_seq(&self) -> Option<WalSeq> {
        self.groups.front().map(|g| g.0)
    }

    fn read(&self, from: WalSeq, max_bytes: usize) -> Option<Chunk> {
        let i = self.groups.partition_point(|g| g.1 < from);
        let (first, last, bytes) = self.groups.get(i)?;
        if *first > from {
            return None;
        }
        let (mut seq, mut at) = (*first, 0);
        while seq < from {
            at += format::entry_len(
                u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize
            );
            seq = seq.next();
        }
        let start = at;
        loop {
            at += format::entry_len(
                u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize
            );
            if seq == *last || at - start >= max_bytes {
                break;
            }
            seq = seq.next();
        }
        Some(Chunk {
            first: from,
            last: seq,
            bytes: bytes.slice(start..at),
        })
    }
}
