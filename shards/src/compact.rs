//! Compaction and retention of a node's Parquet files.
//!
//! A *partition* is the files of one (database, measurement, hour, shard).
//! [`plan`] (pure) picks the partitions worth compacting: more than
//! `min_files` files, an hour that ended at least `min_age` ago, and more
//! files than their bytes need at `target_file_bytes` each. [`run_job`]
//! reads a partition's files (checking each one's SHA-256), oldest flush
//! first, merges repeated points ([`crate::dedup`]), and writes files of up
//! to about `target_file_bytes`, sorted by (tags, time), with the same
//! statistics, metadata and SHA-256 as a flush's.
//!
//! Crash safety: the new files are written and synced first (a crash
//! leaves orphans, removed at start-up), then one manifest record swaps
//! them for the old ones ([`Manifest::commit_compaction`]), then the old
//! files are deleted once no running query reads them
//! ([`Manifest::retire`]; a crash leaves them as orphans). At every step
//! either the old files or the new ones are listed, never both, never
//! neither.
//!
//! Why one shard per partition: every file then holds rows of one WAL, so
//! "the latest write wins" needs no per-row sequence: within a shard a
//! file's flush watermark (`upto`) orders it, and files of a compaction
//! take the newest watermark of their inputs (later flushes have larger
//! ones). A replication reader's bootstrap also swaps files per shard.
//!
//! Retention ([`expired`], pure) drops whole hour partitions: every file of
//! a (database, measurement, hour) whose hour ended before the limit, in
//! one manifest record, so a query sees all of a partition or none of it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::buffer::pad_to_schema;
use crate::failpoint::{crash_point, pause_point};
use crate::flush::{encode_rows, partition_dir, EncodeOptions, FileStore, FlushError, HOUR_NS};
use crate::ids::{ShardId, WalSeq};
use crate::manifest::{FileMeta, Manifest};
use crate::schema::{TableKey, TableSchema};

/// When and how partitions are compacted.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionConfig {
    /// Compact a partition holding more than this many files.
    pub min_files: usize,
    /// ... whose hour ended at least this long ago.
    pub min_age: Duration,
    /// Size of the files written.
    pub target_file_bytes: u64,
    /// zstd level of the files written.
    pub zstd_level: i32,
    /// Bytes read plus bytes written per second, at most (0: no limit).
    pub bytes_per_second: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            min_files: 8,
            min_age: Duration::from_secs(3600),
            target_file_bytes: 128 << 20,
            zstd_level: 3,
            bytes_per_second: 64 << 20,
        }
    }
}

/// Which files a partition is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Partition {
    pub database: String,
    pub measurement: String,
    pub hour: i64,
    pub shard: ShardId,
}

impl Partition {
    fn of(f: &FileMeta) -> Partition {
        Partition {
            database: f.database.clone(),
            measurement: f.measurement.clone(),
            hour: f.hour,
            shard: f.shard,
        }
    }
}

/// One partition to compact and its files.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub partition: Partition,
    pub files: Vec<FileMeta>,
}

/// What to compact, of `files`, at `now_ns` (wall clock, ns since the
/// epoch). `only` narrows it to a database (and a measurement). With
/// `force`, `min_files` and `min_age` are ignored (any partition of two
/// files or more that can shrink).
pub fn plan(
    files: &[FileMeta],
    config: &CompactionConfig,
    now_ns: i64,
    only: Option<(&str, Option<&str>)>,
    force: bool,
) -> Vec<Job> {
    let mut partitions: BTreeMap<Partition, Vec<FileMeta>> = BTreeMap::new();
    for f in files {
        if let Some((db, m)) = only {
            if f.database != db || m.is_some_and(|m| m != f.measurement) {
                continue;
            }
        }
        partitions
            .entry(Partition::of(f))
            .or_default()
            .push(f.clone());
    }
    let min_age = i64::try_from(config.min_age.as_nanos()).unwrap_or(i64::MAX);
    let budget = config.target_file_bytes.max(1);
    partitions
        .into_iter()
        .filter(|(p, files)| {
            let (min_files, old_enough) = if force {
                (1, true)
            } else {
                let end = (p.hour + 1).saturating_mul(HOUR_NS);
                (
                    config.min_files.max(1),
                    end.saturating_add(min_age) <= now_ns,
                )
            };
            let bytes: u64 = files.iter().map(|f| f.size).sum();
            let needed = bytes.div_ceil(config.target_file_bytes.max(1)).max(1) as usize;
            files.len() > min_files && old_enough && files.len() > needed
        })
        .flat_map(|(partition, mut files)| {
            files.sort_by_key(|f| (f.upto, f.path.clone()));
            runs(files, budget)
                .into_iter()
                .filter(|run| run.len() > 1)
                .map(move |files| Job {
                    partition: partition.clone(),
                    files,
                })
        })
        .collect()
}

