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
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use object_store::local::LocalFileSystem;
use tidemark_shards::buffer::{pad_to_schema, TableSnapshot};
use tidemark_shards::manifest::Manifest;
use tidemark_shards::schema::{TableKey, TableSchema};
use tidemark_shards::{Catalog, ShardId, WalSeq};

use super::json;
use super::table::{DatabaseSchema, MeasurementTable, QueryCatalog};
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
    /// A failed query's kind (sent as `x-tidemark-error-kind`).
    pub error: Option<QueryErrorKind>,
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
    /// PostgreSQL sessions of the databases that exist (see
    /// [`Self::pg_context`]).
    pg_contexts: PgContexts,
}

#[derive(Default)]
struct PgContexts(Mutex<HashMap<String, Arc<SessionContext>>>);

impl std::fmt::Debug for PgContexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgContexts")
    }
}

/// Aborts the query task if the waiting side goes away (client disconnect).
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
            pg_contexts: PgContexts::default(),
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

    /// A new session for `database` over HTTP's names: catalog `tidemark`,
    /// one schema per database, `database` the default.
    pub fn session(&self, database: &str) -> SessionContext {
        self.new_session(
            "tidemark",
            database,
            Arc::new(QueryCatalog { engine: self.arc() }),
        )
    }

    /// A new session for `database` with PostgreSQL's names (see
    /// `super::pg_names`): catalog `database`, default schema `public`.
    pub fn pg_session(&self, database: &str) -> SessionContext {
        let catalog = Arc::new(super::pg_names::PgDatabase::new(database, self.arc()));
        self.new_session(database, "public", catalog)
    }

    /// A session whose default catalog is `catalog` (named `catalog_name`)
    /// and default schema `schema`.
    fn new_session(
        &self,
        catalog_name: &str,
        schema: &str,
        catalog: Arc<dyn datafusion::catalog::CatalogProvider>,
    ) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(catalog_name, schema)
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
        ctx.register_catalog(catalog_name, catalog);
        ctx
    }

    /// Runs `sql` against `database` on the pool and encodes the result.
    /// Dropping the returned future cancels the query.
    pub async fn run(
        &self,
        sql: String,
        database: String,
        names: super::remote::Names,
        format: OutputFormat,
    ) -> QueryOutput {
        let engine = self.arc();
        let task = self
            .handle
            .spawn(async move { engine.execute(&sql, &database, names, format).await });
        let _abort = AbortOnDrop(task.abort_handle());
        // The pool enforces the timeout itself, but an operator that never
        // yields to the runtime would hold it up: the caller's own timer
        // answers in time regardless (and the drop guard aborts the task).
        let limit = Duration::from_millis(self.settings.timeout_ms) + Duration::from_millis(250);
        monoio::select! {
            joined = task => match joined {
                Ok(out) => out,
                Err(e) => error_output(QueryErrorKind::Server, &format!("query task failed: {e}"), format, 0, chrono::Utc::now()),
            },
            _ = monoio::time::sleep(limit) => error_output(
                QueryErrorKind::Timeout,
                &self.timed_out().message,
                format,
                limit.as_millis(),
                chrono::Utc::now(),
            ),
        }
    }

    async fn execute(
        &self,
        sql: &str,
        database: &str,
        names: super::remote::Names,
        format: OutputFormat,
    ) -> QueryOutput {
        let started = chrono::Utc::now();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(self.settings.timeout_ms);
        let ctx = match names {
            super::remote::Names::Http => self.session(database),
            super::remote::Names::Postgres => match self.pg_context(database) {
                Ok(c) => (*c).clone(),
                Err(e) => return error_output(e.kind, &e.message, format, 0, started),
            },
        };
        let run = async {
            let plan = self.plan(&ctx, sql, deadline).await?;
            let mut stream = self.limited(&ctx, plan, deadline).await?;
            let schema = stream.schema.clone();
            let mut batches: Vec<RecordBatch> = Vec::new();
            while let Some(b) = stream.next().await {
                batches.push(b?);
            }
            Ok::<_, QueryError>((schema, batches))
        };
        let result = run.await;
        let ms = start.elapsed().as_millis();
        match result {
            Ok((schema, batches)) => encode(format, &schema, &batches, ms, started),
            Err(e) => error_output(e.kind, &e.message, format, ms, started),
        }
    }

    /// Plans `sql` in `ctx` under the read-only rules (no DDL, no DML, no
    /// `SET`), by `deadline`.
    pub async fn plan(
        &self,
        ctx: &SessionContext,
        sql: &str,
        deadline: Instant,
    ) -> Result<LogicalPlan, QueryError> {
        self.read_only_plan(ctx.state().create_logical_plan(sql), deadline)
            .await
    }

    /// [`Self::plan`] for a statement parsed already (by a protocol's own
    /// parser).
    pub async fn plan_statement(
        &self,
        ctx: &SessionContext,
        statement: datafusion::sql::sqlparser::ast::Statement,
        deadline: Instant,
    ) -> Result<LogicalPlan, QueryError> {
        let statement = datafusion::sql::parser::Statement::Statement(Box::new(statement));
        let state = ctx.state();
        self.read_only_plan(state.statement_to_plan(statement), deadline)
            .await
    }

    async fn read_only_plan(
        &self,
        planning: impl std::future::Future<Output = Result<LogicalPlan, DataFusionError>>,
        deadline: Instant,
    ) -> Result<LogicalPlan, QueryError> {
        let checked = async {
            let plan = planning.await?;
            read_only().verify_plan(&plan)?;
            Ok::<_, DataFusionError>(plan)
        };
        match tokio::time::timeout_at(deadline.into(), checked).await {
            Ok(r) => r.map_err(|e| QueryError::from_datafusion(e, true)),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// Runs `plan` (planned in `ctx`, parameters bound) on the pool under
    /// the query limits: the stream ends in an error past `query.max_rows`
    /// rows or at `deadline`, and counts as a running query while it lives.
    /// Batches come through a channel of one batch: the pool computes ahead
    /// of the client by no more than that, and waits for a slow client
    /// rather than buffering. Dropping the stream cancels the query.
    ///
    /// Protocol servers call this from their own threads, so a query that
    /// keeps every pool thread busy never holds up their sockets (a cancel
    /// request is a new connection).
    pub async fn stream(
        &self,
        ctx: &SessionContext,
        plan: LogicalPlan,
        deadline: Instant,
    ) -> Result<ResultStream, QueryError> {
        let engine = self.arc();
        let ctx = ctx.clone();
        let (first_tx, first_rx) = oneshot::channel();
        let (mut tx, rx) = mpsc::channel(1);
        let task = self.handle.spawn(async move {
            let mut batches = match engine.limited(&ctx, plan, deadline).await {
                Ok(s) => {
                    let _ = first_tx.send(Ok(s.schema.clone()));
                    s
                }
                Err(e) => {
                    let _ = first_tx.send(Err(e));
                    return;
                }
            };
            while let Some(item) = batches.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        let abort = AbortOnDrop(task.abort_handle());
        let schema = match tokio::time::timeout_at(deadline.into(), first_rx).await {
            Ok(started) => started
                .map_err(|_| QueryError::new(QueryErrorKind::Server, "the query task stopped"))??,
            Err(_) => return Err(self.timed_out()),
        };
        Ok(ResultStream {
            schema,
            batches: rx,
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
            timeout_ms: self.settings.timeout_ms,
            done: false,
            _abort: abort,
        })
    }

    /// [`Self::stream`] on the calling task.
    async fn limited(
        &self,
        ctx: &SessionContext,
        plan: LogicalPlan,
        deadline: Instant,
    ) -> Result<LimitedStream, QueryError> {
        let running = RunningQuery::new(self.arc());
        let start = async {
            read_only().verify_plan(&plan)?;
            let df = ctx.execute_logical_plan(plan).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let stream = df.execute_stream().await?;
            Ok::<_, DataFusionError>((schema, stream))
        };
        let (schema, inner) = match tokio::time::timeout_at(deadline.into(), start).await {
            Ok(r) => r.map_err(|e| QueryError::from_datafusion(e, false))?,
            Err(_) => return Err(self.timed_out()),
        };
        Ok(LimitedStream {
            schema,
            inner,
            rows: 0,
            max_rows: self.settings.max_rows,
            timeout_ms: self.settings.timeout_ms,
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
            done: false,
            _running: running,
        })
    }

    fn timed_out(&self) -> QueryError {
        timed_out(self.settings.timeout_ms)
    }

    pub fn settings(&self) -> &QuerySettings {
        &self.settings
    }

    /// The PostgreSQL session of `database` (`super::pg_names::new_context`),
    /// kept for the databases that exist (its tables are still built per
    /// query); a name no data has yet gets a new one each time, so clients
    /// naming databases at will cannot grow the cache.
    pub fn pg_context(&self, database: &str) -> Result<Arc<SessionContext>, QueryError> {
        tidemark_shards::schema::validate_database_name(database)
            .map_err(|e| QueryError::new(QueryErrorKind::Client, e.to_string()))?;
        if let Some(c) = self
            .pg_contexts
            .0
            .lock()
            .expect("pg contexts lock")
            .get(database)
        {
            return Ok(c.clone());
        }
        let ctx = super::pg_names::new_context(self, database)
            .map(Arc::new)
            .map_err(|e| {
                QueryError::new(
                    QueryErrorKind::Server,
                    format!("setting up pg_catalog: {}", e.strip_backtrace()),
                )
            })?;
        if self.databases().iter().any(|d| d == database) {
            self.pg_contexts
                .0
                .lock()
                .expect("pg contexts lock")
                .insert(database.to_string(), ctx.clone());
        }
        Ok(ctx)
    }

    /// The tables of `database`, built per query.
    pub fn database_schema(&self, database: &str) -> Arc<dyn datafusion::catalog::SchemaProvider> {
        Arc::new(DatabaseSchema::new(database, self.arc()))
    }

    /// Every database that has a table.
    pub fn databases(&self) -> Vec<String> {
        let mut dbs: Vec<String> = self
            .catalog
            .tables()
            .into_iter()
            .map(|(k, _)| k.database().to_string())
            .collect();
        dbs.sort();
        dbs.dedup();
        dbs
    }
}

/// The rules every protocol's queries run under: no DDL, no DML, no
/// statements that change the session.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

fn timed_out(timeout_ms: u64) -> QueryError {
    QueryError::new(
        QueryErrorKind::Timeout,
        format!("query timed out after {timeout_ms} ms (query.timeout_ms)"),
    )
}

/// What made a query fail, for each protocol to map to its own codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryErrorKind {
    /// The query is wrong (planning, or a value it cannot compute).
    Client,
    /// More rows than `query.max_rows`.
    TooManyRows,
    /// Past `query.timeout_ms`.
    Timeout,
    /// Past the pool's memory limit.
    Resources,
    /// A fault of the node.
    Server,
}

impl QueryErrorKind {
    /// Its name in `x-tidemark-error-kind` (answers of the HTTP query
    /// endpoints, read by nodes that forwarded the query).
    pub fn name(self) -> &'static str {
        match self {
            QueryErrorKind::Client => "client",
            QueryErrorKind::TooManyRows => "too_many_rows",
            QueryErrorKind::Timeout => "timeout",
            QueryErrorKind::Resources => "resources",
            QueryErrorKind::Server => "server",
        }
    }

    pub fn parse(name: &str) -> Option<QueryErrorKind> {
        [
            QueryErrorKind::Client,
            QueryErrorKind::TooManyRows,
            QueryErrorKind::Timeout,
            QueryErrorKind::Resources,
            QueryErrorKind::Server,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    pub fn http_status(self) -> u16 {
        match self {
            QueryErrorKind::Client | QueryErrorKind::TooManyRows => 400,
            QueryErrorKind::Timeout => 504,
            QueryErrorKind::Resources | QueryErrorKind::Server => 500,
        }
    }
}

/// A failed query: what kind of failure, and a message for the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub kind: QueryErrorKind,
    pub message: String,
}

impl QueryError {
    pub fn new(kind: QueryErrorKind, message: impl Into<String>) -> QueryError {
        QueryError {
            kind,
            message: message.into(),
        }
    }

    pub fn from_datafusion(e: DataFusionError, planning: bool) -> QueryError {
        let message = e.strip_backtrace();
        let kind = match e {
            DataFusionError::ResourcesExhausted(_) => QueryErrorKind::Resources,
            _ if planning => QueryErrorKind::Client,
            DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => {
                QueryErrorKind::Client
            }
            _ => QueryErrorKind::Server,
        };
        QueryError { kind, message }
    }
}

/// Counts a query as running for as long as its stream lives.
#[derive(Debug)]
struct RunningQuery(Arc<QueryEngine>);

impl RunningQuery {
    fn new(engine: Arc<QueryEngine>) -> RunningQuery {
        engine.running.fetch_add(1, Ordering::Relaxed);
        RunningQuery(engine)
    }
}

impl Drop for RunningQuery {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A query's result batches as the pool produces them (see
/// [`QueryEngine::stream`]). Dropping it cancels the query.
#[derive(Debug)]
pub struct ResultStream {
    schema: SchemaRef,
    batches: mpsc::Receiver<Result<RecordBatch, QueryError>>,
    /// The receiving side keeps the deadline too: an operator that computes
    /// for long without yielding holds up the pool task's own check.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout_ms: u64,
    done: bool,
    _abort: AbortOnDrop,
}

impl ResultStream {
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl futures::Stream for ResultStream {
    type Item = Result<RecordBatch, QueryError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.batches.poll_next_unpin(cx) {
            Poll::Ready(item) => {
                this.done = !matches!(item, Some(Ok(_)));
                Poll::Ready(item)
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.done = true;
                    return Poll::Ready(Some(Err(timed_out(this.timeout_ms))));
                }
                Poll::Pending
            }
        }
    }
}

/// A query's result batches as DataFusion produces them, under the
/// limits, on the pool.
struct LimitedStream {
    schema: SchemaRef,
    inner: SendableRecordBatchStream,
    rows: usize,
    max_rows: usize,
    timeout_ms: u64,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    done: bool,
    _running: RunningQuery,
}

impl futures::Stream for LimitedStream {
    type Item = Result<RecordBatch, QueryError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(timed_out(this.timeout_ms))));
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(QueryError::from_datafusion(e, false))))
            }
            Poll::Ready(Some(Ok(b))) => {
                this.rows += b.num_rows();
                if this.rows > this.max_rows {
                    this.done = true;
                    return Poll::Ready(Some(Err(QueryError::new(
                        QueryErrorKind::TooManyRows,
                        format!(
                            "the result has more than {} rows (query.max_rows); add a LIMIT or narrow the query",
                            this.max_rows
                        ),
                    ))));
                }
                Poll::Ready(Some(Ok(b)))
            }
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
                error: None,
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
                    error: None,
                },
                Err(e) => error_output(
                    QueryErrorKind::Server,
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
    kind: QueryErrorKind,
    message: &str,
    _format: OutputFormat,
    ms: u128,
    started: chrono::DateTime<chrono::Utc>,
) -> QueryOutput {
    QueryOutput {
        status: kind.http_status(),
        content_type: "application/json",
        body: serde_json::to_vec(&json::error_body(message, ms, started)).expect("JSON serializes"),
        error: Some(kind),
    }
}
