//! One shard: the WAL, buffer and catalog cache that one core owns, and the
//! order in which a write moves through them.
//!
//! A write is checked against the catalog, appended to the WAL (group
//! commit), and, once durable, applied to the buffer in sequence order; then
//! it is acknowledged, so a query issued after the acknowledgement sees it.
//! The batch is queued for the buffer in the same synchronous step that gives
//! it its sequence number, so a write whose caller goes away (a dropped
//! connection) still reaches the buffer once durable, and entries reach the
//! buffer in order whichever task resumes first.
//!
//! Invariants: `flushed_seq <= buffer.applied_seq <= wal.durable_seq` (on a
//! replication reader with `visible_before_durable`, `applied_seq` may run
//! ahead of `durable_seq` up to the entries queued: they are durable on the
//! writer); the buffer holds exactly the rows of the entries after
//! `flushed_seq`.
//!
//! `!Send`: a shard lives on its core; other threads reach it through the
//! core's channels.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use event_listener::Event;

use crate::batch::WriteBatch;
use crate::buffer::{BufferConfig, BufferSnapshot, FlushReason, ShardBuffer};
use crate::catalog::{Catalog, CatalogCache};
use crate::failpoint::crash_point;
use crate::flush::{FlushError, FlushPool};
use crate::ids::{ShardId, WalSeq};
use crate::manifest::{FileMeta, Manifest};
use crate::schema::{SchemaError, TableKey, TableSchema};
use crate::throttle::{Admit, Throttle, ThrottleConfig, ThrottleStats};
use crate::wal::payload::{decode_writes, encode_writes};
use crate::wal::{
    read_segments, EntryKind, Recovered, RecoveryMode, RecoveryReport, Wal, WalConfig, WalError,
};

/// Settings of one shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub wal: WalConfig,
    pub buffer: BufferConfig,
    /// Writes wait while the buffer (flushing set excluded) holds this many
    /// bytes, until a flush frees it. Default 1 GiB.
    pub max_buffer_bytes: usize,
    /// While a flush runs, writes are slowed more as the buffer fills, the
    /// most from this many bytes on ([`crate::throttle`]). Default 256 MiB.
    pub slow_buffer_bytes: usize,
    /// Replication readers only: entries received from the writer (durable
    /// there) are applied to the buffer, and so visible, as soon as they are
    /// queued for this shard's WAL, without waiting for the local sync; they
    /// are still acknowledged only once durable here. A crash may then
    /// un-show rows until they are fetched again. Default false: a row is
    /// visible only once durable.
    pub visible_before_durable: bool,
}

impl ShardConfig {
    pub fn new(wal: WalConfig) -> ShardConfig {
        ShardConfig {
            wal,
            buffer: BufferConfig::default(),
            max_buffer_bytes: 1 << 30,
            slow_buffer_bytes: 256 << 20,
            visible_before_durable: false,
        }
    }
}

/// Errors of a shard, split by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The write does not fit the data model or the table's schema: the
    /// client's fault (HTTP 400). Nothing was written.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error("WAL entry {seq} cannot be replayed: {reason}")]
    Replay { seq: WalSeq, reason: String },
    #[error("the log forked after entry {fork}, but entries up to {flushed} are flushed already")]
    FlushedPastFork { fork: WalSeq, flushed: WalSeq },
}

/// What [`Shard::open`] recovered.
#[derive(Debug, Clone, Default)]
pub struct ShardRecovery {
    pub wal: RecoveryReport,
    pub flushed_seq: WalSeq,
    pub replayed_entries: u64,
    pub replayed_rows: u64,
    /// Entries that passed their checksum but could not be decoded, skipped
    /// in [`RecoveryMode::Skip`].
    pub skipped_entries: Vec<WalSeq>,
}

/// What one flush did.
#[derive(Debug, Clone)]
pub struct FlushOutcome {
    pub upto: WalSeq,
    pub files: Vec<FileMeta>,
    pub rows: u64,
    pub segments_removed: usize,
}

/// Keeps flushes from starting while it lives (see `Shard::hold_flushes`).
struct FlushHold<'a>(&'a Cell<bool>);

impl Drop for FlushHold<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// The tables of one WAL entry, ready for the buffer.
type PendingEntry = Vec<(TableKey, TableSchema, RecordBatch)>;