/// Splits a partition's files (in write order) into runs of consecutive
/// files of at most `budget` bytes together (a file larger than that is a
/// run of its own). A job holds its inputs in memory, so this bounds it;
/// and a run's files are consecutive in write order, so the run's output,
/// placed at the newest of their flush watermarks, keeps the write order
/// against every file outside it.
fn runs(files: Vec<FileMeta>, budget: u64) -> Vec<Vec<FileMeta>> {
    let mut out: Vec<Vec<FileMeta>> = Vec::new();
    let mut bytes = 0u64;
    for f in files {
        match out.last_mut() {
            Some(run) if bytes + f.size <= budget => {
                bytes += f.size;
                run.push(f);
            }
            _ => {
                bytes = f.size;
                out.push(vec![f]);
            }
        }
    }
    out
}

/// Whether retention drops `file`: its hour ended at least `keep` before
/// `now_ns`. Depends only on the file's (database, hour), so it drops
/// whole partitions.
pub fn expired(file: &FileMeta, keep: Option<Duration>, now_ns: i64) -> bool {
    let Some(keep) = keep else { return false };
    let keep = i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX);
    (file.hour + 1).saturating_mul(HOUR_NS) <= now_ns.saturating_sub(keep)
}

/// The first hour retention keeps, for rows being flushed: hours before it
/// ended at least `keep` before `now_ns`.
pub fn first_kept_hour(keep: Option<Duration>, now_ns: i64) -> Option<i64> {
    let keep = i64::try_from(keep?.as_nanos()).unwrap_or(i64::MAX);
    // Hour h is dropped when (h + 1) * HOUR <= now - keep.
    Some(now_ns.saturating_sub(keep).div_euclid(HOUR_NS))
}

/// What one job did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JobReport {
    pub database: String,
    pub measurement: String,
    pub hour: i64,
    pub shard: u32,
    pub files_before: usize,
    pub files_after: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub rows_before: u64,
    pub rows_after: u64,
    pub rows_deduplicated: u64,
    pub seconds: f64,
}

/// Errors of a compaction.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error("file {path}: {reason}")]
    Input { path: String, reason: String },
    #[error("the compactor lease was lost before the commit")]
    LeaseLost,
}

/// Limits bytes per second by sleeping the calling thread.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_second: u64,
    start: Instant,
    bytes: u64,
}

impl RateLimit {
    pub fn new(bytes_per_second: u64) -> RateLimit {
        RateLimit {
            bytes_per_second,
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `bytes`; sleeps while more than the rate has gone.
    pub fn take(&mut self, bytes: u64) {
        if self.bytes_per_second == 0 {
            return;
        }
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_second as f64);
        let spent = self.start.elapsed();
        if due > spent {
            std::thread::sleep(due - spent);
        }
    }
}

/// The name of file `n` of compaction `generation` of a partition, its
/// rows up to `upto` of `shard`: `<partition dir>/<shard>-<upto>-c<generation>-<n>.parquet`.
pub fn compacted_path(
    table: &TableKey,
    hour: i64,
    shard: ShardId,
    upto: WalSeq,
    generation: u64,
    n: usize,
) -> String {
    format!(
        "{}/{:03}-{:020}-c{generation:08}-{n:03}.parquet",
        partition_dir(table, hour),
        shard.0,
        upto.0
    )
}

/// Reads one file whole, checking its SHA-256 against the manifest's.
fn read_file(store: &FileStore, meta: &FileMeta) -> Result<Vec<RecordBatch>, CompactError> {
    let input = |reason: String| CompactError::Input {
        path: meta.path.clone(),
        reason,
    };
    let bytes: Bytes = store.get(&meta.path)?;
    let sha = hex::encode(Sha256::digest(&bytes));
    if sha != meta.sha256 {
        return Err(input(format!(
            "SHA-256 {sha} does not match the manifest's {}",
            meta.sha256
        )));
    }
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(64 * 1024).build())
        .map_err(|e| input(e.to_string()))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| input(e.to_string()))
}

