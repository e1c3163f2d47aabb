//! tidemark's one configuration: defaults, then a TOML file (`--config`),
//! then `TIDEMARK_<SECTION>_<KEY>` environment variables, then command-line
//! flags. Validated once at start (`Config::validate`).
//!
//! Every key, its default and its limits are documented on its field and in
//! README.md ("Configuration").

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tidemark_shards::replication::Compression;
use tidemark_shards::runtime::DriverChoice;
use tidemark_shards::wal::{RecoveryMode, SyncMode, WalIo};

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "TIDEMARK_";

/// `TIDEMARK_*` variables that are not settings: the log filter, and the
/// crash and pause points of builds with the `failpoints` feature.
const NOT_SETTINGS: [&str; 4] = [
    "TIDEMARK_LOG",
    "TIDEMARK_CRASH_AT",
    "TIDEMARK_PAUSE_AT",
    "TIDEMARK_PAUSE_MS",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub http: HttpConfig,
    pub wal: WalSettings,
    pub buffer: BufferSettings,
    pub flush: FlushSettings,
    pub query: QuerySettings,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
    pub replication: ReplicationSettings,
    pub tls: TlsConfig,
    pub routing: RoutingConfig,
    pub compaction: CompactionSettings,
    pub retention: RetentionSettings,
    pub pg: PgConfig,
    pub flight: FlightConfig,
}

/// The PostgreSQL wire protocol server (see `pg.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgConfig {
    /// Where it listens, e.g. `127.0.0.1:8432`; empty (default): off.
    pub addr: String,
}

/// The Arrow Flight SQL server (gRPC; see `flight.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlightConfig {
    /// Where it listens, e.g. `127.0.0.1:8433`; empty (default): off.
    pub addr: String,
}

/// Background compaction of each node's own files (see
/// `tidemark_shards::compact`). Durations are written like `90s`, `10m`,
/// `1h`, `7d`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionSettings {
    /// Run compactions in the background (default true); `POST
    /// /api/v1/compact` works either way.
    pub enabled: bool,
    /// Compact a (database, measurement, hour, shard) partition holding
    /// more than this many files; default 8.
    pub min_files: usize,
    /// ... once its hour ended at least this long ago; default `1h`.
    pub min_age: String,
    /// Size of the files a compaction writes, and of the input of one job
    /// (held in memory, decoded); default 134217728 (128 MiB).
    pub target_file_bytes: u64,
    /// zstd level of compacted files, 1 to 22; default 3.
    pub zstd_level: i32,
    /// Bytes read plus written per second, at most; 0: no limit. Default
    /// 67108864 (64 MiB/s).
    pub bytes_per_second: u64,
    /// Nice value of the compaction thread, 0 to 19; default 10.
    pub nice: i32,
    /// How often to look for partitions to compact; default `1m`.
    pub check_interval: String,
}

impl Default for CompactionSettings {
    fn default() -> Self {
        CompactionSettings {
            enabled: true,
            min_files: 8,
            min_age: "1h".into(),
            target_file_bytes: 128 << 20,
            zstd_level: 3,
            bytes_per_second: 64 << 20,
            nice: 10,
            check_interval: "1m".into(),
        }
    }
}

/// How long data is kept. Whole hour partitions are dropped once their
/// hour ended longer ago than the limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// For databases without their own: e.g. `30d`; empty or `0`: forever
    /// (default).
    pub default: String,
    /// How often retention is applied; default `1m`.
    pub check_interval: String,
    /// Per database, its retention (as `default`); `PUT
    /// /api/v1/databases/{db}/retention` overrides it at run time.
    pub databases: std::collections::BTreeMap<String, String>,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            default: String::new(),
            check_interval: "1m".into(),
            databases: Default::default(),
        }
    }
}

/// Parses a duration such as `30d`, `12h`, `90s` or `1h 30m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 30d, 12h or 90s: {e}"))
}

/// A retention: `None` (forever) for an empty string or `0`.
pub fn parse_retention(s: &str) -> Result<Option<std::time::Duration>, String> {
    let s = s.trim();
    if s.is_empty() || s == "0" {
        return Ok(None);
    }
    let d = parse_duration(s)?;
    Ok((!d.is_zero()).then_some(d))
}

impl CompactionSettings {
    /// The compaction settings as the shards crate takes them.
    pub fn to_config(&self) -> tidemark_shards::compact::CompactionConfig {
        tidemark_shards::compact::CompactionConfig {
            min_files: self.min_files,
            min_age: parse_duration(&self.min_age).unwrap_or_default(),
            target_file_bytes: self.target_file_bytes,
            zstd_level: self.zstd_level,
            bytes_per_second: self.bytes_per_second,
        }
    }
}

/// Where a node sends requests it does not serve (in a cluster; see
/// `routing.rs`). Writes always go to the primary writer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// `local` (default): a query is served by the node that received it;
    /// `readers`: by a healthy reader (the primary when there is none).
    pub queries: crate::routing::QueryRouting,
    /// How a reader is picked: `round-robin` (default) or
    /// `least-connections`.
    pub strategy: crate::routing::Strategy,
}

/// Inter-node TLS (control port; mutual: every peer's certificate is
/// checked against `tls.ca`). Off unless all three are set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    pub key: Option<PathBuf>,
    /// The CA that signs every node's certificate (PEM).
    pub ca: Option<PathBuf>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.ca.is_some()
    }
}

/// A list given as a TOML array or as one comma-separated string (the
/// form environment variables take).
fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Form::deserialize(d)? {
        Form::List(v) => v,
        Form::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// A string, or a number taken as its decimal text (`node_id = 3`).
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        S(String),
        N(u64),
    }
    Ok(match Form::deserialize(d)? {
        Form::S(s) => s,
        Form::N(n) => n.to_string(),
    })
}

