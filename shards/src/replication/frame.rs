//! The replication wire format: length-prefixed, typed frames.
//!
//! ```text
//! frame     = len u32 (bytes of type + body) | type u8 | body
//! Challenge = 0x01: version u16 | shard_count u32 | nonce [16]          writer -> reader
//! Hello     = 0x02: version u16 | shard u32 | last_seq u64 | epoch u64
//!                   | mac [32] | id_len u16 | reader id (UTF-8)         reader -> writer
//! Welcome   = 0x03: mode u8 (0 stream, 1 bootstrap, 2 diverged)
//!                   | start_seq u64 | durable_seq u64 | flushed_seq u64
//!                   | epoch u64 | http_len u16 | writer's HTTP address
//!                   | pairs u16 | (epoch u32 | first_seq u64)*         writer -> reader
//! Entries   = 0x10: first_seq u64 | last_seq u64 | compression u8
//!                   | raw_len u32 | data                                 writer -> reader
//! Ack       = 0x11: durable_seq u64                                      reader -> writer
//! Sync      = 0x12: durable_seq u64 | sent_at_us u64                     writer -> reader
//! SyncAck   = 0x13: durable_seq u64 | sent_at_us u64 (echoed)            reader -> writer
//! Error     = 0x1F: code u16 | msg_len u16 | message (UTF-8)             either way
//! ```
//!
//! Little-endian. `Entries.data` is a run of whole WAL entries exactly as
//! they are stored in the writer's segments (header, payload, padding; see
//! [`crate::wal::format`]), compressed as a whole when `compression` is not
//! 0; `raw_len` is their length uncompressed. The writer sends those bytes
//! from its ring or its memory-mapped segments without copying them, and the
//! reader writes them to its own WAL as they are.
//!
//! `epoch` is the cluster's writer epoch as each side knows it (0 outside a
//! cluster): a stream runs only when both agree. The Welcome carries the
//! writer's epoch history (see [`crate::wal::epochs`]), from which the
//! reader finds where its log forks from the writer's.

use crate::ids::{Epoch, ShardId, WalSeq};

/// The protocol version both sides must speak.
pub const VERSION: u16 = 2;
/// Bytes before a frame's body: `len u32 | type u8`.
pub const FRAME_HEADER_LEN: usize = 5;
/// Bytes of an `Entries` frame before its data (frame header included).
pub const ENTRIES_HEADER_LEN: usize = FRAME_HEADER_LEN + 8 + 8 + 1 + 4;
/// The largest frame body accepted (type byte included).
pub const MAX_FRAME_LEN: usize = 128 << 20;
/// Length of a Hello's HMAC-SHA256.
pub const MAC_LEN: usize = 32;
/// Length of a Challenge's nonce.
pub const NONCE_LEN: usize = 16;

const T_CHALLENGE: u8 = 0x01;
const T_HELLO: u8 = 0x02;
const T_WELCOME: u8 = 0x03;
const T_ENTRIES: u8 = 0x10;
const T_ACK: u8 = 0x11;
const T_SYNC: u8 = 0x12;
const T_SYNC_ACK: u8 = 0x13;
const T_ERROR: u8 = 0x1F;

/// How an `Entries` frame's data is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Zstd,
    Lz4,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
            Compression::Lz4 => 2,
        }
    }

    fn from_code(c: u8) -> Option<Compression> {
        match c {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            2 => Some(Compression::Lz4),
            _ => None,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd),
            "lz4" => Ok(Compression::Lz4),
            other => Err(format!(
                "unknown compression {other:?} (expected none, zstd or lz4)"
            )),
        }
    }
}

/// What the writer tells a reader after its Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WelcomeMode {
    /// Entries follow, starting at `start_seq`.
    Stream,
    /// The entries the reader needs are gone from the writer's WAL: fetch the
    /// writer's flushed files, then reconnect from `flushed_seq`.
    Bootstrap,
    /// The reader holds entries past the writer's end: its log forked
    /// from the writer's; it must cut it at the fork point (found from the
    /// epoch histories) and reconnect.
    Diverged,
}

