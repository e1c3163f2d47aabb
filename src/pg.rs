//! The PostgreSQL wire protocol on `pg.addr` (off unless set), so psql,
//! psycopg, JDBC, BI tools and Grafana's PostgreSQL data source query
//! tidemark as they would PostgreSQL.
//!
//! The protocol is `pgwire`'s; result encoding (text and binary, every Arrow
//! type) is `arrow-pg`'s; the `pg_catalog` tables and the rewrites of the
//! catalog queries clients send are `datafusion-pg-catalog`'s; `SET`, `SHOW`
//! and transaction statements are answered by `datafusion-postgres`'s hooks.
//! What is tidemark's: every other statement runs through
//! [`QueryEngine::plan_statement`] and [`QueryEngine::stream`], so the
//! same read-only rules, timeout, row limit, memory limit and cancellation
//! hold as over HTTP, on the query pool (never a shard core), and rows
//! stream to the client batch by batch as DataFusion produces them. The
//! connections themselves are served by one thread of their own
//! (`tidemark-pg`), so a pool busy with a long query still answers a
//! cancel request.
//!
//! Names: the connection's database is the tidemark database (as
//! `x-arc-database` is over HTTP; the default when none is given is
//! `http.default_database`); its measurements are tables of schema
//! `public`, and every other database is a schema of the same name, so
//! `SELECT * FROM otherdb.cpu` works as over HTTP.
//!
//! Auth: with `auth.enabled`, a connection must send one of the API tokens
//! as its password (cleartext password auth; use TLS); the user name is not
//! checked. With auth off, any user and password are accepted. TLS is
//! offered when `tls.cert` and `tls.key` are set (no client certificate is
//! asked of SQL clients).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, ParamValues};
use datafusion::logical_expr::{ColumnarValue, LogicalPlan, ScalarUDF, Volatility};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::{arrow_pg, pgwire};
use futures::channel::oneshot;
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type, METADATA_DATABASE, METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;

use crate::context::NodeShared;
use crate::query::engine::{QueryError, QueryErrorKind};
use crate::query::remote::{reads_measurements, sql_for, Batches, Names, Remote, Router};

/// The connection's token (auth on), in its metadata.
const TOKEN: &str = "tidemark.token";

/// The PostgreSQL version tidemark answers as (`server_version`,
/// `version()`): clients gate features on it.
const PG_VERSION: &str = "16.6";
const PG_VERSION_NUM: &str = "160006";

/// Binds `pg.addr` and serves it from a thread of its own; the queries run
/// on the query pool (see [`QueryEngine::stream`]).
pub fn start(node: &Arc<NodeShared>) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = node.config.pg.addr.parse()?;
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let tls = tls_acceptor(&node.config.tls)?;
    let handlers = Arc::new(Handlers::new(node.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tracing::info!(%addr, tls = tls.is_some(), "PostgreSQL wire protocol listening");
    std::thread::Builder::new()
        .name("tidemark-pg".into())
        .spawn(move || runtime.block_on(serve(listener, tls, handlers)))?;
    Ok(())
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    handlers: Arc<Handlers>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "PostgreSQL listener");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((socket, _)) => {
                let _ = socket.set_nodelay(true);
                let handlers = handlers.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    handlers.metrics.connections.inc();
                    if let Err(e) =
                        pgwire::tokio::process_socket(socket, tls, handlers.clone()).await
                    {
                        tracing::debug!(error = %e, "PostgreSQL connection ended");
                    }
                    handlers.metrics.connections.dec();
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// TLS for SQL clients when `tls.cert` and `tls.key` are set: the node's
/// certificate, no client certificate asked.
fn tls_acceptor(
    cfg: &crate::config::TlsConfig,
) -> anyhow::Result<Option<pgwire::tokio::TlsAcceptor>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Some(pgwire::tokio::TlsAcceptor::from(Arc::new(config))))
}

