//! The store's I/O thread (`tidemark-raft-io`): jobs in, group-committed
//! writes and syncs out, compaction of the log file.

use super::*;

/// What a log record does to the set of live entries (for compaction accounting).
#[derive(Debug)]
pub(super) enum LogOp {
    Append { first: u64, count: u64 },
    TruncateFrom(u64),
    PurgeUpto(u64),
    Committed,
}

pub(super) type Reply = oneshot::Sender<io::Result<()>>;

/// How to report that a log job is done.
pub(super) enum Done<C: RaftTypeConfig> {
    /// An append: requires `fdatasync` before completion.
    Flushed(LogFlushed<C>),
    /// Truncate / purge / committed: completes once written in order.
    Written(Reply),
}

impl<C: RaftTypeConfig> Done<C> {
    pub(super) fn complete(self, result: io::Result<()>) {
        match self {
            Done::Flushed(callback) => callback.log_io_completed(result),
            // The caller may have given up waiting; nothing to do then.
            Done::Written(reply) => drop(reply.send(result)),
        }
    }
}

pub(super) enum Job<C: RaftTypeConfig> {
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
    pub(super) fn fail(self, err: io::Error) {
        match self {
            Job::Log { done, .. } => done.complete(Err(err)),
            Job::Vote { reply, .. } | Job::Close { reply } => drop(reply.send(Err(err))),
        }
    }
}

pub(super) fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "raft log store is closed")
}

/// Log records waiting to be written as one group.
pub(super) struct Pending<C: RaftTypeConfig> {
    pub(super) buf: Vec<u8>,
    pub(super) dones: Vec<Done<C>>,
    pub(super) sync: bool,
}

/// State owned by the I/O thread.
pub(super) struct Worker<C: RaftTypeConfig> {
    pub(super) dir: PathBuf,
    pub(super) dir_handle: File,
    pub(super) log: File,
    pub(super) log_len: u64,
    /// Bytes were written to `log` since the last `fdatasync`.
    pub(super) unsynced: bool,
    pub(super) live: LiveBytes,
    pub(super) compact_threshold: u64,
    pub(super) compaction_disabled: bool,
    /// Set by the first write/sync error on `log`.
    pub(super) poisoned: Option<String>,
    pub(super) _config: PhantomData<fn() -> C>,
}

impl<C: RaftTypeConfig> Worker<C> {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Job<C>>) {
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
    pub(super) fn process(&mut self, batch: &mut Vec<Job<C>>) -> bool {
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

    pub(super) fn poisoned_error(&self) -> Option<io::Error> {
        self.poisoned.as_ref().map(|msg| {
            io::Error::other(format!(
                "raft log store is poisoned by an earlier I/O error: {msg}"
            ))
        })
    }

    pub(super) fn poison(&mut self, e: &io::Error) {
        tracing::error!(dir = %self.dir.display(), error = %e, "raft log write failed; store poisoned");
        self.poisoned = Some(e.to_string());
    }

    /// Writes the pending group (and syncs it if an append is in it), then completes it.
    pub(super) fn flush(&mut self, pending: &mut Pending<C>) {
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

    pub(super) fn write_log(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
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

    pub(super) fn sync_log(&mut self) -> io::Result<()> {
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

    pub(super) fn write_vote(&mut self, frame: &[u8]) -> io::Result<()> {
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

    pub(super) fn maybe_compact(&mut self) {
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
    pub(super) fn compact(&mut self) -> io::Result<()> {
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
pub(super) struct IoThread(pub(super) Option<JoinHandle<()>>);

impl Drop for IoThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            if handle.join().is_err() {
                tracing::error!("{IO_THREAD_NAME} thread panicked");
            }
        }
    }
}
