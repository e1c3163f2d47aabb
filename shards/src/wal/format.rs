//! The on-disk format of WAL segments. Pure encoding and decoding, no I/O.
//!
//! ```text
//! segment  = header entry*
//! header   = 64 bytes:
//!            magic "TDMKWAL\0" | version u16 | reserved u16 | shard u32
//!            | segment id u64 | first seq u64 | zero padding to byte 60
//!            | crc32c of bytes 0..60 (u32)
//! entry    = len u32 | crc u32 | seq u64 | kind u8 | reserved [u8; 3]
//!            | epoch u32 | payload (len bytes) | zero padding to a multiple of 8
//! ```
//!
//! All integers are little-endian. An entry's `crc` is the CRC32C of `len`
//! followed by every byte from `seq` to the end of the payload, so a torn or
//! corrupted length, sequence number, kind or payload is detected. Entries
//! start at 8-byte aligned offsets so that an Arrow IPC payload read from a
//! memory map is aligned. `epoch` is the writer epoch whose primary wrote
//! the entry (0 outside a cluster); replication copies it with the entry. A header whose `len` and `crc` are both zero marks
//! the end of the written part of a segment (zero-filled space).

use crate::ids::{Epoch, SegmentId, ShardId, WalSeq};

/// The first eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TDMKWAL\0";
/// The format version this code writes and reads.
pub const SEGMENT_VERSION: u16 = 1;
/// Bytes before the first entry of a segment.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Bytes of an entry before its payload.
pub const ENTRY_HEADER_LEN: usize = 24;
/// Entries start at multiples of this.
pub const ENTRY_ALIGN: usize = 8;
/// The largest payload an entry may carry (256 MiB).
pub const MAX_PAYLOAD_LEN: usize = 256 << 20;

/// The kind of a WAL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// The [`crate::WriteBatch`]es of one request, as Arrow IPC streams:
    /// written by earlier versions, still read ([`super::payload`]).
    WriteIpc = 1,
    /// The [`crate::WriteBatch`]es of one request, their columns' buffers
    /// as they are ([`super::payload`]).
    Write = 2,
}

impl EntryKind {
    fn from_u8(b: u8) -> Option<EntryKind> {
        match b {
            1 => Some(EntryKind::WriteIpc),
            2 => Some(EntryKind::Write),
            _ => None,
        }
    }
}

/// Why bytes are not a valid segment header or entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("segment header is {len} bytes, shorter than {SEGMENT_HEADER_LEN}")]
    ShortHeader { len: usize },
    #[error("bad segment magic")]
    BadMagic,
    #[error("unsupported segment version {0}")]
    BadVersion(u16),
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
}

/// The header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard: ShardId,
    pub segment: SegmentId,
    /// The sequence number of the first entry the segment holds or will hold.
    pub first_seq: WalSeq,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.shard.0.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_seq.0.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, FormatError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(FormatError::ShortHeader { len: b.len() });
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != SEGMENT_VERSION {
            return Err(FormatError::BadVersion(version));
        }
        if crc32c::crc32c(&b[0..60]) != u32_at(b, 60) {
            return Err(FormatError::HeaderChecksum);
        }
        Ok(SegmentHeader {
            shard: ShardId(u32_at(b, 12)),
            segment: SegmentId(u64_at(b, 16)),
            first_seq: WalSeq(u64_at(b, 24)),
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `n` rounded up to the entry alignment.
pub fn align(n: usize) -> usize {
    n.div_ceil(ENTRY_ALIGN) * ENTRY_ALIGN
}

/// Bytes an entry with a payload of `payload_len` takes on disk.
pub fn entry_len(payload_len: usize) -> usize {
    align(ENTRY_HEADER_LEN + payload_len)
}

/// Appends one entry to `out`, whose payload `write_payload` appends. If it
/// fails, `out` is left as it was. `out.len()` must be a multiple of 8.
pub fn encode_entry<E>(
    out: &mut Vec<u8>,
    seq: WalSeq,
    epoch: Epoch,
    kind: EntryKind,
    write_payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<usize, EncodeError<E>> {
    debug_assert_eq!(out.len() % ENTRY_ALIGN, 0);
    let start = out.len();
    out.extend_from_slice(&[0u8; ENTRY_HEADER_LEN]);
    if let Err(e) = write_payload(out) {
        out.truncate(start);
        return Err(EncodeError::Payload(e));
    }
    let payload_len = out.len() - start - ENTRY_HEADER_LEN;
    if payload_len > MAX_PAYLOAD_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLarge { len: payload_len });
    }
    let len = payload_len as u32;
    let h = &mut out[start..start + ENTRY_HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&seq.0.to_le_bytes());
    h[16] = kind as u8;
    h[20..24].copy_from_slice(&epoch.0.to_le_bytes());
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&len.to_le_bytes()),
        &out[start + 8..start + ENTRY_HEADER_LEN + payload_len],
    );
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.resize(align(out.len()), 0);
    Ok(out.len() - start)
}