/// `tidemark_pg_*` metrics.
#[derive(Debug, Default)]
struct PgMetrics {
    connections: prometheus_client::metrics::gauge::Gauge,
    queries: prometheus_client::metrics::family::Family<
        OutcomeLabel,
        prometheus_client::metrics::counter::Counter,
    >,
    rows: prometheus_client::metrics::counter::Counter,
    auth_failures: prometheus_client::metrics::counter::Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The server's handlers, shared by every connection.
#[derive(Debug)]
struct Handlers {
    service: Arc<QueryService>,
    startup: Arc<Startup>,
    cancels: Arc<Cancels>,
    metrics: Arc<PgMetrics>,
}

impl Handlers {
    fn new(node: Arc<NodeShared>) -> Handlers {
        let metrics = Arc::new(PgMetrics::default());
        let m = metrics.clone();
        node.metrics.register_with(|r| {
            r.register(
                "pg_connections",
                "PostgreSQL wire protocol connections open now",
                m.connections.clone(),
            );
            r.register(
                "pg_queries",
                "Statements run over the PostgreSQL wire protocol, by outcome",
                m.queries.clone(),
            );
            r.register(
                "pg_rows",
                "Rows sent over the PostgreSQL wire protocol",
                m.rows.clone(),
            );
            r.register(
                "pg_auth_failures",
                "PostgreSQL connections refused for a wrong password (token)",
                m.auth_failures.clone(),
            );
        });
        let cancels = Arc::new(Cancels::default());
        Handlers {
            service: Arc::new(QueryService {
                node: node.clone(),
                router: Router::default(),
                parser: Arc::new(Parser {
                    node: node.clone(),
                    contexts: Contexts::default(),
                    sql: PostgresCompatibilityParser::new(),
                }),
                cancels: cancels.clone(),
                metrics: metrics.clone(),
            }),
            startup: Arc::new(Startup {
                tokens: node.config.auth.enabled.then(|| node.tokens.clone()),
                params: server_parameters(),
                keys: RandomPidSecretKeyGenerator::default(),
                metrics: metrics.clone(),
            }),
            cancels,
            metrics,
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancels.clone()
    }
}

fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = format!("{PG_VERSION} (tidemark {})", env!("CARGO_PKG_VERSION"));
    p
}

/// Startup: with auth on, a cleartext password that must be an API token.
struct Startup {
    tokens: Option<Vec<String>>,
    params: DefaultServerParameterProvider,
    keys: RandomPidSecretKeyGenerator,
    metrics: Arc<PgMetrics>,
}

impl Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup")
            .field("auth", &self.tokens.is_some())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.tokens.is_some() {
                    client.set_state(PgWireConnectionState::AuthenticationInProgress);
                    client
                        .send(PgWireBackendMessage::Authentication(
                            Authentication::CleartextPassword,
                        ))
                        .await?;
                } else {
                    self.accept(client).await?;
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let tokens = self.tokens.as_deref().unwrap_or_default();
                if tokens.iter().any(|t| {
                    crate::http::auth::constant_time_eq(t.as_bytes(), pwd.password.as_bytes())
                }) {
                    self.accept(client).await?;
                } else {
                    self.metrics.auth_failures.inc();
                    let user = client
                        .metadata()
                        .get(METADATA_USER)
                        .cloned()
                        .unwrap_or_default();
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "28P01".into(),
                        format!("password authentication failed for user \"{user}\": the password must be one of tidemark's API tokens (auth.tokens)"),
                    ))));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Startup {
    async fn accept<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, key) = self.keys.generate(client);
        client.set_pid_and_secret_key(pid, key);
        finish_authentication(client, &self.params).await
    }
}

/// Cancel requests: per backend pid, the secret key and the cancel signal
/// of the statement running now.
#[derive(Debug, Default)]
struct Cancels {
    running: Mutex<HashMap<i32, (bytes::Bytes, oneshot::Sender<()>)>>,
}

impl Cancels {
    /// A statement of connection `client` starts: the receiver fires when
    /// a cancel request names it.
    fn start(&self, client: &dyn ClientInfo) -> oneshot::Receiver<()> {
        let (pid, key) = client.pid_and_secret_key();
        let (tx, rx) = oneshot::channel();
        self.running
            .lock()
            .expect("cancels lock")
            .insert(pid, (key.to_bytes(), tx));
        rx
    }
}

#[async_trait]
impl CancelHandler for Cancels {
    async fn on_cancel_request(&self, req: CancelRequest) {
        let mut running = self.running.lock().expect("cancels lock");
        if running
            .get(&req.pid)
            .is_some_and(|(key, _)| *key == req.secret_key.to_bytes())
        {
            if let Some((_, tx)) = running.remove(&req.pid) {
                let _ = tx.send(());
            }
        }
    }
}

