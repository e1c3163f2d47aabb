//! Turning frozen buffers into Parquet files, on flush worker threads.
//!
//! A flush job carries one shard's [`FlushingSet`]. A worker writes, per
//! table and per hour of data, one Parquet file at
//! `<db>/<measurement>/<YYYY>/<MM>/<DD>/<HH>/<shard>-<upto>.parquet`: rows
//! sorted by the tag columns (by name) then time, compressed with the flush
//! codec ([`FlushCodec`], LZ4_RAW by default), dictionary encoding
//! for tag columns only, page statistics, the
//! tag column names in the key-value metadata (`tidemark.tags`, a JSON
//! array), and the SHA-256 of the bytes recorded. Files go through
//! `object_store`; on a local directory each file and its directories are
//! fsynced before the [`Manifest`] records the flush (see its docs for the
//! crash-safety argument).
//!
//! Workers are plain threads fed by a bounded channel: Parquet encoding never
//! runs on a shard core, and a full channel slows the submitting shard.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampNanosecondType;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::ArrowError;
use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};

use crate::buffer::{FlushingSet, FrozenTable};
use crate::dedup::{merge_sorted, series_keys, sort_rows};
use crate::failpoint::crash_point;
use crate::ids::{ShardId, WalSeq};
use crate::manifest::{FileMeta, Manifest, ManifestError};
use crate::schema::{ColumnKind, TableKey, TIME_COLUMN};

/// Nanoseconds in an hour: files are split at hour boundaries.
pub const HOUR_NS: i64 = 3_600_000_000_000;
/// Key-value metadata key listing a file's tag columns (JSON array).
pub const TAGS_METADATA_KEY: &str = "tidemark.tags";

/// Errors of a flush.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("flush encode {table}: {source}")]
    Arrow { table: String, source: ArrowError },
    #[error("flush parquet {table}: {source}")]
    Parquet {
        table: String,
        source: parquet::errors::ParquetError,
    },
    #[error("flush store {path}: {message}")]
    Store { path: String, message: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("flush workers have stopped")]
    Stopped,
}

/// Where Parquet files live: an `object_store`, plus the local root when it
/// is a local directory (for fsync and orphan removal).
#[derive(Debug)]
pub struct FileStore {
    store: Arc<dyn ObjectStore>,
    local_root: Option<PathBuf>,
    /// Local directories whose entry in their parent this process made
    /// durable (synced the parent after they existed): see [`write_local`].
    durable_dirs: Mutex<HashSet<PathBuf>>,
}

