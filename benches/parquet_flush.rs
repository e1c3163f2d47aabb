//! `flush::encode_table` (concat, sort by hour/tags/time, split per hour,
//! zstd Parquet, SHA-256) of a frozen TSBS-cpu-like table, as a flush worker
//! runs it. No storage I/O. One iteration is the whole table; throughput
//! counts rows, and bytes of the table's in-memory Arrow data.
//!
//! Ids: `parquet_flush/rows=<rows>`.

use arrow_array::RecordBatch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tidemark_benches::{cpu_table, frozen_cpu_table};
use tidemark_shards::flush::encode_table;
use tidemark_shards::{ShardId, WalSeq};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("parquet_flush");
    group.sample_size(10);
    let table = cpu_table();
    for rows in [100_000, 1_000_000] {
        let frozen = frozen_cpu_table(rows);
        let arrow_bytes: usize = frozen
            .batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        let files = encode_table(&table, &frozen, ShardId(0), WalSeq(1)).expect("encode");
        let parquet_bytes: u64 = files.iter().map(|f| f.meta.size).sum();
        eprintln!(
            "parquet_flush/rows={rows}: {} batches, {arrow_bytes} Arrow bytes -> {} files, \
             {parquet_bytes} Parquet bytes ({:.1} B/row, {:.1}x smaller)",
            frozen.batches.len(),
            files.len(),
            parquet_bytes as f64 / rows as f64,
            arrow_bytes as f64 / parquet_bytes as f64,
        );
        group.throughput(Throughput::ElementsAndBytes {
            elements: rows as u64,
            bytes: arrow_bytes as u64,
        });
        group.bench_function(format!("rows={rows}"), |b| {
            b.iter(|| encode_table(&table, &frozen, ShardId(0), WalSeq(1)).expect("encode"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
