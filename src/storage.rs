//! Storage over time: the node's compaction and retention thread.
//!
//! One thread (`tidemark-compact`, at nice `compaction.nice`) runs every
//! job, so no two compactions of a node ever touch the same partition:
//! every `compaction.check_interval` it compacts what
//! [`compact::plan`] picks, every `retention.check_interval` it drops the
//! partitions past their database's retention, and it runs both at once
//! for `POST /api/v1/compact` ([`StorageHandle::compact_now`]). Reads and
//! writes are limited to `compaction.bytes_per_second`.
//!
//! In a cluster, the node holding the compactor lease (see
//! `control::state`) commits a compaction only while its lease of the
//! epoch the job started under holds: a holder paused or cut off past its
//! lease cannot commit. Every node compacts its own local files (they are
//! its own); the lease is what will let only one node compact the shared
//! files once storage is shared (ARCHITECTURE.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;
use tidemark_shards::compact::{self, CompactError, JobReport, RateLimit, RetentionReport};
use tidemark_shards::manifest::Manifest;

use crate::config::{parse_duration, parse_retention, Config};
use crate::context::NodeShared;

/// `POST /api/v1/compact`'s narrowing: a database, and a measurement of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub database: Option<String>,
    pub measurement: Option<String>,
}

/// What one run did (the answer of `POST /api/v1/compact`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub jobs: Vec<JobReport>,
    pub errors: Vec<String>,
    pub files_before: usize,
    pub files_after: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub rows_deduplicated: u64,
    pub retention: RetentionReport,
    pub seconds: f64,
}

struct Request {
    scope: Scope,
    reply: oneshot::Sender<RunReport>,
}

/// Sends requests to the storage thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StorageHandle {
    tx: crossbeam_channel::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("scope", &self.scope)
            .finish()
    }
}

/// The receiving end, handed to [`run`].
#[derive(Debug)]
pub struct StorageParts {
    rx: crossbeam_channel::Receiver<Request>,
}

/// A handle and the parts for the thread.
pub fn channel() -> (StorageHandle, StorageParts) {
    let (tx, rx) = crossbeam_channel::bounded(16);
    (StorageHandle { tx }, StorageParts { rx })
}

impl StorageHandle {
    /// Runs retention and a compaction of every partition of `scope` that
    /// can shrink, now; returns what they did. `None` if the thread is
    /// busy with 16 requests already or has stopped.
    pub async fn compact_now(&self, scope: Scope) -> Option<RunReport> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Request { scope, reply }).ok()?;
        rx.await.ok()
    }
}

/// Storage metrics.
#[derive(Debug)]
pub struct StorageMetrics {
    jobs: Family<ResultLabel, Counter>,
    files_before: Counter,
    files_after: Counter,
    bytes_before: Counter,
    bytes_after: Counter,
    job_seconds: Histogram,
    partitions_dropped: Counter,
    files_dropped: Counter,
    retention_runs: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

impl StorageMetrics {
    pub fn new() -> StorageMetrics {
        StorageMetrics {
            jobs: Family::default(),
            files_before: Counter::default(),
            files_after: Counter::default(),
            bytes_before: Counter::default(),
            bytes_after: Counter::default(),
            job_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            partitions_dropped: Counter::default(),
            files_dropped: Counter::default(),
            retention_runs: Counter::default(),
        }
    }

    /// Registers the families, and the manifest's counters read at scrape.
    pub fn register(&self, r: &mut Registry, manifest: &Arc<Manifest>) {
        r.register(
            "compaction_jobs",
            "Compaction jobs (one partition each), by result: ok, error, lease_lost",
            self.jobs.clone(),
        );
        r.register(
            "compaction_files_before",
            "Files compaction jobs read (and replaced)",
            self.files_before.clone(),
        );
        r.register(
            "compaction_files_after",
            "Files compaction jobs wrote",
            self.files_after.clone(),
        );
        r.register_with_unit(
            "compaction_read",
            "Bytes of the files compaction jobs replaced",
            Unit::Bytes,
            self.bytes_before.clone(),
        );
        r.register_with_unit(
            "compaction_written",
            "Bytes of the files compaction jobs wrote",
            Unit::Bytes,
            self.bytes_after.clone(),
        );
        r.register_with_unit(
            "compaction_job_duration",
            "Time of one compaction job, from reading its first file to the commit",
            Unit::Seconds,
            self.job_seconds.clone(),
        );
        r.register(
            "retention_partitions_dropped",
            "Hour partitions (database, measurement, hour) dropped by retention",
            self.partitions_dropped.clone(),
        );
        r.register(
            "retention_files_dropped",
            "Files dropped by retention",
            self.files_dropped.clone(),
        );
        r.register(
            "retention_runs",
            "Retention passes over the manifest",
            self.retention_runs.clone(),
        );
        r.register_collector(Box::new(ManifestCollector(manifest.clone())));
    }