impl FileStore {
    /// A store in the local directory `root` (created if missing).
    pub fn local(root: &Path) -> Result<FileStore, FlushError> {
        std::fs::create_dir_all(root).map_err(|e| FlushError::Store {
            path: root.display().to_string(),
            message: e.to_string(),
        })?;
        let store = LocalFileSystem::new_with_prefix(root).map_err(|e| FlushError::Store {
            path: root.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(FileStore {
            store: Arc::new(store),
            local_root: Some(root.to_path_buf()),
            durable_dirs: Mutex::default(),
        })
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    /// Writes `bytes` at `path` and, on a local directory, makes the file and
    /// every directory from it up to the root durable.
    pub fn put(&self, path: &str, bytes: Bytes) -> Result<(), FlushError> {
        let store_err = |message: String| FlushError::Store {
            path: path.to_string(),
            message,
        };
        if let Some(root) = &self.local_root {
            return write_local(root, path, &bytes, &self.durable_dirs)
                .map_err(|e| store_err(e.to_string()));
        }
        let location = ObjectPath::parse(path).map_err(|e| store_err(e.to_string()))?;
        futures::executor::block_on(self.store.put(&location, PutPayload::from(bytes)))
            .map_err(|e| store_err(e.to_string()))?;
        Ok(())
    }

    /// Reads the whole object at `path`.
    pub fn get(&self, path: &str) -> Result<Bytes, FlushError> {
        let store_err = |message: String| FlushError::Store {
            path: path.to_string(),
            message,
        };
        let location = ObjectPath::parse(path).map_err(|e| store_err(e.to_string()))?;
        futures::executor::block_on(async { self.store.get(&location).await?.bytes().await })
            .map_err(|e| store_err(e.to_string()))
    }

    /// Deletes one file.
    pub fn delete(&self, path: &str) -> Result<(), FlushError> {
        let store_err = |message: String| FlushError::Store {
            path: path.to_string(),
            message,
        };
        let location = ObjectPath::parse(path).map_err(|e| store_err(e.to_string()))?;
        futures::executor::block_on(self.store.delete(&location))
            .map_err(|e| store_err(e.to_string()))
    }

    /// Deletes every file under a local root that the manifest does not know:
    /// files of flushes that crashed before their commit, and half-written
    /// uploads. Returns the paths removed.
    pub fn remove_orphans(&self, manifest: &Manifest) -> Result<Vec<String>, FlushError> {
        let Some(root) = &self.local_root else {
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| FlushError::Store {
                path: dir.display().to_string(),
                message: e.to_string(),
            })?;
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p
                    .strip_prefix(root)
                    .ok()
                    .and_then(|r| r.to_str())
                    .map(|s| s.replace(std::path::MAIN_SEPARATOR, "/"));
                if let Some(rel) = rel {
                    if !manifest.contains(&rel) {
                        tracing::warn!(path = %rel, "removing file not in the manifest");
                        std::fs::remove_file(&p).map_err(|e| FlushError::Store {
                            path: rel.clone(),
                            message: e.to_string(),
                        })?;
                        removed.push(rel);
                    }
                }
            }
        }
        Ok(removed)
    }
}

/// Bytes of a Parquet file written between two pushes to the disk.
const WRITEBACK_CHUNK: usize = 1 << 20;

/// Writes `bytes` to `root/path` durably: into a temporary file next to it
/// (removed as an orphan if a crash leaves it), pushed to the disk a chunk
/// at a time as it is written, synced, renamed into place, its directory
/// synced (the rename), and above it each directory not yet in `durable`
/// (a directory's entry is durable once its parent was synced after it
/// existed; `durable` holds those this process made so).
///
/// Why not every directory up to `root` every time: each directory `fsync`
/// is a journal commit with a device cache flush even when nothing in it
/// changed, and a file's path has seven (`db/measurement/YYYY/MM/DD/HH`);
/// the shard cores' WAL `fdatasync`s queued behind them (the tail of
/// half-rate writes, perf/results/2026-12-06-4b01cd5-dirsync-ab.md).
///
/// Why by chunks: the shard cores' WAL `fdatasync`s share the file
/// system's journal with this file. Written whole and then synced, a file
/// of tens of MB was flushed in one go, and every WAL sync committing
/// meanwhile waited for it (WAL syncs averaged 2.9 ms with flushes running
/// against 0.5 ms without, perf/results). Started chunk by chunk, at most
/// about two chunks are in flight when the final sync comes.
fn write_local(
    root: &Path,
    path: &str,
    bytes: &[u8],
    durable: &Mutex<HashSet<PathBuf>>,
) -> std::io::Result<()> {
    use std::io::Write;
    let file = root.join(path);
    let dir = file.parent().unwrap_or(root);
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = file.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let mut offset = 0u64;
    for chunk in bytes.chunks(WRITEBACK_CHUNK) {
        f.write_all(chunk)?;
        // Start this chunk's writeback, and wait for the previous one's:
        // the file never has more than two chunks dirty.
        sync_file_range(&f, offset, chunk.len() as u64, libc::SYNC_FILE_RANGE_WRITE)?;
        if offset > 0 {
            let previous = offset.saturating_sub(WRITEBACK_CHUNK as u64);
            sync_file_range(
                &f,
                previous,
                offset - previous,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )?;
        }
        offset += chunk.len() as u64;
    }
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &file)?;
    std::fs::File::open(dir)?.sync_all()?;
    let known = |p: &Path| durable.lock().expect("durable dirs lock").contains(p);
    let mut child = dir;
    while child != root && !known(child) {
        let Some(parent) = child.parent() else { break };
        std::fs::File::open(parent)?.sync_all()?;
        durable
            .lock()
            .expect("durable dirs lock")
            .insert(child.to_path_buf());
        child = parent;
    }
    Ok(())
}

