//! `flush::encode_rows` (concat, sort by hour/tags/time, merge repeated
//! points, split per hour, Parquet in the flush codec, SHA-256) of a frozen
//! TSBS-cpu-like table, as a flush worker runs it, for each
//! `flush.compression` codec worth comparing. No storage I/O. One iteration
//! is the whole table; throughput counts rows, and bytes of the table's
//! in-memory Arrow data.
//!
//! Ids: `parquet_flush/rows=<rows>/codec=<lz4_raw|zstd>`, and
//! `parquet_flush/loadgen/rows=1000000/codec=lz4_raw`: the table a node's
//! flush gets under `perf/ingest-matrix.sh` (tidemark-loadgen's TSBS rows, 10
//! tags, its 64 bodies of 5,000 rows decoded as MessagePack columnar and
//! cycled, so each point arrives about three times and is merged).

use arrow_array::RecordBatch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tidemark_benches::{cpu_table, frozen_cpu_table};
use tidemark_loadgen::gen::{self, Generator, Schema};
use tidemark_shards::buffer::{BufferConfig, FrozenTable, ShardBuffer};
use tidemark_shards::catalog::{Catalog, CatalogCache};
use tidemark_shards::flush::{encode_rows, EncodeOptions, Encoded, FlushCodec};
use tidemark_shards::{ShardId, WalSeq};

/// `rows` rows as a node buffers them under the ingest matrix: the
/// loadgen's pool of 64 MessagePack columnar bodies of 5,000 rows, decoded
/// and appended in turn, cycled.
fn frozen_loadgen_table(rows: usize) -> FrozenTable {
    let mut g = Generator::new(
        Schema::Cpu,
        1000,
        1_704_067_200_000_000_000,
        10_000_000_000,
        42,
    );
    let bodies: Vec<Vec<u8>> = (0..64)
        .map(|_| gen::encode(gen::Format::MsgpackColumnar, &g.rows(5_000)))
        .collect();
    let mut buf = ShardBuffer::new(BufferConfig::default(), WalSeq::ZERO);
    let mut cache = CatalogCache::new(Catalog::new());
    let mut seq = WalSeq::ZERO;
    let mut table = None;
    for body in bodies.iter().cycle().take(rows.div_ceil(5_000)) {
        let decoded = tidemark_ingest::msgpack::parse(body, "bench", 0).expect("loadgen body");
        for wb in decoded.batches {
            let schema = cache
                .check(wb.table(), wb.batch().schema_ref())
                .expect("schema");
            seq = seq.next();
            buf.append(seq, wb.table(), &schema, wb.batch());
            table = Some(wb.table().clone());
        }
    }
    let mut set = buf.begin_flush().expect("rows were appended");
    set.tables
        .remove(&table.expect("a table"))
        .expect("the cpu table")
}

/// One flush of `frozen`'s rows.
fn encode(frozen: &FrozenTable, options: &EncodeOptions) -> Encoded {
    encode_rows(
        &cpu_table(),
        &frozen.schema,
        &frozen.batches,
        ShardId(0),
        WalSeq(1),
        options,
    )
    .expect("encode")
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("parquet_flush");
    group.sample_size(10);
    for rows in [100_000, 1_000_000] {
        let frozen = frozen_cpu_table(rows);
        let arrow_bytes: usize = frozen
            .batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        for (name, codec) in [("lz4_raw", FlushCodec::Lz4Raw), ("zstd", FlushCodec::Zstd)] {
            let options = EncodeOptions::flush(codec);
            let files = encode(&frozen, &options).files;
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
            group.bench_function(format!("rows={rows}/codec={name}"), |b| {
                b.iter(|| encode(&frozen, &options))
            });
        }
    }
    let frozen = frozen_loadgen_table(1_000_000);
    let options = EncodeOptions::flush(FlushCodec::Lz4Raw);
    let e = encode(&frozen, &options);
    eprintln!(
        "parquet_flush/loadgen/rows=1000000/codec=lz4_raw: {} batches -> {} files, {} rows merged",
        frozen.batches.len(),
        e.files.len(),
        e.merged
    );
    group.throughput(Throughput::Elements(1_000_000));
    group.bench_function("loadgen/rows=1000000/codec=lz4_raw", |b| {
        b.iter(|| encode(&frozen, &options))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
