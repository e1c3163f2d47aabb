//! Queries that arrive over a protocol beside HTTP (PostgreSQL, Flight SQL)
//! go, in a cluster, where HTTP queries go (`routing.queries`, decided by
//! the same pure `routing::route_query`): here, or to the node it picks,
//! whose `POST /api/v1/query/arrow` answers. The request carries this
//! node in a sealed `x-tidemark-forwarded-by` chain, as HTTP forwarding
//! does, so the target serves it where it lands; the client's token goes
//! along when auth is on. The answer comes back as an Arrow IPC stream and
//! is decoded into batches for the protocol to encode.
//!
//! A query is sent away only when the target can run it as written: a
//! `SELECT` over measurements (not the `pg_catalog` or `information_schema`
//! tables a protocol answers itself; every node has the same catalog).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::engine::{QueryError, QueryErrorKind};
use crate::context::NodeShared;
use crate::control::state::NodeId;
use crate::routing::{self, Balancer, Route};

/// The names a forwarded query's SQL uses (`x-tidemark-sql-names`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Names {
    /// HTTP's: catalog `tidemark`, one schema per database.
    #[default]
    Http,
    /// PostgreSQL's: catalog = the database, its tables in `public`, other
    /// databases as schemas (see `QueryEngine::pg_session`).
    Postgres,
}

impl Names {
    pub fn header(self) -> &'static str {
        match self {
            Names::Http => "http",
            Names::Postgres => "postgres",
        }
    }

    pub fn parse(v: &str) -> Option<Names> {
        match v {
            "http" => Some(Names::Http),
            "postgres" => Some(Names::Postgres),
            _ => None,
        }
    }
}

/// Where a query goes, for one protocol server (its own balancer).
#[derive(Debug, Default)]
pub struct Router {
    balancer: Mutex<Balancer>,
}

/// A query sent to another node: who, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub to: NodeId,
    pub http_addr: String,
}

impl Router {
    /// `None`: run it here. Outside a cluster, always here.
    pub fn route(&self, node: &NodeShared) -> Result<Option<Target>, QueryError> {
        if !node.config.in_cluster() {
            return Ok(None);
        }
        let view = node.control.view();
        let Some(me) = view.node_id else {
            return Ok(None);
        };
        let mut balancer = self.balancer.lock().expect("balancer lock");
        match routing::route_query(
            &view.state,
            me,
            &[],
            node.config.routing.queries,
            node.config.routing.strategy,
            &mut balancer,
        ) {
            Route::Local => Ok(None),
            Route::Forward { to, http_addr } => Ok(Some(Target { to, http_addr })),
            Route::Unavailable(why) | Route::Loop(why) => {
                Err(QueryError::new(QueryErrorKind::Server, why))
            }
        }
    }

    /// Runs `sql` on `target` (its `POST /api/v1/query/arrow`) by
    /// `deadline`: the result's schema and batches.
    pub async fn fetch(
        &self,
        node: &NodeShared,
        target: &Target,
        request: Remote<'_>,
        deadline: Instant,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let _in_flight = InFlight::new(&self.balancer, target.to);
        let labels = crate::metrics::ForwardLabels {
            route: "query".into(),
            upstream: target.to.to_string(),
        };
        let started = Instant::now();
        let result = tokio::time::timeout_at(deadline.into(), exchange(node, target, &request))
            .await
            .unwrap_or_else(|_| {
                Err(QueryError::new(
                    QueryErrorKind::Timeout,
                    format!(
                        "query timed out after {} ms (query.timeout_ms) waiting for node {}",
                        node.config.query.timeout_ms, target.to
                    ),
                ))
            });
        let f = &node.metrics.forward;
        f.requests.get_or_create(&labels).inc();
        f.seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if let Ok((_, body_len, _)) = &result {
            f.bytes_in.get_or_create(&labels).inc_by(*body_len as u64);
        }
        result.map(|(schema, _, batches)| (schema, batches))
    }
}

/// Counts a query in flight to a node for as long as it lives (a dropped
/// fetch, its client gone, counts as finished too).
struct InFlight<'a> {
    balancer: &'a Mutex<Balancer>,
    to: NodeId,
}

impl<'a> InFlight<'a> {
    fn new(balancer: &'a Mutex<Balancer>, to: NodeId) -> InFlight<'a> {
        balancer.lock().expect("balancer lock").started(to);
        InFlight { balancer, to }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.balancer
            .lock()
            .expect("balancer lock")
            .finished(self.to);
    }
}

/// What to run remotely.
#[derive(Debug, Clone, Copy)]
pub struct Remote<'a> {
    pub sql: &'a str,
    pub database: &'a str,
    pub names: Names,
    /// The client's API token (auth on).
    pub token: Option<&'a str>,
}

const PATH: &str = "/api/v1/query/arrow";