/// Sets the calling thread's nice value (on Linux a per-thread attribute).
pub fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: plain integer arguments; gettid names this thread.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `sync_file_range(2)` on `f`: starts (and with the wait flags, waits for)
/// the writeback of `len` bytes at `offset`. Metadata is not synced.
fn sync_file_range(f: &std::fs::File, offset: u64, len: u64, flags: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain integer arguments; the descriptor is `f`'s, open for
    // the whole call.
    let r = unsafe { libc::sync_file_range(f.as_raw_fd(), offset as i64, len as i64, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The object path of the file of `table`, hour `hour`, written by the flush
/// of `shard` up to `upto`.
pub fn file_path(table: &TableKey, hour: i64, shard: ShardId, upto: WalSeq) -> String {
    format!(
        "{}/{:03}-{:020}.parquet",
        partition_dir(table, hour),
        shard.0,
        upto.0
    )
}

/// The directory of `table`'s files of hour `hour`:
/// `<db>/<measurement>/<YYYY>/<MM>/<DD>/<HH>`.
pub fn partition_dir(table: &TableKey, hour: i64) -> String {
    let t = chrono::DateTime::from_timestamp(hour * 3600, 0).unwrap_or_default();
    format!(
        "{}/{}/{}",
        table.database(),
        table.measurement(),
        t.format("%Y/%m/%d/%H")
    )
}

/// One encoded Parquet file, ready to store.
#[derive(Debug)]
pub struct EncodedFile {
    pub meta: FileMeta,
    pub bytes: Bytes,
}

/// How [`encode_rows`] writes files.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// The files' codec.
    pub compression: Compression,
    /// Split an hour's rows into files of about this many bytes (estimated
    /// from `bytes_per_row`); `None` writes one file per hour.
    pub target_file_bytes: Option<u64>,
    /// Bytes per row of the data as Parquet, for the split.
    pub bytes_per_row: f64,
    /// Names the file of `hour`, number `n` within the hour.
    pub name: fn(&TableKey, i64, ShardId, WalSeq, u64, usize) -> String,
    /// Passed to `name` (a compaction's generation; 0 for a flush).
    pub generation: u64,
    /// Rows of hours before this one are dropped (retention).
    pub first_kept_hour: Option<i64>,
}

/// What [`encode_rows`] made.
#[derive(Debug)]
pub struct Encoded {
    pub files: Vec<EncodedFile>,
    /// Rows merged into another row of the same point.
    pub merged: u64,
    /// Rows dropped because their hour is past the retention.
    pub expired: u64,
}

impl EncodeOptions {
    /// A flush's files: one per hour, in `codec`.
    pub fn flush(codec: FlushCodec) -> EncodeOptions {
        EncodeOptions {
            compression: codec.parquet(),
            target_file_bytes: None,
            bytes_per_row: 0.0,
            name: |table, hour, shard, upto, _, _| file_path(table, hour, shard, upto),
            generation: 0,
            first_kept_hour: None,
        }
    }
}

/// Encodes the rows of one table as one Parquet file per hour of data.
pub fn encode_table(
    table: &TableKey,
    frozen: &FrozenTable,
    shard: ShardId,
    upto: WalSeq,
) -> Result<Vec<EncodedFile>, FlushError> {
    Ok(encode_rows(
        table,
        &frozen.schema,
        &frozen.batches,
        shard,
        upto,
        &EncodeOptions::flush(FlushCodec::default()),
    )?
    .files)
}

/// Encodes `batches` (rows of one table, in write order) as Parquet files
/// per hour of data: sorted by (tags, time), repeated points merged
/// ([`crate::dedup`]), hours before `options.first_kept_hour` dropped.
pub fn encode_rows(
    table: &TableKey,
    table_schema: &crate::schema::TableSchema,
    batches: &[RecordBatch],
    shard: ShardId,
    upto: WalSeq,
    options: &EncodeOptions,
) -> Result<Encoded, FlushError> {
    let arrow_err = |source| FlushError::Arrow {
        table: table.to_string(),
        source,
    };
    let schema = table_schema.arrow();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows == 0 {
        return Ok(Encoded {
            files: Vec::new(),
            merged: 0,
            expired: 0,
        });
    }
    if let Some(b) = batches.iter().find(|b| b.schema_ref() != schema) {
        return Err(arrow_err(ArrowError::SchemaError(format!(
            "a frozen batch's schema {} is not the table's {schema}",
            b.schema_ref()
        ))));
    }
    let time_idx = schema.index_of(TIME_COLUMN).map_err(arrow_err)?;
    // The rows stay in their frozen batches (parts): keys, the order and
    // the merge read them there, and the sorted rows are gathered from
    // them into the output, with no concatenated copy of the whole table.
    let mut time_values = Vec::with_capacity(rows);
    for b in batches {
        let times = b.column(time_idx).as_primitive::<TimestampNanosecondType>();
        time_values.extend_from_slice(times.values());
    }
    let hour_values: Vec<i64> = time_values.iter().map(|t| t.div_euclid(HOUR_NS)).collect();
    let tags = table_schema.tag_names();
    // Sort by (hour, tags by name, time), then cut at hours. The tags are
    // not compared per row: each row gets one integer key whose order is
    // the order of its tag values (see `series_keys`), and rows are sorted
    // by (hour, key, time). The same order as comparing the row-format
    // tags of every row, at a fraction of the cost (the row conversion and
    // its interning were 9% of a flushing node's CPU in flamegraphs/).
    let mut tag_columns = Vec::with_capacity(tags.len());
    for tag in &tags {
        let idx = schema.index_of(tag).map_err(arrow_err)?;
        tag_columns.push(batches.iter().map(|b| b.column(idx).clone()).collect());
    }
    let series_of_row = series_keys(&tag_columns, rows, 128);
    let sorted = sort_rows(&hour_values, &series_of_row, &time_values);
    drop((series_of_row, hour_values, time_values));
    let fields: Vec<usize> = table_schema
        .columns()
        .enumerate()
        .filter(|(_, (_, k))| matches!(k, ColumnKind::Field(_)))
        .map(|(i, _)| i)
        .collect();
    let (sorted, merged) = merge_sorted(batches, &sorted, &fields).map_err(arrow_err)?;
    let sorted_hours: Vec<i64> = sorted
        .column(time_idx)
        .as_primitive::<TimestampNanosecondType>()
        .values()
        .iter()
        .map(|t| t.div_euclid(HOUR_NS))
        .collect();

    let sorting: Vec<SortingColumn> = tags
        .iter()
        .map(|t| schema.index_of(t).expect("tag in schema"))
        .chain([time_idx])
        .map(|i| SortingColumn {
            column_idx: i as i32,
            descending: false,
            nulls_first: true,
        })
        .collect();
    // Dictionary encoding only for tags: fields and time are mostly
    // distinct, so their dictionaries only cost hashing every value before
    // falling back to plain (14-20% of a flush in flamegraphs/).
    let mut props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_compression(options.compression)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(sorting))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(
                TAGS_METADATA_KEY.to_string(),
                serde_json::to_string(&tags).expect("strings serialize"),
            ),
            KeyValue::new("tidemark.shard".to_string(), shard.0.to_string()),
            KeyValue::new("tidemark.upto_seq".to_string(), upto.0.to_string()),
        ]));
    for tag in &tags {
        props = props.set_column_dictionary_enabled(ColumnPath::from(tag.as_str()), true);
    }
    let props = props.build();
    let columns_meta: Vec<(String, ColumnKind)> = table_schema
        .columns()
        .map(|(n, k)| (n.to_string(), k))
        .collect();

    let mut files = Vec::new();
    let mut expired = 0u64;
    let mut start = 0;
    while start < sorted_hours.len() {
        let hour = sorted_hours[start];
        let end = start + sorted_hours[start..].partition_point(|&h| h == hour);
        let rows = end - start;
        if options.first_kept_hour.is_some_and(|first| hour < first) {
            expired += rows as u64;
            start = end;
            continue;
        }
        let pieces = match options.target_file_bytes {
            Some(target) if target > 0 => {
                let bytes = rows as f64 * options.bytes_per_row;
                ((bytes / target as f64).ceil() as usize).clamp(1, rows)
            }
            _ => 1,
        };
        for n in 0..pieces {
            let lo = start + rows * n / pieces;
            let hi = start + rows * (n + 1) / pieces;
            let part: RecordBatch = sorted.slice(lo, hi - lo);
            let path = (options.name)(table, hour, shard, upto, options.generation, n);
            files.push(encode_file(
                table,
                &part,
                path,
                hour,
                shard,
                upto,
                &props,
                &tags,
                &columns_meta,
            )?);
        }
        start = end;
    }
    Ok(Encoded {
        files,
        merged,
        expired,
    })
}

