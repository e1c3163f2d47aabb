//! `flush::encode_rows` (concat, sort by hour/tags/time, merge repeated
//! points, split per hour, Parquet in the flush codec, SHA-256) of a frozen
//! TSBS-cpu-like table, as a flush worker runs it, for each
//! `flush.compression` codec worth comparing. No storage I/O. One iteration
//! is the whole table; throughput counts rows, and bytes of the table's
//! in-memory Arrow data.
//!
//! Ids: `parquet_flush/rows=<rows>/codec=<lz4_raw|zstd>`.

use arrow_array::RecordBatch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tidemark_benches::{cpu_table, frozen_cpu_table};
use tidemark_shards::flush::{encode_rows, EncodeOptions, FlushCodec};
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
        for (name, codec) in [("lz4_raw", FlushCodec::Lz4Raw), ("zstd", FlushCodec::Zstd)] {
            let options = EncodeOptions::flush(codec);
            let encode = || {
                encode_rows(
                    &table,
                    &frozen.schema,
                    &frozen.batches,
                    ShardId(0),
                    WalSeq(1),
                    &options,
                )
                .expect("encode")
            };
            let files = encode().files;
            let parquet_bytes: u64 = files.iter().map(|f| f.meta.size).sum();
            eprintln!(
                "parquet_flush/rows={rows}/codec={name}: {} batches, {arrow_bytes} Arrow bytes -> \
                 {} files, {parquet_bytes} Parquet bytes ({:.1} B/row, {:.1}x smaller)",
                frozen.batches.len(),
                files.len(),
                parquet_bytes as f64 / rows as f64,
                arrow_bytes as f64 / parquet_bytes as f64,
            );
            group.throughput(Throughput::ElementsAndBytes {
                elements: rows as u64,
                bytes: arrow_bytes as u64,
            });
            group.bench_function(format!("rows={rows}/codec={name}"), |b| b.iter(encode));
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
