//! Prometheus metrics (`GET /metrics`), through `prometheus-client`.
//!
//! Every family is registered once for the node with a `shard` label. Each
//! shard core keeps [`CoreMetrics`]: handles to its own label children, so a
//! core only ever touches its own atomics and nothing on the hot path
//! contends across cores. Encoding (on a scrape) reads them all.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tidemark_shards::throttle::ThrottleStats;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatLabels {
    pub shard: String,
    pub format: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub shard: String,
    pub format: String,
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub shard: String,
    pub route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReaderLabels {
    pub reader: String,
    pub shard: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

/// The node's metric families.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Mutex<Registry>,
    ingest_rows: Family<FormatLabels, Counter>,
    ingest_bytes: Family<FormatLabels, Counter>,
    ingest_requests: Family<FormatLabels, Counter>,
    ingest_errors: Family<ErrorLabels, Counter>,
    wal_appends: Family<ShardLabel, Counter>,
    wal_fsyncs: Family<ShardLabel, Counter>,
    wal_bytes: Family<ShardLabel, Counter>,
    wal_fsync_seconds: HistogramFamily<ShardLabel>,
    buffer_rows: Family<ShardLabel, Gauge>,
    buffer_bytes: Family<ShardLabel, Gauge>,
    flushes: Family<ShardLabel, Counter>,
    flush_rows: Family<ShardLabel, Counter>,
    flush_files: Family<ShardLabel, Counter>,
    http_seconds: HistogramFamily<RouteLabels>,
    connections: Family<ShardLabel, Gauge>,
    core_busy: Family<ShardLabel, Counter<f64, AtomicU64>>,
    ingest_slowed: Family<ShardLabel, Counter>,
    ingest_slowed_seconds: Family<ShardLabel, Counter<f64, AtomicU64>>,
    ingest_stalled: Family<ShardLabel, Counter>,
    ingest_stalled_seconds: Family<ShardLabel, Counter<f64, AtomicU64>>,
    pub ready: Gauge,
    pub replication: ReplicationFamilies,
    pub control: ControlFamilies,
    pub forward: ForwardFamilies,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    pub route: String,
    pub upstream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardErrorLabels {
    pub route: String,
    pub upstream: String,
    pub reason: String,
}

/// Routing metrics: requests this node forwarded, by route and upstream.
#[derive(Debug)]
pub struct ForwardFamilies {
    pub requests: Family<ForwardLabels, Counter>,
    pub bytes_out: Family<ForwardLabels, Counter>,
    pub bytes_in: Family<ForwardLabels, Counter>,
    pub errors: Family<ForwardErrorLabels, Counter>,
    pub seconds: HistogramFamily<ForwardLabels>,
    pub pool: Family<ShardLabel, Gauge>,
}

impl Default for ForwardFamilies {
    fn default() -> Self {
        ForwardFamilies {
            requests: Family::default(),
            bytes_out: Family::default(),
            bytes_in: Family::default(),
            errors: Family::default(),
            seconds: Family::new_with_constructor(latency_histogram),
            pool: Family::default(),
        }
    }
}

impl ForwardFamilies {
    fn register(&self, r: &mut Registry) {
        r.register(
            "forwarded_requests",
            "Requests this node passed to the node that serves them and got an answer from, by route and upstream node",
            self.requests.clone(),
        );
        r.register_with_unit(
            "forwarded_sent",
            "Bytes of forwarded requests sent upstream (head and body), by route and upstream node",
            Unit::Bytes,
            self.bytes_out.clone(),
        );
        r.register_with_unit(
            "forwarded_received",
            "Bytes of answer bodies received from upstream, by route and upstream node",
            Unit::Bytes,
            self.bytes_in.clone(),
        );
        r.register(
            "forward_errors",
            "Forwards that failed, by route, upstream node and reason (not_sent: retried or 502; after_send: 502)",
            self.errors.clone(),
        );
        r.register_with_unit(
            "forward_duration",
            "Time of a forward, from sending to the upstream's whole answer (the latency it adds), by route and upstream node",
            Unit::Seconds,
            self.seconds.clone(),
        );
        r.register(
            "forward_pool_connections",
            "Idle keep-alive connections to other nodes, by shard",
            self.pool.clone(),
        );
    }

    /// Counts a failed forward.
    pub fn error(&self, route: &str, upstream: crate::control::state::NodeId, reason: &str) {
        self.errors
            .get_or_create(&ForwardErrorLabels {
                route: route.into(),
                upstream: upstream.to_string(),
                reason: reason.into(),
            })
            .inc();
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabel {
    pub rpc: String,
    pub result: String,
}

/// Control core metrics: Raft status, node states, heartbeats, RPCs.
#[derive(Debug)]
pub struct ControlFamilies {
    pub raft_term: Gauge,
    pub raft_leader: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub nodes: Family<StateLabel, Gauge>,
    pub heartbeat_failures: Counter,
    pub rpc_seconds: HistogramFamily<RpcLabel>,
    pub writer_epoch: Gauge,
    pub failovers_started: Counter,
    pub failovers_completed: Counter,
    pub failovers_aborted: Counter,
    pub failover_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for ControlFamilies {
    fn default() -> Self {
        ControlFamilies {
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            nodes: Family::default(),
            heartbeat_failures: Counter::default(),
            rpc_seconds: Family::new_with_constructor(latency_histogram),
            writer_epoch: Gauge::default(),
            failovers_started: Counter::default(),
            failovers_completed: Counter::default(),
            failovers_aborted: Counter::default(),
            failover_seconds: prometheus_client::metrics::histogram::Histogram::new([
                0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 40.0, 60.0,
            ]),
        }
    }
}

impl ControlFamilies {
    fn register(&self, r: &mut Registry) {
        r.register(
            "raft_term",
            "Cluster: the current Raft term",
            self.raft_term.clone(),
        );
        r.register(
            "raft_leader",
            "Cluster: the Raft leader's node id (0 while none is known)",
            self.raft_leader.clone(),
        );
        r.register(
            "raft_is_leader",
            "Cluster: 1 while this node is the Raft leader",
            self.raft_is_leader.clone(),
        );
        r.register(
            "raft_commit_index",
            "Cluster: the last Raft log index known committed on this node",
            self.raft_commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Cluster: the last Raft log index applied to this node's cluster state",
            self.raft_applied_index.clone(),
        );
        r.register(
            "cluster_nodes",
            "Cluster: nodes in the cluster state, by health state",
            self.nodes.clone(),
        );
        r.register(
            "cluster_heartbeat_failures",
            "Cluster: heartbeats to the leader that failed (unreachable, timed out, refused)",
            self.heartbeat_failures.clone(),
        );
        r.register(
            "cluster_writer_epoch",
            "Cluster: the writer epoch (moves on at every change of primary writer)",
            self.writer_epoch.clone(),
        );
        r.register(
            "cluster_failovers_started",
            "Cluster (leader): failovers of the primary writer begun by this node (dead primary, or an operator's hand-over)",
            self.failovers_started.clone(),
        );
        r.register(
            "cluster_failovers_completed",
            "Cluster (leader): failovers this node ended by promoting a new primary",
            self.failovers_completed.clone(),
        );
        r.register(
            "cluster_failovers_aborted",
            "Cluster (leader): failover steps this node gave up (a newer decision came first, or the chosen node could not be promoted)",
            self.failovers_aborted.clone(),
        );
        r.register_with_unit(
            "cluster_failover_duration",
            "Cluster (leader): from the start of a failover to the promotion of the new primary",
            Unit::Seconds,
            self.failover_seconds.clone(),
        );
        r.register_with_unit(
            "control_rpc_duration",
            "Cluster: duration of Raft RPCs this node sent, by RPC and result",
            Unit::Seconds,
            self.rpc_seconds.clone(),
        );
    }

    /// Records one Raft RPC.
    pub fn observe_rpc(&self, rpc: &str, d: std::time::Duration, ok: bool) {
        self.rpc_seconds
            .get_or_create(&RpcLabel {
                rpc: rpc.into(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .observe(d.as_secs_f64());
    }

    /// Copies the Raft status and node counts into the gauges.
    pub fn set_status(
        &self,
        term: u64,
        leader: u64,
        committed: u64,
        applied: u64,
        is_leader: bool,
        state: &crate::control::state::ClusterState,
    ) {
        self.raft_term.set(term as i64);
        self.raft_leader.set(leader as i64);
        self.raft_commit_index.set(committed as i64);
        self.raft_applied_index.set(applied as i64);
        self.raft_is_leader.set(i64::from(is_leader));
        self.writer_epoch.set(state.writer_epoch.0 as i64);
        for st in [
            crate::control::state::NodeState::Healthy,
            crate::control::state::NodeState::Unhealthy,
            crate::control::state::NodeState::Dead,
        ] {
            let n = state.nodes.values().filter(|n| n.state == st).count();
            self.nodes
                .get_or_create(&StateLabel {
                    state: st.as_str().into(),
                })
                .set(n as i64);
        }
    }
}

/// Replication metrics: per (reader, shard) on a writer, per shard on a reader.
#[derive(Debug, Default)]
pub struct ReplicationFamilies {
    pub lag_entries: Family<ReaderLabels, Gauge>,
    pub lag_seconds: Family<ReaderLabels, Gauge<f64, AtomicU64>>,
    pub sent_bytes: Family<ReaderLabels, Counter>,
    pub resyncs: Family<ReaderLabels, Counter>,
    pub bootstraps: Family<ReaderLabels, Counter>,
    pub forced_removals: Family<ShardLabel, Counter>,
    pub applied_entries: Family<ShardLabel, Counter>,
    pub applied_rows: Family<ShardLabel, Counter>,
    pub applied_seq: Family<ShardLabel, Gauge>,
    pub connected: Family<ShardLabel, Gauge>,
    pub reader_resyncs: Family<ShardLabel, Counter>,
    pub reader_bootstraps: Family<ShardLabel, Counter>,
    pub truncated_entries: Family<ShardLabel, Counter>,
}

impl ReplicationFamilies {
    fn register(&self, r: &mut Registry) {
        r.register(
            "replication_lag_entries",
            "Writer: WAL entries durable on the writer that the reader has not acknowledged, by reader and shard",
            self.lag_entries.clone(),
        );
        r.register_with_unit(
            "replication_lag",
            "Writer: how long the reader has been behind the writer's WAL (0 when caught up), by reader and shard",
            Unit::Seconds,
            self.lag_seconds.clone(),
        );
        r.register_with_unit(
            "replication_sent",
            "Writer: bytes of WAL entries sent to the reader, by reader and shard",
            Unit::Bytes,
            self.sent_bytes.clone(),
        );
        r.register(
            "replication_resyncs",
            "Writer: times the reader reconnected and resumed (after a cut connection, a gap or a restart), by reader and shard",
            self.resyncs.clone(),
        );
        r.register(
            "replication_bootstraps",
            "Writer: times the reader was told to bootstrap from Parquet files because the entries it needed were gone, by reader and shard",
            self.bootstraps.clone(),
        );
        r.register(
            "replication_forced_segment_removals",
            "Writer: WAL segments removed while a reader still needed them (replication.max_retained_bytes reached)",
            self.forced_removals.clone(),
        );
        r.register(
            "replication_applied_entries",
            "Reader: WAL entries received from the writer and applied, by shard",
            self.applied_entries.clone(),
        );
        r.register(
            "replication_applied_rows",
            "Reader: rows received from the writer and applied, by shard",
            self.applied_rows.clone(),
        );
        r.register(
            "replication_applied_seq",
            "Reader: the last WAL sequence number applied (durable and queryable), by shard",
            self.applied_seq.clone(),
        );
        r.register(
            "replication_connected",
            "Reader: 1 while the shard's stream from the writer is up; writer: readers streaming from the shard",
            self.connected.clone(),
        );
        r.register(
            "replication_reader_resyncs",
            "Reader: reconnections to the writer after a failure (cut connection, gap, writer restart), by shard",
            self.reader_resyncs.clone(),
        );
        r.register(
            "replication_reader_bootstraps",
            "Reader: times the writer said this shard must bootstrap from Parquet files, by shard",
            self.reader_bootstraps.clone(),
        );
        r.register(
            "wal_truncated_entries",
            "WAL entries removed because a deposed primary wrote them and the new primary does not have them (the log forked), by shard",
            self.truncated_entries.clone(),
        );
    }
}

/// The ingest formats, as metric label values.
pub const FORMATS: [&str; 2] = ["line_protocol", "msgpack"];
/// The routes measured by the HTTP latency histogram.
pub const ROUTES: [&str; 11] = [
    "write_line_protocol",
    "write_msgpack",
    "health",
    "ready",
    "metrics",
    "flush",
    "other",
    "query",
    "replication",
    "cluster",
    "storage",
];

impl NodeMetrics {
    pub fn new() -> Arc<NodeMetrics> {
        let mut r = Registry::with_prefix("tidemark");
        let m = NodeMetrics {
            ingest_rows: Family::default(),
            ingest_bytes: Family::default(),
            ingest_requests: Family::default(),
            ingest_errors: Family::default(),
            wal_appends: Family::default(),
            wal_fsyncs: Family::default(),
            wal_bytes: Family::default(),
            wal_fsync_seconds: Family::new_with_constructor(latency_histogram),
            buffer_rows: Family::default(),
            buffer_bytes: Family::default(),
            flushes: Family::default(),
            flush_rows: Family::default(),
            flush_files: Family::default(),
            http_seconds: Family::new_with_constructor(latency_histogram),
            connections: Family::default(),
            core_busy: Family::default(),
            ingest_slowed: Family::default(),
            ingest_slowed_seconds: Family::default(),
            ingest_stalled: Family::default(),
            ingest_stalled_seconds: Family::default(),
            ready: Gauge::default(),
            replication: ReplicationFamilies::default(),
            control: ControlFamilies::default(),
            forward: ForwardFamilies::default(),
            registry: Mutex::new(Registry::default()),
        };
        m.replication.register(&mut r);
        m.control.register(&mut r);
        m.forward.register(&mut r);
        r.register(
            "ingest_rows",
            "Rows accepted, by shard and format",
            m.ingest_rows.clone(),
        );
        r.register_with_unit(
            "ingest",
            "Request body bytes received (as sent, before decompression), by shard and format",
            Unit::Bytes,
            m.ingest_bytes.clone(),
        );
        r.register(
            "ingest_requests",
            "Write requests received, by shard and format",
            m.ingest_requests.clone(),
        );
        r.register(
            "ingest_errors",
            "Write requests refused, by shard, format and HTTP status",
            m.ingest_errors.clone(),
        );
        r.register(
            "wal_appends",
            "WAL entries made durable",
            m.wal_appends.clone(),
        );
        r.register(
            "wal_fsyncs",
            "WAL group commits synced to disk (fdatasync or fsync)",
            m.wal_fsyncs.clone(),
        );
        r.register_with_unit(
            "wal_written",
            "Bytes written to the WAL",
            Unit::Bytes,
            m.wal_bytes.clone(),
        );
        r.register_with_unit(
            "wal_fsync_duration",
            "Time of each WAL fdatasync/fsync",
            Unit::Seconds,
            m.wal_fsync_seconds.clone(),
        );
        r.register(
            "buffer_rows",
            "Rows buffered in memory, not yet in Parquet files",
            m.buffer_rows.clone(),
        );
        r.register_with_unit(
            "buffer",
            "Approximate bytes buffered in memory",
            Unit::Bytes,
            m.buffer_bytes.clone(),
        );
        r.register(
            "flushes",
            "Flushes of a shard's buffer to Parquet files",
            m.flushes.clone(),
        );
        r.register(
            "flushed_rows",
            "Rows written to Parquet files",
            m.flush_rows.clone(),
        );
        r.register(
            "flushed_files",
            "Parquet files written",
            m.flush_files.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "HTTP request latency, by shard and route",
            Unit::Seconds,
            m.http_seconds.clone(),
        );
        r.register(
            "http_connections",
            "Open HTTP connections, by shard",
            m.connections.clone(),
        );
        r.register_with_unit(
            "core_busy",
            "CPU time used by each shard core's thread (its load)",
            Unit::Seconds,
            m.core_busy.clone(),
        );
        r.register(
            "ingest_slowed_writes",
            "Writes that waited at the backpressure gate (a flush running, the core busier than the buffer's fill allows)",
            m.ingest_slowed.clone(),
        );
        r.register_with_unit(
            "ingest_slowed",
            "Time writes waited at the backpressure gate, in all",
            Unit::Seconds,
            m.ingest_slowed_seconds.clone(),
        );
        r.register(
            "ingest_stalled_writes",
            "Writes that found the buffer full (buffer.max_bytes) and waited for a flush to start",
            m.ingest_stalled.clone(),
        );
        r.register_with_unit(
            "ingest_stalled",
            "Time writes waited for room in a full buffer, in all",
            Unit::Seconds,
            m.ingest_stalled_seconds.clone(),
        );
        r.register(
            "ready",
            "1 once the node has recovered and serves writes, 0 otherwise",
            m.ready.clone(),
        );
        *m.registry.lock().expect("metrics lock") = r;
        Arc::new(m)
    }

    /// Registers more families (of other modules).
    pub fn register_with(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().expect("metrics lock"));
    }

    /// Registers the query pool's pruning counters and the query families.
    pub fn register_query(&self, engine: &std::sync::Arc<crate::query::QueryEngine>) {
        let mut r = self.registry.lock().expect("metrics lock");
        let e = engine.clone();
        r.register_collector(Box::new(PruningCollector(e)));
    }

    /// The handles of shard `shard`'s own metrics.
    pub fn core(&self, shard: usize) -> CoreMetrics {
        let s = shard.to_string();
        let sl = ShardLabel { shard: s.clone() };
        let per_format = |f: &Family<FormatLabels, Counter>| {
            FORMATS.map(|format| {
                f.get_or_create(&FormatLabels {
                    shard: s.clone(),
                    format: format.into(),
                })
                .clone()
            })
        };
        CoreMetrics {
            shard: s.clone(),
            ingest_rows: per_format(&self.ingest_rows),
            ingest_bytes: per_format(&self.ingest_bytes),
            ingest_requests: per_format(&self.ingest_requests),
            ingest_errors: self.ingest_errors.clone(),
            wal_appends: self.wal_appends.get_or_create(&sl).clone(),
            wal_fsyncs: self.wal_fsyncs.get_or_create(&sl).clone(),
            wal_bytes: self.wal_bytes.get_or_create(&sl).clone(),
            wal_fsync_seconds: self.wal_fsync_seconds.get_or_create(&sl).clone(),
            buffer_rows: self.buffer_rows.get_or_create(&sl).clone(),
            buffer_bytes: self.buffer_bytes.get_or_create(&sl).clone(),
            flushes: self.flushes.get_or_create(&sl).clone(),
            flush_rows: self.flush_rows.get_or_create(&sl).clone(),
            flush_files: self.flush_files.get_or_create(&sl).clone(),
            http_seconds: ROUTES.map(|route| {
                self.http_seconds
                    .get_or_create(&RouteLabels {
                        shard: s.clone(),
                        route: route.into(),
                    })
                    .clone()
            }),
            connections: self.connections.get_or_create(&sl).clone(),
            core_busy: self.core_busy.get_or_create(&sl).clone(),
            ingest_slowed: self.ingest_slowed.get_or_create(&sl).clone(),
            ingest_slowed_seconds: self.ingest_slowed_seconds.get_or_create(&sl).clone(),
            ingest_stalled: self.ingest_stalled.get_or_create(&sl).clone(),
            ingest_stalled_seconds: self.ingest_stalled_seconds.get_or_create(&sl).clone(),
            throttle_seen: Default::default(),
        }
    }

    /// The Prometheus text format (0.0.4) of every metric: what `promtool
    /// check metrics` and older scrapers read.
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }

    /// The OpenMetrics exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().expect("metrics lock"),
        )
        .expect("writing to a String cannot fail");
        out
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4: a counter
/// family's `# HELP`/`# TYPE` lines name the `_total` series it exposes,
/// and `# UNIT` and `# EOF` lines (not part of 0.0.4) are dropped.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Exposes the query pool's file pruning counters at scrape time.
#[derive(Debug)]
struct PruningCollector(std::sync::Arc<crate::query::QueryEngine>);

impl prometheus_client::collector::Collector for PruningCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use std::sync::atomic::Ordering;
        for (name, help, v) in [
            (
                "query_files_pruned",
                "Parquet files skipped by a query's time range before being opened",
                self.0.files_pruned.load(Ordering::Relaxed),
            ),
            (
                "query_files_scanned",
                "Parquet files a query opened",
                self.0.files_scanned.load(Ordering::Relaxed),
            ),
        ] {
            let counter = ConstCounter::new(v);
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric_encoder)?;
        }
        let running = prometheus_client::metrics::gauge::ConstGauge::new(
            self.0.running.load(Ordering::Relaxed),
        );
        let metric_encoder = encoder.encode_descriptor(
            "queries_running",
            "Queries executing on the query pool now",
            None,
            running.metric_type(),
        )?;
        running.encode(metric_encoder)?;
        Ok(())
    }
}

/// One shard core's metrics. Only that core updates them.
#[derive(Debug, Clone)]
pub struct CoreMetrics {
    shard: String,
    pub ingest_rows: [Counter; 2],
    pub ingest_bytes: [Counter; 2],
    pub ingest_requests: [Counter; 2],
    ingest_errors: Family<ErrorLabels, Counter>,
    pub wal_appends: Counter,
    pub wal_fsyncs: Counter,
    pub wal_bytes: Counter,
    pub wal_fsync_seconds: Histogram,
    pub buffer_rows: Gauge,
    pub buffer_bytes: Gauge,
    pub flushes: Counter,
    pub flush_rows: Counter,
    pub flush_files: Counter,
    pub http_seconds: [Histogram; ROUTES.len()],
    pub connections: Gauge,
    pub core_busy: Counter<f64, AtomicU64>,
    ingest_slowed: Counter,
    ingest_slowed_seconds: Counter<f64, AtomicU64>,
    ingest_stalled: Counter,
    ingest_stalled_seconds: Counter<f64, AtomicU64>,
    /// The shard's backpressure counts already added to the counters above.
    throttle_seen: Arc<Mutex<ThrottleStats>>,
}

impl CoreMetrics {
    /// Adds what the shard's backpressure gate did since the last call.
    pub fn update_throttle(&self, now: ThrottleStats) {
        let seen = std::mem::replace(&mut *self.throttle_seen.lock().expect("throttle lock"), now);
        self.ingest_slowed
            .inc_by(now.slowed.saturating_sub(seen.slowed));
        self.ingest_slowed_seconds
            .inc_by((now.slowed_seconds - seen.slowed_seconds).max(0.0));
        self.ingest_stalled
            .inc_by(now.stalled.saturating_sub(seen.stalled));
        self.ingest_stalled_seconds
            .inc_by((now.stalled_seconds - seen.stalled_seconds).max(0.0));
    }

    /// Counts a refused write (errors are rare: the family's lock is fine here).
    pub fn ingest_error(&self, format: usize, status: u16) {
        self.ingest_errors
            .get_or_create(&ErrorLabels {
                shard: self.shard.clone(),
                format: FORMATS[format].into(),
                status: status.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type() {
        let m = NodeMetrics::new();
        let c = m.core(0);
        c.ingest_rows[0].inc_by(5);
        c.ingest_error(1, 400);
        c.wal_fsync_seconds.observe(0.001);
        let text = m.encode();
        assert!(
            text.contains("tidemark_ingest_rows_total{shard=\"0\",format=\"line_protocol\"} 5"),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// A query protocol's statements by outcome and the rows it sent
/// (`tidemark_<protocol>_queries_total{outcome}`,
/// `tidemark_<protocol>_rows_total`): the PostgreSQL and Flight SQL servers.
#[derive(Debug, Default)]
pub struct ProtocolMetrics {
    queries: Family<OutcomeLabel, Counter>,
    rows: Counter,
}

impl ProtocolMetrics {
    /// Registers the two families as `<protocol>_queries` and
    /// `<protocol>_rows`, with their help texts.
    pub fn register(&self, r: &mut Registry, protocol: &str, queries_help: &str, rows_help: &str) {
        r.register(
            format!("{protocol}_queries"),
            queries_help,
            self.queries.clone(),
        );
        r.register(format!("{protocol}_rows"), rows_help, self.rows.clone());
    }

    /// A statement ended: `ok`, `error` or `cancelled`.
    pub fn outcome(&self, outcome: &'static str) {
        self.queries.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn rows(&self, n: usize) {
        self.rows.inc_by(n as u64);
    }
}
