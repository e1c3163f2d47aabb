//! The query pool: DataFusion on a dedicated tokio runtime, fed from shard
//! cores without blocking their event loops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use object_store::local::LocalFileSystem;
use tidemark_shards::buffer::{pad_to_schema, TableSnapshot};
use tidemark_shards::manifest::Manifest;
use tidemark_shards::schema::{TableKey, TableSchema};
use tidemark_shards::{Catalog, ShardId, WalSeq};

use super::json;
use super::table::{MeasurementTable, QueryCatalog};
use crate::config::QuerySettings;

/// A query pool's request to a shard core: a snapshot of one table.
#[derive(Debug)]
pub struct SnapshotRequest {
    pub table: TableKey,
    pub reply: oneshot::Sender<ShardTable>,
}

/// A shard core's answer.
#[derive(Debug)]
pub struct ShardTable {
    pub shard: ShardId,
    pub snapshot: Option<TableSnapshot>,
    /// The shard's last applied entry when the snapshot was taken.
    pub applied_seq: WalSeq,
}

/// How to encode a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Arc's JSON shape.
    Json,
    /// An Arrow IPC stream, optionally with compressed buffers.
    Arrow(Option<arrow_ipc::CompressionType>),
}

/// An encoded query result or error, ready to send.
#[derive(Debug)]
pub struct QueryOutput {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct QueryEngine {
    me: Weak<QueryEngine>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    env: Arc<RuntimeEnv>,
    store_url: ObjectStoreUrl,
    catalog: Arc<Catalog>,
    manifest: Arc<Manifest>,
    snapshots: Vec<mpsc::Sender<SnapshotRequest>>,
    settings: QuerySettings,
    pub files_pruned: AtomicU64,
    pub files_scanned: AtomicU64,
    /// Per table, files a merge found to hold no point twice among them
    /// (see `super::dedup::Verified`).
    pub verified: Mutex<HashMap<TableKey, super::dedup::Verified>>,
    /// Queries executing on the pool now.
    pub running: AtomicI64,
}

/// Counts a query as running for as long as it lives (an aborted query's
/// future is dropped, so it stops counting too).
struct Running<'a>(&'a AtomicI64);

