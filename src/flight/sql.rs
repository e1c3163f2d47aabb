//! The Flight SQL commands, on the query engine. Called through
//! [`super::Gateway`], which has already checked readiness and the token.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    SqlSupportedTransaction, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::handle::{self, HandleError, InfluxTicket, StatementHandle};
use super::{database_of, query_status, FlightMetrics};
use crate::context::NodeShared;
use crate::query::remote::{reads_measurements, sql_for, Batches, Names, Remote, Router};

type DoGetStream = <TidemarkFlightSql as FlightService>::DoGetStream;

/// The only catalog: databases are its schemas, measurements its tables.
const CATALOG: &str = "tidemark";

/// See the [module docs](self).
pub struct TidemarkFlightSql {
    node: Arc<NodeShared>,
    router: Router,
    metrics: Arc<FlightMetrics>,
    sql_info: SqlInfoData,
}

impl TidemarkFlightSql {
    pub fn new(node: Arc<NodeShared>, metrics: Arc<FlightMetrics>) -> TidemarkFlightSql {
        TidemarkFlightSql {
            node,
            router: Router::default(),
            metrics,
            sql_info: sql_info(),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.node.query.settings().timeout_ms)
    }

    /// Plans a statement (binding its parameters, if any) for its schema.
    async fn plan(&self, h: &StatementHandle) -> Result<LogicalPlan, Status> {
        valid_database(&h.database)?;
        let engine = &self.node.query;
        let ctx = engine.session(&h.database);
        let plan = engine
            .plan(&ctx, &h.sql, self.deadline())
            .await
            .map_err(query_status)?;
        if h.params.is_empty() {
            return Ok(plan);
        }
        let values = h.param_values().map_err(handle_status)?;
        handle::bind(plan, values.into()).map_err(|e| Status::invalid_argument(e.strip_backtrace()))
    }

    /// Plans, binds and starts `sql` in `database`; the result streams
    /// batch by batch as DataFusion makes them. In a cluster, a query over
    /// measurements runs where `routing.queries` sends HTTP queries
    /// (`query::remote`); `token` is the client's, for the node it goes to.
    async fn run(
        &self,
        database: &str,
        sql: &str,
        params: Result<ParamValues, HandleError>,
        token: Option<String>,
    ) -> Result<Response<DoGetStream>, Status> {
        let started = async {
            valid_database(database)?;
            let params = params.map_err(handle_status)?;
            let bound = match &params {
                ParamValues::List(l) => !l.is_empty(),
                ParamValues::Map(m) => !m.is_empty(),
            };
            let engine = &self.node.query;
            let deadline = self.deadline();
            let ctx = engine.session(database);
            let plan = engine
                .plan(&ctx, sql, deadline)
                .await
                .map_err(query_status)?;
            let plan = handle::bind(plan, params)
                .map_err(|e| Status::invalid_argument(e.strip_backtrace()))?;
            let target = if reads_measurements(&plan) {
                self.router.route(&self.node).map_err(query_status)?
            } else {
                None
            };
            let Some(target) = target else {
                let stream = engine
                    .stream(&ctx, plan, deadline)
                    .await
                    .map_err(query_status)?;
                return Ok((stream.schema(), Box::pin(stream) as Batches));
            };
            let sql = sql_for(sql, &plan, bound).map_err(query_status)?;
            let remote = Remote {
                sql: &sql,
                database,
                names: Names::Http,
                token: token.as_deref(),
            };
            let (schema, batches) = self
                .router
                .fetch(&self.node, &target, remote, deadline)
                .await
                .map_err(query_status)?;
            Ok((
                schema,
                Box::pin(futures::stream::iter(batches.into_iter().map(Ok))) as Batches,
            ))
        };
        let (schema, stream) = match started.await {
            Ok(s) => s,
            Err(status) => {
                self.metrics.outcome("error");
                return Err(status);
            }
        };
        let counted = Counted {
            inner: stream,
            metrics: self.metrics.clone(),
            finished: false,
        };
        // Tags stay dictionary-encoded, as DataFusion and HTTP Arrow send
        // them: a third fewer bytes than plain strings for TSBS rows.
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_dictionary_handling(DictionaryHandling::Resend)
            .build(counted)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(data)))
    }

    async fn run_handle(
        &self,
        bytes: &[u8],
        token: Option<String>,
    ) -> Result<Response<DoGetStream>, Status> {
        let h = match StatementHandle::from_bytes(bytes) {
            Ok(h) => h,
            Err(e) => {
                self.metrics.outcome("error");
                return Err(handle_status(e));
            }
        };
        let params = h.param_values().map(ParamValues::from);
        self.run(&h.database, &h.sql, params, token).await
    }

    /// `DoGet` with InfluxDB 3's JSON ticket.
    pub async fn influx_query(
        &self,
        ticket: InfluxTicket,
        database: String,
        token: Option<String>,
    ) -> Result<Response<DoGetStream>, Status> {
        let params = ticket.param_values().map(ParamValues::from);
        self.run(&database, &ticket.sql_query, params, token).await
    }

    /// A `FlightInfo` for `statement`: its schema, one endpoint (this
    /// server) whose ticket runs it.
    fn statement_info(
        &self,
        plan: &LogicalPlan,
        statement: &StatementHandle,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let ticket = TicketStatementQuery {
            statement_handle: statement.to_bytes().into(),
        };
        info(&schema, ticket.as_any(), descriptor)
    }
}

/// A `FlightInfo` of `schema` whose one endpoint's ticket is `ticket`.
fn info(schema: &Schema, ticket: Any, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("encoding the schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec())))
        .with_descriptor(descriptor))
}

