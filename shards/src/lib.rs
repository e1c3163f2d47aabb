//! What one tidemark shard core owns, with no HTTP in it.
//!
//! * [`schema`], [`batch`], [`catalog`]: the data model, validated write
//!   batches, and the node-wide schema catalog each shard caches.
//! * [`wal`]: the shard's write-ahead log (segments, group commit, recovery).
//! * [`buffer`]: the in-memory Arrow buffer of the shard's unflushed rows.
//! * [`flush`], [`manifest`]: turning frozen buffers into Parquet files on
//!   flush workers, and the durable list of those files.
//! * [`dedup`], [`compact`]: InfluxDB's duplicate-point rule; compaction of
//!   a partition's small files and retention by whole hours.
//! * [`shard`]: one shard, tying WAL, buffer and flushes together;
//!   [`throttle`]: its gradual backpressure.
//! * [`replication`]: the WAL replication protocol (frames and decisions,
//!   no sockets).
//! * [`runtime`]: the seam between shard cores and their I/O driver.
//!
//! Everything here that touches the WAL runs on the shard's own core (types
//! are `!Send` where that matters); flush workers and the manifest are shared
//! by all cores and are reached through bounded channels.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod batch;
pub mod buffer;
pub mod catalog;
pub mod compact;
pub mod dedup;
pub mod failpoint;
pub mod flush;
pub mod ids;
pub mod manifest;
pub mod replication;
pub mod runtime;
pub mod schema;
pub mod shard;
pub mod tags;
pub mod throttle;
pub mod wal;

pub use batch::WriteBatch;
pub use catalog::{Catalog, CatalogCache};
pub use ids::{Epoch, SegmentId, ShardId, WalSeq};
pub use schema::{ColumnKind, FieldType, SchemaError, TableKey, TableSchema};
