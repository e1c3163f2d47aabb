//! Starting and stopping a node: the data directory, the shared parts
//! (manifest, file store, catalog, flush workers, metrics), one pinned
//! runtime per shard core, and the control thread.
//!
//! Threads: `tidemark-shard-<i>` (one per shard core: HTTP listener with
//! SO_REUSEPORT, WAL, buffer), `tidemark-flush-<i>` (Parquet), and
//! `tidemark-control` (signals, housekeeping, shutdown; Raft later).
//!
//! Shutdown on SIGTERM/SIGINT: `/ready` turns 503, cores stop accepting,
//! finish the requests in flight (closing idle keep-alive connections), make
//! the WAL's queued entries durable and close it; then flush workers finish.
//! Buffered rows stay in the WAL and are replayed at the next start.

use std::cell::{Cell, RefCell};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use event_listener::Event;
use tidemark_shards::buffer::BufferConfig;
use tidemark_shards::flush::{FileStore, FlushPool, PoolOptions};
use tidemark_shards::manifest::Manifest;
use tidemark_shards::runtime;
use tidemark_shards::shard::{Shard, ShardConfig};
use tidemark_shards::wal::WalConfig;
use tidemark_shards::{Catalog, ColumnKind, ShardId, TableKey};

use crate::config::{Config, Role};
use crate::context::{CoreCtx, NodeShared};
use crate::metrics::NodeMetrics;

/// Holds an exclusive `flock` on `<data_dir>/LOCK` for the life of the node.
struct DirLock {
    _file: fs::File,
}

fn lock_data_dir(dir: &Path) -> anyhow::Result<DirLock> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let path = dir.join("LOCK");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        anyhow::bail!(
            "data directory {} is in use by another tidemark process (cannot lock {})",
            dir.display(),
            path.display()
        );
    }
    Ok(DirLock { _file: f })
}

/// Seeds the catalog with the schemas of the files the manifest knows, so a
/// write cannot retype a column that is only in Parquet.
fn seed_catalog(catalog: &Catalog, manifest: &Manifest) {
    for f in manifest.files() {
        let Ok(table) = TableKey::new(&f.database, &f.measurement) else {
            continue;
        };
        let fields: Vec<_> = f
            .columns
            .iter()
            .map(|(n, k): &(String, ColumnKind)| k.field(n))
            .collect();
        let schema = arrow_schema::Schema::new(fields);
        if let Err(e) = catalog.merge(&table, &schema) {
            tracing::error!(file = %f.path, error = %e, "file schema conflicts with the catalog");
        }
    }
}

fn shard_config(config: &Config, data: &Path, i: usize) -> ShardConfig {
    let mut wal = WalConfig::new(
        data.join("wal").join(format!("shard-{i:03}")),
        ShardId(i as u32),
    );
    wal.sync_mode = config.wal.sync_mode;
    wal.segment_size = config.wal.segment_bytes;
    wal.max_pending_bytes = config.wal.max_pending_bytes as usize;
    wal.spare_segments = config.wal.spare_segments;
    wal.recovery_mode = config.wal.recovery_mode;
    wal.io = config.wal.io;
    // Any node that may stream its WAL keeps recent groups in memory.
    if config.serves_replication() {
        wal.ring_bytes = config.replication.ring_bytes;
        wal.max_retained_bytes = config.replication.max_retained_bytes;
    }
    let mut sc = ShardConfig::new(wal);
    sc.buffer = BufferConfig {
        flush_rows: config.buffer.flush_rows,
        flush_bytes: config.buffer.flush_bytes as usize,
        flush_age: Duration::from_millis(config.buffer.flush_age_ms),
        ..BufferConfig::default()
    };
    sc.max_buffer_bytes = config.buffer.max_bytes as usize;
    sc.slow_buffer_bytes = config.buffer.slow_bytes() as usize;
    // A reader's rows are durable on the writer: show them before the local
    // sync. In a cluster every node starts as a follower; the primary turns
    // this off at its first write.
    sc.visible_before_durable = config.cluster.role == Role::Reader || config.in_cluster();
    sc
}