/// Writes `part` (rows of one hour, sorted) as one Parquet file.
#[allow(clippy::too_many_arguments)]
fn encode_file(
    table: &TableKey,
    part: &RecordBatch,
    path: String,
    hour: i64,
    shard: ShardId,
    upto: WalSeq,
    props: &WriterProperties,
    tags: &[String],
    columns_meta: &[(String, ColumnKind)],
) -> Result<EncodedFile, FlushError> {
    let schema = part.schema();
    let time_idx = schema
        .index_of(TIME_COLUMN)
        .map_err(|source| FlushError::Arrow {
            table: table.to_string(),
            source,
        })?;
    let part_times = part
        .column(time_idx)
        .as_primitive::<TimestampNanosecondType>();
    let (min_time, max_time) = part_times
        .values()
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    let parquet_err = |source| FlushError::Parquet {
        table: table.to_string(),
        source,
    };
    let mut buf = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut buf, schema.clone(), Some(props.clone())).map_err(parquet_err)?;
    writer.write(part).map_err(parquet_err)?;
    writer.close().map_err(parquet_err)?;
    let sha256 = hex::encode(Sha256::digest(&buf));
    let tag_distinct = tags
        .iter()
        .filter_map(|tag| {
            let idx = schema.index_of(tag).ok()?;
            let n = distinct_dictionary_values(part.column(idx))?;
            Some((tag.to_string(), n))
        })
        .collect();
    Ok(EncodedFile {
        meta: FileMeta {
            path,
            database: table.database().to_string(),
            measurement: table.measurement().to_string(),
            shard,
            upto,
            hour,
            rows: part.num_rows() as u64,
            size: buf.len() as u64,
            sha256,
            min_time,
            max_time,
            columns: columns_meta.to_vec(),
            tag_distinct,
        },
        bytes: Bytes::from(buf),
    })
}

