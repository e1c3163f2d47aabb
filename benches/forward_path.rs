//! The write forwarding path of one shard core, from request bytes to a
//! replication frame: decode (`tidemark-ingest`, as the HTTP handler calls
//! it) -> `Shard::write_all` (catalog check -> WAL append, group commit,
//! real files in a scratch dir on disk -> buffer apply in sequence order)
//! -> the entry frame a writer sends its readers (the entry read back from
//! the WAL's ring with `Wal::read_chunk`, a slice of the bytes written, plus
//! its `entries_header`). The ring is on, as on a writer. No HTTP, no
//! socket, no flush.
//!
//! Ids: `forward_path/<format>/rows=<N>/stage=decode` (decode only),
//! `.../stage=wal_encode` and `.../stage=wal_encode_ipc` (the WAL payload of
//! a decoded request, in the encoding written now and in the Arrow IPC one
//! written before; format `lp-devops` has these three stages only) and
//! `forward_path/<format>/rows=<N>/stage=full/sync=<none|fdatasync>/writers=<W>`
//! (W tasks on one monoio core, each decoding and writing requests one
//! after another, like W keep-alive connections). One iteration is one
//! request of N TSBS cpu-only rows (10 tags, 10 float fields, the same rows
//! tidemark-loadgen sends); throughput counts rows.
//!
//! After the criterion runs, the per-request latency of every `stage=full`
//! case (decode start to `write_all` return, all of criterion's runs of that
//! case including warm-up) is printed as HdrHistogram percentiles.
//!
//! A shard's buffer is never flushed here: every 500,000 rows the shard is
//! closed and a fresh one opened in a new directory, outside the timed part.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hdrhistogram::Histogram;
use tidemark_benches::{scratch_dir, HOSTS};
use tidemark_ingest::{line_protocol, msgpack, Precision};
use tidemark_loadgen::gen::{self, Generator, Schema};
use tidemark_shards::buffer::BufferConfig;
use tidemark_shards::flush::{FileStore, FlushPool};
use tidemark_shards::manifest::Manifest;
use tidemark_shards::replication::frame::{entries_header, Compression};
use tidemark_shards::runtime::{self, CoreRuntime, DriverChoice};
use tidemark_shards::shard::{Shard, ShardConfig};
use tidemark_shards::wal::payload::{encode_writes, encode_writes_ipc};
use tidemark_shards::wal::{ReadCursor, SyncMode, WalConfig};
use tidemark_shards::{Catalog, ShardId};

/// Rows per shard before it is replaced by a fresh one (untimed).
const ROWS_PER_SHARD: usize = 500_000;
/// Distinct request bodies, cycled.
const POOL: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Lp,
    MsgpackColumnar,
    /// Line protocol of TSBS devops rows (cpu, mem, disk and net rows per
    /// host: four tables per request, most fields integers).
    LpDevops,
}

impl Format {
    fn label(self) -> &'static str {
        match self {
            Format::Lp => "lp",
            Format::MsgpackColumnar => "msgpack-columnar",
            Format::LpDevops => "lp-devops",
        }
    }
}

// ---- request bodies: TSBS cpu-only, from tidemark-loadgen's generator ----

/// 2026-01-01T00:00:00Z.
const START_NS: i64 = 1_767_225_600_000_000_000;

fn bodies(format: Format, rows_per_request: usize) -> Vec<Rc<Vec<u8>>> {
    let (wire, schema) = match format {
        Format::Lp => (gen::Format::Lp, Schema::Cpu),
        Format::MsgpackColumnar => (gen::Format::MsgpackColumnar, Schema::Cpu),
        Format::LpDevops => (gen::Format::Lp, Schema::Devops),
    };
    let mut rows = Generator::new(schema, HOSTS, START_NS, 10_000_000_000, 1);
    (0..POOL)
        .map(|_| Rc::new(gen::encode(wire, &rows.rows(rows_per_request))))
        .collect()
}

/// What the HTTP handler does with a body: decode it for database `bench`.
fn decode(format: Format, body: &[u8]) -> tidemark_ingest::builder::Decoded {
    let now = 0;
    match format {
        Format::Lp | Format::LpDevops => {
            line_protocol::parse(body, "bench", Precision::Nanoseconds, now)
        }
        Format::MsgpackColumnar => msgpack::parse(body, "bench", now),
    }
    .expect("generated bodies decode")
}

// ---- the shard ----

/// A shard in a fresh scratch directory, with its manifest and flush pool.
struct Fresh {
    shard: Shard,
    _dir: tempfile::TempDir,
}

async fn fresh_shard(sync: SyncMode) -> Fresh {
    let dir = scratch_dir("forward-path-");
    let store = Arc::new(FileStore::local(&dir.path().join("parquet")).expect("file store"));
    let manifest = Arc::new(Manifest::open(&dir.path().join("manifest")).expect("manifest"));
    let (pool, _) = FlushPool::start(1, 4, store, manifest.clone());
    let mut wal = WalConfig::new(dir.path().join("wal"), ShardId(0));
    wal.sync_mode = sync;
    // As on a writer with readers: committed groups stay in the ring.
    wal.ring_bytes = 64 << 20;
    let mut config = ShardConfig::new(wal);
    // Never due: this bench does not flush (see the module docs).
    config.buffer = BufferConfig {
        flush_rows: usize::MAX,
        flush_bytes: usize::MAX,
        flush_age: Duration::from_secs(1 << 30),
        ..BufferConfig::default()
    };
    config.max_buffer_bytes = usize::MAX;
    let (shard, _) = Shard::open(config, Catalog::new(), pool, manifest)
        .await
        .expect("open shard");
    Fresh { shard, _dir: dir }
}

