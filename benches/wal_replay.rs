//! WAL replay of ~256 MiB of real write entries (TSBS-cpu-like batches
//! encoded with `payload::encode_writes`), from the page cache:
//!
//! * `wal_replay/read/...`: `Wal::read_from` over every entry (memory maps,
//!   CRC32C of each entry checked), payloads untouched;
//! * `wal_replay/replay/...`: what `Shard::open` does per entry: read,
//!   `decode_writes`, catalog check, `ShardBuffer::append_entry` into a
//!   fresh buffer (dropped outside the timing);
//! * `wal_replay/replay_ipc/...`: the same over a WAL of the same rows in
//!   the Arrow IPC encoding earlier versions wrote (entry kind 1).
//!
//! One iteration is the whole WAL; throughput counts WAL bytes (headers and
//! padding included). Ids: `wal_replay/<read|replay|replay_ipc>/entry_rows=<rows>`.

use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tidemark_benches::{scratch_dir, CpuGen};
use tidemark_shards::buffer::{BufferConfig, ShardBuffer};
use tidemark_shards::runtime::{self, DriverChoice};
use tidemark_shards::wal::format::SEGMENT_HEADER_LEN;
use tidemark_shards::wal::payload::{decode_writes, encode_writes, encode_writes_ipc};
use tidemark_shards::wal::{EntryKind, SyncMode, Wal, WalConfig};
use tidemark_shards::{Catalog, CatalogCache, ShardId, WalSeq};

const WAL_BYTES: u64 = 256 << 20;

fn bench(c: &mut Criterion) {
    let (mut rt, _) = runtime::build(DriverChoice::Auto, 4096).expect("runtime");
    let mut group = c.benchmark_group("wal_replay");
    group.sample_size(10);
    for entry_rows in [1_000, 5_000] {
        for kind in [EntryKind::Write, EntryKind::WriteIpc] {
            let suffix = if kind == EntryKind::Write { "" } else { "_ipc" };
            let dir = scratch_dir("wal-replay-");
            let mut config = WalConfig::new(dir.path(), ShardId(0));
            config.sync_mode = SyncMode::None;
            let (wal, entries) = rt.block_on(async {
                let (wal, _) = Wal::open(config, WalSeq(1)).await.expect("open WAL");
                let mut gen = CpuGen::default();
                let mut entries = 0u64;
                while wal_bytes(&wal) < WAL_BYTES {
                    let wb = vec![gen.batch(entry_rows)];
                    wal.append_with(
                        kind,
                        |out| match kind {
                            EntryKind::Write => {
                                encode_writes(out, &wb);
                                Ok(())
                            }
                            EntryKind::WriteIpc => encode_writes_ipc(out, &wb),
                        },
                        |_| {},
                    )
                    .await
                    .expect("append");
                    entries += 1;
                }
                (wal, entries)
            });
            let bytes = wal_bytes(&wal);
            eprintln!(
                "wal_replay{suffix}/entry_rows={entry_rows}: {entries} entries, {bytes} bytes in {} segments ({} B/entry)",
                wal.segments().len(),
                bytes / entries
            );
            group.throughput(Throughput::BytesDecimal(bytes));
            if kind == EntryKind::Write {
                group.bench_function(format!("read/entry_rows={entry_rows}"), |b| {
                    b.iter(|| {
                        let mut n = 0u64;
                        wal.read_from(WalSeq(1), |e| {
                            n += black_box(e.payload).len() as u64;
                            ControlFlow::Continue(())
                        })
                        .expect("read");
                        n
                    })
                });
            }
            group.bench_function(format!("replay{suffix}/entry_rows={entry_rows}"), |b| {
                b.iter_with_large_drop(|| {
                    let mut buffer = ShardBuffer::new(BufferConfig::default(), WalSeq::ZERO);
                    let mut cache = CatalogCache::new(Catalog::new());
                    wal.read_from(WalSeq(1), |e| {
                        // As `Shard` recovery does: every table of the entry,
                        // checked against the catalog, appended as one entry.
                        let tables: Vec<_> = decode_writes(e.kind, e.payload)
                            .expect("decode")
                            .into_iter()
                            .map(|wb| {
                                let schema = cache
                                    .check(wb.table(), wb.batch().schema_ref())
                                    .expect("schema");
                                let (table, rows) = wb.into_parts();
                                (table, schema, rows)
                            })
                            .collect();
                        buffer.append_entry(e.seq, &tables);
                        ControlFlow::Continue(())
                    })
                    .expect("replay");
                    buffer
                })
            });
            rt.block_on(wal.close());
            drop(dir);
        }
    }
    group.finish();
}

/// Bytes of the WAL's segments past their headers.
fn wal_bytes(wal: &Wal) -> u64 {
    wal.segments()
        .iter()
        .map(|s| s.len - SEGMENT_HEADER_LEN as u64)
        .sum()
}

criterion_group!(benches, bench);
criterion_main!(benches);
