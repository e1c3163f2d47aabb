//! `Wal::append` throughput: N appenders on one monoio core, group commit,
//! against a naive `std::fs::File` baseline (one `write_all`, plus one
//! `sync_data` when syncing, per entry) in the same group.
//!
//! Ids: `wal_append/sync=<none|fdatasync>/entry=<size>/impl=<wal|std-file>/writers=<N>`.
//! One iteration is one appended entry; throughput counts payload bytes.

use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tidemark_benches::{scratch_dir, size_label};
use tidemark_shards::runtime::{self, CoreRuntime, DriverChoice};
use tidemark_shards::wal::{EntryKind, SyncMode, Wal, WalConfig};
use tidemark_shards::ShardId;

const WRITERS: [usize; 3] = [1, 8, 64];

fn sync_label(mode: SyncMode) -> &'static str {
    match mode {
        SyncMode::None => "none",
        SyncMode::Fdatasync => "fdatasync",
        SyncMode::Fsync => "fsync",
    }
}

/// Appends `iters` entries of `payload`, spread over `writers` tasks, to a
/// fresh WAL; returns the time from the first append to the last durable one.
fn wal_run(
    rt: &mut CoreRuntime,
    mode: SyncMode,
    payload: &Rc<Vec<u8>>,
    writers: usize,
    iters: u64,
) -> Duration {
    let dir = scratch_dir("wal-append-");
    let mut config = WalConfig::new(dir.path(), ShardId(0));
    config.sync_mode = mode;
    let elapsed = rt.block_on(async {
        let (wal, _) = Wal::open(config, tidemark_shards::WalSeq(1))
            .await
            .expect("open WAL");
        let start = Instant::now();
        let handles: Vec<_> = (0..writers as u64)
            .map(|w| {
                let n = iters / writers as u64 + u64::from(w < iters % writers as u64);
                let wal = wal.clone();
                let payload = payload.clone();
                monoio::spawn(async move {
                    for _ in 0..n {
                        wal.append(EntryKind::Write, &payload)
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for h in handles {
            h.await;
        }
        let elapsed = start.elapsed();
        wal.close().await;
        elapsed
    });
    drop(dir);
    elapsed
}

/// The naive baseline: one `write_all` (and `sync_data`) per entry.
fn std_file_run(mode: SyncMode, payload: &[u8], iters: u64) -> Duration {
    let dir = scratch_dir("std-append-");
    let mut f = std::fs::File::create(dir.path().join("log")).expect("create");
    let start = Instant::now();
    for _ in 0..iters {
        f.write_all(payload).expect("write");
        if mode != SyncMode::None {
            f.sync_data().expect("sync");
        }
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let (mut rt, driver) = runtime::build(DriverChoice::Auto, 4096).expect("runtime");
    eprintln!(
        "wal_append: driver {driver}, scratch dir {}",
        tidemark_benches::scratch_root().display()
    );
    let mut group = c.benchmark_group("wal_append");
    for (mode, sizes) in [
        (SyncMode::None, &[1 << 10, 8 << 10, 64 << 10, 1 << 20][..]),
        (SyncMode::Fdatasync, &[1 << 10, 8 << 10, 64 << 10][..]),
    ] {
        if mode == SyncMode::Fdatasync {
            group.sample_size(20);
        }
        for &size in sizes {
            // Not all zeros: a compressing or deduplicating disk must not flatter it.
            let payload: Rc<Vec<u8>> = Rc::new((0..size).map(|i| (i * 131 % 251) as u8).collect());
            group.throughput(Throughput::BytesDecimal(size as u64));
            let prefix = format!("sync={}/entry={}", sync_label(mode), size_label(size));
            for writers in WRITERS {
                group.bench_function(format!("{prefix}/impl=wal/writers={writers}"), |b| {
                    b.iter_custom(|iters| wal_run(&mut rt, mode, &payload, writers, iters))
                });
            }
            group.bench_function(format!("{prefix}/impl=std-file/writers=1"), |b| {
                b.iter_custom(|iters| std_file_run(mode, &payload, iters))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
