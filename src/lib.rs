//! tidemark's node as a library: the binary (`main.rs`) runs it, and the
//! benches measure its parts (e.g. the forwarding path).

pub mod config;
pub mod context;
pub mod control;
pub mod flight;
pub mod forward;
pub mod http;
pub mod metrics;
pub mod node;
pub mod pg;
pub mod query;
pub mod replication;
pub mod routing;
pub mod storage;
pub mod tls;