/// Runs a node until SIGTERM or SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    set_allocator_purge_delay(config.node.allocator_purge_delay_ms);
    let data: PathBuf = config.node.data_dir.clone();
    let _lock = lock_data_dir(&data)?;
    let tokens = config.load_tokens()?;
    let addr = config.socket_addr();
    // Every core binds the address with SO_REUSEPORT, which would also let
    // a second node on the same port bind it and silently take half the
    // connections: refuse to start while anything listens there.
    std::net::TcpListener::bind(addr)
        .with_context(|| format!("http.addr {addr} is in use (another tidemark?)"))?;
    if !config.auth.enabled && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening on a non-loopback address without auth: anyone who can reach it can write; set auth.enabled = true");
    }
    let manifest =
        Arc::new(Manifest::open(&data.join("manifest")).context("opening the manifest")?);
    let store =
        Arc::new(FileStore::local(&data.join("parquet")).context("opening the file store")?);
    let orphans = store
        .remove_orphans(&manifest)
        .context("removing orphan files")?;
    if !orphans.is_empty() {
        tracing::info!(
            count = orphans.len(),
            "removed files of flushes that did not complete"
        );
    }
    {
        let store = store.clone();
        manifest.set_deleter(Arc::new(move |path: &str| {
            if let Err(e) = store.delete(path) {
                tracing::warn!(path, error = %e, "cannot delete a file out of the manifest (removed at the next start)");
            }
        }));
    }
    crate::storage::apply_config(&config, &manifest).context("applying retention.*")?;
    let catalog = Catalog::new();
    seed_catalog(&catalog, &manifest);
    let shard_count = config.shard_cores();
    let (pool, flush_threads) = FlushPool::start_with(
        config.flush.workers,
        shard_count * 2,
        store.clone(),
        manifest.clone(),
        PoolOptions {
            nice: config.flush.nice,
            codec: config.flush.compression,
        },
    );
    let metrics = NodeMetrics::new();
    let tls = crate::tls::Tls::load(&config.tls).context("loading the TLS files (tls.*)")?;
    let (control, control_parts) =
        crate::control::ControlHandle::new(&config).with_context(|| {
            format!(
                "binding the control port cluster.control_addr = {}",
                config.cluster.control_addr
            )
        })?;
    let mut snapshot_rxs = Vec::new();
    let mut snapshot_txs = Vec::new();
    for _ in 0..shard_count {
        let (tx, rx) = futures::channel::mpsc::channel::<crate::query::SnapshotRequest>(64);
        snapshot_txs.push(tx);
        snapshot_rxs.push(rx);
    }
    let query = crate::query::QueryEngine::start(
        config.query.clone(),
        &data.join("parquet"),
        catalog.clone(),
        manifest.clone(),
        snapshot_txs,
    )
    .context("starting the query pool")?;
    metrics.register_query(&query);
    let storage_metrics = Arc::new(crate::storage::StorageMetrics::new());
    metrics.register_with(|r| storage_metrics.register(r, &manifest));
    let (storage, storage_parts) = crate::storage::channel();
    let node = Arc::new(NodeShared {
        catalog: catalog.clone(),
        query: query.clone(),
        tokens,
        metrics: metrics.clone(),
        manifest: manifest.clone(),
        store,
        shard_count,
        tls,
        control,
        positions: (0..shard_count)
            .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
            .collect(),
        lease: crate::control::PrimaryLease::default(),
        compactor_lease: crate::control::PrimaryLease::default(),
        storage,
        following: (0..shard_count).map(|_| AtomicU64::new(0)).collect(),
        report: event_listener::Event::new(),
        fatal: Mutex::new(None),
        recovered: AtomicUsize::new(0),
        shutting_down: AtomicBool::new(false),
        flush_requested: AtomicU64::new(0),
        flush_done: (0..shard_count).map(|_| AtomicU64::new(0)).collect(),
        flush_errors: Mutex::new(Vec::new()),
        config,
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    tracing::info!(%addr, shard_cores = shard_count, data_dir = %data.display(), sync_mode = ?node.config.wal.sync_mode, wal_io = ?node.config.wal.io, role = ?node.config.cluster.role, "starting tidemark");

    let mut cores = Vec::new();
    for (i, snapshots) in snapshot_rxs.into_iter().enumerate() {
        let node = node.clone();
        let pool = pool.clone();
        let catalog = catalog.clone();
        let sc = shard_config(&node.config, &data, i);
        let cpu = node.config.node.pin_cores.then_some(i % cpus);
        let handle = runtime::spawn_core(
            format!("tidemark-shard-{i}"),
            cpu,
            node.config.node.driver,
            move |_driver| core_main(i, node, sc, catalog, pool, snapshots),
        )
        .with_context(|| format!("starting shard core {i}"))?;
        cores.push(handle);
    }
    drop(pool);

    let storage_thread = crate::storage::start(node.clone(), storage_parts, storage_metrics)
        .context("starting the compaction thread")?;

    // The query protocols beside HTTP, on the query pool (off unless set).
    if !node.config.pg.addr.is_empty() {
        crate::pg::start(&node).with_context(|| {
            format!(
                "starting the PostgreSQL server pg.addr = {}",
                node.config.pg.addr
            )
        })?;
    }
    if !node.config.flight.addr.is_empty() {
        crate::flight::start(&node).with_context(|| {
            format!(
                "starting the Flight SQL server flight.addr = {}",
                node.config.flight.addr
            )
        })?;
    }

    // The control thread: Raft (in a cluster), signals, housekeeping, shutdown.
    let control_node = node.clone();
    let control = std::thread::Builder::new()
        .name("tidemark-control".into())
        .spawn(move || control_main(control_node, control_parts))
        .context("starting the control thread")?;

    let mut failure = None;
    for (i, c) in cores.into_iter().enumerate() {
        match c.join() {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => failure = Some(e.context(format!("shard core {i}"))),
            Ok(Err(e)) => {
                failure = Some(anyhow::Error::new(e).context(format!("shard core {i} runtime")))
            }
            Err(_) => failure = Some(anyhow::anyhow!("shard core {i} panicked")),
        }
        if failure.is_some() {
            // One core failing stops the node.
            node.shutting_down.store(true, Ordering::Release);
        }
    }
    node.shutting_down.store(true, Ordering::Release);
    let _ = control.join();
    let _ = storage_thread.join();
    query.shutdown();
    for t in flush_threads {
        let _ = t.join();
    }
    if let Some(reason) = node.fatal.lock().expect("fatal lock").take() {
        failure.get_or_insert_with(|| anyhow::anyhow!(reason));
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("tidemark stopped");
            Ok(())
        }
    }
}

