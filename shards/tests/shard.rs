#![allow(clippy::unwrap_used)]
//! A shard on real files: writes, snapshots, flushes to Parquet read back
//! with the `parquet` crate, restarts and replay.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tidemark_shards::flush::TAGS_METADATA_KEY;
use tidemark_shards::runtime::{block_on, DriverChoice};
use tidemark_shards::shard::ShardError;
use tidemark_shards::{SchemaError, ShardId, WalSeq};

fn sorted_by_id(mut rows: Vec<CpuRow>) -> Vec<CpuRow> {
    rows.sort_by_key(|r| r.id);
    rows
}

#[test]
fn write_snapshot_flush_and_read_parquet_back() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path());
    let p = parts(&dirs);
    let base = 1_700_000_000_000_000_000i64 / HOUR * HOUR;
    let written = cpu_rows(0, 3000, base);
    block_on(DriverChoice::Auto, async {
        let (shard, rec) = open_shard(&dirs, &p, 0).await;
        assert_eq!(rec.replayed_entries, 0);
        for chunk in written.chunks(250) {
            shard.write(cpu_batch(chunk)).await.unwrap();
        }
        assert_eq!(shard.applied_seq(), WalSeq(12));
        // Read-your-writes: visible before any flush.
        assert_eq!(sorted_by_id(all_rows(&p, &shard)), written);
        let out = shard.flush().await.unwrap().unwrap();
        assert_eq!(out.upto, WalSeq(12));
        assert_eq!(out.rows, 3000);
        assert_eq!(out.files.len(), 3, "rows span three hours");
        assert_eq!(shard.snapshot().num_rows(), 0);
        assert_eq!(p.manifest.flushed_seq(ShardId(0)), WalSeq(12));
        shard.close().await;
    })
    .unwrap();

    let mut from_files = Vec::new();
    for f in p.manifest.files() {
        // Path layout: db/measurement/YYYY/MM/DD/HH/name.parquet
        let parts: Vec<&str> = f.path.split('/').collect();
        assert_eq!(parts.len(), 7, "{}", f.path);
        assert_eq!(&parts[..2], ["db", "cpu"]);
        let hour_start = chrono::DateTime::from_timestamp(f.hour * 3600, 0).unwrap();
        assert_eq!(
            parts[2..6].join("/"),
            hour_start.format("%Y/%m/%d/%H").to_string()
        );
        let bytes = p.store.get(&f.path).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), f.sha256);
        assert_eq!(bytes.len() as u64, f.size);
        let (batches, meta) = read_parquet(bytes);
        let kv = meta.file_metadata().key_value_metadata().unwrap();
        let tags = kv.iter().find(|k| k.key == TAGS_METADATA_KEY).unwrap();
        assert_eq!(tags.value.as_deref(), Some("[\"host\"]"));
        let rg = meta.row_group(0);
        // Flush files are LZ4_RAW by default (compaction rewrites them
        // with zstd).
        assert_eq!(
            rg.column(0).compression(),
            parquet::basic::Compression::LZ4_RAW
        );
        assert!(rg.column(0).statistics().is_some(), "statistics are on");
        let rows = rows_of(&batches);
        assert_eq!(rows.len() as u64, f.rows);
        // Sorted by tags, then time, all within the file's hour.
        for w in rows.windows(2) {
            assert!((w[0].host, w[0].time) <= (w[1].host, w[1].time));
        }
        assert!(rows.iter().all(|r| r.time.div_euclid(HOUR) == f.hour));
        assert_eq!(rows.iter().map(|r| r.time).min(), Some(f.min_time));
        from_files.extend(rows);
    }
    assert_eq!(sorted_by_id(from_files), written);
    // The flushed WAL segments are gone; a restart replays nothing.
    block_on(DriverChoice::Auto, async {
        let (shard, rec) = open_shard(&dirs, &p, 0).await;
        assert_eq!(rec.replayed_entries, 0);
        assert_eq!(rec.flushed_seq, WalSeq(12));
        assert_eq!(shard.wal().segments().len(), 1);
        // Numbering continues after the watermark.
        let seq = shard
            .write(cpu_batch(&cpu_rows(5000, 1, base)))
            .await
            .unwrap();
        assert_eq!(seq, WalSeq(13));
        shard.close().await;
    })
    .unwrap();
}

#[test]
fn restart_replays_unflushed_writes_after_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path());
    let base = 1_700_000_000_000_000_000i64;
    let p = parts(&dirs);
    block_on(DriverChoice::Auto, async {
        let (shard, _) = open_shard(&dirs, &p, 0).await;
        shard
            .write(cpu_batch(&cpu_rows(0, 100, base)))
            .await
            .unwrap();
        shard.flush().await.unwrap().unwrap();
        shard
            .write(cpu_batch(&cpu_rows(100, 100, base)))
            .await
            .unwrap();
        shard
            .write(cpu_batch(&cpu_rows(200, 100, base)))
            .await
            .unwrap();
        shard.close().await;
    })
    .unwrap();
    drop(p);
    let p = parts(&dirs);
    block_on(DriverChoice::Auto, async {
        let (shard, rec) = open_shard(&dirs, &p, 0).await;
        assert_eq!(rec.flushed_seq, WalSeq(1));
        assert_eq!(rec.replayed_entries, 2);
        assert_eq!(rec.replayed_rows, 200);
        assert_eq!(sorted_by_id(all_rows(&p, &shard)), cpu_rows(0, 300, base));
        shard.close().await;
    })
    .unwrap();
}

