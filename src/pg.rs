//! The PostgreSQL wire protocol on `pg.addr` (off unless set), so psql,
//! psycopg, JDBC, BI tools and Grafana's PostgreSQL data source query
//! tidemark as they would PostgreSQL.
//!
//! The protocol is `pgwire`'s; result encoding (text and binary, every Arrow
//! type) is `arrow-pg`'s; the `pg_catalog` tables and the rewrites of the
//! catalog queries clients send are `datafusion-pg-catalog`'s; client
//! settings (`SET application_name`, `SET TIME ZONE`) and transaction
//! statements are answered by `datafusion-postgres`'s hooks.
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
//! offered when `tls.*` is set (the node's certificate; no client
//! certificate is asked of SQL clients).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
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
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
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
use crate::query::pg_names;
use crate::query::remote::{reads_measurements, sql_for, Batches, Names, Remote, Router};

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

/// TLS for SQL clients when `tls.*` is set: the node's certificate, no
/// client certificate asked (the CA, `tls.ca`, is for nodes).
fn tls_acceptor(
    cfg: &crate::config::TlsConfig,
) -> anyhow::Result<Option<pgwire::tokio::TlsAcceptor>> {
    // Validated: all of tls.* or none.
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Ok(None);
    };
    let (certs, key) = crate::tls::load_cert_and_key(cert, key)?;
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
    statements: crate::metrics::ProtocolMetrics,
    connections: prometheus_client::metrics::gauge::Gauge,
    auth_failures: prometheus_client::metrics::counter::Counter,
}

impl PgMetrics {
    fn outcome(&self, outcome: &'static str) {
        self.statements.outcome(outcome);
    }
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
            m.statements.register(
                r,
                "pg",
                "Statements run over the PostgreSQL wire protocol, by outcome",
                "Rows sent over the PostgreSQL wire protocol",
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
                router: Arc::new(Router::default()),
                parser: Arc::new(Parser {
                    node: node.clone(),
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
    p.server_version = format!(
        "{} (tidemark {})",
        pg_names::PG_VERSION,
        env!("CARGO_PKG_VERSION")
    );
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
                    self.accept(client, None).await?;
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let tokens = self.tokens.as_deref().unwrap_or_default();
                if tokens.iter().any(|t| {
                    crate::http::auth::constant_time_eq(t.as_bytes(), pwd.password.as_bytes())
                }) {
                    self.accept(client, Some(pwd.password)).await?;
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
    async fn accept<C>(&self, client: &mut C, token: Option<String>) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // In the session's extensions, which a client cannot set (its
        // startup parameters go to the metadata).
        client.session_extensions().insert(Authenticated { token });
        let (pid, key) = self.keys.generate(client);
        client.set_pid_and_secret_key(pid, key);
        finish_authentication(client, &self.params).await
    }
}

/// Set on a connection once its startup (and password) went through,
/// with the token it gave (for queries forwarded to another node).
#[derive(Debug)]
struct Authenticated {
    token: Option<String>,
}

/// Refuses statements on a connection that did not authenticate (a client
/// that goes on sending after a refused password).
fn authenticated(client: &(impl ClientInfo + ?Sized)) -> PgWireResult<Arc<Authenticated>> {
    client
        .session_extensions()
        .get::<Authenticated>()
        .ok_or_else(|| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "the connection is not authenticated".into(),
            )))
        })
}

/// Cancel requests: per backend pid, the secret key and the cancel signal
/// of the statement running now.
#[derive(Debug, Default)]
struct Cancels {
    running: Mutex<HashMap<i32, (bytes::Bytes, oneshot::Sender<()>)>>,
}