/// An upper bound of the distinct non-null values of a dictionary column:
/// its distinct dictionary values. A slice shares its parent's dictionary,
/// which may hold values no row of the slice uses, so this can exceed the
/// true count, never fall below it. Costs the dictionary's size, not the
/// rows'. `None` for a column that is not a dictionary of strings.
fn distinct_dictionary_values(column: &ArrayRef) -> Option<u64> {
    let dict = column.as_any_dictionary_opt()?;
    let values = dict.values();
    let mut seen = HashSet::new();
    if let Some(v) = values.as_string_opt::<i32>() {
        seen.extend(v.iter().flatten());
    } else if let Some(v) = values.as_string_opt::<i64>() {
        seen.extend(v.iter().flatten());
    } else {
        return None;
    }
    Some(seen.len() as u64)
}

/// The codec of flush files (`flush.compression`). Flush files are
/// written for speed: compaction rewrites them with zstd into large files
/// (`compaction.zstd_level`), so the codec only sets how much disk the
/// newest, not yet compacted, hours take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlushCodec {
    /// LZ4 (the raw block format Parquet names LZ4_RAW): fast both ways.
    #[default]
    Lz4Raw,
    Snappy,
    /// zstd level 3: a third smaller files, 1.2-1.4x the flush's time
    /// (`benches/README.md`, parquet_flush per codec).
    Zstd,
    None,
}

impl FlushCodec {
    pub fn parquet(self) -> Compression {
        match self {
            FlushCodec::Lz4Raw => Compression::LZ4_RAW,
            FlushCodec::Snappy => Compression::SNAPPY,
            FlushCodec::Zstd => {
                Compression::ZSTD(ZstdLevel::try_new(3).expect("3 is a zstd level"))
            }
            FlushCodec::None => Compression::UNCOMPRESSED,
        }
    }
}

/// How flush workers run.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolOptions {
    /// Nice value of the worker threads (0 to 19).
    pub nice: i32,
    pub codec: FlushCodec,
}

/// Writes every file of `set` and commits them to the manifest.
pub fn run_flush(
    store: &FileStore,
    manifest: &Manifest,
    shard: ShardId,
    set: &FlushingSet,
    codec: FlushCodec,
) -> Result<Vec<FileMeta>, FlushError> {
    let mut metas = Vec::new();
    let mut seen = BTreeSet::new();
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    for (table, frozen) in &set.tables {
        let options = EncodeOptions {
            first_kept_hour: crate::compact::first_kept_hour(
                manifest.keep_for(table.database()),
                now_ns,
            ),
            ..EncodeOptions::flush(codec)
        };
        let encoded = encode_rows(
            table,
            &frozen.schema,
            &frozen.batches,
            shard,
            set.upto,
            &options,
        )?;
        manifest.stats.add(encoded.merged, encoded.expired);
        for file in encoded.files {
            debug_assert!(seen.insert(file.meta.path.clone()), "file paths are unique");
            crash_point("flush.before_put");
            store.put(&file.meta.path, file.bytes)?;
            metas.push(file.meta);
        }
    }
    crash_point("flush.before_manifest");
    manifest.commit_flush(shard, set.upto, metas.clone())?;
    crash_point("flush.after_manifest");
    Ok(metas)
}

