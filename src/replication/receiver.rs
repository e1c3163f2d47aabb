//! The reader side: each shard core follows the writer's shard of the same
//! index. It connects, authenticates, and resumes after the last entry its
//! own WAL holds durably; every entry received is checked (whole, checksum,
//! no gap), written to its own WAL byte for byte, applied to its buffer (so
//! queries see it), and acknowledged. Entries that arrive together are
//! written as one group (one `fdatasync`). Any failure (cut connection, gap,
//! writer restart) closes the stream; it reconnects and resumes from what
//! is durable, so nothing is lost or applied twice.

use std::io;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use tidemark_shards::replication::frame::{Compression, Frame, VERSION};
use tidemark_shards::replication::protocol::{ReaderAction, ReceiveState};
use tidemark_shards::replication::{self as proto};
use tidemark_shards::shard::Shard;
use tidemark_shards::WalSeq;

use super::wire::{self, FrameBuf};
use crate::context::CoreCtx;
use crate::metrics::ShardLabel;

/// Why a session with the writer ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the writer refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error(
        "the writer has {writer} shard cores and this reader {reader}: set node.shard_cores = {writer}"
    )]
    ShardCount { writer: u32, reader: usize },
    #[error("the writer no longer has the entries after {held}: this shard must bootstrap from the writer's files (flushed up to {flushed})")]
    Bootstrap {
        held: WalSeq,
        flushed: WalSeq,
        http_addr: String,
        history: tidemark_shards::wal::epochs::EpochHistory,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("nothing to follow now (this node is the primary, or a failover is in progress)")]
    NoPrimary,
    #[error("this shard's log forked from the writer's after entry {to}: cutting it there")]
    Truncate {
        to: tidemark_shards::WalSeq,
        http_addr: String,
        history: tidemark_shards::wal::epochs::EpochHistory,
    },
    #[error(transparent)]
    Apply(#[from] tidemark_shards::shard::ShardError),
}

/// Follows the writer until the core drains.
pub async fn follow(ctx: Rc<CoreCtx>, shard: Rc<Shard>) {
    let f = &ctx.node.metrics.replication;
    let label = ShardLabel {
        shard: ctx.id.to_string(),
    };
    let connected = f.connected.get_or_create(&label).clone();
    let resyncs = f.reader_resyncs.get_or_create(&label).clone();
    let bootstraps = f.reader_bootstraps.get_or_create(&label).clone();
    let r = &ctx.node.config.replication;
    let mut failures = 0u32;
    loop {
        let res = session(&ctx, &shard, &connected).await;
        connected.set(0);
        // No stream now: this shard is fenced for any newer epoch.
        ctx.node.following[ctx.id].store(0, std::sync::atomic::Ordering::SeqCst);
        ctx.node.report.notify(usize::MAX);
        if ctx.draining.get() {
            return;
        }
        match res {
            Ok(()) => failures = 0,
            Err(SessionError::Truncate {
                to,
                http_addr,
                history,
            }) => match truncate(&ctx, &shard, to, &http_addr, &history).await {
                Ok(()) => {
                    failures = 0;
                    continue;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::error!(shard = ctx.id, error = %e, "cutting the forked log failed; retrying");
                }
            },
            Err(SessionError::Bootstrap {
                held,
                flushed,
                http_addr,
                history,
            }) => {
                bootstraps.inc();
                tracing::warn!(shard = ctx.id, %held, writer_flushed = %flushed, "the writer no longer has the entries this shard needs: bootstrapping from its files");
                match super::bootstrap::run(&ctx, &shard, &http_addr).await {
                    Ok(upto) => {
                        if let Err(e) = shard.wal().adopt_history(&history, upto) {
                            tracing::error!(shard = ctx.id, error = %e, "saving the epoch history after a bootstrap failed");
                        }
                        failures = 0;
                        continue;
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        tracing::error!(shard = ctx.id, error = %e, "bootstrap failed; retrying");
                    }
                }
            }
            Err(SessionError::NoPrimary) => {
                tracing::debug!(shard = ctx.id, "nothing to follow now");
                // Until the view changes (or a while, to look again).
                let changed = ctx.node.control.changed.listen();
                if ctx.node.control.view().replication_source(ctx.id).is_none() {
                    let drain = ctx.drain_event.listen();
                    if ctx.draining.get() {
                        return;
                    }
                    monoio::select! {
                        _ = changed => {},
                        _ = drain => return,
                        _ = monoio::time::sleep(Duration::from_millis(r.reconnect_ms.max(100))) => {},
                    }
                }
                failures = 0;
                continue;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(shard = ctx.id, error = %e, "replication stream from the writer ended; reconnecting");
            }
        }
        resyncs.inc();
        // Back off on repeated failures, up to 16x; but a new source (a
        // failover's new primary) is tried at once.
        let wait = Duration::from_millis(r.reconnect_ms) * (1 << failures.min(5).saturating_sub(1));
        let source = ctx
            .node
            .control
            .view()
            .replication_source(ctx.id)
            .map(|s| s.0);
        match pause(&ctx, wait, source).await {
            Pause::Draining => return,
            Pause::Waited => {}
            Pause::NewSource => failures = 0,
        }
    }
}