/// Per database, a session with the `pg_catalog` tables set up (built once:
/// the tables of a session are built per query, see `DatabaseSchema`).
#[derive(Default)]
struct Contexts(Mutex<HashMap<String, Arc<SessionContext>>>);

impl Debug for Contexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Contexts")
    }
}

/// `version()` and `current_setting(name)` as PostgreSQL answers them.
fn pg_udfs() -> [ScalarUDF; 2] {
    let version = format!(
        "PostgreSQL {PG_VERSION} (tidemark {}, Apache DataFusion {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    );
    let version_udf = datafusion::logical_expr::create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::Utf8(Some(version.clone())),
            ))
        }),
    );
    let setting_udf = datafusion::logical_expr::create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let names = ColumnarValue::values_to_arrays(args)?;
            let names = names[0]
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| DataFusionError::Execution("current_setting takes text".into()))?;
            let mut out = Vec::with_capacity(names.len());
            for name in names.iter() {
                out.push(match name {
                    None => None,
                    Some(n) => Some(setting(n).ok_or_else(|| {
                        DataFusionError::Execution(format!(
                            "unrecognized configuration parameter \"{n}\""
                        ))
                    })?),
                });
            }
            Ok(ColumnarValue::Array(
                Arc::new(StringArray::from(out)) as ArrayRef
            ))
        }),
    );
    [version_udf, setting_udf]
}

/// The settings `current_setting` answers.
fn setting(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "search_path" => "public",
        "server_version" => PG_VERSION,
        "server_version_num" => PG_VERSION_NUM,
        "timezone" => "UTC",
        "datestyle" => "ISO, YMD",
        "server_encoding" | "client_encoding" => "UTF8",
        "standard_conforming_strings" => "on",
        "default_transaction_read_only" | "transaction_read_only" => "on",
        "max_identifier_length" => "63",
        "integer_datetimes" => "on",
        _ => return None,
    })
}

/// A parsed statement of the extended protocol.
#[derive(Debug, Clone)]
pub struct Prepared {
    statement: Statement,
    kind: Kind,
    database: String,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A query, planned (with its parameters as placeholders).
    Query(LogicalPlan),
    /// `SET`, `SHOW`, `BEGIN`, `COMMIT`...: answered by the hooks.
    Session,
    /// Refused (DDL, DML...), with this error at execution.
    Refused(String, String),
}

/// Parses and plans statements, per connection database.
#[derive(Debug)]
struct Parser {
    node: Arc<NodeShared>,
    contexts: Contexts,
    sql: PostgresCompatibilityParser,
}

impl Parser {
    fn database(&self, client: &(impl ClientInfo + ?Sized)) -> String {
        client
            .metadata()
            .get(METADATA_DATABASE)
            .filter(|d| !d.is_empty())
            .cloned()
            .unwrap_or_else(|| self.node.config.http.default_database.clone())
    }

    /// The session of `database`, built on first use.
    fn context(&self, database: &str) -> PgWireResult<Arc<SessionContext>> {
        if let Err(e) = tidemark_shards::schema::validate_database_name(database) {
            return Err(user_error("3D000", format!("database \"{database}\": {e}")));
        }
        let mut all = self.contexts.0.lock().expect("contexts lock");
        if let Some(c) = all.get(database) {
            return Ok(c.clone());
        }
        let ctx = self.node.query.pg_session(database);
        setup_pg_catalog(&ctx, database, EmptyContextProvider)
            .map_err(|e| user_error("XX000", format!("setting up pg_catalog: {e}")))?;
        for udf in pg_udfs() {
            ctx.register_udf(udf);
        }
        let ctx = Arc::new(ctx);
        all.insert(database.to_string(), ctx.clone());
        Ok(ctx)
    }

    fn parse(&self, sql: &str) -> PgWireResult<Vec<Statement>> {
        self.sql
            .parse(sql)
            .map_err(|e| user_error("42601", format!("syntax error: {e}")))
    }