/// See the [module docs](self).
#[derive(Debug)]
pub struct Shard {
    id: ShardId,
    config: ShardConfig,
    wal: Wal,
    buffer: RefCell<ShardBuffer>,
    catalog: RefCell<CatalogCache>,
    /// Durable-or-soon entries waiting to be applied to the buffer in order.
    pending: RefCell<BTreeMap<WalSeq, PendingEntry>>,
    /// Wakes writers waiting for their entry to be applied, or for buffer room.
    applied: Event,
    flushed_seq: Cell<WalSeq>,
    flush_running: Cell<bool>,
    /// Gradual backpressure ([`crate::throttle`]).
    throttle: RefCell<Throttle>,
    /// Starts as `config.visible_before_durable`; a follower promoted to
    /// primary turns it off ([`Shard::set_visible_before_durable`]).
    visible_before_durable: Cell<bool>,
    flushes: FlushPool,
    manifest: Arc<Manifest>,
}

impl Shard {
    /// Opens the shard's WAL and replays every entry after the manifest's
    /// watermark into a fresh buffer. Must run on the shard's monoio runtime.
    /// The scan and the replay run on a helper thread, so the core's event
    /// loop keeps serving (e.g. answering "not ready") meanwhile.
    pub async fn open(
        config: ShardConfig,
        catalog: Arc<Catalog>,
        flushes: FlushPool,
        manifest: Arc<Manifest>,
    ) -> Result<(Shard, ShardRecovery), ShardError> {
        let id = config.wal.shard;
        let flushed_seq = manifest.flushed_seq(id);
        let (tx, rx) = futures::channel::oneshot::channel();
        let job_config = config.clone();
        std::thread::Builder::new()
            .name(format!("tidemark-recover-{id}"))
            .spawn(move || {
                let _ = tx.send(recover(
                    &job_config,
                    CatalogCache::new(catalog),
                    flushed_seq,
                ));
            })
            .map_err(|e| ShardError::Replay {
                seq: flushed_seq,
                reason: format!("cannot start the recovery thread: {e}"),
            })?;
        let (recovered, buffer, cache, recovery) = rx.await.map_err(|_| ShardError::Replay {
            seq: flushed_seq,
            reason: "the recovery thread died".into(),
        })??;
        let wal = Wal::open_recovered(config.wal.clone(), flushed_seq.next(), recovered).await?;
        let mut buffer = buffer;
        // Entries skipped at the very end still advance the buffer's position.
        buffer.skip_to(wal.durable_seq());
        // A crash between a flush's commit and its segment removal leaves
        // segments that are wholly flushed.
        wal.remove_segments_through(flushed_seq).await?;
        tracing::info!(
            shard = %id,
            flushed_seq = %flushed_seq,
            replayed_entries = recovery.replayed_entries,
            replayed_rows = recovery.replayed_rows,
            truncated_bytes = recovery.wal.truncated_bytes,
            "shard recovered"
        );
        let visible_before_durable = config.visible_before_durable;
        let throttle = Throttle::new(ThrottleConfig {
            slow_bytes: config.slow_buffer_bytes.min(config.max_buffer_bytes),
            max_bytes: config.max_buffer_bytes,
        });
        Ok((
            Shard {
                id,
                config,
                wal,
                buffer: RefCell::new(buffer),
                catalog: RefCell::new(cache),
                pending: RefCell::new(BTreeMap::new()),
                applied: Event::new(),
                flushed_seq: Cell::new(flushed_seq),
                flush_running: Cell::new(false),
                throttle: RefCell::new(throttle),
                visible_before_durable: Cell::new(visible_before_durable),
                flushes,
                manifest,
            },
            recovery,
        ))
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// The last entry whose rows are in Parquet files.
    pub fn flushed_seq(&self) -> WalSeq {
        self.flushed_seq.get()
    }

    /// The last entry whose rows are in the buffer (and so visible).
    pub fn applied_seq(&self) -> WalSeq {
        self.buffer.borrow().applied_seq()
    }

    /// Rows and approximate bytes in the buffer outside a flush in flight.
    pub fn buffered(&self) -> (usize, usize) {
        let b = self.buffer.borrow();
        (b.rows(), b.bytes())
    }

    /// Writes one table's rows; see [`Shard::write_all`].
    pub async fn write(&self, batch: WriteBatch) -> Result<WalSeq, ShardError> {
        self.write_all(vec![batch]).await
    }

    /// Writes the rows of one request, possibly of several tables, as one
    /// WAL entry: returns its sequence number once it is durable and visible
    /// to [`Shard::snapshot`]. All or nothing: a schema error in any table
    /// changes nothing.
    pub async fn write_all(&self, batches: Vec<WriteBatch>) -> Result<WalSeq, ShardError> {
        let mut tables: PendingEntry = Vec::with_capacity(batches.len());
        {
            let mut catalog = self.catalog.borrow_mut();
            for b in &batches {
                let schema = catalog.check(b.table(), b.batch().schema_ref())?;
                tables.push((b.table().clone(), schema, b.batch().clone()));
            }
        }
        self.wait_buffer_room().await;
        let pending = &self.pending;
        let seq = self
            .wal
            .append_with(
                EntryKind::Write,
                |out| {
                    encode_writes(out, &batches);
                    Ok::<(), std::convert::Infallible>(())
                },
                |seq| {
                    pending.borrow_mut().insert(seq, tables);
                },
            )
            .await?;
        self.wait_applied(seq).await;
        Ok(seq)
    }

    /// Takes entries `first..=last` received from a replication writer:
    /// `entries` holds them exactly as the writer stored them, already
    /// checked (whole, checksums valid, gap-free from this shard's next
    /// seq). They are decoded and checked against the catalog, appended to
    /// this shard's WAL byte for byte under the same sequence numbers, and
    /// applied to the buffer once durable. Returns the rows they hold, once
    /// they are durable and visible to queries.
    pub async fn apply_replicated(
        &self,
        first: WalSeq,
        last: WalSeq,
        entries: &[u8],
    ) -> Result<u64, ShardError> {
        let mut decoded: Vec<(WalSeq, PendingEntry)> = Vec::new();
        let mut rows = 0u64;
        {
            let mut catalog = self.catalog.borrow_mut();
            let mut at = 0;
            while at < entries.len() {
                let crate::wal::format::Decoded::Entry(e) =
                    crate::wal::format::decode_entry(&entries[at..])
                else {
                    return Err(ShardError::Replay {
                        seq: first,
                        reason: format!("replicated entries are damaged at byte {at}"),
                    });
                };
                at += e.raw.len();
                let batches =
                    decode_writes(e.kind, e.payload).map_err(|err| ShardError::Replay {
                        seq: e.seq,
                        reason: err.to_string(),
                    })?;
                let mut tables = PendingEntry::with_capacity(batches.len());
                for wb in batches {
                    let schema = catalog.check(wb.table(), wb.batch().schema_ref())?;
                    let (table, batch) = wb.into_parts();
                    rows += batch.num_rows() as u64;
                    tables.push((table, schema, batch));
                }
                decoded.push((e.seq, tables));
            }
        }
        self.wait_buffer_room().await;
        let pending = &self.pending;
        self.wal
            .append_raw(first, last, entries, || {
                pending.borrow_mut().extend(decoded);
                if self.visible_before_durable.get() {
                    self.apply_durable();
                }
            })
            .await?;
        self.wait_applied(last).await;
        Ok(rows)
    }

    /// Backpressure: past the slow mark a write waits while the core is
    /// busier than the fill allows ([`crate::throttle`]); at the max it
    /// waits for room (a flush starting).
    async fn wait_buffer_room(&self) {
        let mut stalled: Option<Instant> = None;
        loop {
            let admit = {
                let buffer = self.buffer.borrow();
                self.throttle.borrow_mut().admit(
                    Instant::now(),
                    crate::runtime::thread_cpu_time(),
                    buffer.bytes(),
                    buffer.is_flushing(),
                )
            };
            match admit {
                Admit::Now => break,
                Admit::After(wait) => {
                    monoio::time::sleep(wait).await;
                    break;
                }
                Admit::Full => {
                    stalled.get_or_insert_with(Instant::now);
                    let listener = self.applied.listen();
                    if self.buffer.borrow().bytes() < self.config.max_buffer_bytes {
                        continue;
                    }
                    listener.await;
                }
            }
        }
        if let Some(since) = stalled {
            let mut t = self.throttle.borrow_mut();
            t.stats.stalled += 1;
            t.stats.stalled_seconds += since.elapsed().as_secs_f64();
        }
    }

    /// What the backpressure gate did so far.
    pub fn throttle_stats(&self) -> ThrottleStats {
        self.throttle.borrow().stats
    }

    /// Waits until entry `seq` (durable or about to be) is in the buffer.
    async fn wait_applied(&self, seq: WalSeq) {
        self.apply_durable();
        loop {
            let listener = {
                if self.buffer.borrow().applied_seq() >= seq {
                    return;
                }
                self.applied.listen()
            };
            listener.await;
            self.apply_durable();
        }
    }

    /// Moves durable entries from the pending queue into the buffer, in order.
    /// (With `visible_before_durable`, every queued entry.)
    pub fn apply_durable(&self) {
        let durable = if self.visible_before_durable.get() {
            self.wal.next_seq().prev().unwrap_or(WalSeq::ZERO)
        } else {
            self.wal.durable_seq()
        };
        let mut applied_any = false;
        {
            let mut pending = self.pending.borrow_mut();
            let mut buffer = self.buffer.borrow_mut();
            while let Some(entry) = pending.first_entry() {
                let seq = *entry.key();
                if seq > durable || seq != buffer.applied_seq().next() {
                    break;
                }
                let tables = entry.remove();
                buffer.append_entry(seq, &tables);
                applied_any = true;
            }
        }
        if applied_any {
            self.applied.notify(usize::MAX);
        }
    }

    /// An immutable snapshot of the buffer for queries.
    pub fn snapshot(&self) -> BufferSnapshot {
        self.apply_durable();
        self.buffer.borrow().snapshot()
    }

    /// An immutable snapshot of one table's buffered rows, and the shard's
    /// flushed watermark when it was taken.
    pub fn snapshot_table(
        &self,
        table: &crate::schema::TableKey,
    ) -> (Option<crate::buffer::TableSnapshot>, WalSeq) {
        self.apply_durable();
        (
            self.buffer.borrow().snapshot_table(table),
            self.flushed_seq.get(),
        )
    }

    /// Starts the shard over after entry `upto`, whose rows are all in the
    /// files the manifest now lists for this shard (a replication reader's
    /// bootstrap committed them with [`Manifest::commit_replace`]): the
    /// buffer is emptied, the WAL continues at `upto + 1` and its older
    /// segments are removed. Waits for a flush in flight; nothing may be
    /// appending.
    pub async fn restart_at(&self, upto: WalSeq) -> Result<(), ShardError> {
        let _flushes = self.hold_flushes().await;
        self.apply_durable();
        if !self.pending.borrow().is_empty() {
            return Err(ShardError::Replay {
                seq: upto,
                reason: "entries are still being appended".into(),
            });
        }
        if upto < self.wal.durable_seq() {
            // A follower whose log forked past `upto`: those entries go.
            self.wal.truncate_after(upto).await?;
        }
        self.wal.restart_at(upto.next())?;
        *self.buffer.borrow_mut() = ShardBuffer::new(self.config.buffer.clone(), upto);
        self.flushed_seq.set(upto);
        self.applied.notify(usize::MAX);
        self.wal.remove_segments_through(upto).await?;
        Ok(())
    }

    /// Shows replicated entries before the local sync (a follower) or not
    /// (a primary).
    pub fn set_visible_before_durable(&self, on: bool) {
        self.visible_before_durable.set(on);
    }

    /// Cuts this shard's log after entry `last` (a follower whose log
    /// forked from the primary's there): the WAL loses the later entries
    /// and the buffer is rebuilt from the flushed watermark and the WAL up
    /// to `last`. Entries already flushed cannot be cut this way:
    /// [`ShardError::FlushedPastFork`] (the follower must bootstrap).
    /// Waits for a flush in flight; nothing may be appending. Returns how
    /// many entries went.
    pub async fn truncate_after(&self, last: WalSeq) -> Result<u64, ShardError> {
        let _flushes = self.hold_flushes().await;
        let flushed = self.flushed_seq.get();
        if flushed > last {
            return Err(ShardError::FlushedPastFork {
                fork: last,
                flushed,
            });
        }
        self.apply_durable();
        if !self.pending.borrow().is_empty() {
            return Err(ShardError::Replay {
                seq: last,
                reason: "entries are still being appended".into(),
            });
        }
        let removed = self.wal.truncate_after(last).await?;
        if removed == 0 {
            return Ok(0);
        }
        let mut buffer = ShardBuffer::new(self.config.buffer.clone(), flushed);
        let mut report = ShardRecovery::default();
        replay(
            &self.wal.segments(),
            &self.config,
            &mut self.catalog.borrow_mut(),
            &mut buffer,
            &mut report,
        )?;
        buffer.skip_to(last);
        *self.buffer.borrow_mut() = buffer;
        self.applied.notify(usize::MAX);
        Ok(removed)
    }

    /// Waits for a flush in flight, then keeps any other from starting
    /// until the guard is dropped.
    async fn hold_flushes(&self) -> FlushHold<'_> {
        while self.flush_running.get() {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        self.flush_running.set(true);
        FlushHold(&self.flush_running)
    }

    /// Whether a flush is due now.
    pub fn flush_due(&self) -> Option<FlushReason> {
        self.apply_durable();
        self.buffer.borrow().flush_due(Instant::now())
    }

    /// Flushes everything buffered up to now to Parquet files, records them
    /// in the manifest, and deletes WAL segments they cover. Returns `None`
    /// if there was nothing to flush. If another flush of this shard is
    /// running, waits for it first. A failed flush keeps its rows buffered
    /// (and visible) and is retried by the next call.
    pub async fn flush(&self) -> Result<Option<FlushOutcome>, ShardError> {
        while self.flush_running.get() {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        self.apply_durable();
        let Some(set) = self.buffer.borrow_mut().begin_flush() else {
            return Ok(None);
        };
        // The buffer is empty again: writes waiting for room may go.
        self.applied.notify(usize::MAX);
        self.flush_running.set(true);
        let rows = set.tables.values().map(|t| t.num_rows() as u64).sum();
        let upto = set.upto;
        let result = self.flushes.flush(self.id, set).await;
        self.flush_running.set(false);
        let files = result?;
        crash_point("shard.after_flush_commit");
        self.flushed_seq.set(upto);
        self.buffer.borrow_mut().finish_flush(upto);
        self.applied.notify(usize::MAX);
        let segments_removed = self.wal.remove_segments_through(upto).await?;
        tracing::debug!(shard = %self.id, %upto, rows, files = files.len(), segments_removed, "flushed");
        Ok(Some(FlushOutcome {
            upto,
            files,
            rows,
            segments_removed,
        }))
    }

    /// Flushes whenever [`Shard::flush_due`] says so, checking every
    /// `interval`, until the WAL is closed. Spawn it on the shard's core.
    pub async fn run_flush_loop(&self, interval: Duration) {
        loop {
            monoio::time::sleep(interval).await;
            if self.flush_due().is_some() {
                if let Err(e) = self.flush().await {
                    tracing::error!(shard = %self.id, error = %e, "background flush failed; retrying later");
                }
            }
        }
    }

    /// Commits what the WAL has queued and stops its committer. Buffered rows
    /// stay in the WAL for the next start.
    pub async fn close(&self) {
        self.wal.close().await;
        self.apply_durable();
    }
}

/// Scans the WAL and replays every entry after `flushed_seq` into a new
/// buffer. Blocking; runs on a helper thread.
fn recover(
    config: &ShardConfig,
    mut cache: CatalogCache,
    flushed_seq: WalSeq,
) -> Result<(Recovered, ShardBuffer, CatalogCache, ShardRecovery), ShardError> {
    let recovered = Recovered::scan(&config.wal, flushed_seq.next())?;
    let mut recovery = ShardRecovery {
        wal: recovered.report.clone(),
        flushed_seq,
        ..ShardRecovery::default()
    };
    let mut buffer = ShardBuffer::new(config.buffer.clone(), flushed_seq);
    replay(
        &recovered.segments,
        config,
        &mut cache,
        &mut buffer,
        &mut recovery,
    )?;
    Ok((recovered, buffer, cache, recovery))
}

/// Replays the entries of `segments` after the buffer's position into it.
fn replay(
    segments: &[crate::wal::SegmentMeta],
    config: &ShardConfig,
    cache: &mut CatalogCache,
    buffer: &mut ShardBuffer,
    recovery: &mut ShardRecovery,
) -> Result<(), ShardError> {
    let id = config.wal.shard;
    let mode = config.wal.recovery_mode;
    let mut failure = None;
    read_segments(segments, buffer.applied_seq().next(), mode, |entry| {
        let applied = decode_writes(entry.kind, entry.payload)
            .map_err(|e| e.to_string())
            .and_then(|batches| {
                batches
                    .into_iter()
                    .map(|wb| {
                        let schema = cache
                            .check(wb.table(), wb.batch().schema_ref())
                            .map_err(|e| e.to_string())?;
                        let (table, rows) = wb.into_parts();
                        Ok((table, schema, rows))
                    })
                    .collect::<Result<PendingEntry, String>>()
            });
        match applied {
            Ok(tables) => {
                // A skipped entry leaves a gap; the buffer follows the WAL.
                if entry.seq != buffer.applied_seq().next() {
                    buffer.skip_to(entry.seq.prev().unwrap_or(WalSeq::ZERO));
                }
                recovery.replayed_rows += tables.iter().map(|t| t.2.num_rows() as u64).sum::<u64>();
                buffer.append_entry(entry.seq, &tables);
                recovery.replayed_entries += 1;
                ControlFlow::Continue(())
            }
            Err(reason) if mode == RecoveryMode::Skip => {
                tracing::error!(shard = %id, seq = %entry.seq, %reason, "skipping WAL entry that cannot be replayed");
                recovery.skipped_entries.push(entry.seq);
                ControlFlow::Continue(())
            }
            Err(reason) => {
                failure = Some(ShardError::Replay {
                    seq: entry.seq,
                    reason,
                });
                ControlFlow::Break(())
            }
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
