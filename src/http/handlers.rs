//! The endpoints: ingest (`/write`, `/api/v2/write`,
//! `/api/v1/write/line-protocol`, `/api/v1/write/msgpack`), operations
//! (`/health`, `/ready`, `/metrics`, `POST /api/v1/flush`), and the routes
//! of InfluxDB 1.x's `/ping` and `/query` (answered in [`super::influx`]).

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tidemark_ingest::builder::Decoded;
use tidemark_ingest::{line_protocol, msgpack, Precision};
use tidemark_shards::shard::{Shard, ShardError};
use tidemark_shards::SchemaError;

use super::{auth, body, Request, Response};
use crate::config::Role;
use crate::context::CoreCtx;
use crate::query::engine::OutputFormat;

const LINE_PROTOCOL: usize = 0;
const MSGPACK: usize = 1;

/// Routes a request. `route` is the metrics label index.
pub async fn handle(ctx: &Rc<CoreCtx>, req: Request) -> (Response, usize) {
    let node = &ctx.node;
    let path = req.path.as_str();
    let route = match path {
        p if is_write_path(p) => usize::from(p == "/api/v1/write/msgpack"),
        "/health" | "/ping" => 2,
        "/ready" => 3,
        "/metrics" => 4,
        "/api/v1/flush" => 5,
        "/api/v1/query" | "/api/v1/query/arrow" | "/api/v1/measurements" | "/query" => 7,
        "/api/v1/replication/manifest" | "/api/v1/replication/file" => 8,
        p if p == "/api/v1/cluster" || p.starts_with("/api/v1/cluster/") => 9,
        p if p == "/api/v1/compact" || p.starts_with("/api/v1/databases/") => 10,
        _ => 6,
    };
    // The replication endpoints authenticate with the cluster secret.
    let public = matches!(
        path,
        "/health"
            | "/ready"
            | "/metrics"
            | "/ping"
            | "/api/v1/replication/manifest"
            | "/api/v1/replication/file"
    );
    if node.config.auth.enabled && !public {
        if let Some(denied) = auth::check(&req, &node.tokens) {
            return (denied, route);
        }
    }
    // In a cluster, a request this node does not serve goes to the node
    // that does (writes to the primary, queries per `routing.queries`).
    if node.config.in_cluster() {
        let kind = match (req.method.as_str(), path) {
            ("POST", _) if route <= 1 => Some(Forwardable::Write),
            ("POST", "/api/v1/query" | "/api/v1/query/arrow") | ("GET", "/api/v1/measurements") => {
                Some(Forwardable::Query)
            }
            _ => None,
        };
        if let Some(kind) = kind {
            let body = crate::forward::Body::Whole;
            if let Some(resp) = route_elsewhere(ctx, &req, kind, body).await {
                return (resp, route);
            }
        }
    }
    let method = req.method.as_str();
    let resp = match (method, path) {
        ("GET" | "HEAD", "/health") => Response::json(200, &serde_json::json!({"status": "ok"})),
        ("GET" | "HEAD", "/ready") => {
            if node.is_ready() {
                Response::json(200, &serde_json::json!({"status": "ready"}))
            } else {
                let why = if node.is_shutting_down() {
                    "shutting down"
                } else {
                    "recovering"
                };
                Response::json(
                    503,
                    &serde_json::json!({"status": "not ready", "reason": why}),
                )
                .with_header("Retry-After", "1")
            }
        }
        ("GET", "/metrics") => {
            ctx.refresh_gauges();
            // OpenMetrics for scrapers that ask for it, else text format 0.0.4.
            let openmetrics = req
                .header("accept")
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let (content_type, body) = if openmetrics {
                (
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    node.metrics.encode(),
                )
            } else {
                (
                    "text/plain; version=0.0.4; charset=utf-8",
                    node.metrics.encode_prometheus(),
                )
            };
            Response {
                status: 200,
                headers: vec![("Content-Type", content_type.into())],
                body: body.into_bytes(),
            }
        }
        ("POST", "/write" | "/api/v2/write" | "/api/v1/write/line-protocol") => {
            write(ctx, req, LINE_PROTOCOL).await
        }
        ("POST", "/api/v1/write/msgpack") => write(ctx, req, MSGPACK).await,
        ("POST", "/api/v1/flush") => flush_all(ctx).await,
        ("GET" | "HEAD", "/ping") => super::influx::ping(&req),
        ("GET" | "POST", "/query") => super::influx::query(ctx, &req),
        ("POST", "/api/v1/query") => query(ctx, req, OutputFormat::Json).await,
        ("POST", "/api/v1/query/arrow") => {
            let compression = match req
                .header("x-arrow-compression")
                .map(str::to_string)
                .or_else(|| req.query_param("compression"))
                .as_deref()
            {
                None | Some("") | Some("none") => None,
                Some("zstd") => Some(arrow_ipc::CompressionType::ZSTD),
                Some("lz4") => Some(arrow_ipc::CompressionType::LZ4_FRAME),
                Some(other) => {
                    return (
                        Response::error(
                            400,
                            format!(
                                "unknown Arrow compression {other:?} (expected none, zstd or lz4)"
                            ),
                        ),
                        route,
                    )
                }
            };
            query(ctx, req, OutputFormat::Arrow(compression)).await
        }
        ("GET", "/api/v1/measurements") => measurements(ctx, &req),
        ("GET", "/api/v1/cluster") => crate::control::api::get(&node.control),
        ("POST", "/api/v1/cluster/failover") => {
            crate::control::api::post_failover(&node.control, &req.body).await
        }
        ("PUT", "/api/v1/cluster/compactor") => {
            crate::control::api::put_compactor(&node.control, &req.body).await
        }
        ("DELETE", p) if p.starts_with("/api/v1/cluster/nodes/") => {
            crate::control::api::delete_node(&node.control, &p["/api/v1/cluster/nodes/".len()..])
                .await
        }
        ("GET", "/api/v1/replication/manifest" | "/api/v1/replication/file") => {
            crate::replication::bootstrap::serve(ctx, &req)
        }
        ("POST", "/api/v1/compact") => compact_now(ctx, &req).await,
        (_, p) if p.starts_with("/api/v1/databases/") && p.ends_with("/retention") => {
            let db = &p["/api/v1/databases/".len()..p.len() - "/retention".len()];
            retention(ctx, method, db, &req.body).await
        }
        (
            _,
            "/health"
            | "/ready"
            | "/metrics"
            | "/write"
            | "/api/v2/write"
            | "/api/v1/write/line-protocol"
            | "/api/v1/write/msgpack"
            | "/api/v1/flush"
            | "/api/v1/compact"
            | "/ping"
            | "/query",
        ) => Response::error(405, format!("method {method} is not allowed on {path}")),
        _ => Response::error(404, format!("no endpoint {path}")),
    };
    (resp, route)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The database of a write: `x-arc-database`, else `db` (InfluxDB 1.x) or
/// `bucket` (2.x), else the default.
fn database(ctx: &CoreCtx, req: &Request) -> String {
    req.header("x-arc-database")
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .or_else(|| req.query_param("db").filter(|d| !d.is_empty()))
        .or_else(|| req.query_param("bucket").filter(|d| !d.is_empty()))
        .unwrap_or_else(|| ctx.node.config.http.default_database.clone())
}

/// Turns a catalog conflict into a message naming the line or record where
/// the column first appears in this request.
fn schema_error_message(e: &SchemaError, decoded: &Decoded, format: usize) -> String {
    if let SchemaError::TypeConflict {
        column,
        existing,
        given,
    } = e
    {
        let at = decoded
            .batches
            .iter()
            .find_map(|b| decoded.first_at(b.table(), column));
        let unit = if format == LINE_PROTOCOL {
            "line"
        } else {
            "record"
        };
        if let Some(at) = at {
            return format!(
                "{unit} {at}: {column:?}: is {given} here but the column is stored as {existing}"
            );
        }
    }
    e.to_string()
}

/// A large write whose body is still arriving (`req.body` is empty): when
/// another node serves it, it is forwarded with its body passed on as it
/// arrives. `None`: this node serves it (nothing was read); else the
/// answer and its metrics route, after which the caller checks
/// `stream.taken`/`complete`.
pub async fn forward_streaming(
    ctx: &Rc<CoreCtx>,
    req: &Request,
    stream: &mut crate::forward::Stream<'_>,
) -> Option<(Response, usize)> {
    if req.method != "POST" || !ctx.node.config.in_cluster() || !is_write_path(&req.path) {
        return None;
    }
    let route = usize::from(req.path == "/api/v1/write/msgpack");
    if ctx.node.config.auth.enabled {
        if let Some(denied) = auth::check(req, &ctx.node.tokens) {
            return Some((denied, route));
        }
    }
    let body = crate::forward::Body::Stream(stream);
    let resp = route_elsewhere(ctx, req, Forwardable::Write, body)
        .await
        // The view changed since the caller asked: nothing was read.
        .unwrap_or_else(|| Response::error(503, "the primary writer changed; retry"));
    Some((resp, route))
}

fn is_write_path(path: &str) -> bool {
    matches!(
        path,
        "/write" | "/api/v2/write" | "/api/v1/write/line-protocol" | "/api/v1/write/msgpack"
    )
}

/// Whether a write to `req.path` is served by this node (no forward).
pub fn write_served_here(ctx: &CoreCtx, req: &Request) -> bool {
    let view = ctx.node.control.view();
    match view.node_id {
        Some(me) if ctx.node.config.in_cluster() => {
            view.state.primary == Some(me) || !is_write_path(&req.path)
        }
        _ => true,
    }
}

/// Requests another node may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forwardable {
    Write,
    Query,
}