/// Machine-readable reasons carried by an `Error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The Hello's MAC does not match the cluster secret.
    AuthFailed,
    /// The Hello names a shard the writer does not have.
    NoSuchShard,
    /// The peer speaks another protocol version.
    Version,
    /// The reader holds entries the writer does not (it was another
    /// writer's, or the writer lost unsynced entries).
    ReaderAhead,
    /// A frame that is malformed or not allowed at this point.
    Protocol,
    /// The reader found a gap or a bad checksum in the entries sent.
    Gap,
    /// The node is stopping.
    ShuttingDown,
    /// A failure on the sending side (I/O, WAL).
    Internal,
    /// The two sides know different writer epochs: one of them is stale.
    Epoch,
}

impl ErrorCode {
    fn code(self) -> u16 {
        match self {
            ErrorCode::AuthFailed => 1,
            ErrorCode::NoSuchShard => 2,
            ErrorCode::Version => 3,
            ErrorCode::ReaderAhead => 4,
            ErrorCode::Protocol => 5,
            ErrorCode::Gap => 6,
            ErrorCode::ShuttingDown => 7,
            ErrorCode::Internal => 8,
            ErrorCode::Epoch => 9,
        }
    }

    fn from_code(c: u16) -> ErrorCode {
        match c {
            1 => ErrorCode::AuthFailed,
            2 => ErrorCode::NoSuchShard,
            3 => ErrorCode::Version,
            4 => ErrorCode::ReaderAhead,
            5 => ErrorCode::Protocol,
            6 => ErrorCode::Gap,
            7 => ErrorCode::ShuttingDown,
            9 => ErrorCode::Epoch,
            _ => ErrorCode::Internal,
        }
    }

    /// The name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::NoSuchShard => "NO_SUCH_SHARD",
            ErrorCode::Version => "VERSION",
            ErrorCode::ReaderAhead => "READER_AHEAD",
            ErrorCode::Protocol => "PROTOCOL",
            ErrorCode::Gap => "GAP",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Epoch => "EPOCH",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One decoded frame; `Entries` and the strings borrow from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Challenge {
        version: u16,
        shard_count: u32,
        nonce: [u8; NONCE_LEN],
    },
    Hello {
        version: u16,
        shard: ShardId,
        last_seq: WalSeq,
        /// The writer epoch the reader follows.
        epoch: u64,
        mac: [u8; MAC_LEN],
        reader_id: &'a str,
    },
    Welcome {
        mode: WelcomeMode,
        start_seq: WalSeq,
        durable_seq: WalSeq,
        flushed_seq: WalSeq,
        /// The writer epoch the writer knows.
        epoch: u64,
        /// Where the writer serves its files for a bootstrap.
        http_addr: &'a str,
        /// The writer's epoch history.
        history: Vec<(Epoch, WalSeq)>,
    },
    Entries {
        first_seq: WalSeq,
        last_seq: WalSeq,
        compression: Compression,
        raw_len: u32,
        data: &'a [u8],
    },
    Ack {
        durable_seq: WalSeq,
    },
    Sync {
        durable_seq: WalSeq,
        sent_at_us: u64,
    },
    SyncAck {
        durable_seq: WalSeq,
        sent_at_us: u64,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
    },
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("frame type 0x{0:02x} is too short")]
    Short(u8),
    #[error("frame type 0x{0:02x} has {1} bytes left over")]
    Trailing(u8, usize),
    #[error("frame text is not UTF-8")]
    Utf8,
    #[error("unknown compression {0}")]
    Compression(u8),
    #[error("unknown welcome mode {0}")]
    Mode(u8),
}