/// A WAL written by an earlier version (write entries in the Arrow IPC
/// encoding) is replayed, and the entries written after it, in the current
/// encoding, are replayed with it at the next start.
#[test]
fn a_wal_of_arrow_ipc_entries_is_replayed() {
    use tidemark_shards::wal::payload::encode_writes_ipc;
    use tidemark_shards::wal::{EntryKind, Wal};
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path());
    let base = 1_700_000_000_000_000_000i64;
    block_on(DriverChoice::Auto, async {
        let (wal, _) = Wal::open(shard_config(&dirs, 0).wal, WalSeq(1))
            .await
            .unwrap();
        for first in [0, 100] {
            let batch = cpu_batch(&cpu_rows(first, 100, base));
            wal.append_with(
                EntryKind::WriteIpc,
                |out| encode_writes_ipc(out, std::slice::from_ref(&batch)),
                |_| {},
            )
            .await
            .unwrap();
        }
        wal.close().await;
    })
    .unwrap();
    for (round, replayed) in [(0, 2), (1, 3)] {
        let p = parts(&dirs);
        block_on(DriverChoice::Auto, async {
            let (shard, rec) = open_shard(&dirs, &p, 0).await;
            assert_eq!(rec.replayed_entries, replayed);
            assert_eq!(rec.replayed_rows, 100 * replayed);
            if round == 0 {
                shard
                    .write(cpu_batch(&cpu_rows(200, 100, base)))
                    .await
                    .unwrap();
            }
            assert_eq!(sorted_by_id(all_rows(&p, &shard)), cpu_rows(0, 300, base));
            shard.close().await;
        })
        .unwrap();
    }
}

#[test]
fn a_type_conflict_is_refused_and_changes_nothing() {
    use arrow_array::{Float64Array, Int64Array, RecordBatch, TimestampNanosecondArray};
    use std::sync::Arc;
    use tidemark_shards::{ColumnKind, FieldType, TableKey, WriteBatch};

    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path());
    let p = parts(&dirs);
    block_on(DriverChoice::Auto, async {
        let (shard, _) = open_shard(&dirs, &p, 0).await;
        shard.write(cpu_batch(&cpu_rows(0, 10, 0))).await.unwrap();
        let next = shard.wal().next_seq();
        // `usage` arrives as an integer.
        let schema = arrow_schema::Schema::new(vec![
            ColumnKind::Time.field("time"),
            ColumnKind::Field(FieldType::Integer).field("usage"),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(TimestampNanosecondArray::from(vec![1]).with_timezone("UTC")),
                Arc::new(Int64Array::from(vec![1])),
            ],
        )
        .unwrap();
        let wb = WriteBatch::try_new(TableKey::new("db", "cpu").unwrap(), batch).unwrap();
        let err = shard.write(wb).await.unwrap_err();
        match &err {
            ShardError::Schema(SchemaError::TypeConflict { column, .. }) => {
                assert_eq!(column, "usage")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "column \"usage\" is of type float, but was given integer"
        );
        assert_eq!(shard.wal().next_seq(), next, "nothing was logged");
        assert_eq!(shard.snapshot().num_rows(), 10);
        // A new column is fine, and older rows read it as null.
        let schema = arrow_schema::Schema::new(vec![
            ColumnKind::Time.field("time"),
            ColumnKind::Field(FieldType::Float).field("temp"),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(TimestampNanosecondArray::from(vec![2]).with_timezone("UTC")),
                Arc::new(Float64Array::from(vec![20.5])),
            ],
        )
        .unwrap();
        let wb = WriteBatch::try_new(TableKey::new("db", "cpu").unwrap(), batch).unwrap();
        shard.write(wb).await.unwrap();
        let snap = shard.snapshot();
        let t = &snap.tables[&TableKey::new("db", "cpu").unwrap()];
        assert_eq!(t.schema.len(), 5);
        let all = arrow_select::concat::concat_batches(t.schema.arrow(), &t.live).unwrap();
        assert_eq!(all.num_rows(), 11);
        assert_eq!(all.column_by_name("temp").unwrap().null_count(), 10);
        shard.close().await;
    })
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Writes of any sizes, flushes at any points and restarts give back
    /// exactly the written rows, once each.
    #[test]
    fn writes_flushes_and_restarts_keep_every_row_once(
        ops in proptest::collection::vec((1usize..300, any::<bool>(), proptest::bool::weighted(0.15)), 1..25),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(dir.path());
        let base = 1_700_000_000_000_000_000i64;
        let mut next_id = 0i64;
        let mut p = parts(&dirs);
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            // One process lifetime: ops until a restart.
            let mut expected_ids = BTreeMap::new();
            block_on(DriverChoice::Auto, async {
                let (shard, _) = open_shard(&dirs, &p, 0).await;
                for (n, flush, restart) in ops.by_ref() {
                    let rows = cpu_rows(next_id, n, base);
                    next_id += n as i64;
                    shard.write(cpu_batch(&rows)).await.unwrap();
                    if flush {
                        shard.flush().await.unwrap();
                    }
                    if restart {
                        break;
                    }
                }
                for r in all_rows(&p, &shard) {
                    *expected_ids.entry(r.id).or_insert(0) += 1;
                }
                shard.close().await;
            }).unwrap();
            prop_assert_eq!(expected_ids.len() as i64, next_id);
            prop_assert!(expected_ids.values().all(|&c| c == 1));
            p = parts(&dirs);
        }
        let rows = block_on(DriverChoice::Auto, async {
            let (shard, _) = open_shard(&dirs, &p, 0).await;
            let rows = sorted_by_id(all_rows(&p, &shard));
            shard.close().await;
            rows
        }).unwrap();
        prop_assert_eq!(rows, cpu_rows(0, next_id as usize, base));
    }
}
