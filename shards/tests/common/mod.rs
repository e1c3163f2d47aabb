#![allow(clippy::unwrap_used)]
//! Helpers shared by the integration tests: a node-like set of shard parts
//! in a temporary directory, and a generator of cpu rows.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::StringDictionaryBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampNanosecondType};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampNanosecondArray};
use arrow_schema::Schema;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tidemark_shards::flush::{FileStore, FlushPool};
use tidemark_shards::manifest::Manifest;
use tidemark_shards::shard::{Shard, ShardConfig, ShardRecovery};
use tidemark_shards::wal::{SyncMode, WalConfig};
use tidemark_shards::{Catalog, ColumnKind, FieldType, ShardId, TableKey, WriteBatch};

pub const HOUR: i64 = 3_600_000_000_000;

/// The directories of a one-node data dir.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub root: PathBuf,
}

impl Dirs {
    pub fn new(root: &Path) -> Dirs {
        Dirs {
            root: root.to_path_buf(),
        }
    }
    pub fn wal(&self, shard: u32) -> PathBuf {
        self.root.join("wal").join(format!("shard-{shard:03}"))
    }
    pub fn parquet(&self) -> PathBuf {
        self.root.join("parquet")
    }
    pub fn manifest(&self) -> PathBuf {
        self.root.join("manifest")
    }
}

pub struct Parts {
    pub store: Arc<FileStore>,
    pub manifest: Arc<Manifest>,
    pub pool: FlushPool,
    pub catalog: Arc<Catalog>,
}

pub fn parts(dirs: &Dirs) -> Parts {
    let store = Arc::new(FileStore::local(&dirs.parquet()).unwrap());
    let manifest = Arc::new(Manifest::open(&dirs.manifest()).unwrap());
    store.remove_orphans(&manifest).unwrap();
    let (pool, _) = FlushPool::start(1, 4, store.clone(), manifest.clone());
    Parts {
        store,
        manifest,
        pool,
        catalog: Catalog::new(),
    }
}

pub fn shard_config(dirs: &Dirs, shard: u32) -> ShardConfig {
    let mut wal = WalConfig::new(dirs.wal(shard), ShardId(shard));
    wal.segment_size = 256 << 10;
    wal.sync_mode = SyncMode::Fdatasync;
    ShardConfig::new(wal)
}

pub async fn open_shard(dirs: &Dirs, p: &Parts, shard: u32) -> (Shard, ShardRecovery) {
    Shard::open(
        shard_config(dirs, shard),
        p.catalog.clone(),
        p.pool.clone(),
        p.manifest.clone(),
    )
    .await
    .unwrap()
}

/// One row of `db.cpu`: `id` is unique across a test, so counting ids finds
/// lost and doubled rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuRow {
    pub time: i64,
    pub host: u32,
    pub id: i64,
    pub usage: f64,
}

pub fn cpu_rows(first_id: i64, n: usize, base_time: i64) -> Vec<CpuRow> {
    (0..n as i64)
        .map(|i| {
            let id = first_id + i;
            CpuRow {
                // Scattered over three hours, one time per id (3,700,000,001
                // is coprime with 3 h in ns): no two ids are the same point.
                time: base_time
                    + (i128::from(id) * 3_700_000_001).rem_euclid(i128::from(3 * HOUR)) as i64,
                host: (id % 7) as u32,
                id,
                usage: id as f64 * 0.5,
            }
        })
        .collect()
}

pub fn cpu_batch(rows: &[CpuRow]) -> WriteBatch {
    let mut host = StringDictionaryBuilder::<Int32Type>::new();
    for r in rows {
        host.append_value(format!("host-{}", r.host));
    }
    let columns: Vec<(&str, ColumnKind, ArrayRef)> = vec![
        (
            "time",
            ColumnKind::Time,
            Arc::new(
                TimestampNanosecondArray::from(rows.iter().map(|r| r.time).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
        ),
        ("host", ColumnKind::Tag, Arc::new(host.finish())),
        (
            "id",
            ColumnKind::Field(FieldType::Integer),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.id).collect::<Vec<_>>(),
            )),
        ),
        (
            "usage",
            ColumnKind::Field(FieldType::Float),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.usage).collect::<Vec<_>>(),
            )),
        ),
    ];
    let schema = Schema::new(
        columns
            .iter()
            .map(|(n, k, _)| k.field(n))
            .collect::<Vec<_>>(),
    );
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        columns.into_iter().map(|(_, _, a)| a).collect(),
    )
    .unwrap();
    WriteBatch::try_new(TableKey::new("db", "cpu").unwrap(), batch).unwrap()
}

/// The (id, time, host, usage) of every row in `batches` of `db.cpu`.
pub fn rows_of(batches: &[RecordBatch]) -> Vec<CpuRow> {
    let mut out = Vec::new();
    for b in batches {
        let time = b
            .column_by_name("time")
            .unwrap()
            .as_primitive::<TimestampNanosecondType>();
        let id = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        let usage = b
            .column_by_name("usage")
            .unwrap()
            .as_primitive::<arrow_array::types::Float64Type>();
        let host = b
            .column_by_name("host")
            .unwrap()
            .as_dictionary::<Int32Type>();
        let host_values = host.values().as_string::<i32>();
        for i in 0..b.num_rows() {
            let h = host_values.value(host.keys().value(i) as usize);
            out.push(CpuRow {
                time: time.value(i),
                host: h.trim_start_matches("host-").parse().unwrap(),
                id: id.value(i),
                usage: usage.value(i),
            });
        }
    }
    out
}

/// Reads a Parquet file's batches.
pub fn read_parquet(bytes: Bytes) -> (Vec<RecordBatch>, parquet::file::metadata::ParquetMetaData) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    let meta = builder.metadata().as_ref().clone();
    let batches = builder
        .build()
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (batches, meta)
}

/// Every row of `db.cpu` in the manifest's files plus the shard's buffer
/// (flushing rows excluded once the manifest has them).
pub fn all_rows(p: &Parts, shard: &Shard) -> Vec<CpuRow> {
    let mut rows = Vec::new();
    for f in p.manifest.files() {
        let (batches, _) = read_parquet(p.store.get(&f.path).unwrap());
        rows.extend(rows_of(&batches));
    }
    let snap = shard.snapshot();
    let flushed = p.manifest.flushed_seq(shard.id());
    if let Some(t) = snap.tables.get(&TableKey::new("db", "cpu").unwrap()) {
        rows.extend(rows_of(&t.live));
        if t.flushing_upto.is_some_and(|u| u > flushed) {
            rows.extend(rows_of(&t.flushing));
        }
    }
    rows
}
