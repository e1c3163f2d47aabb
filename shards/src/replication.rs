//! WAL replication from a writer's shard to readers: the wire format
//! ([`frame`]) and the protocol's decisions ([`protocol`]), with no sockets,
//! files or clocks, so that the handshake, resume, bootstrap and gap
//! detection are plain unit tests. The node's `replication` module runs
//! them over TCP.
//!
//! One stream per (writer shard, reader). The writer opens with a
//! Challenge (a nonce); the reader answers Hello (its id, the shard, the
//! last sequence number it holds durably, and an HMAC of those with the
//! cluster secret); the writer answers Welcome (stream from the next
//! entry, or bootstrap from the flushed files when that entry is gone) or
//! Error. Then the writer sends Entries frames (whole WAL entries as
//! stored, byte for byte) and periodic Syncs; the reader writes the entries
//! to its own WAL, applies them, and sends Acks (its durable position) and
//! SyncAcks.

pub mod frame;
pub mod protocol;

pub use frame::{Compression, ErrorCode, Frame, FrameError, WelcomeMode};
pub use protocol::{
    Handshake, ProtocolError, ReaderAction, ReceiveError, ReceiveState, SendState, WriterView,
};

/// Why compressed entry data cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    #[error("entries frame: {0}")]
    Decompress(String),
    #[error("entries frame decompressed to {got} bytes, the header says {expected}")]
    Length { expected: usize, got: usize },
}

/// Compresses entry data for an `Entries` frame (`None`: sent as is).
pub fn compress(c: Compression, raw: &[u8]) -> Option<Vec<u8>> {
    match c {
        Compression::None => None,
        Compression::Zstd => Some(zstd::bulk::compress(raw, 1).expect("zstd compresses any input")),
        Compression::Lz4 => Some(lz4_flex::block::compress(raw)),
    }
}

/// Restores the raw entries of an `Entries` frame of `raw_len` bytes.
pub fn decompress(
    c: Compression,
    data: &[u8],
    raw_len: usize,
) -> Result<Vec<u8>, CompressionError> {
    let out = match c {
        Compression::None => data.to_vec(),
        Compression::Zstd => zstd::bulk::decompress(data, raw_len)
            .map_err(|e| CompressionError::Decompress(e.to_string()))?,
        Compression::Lz4 => lz4_flex::block::decompress(data, raw_len)
            .map_err(|e| CompressionError::Decompress(e.to_string()))?,
    };
    if out.len() != raw_len {
        return Err(CompressionError::Length {
            expected: raw_len,
            got: out.len(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_roundtrips_and_checks_the_length() {
        let raw: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        for c in [Compression::Zstd, Compression::Lz4] {
            let packed = compress(c, &raw).unwrap();
            assert!(packed.len() < raw.len());
            assert_eq!(decompress(c, &packed, raw.len()).unwrap(), raw);
            assert!(decompress(c, &packed, raw.len() + 1).is_err());
            assert!(decompress(c, b"garbage", raw.len()).is_err());
        }
        assert!(compress(Compression::None, &raw).is_none());
    }
}