/// Where `req` goes, when not here: its answer (forwarded, or why it
/// cannot be served now). `None`: this node serves it.
async fn route_elsewhere(
    ctx: &Rc<CoreCtx>,
    req: &Request,
    kind: Forwardable,
    body: crate::forward::Body<'_, '_>,
) -> Option<Response> {
    use crate::routing::{self, Route};
    let node = &ctx.node;
    let target = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    // The chain of nodes a forwarded request went through, sealed by them.
    let chain = match req.header("x-tidemark-forwarded-by") {
        None => Vec::new(),
        Some(h) => {
            let chain = routing::parse_chain(h);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let sealed = chain.as_ref().is_some_and(|c| {
                req.header("x-tidemark-forward-auth").is_some_and(|a| {
                    routing::check_chain(
                        node.config.cluster.secret.as_bytes(),
                        a,
                        &req.method,
                        &target,
                        c,
                        now,
                        30,
                    )
                })
            });
            if !sealed {
                return Some(Response::error(
                    403,
                    "x-tidemark-forwarded-by is set only by cluster nodes: its seal (x-tidemark-forward-auth) is missing, forged or expired",
                ));
            }
            chain.expect("checked above")
        }
    };
    let decide = || {
        let view = node.control.view();
        let me = view.node_id.expect("in a cluster");
        match kind {
            Forwardable::Write => routing::route_write(&view.state, me, &chain),
            Forwardable::Query => routing::route_query(
                &view.state,
                me,
                &chain,
                node.config.routing.queries,
                node.config.routing.strategy,
                &mut ctx.balancer.borrow_mut(),
            ),
        }
    };
    match decide() {
        Route::Local => None,
        Route::Unavailable(why) => Some(Response::error(503, why)),
        Route::Loop(why) => Some(Response::error(508, why)),
        fwd @ Route::Forward { .. } => {
            let (label, to) = match (&fwd, kind) {
                (Route::Forward { to, .. }, Forwardable::Query) => ("query", Some(*to)),
                _ => ("write", None),
            };
            if let Some(to) = to {
                ctx.balancer.borrow_mut().started(to);
            }
            let resp = crate::forward::forward(ctx, req, body, &chain, fwd, label, decide).await;
            if let Some(to) = to {
                ctx.balancer.borrow_mut().finished(to);
            }
            Some(resp)
        }
    }
}