struct Task {
    shard: ShardId,
    set: FlushingSet,
    reply: futures::channel::oneshot::Sender<Result<Vec<FileMeta>, FlushError>>,
}

/// The sending side of the flush workers. Cheap to clone; `Send`.
#[derive(Clone)]
pub struct FlushPool {
    tx: crossbeam_channel::Sender<Task>,
}

impl std::fmt::Debug for FlushPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushPool").finish_non_exhaustive()
    }
}

impl FlushPool {
    /// Starts `workers` flush threads with a queue of `capacity` jobs. The
    /// threads end once every `FlushPool` clone is dropped.
    pub fn start(
        workers: usize,
        capacity: usize,
        store: Arc<FileStore>,
        manifest: Arc<Manifest>,
    ) -> (FlushPool, Vec<JoinHandle<()>>) {
        FlushPool::start_with(workers, capacity, store, manifest, PoolOptions::default())
    }

    /// [`FlushPool::start`], with every worker thread at nice value
    /// `options.nice` (0 to 19: a worker sharing a CPU with a shard core
    /// then yields to it; see `flush.nice` in tuning.md) writing files in
    /// `options.codec`.
    pub fn start_with(
        workers: usize,
        capacity: usize,
        store: Arc<FileStore>,
        manifest: Arc<Manifest>,
        options: PoolOptions,
    ) -> (FlushPool, Vec<JoinHandle<()>>) {
        let PoolOptions { nice, codec } = options;
        let (tx, rx) = crossbeam_channel::bounded::<Task>(capacity.max(1));
        let handles = (0..workers.max(1))
            .map(|i| {
                let rx = rx.clone();
                let store = store.clone();
                let manifest = manifest.clone();
                std::thread::Builder::new()
                    .name(format!("tidemark-flush-{i}"))
                    .spawn(move || {
                        if nice != 0 {
                            if let Err(e) = set_thread_nice(nice) {
                                tracing::warn!(nice, error = %e, "cannot renice the flush worker");
                            }
                        }
                        for task in rx {
                            let res = run_flush(&store, &manifest, task.shard, &task.set, codec);
                            if let Err(e) = &res {
                                tracing::error!(shard = %task.shard, upto = %task.set.upto, error = %e, "flush failed");
                            }
                            let _ = task.reply.send(res);
                        }
                    })
                    .expect("spawn flush worker")
            })
            .collect();
        (FlushPool { tx }, handles)
    }