/// Cuts this shard's log after `to` (it forked from the writer's there):
/// in place when nothing past `to` is flushed, else by fetching the
/// writer's files (a bootstrap, which replaces this shard's files).
async fn truncate(
    ctx: &Rc<CoreCtx>,
    shard: &Shard,
    to: WalSeq,
    http_addr: &str,
    history: &tidemark_shards::wal::epochs::EpochHistory,
) -> Result<(), String> {
    let from = to.next();
    let last = shard.wal().durable_seq();
    let counter = ctx
        .node
        .metrics
        .replication
        .truncated_entries
        .get_or_create(&ShardLabel {
            shard: ctx.id.to_string(),
        })
        .clone();
    match shard.truncate_after(to).await {
        Ok(n) => {
            tracing::warn!(shard = ctx.id, first = %from, %last, entries = n, "removed entries a deposed primary wrote that the new primary does not have (the log forked after {to})");
            counter.inc_by(n);
            Ok(())
        }
        Err(tidemark_shards::shard::ShardError::FlushedPastFork { flushed, .. }) => {
            tracing::warn!(shard = ctx.id, first = %from, %last, %flushed, "the forked entries are flushed already: fetching the writer's files instead");
            let upto = super::bootstrap::run(ctx, shard, http_addr)
                .await
                .map_err(|e| e.to_string())?;
            shard
                .wal()
                .adopt_history(history, upto)
                .map_err(|e| e.to_string())?;
            counter.inc_by(last.0.saturating_sub(to.0));
            ctx.node
                .metrics
                .replication
                .reader_bootstraps
                .get_or_create(&ShardLabel {
                    shard: ctx.id.to_string(),
                })
                .inc();
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// How a [`pause`] ended.
enum Pause {
    Waited,
    Draining,
    /// The view names another source than `source` now.
    NewSource,
}

/// Sleeps `wait`, unless the core starts draining or the view names a
/// source other than `source` first.
async fn pause(
    ctx: &CoreCtx,
    wait: Duration,
    source: Option<crate::control::state::NodeId>,
) -> Pause {
    let drain = std::pin::pin!(ctx.drain_event.listen());
    let sleep = std::pin::pin!(monoio::time::sleep(wait));
    let (mut drain, mut sleep) = (drain, sleep);
    loop {
        let changed = ctx.node.control.changed.listen();
        if ctx.draining.get() {
            return Pause::Draining;
        }
        if ctx.node.config.in_cluster()
            && ctx
                .node
                .control
                .view()
                .replication_source(ctx.id)
                .map(|s| s.0)
                != source
        {
            return Pause::NewSource;
        }
        monoio::select! {
            _ = &mut sleep => return Pause::Waited,
            _ = &mut drain => return Pause::Draining,
            _ = changed => {}
        }
    }
}

async fn session(
    ctx: &Rc<CoreCtx>,
    shard: &Shard,
    connected: &prometheus_client::metrics::gauge::Gauge,
) -> Result<(), SessionError> {
    let cfg = &ctx.node.config;
    let r = &cfg.replication;
    let timeout = super::silence_timeout(r);
    // In a cluster the writer is the primary the control core names;
    // otherwise the one configured.
    let (base, source, epoch) = if cfg.in_cluster() {
        let view = ctx.node.control.view();
        match view.replication_source(ctx.id) {
            Some((id, addr)) => (addr, Some(id), view.state.writer_epoch.0),
            None => return Err(SessionError::NoPrimary),
        }
    } else {
        (r.writer_addr.clone(), None, 0)
    };
    // The address may come from another node (the cluster state): parse it.
    let mut addr: std::net::SocketAddr = base.parse().map_err(|_| {
        SessionError::Protocol(format!(
            "the writer's replication address {base:?} is not an address"
        ))
    })?;
    addr.set_port(addr.port().checked_add(ctx.id as u16).ok_or_else(|| {
        SessionError::Protocol(format!("no port for shard {} after {base}", ctx.id))
    })?);
    let conn = match monoio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(c) => c?,
        Err(_) => {
            return Err(
                io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}")).into(),
            )
        }
    };
    conn.set_nodelay(true)?;
    match ctx.node.tls.clone() {
        Some(t) => {
            let name = crate::tls::server_name(&addr.to_string())?;
            let tls = monoio_rustls::TlsConnector::from(t.client);
            let conn = match monoio::time::timeout(timeout, tls.connect(name, conn)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(SessionError::Protocol(format!("TLS with {addr}: {e}"))),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("TLS handshake with {addr}"),
                    )
                    .into())
                }
            };
            stream_from(ctx, shard, connected, conn, addr, source, epoch).await
        }
        None => stream_from(ctx, shard, connected, conn, addr, source, epoch).await,
    }
}