/// Compacts one partition (see the [module docs](self)). `may_commit` is
/// asked right before the commit (the compactor lease in a cluster); if
/// it says no, the new files are deleted and nothing changes.
pub fn run_job(
    store: &FileStore,
    manifest: &Manifest,
    job: &Job,
    config: &CompactionConfig,
    limit: &mut RateLimit,
    may_commit: &dyn Fn() -> bool,
) -> Result<JobReport, CompactError> {
    let started = Instant::now();
    let p = &job.partition;
    let table = TableKey::new(&p.database, &p.measurement).map_err(|e| CompactError::Input {
        path: p.database.clone(),
        reason: e.to_string(),
    })?;
    // Columns only ever grow: the file with the most has all of them.
    let widest = job
        .files
        .iter()
        .max_by_key(|f| f.columns.len())
        .map(|f| f.columns.clone())
        .unwrap_or_default();
    let schema = TableSchema::from_columns(widest);
    let mut batches = Vec::new();
    let (mut bytes_before, mut rows_before) = (0u64, 0u64);
    for f in &job.files {
        crash_point("compact.read");
        for b in read_file(store, f)? {
            if b.num_columns() > schema.arrow().fields().len() {
                return Err(CompactError::Input {
                    path: f.path.clone(),
                    reason: "more columns than the partition's widest file lists".into(),
                });
            }
            batches.push(pad_to_schema(&b, &schema));
        }
        bytes_before += f.size;
        rows_before += f.rows;
        limit.take(f.size);
    }
    let upto = job
        .files
        .iter()
        .map(|f| f.upto)
        .max()
        .unwrap_or(WalSeq::ZERO);
    let generation = manifest.next_generation();
    let options = EncodeOptions {
        compression: Compression::ZSTD(ZstdLevel::try_new(config.zstd_level).unwrap_or_default()),
        target_file_bytes: Some(config.target_file_bytes),
        bytes_per_row: bytes_before as f64 / rows_before.max(1) as f64,
        name: compacted_path,
        generation,
        first_kept_hour: None,
    };
    let encoded = encode_rows(&table, &schema, &batches, p.shard, upto, &options)?;
    let (files, merged) = (encoded.files, encoded.merged);
    drop(batches);
    let mut written = Vec::new();
    let cleanup = |written: &[String]| {
        for path in written {
            let _ = store.delete(path);
        }
    };
    for file in files {
        crash_point("compact.before_put");
        let size = file.meta.size;
        if let Err(e) = store.put(&file.meta.path, file.bytes) {
            cleanup(
                &written
                    .iter()
                    .map(|m: &FileMeta| m.path.clone())
                    .collect::<Vec<_>>(),
            );
            return Err(e.into());
        }
        written.push(file.meta);
        limit.take(size);
    }
    let paths: Vec<String> = written.iter().map(|m| m.path.clone()).collect();
    crash_point("compact.before_manifest");
    pause_point("compact.before_manifest");
    if !may_commit() {
        cleanup(&paths);
        return Err(CompactError::LeaseLost);
    }
    let removed: Vec<String> = job.files.iter().map(|f| f.path.clone()).collect();
    if let Err(e) = manifest.commit_compaction(generation, removed.clone(), written.clone()) {
        cleanup(&paths);
        return Err(FlushError::from(e).into());
    }
    crash_point("compact.after_manifest");
    manifest.retire(&removed);
    manifest.stats.add(merged, 0);
    Ok(JobReport {
        database: p.database.clone(),
        measurement: p.measurement.clone(),
        hour: p.hour,
        shard: p.shard.0,
        files_before: job.files.len(),
        files_after: written.len(),
        bytes_before,
        bytes_after: written.iter().map(|f| f.size).sum(),
        rows_before,
        rows_after: written.iter().map(|f| f.rows).sum(),
        rows_deduplicated: merged,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What a retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RetentionReport {
    pub partitions_dropped: usize,
    pub files_dropped: usize,
    pub bytes_dropped: u64,
}

/// Drops every partition whose database's retention (`keep_for`) has
/// passed, in one manifest record, and deletes its files once no query
/// reads them.
pub fn apply_retention(
    manifest: &Manifest,
    keep_for: &dyn Fn(&str) -> Option<Duration>,
    now_ns: i64,
) -> Result<RetentionReport, CompactError> {
    let expired: Vec<String> = manifest
        .files()
        .into_iter()
        .filter(|f| expired(f, keep_for(&f.database), now_ns))
        .map(|f| f.path)
        .collect();
    if expired.is_empty() {
        return Ok(RetentionReport::default());
    }
    crash_point("retention.before_manifest");
    let dropped = manifest.commit_drop(&expired).map_err(FlushError::from)?;
    crash_point("retention.after_manifest");
    let partitions: std::collections::BTreeSet<(&str, &str, i64)> = dropped
        .iter()
        .map(|f| (f.database.as_str(), f.measurement.as_str(), f.hour))
        .collect();
    let paths: Vec<String> = dropped.iter().map(|f| f.path.clone()).collect();
    manifest.retire(&paths);
    Ok(RetentionReport {
        partitions_dropped: partitions.len(),
        files_dropped: dropped.len(),
        bytes_dropped: dropped.iter().map(|f| f.size).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnKind;

    fn file(db: &str, hour: i64, shard: u32, upto: u64, size: u64) -> FileMeta {
        FileMeta {
            path: format!("{db}/m/{hour}/{shard}-{upto}"),
            database: db.into(),
            measurement: "m".into(),
            shard: ShardId(shard),
            upto: WalSeq(upto),
            hour,
            rows: 10,
            size,
            sha256: String::new(),
            min_time: hour * HOUR_NS,
            max_time: hour * HOUR_NS + 1,
            columns: vec![("time".into(), ColumnKind::Time)],
            tag_distinct: BTreeMap::new(),
        }
    }

    #[test]
    fn plan_picks_old_partitions_with_too_many_small_files() {
        let config = CompactionConfig {
            min_files: 2,
            min_age: Duration::from_secs(600),
            target_file_bytes: 1000,
            ..CompactionConfig::default()
        };
        let now = 10 * HOUR_NS + 5 * 60 * 1_000_000_000; // 10:05
        let files = vec![
            // Hour 5, shard 0: 3 small files → compacted, oldest flush first.
            file("db", 5, 0, 9, 10),
            file("db", 5, 0, 3, 10),
            file("db", 5, 0, 6, 10),
            // Hour 5, shard 1: only 2 files.
            file("db", 5, 1, 4, 10),
            file("db", 5, 1, 5, 10),
            // Hour 6: 3 files but they fill 3 target files already.
            file("db", 6, 0, 1, 1000),
            file("db", 6, 0, 2, 1000),
            file("db", 6, 0, 3, 1000),
            // Hour 9 ended at 10:00, 5 minutes ago: too young.
            file("db", 9, 0, 1, 10),
            file("db", 9, 0, 2, 10),
            file("db", 9, 0, 3, 10),
            // Another database.
            file("other", 5, 0, 1, 10),
            file("other", 5, 0, 2, 10),
            file("other", 5, 0, 3, 10),
        ];
        let jobs = plan(&files, &config, now, None, false);
        let picked: Vec<(String, i64, u32, Vec<u64>)> = jobs
            .iter()
            .map(|j| {
                (
                    j.partition.database.clone(),
                    j.partition.hour,
                    j.partition.shard.0,
                    j.files.iter().map(|f| f.upto.0).collect(),
                )
            })
            .collect();
        assert_eq!(
            picked,
            [
                ("db".to_string(), 5, 0, vec![3, 6, 9]),
                ("other".to_string(), 5, 0, vec![1, 2, 3]),
            ]
        );
        // Narrowed to one database.
        assert_eq!(
            plan(&files, &config, now, Some(("other", None)), false).len(),
            1
        );
        assert_eq!(
            plan(&files, &config, now, Some(("db", Some("x"))), false).len(),
            0
        );
        // A partition bigger than a job: runs of consecutive flushes.
        let big: Vec<FileMeta> = (1..=7).map(|u| file("db", 4, 0, u, 400)).collect();
        let jobs = plan(&big, &config, now, None, false);
        let runs: Vec<Vec<u64>> = jobs
            .iter()
            .map(|j| j.files.iter().map(|f| f.upto.0).collect())
            .collect();
        assert_eq!(
            runs,
            [vec![1, 2], vec![3, 4], vec![5, 6]],
            "7 alone is no job"
        );
        // Forced: the young hour and the two-file partition too.
        let forced = plan(&files, &config, now, None, true);
        let hours: Vec<(i64, u32)> = forced
            .iter()
            .map(|j| (j.partition.hour, j.partition.shard.0))
            .collect();
        assert_eq!(hours, [(5, 0), (5, 1), (9, 0), (5, 0)]);
    }

    #[test]
    fn retention_drops_whole_hours_that_ended_before_the_limit() {
        let day = Duration::from_secs(86_400);
        let now = 100 * HOUR_NS + 30 * 60 * 1_000_000_000; // 100:30
                                                           // Kept one day: hour 75 ended at 76:00, 24.5 h ago: dropped; hour 76
                                                           // ends at 77:00, 23.5 h ago: kept whole, though half of it is older.
        assert!(expired(&file("db", 75, 0, 1, 1), Some(day), now));
        assert!(!expired(&file("db", 76, 0, 1, 1), Some(day), now));
        assert!(!expired(&file("db", 0, 0, 1, 1), None, now));
        assert_eq!(first_kept_hour(Some(day), now), Some(76));
        assert_eq!(first_kept_hour(None, now), None);
        // The two rules agree on every hour.
        for h in 60..90 {
            let kept = h >= first_kept_hour(Some(day), now).unwrap();
            assert_eq!(
                kept,
                !expired(&file("db", h, 0, 1, 1), Some(day), now),
                "hour {h}"
            );
        }
    }
}