    fn count_job(&self, result: &Result<JobReport, CompactError>) {
        let label = match result {
            Ok(_) => "ok",
            Err(CompactError::LeaseLost) => "lease_lost",
            Err(_) => "error",
        };
        self.jobs
            .get_or_create(&ResultLabel {
                result: label.into(),
            })
            .inc();
        if let Ok(j) = result {
            self.files_before.inc_by(j.files_before as u64);
            self.files_after.inc_by(j.files_after as u64);
            self.bytes_before.inc_by(j.bytes_before);
            self.bytes_after.inc_by(j.bytes_after);
            self.job_seconds.observe(j.seconds);
        }
    }
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics::new()
    }
}

/// The manifest's live numbers, at scrape time.
#[derive(Debug)]
struct ManifestCollector(Arc<Manifest>);

impl prometheus_client::collector::Collector for ManifestCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.0.stats;
        for (name, help, v) in [
            (
                "storage_rows_deduplicated",
                "Rows merged into another row of the same point (same measurement, tags and time) by flushes and compactions",
                stats.rows_deduplicated.load(Relaxed),
            ),
            (
                "retention_rows_expired",
                "Buffered rows dropped at their flush because their hour is past the retention",
                stats.rows_expired.load(Relaxed),
            ),
        ] {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let files = self.0.files();
        for (name, help, v) in [
            (
                "storage_files",
                "Parquet files in the manifest",
                files.len() as i64,
            ),
            (
                "storage_bytes",
                "Bytes of the Parquet files in the manifest",
                files.iter().map(|f| f.size as i64).sum(),
            ),
            (
                "storage_retired_files_held",
                "Files out of the manifest that running queries still read (deleted when they finish)",
                self.0.pinned_retired() as i64,
            ),
        ] {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

/// Sets the manifest's default retention and the configured per-database
/// ones (an override set through the API since wins over the file).
pub fn apply_config(config: &Config, manifest: &Manifest) -> anyhow::Result<()> {
    manifest.set_default_retention(
        parse_retention(&config.retention.default).map_err(anyhow::Error::msg)?,
    );
    let set = manifest.retention();
    for (db, v) in &config.retention.databases {
        if set.contains_key(db) {
            continue;
        }
        let keep = parse_retention(v).map_err(anyhow::Error::msg)?;
        manifest.set_retention(db, Some(keep.map_or(0, |d| d.as_secs().max(1))))?;
    }
    Ok(())
}

/// In a cluster, copies the retention settings of the cluster state into
/// this node's manifest (those that differ).
pub fn sync_retention(node: &NodeShared) {
    let view = node.control.view();
    if view.state.retention.is_empty() {
        return;
    }
    let mine = node.manifest.retention();
    for (db, seconds) in &view.state.retention {
        if mine.get(db) != seconds.as_ref() {
            if let Err(e) = node.manifest.set_retention(db, *seconds) {
                tracing::error!(database = %db, error = %e, "cannot record the cluster's retention");
            }
        }
    }
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// Whether this node may commit a compaction it starts now: always,
/// unless it holds the cluster's compactor lease, in which case only while
/// that lease (of the epoch seen now) holds.
fn commit_check(node: &NodeShared) -> Box<dyn Fn() -> bool + '_> {
    let view = node.control.view();
    let me = view.node_id;
    if me.is_none() || view.state.compactor != me {
        return Box::new(|| true);
    }
    let epoch = view.state.compactor_epoch;
    Box::new(move || {
        let now = node.control.view();
        now.state.compactor == me
            && now.state.compactor_epoch == epoch
            && node
                .compactor_lease
                .holds(crate::control::state::WriterEpoch(epoch))
    })
}

/// Drops the partitions past their database's retention.
fn retention_pass(
    manifest: &Manifest,
    metrics: &StorageMetrics,
) -> Result<RetentionReport, CompactError> {
    let result = compact::apply_retention(manifest, &|db| manifest.keep_for(db), now_ns());
    match &result {
        Ok(r) => {
            metrics.retention_runs.inc();
            metrics
                .partitions_dropped
                .inc_by(r.partitions_dropped as u64);
            metrics.files_dropped.inc_by(r.files_dropped as u64);
            if r.partitions_dropped > 0 {
                tracing::info!(
                    partitions = r.partitions_dropped,
                    files = r.files_dropped,
                    bytes = r.bytes_dropped,
                    "retention dropped partitions"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "retention failed"),
    }
    result
}

/// One pass: retention, then the compactions `plan` picks.
fn run_once(
    node: &NodeShared,
    metrics: &StorageMetrics,
    scope: Option<&Scope>,
    force: bool,
) -> RunReport {
    let started = Instant::now();
    let config = node.config.compaction.to_config();
    let manifest = &node.manifest;
    let mut report = RunReport::default();
    match retention_pass(manifest, metrics) {
        Ok(r) => report.retention = r,
        Err(e) => report.errors.push(format!("retention: {e}")),
    }
    let only = scope.and_then(|s| {
        s.database
            .as_deref()
            .map(|db| (db, s.measurement.as_deref()))
    });
    let jobs = compact::plan(&manifest.files(), &config, now_ns(), only, force);
    let mut limit = RateLimit::new(config.bytes_per_second);
    for job in &jobs {
        if node.is_shutting_down() {
            break;
        }
        let may_commit = commit_check(node);
        let result = compact::run_job(
            &node.store,
            manifest,
            job,
            &config,
            &mut limit,
            &*may_commit,
        );
        metrics.count_job(&result);
        match result {
            Ok(j) => {
                tracing::info!(database = %j.database, measurement = %j.measurement, hour = j.hour, shard = j.shard, files_before = j.files_before, files_after = j.files_after, bytes_before = j.bytes_before, bytes_after = j.bytes_after, rows_deduplicated = j.rows_deduplicated, seconds = j.seconds, "compacted a partition");
                report.files_before += j.files_before;
                report.files_after += j.files_after;
                report.bytes_before += j.bytes_before;
                report.bytes_after += j.bytes_after;
                report.rows_deduplicated += j.rows_deduplicated;
                report.jobs.push(j);
            }
            Err(e) => {
                let p = &job.partition;
                tracing::warn!(database = %p.database, measurement = %p.measurement, hour = p.hour, shard = %p.shard, error = %e, "compaction job failed");
                report.errors.push(format!(
                    "{}.{} hour {} shard {}: {e}",
                    p.database, p.measurement, p.hour, p.shard
                ));
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Starts the storage thread; it ends when the node shuts down.
pub fn start(
    node: Arc<NodeShared>,
    parts: StorageParts,
    metrics: Arc<StorageMetrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tidemark-compact".into())
        .spawn(move || {
            let nice = node.config.compaction.nice;
            if nice != 0 {
                if let Err(e) = tidemark_shards::flush::set_thread_nice(nice) {
                    tracing::warn!(nice, error = %e, "cannot renice the compaction thread");
                }
            }
            let compact_every = parse_duration(&node.config.compaction.check_interval)
                .unwrap_or(Duration::from_secs(60));
            let retain_every = parse_duration(&node.config.retention.check_interval)
                .unwrap_or(Duration::from_secs(60));
            let mut next_compact = Instant::now() + compact_every;
            let mut next_retain = Instant::now() + retain_every;
            let tick = Duration::from_millis(100);
            while !node.is_shutting_down() {
                sync_retention(&node);
                match parts.rx.recv_timeout(tick) {
                    Ok(req) => {
                        let report = run_once(&node, &metrics, Some(&req.scope), true);
                        let _ = req.reply.send(report);
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                }
                let now = Instant::now();
                if node.config.compaction.enabled && now >= next_compact {
                    run_once(&node, &metrics, None, false);
                    next_compact = Instant::now() + compact_every;
                    next_retain = next_retain.max(Instant::now());
                } else if now >= next_retain {
                    let _ = retention_pass(&node.manifest, &metrics);
                    next_retain = Instant::now() + retain_every;
                }
            }
        })
}
