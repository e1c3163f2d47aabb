//! The durable list of a node's Parquet files and each shard's flushed
//! watermark.
//!
//! `manifest.log` is an append-only log of records, each
//! `len u32 | crc32c u32 | JSON` (little-endian), made durable with
//! `fdatasync` before [`Manifest::commit_flush`] returns. One record holds
//! every file of one flush together with the shard's new watermark, so a
//! flush is in the manifest whole or not at all. A torn last record is
//! truncated at open; a corrupt record before the end refuses the open.
//!
//! Crash safety of a flush: files are written and fsynced first, then the
//! record is committed, then WAL segments are deleted. A crash before the
//! commit leaves files the manifest does not know (removed at start-up by
//! [`crate::flush::FileStore::remove_orphans`]) and the rows still in the
//! WAL; a crash after it leaves the rows in files and the WAL replays only
//! entries after the watermark. Either way no row is lost or doubled.
//!
//! Shared by the flush workers of all shards (a mutex, off the hot path).
//! Raft replaces the log in a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{ShardId, WalSeq};
use crate::schema::ColumnKind;

const LOG_NAME: &str = "manifest.log";
const RECORD_HEADER: usize = 8;

/// A Parquet file the manifest knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Object path relative to the store root:
    /// `<db>/<measurement>/<YYYY>/<MM>/<DD>/<HH>/<name>.parquet`.
    pub path: String,
    pub database: String,
    pub measurement: String,
    pub shard: ShardId,
    /// The flush's watermark: the file holds rows of WAL entries up to here.
    pub upto: WalSeq,
    /// Hours since the Unix epoch of every row in the file.
    pub hour: i64,
    pub rows: u64,
    pub size: u64,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub min_time: i64,
    pub max_time: i64,
    /// The file's columns in order.
    pub columns: Vec<(String, ColumnKind)>,
    /// Per tag column, an upper bound of its distinct non-null values in
    /// the file (the flush counts distinct dictionary values). Query
    /// planning uses it as a distinct-count estimate. Empty in records
    /// written before it existed; a tag missing here has no bound.
    #[serde(default)]
    pub tag_distinct: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Record {
    Flush {
        shard: ShardId,
        upto: WalSeq,
        files: Vec<FileMeta>,
    },
    /// A replication reader's bootstrap: the shard's files are replaced by
    /// the writer's, and its watermark set to the writer's.
    Replace {
        shard: ShardId,
        upto: WalSeq,
        removed: Vec<String>,
        files: Vec<FileMeta>,
    },
    /// A compaction: `files` replace `removed` (watermarks unchanged).
    Compact {
        generation: u64,
        removed: Vec<String>,
        files: Vec<FileMeta>,
    },
    /// Retention: whole hour partitions dropped.
    Drop { removed: Vec<String> },
    /// A database's retention (`None`: the node's default).
    Retention {
        database: String,
        seconds: Option<u64>,
    },
}

/// Errors of the manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("file {path} is no longer in the manifest")]
    Gone { path: String },
    #[error("flush of shard {shard} up to {upto} is not after its watermark {flushed}")]
    Stale {
        shard: ShardId,
        upto: WalSeq,
        flushed: WalSeq,
    },
}

#[derive(Debug)]
struct State {
    file: fs::File,
    files: BTreeMap<String, FileMeta>,
    flushed: BTreeMap<ShardId, WalSeq>,
    /// The last compaction's generation.
    generation: u64,
    /// Per database, its retention in seconds, if set.
    retention: BTreeMap<String, u64>,
    /// Files read by running queries, and how many hold each.
    pins: BTreeMap<String, usize>,
    /// Files out of the manifest, to delete once no query holds them.
    doomed: BTreeSet<String>,
}

/// Deletes a file the manifest no longer lists.
pub type Deleter = Arc<dyn Fn(&str) + Send + Sync>;

/// See the [module docs](self).
pub struct Manifest {
    path: PathBuf,
    state: Mutex<State>,
    deleter: OnceLock<Deleter>,
    /// The node's retention for databases without their own (config).
    default_retention: Mutex<Option<Duration>>,
    pub stats: StorageStats,
}

