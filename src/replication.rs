//! WAL replication over TCP: the writer side ([`sender`]: one listener per
//! shard core, one stream task per reader) and the reader side
//! ([`receiver`]: one stream per shard core, following the writer's shard
//! of the same index). The protocol's logic (frames, handshake, gap
//! detection) is `tidemark_shards::replication`; this module is sockets,
//! timers and metrics around it.
//!
//! Writer shard `i` listens on `replication.listen_addr` with the port
//! raised by `i`; a reader runs as many shard cores as its writer and
//! connects shard `i` to `replication.writer_addr` + `i`. Nothing here is
//! on the ingest path: a slow or dead reader never holds up a client write
//! (unless `replication.min_acks` asks for it).

pub mod bootstrap;
pub mod receiver;
pub mod sender;
pub mod wire;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tidemark_shards::replication::frame::NONCE_LEN;

use crate::config::ReplicationSettings;

/// A peer silent for this many heartbeats is cut off.
const SILENT_HEARTBEATS: u32 = 5;

/// How long to wait for a frame before giving the peer up.
fn silence_timeout(r: &ReplicationSettings) -> Duration {
    Duration::from_millis(r.heartbeat_ms) * SILENT_HEARTBEATS
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A fresh random nonce for a Challenge.
fn nonce() -> std::io::Result<[u8; NONCE_LEN]> {
    use std::io::Read;
    let mut n = [0u8; NONCE_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}