impl Frame<'_> {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        let t = match self {
            Frame::Challenge {
                version,
                shard_count,
                nonce,
            } => {
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&shard_count.to_le_bytes());
                out.extend_from_slice(nonce);
                T_CHALLENGE
            }
            Frame::Hello {
                version,
                shard,
                last_seq,
                epoch,
                mac,
                reader_id,
            } => {
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&shard.0.to_le_bytes());
                out.extend_from_slice(&last_seq.0.to_le_bytes());
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(mac);
                put_str16(out, reader_id);
                T_HELLO
            }
            Frame::Welcome {
                mode,
                start_seq,
                durable_seq,
                flushed_seq,
                epoch,
                http_addr,
                history,
            } => {
                out.push(match mode {
                    WelcomeMode::Stream => 0,
                    WelcomeMode::Bootstrap => 1,
                    WelcomeMode::Diverged => 2,
                });
                out.extend_from_slice(&start_seq.0.to_le_bytes());
                out.extend_from_slice(&durable_seq.0.to_le_bytes());
                out.extend_from_slice(&flushed_seq.0.to_le_bytes());
                out.extend_from_slice(&epoch.to_le_bytes());
                put_str16(out, http_addr);
                // The newest pairs, if there were ever more than fit.
                let skip = history.len().saturating_sub(u16::MAX as usize);
                out.extend_from_slice(&((history.len() - skip) as u16).to_le_bytes());
                for (e, q) in &history[skip..] {
                    out.extend_from_slice(&e.0.to_le_bytes());
                    out.extend_from_slice(&q.0.to_le_bytes());
                }
                T_WELCOME
            }
            Frame::Entries {
                first_seq,
                last_seq,
                compression,
                raw_len,
                data,
            } => {
                out.truncate(start);
                out.extend_from_slice(&entries_header(
                    *first_seq,
                    *last_seq,
                    *compression,
                    *raw_len,
                    data.len(),
                ));
                out.extend_from_slice(data);
                return;
            }
            Frame::Ack { durable_seq } => {
                out.extend_from_slice(&durable_seq.0.to_le_bytes());
                T_ACK
            }
            Frame::Sync {
                durable_seq,
                sent_at_us,
            } => {
                out.extend_from_slice(&durable_seq.0.to_le_bytes());
                out.extend_from_slice(&sent_at_us.to_le_bytes());
                T_SYNC
            }
            Frame::SyncAck {
                durable_seq,
                sent_at_us,
            } => {
                out.extend_from_slice(&durable_seq.0.to_le_bytes());
                out.extend_from_slice(&sent_at_us.to_le_bytes());
                T_SYNC_ACK
            }
            Frame::Error { code, message } => {
                out.extend_from_slice(&code.code().to_le_bytes());
                put_str16(out, message);
                T_ERROR
            }
        };
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4] = t;
    }

    /// The encoded frame as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

/// Appends `len u16 | bytes` of `s`, cut to 65,535 bytes (at a character
/// boundary, so it stays UTF-8).
fn put_str16(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..n]);
}

/// The header of an `Entries` frame whose data (`data_len` bytes, sent
/// right after it without copying) holds entries `first_seq..=last_seq`.
pub fn entries_header(
    first_seq: WalSeq,
    last_seq: WalSeq,
    compression: Compression,
    raw_len: u32,
    data_len: usize,
) -> [u8; ENTRIES_HEADER_LEN] {
    let mut h = [0u8; ENTRIES_HEADER_LEN];
    let len = (ENTRIES_HEADER_LEN - 4 + data_len) as u32;
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4] = T_ENTRIES;
    h[5..13].copy_from_slice(&first_seq.0.to_le_bytes());
    h[13..21].copy_from_slice(&last_seq.0.to_le_bytes());
    h[21] = compression.code();
    h[22..26].copy_from_slice(&raw_len.to_le_bytes());
    h
}

