//! The writer side: each shard core listens for readers and runs one stream
//! task per connected reader, sending its WAL entries as they become
//! durable: from the WAL's in-memory ring of recent groups, or from the
//! memory-mapped segment files when the reader is further behind. The bytes
//! on the socket are the bytes in the WAL (no re-encoding, no copy unless a
//! compression is configured).
//!
//! The core also keeps, per reader id, the last entry the reader holds
//! durably (its acks): that position holds WAL segments on disk for it (up
//! to `replication.max_retained_bytes`), feeds the lag metrics, and lets a
//! write wait for `replication.min_acks` readers.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::Event;
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split, Splitable};
use monoio::net::{TcpListener, TcpStream};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tidemark_shards::replication::frame::{self, ErrorCode, Frame, VERSION};
use tidemark_shards::replication::protocol::{writer_handshake, Handshake, SendState, WriterView};
use tidemark_shards::replication::{self as proto};
use tidemark_shards::shard::Shard;
use tidemark_shards::wal::{ReadCursor, ReadError};
use tidemark_shards::WalSeq;

use super::wire::{self, FrameBuf};
use crate::config::Config;
use crate::context::CoreCtx;
use crate::metrics::ReaderLabels;

/// What a core knows of one reader of its shard.
#[derive(Debug)]
struct ReaderSlot {
    /// The last entry the reader holds durably.
    acked: WalSeq,
    /// The writer epoch of the stream that brought `acked` (0 outside a
    /// cluster): acks of an older epoch count for nothing now.
    epoch: u64,
    /// Whether the reader can stream its WAL in turn (in a cluster: it has
    /// a replication address, so a failover can copy from it).
    serves: bool,
    /// Streams of this reader open now (0 or 1, briefly 2 on a reconnect).
    streams: usize,
    /// When the reader last went from caught up to behind.
    behind_since: Option<Instant>,
    lag_entries: Gauge,
    lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    sent: Counter,
    resyncs: Counter,
    bootstraps: Counter,
}

/// The writer side of one shard core. See the [module docs](self).
#[derive(Debug)]
pub struct WriterSide {
    ctx: Rc<CoreCtx>,
    shard: Rc<Shard>,
    readers: RefCell<BTreeMap<String, ReaderSlot>>,
    /// Notified whenever a reader acknowledges entries.
    acked: Event,
    forced_seen: Cell<u64>,
    /// Tasks of this side running now (accept and gauge loops, reader
    /// streams); [`WriterSide::stop`] waits for none.
    tasks: Cell<usize>,
}

impl WriterSide {
    /// Starts listening for readers of `shard` on this core. The tasks end
    /// when the core drains.
    pub fn start(ctx: Rc<CoreCtx>, shard: Rc<Shard>) -> io::Result<Rc<WriterSide>> {
        let addr = Config::shard_addr(ctx.node.config.replication_listen_addr(), ctx.id);
        let listener = TcpListener::bind(addr)?;
        tracing::info!(shard = ctx.id, %addr, "replication listening");
        let side = Rc::new(WriterSide {
            ctx,
            shard,
            readers: RefCell::new(BTreeMap::new()),
            acked: Event::new(),
            forced_seen: Cell::new(0),
            tasks: Cell::new(0),
        });
        side.spawn(side.clone().accept_loop(listener));
        side.spawn(side.clone().gauge_loop());
        Ok(side)
    }

    /// Spawns a task of this side, counted in `tasks`.
    fn spawn(self: &Rc<Self>, task: impl std::future::Future<Output = ()> + 'static) {
        self.tasks.set(self.tasks.get() + 1);
        let side = self.clone();
        monoio::spawn(async move {
            task.await;
            side.tasks.set(side.tasks.get() - 1);
        });
    }