    /// Hands `set` to a worker and waits for its files to be in the
    /// manifest. While the queue is full the caller waits (polling every
    /// millisecond on its own runtime), so a busy pool slows shards down.
    pub async fn flush(
        &self,
        shard: ShardId,
        set: FlushingSet,
    ) -> Result<Vec<FileMeta>, FlushError> {
        let (reply, rx) = futures::channel::oneshot::channel();
        let mut task = Task { shard, set, reply };
        loop {
            match self.tx.try_send(task) {
                Ok(()) => break,
                Err(crossbeam_channel::TrySendError::Full(t)) => {
                    task = t;
                    monoio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                    return Err(FlushError::Stopped)
                }
            }
        }
        rx.await.map_err(|_| FlushError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::tests::xorshift;
    use crate::schema::{tag_data_type, time_data_type, TableSchema};
    use arrow_array::types::Int32Type;
    use arrow_array::{DictionaryArray, Float64Array, TimestampNanosecondArray};
    use arrow_schema::DataType;
    use arrow_schema::{Field, Schema};

    fn batch(schema: &TableSchema, rows: &[(i64, &str, Option<&str>)]) -> RecordBatch {
        let time = TimestampNanosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())
            .with_timezone("UTC");
        let host: DictionaryArray<Int32Type> = rows.iter().map(|r| Some(r.1)).collect();
        let region: DictionaryArray<Int32Type> = rows.iter().map(|r| r.2).collect();
        let v = Float64Array::from(vec![1.0; rows.len()]);
        RecordBatch::try_new(
            schema.arrow().clone(),
            vec![
                Arc::new(time),
                Arc::new(host),
                Arc::new(region),
                Arc::new(v),
            ],
        )
        .unwrap()
    }

    /// time, tags `host` and `region`, field `v`: what `batch` builds.
    fn host_region_schema() -> TableSchema {
        TableSchema::try_from_arrow(&Schema::new(vec![
            Field::new("time", time_data_type(), false),
            Field::new("host", tag_data_type(), true),
            Field::new("region", tag_data_type(), true),
            Field::new("v", DataType::Float64, true),
        ]))
        .unwrap()
    }

    #[test]
    fn files_record_a_distinct_bound_per_tag() {
        let schema = host_region_schema();
        let h = HOUR_NS;
        // Hour 0: hosts a, b (region only on a); hour 1: hosts b, c, no region.
        let frozen = FrozenTable {
            schema: schema.clone(),
            batches: vec![
                batch(
                    &schema,
                    &[(1, "a", Some("eu")), (2, "b", None), (3, "a", Some("eu"))],
                ),
                batch(&schema, &[(h + 1, "b", None), (h + 2, "c", None)]),
            ],
        };
        let table = TableKey::new("db", "cpu").unwrap();
        let files = encode_table(&table, &frozen, ShardId(0), WalSeq(1)).unwrap();
        assert_eq!(files.len(), 2);
        for f in &files {
            assert_eq!(
                f.meta.tag_distinct.keys().collect::<Vec<_>>(),
                ["host", "region"],
                "{:?}",
                f.meta
            );
            // An upper bound: at least the file's distinct hosts (2), at
            // most the flush's (3), however the dictionaries were merged.
            let host = f.meta.tag_distinct["host"];
            assert!((2..=3).contains(&host), "{:?}", f.meta);
            assert!(f.meta.tag_distinct["region"] <= 1, "{:?}", f.meta);
        }
        assert_eq!(files[0].meta.tag_distinct["region"], 1);
    }

    #[test]
    fn only_tag_columns_are_dictionary_encoded() {
        use parquet::basic::Encoding;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let schema = host_region_schema();
        let frozen = FrozenTable {
            schema: schema.clone(),
            batches: vec![batch(
                &schema,
                &[(1, "a", Some("eu")), (2, "b", None), (3, "a", Some("us"))],
            )],
        };
        let table = TableKey::new("db", "cpu").unwrap();
        let files = encode_table(&table, &frozen, ShardId(0), WalSeq(1)).unwrap();
        let reader = SerializedFileReader::new(files[0].bytes.clone()).unwrap();
        let rg = reader.metadata().row_group(0);
        let dictionary: Vec<(String, bool)> = rg
            .columns()
            .iter()
            .map(|c| {
                let mut encodings = c.encodings();
                let dict = encodings.any(|e| e == Encoding::RLE_DICTIONARY);
                (c.column_path().string(), dict)
            })
            .collect();
        let want = [
            ("time", false),
            ("host", true),
            ("region", true),
            ("v", false),
        ];
        let want: Vec<(String, bool)> = want.iter().map(|(c, d)| (c.to_string(), *d)).collect();
        assert_eq!(dictionary, want);
    }

    /// The workers run at the nice value asked for (read back from /proc).
    #[test]
    fn niced_workers_run_at_their_nice_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStore::local(&dir.path().join("p")).unwrap());
        let manifest = Arc::new(Manifest::open(&dir.path().join("m")).unwrap());
        let (pool, handles) = FlushPool::start_with(
            2,
            1,
            store,
            manifest,
            PoolOptions {
                nice: 7,
                codec: FlushCodec::default(),
            },
        );
        let nices = || -> Vec<i64> {
            let mut v = Vec::new();
            for t in std::fs::read_dir("/proc/self/task").unwrap() {
                let t = t.unwrap().path();
                let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
                if comm.starts_with("tidemark-flush") {
                    let stat = std::fs::read_to_string(t.join("stat")).unwrap();
                    // Field 19 (nice), counted after the ")" closing the name.
                    let rest = &stat[stat.rfind(')').unwrap() + 2..];
                    v.push(rest.split(' ').nth(16).unwrap().parse().unwrap());
                }
            }
            v
        };
        // The threads set their nice value as they start.
        let mut seen = nices();
        for _ in 0..200 {
            if seen.len() == 2 && seen.iter().all(|&n| n == 7) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            seen = nices();
        }
        assert_eq!(seen, [7, 7]);
        drop(pool);
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn local_put_writes_whole_files_in_chunks_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::local(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..(3 * WRITEBACK_CHUNK + 12345))
            .map(|i| (i * 7 + i / 4093) as u8)
            .collect();
        store
            .put("db/m/2026/a.parquet", Bytes::from(bytes.clone()))
            .unwrap();
        store
            .put("db/m/b.parquet", Bytes::from_static(b"small"))
            .unwrap();
        assert_eq!(store.get("db/m/2026/a.parquet").unwrap(), bytes);
        assert_eq!(store.get("db/m/b.parquet").unwrap(), &b"small"[..]);
        // Overwriting (a retried flush) replaces the file.
        store
            .put("db/m/b.parquet", Bytes::from_static(b"again"))
            .unwrap();
        assert_eq!(store.get("db/m/b.parquet").unwrap(), &b"again"[..]);
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("db/m"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["2026", "b.parquet"]);
        // Every directory from a file up to the root was made durable once
        // (its parent synced), and only those.
        let durable = |store: &FileStore| {
            let mut d: Vec<String> = store
                .durable_dirs
                .lock()
                .unwrap()
                .iter()
                .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
                .collect();
            d.sort();
            d
        };
        assert_eq!(durable(&store), ["db", "db/m", "db/m/2026"]);
        store
            .put("db/n/01/c.parquet", Bytes::from_static(b"c"))
            .unwrap();
        assert_eq!(
            durable(&store),
            ["db", "db/m", "db/m/2026", "db/n", "db/n/01"]
        );
    }

    #[test]
    fn files_are_sorted_by_tags_then_time_as_a_per_row_comparison_would() {
        use arrow_array::{Array, ArrayAccessor};
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let schema = host_region_schema();
        let hosts = ["b", "a", "ab", "c", "", "a\u{e9}"];
        let regions = [None, Some("eu"), Some("us"), Some("e")];
        let mut next = xorshift(0x2545f4914f6cdd1du64);
        let mut batches = Vec::new();
        let mut all = Vec::new();
        for _ in 0..3 {
            let rows: Vec<(i64, &str, Option<&str>)> = (0..400)
                .map(|_| {
                    (
                        (next() % (3 * HOUR_NS as u64)) as i64,
                        hosts[next() as usize % hosts.len()],
                        regions[next() as usize % regions.len()],
                    )
                })
                .collect();
            all.extend(
                rows.iter()
                    .map(|r| (r.1.to_string(), r.2.map(str::to_string), r.0)),
            );
            batches.push(batch(&schema, &rows));
        }
        let frozen = FrozenTable {
            schema: schema.clone(),
            batches,
        };
        let table = TableKey::new("db", "cpu").unwrap();
        let files = encode_table(&table, &frozen, ShardId(0), WalSeq(1)).unwrap();
        let mut got = Vec::new();
        for f in &files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(f.bytes.clone())
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                let dict = |name: &str| {
                    b.column_by_name(name)
                        .unwrap()
                        .as_dictionary::<Int32Type>()
                        .clone()
                };
                let (host, region) = (dict("host"), dict("region"));
                let host = host.downcast_dict::<arrow_array::StringArray>().unwrap();
                let region = region.downcast_dict::<arrow_array::StringArray>().unwrap();
                let time = b
                    .column_by_name("time")
                    .unwrap()
                    .as_primitive::<TimestampNanosecondType>();
                for i in 0..b.num_rows() {
                    got.push((
                        host.value(i).to_string(),
                        (!region.is_null(i)).then(|| region.value(i).to_string()),
                        time.value(i),
                    ));
                }
            }
        }
        // The reference: every row compared by (hour, host, region, time),
        // nulls first, strings bytewise.
        let mut want = all;
        want.sort_by(|a, b| {
            (a.2.div_euclid(HOUR_NS), &a.0, &a.1, a.2).cmp(&(
                b.2.div_euclid(HOUR_NS),
                &b.0,
                &b.1,
                b.2,
            ))
        });
        assert_eq!(got, want);
    }
}