/// What a node is in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes writes and queries; replicates to nobody (the default).
    #[default]
    Standalone,
    /// Takes writes and queries, and streams its WAL to readers.
    Writer,
    /// Follows a writer's WAL and serves queries; refuses client writes (503).
    Reader,
    /// In a cluster: follows the primary's WAL like a reader, is not sent
    /// queries by routing nor promoted by a failover, and holds the
    /// compactor lease (see `storage.rs`).
    Compactor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `standalone` (default), `writer` or `reader`.
    pub role: Role,
    /// Shared secret that authenticates replication streams and every
    /// control message (HMAC-SHA256; it never crosses the wire). Required
    /// for writers and readers.
    pub secret: String,
    /// This node's id, which a reader gives its writer (metrics and logs are
    /// labelled with it). Default: `node-<http port>`. In a cluster
    /// (`cluster.control_addr` set) it is the node's Raft id: a number from
    /// 1 up, unique in the cluster.
    #[serde(deserialize_with = "string_or_number")]
    pub node_id: String,
    /// The control port (Raft, joins, heartbeats), e.g. `127.0.0.1:7000`.
    /// Setting it makes the node a cluster member. Default empty (static
    /// writer/reader or standalone).
    pub control_addr: String,
    /// The control address other nodes reach this node at, when it is not
    /// `cluster.control_addr` (a proxy or NAT in between). Default empty:
    /// the same. Outgoing control connections leave from
    /// `cluster.control_addr`'s IP.
    pub advertise_addr: String,
    /// Control addresses of nodes already in the cluster, to join through
    /// (TOML array, or comma-separated in `TIDEMARK_CLUSTER_SEEDS`). A node
    /// with no seeds and no Raft state starts a new cluster. Default none.
    #[serde(deserialize_with = "list_or_csv")]
    pub seeds: Vec<String>,
    /// Takes part in Raft votes. Default true; readers that only serve
    /// queries usually set false.
    pub voter: bool,
    /// How often a node heartbeats the Raft leader, in ms. Default 500.
    pub heartbeat_ms: u64,
    /// Silence after which the leader marks a node `unhealthy`, in ms.
    /// Default 1,500.
    pub unhealthy_after_ms: u64,
    /// Silence after which the leader marks a node `dead`, in ms. Default
    /// 2,500 (a dead node is detected in under 3 s).
    pub dead_after_ms: u64,
    /// Raft election timeout, in ms: a follower that hears no leader for a
    /// random time between this and twice this starts an election.
    /// Default 500. Raft's own heartbeat is a fifth of it; a voter refuses
    /// to vote while it heard a leader within twice this (the leader lease).
    pub election_timeout_ms: u64,
    /// The primary writer acknowledges writes only while its lease, renewed
    /// by each heartbeat the Raft leader answers after confirming its own
    /// leadership, is younger than this (ms); the leader promotes no one
    /// until the old primary has been silent this long. Default 2,000.
    pub primary_lease_ms: u64,
    /// After a failover, the next one (of a dead primary) waits until this
    /// long after it (ms), so that a flapping node does not bounce the
    /// primary role. An operator's hand-over is not held back. Default 5,000.
    pub failover_cooldown_ms: u64,
    /// Readers with `replication.listen_addr` may be promoted to primary
    /// when no standby writer holds as much. Default true.
    pub promote_readers: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            role: Role::Standalone,
            secret: String::new(),
            node_id: String::new(),
            control_addr: String::new(),
            advertise_addr: String::new(),
            seeds: Vec::new(),
            voter: true,
            heartbeat_ms: 500,
            unhealthy_after_ms: 1_500,
            dead_after_ms: 2_500,
            election_timeout_ms: 500,
            primary_lease_ms: 2_000,
            failover_cooldown_ms: 5_000,
            promote_readers: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationSettings {
    /// Writer: where shard 0's replication stream listens; shard `i` listens
    /// on the same IP at port + `i`. Default `127.0.0.1:8100` for a writer.
    /// In a cluster a reader that sets it streams its WAL too (to a node
    /// catching up in a failover) and may be promoted to primary
    /// (`cluster.promote_readers`); a reader without it only follows.
    pub listen_addr: String,
    /// Reader: the writer's `replication.listen_addr`.
    pub writer_addr: String,
    /// Writer: a client write is acknowledged only once this many readers
    /// hold it durably. Default 0 (asynchronous replication).
    pub min_acks: usize,
    /// Writer, with `min_acks` > 0: how long a write waits for the readers'
    /// acks before it is answered 503 (it stays written on the writer).
    /// Default 10,000 ms.
    pub ack_timeout_ms: u64,
    /// Entries sent in one frame, in bytes (at least one entry). Default 1 MiB.
    pub max_batch_bytes: usize,
    /// Compression of entry frames: `none` (default), `zstd` or `lz4`.
    pub compression: Compression,
    /// Writer: bytes of recent WAL groups kept in memory for readers;
    /// older entries are read from the segment files. Default 64 MiB.
    pub ring_bytes: usize,
    /// Writer: flushed WAL segments a reader still needs are kept up to this
    /// many bytes per shard; a reader further behind must bootstrap from the
    /// Parquet files. Default 1 GiB.
    pub max_retained_bytes: u64,
    /// Sync frames (writer) and acks while idle, in ms; a peer silent for
    /// 5x this long is cut off. Default 1,000.
    pub heartbeat_ms: u64,
    /// Reader: wait before reconnecting after a failure, in ms. Default 200.
    pub reconnect_ms: u64,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        ReplicationSettings {
            listen_addr: String::new(),
            writer_addr: String::new(),
            min_acks: 0,
            ack_timeout_ms: 10_000,
            max_batch_bytes: 1 << 20,
            compression: Compression::None,
            ring_bytes: 64 << 20,
            max_retained_bytes: 1 << 30,
            heartbeat_ms: 1_000,
            reconnect_ms: 200,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySettings {
    /// Threads of the query pool (DataFusion); default 1, at most 64.
    pub threads: usize,
    /// A query running longer is cancelled (504); default 30,000 ms.
    pub timeout_ms: u64,
    /// A result with more rows is refused (400); default 1,000,000.
    pub max_rows: usize,
    /// Memory the query pool may use for sorts, joins and aggregates;
    /// default 1 GiB.
    pub memory_limit_bytes: u64,
}

impl Default for QuerySettings {
    fn default() -> Self {
        QuerySettings {
            threads: 1,
            timeout_ms: 30_000,
            max_rows: 1_000_000,
            memory_limit_bytes: 1 << 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where WAL, Parquet files and the manifest live. Default `./data`.
    pub data_dir: PathBuf,
    /// Shard cores (each runs an HTTP listener, a WAL and a buffer).
    /// Default 0 = all cores minus one, at least one. At most 256.
    pub shard_cores: usize,
    /// Pin shard core `i` to CPU `i`. Default true.
    pub pin_cores: bool,
    /// I/O driver: `auto` (io_uring when allowed), `io_uring`, `legacy`.
    pub driver: DriverChoice,
    /// How long the allocator (mimalloc) keeps freed memory before giving
    /// it back to the OS, in ms; -1 (default) keeps it for reuse. Given
    /// back, it is faulted in and zeroed again at the next flush or freeze
    /// (huge pages): 20-30 ms stalls of the shard core, which doubled the
    /// half-rate p99 (tuning.md). -1 holds the process at its peak memory.
    pub allocator_purge_delay_ms: i64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./data"),
            shard_cores: 0,
            pin_cores: true,
            driver: DriverChoice::Auto,
            allocator_purge_delay_ms: -1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address. Default `127.0.0.1:8000`.
    pub addr: String,
    /// Largest request body, compressed or decompressed, in bytes; larger
    /// bodies get 413. Default 256 MiB; at least 1 KiB.
    pub max_body_bytes: u64,
    /// Time allowed to send a request's head, in ms; default 10,000.
    pub header_timeout_ms: u64,
    /// Time allowed to send a request's body, in ms; default 60,000.
    pub body_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this many ms; default 120,000.
    pub idle_timeout_ms: u64,
    /// Open connections allowed on the node (split evenly over shard cores);
    /// further connections are closed at once. Default 10,000.
    pub max_connections: usize,
    /// Database of writes that name none. Default `default`.
    pub default_database: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "127.0.0.1:8000".into(),
            max_body_bytes: 256 << 20,
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
            idle_timeout_ms: 120_000,
            max_connections: 10_000,
            default_database: "default".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalSettings {
    /// `fdatasync` (default), `fsync` or `none`.
    pub sync_mode: SyncMode,
    /// Segment size in bytes; default 64 MiB, at least 64 KiB.
    pub segment_bytes: u64,
    /// Bytes queued for the next group commit before writers wait; default 64 MiB.
    pub max_pending_bytes: u64,
    /// Flushed segments kept as spares and reused for new segments, so that
    /// group writes overwrite blocks the file system has already allocated
    /// and a sync flushes data without a journal commit; default 4, 0 turns
    /// recycling off. Costs up to this many segments of disk. See tuning.md.
    pub spare_segments: usize,
    /// `strict` (default: refuse to start on a corrupt entry) or `skip`.
    pub recovery_mode: RecoveryMode,
    /// How group writes and syncs are issued: `uring` (default: through
    /// io_uring, whose kernel workers run them while the core serves other
    /// requests) or `blocking` (plain syscalls on the shard core: less
    /// throughput, a lower tail when no CPU is spare). See tuning.md.
    pub io: WalIo,
}

impl Default for WalSettings {
    fn default() -> Self {
        WalSettings {
            sync_mode: SyncMode::Fdatasync,
            segment_bytes: 64 << 20,
            max_pending_bytes: 64 << 20,
            spare_segments: 4,
            recovery_mode: RecoveryMode::Strict,
            io: WalIo::Uring,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferSettings {
    /// Flush a shard at this many buffered rows; default 1,000,000.
    pub flush_rows: usize,
    /// Flush a shard at about this many buffered bytes; default 256 MiB.
    pub flush_bytes: u64,
    /// Flush a shard once its oldest row is this many ms old; default 60,000.
    pub flush_age_ms: u64,
    /// Writes to a shard wait while its buffer holds this many bytes; default 1 GiB.
    pub max_bytes: u64,
    /// While a flush runs, writes to a shard are slowed, more as its buffer
    /// (rows not yet being flushed) fills, the most from this many bytes
    /// on, so that a flush sharing the core keeps up and writes rarely
    /// reach `max_bytes`: see "Backpressure" in ARCHITECTURE.md. Default:
    /// a quarter of `max_bytes`; at most `max_bytes`.
    pub slow_bytes: Option<u64>,
}

impl BufferSettings {
    /// `slow_bytes`, or its default.
    pub fn slow_bytes(&self) -> u64 {
        self.slow_bytes.unwrap_or(self.max_bytes / 4)
    }
}

impl Default for BufferSettings {
    fn default() -> Self {
        BufferSettings {
            flush_rows: 1_000_000,
            flush_bytes: 256 << 20,
            flush_age_ms: 60_000,
            max_bytes: 1 << 30,
            slow_bytes: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlushSettings {
    /// Flush worker threads; default 1, at most 64.
    pub workers: usize,
    /// How often a shard checks whether a flush is due, in ms; default 100.
    pub check_interval_ms: u64,
    /// Nice value of the flush worker threads, 0 to 19 (default). Above 0,
    /// a flush sharing a CPU with a shard core yields to it, so it does not
    /// move request latency; under sustained overload the backpressure
    /// (`buffer.slow_bytes`) leaves the core idle long enough for the flush
    /// to keep up. See tuning.md.
    pub nice: i32,
    /// Codec of the Parquet files a flush writes: "lz4_raw" (default),
    /// "snappy", "zstd" (level 3) or "none". Compaction rewrites them with
    /// zstd (`compaction.zstd_level`).
    pub compression: tidemark_shards::flush::FlushCodec,
}

impl Default for FlushSettings {
    fn default() -> Self {
        FlushSettings {
            workers: 1,
            check_interval_ms: 100,
            nice: 19,
            compression: tidemark_shards::flush::FlushCodec::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a token on every endpoint but /health, /ready and /metrics.
    /// Default false.
    pub enabled: bool,
    /// Accepted tokens.
    pub tokens: Vec<String>,
    /// A file of further tokens, one per line (`#` comments allowed).
    pub token_file: Option<PathBuf>,
}

/// A configuration problem, named by the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("--set {arg:?}: {message}")]
    Flag { arg: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Command-line overrides (`tidemark serve` flags).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub http_addr: Option<String>,
    pub shard_cores: Option<usize>,
    /// `section.key=value` pairs.
    pub set: Vec<String>,
}

/// Parses `raw` as a TOML value when it is one (numbers, booleans, arrays),
/// else takes it as a string.
fn env_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_key(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let sec = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = sec {
        t.insert(key.to_string(), value);
    }
}

impl Config {
    fn validate_storage(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let c = &self.compaction;
        for (key, v) in [
            ("compaction.min_age", &c.min_age),
            ("compaction.check_interval", &c.check_interval),
            ("retention.check_interval", &self.retention.check_interval),
        ] {
            match parse_duration(v) {
                Err(e) => return invalid(key, e),
                Ok(d) if d.is_zero() && key != "compaction.min_age" => {
                    return invalid(key, "must be more than 0".into())
                }
                Ok(_) => {}
            }
        }
        if c.min_files == 0 {
            return invalid("compaction.min_files", "must be at least 1".into());
        }
        if c.target_file_bytes < 1 << 20 {
            return invalid(
                "compaction.target_file_bytes",
                format!("{} is less than 1048576 (1 MiB)", c.target_file_bytes),
            );
        }
        if !(1..=22).contains(&c.zstd_level) {
            return invalid(
                "compaction.zstd_level",
                format!("{} is not between 1 and 22", c.zstd_level),
            );
        }
        if !(0..=19).contains(&c.nice) {
            return invalid(
                "compaction.nice",
                format!("{} is not between 0 and 19", c.nice),
            );
        }
        if let Err(e) = parse_retention(&self.retention.default) {
            return invalid("retention.default", e);
        }
        for (db, v) in &self.retention.databases {
            if let Err(e) = parse_retention(v) {
                return invalid("retention.databases", format!("{db}: {e}"));
            }
        }
        Ok(())
    }

    /// Loads the configuration: defaults, `file`, the environment `env`
    /// (`TIDEMARK_*` pairs), then `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        // Check the file alone first, so its errors name the file.
        if let Some(path) = file {
            toml::Value::Table(table.clone())
                .try_into::<Config>()
                .map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !NOT_SETTINGS.contains(&k.as_str()))
            .collect();
        env.sort();
        for (var, raw) in &env {
            let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
            let Some((section, key)) = rest.split_once('_') else {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: "expected TIDEMARK_<SECTION>_<KEY>".into(),
                });
            };
            let mut probe = toml::Table::new();
            set_key(&mut probe, section, key, env_value(raw));
            toml::Value::Table(probe)
                .try_into::<Config>()
                .map_err(|e| ConfigError::Env {
                    var: var.clone(),
                    message: e.to_string(),
                })?;
            set_key(&mut table, section, key, env_value(raw));
        }
        for arg in &flags.set {
            let flag_err = |message: &str| ConfigError::Flag {
                arg: arg.clone(),
                message: message.into(),
            };
            let (path, raw) = arg
                .split_once('=')
                .ok_or_else(|| flag_err("expected section.key=value"))?;
            let (section, key) = path
                .split_once('.')
                .ok_or_else(|| flag_err("expected section.key=value"))?;
            set_key(&mut table, section, key, env_value(raw));
        }
        if let Some(d) = &flags.data_dir {
            set_key(
                &mut table,
                "node",
                "data_dir",
                toml::Value::String(d.display().to_string()),
            );
        }
        if let Some(a) = &flags.http_addr {
            set_key(&mut table, "http", "addr", toml::Value::String(a.clone()));
        }
        if let Some(n) = flags.shard_cores {
            set_key(
                &mut table,
                "node",
                "shard_cores",
                toml::Value::Integer(n as i64),
            );
        }
        toml::Value::Table(table)
            .try_into::<Config>()
            .map_err(|e| ConfigError::Flag {
                arg: "(command line)".into(),
                message: e.to_string(),
            })
    }

    /// Checks every setting; the first problem names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        self.validate_storage()?;
        if self.http.addr.parse::<SocketAddr>().is_err() {
            return invalid(
                "http.addr",
                format!(
                    "{:?} is not an IP address and port, e.g. 127.0.0.1:8000",
                    self.http.addr
                ),
            );
        }
        for (key, addr) in [
            ("pg.addr", &self.pg.addr),
            ("flight.addr", &self.flight.addr),
        ] {
            if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
                return invalid(
                    key,
                    format!("{addr:?} is not an IP address and port, e.g. 127.0.0.1:8432"),
                );
            }
        }
        if self.node.allocator_purge_delay_ms < -1 {
            return invalid(
                "node.allocator_purge_delay_ms",
                format!("{} is less than -1", self.node.allocator_purge_delay_ms),
            );
        }
        if self.node.shard_cores > 256 {
            return invalid(
                "node.shard_cores",
                format!("{} is more than 256", self.node.shard_cores),
            );
        }
        if self.node.data_dir.as_os_str().is_empty() {
            return invalid("node.data_dir", "must not be empty".into());
        }
        if self.http.max_body_bytes < 1024 {
            return invalid(
                "http.max_body_bytes",
                format!("{} is less than 1024", self.http.max_body_bytes),
            );
        }
        for (key, v) in [
            ("http.header_timeout_ms", self.http.header_timeout_ms),
            ("http.body_timeout_ms", self.http.body_timeout_ms),
            ("http.idle_timeout_ms", self.http.idle_timeout_ms),
            ("buffer.flush_age_ms", self.buffer.flush_age_ms),
            ("flush.check_interval_ms", self.flush.check_interval_ms),
        ] {
            if v == 0 {
                return invalid(key, "must be more than 0".into());
            }
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections", "must be more than 0".into());
        }
        if tidemark_shards::schema::validate_database_name(&self.http.default_database).is_err() {
            return invalid(
                "http.default_database",
                format!(
                    "{:?} is not a valid database name",
                    self.http.default_database
                ),
            );
        }
        if self.wal.segment_bytes < 64 << 10 {
            return invalid(
                "wal.segment_bytes",
                format!("{} is less than 65536", self.wal.segment_bytes),
            );
        }
        if self.wal.max_pending_bytes < 1 << 20 {
            return invalid(
                "wal.max_pending_bytes",
                format!("{} is less than 1 MiB", self.wal.max_pending_bytes),
            );
        }
        if self.buffer.flush_rows == 0 || self.buffer.flush_bytes == 0 {
            return invalid(
                "buffer.flush_rows",
                "flush_rows and flush_bytes must be more than 0".into(),
            );
        }
        if self.buffer.max_bytes < self.buffer.flush_bytes {
            return invalid(
                "buffer.max_bytes",
                format!(
                    "{} is less than buffer.flush_bytes ({})",
                    self.buffer.max_bytes, self.buffer.flush_bytes
                ),
            );
        }
        let slow = self.buffer.slow_bytes();
        if slow == 0 || slow > self.buffer.max_bytes {
            return invalid(
                "buffer.slow_bytes",
                format!(
                    "{slow} is not between 1 and buffer.max_bytes ({})",
                    self.buffer.max_bytes
                ),
            );
        }
        if !(0..=19).contains(&self.flush.nice) {
            return invalid(
                "flush.nice",
                format!("{} is not between 0 and 19", self.flush.nice),
            );
        }
        if self.flush.workers == 0 || self.flush.workers > 64 {
            return invalid(
                "flush.workers",
                format!("{} is not between 1 and 64", self.flush.workers),
            );
        }
        if self.query.threads == 0 || self.query.threads > 64 {
            return invalid(
                "query.threads",
                format!("{} is not between 1 and 64", self.query.threads),
            );
        }
        if self.query.timeout_ms == 0 || self.query.max_rows == 0 {
            return invalid(
                "query.timeout_ms",
                "query.timeout_ms and query.max_rows must be more than 0".into(),
            );
        }
        if self.query.memory_limit_bytes < 16 << 20 {
            return invalid(
                "query.memory_limit_bytes",
                format!("{} is less than 16 MiB", self.query.memory_limit_bytes),
            );
        }
        if self.auth.enabled && self.auth.tokens.is_empty() && self.auth.token_file.is_none() {
            return invalid(
                "auth.enabled",
                "auth is enabled but no auth.tokens or auth.token_file is set".into(),
            );
        }
        if let Some(t) = self.auth.tokens.iter().find(|t| t.trim().is_empty()) {
            return invalid("auth.tokens", format!("{t:?} is an empty token"));
        }
        self.validate_cluster()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let t = &self.tls;
        if t.enabled() {
            for (key, v) in [
                ("tls.cert", &t.cert),
                ("tls.key", &t.key),
                ("tls.ca", &t.ca),
            ] {
                match v {
                    None => {
                        return invalid(
                            key,
                            "TLS needs tls.cert, tls.key and tls.ca together (mutual TLS)".into(),
                        )
                    }
                    Some(p) if !p.is_file() => {
                        return invalid(key, format!("{} is not a readable file", p.display()))
                    }
                    Some(_) => {}
                }
            }
        }
        let r = &self.replication;
        let role = self.cluster.role;
        if role == Role::Compactor && !self.in_cluster() {
            return invalid(
                "cluster.role",
                "a compactor is a cluster member: set cluster.control_addr".into(),
            );
        }
        if role != Role::Standalone && self.cluster.secret.is_empty() {
            return invalid(
                "cluster.secret",
                format!("a {role:?} needs the cluster's shared secret").to_lowercase(),
            );
        }
        if self.serves_replication()
            && self
                .replication_listen_addr()
                .parse::<SocketAddr>()
                .is_err()
        {
            return invalid(
                "replication.listen_addr",
                format!("{:?} is not an IP address and port", r.listen_addr),
            );
        }
        if role == Role::Reader
            && !self.in_cluster()
            && r.writer_addr.parse::<SocketAddr>().is_err()
        {
            return invalid(
                "replication.writer_addr",
                format!(
                    "{:?} is not an IP address and port (a reader must name its writer's replication.listen_addr)",
                    r.writer_addr
                ),
            );
        }
        for (key, addr, used) in [
            (
                "replication.listen_addr",
                self.replication_listen_addr(),
                self.serves_replication(),
            ),
            (
                "replication.writer_addr",
                &r.writer_addr,
                role == Role::Reader && !self.in_cluster(),
            ),
        ] {
            let port = addr.parse::<SocketAddr>().map_or(0, |a| a.port()) as usize;
            if used && port + self.shard_cores() > 65536 {
                return invalid(
                    key,
                    format!(
                        "shard i streams on port + i: {addr} leaves no room for {} shard cores",
                        self.shard_cores()
                    ),
                );
            }
        }
        // In a cluster min_acks applies to whichever node is primary, so it
        // is set on every node.
        if r.min_acks > 0 && role != Role::Writer && !self.in_cluster() {
            return invalid(
                "replication.min_acks",
                "only a writer waits for readers' acks".into(),
            );
        }
        if r.max_batch_bytes < 1024 {
            return invalid(
                "replication.max_batch_bytes",
                format!("{} is less than 1024", r.max_batch_bytes),
            );
        }
        for (key, v) in [
            ("replication.ack_timeout_ms", r.ack_timeout_ms),
            ("replication.heartbeat_ms", r.heartbeat_ms),
            ("replication.reconnect_ms", r.reconnect_ms),
        ] {
            if v == 0 {
                return invalid(key, "must be more than 0".into());
            }
        }
        if self.in_cluster() {
            self.validate_control()?;
        } else if !self.cluster.node_id.is_empty()
            && tidemark_shards::schema::validate_database_name(&self.cluster.node_id).is_err()
        {
            return invalid(
                "cluster.node_id",
                format!(
                    "{:?}: use letters, digits, '_' and '-', starting with a letter",
                    self.cluster.node_id
                ),
            );
        }
        Ok(())
    }

    /// A cluster member: `cluster.control_addr` is set.
    pub fn in_cluster(&self) -> bool {
        !self.cluster.control_addr.is_empty()
    }

    /// The control address other nodes use for this one.
    pub fn advertised_control_addr(&self) -> &str {
        if self.cluster.advertise_addr.is_empty() {
            &self.cluster.control_addr
        } else {
            &self.cluster.advertise_addr
        }
    }

    /// The node's Raft id (validated: in a cluster, `cluster.node_id` is a number).
    pub fn raft_id(&self) -> u64 {
        self.cluster.node_id.parse().unwrap_or(0)
    }

    fn validate_control(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let c = &self.cluster;
        if c.role == Role::Standalone {
            return invalid(
                "cluster.role",
                "a cluster member (cluster.control_addr set) is a writer or a reader".into(),
            );
        }
        match c.node_id.parse::<u64>() {
            Ok(n) if n > 0 => {}
            _ => {
                return invalid(
                    "cluster.node_id",
                    format!(
                    "{:?}: in a cluster, the node id is a number from 1 up, unique in the cluster",
                    c.node_id
                ),
                )
            }
        }
        if c.control_addr.parse::<SocketAddr>().is_err() {
            return invalid(
                "cluster.control_addr",
                format!("{:?} is not an IP address and port", c.control_addr),
            );
        }
        if !c.advertise_addr.is_empty() && c.advertise_addr.parse::<SocketAddr>().is_err() {
            return invalid(
                "cluster.advertise_addr",
                format!("{:?} is not an IP address and port", c.advertise_addr),
            );
        }
        if self
            .advertised_control_addr()
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_unspecified())
        {
            return invalid(
                if c.advertise_addr.is_empty() {
                    "cluster.control_addr"
                } else {
                    "cluster.advertise_addr"
                },
                "other nodes cannot reach 0.0.0.0 or ::; set cluster.advertise_addr to this node's address".into(),
            );
        }
        for s in &c.seeds {
            if s.parse::<SocketAddr>().is_err() {
                return invalid(
                    "cluster.seeds",
                    format!("{s:?} is not an IP address and port"),
                );
            }
        }
        if self.serves_replication()
            && self
                .replication_listen_addr()
                .parse::<SocketAddr>()
                .is_err()
        {
            return invalid(
                "replication.listen_addr",
                format!(
                    "{:?} is not an IP address and port",
                    self.replication.listen_addr
                ),
            );
        }
        for (key, v) in [
            ("cluster.heartbeat_ms", c.heartbeat_ms),
            ("cluster.unhealthy_after_ms", c.unhealthy_after_ms),
            ("cluster.dead_after_ms", c.dead_after_ms),
            ("cluster.election_timeout_ms", c.election_timeout_ms),
            ("cluster.primary_lease_ms", c.primary_lease_ms),
        ] {
            if v == 0 {
                return invalid(key, "must be more than 0".into());
            }
        }
        if c.unhealthy_after_ms <= c.heartbeat_ms {
            return invalid(
                "cluster.unhealthy_after_ms",
                format!(
                    "{} must be more than cluster.heartbeat_ms ({})",
                    c.unhealthy_after_ms, c.heartbeat_ms
                ),
            );
        }
        if c.primary_lease_ms <= c.heartbeat_ms {
            return invalid(
                "cluster.primary_lease_ms",
                format!(
                    "{} must be more than cluster.heartbeat_ms ({}): the lease is renewed by heartbeats",
                    c.primary_lease_ms, c.heartbeat_ms
                ),
            );
        }
        if c.dead_after_ms <= c.unhealthy_after_ms {
            return invalid(
                "cluster.dead_after_ms",
                format!(
                    "{} must be more than cluster.unhealthy_after_ms ({})",
                    c.dead_after_ms, c.unhealthy_after_ms
                ),
            );
        }
        Ok(())
    }

    /// Whether this node streams its WAL: a writer; in a cluster also a
    /// reader with `replication.listen_addr` set.
    pub fn serves_replication(&self) -> bool {
        self.cluster.role == Role::Writer
            || (self.in_cluster()
                && self.cluster.role == Role::Reader
                && !self.replication.listen_addr.is_empty())
    }

    /// `replication.listen_addr`, or a writer's default `127.0.0.1:8100`.
    pub fn replication_listen_addr(&self) -> &str {
        if self.replication.listen_addr.is_empty() && self.cluster.role == Role::Writer {
            "127.0.0.1:8100"
        } else {
            &self.replication.listen_addr
        }
    }

    /// This node's id in the cluster: `cluster.node_id`, else `node-<port>`.
    pub fn node_id(&self) -> String {
        if self.cluster.node_id.is_empty() {
            format!("node-{}", self.socket_addr().port())
        } else {
            self.cluster.node_id.clone()
        }
    }

    /// The replication address of writer shard `shard`, from `base` (a
    /// writer's `listen_addr`, or a reader's `writer_addr`).
    pub fn shard_addr(base: &str, shard: usize) -> SocketAddr {
        let mut a: SocketAddr = base.parse().expect("validated");
        a.set_port(a.port() + shard as u16);
        a
    }

    /// The shard core count, with 0 resolved to all cores minus one (at least one).
    pub fn shard_cores(&self) -> usize {
        if self.node.shard_cores > 0 {
            return self.node.shard_cores;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.saturating_sub(1).max(1)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.http.addr.parse().expect("validated")
    }

    /// Every token accepted: the configured ones plus those of the token file.
    pub fn load_tokens(&self) -> Result<Vec<String>, ConfigError> {
        let mut tokens = self.auth.tokens.clone();
        if let Some(path) = &self.auth.token_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        if self.auth.enabled && tokens.is_empty() {
            return Err(ConfigError::Invalid {
                key: "auth.token_file",
                message: "auth is enabled but the token file holds no token".into(),
            });
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_match_the_docs() {
        let c = Config::load(None, Vec::new(), &Overrides::default()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.http.addr, "127.0.0.1:8000");
        assert_eq!(c.node.data_dir, PathBuf::from("./data"));
        assert_eq!(c.wal.sync_mode, SyncMode::Fdatasync);
        assert!(c.shard_cores() >= 1);
    }

    #[test]
    fn wal_io_from_file_env_and_flags() {
        let c = Config::load(None, Vec::new(), &Overrides::default()).unwrap();
        assert_eq!(c.wal.io, WalIo::Uring);
        let c = Config::load(
            None,
            env(&[("TIDEMARK_WAL_IO", "blocking")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.wal.io, WalIo::Blocking);
        let c = Config::load(
            None,
            Vec::new(),
            &Overrides {
                set: vec!["wal.io=blocking".into()],
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.wal.io, WalIo::Blocking);
        let e = Config::load(
            None,
            env(&[("TIDEMARK_WAL_IO", "auto")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("TIDEMARK_WAL_IO"), "{e}");
    }

    #[test]
    fn precedence_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "[http]\naddr = \"127.0.0.1:1\"\nmax_body_bytes = 2048\n[wal]\nsync_mode = \"none\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("TIDEMARK_HTTP_ADDR", "127.0.0.1:2"),
                ("TIDEMARK_NODE_SHARD_CORES", "3"),
                ("TIDEMARK_AUTH_TOKENS", "[\"a\", \"b\"]"),
                ("PATH", "/bin"),
            ]),
            &Overrides {
                shard_cores: Some(2),
                set: vec!["flush.workers=4".into()],
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.http.addr, "127.0.0.1:2");
        assert_eq!(c.http.max_body_bytes, 2048);
        assert_eq!(c.wal.sync_mode, SyncMode::None);
        assert_eq!(c.node.shard_cores, 2);
        assert_eq!(c.flush.workers, 4);
        assert_eq!(c.auth.tokens, ["a", "b"]);
    }

    #[test]
    fn cluster_keys_from_env_and_their_checks() {
        let c = Config::load(
            None,
            env(&[
                ("TIDEMARK_CLUSTER_ROLE", "reader"),
                ("TIDEMARK_CLUSTER_SECRET", "s"),
                ("TIDEMARK_CLUSTER_NODE_ID", "reader-1"),
                ("TIDEMARK_REPLICATION_WRITER_ADDR", "127.0.0.1:9100"),
                ("TIDEMARK_REPLICATION_COMPRESSION", "lz4"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.cluster.role, Role::Reader);
        assert_eq!(c.node_id(), "reader-1");
        assert_eq!(c.replication.compression, Compression::Lz4);
        assert_eq!(
            Config::shard_addr(&c.replication.writer_addr, 3).to_string(),
            "127.0.0.1:9103"
        );
        let bad = |pairs: &[(&str, &str)]| {
            Config::load(None, env(pairs), &Overrides::default())
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert!(bad(&[("TIDEMARK_CLUSTER_ROLE", "writer")]).starts_with("cluster.secret: "));
        assert!(bad(&[
            ("TIDEMARK_CLUSTER_ROLE", "reader"),
            ("TIDEMARK_CLUSTER_SECRET", "s")
        ])
        .starts_with("replication.writer_addr: "));
        assert!(
            bad(&[("TIDEMARK_REPLICATION_MIN_ACKS", "1")]).starts_with("replication.min_acks: ")
        );
        let e = Config::load(
            None,
            env(&[("TIDEMARK_CLUSTER_ROLE", "leader")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("TIDEMARK_CLUSTER_ROLE"), "{e}");
    }

    #[test]
    fn control_core_keys_from_env_and_their_checks() {
        let base = [
            ("TIDEMARK_CLUSTER_ROLE", "reader"),
            ("TIDEMARK_CLUSTER_SECRET", "s"),
            ("TIDEMARK_CLUSTER_NODE_ID", "3"),
            ("TIDEMARK_CLUSTER_CONTROL_ADDR", "127.0.0.1:7003"),
            ("TIDEMARK_CLUSTER_SEEDS", "127.0.0.1:7001, 127.0.0.1:7002"),
            ("TIDEMARK_CLUSTER_VOTER", "false"),
        ];
        let c = Config::load(None, env(&base), &Overrides::default()).unwrap();
        c.validate().unwrap();
        assert!(c.in_cluster());
        assert_eq!(c.raft_id(), 3);
        assert_eq!(c.cluster.seeds, ["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert!(!c.cluster.voter);
        assert_eq!(c.advertised_control_addr(), "127.0.0.1:7003");
        // A reader in a cluster needs no writer address: it finds the primary.
        assert!(c.replication.writer_addr.is_empty());
        // Seeds as a TOML array in a file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[cluster]\nrole = \"writer\"\nsecret = \"s\"\nnode_id = 1\ncontrol_addr = \"127.0.0.1:7001\"\nseeds = [\"127.0.0.1:7002\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), Vec::new(), &Overrides::default()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cluster.seeds, ["127.0.0.1:7002"]);
        assert_eq!(c.cluster.node_id, "1");
        let bad = |extra: &[(&str, &str)]| {
            let mut pairs: Vec<(&str, &str)> = base
                .iter()
                .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
                .copied()
                .collect();
            pairs.extend_from_slice(extra);
            Config::load(None, env(&pairs), &Overrides::default())
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert!(bad(&[("TIDEMARK_CLUSTER_NODE_ID", "reader-3")]).starts_with("cluster.node_id: "));
        assert!(bad(&[("TIDEMARK_CLUSTER_NODE_ID", "0")]).starts_with("cluster.node_id: "));
        assert!(bad(&[("TIDEMARK_CLUSTER_SEEDS", "nowhere")]).starts_with("cluster.seeds: "));
        assert!(
            bad(&[("TIDEMARK_CLUSTER_CONTROL_ADDR", "x")]).starts_with("cluster.control_addr: ")
        );
        assert!(bad(&[("TIDEMARK_CLUSTER_ROLE", "standalone")]).starts_with("cluster.role: "));
        assert!(bad(&[("TIDEMARK_CLUSTER_DEAD_AFTER_MS", "1000")])
            .starts_with("cluster.dead_after_ms: "));
        assert!(bad(&[("TIDEMARK_CLUSTER_PRIMARY_LEASE_MS", "500")])
            .starts_with("cluster.primary_lease_ms: "));
        // Failover keys; in a cluster a reader may stream (and be promoted)
        // and takes min_acks, which applies whenever it is primary.
        let mut pairs = base.to_vec();
        pairs.extend([
            ("TIDEMARK_CLUSTER_PRIMARY_LEASE_MS", "3000"),
            ("TIDEMARK_CLUSTER_FAILOVER_COOLDOWN_MS", "0"),
            ("TIDEMARK_CLUSTER_PROMOTE_READERS", "false"),
            ("TIDEMARK_REPLICATION_MIN_ACKS", "1"),
            ("TIDEMARK_REPLICATION_LISTEN_ADDR", "127.0.0.1:7300"),
        ]);
        let c = Config::load(None, env(&pairs), &Overrides::default()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cluster.primary_lease_ms, 3000);
        assert_eq!(c.cluster.failover_cooldown_ms, 0);
        assert!(!c.cluster.promote_readers);
        assert!(c.serves_replication());
        assert_eq!(c.replication_listen_addr(), "127.0.0.1:7300");
        // Without a listen address a reader only follows; a writer has the
        // default one.
        let c = Config::load(None, env(&base), &Overrides::default()).unwrap();
        assert!(!c.serves_replication());
        let mut w = base.to_vec();
        w[0] = ("TIDEMARK_CLUSTER_ROLE", "writer");
        let c = Config::load(None, env(&w), &Overrides::default()).unwrap();
        assert_eq!(c.replication_listen_addr(), "127.0.0.1:8100");
        let cert = file.display().to_string();
        assert!(bad(&[("TIDEMARK_TLS_CERT", &cert)]).starts_with("tls.key: TLS needs"));
        let e = bad(&[
            ("TIDEMARK_TLS_CERT", "/nonexistent/cert.pem"),
            ("TIDEMARK_TLS_KEY", "/nonexistent/key.pem"),
            ("TIDEMARK_TLS_CA", "/nonexistent/ca.pem"),
        ]);
        assert_eq!(e, "tls.cert: /nonexistent/cert.pem is not a readable file");
    }

    #[test]
    fn clear_errors() {
        let e = Config::load(
            None,
            env(&[("TIDEMARK_HTTP_NOPE", "1")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("environment variable TIDEMARK_HTTP_NOPE: "),
            "{e}"
        );
        assert!(e.to_string().contains("unknown field `nope`"), "{e}");
        let e = Config::load(
            None,
            env(&[("TIDEMARK_WAL_SYNC_MODE", "sometimes")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("TIDEMARK_WAL_SYNC_MODE"), "{e}");
        let c = Config::load(
            None,
            env(&[("TIDEMARK_FLUSH_NICE", "20")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "flush.nice: 20 is not between 0 and 19"
        );
        let c = Config::load(
            None,
            env(&[("TIDEMARK_HTTP_ADDR", "nowhere")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "http.addr: \"nowhere\" is not an IP address and port, e.g. 127.0.0.1:8000"
        );
        let c = Config::load(
            None,
            env(&[("TIDEMARK_AUTH_ENABLED", "true")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("auth.enabled: "));
    }
}