/// A database named by a client (ticket, handle, metadata) must be a valid
/// name: it names files and goes into forwarded requests.
fn valid_database(database: &str) -> Result<(), Status> {
    tidemark_shards::schema::validate_database_name(database)
        .map_err(|e| Status::invalid_argument(format!("database {database:?}: {e}")))
}

fn handle_status(e: HandleError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn schema_bytes(schema: &Schema) -> Result<IpcMessage, Status> {
    SchemaAsIpc::new(schema, &Default::default())
        .try_into()
        .map_err(|e| Status::internal(format!("encoding the schema: {e}")))
}

/// One metadata batch as a `DoGet` answer.
fn one_batch(schema: SchemaRef, batch: Result<RecordBatch, FlightError>) -> Response<DoGetStream> {
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async move { batch }))
        .map_err(Status::from);
    Response::new(Box::pin(data))
}

fn sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "tidemark");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.build().expect("a fixed SqlInfo set encodes")
}

/// A query's batches on their way to the encoder: counts rows and the
/// query's outcome (`cancelled` if the client goes away before the end).
struct Counted {
    inner: Batches,
    metrics: Arc<FlightMetrics>,
    finished: bool,
}

impl Stream for Counted {
    type Item = Result<RecordBatch, FlightError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(b))) => {
                this.metrics.rows(b.num_rows());
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finished = true;
                this.metrics.outcome("error");
                Poll::Ready(Some(Err(FlightError::Tonic(Box::new(query_status(e))))))
            }
            Poll::Ready(None) => {
                if !this.finished {
                    this.finished = true;
                    this.metrics.outcome("ok");
                }
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if !self.finished {
            self.metrics.outcome("cancelled");
        }
    }
}

#[tonic::async_trait]
impl FlightSqlService for TidemarkFlightSql {
    type FlightService = TidemarkFlightSql;

    /// Never called: [`super::Gateway`] answers `Handshake` itself.
    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        Err(Status::internal("the gateway answers Handshake"))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<DoGetStream>, Status> {
        Err(Status::invalid_argument(format!(
            "unknown ticket {:?}: send a Flight SQL ticket or InfluxDB's JSON {{\"database\", \"sql_query\", \"query_type\": \"sql\"}}",
            message.type_url
        )))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let database = database_of(&self.node, request.metadata());
        let statement = StatementHandle::new(&database, &query.query);
        let plan = self.plan(&statement).await.inspect_err(|_| {
            self.metrics.outcome("error");
        })?;
        let info = self.statement_info(&plan, &statement, request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let statement =
            StatementHandle::from_bytes(&cmd.prepared_statement_handle).map_err(handle_status)?;
        let plan = self.plan(&statement).await.inspect_err(|_| {
            self.metrics.outcome("error");
        })?;
        let info = self.statement_info(&plan, &statement, request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let token = super::token(request.metadata());
        self.run_handle(&ticket.statement_handle, token).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let token = super::token(request.metadata());
        self.run_handle(&query.prepared_statement_handle, token)
            .await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let database = database_of(&self.node, request.metadata());
        let statement = StatementHandle::new(&database, &query.query);
        let plan = self.plan(&statement).await.inspect_err(|_| {
            self.metrics.outcome("error");
        })?;
        let dataset = Arc::new(plan.schema().as_arrow().clone());
        let parameters = handle::parameter_schema(&plan)
            .map_err(|e| Status::invalid_argument(e.strip_backtrace()))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: statement.to_bytes().into(),
            dataset_schema: schema_bytes(&dataset)?.0,
            parameter_schema: schema_bytes(&parameters)?.0,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles are stateless: nothing to free.
        Ok(())
    }

    /// Binds parameters: the client sends one row; the answer is a new
    /// handle that carries them (the old one stays as it was).
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let statement =
            StatementHandle::from_bytes(&query.prepared_statement_handle).map_err(handle_status)?;
        let data = request
            .into_inner()
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
        let mut rows: Vec<RecordBatch> = Vec::new();
        while let Some(b) = batches.next().await {
            let b = b.map_err(Status::from)?;
            if b.num_rows() > 0 {
                rows.push(b);
            }
        }
        let bound = match rows.as_slice() {
            [] => StatementHandle {
                params: Vec::new(),
                ..statement
            },
            [row] if row.num_rows() == 1 => statement.with_params(row).map_err(handle_status)?,
            _ => {
                let n = rows.iter().map(RecordBatch::num_rows).sum();
                return Err(handle_status(HandleError::ParamRows(n)));
            }
        };
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(bound.to_bytes().into()),
        })
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Ok(Response::new(info(
            &schema,
            query.as_any(),
            request.into_inner(),
        )?))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(CATALOG);
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(info(
            &schema,
            query.as_any(),
            request.into_inner(),
        )?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        for db in self.node.query.databases() {
            b.append(CATALOG, db);
        }
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(info(
            &schema,
            query.as_any(),
            request.into_inner(),
        )?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut tables = self.node.catalog.tables();
        tables.sort_by(|(a, _), (b, _)| {
            (a.database(), a.measurement()).cmp(&(b.database(), b.measurement()))
        });
        let mut b = query.into_builder();
        for (key, schema) in tables {
            let schema = schema.arrow().clone();
            b.append(CATALOG, key.database(), key.measurement(), "TABLE", &schema)
                .map_err(|e| Status::internal(format!("listing tables: {e}")))?;
        }
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Ok(Response::new(info(
            &schema,
            query.as_any(),
            request.into_inner(),
        )?))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append("TABLE");
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        Ok(Response::new(info(
            &schema,
            query.as_any(),
            request.into_inner(),
        )?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let b = query.into_builder(&self.sql_info);
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
