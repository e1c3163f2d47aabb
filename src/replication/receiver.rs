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
    },
    #[error("{0}")]
    Protocol(String),
    #[error("the cluster has no primary writer yet")]
    NoPrimary,
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
        if ctx.draining.get() {
            return;
        }
        match res {
            Ok(()) => failures = 0,
            Err(SessionError::Bootstrap {
                held,
                flushed,
                http_addr,
            }) => {
                bootstraps.inc();
                tracing::warn!(shard = ctx.id, %held, writer_flushed = %flushed, "the writer no longer has the entries this shard needs: bootstrapping from its files");
                match super::bootstrap::run(&ctx, &shard, &http_addr).await {
                    Ok(_) => {
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
                tracing::debug!(shard = ctx.id, "no primary writer in the cluster yet");
                failures = failures.saturating_add(1);
                if !pause(&ctx, Duration::from_millis(r.reconnect_ms)).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(shard = ctx.id, error = %e, "replication stream from the writer ended; reconnecting");
            }
        }
        resyncs.inc();
        // Back off on repeated failures, up to 16x.
        let wait = Duration::from_millis(r.reconnect_ms) * (1 << failures.min(5).saturating_sub(1));
        if !pause(&ctx, wait).await {
            return;
        }
    }
}

/// Sleeps `wait`; false when the core starts draining first.
async fn pause(ctx: &CoreCtx, wait: Duration) -> bool {
    let drain = ctx.drain_event.listen();
    if ctx.draining.get() {
        return false;
    }
    monoio::select! {
        _ = monoio::time::sleep(wait) => true,
        _ = drain => false,
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
    let (base, primary) = if cfg.in_cluster() {
        match ctx.node.control.view().primary_replication() {
            Some((id, addr)) => (addr, Some(id)),
            None => return Err(SessionError::NoPrimary),
        }
    } else {
        (r.writer_addr.clone(), None)
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
            stream_from(ctx, shard, connected, conn, addr, primary).await
        }
        None => stream_from(ctx, shard, connected, conn, addr, primary).await,
    }
}

/// The session on a connected (plain or TLS) stream: handshake, then entries.
async fn stream_from<S: AsyncReadRent + AsyncWriteRent>(
    ctx: &Rc<CoreCtx>,
    shard: &Shard,
    connected: &prometheus_client::metrics::gauge::Gauge,
    mut conn: S,
    addr: std::net::SocketAddr,
    primary: Option<crate::control::state::NodeId>,
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
        &state.hello(secret, &nonce, shard.id(), &reader_id),
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
        } => match state
            .on_welcome(mode, start_seq, flushed_seq)
            .map_err(|e| SessionError::Protocol(e.to_string()))?
        {
            ReaderAction::Stream => {
                tracing::info!(shard = ctx.id, %addr, from = %start_seq, writer_durable = %durable_seq, "streaming from the writer");
            }
            ReaderAction::Bootstrap { flushed_seq } => {
                return Err(SessionError::Bootstrap {
                    held: state.last_seq(),
                    flushed: flushed_seq,
                    http_addr: http_addr.to_string(),
                })
            }
        },
        Frame::Error { code, message } => {
            return Err(SessionError::Refused {
                code: code.to_string(),
                message: message.to_string(),
            })
        }
        other => return Err(unexpected(&other)),
    }
    connected.set(1);
    let m = &ctx.node.metrics.replication;
    let label = ShardLabel {
        shard: ctx.id.to_string(),
    };
    let applied_entries = m.applied_entries.get_or_create(&label).clone();
    let applied_rows = m.applied_rows.get_or_create(&label).clone();
    let applied_seq = m.applied_seq.get_or_create(&label).clone();
    applied_seq.set(state.last_seq().0 as i64);
    loop {
        let drain = ctx.drain_event.listen();
        if ctx.draining.get() {
            return Ok(());
        }
        if primary.is_some()
            && ctx.node.control.view().primary_replication().map(|p| p.0) != primary
        {
            tracing::info!(shard = ctx.id, "the primary writer changed: re-pointing");
            return Ok(());
        }
        let first = monoio::select! {
            b = fb.read_frame(&mut conn, timeout) => b?,
            _ = drain => return Ok(()),
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