impl<'a> Running<'a> {
    fn new(c: &'a AtomicI64) -> Running<'a> {
        c.fetch_add(1, Ordering::Relaxed);
        Running(c)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Aborts the query task if the waiting side goes away (client disconnect).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Failure {
    Client(String),
    TooManyRows(usize),
    Server(String),
}

fn classify(e: DataFusionError, planning: bool) -> Failure {
    let msg = e.strip_backtrace();
    match e {
        DataFusionError::ResourcesExhausted(_) => Failure::Server(msg),
        _ if planning => Failure::Client(msg),
        DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => Failure::Client(msg),
        _ => Failure::Server(msg),
    }
}

impl QueryEngine {
    /// Starts the pool. `parquet_root` is the local directory of the files.
    pub fn start(
        settings: QuerySettings,
        parquet_root: &std::path::Path,
        catalog: Arc<Catalog>,
        manifest: Arc<Manifest>,
        snapshots: Vec<mpsc::Sender<SnapshotRequest>>,
    ) -> anyhow::Result<Arc<QueryEngine>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads)
            .thread_name("tidemark-query")
            .enable_time()
            .build()?;
        let env = RuntimeEnvBuilder::new()
            .with_memory_limit(settings.memory_limit_bytes as usize, 1.0)
            .build_arc()?;
        let store_url = ObjectStoreUrl::parse("tidemark://store")?;
        env.register_object_store(
            store_url.as_ref(),
            Arc::new(LocalFileSystem::new_with_prefix(parquet_root)?),
        );
        let handle = runtime.handle().clone();
        Ok(Arc::new_cyclic(|me| QueryEngine {
            me: me.clone(),
            runtime: Mutex::new(Some(runtime)),
            handle,
            env,
            store_url,
            catalog,
            manifest,
            snapshots,
            settings,
            files_pruned: AtomicU64::new(0),
            files_scanned: AtomicU64::new(0),
            verified: Mutex::new(HashMap::new()),
            running: AtomicI64::new(0),
        }))
    }

    fn arc(&self) -> Arc<QueryEngine> {
        self.me
            .upgrade()
            .expect("the engine is alive while it runs queries")
    }

    /// Stops the pool's threads (at shutdown, from a non-tokio thread).
    pub fn shutdown(&self) {
        if let Some(rt) = self.runtime.lock().expect("runtime lock").take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The files of `key` verified to hold no point twice among them, of
    /// the table's current `files` (forgetting files no longer there).
    pub fn verified_files(
        &self,
        key: &TableKey,
        files: &[tidemark_shards::manifest::FileMeta],
    ) -> super::dedup::Verified {
        let mut all = self.verified.lock().expect("verified lock");
        let v = all.entry(key.clone()).or_default();
        v.retain_listed(files);
        v.clone()
    }

    /// A merge over `checked` (with every file they share times with, of
    /// `files`, verified or checked) found no point twice: remember them.
    pub fn verify_files(
        &self,
        key: &TableKey,
        checked: &[tidemark_shards::manifest::FileMeta],
        files: &[tidemark_shards::manifest::FileMeta],
    ) {
        let mut all = self.verified.lock().expect("verified lock");
        all.entry(key.clone()).or_default().add(checked, files);
    }

    pub fn count_pruning(&self, pruned: u64, scanned: u64) {
        self.files_pruned.fetch_add(pruned, Ordering::Relaxed);
        self.files_scanned.fetch_add(scanned, Ordering::Relaxed);
    }

    /// Builds the table of `key` for one query: snapshots of every shard's
    /// buffer first, then the manifest's files and watermarks (read together);
    /// a flushing set the manifest already has in files is left out, so no
    /// row is seen twice and none is missed.
    pub async fn measurement(
        &self,
        key: &TableKey,
        schema: TableSchema,
    ) -> Result<MeasurementTable, DataFusionError> {
        let mut replies = Vec::with_capacity(self.snapshots.len());
        for tx in &self.snapshots {
            let (reply, rx) = oneshot::channel();
            tx.clone()
                .send(SnapshotRequest {
                    table: key.clone(),
                    reply,
                })
                .await
                .map_err(|_| DataFusionError::Execution("a shard core has stopped".into()))?;
            replies.push(rx);
        }
        let mut shards = Vec::with_capacity(replies.len());
        for rx in replies {
            shards.push(
                rx.await
                    .map_err(|_| DataFusionError::Execution("a shard core has stopped".into()))?,
            );
        }
        let (files, flushed, pins) = self
            .manifest
            .table_files_pinned(key.database(), key.measurement());
        let mut mem = Vec::new();
        let mut mem_shards = Vec::new();
        for s in shards {
            let Some(t) = s.snapshot else { continue };
            let watermark = flushed.get(&s.shard).copied().unwrap_or(WalSeq::ZERO);
            // In write order: the flushing set, then the live rows. Live
            // rows are of entries after the flushing set; if the files
            // already cover every applied entry (a replication reader's
            // bootstrap swapped the shard meanwhile), they are in the files.
            let mut batches: Vec<&RecordBatch> = Vec::new();
            if t.flushing_upto.is_some_and(|u| u > watermark) {
                batches.extend(&t.flushing);
            }
            if s.applied_seq > watermark {
                batches.extend(&t.live);
            }
            for b in batches.into_iter().filter(|b| b.num_rows() > 0) {
                mem.push(pad_to_schema(b, &schema));
                mem_shards.push(s.shard);
            }
        }
        Ok(MeasurementTable {
            key: key.clone(),
            schema: schema.arrow().clone(),
            table_schema: schema.clone(),
            store_url: self.store_url.clone(),
            files,
            mem,
            mem_shards,
            pins: Arc::new(pins),
            engine: self.arc(),
        })
    }

    fn session(&self, database: &str) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema("tidemark", database)
            .with_information_schema(false)
            .with_target_partitions(self.settings.threads.max(1));
        let opts = config.options_mut();
        // Row groups and pages are still pruned by their statistics; row-level
        // filter pushdown is off: at 10M rows it made a non-selective
        // `WHERE usage_user > 90` count 45 ms against 26 ms without it
        // (perf/results/2026-11-26-*-query.md), and no query got slower.
        opts.execution.parquet.pushdown_filters = false;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(Arc::clone(&self.env))
            .with_default_features()
            .with_table_function_list(vec![])
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_udf(super::date_trunc::UtcDateTrunc::udf());
        ctx.register_catalog("tidemark", Arc::new(QueryCatalog { engine: self.arc() }));
        ctx
    }

    /// Runs `sql` against `database` on the pool and encodes the result.
    /// Dropping the returned future cancels the query.
    pub async fn run(&self, sql: String, database: String, format: OutputFormat) -> QueryOutput {
        let engine = self.arc();
        let task = self
            .handle
            .spawn(async move { engine.execute(&sql, &database, format).await });
        let _abort = AbortOnDrop(task.abort_handle());
        // The pool enforces the timeout itself, but an operator that never
        // yields to the runtime would hold it up: the caller's own timer
        // answers in time regardless (and the drop guard aborts the task).
        let limit = Duration::from_millis(self.settings.timeout_ms) + Duration::from_millis(250);
        monoio::select! {
            joined = task => match joined {
                Ok(out) => out,
                Err(e) => error_output(500, &format!("query task failed: {e}"), format, 0, chrono::Utc::now()),
            },
            _ = monoio::time::sleep(limit) => error_output(
                504,
                &format!("query timed out after {} ms (query.timeout_ms)", self.settings.timeout_ms),
                format,
                limit.as_millis(),
                chrono::Utc::now(),
            ),
        }
    }

    async fn execute(&self, sql: &str, database: &str, format: OutputFormat) -> QueryOutput {
        let _running = Running::new(&self.running);
        let started = chrono::Utc::now();
        let start = Instant::now();
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let max_rows = self.settings.max_rows;
        let ctx = self.session(database);
        let run = async {
            let read_only = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let df = ctx
                .sql_with_options(sql, read_only)
                .await
                .map_err(|e| classify(e, true))?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await.map_err(|e| classify(e, false))?;
            let mut batches: Vec<RecordBatch> = Vec::new();
            let mut rows = 0usize;
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| classify(e, false))?;
                rows += b.num_rows();
                if rows > max_rows {
                    return Err(Failure::TooManyRows(max_rows));
                }
                batches.push(b);
            }
            Ok((schema, batches))
        };
        let result = tokio::time::timeout(timeout, run).await;
        let ms = start.elapsed().as_millis();
        match result {
            Ok(Ok((schema, batches))) => encode(format, &schema, &batches, ms, started),
            Ok(Err(Failure::Client(m))) => error_output(400, &m, format, ms, started),
            Ok(Err(Failure::TooManyRows(n))) => error_output(
                400,
                &format!("the result has more than {n} rows (query.max_rows); add a LIMIT or narrow the query"),
                format,
                ms,
                started,
            ),
            Ok(Err(Failure::Server(m))) => error_output(500, &m, format, ms, started),
            Err(_) => error_output(
                504,
                &format!("query timed out after {} ms (query.timeout_ms)", timeout.as_millis()),
                format,
                ms,
                started,
            ),
        }
    }
}