impl Cancels {
    /// A statement of backend `pid` starts: the receiver fires when a
    /// cancel request names it.
    fn start(&self, pid: i32, key: bytes::Bytes) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.running
            .lock()
            .expect("cancels lock")
            .insert(pid, (key, tx));
        rx
    }

    /// The statement `rx` was started for has ended.
    fn end(&self, pid: i32, rx: &oneshot::Receiver<()>) {
        let mut running = self.running.lock().expect("cancels lock");
        if running
            .get(&pid)
            .is_some_and(|(_, tx)| tx.is_connected_to(rx))
        {
            running.remove(&pid);
        }
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

/// A parsed statement.
#[derive(Debug, Clone)]
pub struct Prepared {
    statement: Statement,
    kind: Kind,
    database: String,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A query, planned (with its parameters as placeholders), and how
    /// long the planning took (of the statement's `query.timeout_ms`).
    Query(LogicalPlan, Duration),
    /// `SET` of a client setting, or a transaction statement: the hooks.
    Hooked,
    /// `SHOW name`: one text column named `name`.
    Show(String),
    /// `SET` that changes nothing here: answered `SET`.
    Ignored,
    /// Refused with this SQLSTATE and message.
    Refused(&'static str, String),
}

/// Parses and plans statements, per connection database.
#[derive(Debug)]
struct Parser {
    node: Arc<NodeShared>,
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

    fn context(&self, database: &str) -> PgWireResult<Arc<SessionContext>> {
        self.node
            .query
            .pg_context(database)
            .map_err(|e| match e.kind {
                QueryErrorKind::Client => {
                    user_error("3D000", format!("database \"{database}\": {e}"))
                }
                _ => pg_error(e),
            })
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
                let started = Instant::now();
                let plan = self
                    .node
                    .query
                    .plan_statement(&ctx, statement.clone(), started + self.timeout())
                    .await
                    .map_err(pg_error)?;
                Kind::Query(plan, started.elapsed())
            }
            Class::Hooked => Kind::Hooked,
            Class::Show(name) => Kind::Show(name),
            Class::Ignored => Kind::Ignored,
            Class::Refused(code, message) => Kind::Refused(code, message),
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
    Hooked,
    Show(String),
    Ignored,
    Refused(&'static str, String),
}

/// The client settings `SET` keeps on the connection (the hooks answer
/// them; nothing else changes).
const CLIENT_SETTINGS: [&str; 7] = [
    "application_name",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "extra_float_digits",
    "search_path",
    "statement_timeout",
];

fn classify(statement: &Statement) -> Class {
    use datafusion::sql::sqlparser::ast::Set;
    match statement {
        Statement::Query(_)
        | Statement::Explain { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. } => Class::Query,
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => Class::Hooked,
        Statement::Set(Set::SetTimeZone { .. }) => Class::Hooked,
        Statement::Set(Set::SingleAssignment { variable, .. }) => {
            let name = variable.to_string().to_ascii_lowercase();
            if CLIENT_SETTINGS.contains(&name.as_str()) {
                Class::Hooked
            } else if name.starts_with("datafusion.") {
                // The engine's settings (memory pool, partitions) are the
                // node's, under `query.*`, shared by every session.
                Class::Refused(
                    "42501",
                    format!("permission denied to set parameter \"{name}\": the query engine is configured by the node (query.*)"),
                )
            } else {
                Class::Ignored
            }
        }
        Statement::Set(_) => Class::Ignored,
        Statement::ShowVariable { variable } => Class::Show(
            variable
                .iter()
                .map(|v| v.value.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        other => {
            // The statement's leading keywords name it (`CREATE TABLE`, `INSERT`).
            let text = other.to_string();
            let what: Vec<&str> = text
                .split_whitespace()
                .take_while(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
                .take(2)
                .collect();
            let what = what.join(" ").to_ascii_uppercase();
            let first = what.split(' ').next().unwrap_or_default();
            const WRITES: [&str; 13] = [
                "CREATE", "DROP", "ALTER", "INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE",
                "COPY", "GRANT", "REVOKE", "COMMENT", "VACUUM",
            ];
            if WRITES.contains(&first) {
                Class::Refused(
                    "25006",
                    format!("cannot execute {what}: tidemark's SQL is read-only (write with the line protocol or MessagePack endpoints over HTTP)"),
                )
            } else {
                Class::Refused("0A000", format!("{what} is not supported"))
            }
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
        QueryErrorKind::Timeout => "57014",
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

/// Runs statements: queries through the engine (here or, in a cluster,
/// where routing sends them), session statements here.
#[derive(Debug)]
struct QueryService {
    node: Arc<NodeShared>,
    router: Arc<Router>,
    parser: Arc<Parser>,
    cancels: Arc<Cancels>,
    metrics: Arc<PgMetrics>,
}

impl QueryService {
    fn outcome(&self, ok: bool) {
        self.metrics.outcome(if ok { "ok" } else { "error" });
    }

    /// A response for a planned query; the query starts when the client
    /// is sent its first row (so statements of one query string run one
    /// after the other) and runs here or, in a cluster, on the node
    /// `routing.queries` picks. `statement` is the query as parsed;
    /// `bound` says its plan had parameters, now bound (the text then no
    /// longer says all of it); `planned_in` counts against the timeout.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        client: &(dyn ClientInfo + Send + Sync),
        auth: &Authenticated,
        database: &str,
        statement: &Statement,
        plan: LogicalPlan,
        bound: bool,
        planned_in: Duration,
        format: &Format,
    ) -> PgWireResult<Response> {
        if !self.node.is_ready() {
            return Err(user_error(
                "57P03",
                "the node is not ready (recovering or shutting down)".into(),
            ));
        }
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields = Arc::new(arrow_schema_to_pg_fields(
            plan.schema().as_arrow(),
            format,
            Some(options),
        )?);
        let routed = reads_measurements(&plan);
        let text = if routed {
            statement.to_string()
        } else {
            String::new()
        };
        let ctx = self.parser.context(database)?;
        let (node, router) = (self.node.clone(), self.router.clone());
        let (database, token) = (database.to_string(), auth.token.clone());
        let timeout = self.parser.timeout().saturating_sub(planned_in);
        let start = async move {
            let deadline = Instant::now() + timeout;
            let target = if routed { router.route(&node)? } else { None };
            let Some(target) = target else {
                let stream = node.query.stream(&ctx, plan, deadline).await?;
                return Ok(Box::pin(stream) as Batches);
            };
            // Written as SQL only when it goes elsewhere.
            let sql = sql_for(&text, &plan, bound)?;
            let remote = Remote {
                sql: &sql,
                database: &database,
                names: Names::Postgres,
                token: token.as_deref(),
            };
            let (_, batches) = router.fetch(&node, &target, remote, deadline).await?;
            Ok(Box::pin(futures::stream::iter(batches.into_iter().map(Ok))) as Batches)
        };
        let (pid, key) = client.pid_and_secret_key();
        let rows = Rows {
            start: Some(Box::pin(start)),
            stream: None,
            cancel: None,
            cancels: self.cancels.clone(),
            pid,
            key: key.to_bytes(),
            fields: fields.clone(),
            rows: None,
            metrics: self.metrics.clone(),
            done: false,
        };
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }

    /// Answers a statement that is not a query.
    async fn answer<C>(&self, client: &mut C, p: &Prepared) -> PgWireResult<Response>
    where
        C: HookClient,
    {
        let r = match &p.kind {
            Kind::Show(name) => match pg_names::setting(name) {
                Some(v) => single_value(name, v).map(Response::Query),
                None => Err(user_error(
                    "42704",
                    format!("unrecognized configuration parameter \"{name}\""),
                )),
            },
            Kind::Ignored => Ok(Response::Execution(Tag::new("SET"))),
            Kind::Refused(code, message) => Err(user_error(code, message.clone())),
            Kind::Hooked => {
                let ctx = self.parser.context(&p.database)?;
                let hooks: [&dyn QueryHook; 2] = [&SetShowHook, &TransactionStatementHook];
                let mut answer = None;
                for hook in hooks {
                    if let Some(r) = hook.handle_simple_query(&p.statement, &ctx, client).await {
                        answer = Some(r);
                        break;
                    }
                }
                answer.unwrap_or_else(|| {
                    Err(user_error(
                        "0A000",
                        format!("{} is not supported", p.statement),
                    ))
                })
            }
            // Callers run queries; a query here would be a bug of this file.
            Kind::Query(..) => Err(user_error(
                "XX000",
                "internal error: a query was answered as a session statement".into(),
            )),
        };
        self.outcome(r.is_ok());
        r
    }
}

fn single_value(name: &str, value: &str) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(show_fields(name));
    let mut encoder = DataRowEncoder::new(fields.clone());
    encoder.encode_field(&Some(value))?;
    let row = encoder.take_row();
    Ok(QueryResponse::new(
        fields,
        futures::stream::once(async move { Ok(row) }),
    ))
}

/// `SHOW name`'s one column.
fn show_fields(name: &str) -> Vec<FieldInfo> {
    vec![FieldInfo::new(
        name.to_string(),
        None,
        None,
        Type::TEXT,
        FieldFormat::Text,
    )]
}

/// A query's rows: the query starts at the first poll (and its cancel
/// signal with it), then its batches are encoded as they come. Counts the
/// statement's outcome when it ends.
struct Rows {
    start: Option<futures::future::BoxFuture<'static, Result<Batches, QueryError>>>,
    stream: Option<Batches>,
    cancel: Option<oneshot::Receiver<()>>,
    cancels: Arc<Cancels>,
    pid: i32,
    key: bytes::Bytes,
    fields: Arc<Vec<FieldInfo>>,
    rows: Option<Box<dyn Iterator<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send>>,
    metrics: Arc<PgMetrics>,
    done: bool,
}

impl Rows {
    fn finish(&mut self, outcome: &'static str) {
        self.done = true;
        self.metrics.outcome(outcome);
        self.rows = None;
        self.stream = None;
        self.start = None;
        if let Some(rx) = self.cancel.take() {
            self.cancels.end(self.pid, &rx);
        }
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        if !self.done {
            // The client went away (or pgwire stopped reading) mid-way.
            self.finish("cancelled");
        }
    }
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
        if this.cancel.is_none() {
            this.cancel = Some(this.cancels.start(this.pid, this.key.clone()));
        }
        loop {
            if let Some(rows) = &mut this.rows {
                match rows.next() {
                    Some(Ok(row)) => {
                        this.metrics.statements.rows(1);
                        return Poll::Ready(Some(Ok(row)));
                    }
                    Some(Err(e)) => {
                        this.finish("error");
                        return Poll::Ready(Some(Err(e)));
                    }
                    None => this.rows = None,
                }
            }
            if let Some(cancel) = &mut this.cancel {
                if let Poll::Ready(Ok(())) = cancel.poll_unpin(cx) {
                    this.finish("cancelled");
                    return Poll::Ready(Some(Err(user_error(
                        "57014",
                        "canceling statement due to user request".into(),
                    ))));
                }
            }
            if let Some(start) = &mut this.start {
                match start.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(stream)) => {
                        this.start = None;
                        this.stream = Some(stream);
                    }
                    Poll::Ready(Err(e)) => {
                        this.finish("error");
                        return Poll::Ready(Some(Err(pg_error(e))));
                    }
                }
            }
            let Some(stream) = &mut this.stream else {
                return Poll::Ready(None);
            };
            match stream.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.finish("ok");
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finish("error");
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
        let auth = authenticated(client)?;
        let statements = self
            .parser
            .parse(query)
            .inspect_err(|_| self.outcome(false))?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let database = self.parser.database(client);
        let mut out = Vec::with_capacity(statements.len());
        for statement in statements {
            let r = match self.parser.prepare(statement, database.clone()).await {
                Err(e) => {
                    self.outcome(false);
                    Err(e)
                }
                Ok(p) => match p.kind.clone() {
                    Kind::Query(plan, planned_in) => self
                        .run(
                            client,
                            &auth,
                            &database,
                            &p.statement,
                            plan,
                            false,
                            planned_in,
                            &Format::UnifiedText,
                        )
                        .inspect_err(|_| self.outcome(false)),
                    _ => self.answer(client, &p).await,
                },
            };
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
        authenticated(client)?;
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
        let Kind::Query(plan, _) = &stmt.kind else {
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
            Kind::Query(plan, _) => arrow_schema_to_pg_fields(
                plan.schema().as_arrow(),
                format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            Kind::Show(name) => Ok(show_fields(name)),
            Kind::Hooked | Kind::Ignored | Kind::Refused(..) => Ok(vec![]),
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
        let auth = authenticated(client)?;
        let p = &portal.statement.statement;
        let Kind::Query(plan, planned_in) = &p.kind else {
            return self.answer(client, p).await;
        };
        let bind = || {
            let types = parameter_types(plan)?;
            let refs: Vec<Option<&DataType>> = types.iter().map(Option::as_ref).collect();
            let params: ParamValues =
                arrow_pg::datatypes::df::deserialize_parameters(portal, &refs)?;
            let plan = plan
                .clone()
                .replace_params_with_values(&params)
                .map_err(|e| user_error("22023", e.strip_backtrace()))?;
            Ok::<_, PgWireError>((plan, !types.is_empty()))
        };
        bind()
            .and_then(|(plan, bound)| {
                self.run(
                    client,
                    &auth,
                    &p.database,
                    &p.statement,
                    plan,
                    bound,
                    *planned_in,
                    &portal.result_column_format,
                )
            })
            .inspect_err(|_| self.outcome(false))
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
        assert_eq!(class("SET search_path = public"), Class::Hooked);
        assert_eq!(class("SET TIME ZONE 'UTC'"), Class::Hooked);
        assert_eq!(class("BEGIN"), Class::Hooked);
        assert_eq!(class("SET lock_timeout = 1000"), Class::Ignored);
        assert_eq!(
            class("SHOW server_version"),
            Class::Show("server_version".into())
        );
        let refused = |sql| match class(sql) {
            Class::Refused(code, message) => (code, message),
            other => panic!("{sql}: {other:?}"),
        };
        for (sql, what) in [
            ("CREATE TABLE t (a int)", "CREATE TABLE"),
            ("INSERT INTO cpu VALUES (1)", "INSERT INTO"),
            ("DROP TABLE cpu", "DROP TABLE"),
            ("DELETE FROM cpu", "DELETE FROM"),
        ] {
            let (code, message) = refused(sql);
            assert_eq!(code, "25006", "{sql}");
            assert!(
                message.starts_with(&format!("cannot execute {what}:")),
                "{message}"
            );
        }
        // The engine's own settings are the node's.
        assert_eq!(
            refused("SET datafusion.runtime.memory_limit = '1T'").0,
            "42501"
        );
        // Not a write, not supported either.
        assert_eq!(refused("DISCARD ALL").0, "0A000");
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
}