async fn write(ctx: &Rc<CoreCtx>, req: Request, format: usize) -> Response {
    let m = &ctx.metrics;
    m.ingest_requests[format].inc();
    m.ingest_bytes[format].inc_by(req.body.len() as u64);
    let resp = write_inner(ctx, req, format).await;
    if resp.status >= 300 {
        m.ingest_error(format, resp.status);
    }
    resp
}

async fn write_inner(ctx: &Rc<CoreCtx>, req: Request, format: usize) -> Response {
    let node = &ctx.node;
    // In a cluster, the epoch this write is taken for (checked again
    // before the answer).
    let mut epoch = None;
    if node.config.in_cluster() {
        let view = node.control.view();
        if let Some(resp) = not_primary(ctx, &view) {
            return resp;
        }
        epoch = Some(view.state.writer_epoch);
    } else if node.config.cluster.role == Role::Reader {
        return Response::error(
            503,
            format!(
                "this node is a replication reader and takes no writes; send them to its writer (replication {})",
                node.config.replication.writer_addr
            ),
        );
    }
    let Some(shard) = ctx.shard().filter(|_| node.is_ready()) else {
        let why = if node.is_shutting_down() {
            "the node is shutting down"
        } else {
            "the node is recovering its WAL"
        };
        return Response::error(503, format!("{why}; retry shortly"));
    };
    let db = database(ctx, &req);
    if let Err(e) = tidemark_shards::schema::validate_database_name(&db) {
        return Response::error(400, e.to_string());
    }
    let precision = match req.query_param("precision") {
        None => Precision::Nanoseconds,
        Some(p) if p.is_empty() => Precision::Nanoseconds,
        Some(p) => match Precision::parse(&p) {
            Some(p) => p,
            None => {
                return Response::error(
                    400,
                    format!("invalid precision {p:?} (expected ns, us, ms or s)"),
                )
            }
        },
    };
    let encoding = req.header("content-encoding").map(str::to_string);
    let body = match body::decode(
        req.body,
        encoding.as_deref(),
        node.config.http.max_body_bytes,
    ) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let now = now_ns();
    let decoded = match format {
        LINE_PROTOCOL => line_protocol::parse(&body, &db, precision, now),
        _ => msgpack::parse(&body, &db, now),
    };
    let decoded = match decoded {
        Ok(d) => d,
        Err(e) => return Response::error(400, e.to_string()),
    };
    if decoded.batches.is_empty() {
        return Response::no_content();
    }
    let rows = decoded.num_rows() as u64;
    if let Some(e) = epoch {
        ctx.become_primary(&shard, e);
    }
    match shard.write_all(decoded.batches.clone()).await {
        Ok(seq) => {
            ctx.metrics.ingest_rows[format].inc_by(rows);
            let r = &node.config.replication;
            let writer = ctx.writer.borrow().clone();
            if let (Some(side), true) = (writer, r.min_acks > 0) {
                let timeout = Duration::from_millis(r.ack_timeout_ms);
                if let Err(have) = side.wait_acks(seq, r.min_acks, timeout).await {
                    return Response::error(
                        504,
                        format!(
                            "the write is durable on the writer, but only {have} of the {} readers required (replication.min_acks) confirmed it within {} ms",
                            r.min_acks, r.ack_timeout_ms
                        ),
                    );
                }
            }
            // Deposed (or the lease ran out) while the write was in flight:
            // it is durable here, but not acknowledged.
            if let Some(e) = epoch {
                let view = node.control.view();
                if view.state.writer_epoch != e {
                    return Response::error(
                        503,
                        format!("this node stopped being the primary writer (epoch {e} ended) while the write was in flight; it may or may not be kept: retry at the new primary"),
                    )
                    .with_header("Retry-After", "1");
                }
                if let Some(resp) = not_primary(ctx, &view) {
                    return resp;
                }
                return Response::no_content()
                    .with_header("x-tidemark-writer-epoch", e.to_string());
            }
            Response::no_content()
        }
        Err(ShardError::Schema(e)) => {
            Response::error(400, schema_error_message(&e, &decoded, format))
        }
        Err(ShardError::Wal(e)) if e.is_retryable() => Response::error(503, e.to_string()),
        Err(e) => {
            tracing::error!(shard = ctx.id, error = %e, "write failed");
            Response::error(500, format!("write failed: {e}"))
        }
    }
}