/// The body length announced by a frame header (`len` minus nothing: type
/// byte included), checked against [`MAX_FRAME_LEN`].
pub fn frame_len(header: &[u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(*header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

struct Cur<'a> {
    b: &'a [u8],
    t: u8,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.b.len() < n {
            return Err(FrameError::Short(self.t));
        }
        let (h, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn seq(&mut self) -> Result<WalSeq, FrameError> {
        self.u64().map(WalSeq)
    }
    fn str(&mut self, n: usize) -> Result<&'a str, FrameError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| FrameError::Utf8)
    }
    fn done(self) -> Result<(), FrameError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Trailing(self.t, self.b.len()))
        }
    }
}

/// Decodes one frame from `body`: the bytes after the length field (type
/// byte first), exactly as many as the length said.
pub fn decode_body(body: &[u8]) -> Result<Frame<'_>, FrameError> {
    let (&t, rest) = body.split_first().ok_or(FrameError::Empty)?;
    let mut c = Cur { b: rest, t };
    let frame = match t {
        T_CHALLENGE => Frame::Challenge {
            version: c.u16()?,
            shard_count: c.u32()?,
            nonce: c.take(NONCE_LEN)?.try_into().expect("nonce length"),
        },
        T_HELLO => {
            let version = c.u16()?;
            let shard = ShardId(c.u32()?);
            let last_seq = c.seq()?;
            let epoch = c.u64()?;
            let mac = c.take(MAC_LEN)?.try_into().expect("mac length");
            let n = c.u16()? as usize;
            Frame::Hello {
                version,
                shard,
                last_seq,
                epoch,
                mac,
                reader_id: c.str(n)?,
            }
        }
        T_WELCOME => {
            let mode = match c.u8()? {
                0 => WelcomeMode::Stream,
                1 => WelcomeMode::Bootstrap,
                2 => WelcomeMode::Diverged,
                m => return Err(FrameError::Mode(m)),
            };
            let start_seq = c.seq()?;
            let durable_seq = c.seq()?;
            let flushed_seq = c.seq()?;
            let epoch = c.u64()?;
            let n = c.u16()? as usize;
            let http_addr = c.str(n)?;
            let pairs = c.u16()? as usize;
            let mut history = Vec::with_capacity(pairs);
            for _ in 0..pairs {
                history.push((Epoch(c.u32()?), c.seq()?));
            }
            Frame::Welcome {
                mode,
                start_seq,
                durable_seq,
                flushed_seq,
                epoch,
                http_addr,
                history,
            }
        }
        T_ENTRIES => {
            let first_seq = c.seq()?;
            let last_seq = c.seq()?;
            let code = c.u8()?;
            let compression = Compression::from_code(code).ok_or(FrameError::Compression(code))?;
            let raw_len = c.u32()?;
            let data = std::mem::take(&mut c.b);
            Frame::Entries {
                first_seq,
                last_seq,
                compression,
                raw_len,
                data,
            }
        }
        T_ACK => Frame::Ack {
            durable_seq: c.seq()?,
        },
        T_SYNC => Frame::Sync {
            durable_seq: c.seq()?,
            sent_at_us: c.u64()?,
        },
        T_SYNC_ACK => Frame::SyncAck {
            durable_seq: c.seq()?,
            sent_at_us: c.u64()?,
        },
        T_ERROR => {
            let code = ErrorCode::from_code(c.u16()?);
            let n = c.u16()? as usize;
            Frame::Error {
                code,
                message: c.str(n)?,
            }
        }
        other => return Err(FrameError::UnknownType(other)),
    };
    c.done()?;
    Ok(frame)
}