/// One HTTP/1.1 exchange with the target (a fresh connection, closed
/// after): schema, body length, batches.
async fn exchange(
    node: &NodeShared,
    target: &Target,
    r: &Remote<'_>,
) -> Result<(SchemaRef, usize, Vec<RecordBatch>), QueryError> {
    let unreachable = |e: std::io::Error| {
        QueryError::new(
            QueryErrorKind::Server,
            format!(
                "node {} ({}) did not answer the query: {e}",
                target.to, target.http_addr
            ),
        )
    };
    let me =
        node.control.view().node_id.ok_or_else(|| {
            QueryError::new(QueryErrorKind::Server, "forwarding outside a cluster")
        })?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let seal = routing::seal_chain(
        node.config.cluster.secret.as_bytes(),
        secs,
        "POST",
        PATH,
        &[me],
    );
    let body = serde_json::to_vec(&serde_json::json!({ "sql": r.sql })).expect("JSON");
    let mut head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nx-arc-database: {}\r\nx-tidemark-sql-names: {}\r\nx-tidemark-forwarded-by: {me}\r\nx-tidemark-forward-auth: {seal}\r\nConnection: close\r\nContent-Length: {}\r\n",
        target.http_addr,
        r.database,
        r.names.header(),
        body.len()
    );
    if let Some(t) = r.token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(&target.http_addr),
    )
    .await
    .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
    .map_err(unreachable)?;
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(unreachable)?;
    stream.write_all(&body).await.map_err(unreachable)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(unreachable)?;
    let Answer {
        status,
        error_kind,
        body: content,
    } = parse_response(&raw).map_err(|why| {
        QueryError::new(
            QueryErrorKind::Server,
            format!(
                "node {} answered the query with a bad response: {why}",
                target.to
            ),
        )
    })?;
    if status != 200 {
        let message = serde_json::from_slice::<serde_json::Value>(content)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(content).into_owned());
        let kind = error_kind.unwrap_or(match status {
            400 | 401 | 403 => QueryErrorKind::Client,
            504 => QueryErrorKind::Timeout,
            _ => QueryErrorKind::Server,
        });
        return Err(QueryError::new(kind, message));
    }
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(content), None)
        .map_err(|e| {
            QueryError::new(
                QueryErrorKind::Server,
                format!("decoding node {}'s answer: {e}", target.to),
            )
        })?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| {
        QueryError::new(
            QueryErrorKind::Server,
            format!("decoding node {}'s answer: {e}", target.to),
        )
    })?;
    Ok((schema, content.len(), batches))
}

/// A whole HTTP/1.1 response: its status and body (by `Content-Length`,
/// else to the end; chunked bodies are not sent by tidemark).
fn parse_response(raw: &[u8]) -> Result<Answer<'_>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the response ended early".into()),
        Err(e) => return Err(e.to_string()),
    };
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let len = header("content-length").and_then(|v| v.trim().parse::<usize>().ok());
    let error_kind = header("x-tidemark-error-kind").and_then(QueryErrorKind::parse);
    let body = &raw[n..];
    let body = match len {
        Some(l) if l > body.len() => return Err(format!("{} of {l} body bytes", body.len())),
        Some(l) => &body[..l],
        None => body,
    };
    Ok(Answer {
        status: resp.code.unwrap_or(0),
        error_kind,
        body,
    })
}

/// A response of a query endpoint: its status, the failed query's kind
/// (`x-tidemark-error-kind`) and its body.
#[derive(Debug, PartialEq)]
struct Answer<'a> {
    status: u16,
    error_kind: Option<QueryErrorKind>,
    body: &'a [u8],
}

/// A query's result batches, from the pool or from another node.
pub type Batches =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RecordBatch, QueryError>> + Send>>;

/// Whether `plan` reads measurements (and so may run on another node):
/// not only catalog tables (`pg_catalog`, `information_schema`), which a
/// protocol answers where the query arrives.
pub fn reads_measurements(plan: &datafusion::logical_expr::LogicalPlan) -> bool {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::LogicalPlan;
    let mut measurements = false;
    let mut catalog = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            match scan.table_name.schema() {
                Some("pg_catalog" | "information_schema") => catalog = true,
                _ => measurements = true,
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    measurements && !catalog
}

/// The SQL to send for `plan`: `sql` as the client wrote it, or, when
/// parameters were bound into the plan, the plan written back as SQL.
pub fn sql_for(
    sql: &str,
    plan: &datafusion::logical_expr::LogicalPlan,
    bound: bool,
) -> Result<String, QueryError> {
    if !bound {
        return Ok(sql.to_string());
    }
    datafusion::sql::unparser::plan_to_sql(plan)
        .map(|s| s.to_string())
        .map_err(|e| {
            QueryError::new(
                QueryErrorKind::Server,
                format!("forwarding the query: {}", e.strip_backtrace()),
            )
        })
}

/// Waits at most this long for a forwarded query's connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_read_by_their_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef";
        let a = parse_response(raw).unwrap();
        assert_eq!((a.status, a.body, a.error_kind), (200, &b"abc"[..], None));
        let raw = b"HTTP/1.1 400 Bad Request\r\n\r\n{\"error\":\"x\"}";
        assert_eq!(parse_response(raw).unwrap().status, 400);
        let raw = b"HTTP/1.1 504 Gateway Timeout\r\nx-tidemark-error-kind: timeout\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(raw).unwrap().error_kind,
            Some(QueryErrorKind::Timeout)
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn names_round_trip_their_header() {
        for n in [Names::Http, Names::Postgres] {
            assert_eq!(Names::parse(n.header()), Some(n));
        }
        assert_eq!(Names::parse("other"), None);
    }
}