/// In a cluster: the answer to a write when this node may not take it
/// now (not the primary, or its lease is not confirmed), with the primary's
/// HTTP address in `x-tidemark-primary` when there is one.
fn not_primary(ctx: &CoreCtx, view: &crate::control::ClusterView) -> Option<Response> {
    if view.is_primary() {
        if ctx.node.lease.holds(view.state.writer_epoch) {
            return None;
        }
        return Some(
            Response::error(
                503,
                "this node is the primary writer but its lease is not confirmed by the cluster (cut off, or just promoted); retry shortly",
            )
            .with_header("Retry-After", "1"),
        );
    }
    let primary = view.state.primary_node().map(|p| p.spec.http_addr.clone());
    let msg = match &primary {
        Some(addr) => {
            format!("this node is not the primary writer; send writes to the primary at {addr}")
        }
        None if view.state.failover.is_some() => {
            "a failover is in progress: the cluster has no primary writer right now; retry shortly"
                .to_string()
        }
        None => "the cluster has no primary writer right now; retry shortly".to_string(),
    };
    let resp = Response::error(503, msg).with_header("Retry-After", "1");
    Some(match primary {
        Some(addr) => resp.with_header("x-tidemark-primary", addr),
        None => resp,
    })
}

/// Flushes this core's shard and counts it.
pub async fn flush_shard(ctx: &CoreCtx, shard: &Shard) -> Result<(), ShardError> {
    match shard.flush().await {
        Ok(Some(out)) => {
            ctx.metrics.flushes.inc();
            ctx.metrics.flush_rows.inc_by(out.rows);
            ctx.metrics.flush_files.inc_by(out.files.len() as u64);
            ctx.refresh_gauges();
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            tracing::error!(shard = ctx.id, error = %e, "flush failed");
            Err(e)
        }
    }
}