/// Decodes the first whole frame of `buf`: `Ok(None)` when more bytes are
/// needed, else the frame and how many bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = frame_len(header.try_into().expect("4 bytes"))?;
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, 4 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<(&'static str, Frame<'static>)> {
        vec![
            (
                "challenge",
                Frame::Challenge {
                    version: VERSION,
                    shard_count: 2,
                    nonce: [7; NONCE_LEN],
                },
            ),
            (
                "hello",
                Frame::Hello {
                    version: VERSION,
                    shard: ShardId(1),
                    last_seq: WalSeq(42),
                    epoch: 3,
                    mac: [0xab; MAC_LEN],
                    reader_id: "reader-a",
                },
            ),
            (
                "welcome",
                Frame::Welcome {
                    mode: WelcomeMode::Bootstrap,
                    start_seq: WalSeq(43),
                    durable_seq: WalSeq(99),
                    flushed_seq: WalSeq(80),
                    epoch: 3,
                    http_addr: "127.0.0.1:8000",
                    history: vec![(Epoch(1), WalSeq(1)), (Epoch(3), WalSeq(70))],
                },
            ),
            (
                "entries",
                Frame::Entries {
                    first_seq: WalSeq(43),
                    last_seq: WalSeq(44),
                    compression: Compression::Lz4,
                    raw_len: 64,
                    data: b"abcdef",
                },
            ),
            (
                "ack",
                Frame::Ack {
                    durable_seq: WalSeq(44),
                },
            ),
            (
                "sync",
                Frame::Sync {
                    durable_seq: WalSeq(45),
                    sent_at_us: 1_700_000_000_000_000,
                },
            ),
            (
                "sync_ack",
                Frame::SyncAck {
                    durable_seq: WalSeq(45),
                    sent_at_us: 1_700_000_000_000_000,
                },
            ),
            (
                "error",
                Frame::Error {
                    code: ErrorCode::Gap,
                    message: "expected 5, got 7",
                },
            ),
        ]
    }

    #[test]
    fn every_frame_roundtrips_and_its_bytes_are_pinned() {
        let mut all = String::new();
        for (name, f) in samples() {
            let bytes = f.to_vec();
            let (back, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len(), "{name}");
            assert_eq!(back, f, "{name}");
            // Every strict prefix asks for more bytes.
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).unwrap().is_none(), "{name} cut {cut}");
            }
            all.push_str(&format!("{name}: {}\n", hex::encode(&bytes)));
        }
        insta::assert_snapshot!("replication_frames", all);
    }

    #[test]
    fn entries_header_matches_the_encoder() {
        let f = Frame::Entries {
            first_seq: WalSeq(1),
            last_seq: WalSeq(3),
            compression: Compression::None,
            raw_len: 5,
            data: b"12345",
        };
        let mut manual = entries_header(WalSeq(1), WalSeq(3), Compression::None, 5, 5).to_vec();
        manual.extend_from_slice(b"12345");
        assert_eq!(f.to_vec(), manual);
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert_eq!(decode(&[0, 0, 0, 0]).unwrap_err(), FrameError::Empty);
        let huge = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
        assert!(matches!(decode(&huge), Err(FrameError::TooLarge(_))));
        assert_eq!(
            decode(&[1, 0, 0, 0, 0x7e]).unwrap_err(),
            FrameError::UnknownType(0x7e)
        );
        // An Ack with a byte too many, and one too short.
        let mut ack = Frame::Ack {
            durable_seq: WalSeq(1),
        }
        .to_vec();
        ack[0] += 1;
        ack.push(0);
        assert_eq!(decode(&ack).unwrap_err(), FrameError::Trailing(T_ACK, 1));
        assert_eq!(
            decode(&[5, 0, 0, 0, T_ACK, 1, 2, 3, 4]).unwrap_err(),
            FrameError::Short(T_ACK)
        );
        assert_eq!(
            decode_body(&[
                T_ENTRIES, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0
            ])
            .unwrap_err(),
            FrameError::Compression(9)
        );
        let mut hello = Frame::Hello {
            version: VERSION,
            shard: ShardId(0),
            last_seq: WalSeq(0),
            epoch: 0,
            mac: [0; MAC_LEN],
            reader_id: "ab",
        }
        .to_vec();
        let n = hello.len();
        hello[n - 1] = 0xff;
        assert_eq!(decode(&hello).unwrap_err(), FrameError::Utf8);
    }
}