/// The session on a connected (plain or TLS) stream: handshake, then entries.
async fn stream_from<S: AsyncReadRent + AsyncWriteRent>(
    ctx: &Rc<CoreCtx>,
    shard: &Shard,
    connected: &prometheus_client::metrics::gauge::Gauge,
    mut conn: S,
    addr: std::net::SocketAddr,
    source: Option<crate::control::state::NodeId>,
    epoch: u64,
) -> Result<(), SessionError> {
    let cfg = &ctx.node.config;
    let timeout = super::silence_timeout(&cfg.replication);
    let mut fb = FrameBuf::new();
    let body = fb.read_frame(&mut conn, timeout).await?;
    let nonce = match fb.frame(body)? {
        Frame::Challenge {
            version,
            shard_count,
            nonce,
        } => {
            if version != VERSION {
                return Err(SessionError::Protocol(format!(
                    "the writer speaks protocol version {version}, this reader {VERSION}"
                )));
            }
            if shard_count as usize != ctx.node.shard_count {
                return Err(SessionError::ShardCount {
                    writer: shard_count,
                    reader: ctx.node.shard_count,
                });
            }
            nonce
        }
        other => return Err(unexpected(&other)),
    };
    let mut state = ReceiveState::new(shard.wal().durable_seq());
    let reader_id = cfg.node_id();
    let secret = cfg.cluster.secret.as_bytes();
    wire::send(
        &mut conn,
        &state.hello(secret, &nonce, shard.id(), epoch, &reader_id),
    )
    .await?;
    let body = fb.read_frame(&mut conn, timeout).await?;
    match fb.frame(body)? {
        Frame::Welcome {
            mode,
            start_seq,
            flushed_seq,
            durable_seq,
            http_addr,
            history,
            ..
        } => {
            let writer = tidemark_shards::wal::epochs::EpochHistory::from_pairs(history)
                .map_err(|e| SessionError::Protocol(format!("the writer's epoch history: {e}")))?;
            match state
                .on_welcome(
                    mode,
                    start_seq,
                    flushed_seq,
                    &shard.wal().history(),
                    &writer,
                    durable_seq,
                )
                .map_err(|e| SessionError::Protocol(e.to_string()))?
            {
                ReaderAction::Stream => {
                    tracing::info!(shard = ctx.id, %addr, from = %start_seq, writer_durable = %durable_seq, epoch, "streaming from the writer");
                }
                ReaderAction::Bootstrap { flushed_seq } => {
                    return Err(SessionError::Bootstrap {
                        held: state.last_seq(),
                        flushed: flushed_seq,
                        http_addr: http_addr.to_string(),
                        history: writer,
                    })
                }
                ReaderAction::Truncate { to } => {
                    return Err(SessionError::Truncate {
                        to,
                        http_addr: http_addr.to_string(),
                        history: writer,
                    })
                }
            }
        }
        Frame::Error { code, message } => {
            return Err(SessionError::Refused {
                code: code.to_string(),
                message: message.to_string(),
            })
        }
        other => return Err(unexpected(&other)),
    }
    connected.set(1);
    ctx.node.following[ctx.id].store(epoch, std::sync::atomic::Ordering::SeqCst);
    let m = &ctx.node.metrics.replication;
    let label = ShardLabel {
        shard: ctx.id.to_string(),
    };
    let applied_entries = m.applied_entries.get_or_create(&label).clone();
    let applied_rows = m.applied_rows.get_or_create(&label).clone();
    let applied_seq = m.applied_seq.get_or_create(&label).clone();
    applied_seq.set(state.last_seq().0 as i64);
    // Whether the view has moved on from this stream (a new epoch, or
    // another source): then it ends, and this shard is fenced.
    let stale = || {
        source.is_some() && {
            let view = ctx.node.control.view();
            view.state.writer_epoch.0 != epoch
                || view.replication_source(ctx.id).map(|p| p.0) != source
        }
    };
    loop {
        let drain = ctx.drain_event.listen();
        if ctx.draining.get() {
            return Ok(());
        }
        let first = {
            // The same read across view changes (a read is not cancelled
            // unless the stream ends).
            let read = fb.read_frame(&mut conn, timeout);
            futures::pin_mut!(read);
            let mut drain = std::pin::pin!(drain);
            loop {
                let changed = ctx.node.control.changed.listen();
                if stale() {
                    tracing::info!(shard = ctx.id, old_epoch = epoch, epoch = %ctx.node.control.view().state.writer_epoch, "the writer epoch or the source changed: this stream ends");
                    return Ok(());
                }
                monoio::select! {
                    b = &mut read => break b?,
                    _ = &mut drain => return Ok(()),
                    _ = changed => continue,
                }
            }
        };
        // Take every whole frame already here: their entries become one group.
        let mut bodies = vec![first];
        while let Some(b) = fb.next_frame()? {
            bodies.push(b);
        }
        let mut group: Vec<u8> = Vec::new();
        let mut single: Option<std::ops::Range<usize>> = None;
        let mut range: Option<(WalSeq, WalSeq)> = None;
        let mut entries = 0u64;
        let mut sync_at = None;
        for b in bodies {
            match fb.frame(b.clone())? {
                Frame::Entries {
                    first_seq,
                    last_seq,
                    compression,
                    raw_len,
                    data,
                } => {
                    let unpacked;
                    let raw: &[u8] = if compression == Compression::None {
                        data
                    } else {
                        unpacked = proto::decompress(compression, data, raw_len as usize)
                            .map_err(|e| SessionError::Protocol(e.to_string()))?;
                        &unpacked
                    };
                    entries += state
                        .accept(first_seq, last_seq, raw)
                        .map_err(|e| SessionError::Protocol(e.to_string()))?;
                    range = Some((range.map_or(first_seq, |r| r.0), last_seq));
                    // One plain frame is applied from the read buffer as it is.
                    if group.is_empty() && single.is_none() && compression == Compression::None {
                        let off = data.as_ptr() as usize - fb.get(b.clone()).as_ptr() as usize;
                        single = Some(b.start + off..b.end);
                    } else {
                        if let Some(s) = single.take() {
                            group.extend_from_slice(fb.get(s));
                        }
                        group.extend_from_slice(raw);
                    }
                }
                Frame::Sync { sent_at_us, .. } => sync_at = Some(sent_at_us),
                Frame::Error { code, message } => {
                    return Err(SessionError::Refused {
                        code: code.to_string(),
                        message: message.to_string(),
                    })
                }
                other => return Err(unexpected(&other)),
            }
        }
        if let Some((first_seq, last_seq)) = range {
            let bytes: &[u8] = match &single {
                Some(s) => fb.get(s.clone()),
                None => &group,
            };
            let rows = shard.apply_replicated(first_seq, last_seq, bytes).await?;
            applied_entries.inc_by(entries);
            applied_rows.inc_by(rows);
            applied_seq.set(last_seq.0 as i64);
            wire::send(
                &mut conn,
                &Frame::Ack {
                    durable_seq: last_seq,
                },
            )
            .await?;
        }
        if let Some(sent_at_us) = sync_at {
            wire::send(
                &mut conn,
                &Frame::SyncAck {
                    durable_seq: state.last_seq(),
                    sent_at_us,
                },
            )
            .await?;
        }
    }
}

fn unexpected(f: &Frame<'_>) -> SessionError {
    let name = match f {
        Frame::Challenge { .. } => "Challenge",
        Frame::Hello { .. } => "Hello",
        Frame::Welcome { .. } => "Welcome",
        Frame::Entries { .. } => "Entries",
        Frame::Ack { .. } => "Ack",
        Frame::Sync { .. } => "Sync",
        Frame::SyncAck { .. } => "SyncAck",
        Frame::Error { .. } => "Error",
    };
    SessionError::Protocol(format!("unexpected {name} frame from the writer"))
}
