//! Decoders of tidemark's ingest formats into [`WriteBatch`]es: InfluxDB line
//! protocol ([`line_protocol`]) and Arc's MessagePack formats ([`msgpack`]).
//!
//! A decoder reads a whole request body and either returns every table's
//! rows or the first errors, each naming the line (or record), the field and
//! the reason: a request is accepted whole or not at all. Decoders build
//! Arrow columns directly ([`builder`]); nothing here does I/O.

pub mod builder;
pub mod error;
pub mod line_protocol;
pub mod msgpack;
pub mod precision;

pub use error::{IngestError, IngestErrors, Unit};
pub use precision::Precision;
pub use tidemark_shards::WriteBatch;