    /// What `statement` is, planned in `database`'s session if a query.
    async fn prepare(&self, statement: Statement, database: String) -> PgWireResult<Prepared> {
        let kind = match classify(&statement) {
            Class::Query => {
                let ctx = self.context(&database)?;
                let deadline = Instant::now() + self.timeout();
                let plan = self
                    .node
                    .query
                    .plan_statement(&ctx, statement.clone(), deadline)
                    .await
                    .map_err(pg_error)?;
                Kind::Query(plan)
            }
            Class::Session => Kind::Session,
            Class::Refused(what) => Kind::Refused(
                "25006".into(),
                format!("cannot execute {what}: tidemark's SQL is read-only (write with the line protocol or MessagePack endpoints over HTTP)"),
            ),
        };
        Ok(Prepared {
            statement,
            kind,
            database,
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.node.query.settings().timeout_ms)
    }
}

/// What a statement is to tidemark.
#[derive(Debug, PartialEq)]
enum Class {
    Query,
    Session,
    Refused(String),
}

fn classify(statement: &Statement) -> Class {
    match statement {
        Statement::Query(_)
        | Statement::Explain { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. } => Class::Query,
        Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => Class::Session,
        other => {
            // The statement's leading keywords name it (`CREATE TABLE`, `INSERT`).
            let text = other.to_string();
            let what: Vec<&str> = text
                .split_whitespace()
                .take_while(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
                .take(2)
                .collect();
            Class::Refused(what.join(" ").to_ascii_uppercase())
        }
    }
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message,
    )))
}

/// A query failure as a PostgreSQL error with its SQLSTATE.
fn pg_error(e: QueryError) -> PgWireError {
    let code = match e.kind {
        QueryErrorKind::Client => client_code(&e.message),
        QueryErrorKind::TooManyRows => "54000",
        QueryErrorKind::Timeout | QueryErrorKind::Cancelled => "57014",
        QueryErrorKind::Resources => "53200",
        QueryErrorKind::Server => "XX000",
    };
    user_error(code, e.message)
}

/// The SQLSTATE of a query's own error, from DataFusion's message.
fn client_code(message: &str) -> &'static str {
    if message.contains("not found") && message.contains("table") {
        "42P01"
    } else if message.contains("No field named") || message.contains("Schema error") {
        "42703"
    } else if message.contains("SQL error") || message.contains("ParserError") {
        "42601"
    } else if message.contains("DDL not supported")
        || message.contains("DML not supported")
        || message.contains("Statement not supported")
    {
        "25006"
    } else {
        "42000"
    }
}

/// Runs statements: queries through the engine, session statements
/// through the hooks.
#[derive(Debug)]
struct QueryService {
    node: Arc<NodeShared>,
    router: Router,
    parser: Arc<Parser>,
    cancels: Arc<Cancels>,
    metrics: Arc<PgMetrics>,
}

impl QueryService {
    fn outcome(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.metrics
            .queries
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Runs a planned query and streams its rows, encoded as `format`.
    /// Runs a planned query and streams its rows, encoded as `format`:
    /// here, or (in a cluster) on the node `routing.queries` picks.
    /// `statement` is the query as parsed; `bound` says its plan had
    /// parameters, now bound (the text then no longer says all of it).
    async fn run(
        &self,
        client: &(dyn ClientInfo + Send + Sync),
        database: &str,
        statement: &Statement,
        plan: LogicalPlan,
        bound: bool,
        format: &Format,
    ) -> PgWireResult<Response> {
        if !self.node.is_ready() {
            return Err(user_error(
                "57P03",
                "the node is not ready (recovering or shutting down)".into(),
            ));
        }
        let deadline = Instant::now() + self.parser.timeout();
        let target = if reads_measurements(&plan) {
            self.router.route(&self.node).map_err(pg_error)?
        } else {
            None
        };
        let (schema, batches): (_, Batches) = match target {
            None => {
                let ctx = self.parser.context(database)?;
                let stream = self
                    .node
                    .query
                    .stream(&ctx, plan, deadline)
                    .await
                    .map_err(pg_error)?;
                (stream.schema(), Box::pin(stream))
            }
            Some(target) => {
                let sql = sql_for(&statement.to_string(), &plan, bound).map_err(pg_error)?;
                let remote = Remote {
                    sql: &sql,
                    database,
                    names: Names::Postgres,
                    token: client.metadata().get(TOKEN).map(String::as_str),
                };
                let (schema, batches) = self
                    .router
                    .fetch(&self.node, &target, remote, deadline)
                    .await
                    .map_err(pg_error)?;
                (
                    schema,
                    Box::pin(futures::stream::iter(batches.into_iter().map(Ok))),
                )
            }
        };
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, Some(options))?);
        let cancel = self.cancels.start(client);
        let rows = Rows {
            stream: batches,
            cancel,
            fields: fields.clone(),
            rows: None,
            metrics: self.metrics.clone(),
            done: false,
        };
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }

    /// Answers a `SET`/`SHOW`/transaction statement with the hooks.
    async fn session<C>(
        &self,
        client: &mut C,
        statement: &Statement,
        database: &str,
    ) -> PgWireResult<Response>
    where
        C: HookClient,
    {
        let ctx = self.parser.context(database)?;
        // SHOW of a setting tidemark knows (`SHOW search_path`).
        if let Statement::ShowVariable { variable } = statement {
            let name = variable
                .iter()
                .map(|v| v.value.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            if let Some(v) = setting(&name) {
                return Ok(Response::Query(single_value(&name, v)?));
            }
        }
        let hooks: [&dyn QueryHook; 2] = [&SetShowHook, &TransactionStatementHook];
        for hook in hooks {
            if let Some(r) = hook.handle_simple_query(statement, &ctx, client).await {
                return r;
            }
        }
        Err(user_error("0A000", format!("{statement} is not supported")))
    }
}