/// Why an entry could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError<E> {
    #[error("payload could not be encoded: {0}")]
    Payload(E),
    #[error("payload of {len} bytes exceeds the entry limit of {MAX_PAYLOAD_LEN}")]
    TooLarge { len: usize },
}

/// One entry, borrowed from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub seq: WalSeq,
    /// The writer epoch that wrote the entry.
    pub epoch: Epoch,
    pub kind: EntryKind,
    pub payload: &'a [u8],
    /// The whole framed entry as stored, header and padding included: what
    /// replication sends byte for byte.
    pub raw: &'a [u8],
}

/// What the bytes at some offset of a segment hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid entry.
    Entry(EntryRef<'a>),
    /// No more entries: end of the bytes, or zero-filled space.
    End,
    /// An entry whose bytes run past the end of what is there.
    Truncated,
    /// Bytes that are not a valid entry.
    Corrupt(&'static str),
}

/// The sequence number and epoch of each entry in `b`, a run of whole
/// entries already checked (headers only: no checksum).
pub fn entry_epochs(b: &[u8]) -> impl Iterator<Item = (WalSeq, Epoch)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + ENTRY_HEADER_LEN > b.len() {
            return None;
        }
        let h = &b[at..];
        let len = u32_at(h, 0) as usize;
        if len == 0 && u32_at(h, 4) == 0 {
            return None;
        }
        at += entry_len(len);
        Some((WalSeq(u64_at(h, 8)), Epoch(u32_at(h, 20))))
    })
}

/// Decodes the entry at the start of `b`.
pub fn decode_entry(b: &[u8]) -> Decoded<'_> {
    if b.is_empty() {
        return Decoded::End;
    }
    if b.len() < ENTRY_HEADER_LEN {
        return if b.iter().all(|&x| x == 0) {
            Decoded::End
        } else {
            Decoded::Truncated
        };
    }
    let len = u32_at(b, 0) as usize;
    let crc = u32_at(b, 4);
    if len == 0 && crc == 0 {
        return Decoded::End;
    }
    if len > MAX_PAYLOAD_LEN {
        return Decoded::Corrupt("entry length exceeds the limit");
    }
    let total = entry_len(len);
    if b.len() < total {
        return Decoded::Truncated;
    }
    let actual = crc32c::crc32c_append(crc32c::crc32c(&b[0..4]), &b[8..ENTRY_HEADER_LEN + len]);
    if actual != crc {
        return Decoded::Corrupt("entry checksum mismatch");
    }
    let Some(kind) = EntryKind::from_u8(b[16]) else {
        return Decoded::Corrupt("unknown entry kind");
    };
    Decoded::Entry(EntryRef {
        seq: WalSeq(u64_at(b, 8)),
        epoch: Epoch(u32_at(b, 20)),
        kind,
        payload: &b[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + len],
        raw: &b[..total],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_entry::<()>(&mut out, WalSeq(seq), Epoch(0), EntryKind::Write, |o| {
            o.extend_from_slice(payload);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn header_roundtrip_and_snapshot() {
        let h = SegmentHeader {
            shard: ShardId(3),
            segment: SegmentId(7),
            first_seq: WalSeq(1001),
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes).unwrap(), h);
        insta::assert_snapshot!("segment_header", hex::encode(bytes));
        let mut bad = bytes;
        bad[20] ^= 1;
        assert_eq!(
            SegmentHeader::decode(&bad).unwrap_err(),
            FormatError::HeaderChecksum
        );
        assert_eq!(
            SegmentHeader::decode(&bytes[..10]).unwrap_err(),
            FormatError::ShortHeader { len: 10 }
        );
    }

    #[test]
    fn entry_roundtrip_and_snapshot() {
        let b = encode(42, b"hello");
        assert_eq!(b.len(), 32);
        insta::assert_snapshot!("entry_hello", hex::encode(&b));
        match decode_entry(&b) {
            Decoded::Entry(e) => {
                assert_eq!(e.seq, WalSeq(42));
                assert_eq!(e.payload, b"hello");
                assert_eq!(e.raw, &b[..]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_prefix_is_truncated_or_end_and_every_bit_flip_is_caught() {
        let b = encode(9, b"some payload bytes");
        for cut in 0..b.len() {
            let d = decode_entry(&b[..cut]);
            assert!(
                matches!(d, Decoded::Truncated | Decoded::End),
                "cut {cut}: {d:?}"
            );
        }
        // The padding after the payload is not covered; everything else is.
        let covered = ENTRY_HEADER_LEN + b"some payload bytes".len();
        for i in 0..covered {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                let d = decode_entry(&c);
                assert!(
                    !matches!(d, Decoded::Entry(e) if e.seq == WalSeq(9) && e.payload == b"some payload bytes"),
                    "flip {i}/{bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn zeros_are_end() {
        assert_eq!(decode_entry(&[0u8; 100]), Decoded::End);
        assert_eq!(decode_entry(&[0u8; 5]), Decoded::End);
        assert_eq!(decode_entry(&[]), Decoded::End);
    }
}