fn encode(
    format: OutputFormat,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    ms: u128,
    started: chrono::DateTime<chrono::Utc>,
) -> QueryOutput {
    match format {
        OutputFormat::Json => {
            let mut body =
                Vec::with_capacity(256 + batches.iter().map(|b| b.num_rows() * 64).sum::<usize>());
            json::write_response(&mut body, schema, batches, ms, started);
            QueryOutput {
                status: 200,
                content_type: "application/json",
                body,
            }
        }
        OutputFormat::Arrow(compression) => {
            let write = || -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
                let opts = arrow_ipc::writer::IpcWriteOptions::default()
                    .try_with_compression(compression)?;
                let mut body = Vec::new();
                let mut w =
                    arrow_ipc::writer::StreamWriter::try_new_with_options(&mut body, schema, opts)?;
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
                drop(w);
                Ok(body)
            };
            match write() {
                Ok(body) => QueryOutput {
                    status: 200,
                    content_type: "application/vnd.apache.arrow.stream",
                    body,
                },
                Err(e) => error_output(
                    500,
                    &format!("encoding the result: {e}"),
                    format,
                    ms,
                    started,
                ),
            }
        }
    }
}

fn error_output(
    status: u16,
    message: &str,
    _format: OutputFormat,
    ms: u128,
    started: chrono::DateTime<chrono::Utc>,
) -> QueryOutput {
    QueryOutput {
        status,
        content_type: "application/json",
        body: serde_json::to_vec(&json::error_body(message, ms, started)).expect("JSON serializes"),
    }
}
