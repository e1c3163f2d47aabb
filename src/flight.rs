//! Arrow Flight SQL on `flight.addr` (gRPC, `arrow-flight` over tonic).
//!
//! The server runs on a thread of its own (`tidemark-flight`, never a
//! shard core) and its queries on the query pool (`QueryEngine::stream`);
//! its socket is bound in [`start`], so a bad or taken address stops
//! the node at start-up. Every call goes through [`Gateway`], which checks
//! readiness and the token and answers InfluxDB 3's JSON tickets, then
//! hands Flight SQL commands to [`sql::TidemarkFlightSql`]:
//!
//! * `CommandStatementQuery` and prepared statements: planned with the
//!   query engine (read-only rules, `query.timeout_ms`), results streamed
//!   batch by batch from DataFusion into Flight data (`query.max_rows`,
//!   the memory limit and the deadline enforced by the engine's
//!   `ResultStream`; a client that goes away drops the stream, which
//!   cancels the query). Handles are stateless (`handle::StatementHandle`).
//! * `GetCatalogs` (`tidemark`), `GetDbSchemas` (one per database),
//!   `GetTables` (one per measurement, schema included on request),
//!   `GetTableTypes`, `GetSqlInfo`.
//! * A `DoGet` whose ticket is InfluxDB 3's JSON `{"database",
//!   "sql_query", "query_type": "sql"}` (what `influxdb3-python` sends).
//!
//! Auth (with `auth.enabled`): every call carries `authorization: Bearer
//! <token>` (or Basic with the token as password); `Handshake` with Basic
//! answers the token back as a Bearer header (ADBC's username/password).
//! The database: the ticket's or handle's, else gRPC metadata `database`,
//! `x-arc-database`, `iox-namespace-name` or `bucket-name`, else
//! `http.default_database`.

mod handle;
mod sql;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use base64::Engine as _;
use futures::Stream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};

use crate::context::NodeShared;
use crate::query::engine::{QueryError, QueryErrorKind};

/// Binds `flight.addr` and serves it from a thread of its own.
pub fn start(node: &Arc<NodeShared>) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = node
        .config
        .flight
        .addr
        .parse()
        .context("flight.addr is not an IP address and port")?;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    // The connections run on a thread of their own; queries run on the
    // pool (`QueryEngine::stream`), so a pool busy with a long query still
    // serves the sockets (a client's cancel, other clients' calls).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let metrics = Arc::new(FlightMetrics::default());
    register_metrics(&metrics, node);
    let gateway = Gateway {
        node: node.clone(),
        sql: sql::TidemarkFlightSql::new(node.clone(), metrics.clone()),
        metrics,
    };
    if !node.config.auth.enabled && !local.ip().is_loopback() {
        tracing::warn!(%local, "the Flight SQL server listens beyond loopback without auth (auth.enabled = false)");
    }
    // Keep-alives find clients that vanished without closing: a query
    // waiting for one to read would otherwise hold its resources.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let serve = async move {
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(FlightServiceServer::new(gateway))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the Flight SQL server stopped");
        }
    };
    std::thread::Builder::new()
        .name("tidemark-flight".into())
        .spawn(move || runtime.block_on(serve))?;
    tracing::info!(%local, "Flight SQL server listening");
    Ok(())
}

/// `tidemark_flight_*` counters.
pub type FlightMetrics = crate::metrics::ProtocolMetrics;

fn register_metrics(metrics: &FlightMetrics, node: &NodeShared) {
    node.metrics.register_with(|r| {
        metrics.register(
            r,
            "flight",
            "Flight SQL queries (statements, prepared statements, InfluxDB tickets) by outcome: ok, error (refused or failed), cancelled (the client went away)",
            "Rows sent to Flight SQL clients",
        )
    });
}

/// The query engine's error as a gRPC status.
pub fn query_status(e: QueryError) -> Status {
    match e.kind {
        QueryErrorKind::Client | QueryErrorKind::TooManyRows => Status::invalid_argument(e.message),
        QueryErrorKind::Timeout => Status::deadline_exceeded(e.message),
        QueryErrorKind::Resources => Status::resource_exhausted(e.message),
        QueryErrorKind::Server => Status::internal(e.message),
    }
}

/// The database a call names in its metadata, else the default.
pub fn database_of(node: &NodeShared, metadata: &MetadataMap) -> String {
    [
        "database",
        "x-arc-database",
        "iox-namespace-name",
        "bucket-name",
    ]
    .iter()
    .find_map(|k| metadata.get(*k)?.to_str().ok().filter(|v| !v.is_empty()))
    .map_or_else(
        || node.config.http.default_database.clone(),
        |v| v.to_string(),
    )
}

