//! `ShardBuffer::append` of TSBS-cpu-like batches into one buffer, on one
//! core. One iteration is one batch; throughput counts values (rows x
//! columns). The buffer is emptied (`begin_flush` + `finish_flush`, untimed)
//! whenever it holds a flush's worth of rows, so memory stays bounded and the
//! freezes at `freeze_rows` are measured as they happen in production.
//!
//! Ids: `buffer_append/rows=<rows per batch>/cols=14`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tidemark_benches::{cpu_table, cpu_table_schema, CpuGen, COLUMNS};
use tidemark_shards::buffer::{BufferConfig, ShardBuffer};
use tidemark_shards::WalSeq;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("buffer_append");
    let table = cpu_table();
    let schema = cpu_table_schema();
    for rows in [500, 5_000] {
        // 200k distinct rows to cycle through: 200 ticks of the 1,000 hosts.
        let batches = CpuGen::default().batches(200_000 / rows, rows);
        group.throughput(Throughput::Elements((rows * COLUMNS) as u64));
        group.bench_function(format!("rows={rows}/cols={COLUMNS}"), |b| {
            let config = BufferConfig::default();
            let flush_rows = config.flush_rows;
            let mut buf = ShardBuffer::new(config, WalSeq::ZERO);
            let mut seq = WalSeq::ZERO;
            let mut next = 0;
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    if buf.rows() >= flush_rows {
                        let set = buf.begin_flush().expect("rows to flush");
                        buf.finish_flush(set.upto);
                    }
                    // Time runs of appends between resets.
                    let run = left.min(((flush_rows - buf.rows()) / rows).max(1) as u64);
                    let start = Instant::now();
                    for _ in 0..run {
                        let wb = &batches[next];
                        next = (next + 1) % batches.len();
                        seq = seq.next();
                        buf.append(seq, &table, &schema, wb.batch());
                    }
                    timed += start.elapsed();
                    left -= run;
                }
                timed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