    /// Once the core drains: waits until this side's tasks have ended, so
    /// none outlives the core's runtime holding the shard.
    pub async fn stop(&self) {
        while self.tasks.get() > 0 {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `n` readers hold entry `seq` durably, or `timeout`.
    /// Returns how many readers held it when it stopped waiting. In a
    /// cluster only readers of the current epoch count, and only those a
    /// failover could copy from (they have a replication address): an
    /// acknowledged write must survive the loss of this node.
    pub async fn wait_acks(&self, seq: WalSeq, n: usize, timeout: Duration) -> Result<(), usize> {
        let deadline = Instant::now() + timeout;
        let epoch = self.current_epoch();
        loop {
            let listener = self.acked.listen();
            let have = self
                .readers
                .borrow()
                .values()
                .filter(|r| r.acked >= seq && r.epoch == epoch && r.serves)
                .count();
            if have >= n {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.ctx.draining.get() {
                return Err(have);
            }
            let _ = monoio::time::timeout(left, listener).await;
        }
    }

    /// The writer epoch streams run in now (0 outside a cluster).
    fn current_epoch(&self) -> u64 {
        if self.ctx.node.config.in_cluster() {
            self.ctx.node.control.view().state.writer_epoch.0
        } else {
            0
        }
    }

    /// What the cluster state says of node `reader_id`, if it is one.
    fn cluster_node(&self, reader_id: &str) -> Option<crate::control::state::NodeInfo> {
        let id = crate::control::state::NodeId(reader_id.parse().ok()?);
        self.ctx.node.control.view().state.nodes.get(&id).cloned()
    }

    /// Whether `reader_id` is a node a failover could copy from (in a
    /// cluster: it has a replication address; outside one: any reader).
    fn serves(&self, reader_id: &str) -> bool {
        !self.ctx.node.config.in_cluster()
            || self
                .cluster_node(reader_id)
                .is_some_and(|n| !n.spec.replication_addr.is_empty())
    }

    /// Whether `reader_id` names a node of the cluster state.
    fn is_member(&self, reader_id: &str) -> bool {
        self.cluster_node(reader_id).is_some()
    }

    /// Tells the WAL which entries readers still need.
    fn update_hold(&self) {
        let hold = self.readers.borrow().values().map(|r| r.acked.next()).min();
        self.shard.wal().set_hold(hold);
    }

    fn slot_metrics(&self, reader: &str) -> ReaderSlot {
        let f = &self.ctx.node.metrics.replication;
        let l = ReaderLabels {
            reader: reader.to_string(),
            shard: self.ctx.id.to_string(),
        };
        ReaderSlot {
            acked: WalSeq::ZERO,
            epoch: 0,
            serves: true,
            streams: 0,
            behind_since: None,
            lag_entries: f.lag_entries.get_or_create(&l).clone(),
            lag_seconds: f.lag_seconds.get_or_create(&l).clone(),
            sent: f.sent_bytes.get_or_create(&l).clone(),
            resyncs: f.resyncs.get_or_create(&l).clone(),
            bootstraps: f.bootstraps.get_or_create(&l).clone(),
        }
    }

    /// Refreshes the lag gauges (entries and seconds behind) every 100 ms.
    async fn gauge_loop(self: Rc<Self>) {
        let m = &self.ctx.node.metrics.replication;
        let shard_label = crate::metrics::ShardLabel {
            shard: self.ctx.id.to_string(),
        };
        let connected = m.connected.get_or_create(&shard_label).clone();
        let forced = m.forced_removals.get_or_create(&shard_label).clone();
        while !self.ctx.draining.get() {
            let durable = self.shard.wal().durable_seq();
            let now = Instant::now();
            let mut streams = 0;
            for r in self.readers.borrow_mut().values_mut() {
                let lag = durable.0.saturating_sub(r.acked.0);
                r.lag_entries.set(lag as i64);
                if lag == 0 {
                    r.behind_since = None;
                } else if r.behind_since.is_none() {
                    r.behind_since = Some(now);
                }
                r.lag_seconds
                    .set(r.behind_since.map_or(0.0, |t| (now - t).as_secs_f64()));
                streams += r.streams;
            }
            connected.set(streams as i64);
            let f = self.shard.wal().forced_removals();
            forced.inc_by(f - self.forced_seen.replace(f));
            monoio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        loop {
            let drain = self.ctx.drain_event.listen();
            if self.ctx.draining.get() {
                return;
            }
            let accepted = monoio::select! {
                a = listener.accept() => a,
                _ = drain => return,
            };
            match accepted {
                Ok((conn, peer)) => {
                    let side = self.clone();
                    self.spawn(async move {
                        if let Err(e) = side.clone().accept(conn).await {
                            tracing::info!(shard = side.ctx.id, %peer, error = %e, "replication stream ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(shard = self.ctx.id, error = %e, "replication accept failed");
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// A reader's connection: TLS first when it is on, then the stream.
    async fn accept(self: Rc<Self>, conn: TcpStream) -> io::Result<()> {
        conn.set_nodelay(true)?;
        let Some(t) = self.ctx.node.tls.clone() else {
            return self.stream(conn).await;
        };
        let timeout = super::silence_timeout(&self.ctx.node.config.replication);
        let acceptor = monoio_rustls::TlsAcceptor::from(t.server);
        match monoio::time::timeout(timeout, acceptor.accept(conn)).await {
            Ok(Ok(tls)) => self.stream(tls).await,
            Ok(Err(e)) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("TLS: {e}"),
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    /// One reader's stream: handshake, then entries until either side stops.
    async fn stream<S>(self: Rc<Self>, mut conn: S) -> io::Result<()>
    where
        S: AsyncReadRent + AsyncWriteRent + Split + 'static,
    {
        let cfg = &self.ctx.node.config;
        let r = &cfg.replication;
        let nonce = super::nonce()?;
        wire::send(
            &mut conn,
            &Frame::Challenge {
                version: VERSION,
                shard_count: self.ctx.node.shard_count as u32,
                nonce,
            },
        )
        .await?;
        let mut fb = FrameBuf::new();
        let body = fb.read_frame(&mut conn, super::silence_timeout(r)).await?;
        let wal = self.shard.wal();
        let view = WriterView {
            shard: self.shard.id(),
            shard_count: self.ctx.node.shard_count as u32,
            oldest_seq: wal.oldest_seq(),
            durable_seq: wal.durable_seq(),
            flushed_seq: self.shard.flushed_seq(),
            epoch: self.current_epoch(),
        };
        let handshake = writer_handshake(
            &fb.frame(body)?,
            cfg.cluster.secret.as_bytes(),
            &nonce,
            &view,
        );
        // In a cluster the writer streams to members only: the reader's id
        // must be a node of the cluster state (a removed node gets nothing).
        let handshake = match handshake {
            Handshake::Stream { ref reader_id, .. }
            | Handshake::Bootstrap { ref reader_id, .. }
            | Handshake::Diverged { ref reader_id }
                if cfg.in_cluster() && !self.is_member(reader_id) =>
            {
                Handshake::Refuse {
                    code: ErrorCode::AuthFailed,
                    message: format!("node {reader_id} is not a member of the cluster"),
                }
            }
            other => other,
        };
        wire::send(
            &mut conn,
            &handshake.reply(&view, &cfg.http.addr, &wal.history()),
        )
        .await?;
        let (reader, from) = match handshake {
            Handshake::Stream { reader_id, from } => (reader_id, from),
            Handshake::Bootstrap {
                reader_id,
                flushed_seq,
            } => {
                tracing::warn!(shard = self.ctx.id, reader = %reader_id, oldest = %view.oldest_seq, %flushed_seq, "reader is behind the oldest WAL entry kept: it must bootstrap from the Parquet files");
                let mut readers = self.readers.borrow_mut();
                let slot = readers
                    .entry(reader_id.clone())
                    .or_insert_with(|| self.slot_metrics(&reader_id));
                slot.bootstraps.inc();
                return Ok(());
            }
            Handshake::Diverged { reader_id } => {
                tracing::warn!(shard = self.ctx.id, reader = %reader_id, durable = %view.durable_seq, "the reader holds entries past this log's end (a deposed primary's): it must cut them");
                return Ok(());
            }
            Handshake::Refuse { code, message } => {
                tracing::warn!(shard = self.ctx.id, %code, %message, "refused a replication reader");
                return Ok(());
            }
        };
        {
            let mut readers = self.readers.borrow_mut();
            let known = readers.contains_key(&reader);
            let slot = readers
                .entry(reader.clone())
                .or_insert_with(|| self.slot_metrics(&reader));
            if known {
                slot.resyncs.inc();
            }
            slot.acked = from.prev().unwrap_or(WalSeq::ZERO);
            slot.epoch = view.epoch;
            slot.serves = self.serves(&reader);
            slot.streams += 1;
        }
        self.update_hold();
        tracing::info!(shard = self.ctx.id, %reader, %from, durable = %view.durable_seq, "reader streaming");
        let result = self
            .clone()
            .send_loop(conn, fb, &reader, from, view.epoch)
            .await;
        if let Some(slot) = self.readers.borrow_mut().get_mut(&reader) {
            slot.streams -= 1;
        }
        result
    }

    async fn send_loop<S>(
        self: Rc<Self>,
        conn: S,
        fb: FrameBuf,
        reader: &str,
        from: WalSeq,
        epoch: u64,
    ) -> io::Result<()>
    where
        S: AsyncReadRent + AsyncWriteRent + Split + 'static,
    {
        let r = &self.ctx.node.config.replication;
        let (rd, mut wr) = conn.into_split();
        let state = Rc::new(RefCell::new(SendState::new(from)));
        let closed = Rc::new(Event::new());
        let ended = Rc::new(Cell::new(false));
        // Acks and SyncAcks from the reader.
        let acks = {
            let side = self.clone();
            let state = state.clone();
            let closed = closed.clone();
            let ended = ended.clone();
            let reader = reader.to_string();
            monoio::spawn(async move {
                let res = side.read_acks(rd, fb, &state, &reader).await;
                ended.set(true);
                closed.notify(usize::MAX);
                res
            })
        };
        let wal = self.shard.wal().clone();
        let heartbeat = Duration::from_millis(r.heartbeat_ms);
        let write_timeout = super::silence_timeout(r).max(Duration::from_secs(30));
        let sent_bytes = self
            .readers
            .borrow()
            .get(reader)
            .map(|s| s.sent.clone())
            .unwrap_or_default();
        let mut cursor = ReadCursor::default();
        let mut last_send = Instant::now();
        let cluster = self.ctx.node.config.in_cluster();
        let outcome: io::Result<()> = loop {
            let durable_changed = wal.listen_durable();
            let stop = closed.listen();
            let drain = self.ctx.drain_event.listen();
            let view_changed = self.ctx.node.control.changed.listen();
            if ended.get() || self.ctx.draining.get() || wal.is_stopped() {
                break Ok(());
            }
            // A stream lives within one writer epoch: a deposed primary
            // sends nothing more.
            if cluster && self.ctx.node.control.view().state.writer_epoch.0 != epoch {
                tracing::info!(shard = self.ctx.id, %reader, epoch, "the writer epoch moved on: this stream ends");
                break Ok(());
            }
            let wants = state.borrow().wants(wal.durable_seq());
            if let Some(next) = wants {
                match wal.read_chunk(next, r.max_batch_bytes, &mut cursor) {
                    Ok(Some(chunk)) => {
                        let raw_len = chunk.bytes.len();
                        let (compression, data) = match proto::compress(r.compression, &chunk.bytes)
                        {
                            Some(packed) => (r.compression, Bytes::from(packed)),
                            None => (r.compression, chunk.bytes),
                        };
                        let header = frame::entries_header(
                            chunk.first,
                            chunk.last,
                            compression,
                            raw_len as u32,
                            data.len(),
                        );
                        let n = data.len() as u64;
                        let sent = monoio::select! {
                            res = monoio::time::timeout(write_timeout, wire::send_entries(&mut wr, header, data)) => res,
                            _ = stop => break Ok(()),
                        };
                        match sent {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => break Err(e),
                            Err(_) => {
                                break Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "the reader took no data for too long",
                                ))
                            }
                        }
                        state.borrow_mut().sent(chunk.first, chunk.last);
                        sent_bytes.inc_by(n);
                        last_send = Instant::now();
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // Gone: the reader reconnects and is told to bootstrap.
                        let msg = match &e {
                            ReadError::Gone { .. } => format!("{e}; reconnect to bootstrap"),
                            ReadError::Wal(_) => e.to_string(),
                        };
                        tracing::warn!(shard = self.ctx.id, %reader, %msg, "replication stream stops");
                        let _ = wire::send(
                            &mut wr,
                            &Frame::Error {
                                code: ErrorCode::Internal,
                                message: &msg,
                            },
                        )
                        .await;
                        break match e {
                            ReadError::Gone { .. } => Ok(()),
                            ReadError::Wal(_) => Err(io::Error::other(msg)),
                        };
                    }
                }
            }
            let idle = heartbeat.saturating_sub(last_send.elapsed());
            if idle.is_zero() {
                let sync = Frame::Sync {
                    durable_seq: wal.durable_seq(),
                    sent_at_us: super::now_us(),
                };
                if let Err(e) = wire::send(&mut wr, &sync).await {
                    break Err(e);
                }
                last_send = Instant::now();
                continue;
            }
            monoio::select! {
                _ = durable_changed => {},
                _ = stop => {},
                _ = drain => {},
                _ = view_changed => {},
                _ = monoio::time::sleep(idle) => {},
            }
        };
        if self.ctx.draining.get() {
            let _ = wire::send(
                &mut wr,
                &Frame::Error {
                    code: ErrorCode::ShuttingDown,
                    message: "the writer is shutting down",
                },
            )
            .await;
        }
        // Closing the write half ends the reader's reads; the ack task then ends.
        drop(wr);
        let acks = acks.await;
        outcome.and(acks)
    }

    async fn read_acks<S: AsyncReadRent + AsyncWriteRent + Split>(
        &self,
        mut rd: monoio::io::OwnedReadHalf<S>,
        mut fb: FrameBuf,
        state: &RefCell<SendState>,
        reader: &str,
    ) -> io::Result<()> {
        let timeout = super::silence_timeout(&self.ctx.node.config.replication);
        loop {
            let drain = self.ctx.drain_event.listen();
            if self.ctx.draining.get() {
                return Ok(());
            }
            let body = monoio::select! {
                b = fb.read_frame(&mut rd, timeout) => b?,
                _ = drain => return Ok(()),
            };
            match fb.frame(body)? {
                Frame::Ack { durable_seq } | Frame::SyncAck { durable_seq, .. } => {
                    state
                        .borrow_mut()
                        .on_ack(durable_seq)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    if let Some(slot) = self.readers.borrow_mut().get_mut(reader) {
                        slot.acked = slot.acked.max(durable_seq);
                    }
                    self.update_hold();
                    self.acked.notify(usize::MAX);
                }
                Frame::Error { code, message } => {
                    return Err(io::Error::other(format!("reader sent {code}: {message}")));
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected frame from a reader: {other:?}"),
                    ))
                }
            }
        }
    }
}
