//! SQL over everything written: the Parquet files of the manifest plus a
//! snapshot of every shard's buffer, with DataFusion on its own thread pool.
//!
//! * [`engine`]: the query pool (a tokio runtime with `query.threads`
//!   workers), per-query sessions, limits, cancellation, result encoding.
//! * [`table`]: one DataFusion table per (database, measurement): pruned
//!   Parquet files unioned with the shards' buffered rows.
//! * [`json`]: Arc's JSON result shape.
//! * [`date_trunc`]: `date_trunc` with arithmetic hour/day truncation in UTC.
//!
//! Shard cores never block on a query: they hand it to the pool and await
//! the encoded result. The pool asks every core for a snapshot of the table
//! through bounded channels (`SnapshotRequest`); a core answers from its own
//! event loop. Read-your-writes: a write is applied to its shard's buffer
//! before its 204, so a query started after the 204 sees it.

pub mod date_trunc;
pub mod dedup;
pub mod engine;
pub mod json;
pub mod pg_names;
pub mod remote;
pub mod table;

pub use engine::{QueryEngine, SnapshotRequest};