fn single_value(name: &str, value: &str) -> PgWireResult<QueryResponse> {
    use pgwire::api::results::{DataRowEncoder, FieldFormat};
    let fields = Arc::new(vec![FieldInfo::new(
        name.to_string(),
        None,
        None,
        Type::TEXT,
        FieldFormat::Text,
    )]);
    let mut encoder = DataRowEncoder::new(fields.clone());
    encoder.encode_field(&Some(value))?;
    let row = encoder.take_row();
    Ok(QueryResponse::new(
        fields,
        futures::stream::once(async move { Ok(row) }),
    ))
}

/// A query's rows, encoded batch by batch as they come; ends early on a
/// cancel request.
struct Rows {
    stream: Batches,
    cancel: oneshot::Receiver<()>,
    fields: Arc<Vec<FieldInfo>>,
    rows: Option<Box<dyn Iterator<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send>>,
    metrics: Arc<PgMetrics>,
    done: bool,
}

impl Stream for Rows {
    type Item = PgWireResult<pgwire::messages::data::DataRow>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some(rows) = &mut this.rows {
                match rows.next() {
                    Some(row) => {
                        this.metrics.rows.inc();
                        return Poll::Ready(Some(row));
                    }
                    None => this.rows = None,
                }
            }
            if let Poll::Ready(Ok(())) = this.cancel.poll_unpin(cx) {
                this.done = true;
                return Poll::Ready(Some(Err(user_error(
                    "57014",
                    "canceling statement due to user request".into(),
                ))));
            }
            match this.stream.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(pg_error(e))));
                }
                Poll::Ready(Some(Ok(batch))) => {
                    this.rows = Some(encode_recordbatch(this.fields.clone(), batch));
                }
            }
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for QueryService {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self.parser.parse(query)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let database = self.parser.database(client);
        let mut out = Vec::with_capacity(statements.len());
        for statement in statements {
            let r = match self.parser.prepare(statement, database.clone()).await {
                Err(e) => Err(e),
                Ok(p) => match p.kind {
                    Kind::Query(plan) => {
                        self.run(
                            client,
                            &database,
                            &p.statement,
                            plan,
                            false,
                            &Format::UnifiedText,
                        )
                        .await
                    }
                    Kind::Session => self.session(client, &p.statement, &database).await,
                    Kind::Refused(code, message) => Err(user_error(&code, message)),
                },
            };
            self.outcome(r.is_ok());
            // A failed statement ends the query string, as in PostgreSQL.
            match r {
                Ok(resp) => out.push(resp),
                Err(PgWireError::UserError(e)) => {
                    out.push(Response::Error(e));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = self.parse(sql)?;
        if statements.is_empty() {
            return Ok(None);
        }
        if statements.len() > 1 {
            return Err(user_error(
                "42601",
                "cannot insert multiple commands into a prepared statement".into(),
            ));
        }
        let database = self.database(client);
        Ok(Some(self.prepare(statements.remove(0), database).await?))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        let Kind::Query(plan) = &stmt.kind else {
            return Ok(vec![]);
        };
        parameter_types(plan)?
            .into_iter()
            .map(|t| match t {
                Some(t) => arrow_pg::datatypes::into_pg_type(&t),
                None => Ok(Type::UNKNOWN),
            })
            .collect()
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.kind {
            Kind::Query(plan) => arrow_schema_to_pg_fields(
                plan.schema().as_arrow(),
                format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            Kind::Session => {
                if matches!(stmt.statement, Statement::ShowVariable { .. }) {
                    Ok(vec![FieldInfo::new(
                        "setting".into(),
                        None,
                        None,
                        Type::TEXT,
                        pgwire::api::results::FieldFormat::Text,
                    )])
                } else {
                    Ok(vec![])
                }
            }
            Kind::Refused(..) => Ok(vec![]),
        }
    }
}

/// The plan's parameters `$1`, `$2`, ... in order, with the types
/// DataFusion inferred (if it could).
fn parameter_types(plan: &LogicalPlan) -> PgWireResult<Vec<Option<DataType>>> {
    let types = plan
        .get_parameter_types()
        .map_err(|e| user_error("42P18", e.strip_backtrace()))?;
    let mut numbered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(k, v)| {
            k.trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .map(|n| (n, v))
        })
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    Ok(numbered.into_iter().map(|(_, t)| t).collect())
}

#[async_trait]
impl ExtendedQueryHandler for QueryService {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let p = &portal.statement.statement;
        let r = match &p.kind {
            Kind::Query(plan) => {
                let types = parameter_types(plan)?;
                let refs: Vec<Option<&DataType>> = types.iter().map(Option::as_ref).collect();
                let params: ParamValues =
                    arrow_pg::datatypes::df::deserialize_parameters(portal, &refs)?;
                match plan.clone().replace_params_with_values(&params) {
                    Ok(plan) => {
                        self.run(
                            client,
                            &p.database,
                            &p.statement,
                            plan,
                            !types.is_empty(),
                            &portal.result_column_format,
                        )
                        .await
                    }
                    Err(e) => Err(user_error("22023", e.strip_backtrace())),
                }
            }
            Kind::Session => self.session(client, &p.statement, &p.database).await,
            Kind::Refused(code, message) => Err(user_error(code, message.clone())),
        };
        self.outcome(r.is_ok());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(sql: &str) -> Class {
        let p = PostgresCompatibilityParser::new();
        classify(&p.parse(sql).expect("parses").remove(0))
    }

    #[test]
    fn queries_run_and_everything_that_writes_is_refused() {
        assert_eq!(class("SELECT 1"), Class::Query);
        assert_eq!(class("EXPLAIN SELECT * FROM cpu"), Class::Query);
        assert_eq!(class("SET search_path = public"), Class::Session);
        assert_eq!(class("BEGIN"), Class::Session);
        assert_eq!(class("SHOW server_version"), Class::Session);
        assert_eq!(
            class("CREATE TABLE t (a int)"),
            Class::Refused("CREATE TABLE".into())
        );
        assert_eq!(
            class("INSERT INTO cpu VALUES (1)"),
            Class::Refused("INSERT INTO".into())
        );
        assert_eq!(class("DROP TABLE cpu"), Class::Refused("DROP TABLE".into()));
        assert_eq!(
            class("DELETE FROM cpu"),
            Class::Refused("DELETE FROM".into())
        );
    }

    #[test]
    fn query_errors_keep_their_sqlstate() {
        let code = |kind, m: &str| match pg_error(QueryError::new(kind, m)) {
            PgWireError::UserError(e) => e.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(QueryErrorKind::Timeout, "t"), "57014");
        assert_eq!(code(QueryErrorKind::TooManyRows, "r"), "54000");
        assert_eq!(
            code(
                QueryErrorKind::Client,
                "Error during planning: table 'tidemark.public.nope' not found"
            ),
            "42P01"
        );
        assert_eq!(code(QueryErrorKind::Resources, "m"), "53200");
    }

    #[test]
    fn settings_clients_read_at_connect() {
        assert_eq!(setting("server_version_num"), Some(PG_VERSION_NUM));
        assert_eq!(setting("search_path"), Some("public"));
        assert_eq!(setting("TimeZone"), Some("UTC"));
        assert_eq!(setting("no_such_thing"), None);
    }
}