/// The control thread: a tokio current-thread runtime that watches the
/// signals and, in a cluster, runs the control core (Raft, health, API).
fn control_main(node: Arc<NodeShared>, parts: crate::control::ControlParts) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            node.fail(format!("cannot start the control runtime: {e}"));
            return;
        }
    };
    rt.block_on(async move {
        let member = node.config.in_cluster().then(|| {
            let node = node.clone();
            let config = node.config.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::control::member::run(config, parts, node.clone()).await {
                    node.fail(format!("{e:#}"));
                }
            })
        });
        watch_signals(&node).await;
        if let Some(m) = member {
            let _ = m.await;
        }
    });
}

/// Turns SIGTERM/SIGINT into a shutdown; keeps the ready gauge fresh.
async fn watch_signals(node: &NodeShared) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            node.fail(format!("cannot install signal handlers: {e}"));
            return;
        }
    };
    loop {
        for sig in signals.pending() {
            tracing::info!(signal = sig, "shutting down: finishing requests in flight");
            node.shutting_down.store(true, Ordering::Release);
        }
        node.update_ready_gauge();
        if node.is_shutting_down() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// mimalloc's `purge_delay` option (its index in mimalloc v2's
/// `mi_option_t`): how long freed memory is kept before it is returned to
/// the OS, -1 never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets `node.allocator_purge_delay_ms` (see its docs).
fn set_allocator_purge_delay(ms: i64) {
    // SAFETY: mi_option_set only stores the value; options may be set at
    // any time (mimalloc reads them when it decides to purge).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as std::ffi::c_long) };
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    tidemark_shards::runtime::thread_cpu_time().as_secs_f64()
}

async fn core_main(
    id: usize,
    node: Arc<NodeShared>,
    config: ShardConfig,
    catalog: Arc<Catalog>,
    pool: FlushPool,
    mut snapshots: futures::channel::mpsc::Receiver<crate::query::SnapshotRequest>,
) -> anyhow::Result<()> {
    let ctx = Rc::new(CoreCtx {
        id,
        metrics: node.metrics.core(id),
        node: node.clone(),
        shard: RefCell::new(None),
        draining: Cell::new(false),
        drain_event: Event::new(),
        connections: Cell::new(0),
        writer: RefCell::new(None),
        forward_pool: RefCell::new(crate::forward::Pool::default()),
        balancer: RefCell::new(crate::routing::Balancer::default()),
    });
    // Listen first, so /health and /ready answer while the shard recovers.
    let listener = crate::http::server::bind(node.config.socket_addr())
        .with_context(|| format!("binding {}", node.config.http.addr))?;
    let server = monoio::spawn(crate::http::server::serve(listener, ctx.clone()));

    let (shard, recovery) = Shard::open(config, catalog, pool, node.manifest.clone())
        .await
        .context("recovering the shard")?;
    tracing::info!(
        shard = id,
        replayed_entries = recovery.replayed_entries,
        replayed_rows = recovery.replayed_rows,
        "shard ready"
    );
    let shard = Rc::new(shard);
    {
        let m = ctx.metrics.clone();
        let node = node.clone();
        shard.wal().set_commit_observer(Box::new(move |c| {
            // Before any writer of these entries is answered: a failover's
            // report of this node's positions includes every acknowledged one.
            node.positions[id][0].store(c.last.0, Ordering::SeqCst);
            m.wal_appends.inc_by(c.entries);
            m.wal_bytes.inc_by(c.bytes);
            if let Some(d) = c.sync {
                m.wal_fsyncs.inc();
                m.wal_fsync_seconds.observe(d.as_secs_f64());
            }
        }));
    }
    *ctx.shard.borrow_mut() = Some(shard.clone());
    // Answer the query pool's snapshot requests from this core's loop,
    // until the core drains (the task holds the shard: it must end).
    let snapshot_server = {
        let shard = shard.clone();
        let ctx = ctx.clone();
        monoio::spawn(async move {
            use futures::StreamExt;
            loop {
                let drain = ctx.drain_event.listen();
                if ctx.draining.get() {
                    return;
                }
                let req = monoio::select! {
                    req = snapshots.next() => req,
                    _ = drain => None,
                };
                let Some(req) = req else { return };
                let (snapshot, _) = shard.snapshot_table(&req.table);
                let _ = req.reply.send(crate::query::engine::ShardTable {
                    shard: shard.id(),
                    snapshot,
                    applied_seq: shard.applied_seq(),
                });
            }
        })
    };
    let cluster = node.config.in_cluster();
    if node.config.serves_replication() {
        let side = crate::replication::sender::WriterSide::start(ctx.clone(), shard.clone())
            .with_context(|| {
                format!(
                    "binding the replication listener {}",
                    Config::shard_addr(node.config.replication_listen_addr(), id)
                )
            })?;
        *ctx.writer.borrow_mut() = Some(side);
    }
    // In a cluster every node follows whoever the view names (nobody while
    // it is the primary itself).
    let follower = (node.config.cluster.role == Role::Reader || cluster).then(|| {
        monoio::spawn(crate::replication::receiver::follow(
            ctx.clone(),
            shard.clone(),
        ))
    });
    node.recovered.fetch_add(1, Ordering::AcqRel);
    node.update_ready_gauge();

    let flush_interval = Duration::from_millis(node.config.flush.check_interval_ms);
    // Flushes when a trigger fires, or when `POST /api/v1/flush` asks.
    let flusher = {
        let shard = shard.clone();
        let ctx = ctx.clone();
        monoio::spawn(async move {
            let mut since_check = Duration::ZERO;
            let tick = Duration::from_millis(5);
            loop {
                monoio::time::sleep(tick).await;
                since_check += tick;
                if ctx.draining.get() {
                    return;
                }
                let asked = ctx.node.flush_requested.load(Ordering::Acquire);
                if asked > ctx.node.flush_done[ctx.id].load(Ordering::Acquire) {
                    if let Err(e) = crate::http::handlers::flush_shard(&ctx, &shard).await {
                        ctx.node
                            .flush_errors
                            .lock()
                            .expect("flush errors lock")
                            .push((asked, e.to_string()));
                    }
                    ctx.node.flush_done[ctx.id].store(asked, Ordering::Release);
                } else if since_check >= flush_interval {
                    since_check = Duration::ZERO;
                    if shard.flush_due().is_some() {
                        crate::http::handlers::flush_shard(&ctx, &shard).await.ok();
                        // Rows buffered during the flush may be due already:
                        // look again at the next tick, not a whole interval
                        // later (writes may be waiting at the throttle).
                        since_check = flush_interval;
                    }
                }
            }
        })
    };

    // Housekeeping until shutdown: gauges and this core's load.
    let mut last_cpu = thread_cpu_seconds();
    while !node.is_shutting_down() {
        monoio::time::sleep(Duration::from_millis(100)).await;
        let cpu = thread_cpu_seconds();
        ctx.metrics.core_busy.inc_by((cpu - last_cpu).max(0.0));
        last_cpu = cpu;
        ctx.refresh_gauges();
    }
    ctx.draining.set(true);
    ctx.drain_event.notify(usize::MAX);
    server.await;
    flusher.await;
    snapshot_server.await;
    if let Some(f) = follower {
        f.await;
    }
    let writer = ctx.writer.borrow_mut().take();
    if let Some(w) = writer {
        w.stop().await;
    }
    shard.close().await;
    tracing::info!(shard = id, applied_seq = %shard.applied_seq(), "shard closed");
    Ok(())
}