/// The token a call carries: `authorization: Bearer <t>` (or `Token
/// <t>`), or Basic with the token as the password.
fn token(metadata: &MetadataMap) -> Option<String> {
    let v = metadata.get("authorization")?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or(("", v));
    let rest = rest.trim();
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "token" => Some(rest.to_string()),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            text.split_once(':').map(|(_, p)| p.to_string())
        }
        _ => Some(v.to_string()),
    }
}

/// Checks readiness and (with auth on) the token; returns the token.
fn admit(node: &NodeShared, metadata: &MetadataMap) -> Result<Option<String>, Status> {
    if !node.is_ready() {
        return Err(Status::unavailable("the node is not ready"));
    }
    let given = token(metadata);
    if !node.config.auth.enabled {
        return Ok(given);
    }
    match given {
        None => Err(Status::unauthenticated(
            "missing API token: send gRPC metadata `authorization: Bearer <token>` (or Handshake with Basic auth, the token as password)",
        )),
        Some(t) if node.tokens.iter().any(|k| crate::http::auth::constant_time_eq(k.as_bytes(), t.as_bytes())) => {
            Ok(Some(t))
        }
        Some(_) => Err(Status::unauthenticated("invalid API token")),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The gRPC service: readiness, auth and InfluxDB tickets in front of the
/// Flight SQL dispatch of `arrow-flight`.
struct Gateway {
    node: Arc<NodeShared>,
    sql: sql::TidemarkFlightSql,
    metrics: Arc<FlightMetrics>,
}

#[tonic::async_trait]
impl FlightService for Gateway {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let token = admit(&self.node, request.metadata())?;
        let payload = token.clone().unwrap_or_default();
        let output = futures::stream::iter([Ok(HandshakeResponse {
            protocol_version: 0,
            payload: payload.into_bytes().into(),
        })]);
        let mut response: Response<Self::HandshakeStream> = Response::new(Box::pin(output));
        if let Some(t) = token {
            let value = MetadataValue::try_from(format!("Bearer {t}"))
                .map_err(|_| Status::invalid_argument("the token is not valid in a gRPC header"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        admit(&self.node, request.metadata())?;
        FlightService::list_flights(&self.sql, request).await
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        admit(&self.node, request.metadata())?;
        FlightService::get_flight_info(&self.sql, request).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        admit(&self.node, request.metadata())?;
        FlightService::poll_flight_info(&self.sql, request).await
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        admit(&self.node, request.metadata())?;
        FlightService::get_schema(&self.sql, request).await
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        admit(&self.node, request.metadata())?;
        if handle::InfluxTicket::looks_like(&request.get_ref().ticket) {
            let ticket = match handle::InfluxTicket::parse(&request.get_ref().ticket) {
                Ok(t) => t,
                Err(e) => {
                    self.metrics.outcome("error");
                    return Err(Status::invalid_argument(e.to_string()));
                }
            };
            let database = ticket
                .database
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| database_of(&self.node, request.metadata()));
            let token = token(request.metadata());
            return self.sql.influx_query(ticket, database, token).await;
        }
        FlightService::do_get(&self.sql, request).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        admit(&self.node, request.metadata())?;
        FlightService::do_put(&self.sql, request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        admit(&self.node, request.metadata())?;
        FlightService::do_exchange(&self.sql, request).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        admit(&self.node, request.metadata())?;
        FlightService::do_action(&self.sql, request).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        admit(&self.node, request.metadata())?;
        FlightService::list_actions(&self.sql, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn token_forms() {
        assert_eq!(
            token(&md(&[("authorization", "Bearer s3cret")])).as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            token(&md(&[("authorization", "Token s3cret")])).as_deref(),
            Some("s3cret")
        );
        // user:s3cret
        assert_eq!(
            token(&md(&[("authorization", "Basic dXNlcjpzM2NyZXQ=")])).as_deref(),
            Some("s3cret")
        );
        assert_eq!(token(&md(&[])), None);
    }

    #[test]
    fn statuses() {
        let s = |kind| query_status(QueryError::new(kind, "m")).code();
        assert_eq!(s(QueryErrorKind::Client), tonic::Code::InvalidArgument);
        assert_eq!(s(QueryErrorKind::TooManyRows), tonic::Code::InvalidArgument);
        assert_eq!(s(QueryErrorKind::Timeout), tonic::Code::DeadlineExceeded);
        assert_eq!(s(QueryErrorKind::Resources), tonic::Code::ResourceExhausted);
        assert_eq!(s(QueryErrorKind::Server), tonic::Code::Internal);
    }
}