/// Counters of what flushes and compactions did to rows (for metrics).
#[derive(Debug, Default)]
pub struct StorageStats {
    /// Rows merged into another row of the same point.
    pub rows_deduplicated: AtomicU64,
    /// Rows dropped at a flush because their hour is past the retention.
    pub rows_expired: AtomicU64,
}

impl StorageStats {
    pub fn add(&self, deduplicated: u64, expired: u64) {
        self.rows_deduplicated
            .fetch_add(deduplicated, Ordering::Relaxed);
        self.rows_expired.fetch_add(expired, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Files a query reads: while it is held, a compaction or retention that
/// removes them from the manifest defers their deletion until it is
/// dropped.
pub struct FilePins {
    manifest: Arc<Manifest>,
    paths: Vec<String>,
}

impl std::fmt::Debug for FilePins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePins")
            .field("files", &self.paths.len())
            .finish()
    }
}

impl Drop for FilePins {
    fn drop(&mut self) {
        let free = {
            let mut st = self.manifest.lock();
            let mut free = Vec::new();
            for p in &self.paths {
                if let Some(n) = st.pins.get_mut(p) {
                    *n -= 1;
                    if *n == 0 {
                        st.pins.remove(p);
                        if st.doomed.remove(p) {
                            free.push(p.clone());
                        }
                    }
                }
            }
            free
        };
        self.manifest.delete(&free);
    }
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ManifestError + 'a {
    move |source| ManifestError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Manifest {
    /// Opens (or creates) the manifest in `dir`, truncating a torn last record.
    pub fn open(dir: &Path) -> Result<Manifest, ManifestError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let path = dir.join(LOG_NAME);
        let existed = path.exists();
        let data = if existed {
            fs::read(&path).map_err(io_err("read", &path))?
        } else {
            Vec::new()
        };
        let mut files = BTreeMap::new();
        let mut flushed = BTreeMap::new();
        let mut generation = 0u64;
        let mut retention = BTreeMap::new();
        let mut off = 0usize;
        while off < data.len() {
            let rest = &data[off..];
            let complete = rest.len() >= RECORD_HEADER && {
                let len = u32::from_le_bytes(rest[0..4].try_into().expect("4")) as usize;
                rest.len() >= RECORD_HEADER + len
            };
            if !complete {
                break; // torn tail
            }
            let len = u32::from_le_bytes(rest[0..4].try_into().expect("4")) as usize;
            let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4"));
            let body = &rest[RECORD_HEADER..RECORD_HEADER + len];
            let corrupt = |reason: String| ManifestError::Corrupt {
                path: path.clone(),
                offset: off as u64,
                reason,
            };
            if crc32c::crc32c(body) != crc {
                if off + RECORD_HEADER + len == data.len() {
                    break; // the last record, torn
                }
                return Err(corrupt("record checksum mismatch".into()));
            }
            let record: Record =
                serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?;
            match record {
                Record::Flush {
                    shard,
                    upto,
                    files: new,
                } => {
                    flushed.insert(shard, upto);
                    for f in new {
                        files.insert(f.path.clone(), f);
                    }
                }
                Record::Replace {
                    shard,
                    upto,
                    removed,
                    files: new,
                } => {
                    flushed.insert(shard, upto);
                    for p in removed {
                        files.remove(&p);
                    }
                    for f in new {
                        files.insert(f.path.clone(), f);
                    }
                }
                Record::Compact {
                    generation: g,
                    removed,
                    files: new,
                } => {
                    generation = generation.max(g);
                    for p in removed {
                        files.remove(&p);
                    }
                    for f in new {
                        files.insert(f.path.clone(), f);
                    }
                }
                Record::Drop { removed } => {
                    for p in removed {
                        files.remove(&p);
                    }
                }
                Record::Retention { database, seconds } => match seconds {
                    Some(s) => {
                        retention.insert(database, s);
                    }
                    None => {
                        retention.remove(&database);
                    }
                },
            }
            off += RECORD_HEADER + len;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        if off < data.len() {
            tracing::warn!(path = %path.display(), torn_bytes = data.len() - off, "truncating torn manifest record");
            file.set_len(off as u64)
                .and_then(|()| file.sync_all())
                .map_err(io_err("truncate", &path))?;
        }
        if !existed {
            file.sync_all().map_err(io_err("sync", &path))?;
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("sync", dir))?;
        }
        Ok(Manifest {
            path,
            state: Mutex::new(State {
                file,
                files,
                flushed,
                generation,
                retention,
                pins: BTreeMap::new(),
                doomed: BTreeSet::new(),
            }),
            deleter: OnceLock::new(),
            default_retention: Mutex::new(None),
            stats: StorageStats::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("manifest lock poisoned")
    }

    /// Records the files of one flush of `shard` and its new watermark
    /// `upto`, durably, in one record.
    pub fn commit_flush(
        &self,
        shard: ShardId,
        upto: WalSeq,
        files: Vec<FileMeta>,
    ) -> Result<(), ManifestError> {
        let mut st = self.lock();
        let flushed = st.flushed.get(&shard).copied().unwrap_or(WalSeq::ZERO);
        if upto <= flushed {
            return Err(ManifestError::Stale {
                shard,
                upto,
                flushed,
            });
        }
        self.append(
            &mut st,
            &Record::Flush {
                shard,
                upto,
                files: files.clone(),
            },
        )?;
        st.flushed.insert(shard, upto);
        for f in files {
            st.files.insert(f.path.clone(), f);
        }
        Ok(())
    }

    /// Replaces every file of `shard` by `files` and sets its watermark to
    /// `upto`, durably, in one record (a replication reader's bootstrap:
    /// `files` are the writer's, already in the store). Returns the paths
    /// of the files dropped, for the caller to delete.
    pub fn commit_replace(
        &self,
        shard: ShardId,
        upto: WalSeq,
        files: Vec<FileMeta>,
    ) -> Result<Vec<String>, ManifestError> {
        let mut st = self.lock();
        let removed: Vec<String> = st
            .files
            .values()
            .filter(|f| f.shard == shard && !files.iter().any(|n| n.path == f.path))
            .map(|f| f.path.clone())
            .collect();
        self.append(
            &mut st,
            &Record::Replace {
                shard,
                upto,
                removed: removed.clone(),
                files: files.clone(),
            },
        )?;
        st.flushed.insert(shard, upto);
        for p in &removed {
            st.files.remove(p);
        }
        for f in files {
            st.files.insert(f.path.clone(), f);
        }
        Ok(removed)
    }

    fn append(&self, st: &mut State, record: &Record) -> Result<(), ManifestError> {
        let body = serde_json::to_vec(record).expect("manifest records serialize");
        let mut buf = Vec::with_capacity(RECORD_HEADER + body.len());
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        buf.extend_from_slice(&body);
        st.file
            .write_all(&buf)
            .and_then(|()| st.file.sync_data())
            .map_err(io_err("append", &self.path))
    }

    /// The files of one shard and its watermark, read together.
    pub fn shard_files(&self, shard: ShardId) -> (Vec<FileMeta>, WalSeq) {
        let st = self.lock();
        let files = st
            .files
            .values()
            .filter(|f| f.shard == shard)
            .cloned()
            .collect();
        (
            files,
            st.flushed.get(&shard).copied().unwrap_or(WalSeq::ZERO),
        )
    }

    /// The last WAL entry of `shard` whose rows are in files (`ZERO` if none).
    pub fn flushed_seq(&self, shard: ShardId) -> WalSeq {
        self.lock()
            .flushed
            .get(&shard)
            .copied()
            .unwrap_or(WalSeq::ZERO)
    }

    /// Every file, sorted by path.
    pub fn files(&self) -> Vec<FileMeta> {
        self.lock().files.values().cloned().collect()
    }

    /// The files of one table and every shard's watermark, read together
    /// (one lock), so a reader can tell which buffered rows the files hold.
    pub fn table_files(
        &self,
        database: &str,
        measurement: &str,
    ) -> (Vec<FileMeta>, BTreeMap<ShardId, WalSeq>) {
        let st = self.lock();
        let files = st
            .files
            .values()
            .filter(|f| f.database == database && f.measurement == measurement)
            .cloned()
            .collect();
        (files, st.flushed.clone())
    }

    /// [`Manifest::table_files`], with the files pinned: none of them is
    /// deleted while the returned [`FilePins`] lives.
    pub fn table_files_pinned(
        self: &Arc<Self>,
        database: &str,
        measurement: &str,
    ) -> (Vec<FileMeta>, BTreeMap<ShardId, WalSeq>, FilePins) {
        let mut st = self.lock();
        let files: Vec<FileMeta> = st
            .files
            .values()
            .filter(|f| f.database == database && f.measurement == measurement)
            .cloned()
            .collect();
        for f in &files {
            *st.pins.entry(f.path.clone()).or_insert(0) += 1;
        }
        let pins = FilePins {
            manifest: Arc::clone(self),
            paths: files.iter().map(|f| f.path.clone()).collect(),
        };
        (files, st.flushed.clone(), pins)
    }

    /// Sets how files out of the manifest are deleted (once, at start-up).
    /// Without it, [`Manifest::retire`] deletes nothing (the files are
    /// orphans at the next start).
    pub fn set_deleter(&self, deleter: Deleter) {
        let _ = self.deleter.set(deleter);
    }

    fn delete(&self, paths: &[String]) {
        if let Some(d) = self.deleter.get() {
            for p in paths {
                d(p);
            }
        }
    }

    /// Deletes files a committed record removed from the manifest: now if
    /// no query holds them, else when the last one lets go. Returns how
    /// many were deleted now.
    pub fn retire(&self, paths: &[String]) -> usize {
        let now: Vec<String> = {
            let mut st = self.lock();
            let mut now = Vec::new();
            for p in paths {
                if st.files.contains_key(p) {
                    continue; // listed again (never expected): keep it
                }
                if st.pins.contains_key(p) {
                    st.doomed.insert(p.clone());
                } else {
                    now.push(p.clone());
                }
            }
            now
        };
        self.delete(&now);
        now.len()
    }

    /// Files removed from the manifest that a running query still reads.
    pub fn pinned_retired(&self) -> usize {
        self.lock().doomed.len()
    }

    /// Replaces the files `removed` by `files` (a compaction), durably, in
    /// one record. Refused, changing nothing, if any of `removed` is no
    /// longer listed (a bootstrap or retention removed it meanwhile).
    pub fn commit_compaction(
        &self,
        generation: u64,
        removed: Vec<String>,
        files: Vec<FileMeta>,
    ) -> Result<(), ManifestError> {
        let mut st = self.lock();
        if let Some(p) = removed.iter().find(|p| !st.files.contains_key(*p)) {
            return Err(ManifestError::Gone { path: p.clone() });
        }
        self.append(
            &mut st,
            &Record::Compact {
                generation,
                removed: removed.clone(),
                files: files.clone(),
            },
        )?;
        st.generation = st.generation.max(generation);
        for p in &removed {
            st.files.remove(p);
        }
        for f in files {
            st.files.insert(f.path.clone(), f);
        }
        Ok(())
    }

    /// A new compaction generation (unique among this manifest's; names
    /// the compaction's files so they never collide with earlier ones).
    pub fn next_generation(&self) -> u64 {
        let mut st = self.lock();
        st.generation += 1;
        st.generation
    }

    /// Removes the files `paths` (those still listed), durably, in one
    /// record. Returns the files removed (for [`Manifest::retire`]).
    pub fn commit_drop(&self, paths: &[String]) -> Result<Vec<FileMeta>, ManifestError> {
        let mut st = self.lock();
        let removed: Vec<FileMeta> = paths
            .iter()
            .filter_map(|p| st.files.get(p).cloned())
            .collect();
        if removed.is_empty() {
            return Ok(removed);
        }
        self.append(
            &mut st,
            &Record::Drop {
                removed: removed.iter().map(|f| f.path.clone()).collect(),
            },
        )?;
        for f in &removed {
            st.files.remove(&f.path);
        }
        Ok(removed)
    }

    /// Sets (or with `None` clears) a database's retention in seconds (0:
    /// forever), durably.
    pub fn set_retention(&self, database: &str, seconds: Option<u64>) -> Result<(), ManifestError> {
        let mut st = self.lock();
        self.append(
            &mut st,
            &Record::Retention {
                database: database.to_string(),
                seconds,
            },
        )?;
        match seconds {
            Some(s) => st.retention.insert(database.to_string(), s),
            None => st.retention.remove(database),
        };
        Ok(())
    }

    /// Sets the retention of databases that have none of their own.
    pub fn set_default_retention(&self, keep: Option<Duration>) {
        *self.default_retention.lock().expect("retention lock") = keep;
    }

    /// How long `database` keeps its data (`None`: forever): its own
    /// retention if set (0 seconds: forever), else the default.
    pub fn keep_for(&self, database: &str) -> Option<Duration> {
        let own = self.lock().retention.get(database).copied();
        match own {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None => *self.default_retention.lock().expect("retention lock"),
        }
    }

    /// The databases' retention set through [`Manifest::set_retention`].
    pub fn retention(&self) -> BTreeMap<String, u64> {
        self.lock().retention.clone()
    }

    pub fn contains(&self, path: &str) -> bool {
        self.lock().files.contains_key(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(path: &str) -> FileMeta {
        FileMeta {
            path: path.into(),
            database: "db".into(),
            measurement: "cpu".into(),
            shard: ShardId(0),
            upto: WalSeq(5),
            hour: 1,
            rows: 10,
            size: 100,
            sha256: "00".into(),
            min_time: 0,
            max_time: 1,
            columns: vec![("time".into(), ColumnKind::Time)],
            tag_distinct: BTreeMap::from([("host".into(), 3)]),
        }
    }

    #[test]
    fn file_meta_json_and_records_without_tag_distinct() {
        let m = meta("p");
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["tag_distinct"], serde_json::json!({ "host": 3 }));
        // A record written before `tag_distinct` existed still loads.
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("tag_distinct");
        let back: FileMeta = serde_json::from_value(old).unwrap();
        assert!(back.tag_distinct.is_empty());
        assert_eq!(
            FileMeta {
                tag_distinct: BTreeMap::new(),
                ..m.clone()
            },
            back
        );
        // And a whole old manifest log opens.
        let dir = tempfile::tempdir().unwrap();
        let body = serde_json::to_vec(&serde_json::json!({
            "type": "flush", "shard": 0, "upto": 5, "files": [ { "path": "p",
            "database": "db", "measurement": "cpu", "shard": 0, "upto": 5,
            "hour": 1, "rows": 10, "size": 100, "sha256": "00", "min_time": 0,
            "max_time": 1, "columns": [["time", "time"]] } ] }))
        .unwrap();
        let mut rec = (body.len() as u32).to_le_bytes().to_vec();
        rec.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        rec.extend_from_slice(&body);
        fs::write(dir.path().join(LOG_NAME), rec).unwrap();
        let opened = Manifest::open(dir.path()).unwrap();
        assert_eq!(opened.files()[0].tag_distinct, BTreeMap::new());
        assert_eq!(opened.files()[0].rows, 10);
    }

    #[test]
    fn commit_reopen_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest::open(dir.path()).unwrap();
        m.commit_flush(ShardId(0), WalSeq(5), vec![meta("a"), meta("b")])
            .unwrap();
        let mut c = meta("c");
        c.shard = ShardId(1);
        m.commit_flush(ShardId(1), WalSeq(3), vec![c]).unwrap();
        assert!(matches!(
            m.commit_flush(ShardId(0), WalSeq(5), vec![]),
            Err(ManifestError::Stale { .. })
        ));
        drop(m);
        let log = dir.path().join(LOG_NAME);
        let full = fs::read(&log).unwrap();
        // Every cut inside the last record loses exactly that record.
        let first_len = 8 + u32::from_le_bytes(full[0..4].try_into().unwrap()) as usize;
        for cut in first_len..full.len() {
            fs::write(&log, &full[..cut]).unwrap();
            let m = Manifest::open(dir.path()).unwrap();
            assert_eq!(m.files().len(), 2, "cut {cut}");
            assert_eq!(m.flushed_seq(ShardId(1)), WalSeq::ZERO);
            assert_eq!(fs::metadata(&log).unwrap().len() as usize, first_len);
        }
        fs::write(&log, &full).unwrap();
        let m = Manifest::open(dir.path()).unwrap();
        assert_eq!(m.files().len(), 3);
        // A bootstrap replaces shard 0's files and watermark; it survives a reopen.
        let mut d = meta("d");
        d.upto = WalSeq(9);
        let removed = m
            .commit_replace(ShardId(0), WalSeq(9), vec![d.clone()])
            .unwrap();
        assert_eq!(removed, ["a", "b"]);
        drop(m);
        let m2 = Manifest::open(dir.path()).unwrap();
        assert_eq!(m2.shard_files(ShardId(0)), (vec![d], WalSeq(9)));
        assert_eq!(m2.shard_files(ShardId(1)).0.len(), 1);
        drop(m2);
        fs::write(&log, &full).unwrap();
        let m = Manifest::open(dir.path()).unwrap();
        assert_eq!(m.flushed_seq(ShardId(0)), WalSeq(5));
        assert_eq!(m.flushed_seq(ShardId(1)), WalSeq(3));
        // A corrupt record in the middle refuses the open.
        let mut bad = full.clone();
        bad[12] ^= 0xff;
        fs::write(&log, &bad).unwrap();
        assert!(matches!(
            Manifest::open(dir.path()),
            Err(ManifestError::Corrupt { offset: 0, .. })
        ));
    }

    fn paths(m: &Manifest) -> Vec<String> {
        m.files().into_iter().map(|f| f.path).collect()
    }

    #[test]
    fn retired_files_wait_for_the_queries_that_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(Manifest::open(dir.path()).unwrap());
        let deleted = Arc::new(Mutex::new(Vec::<String>::new()));
        let d = deleted.clone();
        m.set_deleter(Arc::new(move |p: &str| {
            d.lock().unwrap().push(p.to_string())
        }));
        m.commit_flush(ShardId(0), WalSeq(5), vec![meta("a"), meta("b")])
            .unwrap();
        // A query holds both files.
        let (files, _, pins) = m.table_files_pinned("db", "cpu");
        assert_eq!(files.len(), 2);
        let (_, _, pins2) = m.table_files_pinned("db", "cpu");
        // A compaction swaps them for `c`: both are out of the manifest at
        // once, in one record, but stay on disk while read.
        let mut c = meta("c");
        c.upto = WalSeq(5);
        m.commit_compaction(1, vec!["a".into(), "b".into()], vec![c])
            .unwrap();
        assert_eq!(m.retire(&["a".into(), "b".into()]), 0);
        assert_eq!(m.pinned_retired(), 2);
        assert!(deleted.lock().unwrap().is_empty());
        drop(pins);
        assert!(
            deleted.lock().unwrap().is_empty(),
            "another query still reads them"
        );
        drop(pins2);
        assert_eq!(*deleted.lock().unwrap(), ["a", "b"]);
        assert_eq!(m.pinned_retired(), 0);
        // A file no query holds goes at once; a stale swap changes nothing.
        let mut d = meta("d");
        d.upto = WalSeq(5);
        m.commit_compaction(2, vec!["c".into()], vec![d]).unwrap();
        assert_eq!(m.retire(&["c".into()]), 1);
        assert!(matches!(
            m.commit_compaction(3, vec!["c".into()], vec![meta("e")]),
            Err(ManifestError::Gone { .. })
        ));
        assert_eq!(paths(&m), ["d"]);
        // Reopened: the swaps replay, the generation survives.
        drop(m);
        let m = Manifest::open(dir.path()).unwrap();
        assert_eq!(paths(&m), ["d"]);
        assert_eq!(m.next_generation(), 3);
        // Retention: one record drops the listed files still there.
        let gone = m.commit_drop(&["d".into(), "zz".into()]).unwrap();
        assert_eq!(gone.len(), 1);
        m.set_retention("db", Some(3600)).unwrap();
        m.set_default_retention(Some(Duration::from_secs(60)));
        assert_eq!(m.keep_for("db"), Some(Duration::from_secs(3600)));
        assert_eq!(m.keep_for("other"), Some(Duration::from_secs(60)));
        m.set_retention("other", Some(0)).unwrap();
        assert_eq!(m.keep_for("other"), None, "0: forever");
        drop(m);
        let m = Manifest::open(dir.path()).unwrap();
        assert!(m.files().is_empty());
        assert_eq!(
            m.retention(),
            BTreeMap::from([("db".into(), 3600), ("other".into(), 0)])
        );
    }
}