/// `POST /api/v1/flush`: asks every core to flush and waits until all have
/// their files in the manifest.
async fn flush_all(ctx: &Rc<CoreCtx>) -> Response {
    let node = &ctx.node;
    if !node.is_ready() {
        return Response::error(503, "the node is not ready");
    }
    let epoch = node.request_flush();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match node.flush_status(epoch) {
            Some(Ok(())) => return Response::json(200, &serde_json::json!({"success": true})),
            Some(Err(e)) => return Response::error(500, format!("flush failed: {e}")),
            None if Instant::now() > deadline => {
                return Response::error(503, "flush did not finish within 120 s")
            }
            None => monoio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// The database a query reads by default: `x-arc-database`, else `default`.
fn query_database(ctx: &CoreCtx, req: &Request) -> String {
    req.header("x-arc-database")
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .or_else(|| req.query_param("db").filter(|d| !d.is_empty()))
        .unwrap_or_else(|| ctx.node.config.http.default_database.clone())
}

/// `POST /api/v1/query` (`{"sql": ...}` -> Arc's JSON) and
/// `POST /api/v1/query/arrow` (-> an Arrow IPC stream).
async fn query(ctx: &Rc<CoreCtx>, req: Request, format: OutputFormat) -> Response {
    if !ctx.node.is_ready() {
        return Response::error(503, "the node is not ready");
    }
    let sql = match serde_json::from_slice::<serde_json::Value>(&req.body) {
        Ok(v) => match v.get("sql").and_then(|s| s.as_str()) {
            Some(s) if !s.trim().is_empty() => s.to_string(),
            _ => return query_error(400, "the request body needs a non-empty \"sql\" string"),
        },
        Err(e) => return query_error(400, &format!("the request body is not JSON: {e}")),
    };
    let database = query_database(ctx, &req);
    if let Err(e) = tidemark_shards::schema::validate_database_name(&database) {
        return query_error(400, &e.to_string());
    }
    // A query forwarded by a PostgreSQL server names tables its way.
    let names = match req.header("x-tidemark-sql-names") {
        None => crate::query::remote::Names::Http,
        Some(v) => match crate::query::remote::Names::parse(v) {
            Some(n) => n,
            None => {
                return query_error(
                    400,
                    &format!("x-tidemark-sql-names: {v:?} is not http or postgres"),
                )
            }
        },
    };
    let out = ctx.node.query.run(sql, database, names, format).await;
    let mut headers = vec![("Content-Type", out.content_type.into())];
    if let Some(kind) = out.error {
        headers.push(("x-tidemark-error-kind", kind.name().into()));
    }
    Response {
        status: out.status,
        headers,
        body: out.body,
    }
}

fn query_error(status: u16, message: &str) -> Response {
    Response::json(
        status,
        &crate::query::json::error_body(message, 0, chrono::Utc::now()),
    )
}

/// `GET /api/v1/measurements`: every database, measurement and column.
fn measurements(ctx: &CoreCtx, req: &Request) -> Response {
    let only = req
        .header("x-arc-database")
        .map(str::to_string)
        .or_else(|| req.query_param("db"));
    /// One table's files: how many, their bytes and rows, their hours.
    #[derive(Default)]
    struct Stored {
        files: u64,
        bytes: u64,
        rows: u64,
        hours: std::collections::BTreeSet<i64>,
    }
    let mut stored: std::collections::HashMap<(String, String), Stored> =
        std::collections::HashMap::new();
    for f in ctx.node.manifest.files() {
        let e = stored
            .entry((f.database.clone(), f.measurement.clone()))
            .or_default();
        e.files += 1;
        e.bytes += f.size;
        e.rows += f.rows;
        e.hours.insert(f.hour);
    }
    let list: Vec<serde_json::Value> = ctx
        .node
        .catalog
        .tables()
        .into_iter()
        .filter(|(k, _)| only.as_deref().is_none_or(|d| d == k.database()))
        .map(|(k, s)| {
            let none = Stored::default();
            let Stored {
                files,
                bytes,
                rows,
                hours,
            } = stored
                .get(&(k.database().to_string(), k.measurement().to_string()))
                .unwrap_or(&none);
            serde_json::json!({
                "database": k.database(),
                "measurement": k.measurement(),
                "columns": s.columns().map(|(n, kind)| serde_json::json!({"name": n, "type": kind.to_string()})).collect::<Vec<_>>(),
                "files": files,
                "file_bytes": bytes,
                "file_rows": rows,
                "partitions": hours.len(),
            })
        })
        .collect();
    Response::json(
        200,
        &serde_json::json!({"success": true, "measurements": list}),
    )
}

/// `POST /api/v1/compact`, optionally narrowed to a database (and a
/// measurement) by `{"database": .., "measurement": ..}` or the same query
/// parameters: retention, then a compaction of every partition that can
/// shrink, now. Answers what they did.
async fn compact_now(ctx: &CoreCtx, req: &Request) -> Response {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Body {
        database: Option<String>,
        measurement: Option<String>,
    }
    let mut scope: Body = if req.body.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(b) => b,
            Err(e) => {
                return Response::error(
                    400,
                    format!(
                        "expected {{\"database\": .., \"measurement\": ..}} (both optional): {e}"
                    ),
                )
            }
        }
    };
    scope.database = scope.database.or_else(|| req.query_param("database"));
    scope.measurement = scope.measurement.or_else(|| req.query_param("measurement"));
    if scope.measurement.is_some() && scope.database.is_none() {
        return Response::error(400, "a measurement needs its database (\"database\")");
    }
    let scope = crate::storage::Scope {
        database: scope.database,
        measurement: scope.measurement,
    };
    match ctx.node.storage.compact_now(scope).await {
        Some(report) => Response::json(200, &serde_json::to_value(&report).unwrap_or_default()),
        None => Response::error(503, "the compaction thread is busy or stopped; try again")
            .with_header("Retry-After", "1"),
    }
}