/// `iters` requests over `writers` tasks; the timed part only, summed over
/// fresh shards. Records every request's latency in `hist` (µs).
#[allow(clippy::too_many_arguments)]
fn full_run(
    rt: &mut CoreRuntime,
    format: Format,
    sync: SyncMode,
    writers: usize,
    bodies: &[Rc<Vec<u8>>],
    rows_per_request: usize,
    iters: u64,
    hist: &Rc<RefCell<Histogram<u64>>>,
) -> Duration {
    let per_shard = (ROWS_PER_SHARD / rows_per_request).max(writers) as u64;
    let mut left = iters;
    let mut total = Duration::ZERO;
    let mut next_body = 0usize;
    while left > 0 {
        let chunk = left.min(per_shard);
        left -= chunk;
        total += rt.block_on(async {
            let fresh = fresh_shard(sync).await;
            let shard = Rc::new(fresh.shard);
            let start = Instant::now();
            let handles: Vec<_> = (0..writers as u64)
                .map(|w| {
                    let n = chunk / writers as u64 + u64::from(w < chunk % writers as u64);
                    let shard = shard.clone();
                    let hist = hist.clone();
                    let mine: Vec<Rc<Vec<u8>>> = (0..bodies.len())
                        .map(|i| bodies[(i + next_body + w as usize) % bodies.len()].clone())
                        .collect();
                    monoio::spawn(async move {
                        let mut cursor = ReadCursor::default();
                        let mut framed = 0usize;
                        for i in 0..n as usize {
                            let t0 = Instant::now();
                            let decoded = decode(format, &mine[i % mine.len()]);
                            let seq = shard.write_all(decoded.batches).await.expect("write");
                            let chunk = shard
                                .wal()
                                .read_chunk(seq, 1, &mut cursor)
                                .expect("read back")
                                .expect("durable");
                            let header = entries_header(
                                chunk.first,
                                chunk.last,
                                Compression::None,
                                chunk.bytes.len() as u32,
                                chunk.bytes.len(),
                            );
                            framed += header.len() + chunk.bytes.len();
                            let us = t0.elapsed().as_micros().max(1) as u64;
                            let _ = hist.borrow_mut().record(us);
                        }
                        std::hint::black_box(framed);
                    })
                })
                .collect();
            for h in handles {
                h.await;
            }
            let elapsed = start.elapsed();
            shard.close().await;
            drop(shard);
            drop(fresh._dir);
            elapsed
        });
        next_body += 1;
    }
    total
}

fn sync_label(mode: SyncMode) -> &'static str {
    match mode {
        SyncMode::None => "none",
        SyncMode::Fdatasync => "fdatasync",
        SyncMode::Fsync => "fsync",
    }
}

fn bench(c: &mut Criterion) {
    let (mut rt, driver) = runtime::build(DriverChoice::Auto, 4096).expect("runtime");
    eprintln!(
        "forward_path: driver {driver}, scratch dir {}",
        tidemark_benches::scratch_root().display()
    );
    let mut latencies: Vec<(String, Rc<RefCell<Histogram<u64>>>)> = Vec::new();
    let mut group = c.benchmark_group("forward_path");
    group.sample_size(20);
    for format in [Format::Lp, Format::MsgpackColumnar, Format::LpDevops] {
        for rows_per_request in [1_000usize, 5_000] {
            let bodies = bodies(format, rows_per_request);
            let body_bytes: usize = bodies.iter().map(|b| b.len()).sum::<usize>() / bodies.len();
            eprintln!(
                "forward_path: {} rows={rows_per_request}: {body_bytes} bytes per body",
                format.label()
            );
            group.throughput(Throughput::Elements(rows_per_request as u64));
            let prefix = format!("{}/rows={rows_per_request}", format.label());
            group.bench_function(format!("{prefix}/stage=decode"), |b| {
                let mut i = 0;
                b.iter(|| {
                    i += 1;
                    decode(format, &bodies[i % bodies.len()])
                })
            });
            // The WAL payload of a decoded request, in the encoding this
            // code writes and in the Arrow IPC one it wrote before.
            let decoded: Vec<_> = bodies.iter().map(|b| decode(format, b)).collect();
            let mut out = Vec::new();
            group.bench_function(format!("{prefix}/stage=wal_encode"), |b| {
                let mut i = 0;
                b.iter(|| {
                    i += 1;
                    out.clear();
                    encode_writes(&mut out, &decoded[i % decoded.len()].batches);
                    out.len()
                })
            });
            group.bench_function(format!("{prefix}/stage=wal_encode_ipc"), |b| {
                let mut i = 0;
                b.iter(|| {
                    i += 1;
                    out.clear();
                    encode_writes_ipc(&mut out, &decoded[i % decoded.len()].batches)
                        .expect("encode");
                    out.len()
                })
            });
            if format == Format::LpDevops {
                continue;
            }
            for sync in [SyncMode::None, SyncMode::Fdatasync] {
                for writers in [1usize, 4] {
                    let id = format!(
                        "{prefix}/stage=full/sync={}/writers={writers}",
                        sync_label(sync)
                    );
                    let hist = Rc::new(RefCell::new(
                        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
                    ));
                    group.bench_function(&id, |b| {
                        b.iter_custom(|iters| {
                            full_run(
                                &mut rt,
                                format,
                                sync,
                                writers,
                                &bodies,
                                rows_per_request,
                                iters,
                                &hist,
                            )
                        })
                    });
                    latencies.push((id, hist));
                }
            }
        }
    }
    group.finish();
    eprintln!("\nper-request latency (decode start to the replication frame), µs:");
    eprintln!(
        "{:<62} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "forward_path/...", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (id, h) in &latencies {
        let h = h.borrow();
        if h.is_empty() {
            continue;
        }
        eprintln!(
            "{:<62} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
            id,
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