/// `GET` and `PUT /api/v1/databases/{db}/retention`. `PUT` takes
/// `{"duration": "30d"}` (`"0"`: keep forever; `null`: back to
/// `retention.default`).
async fn retention(ctx: &CoreCtx, method: &str, db: &str, body: &[u8]) -> Response {
    if let Err(e) = tidemark_shards::schema::validate_database_name(db) {
        return Response::error(400, format!("database {db:?}: {e}"));
    }
    let manifest = &ctx.node.manifest;
    match method {
        "GET" => {}
        "PUT" => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                duration: Option<String>,
            }
            let b: Body = match serde_json::from_slice(body) {
                Ok(b) => b,
                Err(e) => {
                    return Response::error(
                        400,
                        format!("expected {{\"duration\": \"30d\"}} (\"0\": forever, null: the default): {e}"),
                    )
                }
            };
            let seconds = match b.duration.as_deref().map(crate::config::parse_retention) {
                None => None,
                Some(Ok(keep)) => Some(keep.map_or(0, |d| d.as_secs().max(1))),
                Some(Err(e)) => return Response::error(400, format!("duration: {e}")),
            };
            if ctx.node.config.in_cluster() {
                // For every node: through the control core; each node
                // copies it into its manifest (this one at once).
                let admin = crate::control::Admin::SetRetention {
                    database: db.to_string(),
                    seconds,
                };
                if let Err(e) = ctx.node.control.admin(admin).await {
                    return Response::error(e.status(), e.to_string());
                }
                crate::storage::sync_retention(&ctx.node);
            } else if let Err(e) = manifest.set_retention(db, seconds) {
                return Response::error(500, format!("cannot record the retention: {e}"));
            }
        }
        _ => {
            return Response::error(
                405,
                format!("method {method} is not allowed on /api/v1/databases/{{db}}/retention"),
            )
        }
    }
    // In a cluster the cluster state decides (the manifest follows it).
    let cluster = ctx.node.control.view().state.retention.get(db).copied();
    let own = match cluster {
        Some(set) => set,
        None => manifest.retention().get(db).copied(),
    };
    let keep = match own {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => manifest
            .keep_for(db)
            .filter(|_| cluster.is_none())
            .or_else(|| {
                crate::config::parse_retention(&ctx.node.config.retention.default)
                    .ok()
                    .flatten()
            }),
    };
    Response::json(
        200,
        &serde_json::json!({
            "database": db,
            "duration": keep.map(|d| humantime::format_duration(d).to_string()),
            "seconds": keep.map(|d| d.as_secs()),
            "source": if own.is_some() { "database" } else if keep.is_some() { "default" } else { "none" },
        }),
    )
}
