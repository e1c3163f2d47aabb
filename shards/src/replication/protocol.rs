//! The replication protocol's decisions, with no sockets, files or clocks:
//! the handshake (authentication, resume or bootstrap), the writer's view of
//! what it sent and what the reader acknowledged, and the reader's check that
//! the entries it receives continue its log without a gap.
//!
//! Invariants: on the writer, `acked <= sent < next` (`sent = next - 1`);
//! on the reader, every accepted entry is `expected`, then `expected` moves
//! on by one, so the reader's log is the writer's log, gap-free.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::frame::{ErrorCode, Frame, WelcomeMode, MAC_LEN, NONCE_LEN, VERSION};
use crate::ids::{ShardId, WalSeq};
use crate::wal::epochs::{fork_point, EpochHistory};
use crate::wal::format::{decode_entry, Decoded};

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 keyed by the cluster secret over a Hello's fields.
fn hello_hmac(
    secret: &[u8],
    nonce: &[u8; NONCE_LEN],
    shard: ShardId,
    last_seq: WalSeq,
    epoch: u64,
    reader_id: &str,
) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"tidemark-replication-v2");
    m.update(nonce);
    m.update(&shard.0.to_le_bytes());
    m.update(&last_seq.0.to_le_bytes());
    m.update(&epoch.to_le_bytes());
    m.update(reader_id.as_bytes());
    m
}

/// The MAC a reader puts in its Hello: HMAC-SHA256 with the cluster secret
/// over the writer's nonce and the Hello's fields, so the secret never
/// crosses the wire and a recorded Hello cannot be replayed.
pub fn hello_mac(
    secret: &[u8],
    nonce: &[u8; NONCE_LEN],
    shard: ShardId,
    last_seq: WalSeq,
    epoch: u64,
    reader_id: &str,
) -> [u8; MAC_LEN] {
    hello_hmac(secret, nonce, shard, last_seq, epoch, reader_id)
        .finalize()
        .into_bytes()
        .into()
}

/// The value of the `x-tidemark-replication` header that authenticates a
/// reader's HTTP request for the writer's files: `<unix seconds>.<hex
/// HMAC-SHA256(secret, seconds | request target)>`.
pub fn http_auth(secret: &[u8], unix_secs: u64, target: &str) -> String {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"tidemark-replication-http-v1");
    m.update(&unix_secs.to_le_bytes());
    m.update(target.as_bytes());
    format!("{unix_secs}.{}", hex::encode(m.finalize().into_bytes()))
}

/// Checks an `x-tidemark-replication` header for `target` at `now` (unix
/// seconds): the MAC must match and the time be within `skew` seconds.
pub fn check_http_auth(secret: &[u8], header: &str, target: &str, now: u64, skew: u64) -> bool {
    let Some((secs, mac)) = header.split_once('.') else {
        return false;
    };
    let Ok(secs) = secs.parse::<u64>() else {
        return false;
    };
    let Ok(mac) = hex::decode(mac) else {
        return false;
    };
    if secs.abs_diff(now) > skew {
        return false;
    }
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"tidemark-replication-http-v1");
    m.update(&secs.to_le_bytes());
    m.update(target.as_bytes());
    m.verify_slice(&mac).is_ok()
}

/// What the writer's shard knows when a Hello arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterView {
    pub shard: ShardId,
    pub shard_count: u32,
    /// The oldest entry still readable from the ring or the segments.
    pub oldest_seq: WalSeq,
    pub durable_seq: WalSeq,
    /// The shard's flushed watermark: every entry up to it is in Parquet
    /// files listed in the manifest.
    pub flushed_seq: WalSeq,
    /// The cluster's writer epoch as the writer knows it (0 outside a
    /// cluster).
    pub epoch: u64,
}

/// The writer's answer to a Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// Stream entries from `from` on.
    Stream { reader_id: String, from: WalSeq },
    /// The reader must fetch the flushed files and come back from `flushed_seq`.
    Bootstrap {
        reader_id: String,
        flushed_seq: WalSeq,
    },
    /// The reader holds entries past the writer's end: it must cut its log
    /// at the fork point and come back.
    Diverged { reader_id: String },
    /// Refuse the reader with an `Error` frame and close.
    Refuse { code: ErrorCode, message: String },
}

impl Handshake {
    /// The frame that tells the reader; `http_addr` is where the writer
    /// serves its files, `history` the writer's epoch history.
    pub fn reply<'a>(
        &'a self,
        view: &WriterView,
        http_addr: &'a str,
        history: &EpochHistory,
    ) -> Frame<'a> {
        let welcome = |mode, start_seq, flushed_seq| Frame::Welcome {
            mode,
            start_seq,
            durable_seq: view.durable_seq,
            flushed_seq,
            epoch: view.epoch,
            http_addr,
            history: history.pairs().to_vec(),
        };
        match self {
            Handshake::Stream { from, .. } => welcome(WelcomeMode::Stream, *from, view.flushed_seq),
            Handshake::Bootstrap { flushed_seq, .. } => {
                welcome(WelcomeMode::Bootstrap, flushed_seq.next(), *flushed_seq)
            }
            Handshake::Diverged { .. } => welcome(
                WelcomeMode::Diverged,
                view.durable_seq.next(),
                view.flushed_seq,
            ),
            Handshake::Refuse { code, message } => Frame::Error {
                code: *code,
                message,
            },
        }
    }
}

/// Decides what to do with the frame a reader sent after the writer's
/// Challenge (`nonce`).
pub fn writer_handshake(
    frame: &Frame<'_>,
    secret: &[u8],
    nonce: &[u8; NONCE_LEN],
    view: &WriterView,
) -> Handshake {
    let refuse = |code, message: String| Handshake::Refuse { code, message };
    let Frame::Hello {
        version,
        shard,
        last_seq,
        epoch,
        mac,
        reader_id,
    } = frame
    else {
        return refuse(ErrorCode::Protocol, "expected a Hello frame".into());
    };
    if *version != VERSION {
        return refuse(
            ErrorCode::Version,
            format!("protocol version {version} is not supported (this writer speaks {VERSION})"),
        );
    }
    let m = hello_hmac(secret, nonce, *shard, *last_seq, *epoch, reader_id);
    if m.verify_slice(mac).is_err() {
        return refuse(
            ErrorCode::AuthFailed,
            format!("reader {reader_id:?}: the MAC does not match this cluster's secret"),
        );
    }
    if *shard != view.shard {
        return refuse(
            ErrorCode::NoSuchShard,
            format!(
                "this stream serves shard {} of {}, not shard {shard}",
                view.shard, view.shard_count
            ),
        );
    }
    if *epoch != view.epoch {
        return refuse(
            ErrorCode::Epoch,
            format!(
                "reader {reader_id:?} follows writer epoch {epoch}, this writer knows epoch {}: one of them has not seen the last failover yet",
                view.epoch
            ),
        );
    }
    if *last_seq > view.durable_seq && view.epoch > 0 {
        // In a cluster a reader ahead of the primary holds entries of a
        // deposed primary: it cuts them (the epoch histories say where).
        return Handshake::Diverged {
            reader_id: reader_id.to_string(),
        };
    }
    if *last_seq > view.durable_seq {
        return refuse(
            ErrorCode::ReaderAhead,
            format!(
                "reader {reader_id:?} holds shard {shard} up to seq {last_seq}, but this writer's WAL ends at {}: the reader's data is not this writer's",
                view.durable_seq
            ),
        );
    }
    let from = last_seq.next();
    if from >= view.oldest_seq {
        Handshake::Stream {
            reader_id: reader_id.to_string(),
            from,
        }
    } else {
        Handshake::Bootstrap {
            reader_id: reader_id.to_string(),
            flushed_seq: view.flushed_seq,
        }
    }
}

/// A protocol violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("ack of seq {acked} is below the earlier ack {before}")]
    AckBackwards { acked: WalSeq, before: WalSeq },
    #[error("ack of seq {acked} is beyond the last entry sent ({sent})")]
    AckAhead { acked: WalSeq, sent: WalSeq },
    #[error("welcome starts at seq {start}, expected {expected}")]
    WelcomeStart { start: WalSeq, expected: WalSeq },
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
    #[error("the writer says this log (up to {last}) forked from its own (up to {writer_durable}), but the epoch histories agree")]
    NoFork {
        last: WalSeq,
        writer_durable: WalSeq,
    },
}

/// The writer's side of one stream to one reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendState {
    next: WalSeq,
    acked: WalSeq,
}

impl SendState {
    /// A stream that starts at `from` (the reader holds everything before).
    pub fn new(from: WalSeq) -> SendState {
        let held = from.prev().unwrap_or(WalSeq::ZERO);
        SendState {
            next: from,
            acked: held,
        }
    }

    /// The next entry to send, if the WAL has it durably.
    pub fn wants(&self, durable: WalSeq) -> Option<WalSeq> {
        (self.next <= durable).then_some(self.next)
    }

    /// Records that entries `first..=last` went out.
    ///
    /// # Panics
    /// If `first` is not the entry [`SendState::wants`] asked for.
    pub fn sent(&mut self, first: WalSeq, last: WalSeq) {
        assert_eq!(first, self.next, "entries must be sent in order");
        assert!(last >= first);
        self.next = last.next();
    }

    /// The last entry sent.
    pub fn last_sent(&self) -> WalSeq {
        self.next.prev().unwrap_or(WalSeq::ZERO)
    }

    /// The last entry the reader holds durably.
    pub fn acked(&self) -> WalSeq {
        self.acked
    }

    /// Records a reader's ack.
    pub fn on_ack(&mut self, seq: WalSeq) -> Result<(), ProtocolError> {
        if seq < self.acked {
            return Err(ProtocolError::AckBackwards {
                acked: seq,
                before: self.acked,
            });
        }
        if seq > self.last_sent() {
            return Err(ProtocolError::AckAhead {
                acked: seq,
                sent: self.last_sent(),
            });
        }
        self.acked = seq;
        Ok(())
    }

    /// Entries durable on the writer that the reader has not acknowledged.
    pub fn lag(&self, durable: WalSeq) -> u64 {
        durable.0.saturating_sub(self.acked.0)
    }
}

/// Why entries received cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    #[error("gap: expected seq {expected}, got {got}")]
    Gap { expected: WalSeq, got: WalSeq },
    #[error("entry after seq {after} is damaged: {reason}")]
    Corrupt { after: WalSeq, reason: &'static str },
    #[error("frame says entries {first}..={last} but holds up to {found}")]
    Mismatch {
        first: WalSeq,
        last: WalSeq,
        found: WalSeq,
    },
    #[error("empty entries frame")]
    Empty,
}

impl ReceiveError {
    /// The code to send the writer before closing.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Gap
    }
}

/// What the reader does after the writer's Welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderAction {
    Stream,
    /// Fetch the writer's files up to `flushed_seq`, then reconnect.
    Bootstrap {
        flushed_seq: WalSeq,
    },
    /// Cut the log after `to` (it forked from the writer's), then reconnect.
    Truncate {
        to: WalSeq,
    },
}

/// The reader's side of one stream: which entry must come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveState {
    expected: WalSeq,
}

impl ReceiveState {
    /// A reader whose log ends at `last_seq`.
    pub fn new(last_seq: WalSeq) -> ReceiveState {
        ReceiveState {
            expected: last_seq.next(),
        }
    }

    /// The last entry the reader holds.
    pub fn last_seq(&self) -> WalSeq {
        self.expected.prev().unwrap_or(WalSeq::ZERO)
    }

    /// The Hello to send in answer to a Challenge; `epoch` is the writer
    /// epoch this reader follows.
    pub fn hello<'a>(
        &self,
        secret: &[u8],
        nonce: &[u8; NONCE_LEN],
        shard: ShardId,
        epoch: u64,
        reader_id: &'a str,
    ) -> Frame<'a> {
        let last_seq = self.last_seq();
        Frame::Hello {
            version: VERSION,
            shard,
            last_seq,
            epoch,
            mac: hello_mac(secret, nonce, shard, last_seq, epoch, reader_id),
            reader_id,
        }
    }

    /// Checks the writer's Welcome. `own` is this reader's epoch history;
    /// `writer` and `writer_durable` the Welcome's. A reader whose log
    /// forked from the writer's (it holds entries of a deposed primary)
    /// must cut it first: [`ReaderAction::Truncate`].
    pub fn on_welcome(
        &self,
        mode: WelcomeMode,
        start_seq: WalSeq,
        flushed_seq: WalSeq,
        own: &EpochHistory,
        writer: &EpochHistory,
        writer_durable: WalSeq,
    ) -> Result<ReaderAction, ProtocolError> {
        let last = self.last_seq();
        let fork = fork_point(own, last, writer, writer_durable);
        match mode {
            WelcomeMode::Bootstrap => Ok(ReaderAction::Bootstrap { flushed_seq }),
            _ if fork < last => Ok(ReaderAction::Truncate { to: fork }),
            WelcomeMode::Stream if start_seq == self.expected => Ok(ReaderAction::Stream),
            WelcomeMode::Stream => Err(ProtocolError::WelcomeStart {
                start: start_seq,
                expected: self.expected,
            }),
            WelcomeMode::Diverged => Err(ProtocolError::NoFork {
                last,
                writer_durable,
            }),
        }
    }

    /// Checks the (uncompressed) entries of an `Entries` frame: each entry
    /// whole, with a valid checksum, numbered from the expected seq without
    /// a gap, and ending at `last`. On success the reader expects `last + 1`
    /// next and the number of entries is returned.
    pub fn accept(&mut self, first: WalSeq, last: WalSeq, raw: &[u8]) -> Result<u64, ReceiveError> {
        if first != self.expected {
            return Err(ReceiveError::Gap {
                expected: self.expected,
                got: first,
            });
        }
        let mut at = 0;
        let mut expected = self.expected;
        let mut count = 0u64;
        while at < raw.len() {
            let after = expected.prev().unwrap_or(WalSeq::ZERO);
            let e = match decode_entry(&raw[at..]) {
                Decoded::Entry(e) => e,
                Decoded::End | Decoded::Truncated => {
                    return Err(ReceiveError::Corrupt {
                        after,
                        reason: "entry cut off",
                    })
                }
                Decoded::Corrupt(reason) => return Err(ReceiveError::Corrupt { after, reason }),
            };
            if e.seq != expected {
                return Err(ReceiveError::Gap {
                    expected,
                    got: e.seq,
                });
            }
            at += e.raw.len();
            expected = expected.next();
            count += 1;
        }
        let found = match expected.prev() {
            Some(s) if count > 0 => s,
            _ => return Err(ReceiveError::Empty),
        };
        if found != last {
            return Err(ReceiveError::Mismatch { first, last, found });
        }
        self.expected = expected;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::format::{encode_entry, EntryKind};

    const SECRET: &[u8] = b"s3cret";
    const NONCE: [u8; NONCE_LEN] = [9; NONCE_LEN];

    fn view() -> WriterView {
        WriterView {
            shard: ShardId(1),
            shard_count: 2,
            oldest_seq: WalSeq(50),
            durable_seq: WalSeq(100),
            flushed_seq: WalSeq(60),
            epoch: 0,
        }
    }

    fn hello(secret: &[u8], shard: u32, last: u64) -> Frame<'static> {
        ReceiveState::new(WalSeq(last)).hello(secret, &NONCE, ShardId(shard), 0, "r1")
    }

    fn h(pairs: &[(u32, u64)]) -> EpochHistory {
        EpochHistory::from_pairs(
            pairs
                .iter()
                .map(|&(e, s)| (crate::ids::Epoch(e), WalSeq(s)))
                .collect(),
        )
        .unwrap()
    }

    fn entries(seqs: impl IntoIterator<Item = u64>) -> Vec<u8> {
        let mut out = Vec::new();
        for s in seqs {
            encode_entry::<()>(
                &mut out,
                WalSeq(s),
                crate::ids::Epoch(0),
                EntryKind::Write,
                |o| {
                    o.extend_from_slice(&s.to_le_bytes());
                    Ok(())
                },
            )
            .unwrap();
        }
        out
    }

    #[test]
    fn handshake_resumes_where_the_reader_stopped() {
        for last in [49, 60, 99, 100] {
            assert_eq!(
                writer_handshake(&hello(SECRET, 1, last), SECRET, &NONCE, &view()),
                Handshake::Stream {
                    reader_id: "r1".into(),
                    from: WalSeq(last + 1)
                },
                "last {last}"
            );
        }
    }

    #[test]
    fn handshake_sends_a_reader_behind_the_wal_to_bootstrap() {
        for last in [0, 10, 48] {
            assert_eq!(
                writer_handshake(&hello(SECRET, 1, last), SECRET, &NONCE, &view()),
                Handshake::Bootstrap {
                    reader_id: "r1".into(),
                    flushed_seq: WalSeq(60)
                }
            );
        }
        let hs = Handshake::Bootstrap {
            reader_id: "r1".into(),
            flushed_seq: WalSeq(60),
        };
        let v = view();
        let reply = hs.reply(&v, "127.0.0.1:8000", &EpochHistory::default());
        let action = ReceiveState::new(WalSeq(10));
        let Frame::Welcome {
            mode,
            start_seq,
            flushed_seq,
            ..
        } = reply
        else {
            panic!("{reply:?}")
        };
        assert_eq!(
            action
                .on_welcome(
                    mode,
                    start_seq,
                    flushed_seq,
                    &EpochHistory::default(),
                    &EpochHistory::default(),
                    WalSeq(100)
                )
                .unwrap(),
            ReaderAction::Bootstrap {
                flushed_seq: WalSeq(60)
            }
        );
    }

    #[test]
    fn handshake_refusals() {
        let code = |h: Handshake| match h {
            Handshake::Refuse { code, .. } => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(writer_handshake(
                &hello(b"wrong", 1, 60),
                SECRET,
                &NONCE,
                &view()
            )),
            ErrorCode::AuthFailed
        );
        // A Hello made for another nonce (a replay) fails too.
        let replay =
            ReceiveState::new(WalSeq(60)).hello(SECRET, &[1; NONCE_LEN], ShardId(1), 0, "r1");
        assert_eq!(
            code(writer_handshake(&replay, SECRET, &NONCE, &view())),
            ErrorCode::AuthFailed
        );
        assert_eq!(
            code(writer_handshake(
                &hello(SECRET, 0, 60),
                SECRET,
                &NONCE,
                &view()
            )),
            ErrorCode::NoSuchShard
        );
        assert_eq!(
            code(writer_handshake(
                &hello(SECRET, 1, 101),
                SECRET,
                &NONCE,
                &view()
            )),
            ErrorCode::ReaderAhead
        );
        let ack = Frame::Ack {
            durable_seq: WalSeq(1),
        };
        assert_eq!(
            code(writer_handshake(&ack, SECRET, &NONCE, &view())),
            ErrorCode::Protocol
        );
        let Frame::Hello {
            shard,
            last_seq,
            mac,
            reader_id,
            ..
        } = hello(SECRET, 1, 60)
        else {
            unreachable!()
        };
        let old = Frame::Hello {
            version: VERSION + 1,
            shard,
            last_seq,
            epoch: 0,
            mac,
            reader_id,
        };
        assert_eq!(
            code(writer_handshake(&old, SECRET, &NONCE, &view())),
            ErrorCode::Version
        );
    }

    #[test]
    fn http_auth_checks_secret_target_and_time() {
        let h = http_auth(SECRET, 1_000, "/api/v1/replication/manifest?shard=1");
        let ok = |h: &str, t: &str, now| check_http_auth(SECRET, h, t, now, 300);
        assert!(ok(&h, "/api/v1/replication/manifest?shard=1", 1_100));
        assert!(!ok(&h, "/api/v1/replication/manifest?shard=0", 1_100));
        assert!(!ok(&h, "/api/v1/replication/manifest?shard=1", 1_301));
        assert!(!check_http_auth(
            b"other",
            &h,
            "/api/v1/replication/manifest?shard=1",
            1_000,
            300
        ));
        assert!(!ok("garbage", "/", 1_000));
        assert!(!ok("1000.zz", "/", 1_000));
    }

    #[test]
    fn send_state_tracks_sent_and_acked() {
        let mut s = SendState::new(WalSeq(61));
        assert_eq!(s.acked(), WalSeq(60));
        assert_eq!(s.wants(WalSeq(60)), None);
        assert_eq!(s.wants(WalSeq(70)), Some(WalSeq(61)));
        s.sent(WalSeq(61), WalSeq(65));
        assert_eq!(s.wants(WalSeq(65)), None);
        assert_eq!(s.wants(WalSeq(70)), Some(WalSeq(66)));
        assert_eq!(s.lag(WalSeq(70)), 10);
        s.on_ack(WalSeq(63)).unwrap();
        assert_eq!(s.lag(WalSeq(70)), 7);
        assert_eq!(
            s.on_ack(WalSeq(62)),
            Err(ProtocolError::AckBackwards {
                acked: WalSeq(62),
                before: WalSeq(63)
            })
        );
        assert_eq!(
            s.on_ack(WalSeq(66)),
            Err(ProtocolError::AckAhead {
                acked: WalSeq(66),
                sent: WalSeq(65)
            })
        );
        s.on_ack(WalSeq(65)).unwrap();
        assert_eq!(s.lag(WalSeq(65)), 0);
    }

    #[test]
    fn receiver_takes_consecutive_entries_and_detects_gaps() {
        let mut r = ReceiveState::new(WalSeq(4));
        assert_eq!(r.accept(WalSeq(5), WalSeq(7), &entries(5..=7)), Ok(3));
        assert_eq!(r.last_seq(), WalSeq(7));
        // The frame skips 8.
        assert_eq!(
            r.accept(WalSeq(9), WalSeq(9), &entries([9])),
            Err(ReceiveError::Gap {
                expected: WalSeq(8),
                got: WalSeq(9)
            })
        );
        // The frame's header is right but an entry inside is missing.
        assert_eq!(
            r.accept(WalSeq(8), WalSeq(10), &entries([8, 10])),
            Err(ReceiveError::Gap {
                expected: WalSeq(9),
                got: WalSeq(10)
            })
        );
        // A failed frame changes nothing.
        assert_eq!(r.last_seq(), WalSeq(7));
        assert_eq!(
            r.accept(WalSeq(8), WalSeq(9), &entries([8])),
            Err(ReceiveError::Mismatch {
                first: WalSeq(8),
                last: WalSeq(9),
                found: WalSeq(8)
            })
        );
        let mut damaged = entries(8..=9);
        let n = damaged.len();
        damaged[n - 9] ^= 0x40;
        assert!(matches!(
            r.accept(WalSeq(8), WalSeq(9), &damaged),
            Err(ReceiveError::Corrupt {
                after: WalSeq(8),
                ..
            })
        ));
        let cut = entries(8..=9);
        assert!(matches!(
            r.accept(WalSeq(8), WalSeq(9), &cut[..cut.len() - 3]),
            Err(ReceiveError::Corrupt { .. })
        ));
        assert_eq!(
            r.accept(WalSeq(8), WalSeq(8), &[]),
            Err(ReceiveError::Empty)
        );
        assert_eq!(r.accept(WalSeq(8), WalSeq(9), &entries(8..=9)), Ok(2));
    }

    #[test]
    fn welcome_must_start_where_the_reader_is() {
        let r = ReceiveState::new(WalSeq(4));
        let none = EpochHistory::default();
        assert_eq!(
            r.on_welcome(
                WelcomeMode::Stream,
                WalSeq(5),
                WalSeq(0),
                &none,
                &none,
                WalSeq(9)
            ),
            Ok(ReaderAction::Stream)
        );
        assert!(r
            .on_welcome(
                WelcomeMode::Stream,
                WalSeq(6),
                WalSeq(0),
                &none,
                &none,
                WalSeq(9)
            )
            .is_err());
        // The writer says the logs forked, the histories do not: refused.
        assert!(r
            .on_welcome(
                WelcomeMode::Diverged,
                WalSeq(4),
                WalSeq(0),
                &none,
                &none,
                WalSeq(9)
            )
            .is_err());
    }

    #[test]
    fn a_reader_holding_a_deposed_primarys_entries_is_told_to_cut_them() {
        // The deposed primary wrote epoch 1 up to 70; the new primary
        // (epoch 3) holds epoch 1 up to 49 and wrote from 50 to 60.
        let mut w = view();
        w.epoch = 3;
        w.durable_seq = WalSeq(60);
        let old = ReceiveState::new(WalSeq(70));
        // Ahead of the writer's end: Diverged, then Truncate to 49.
        let hs = writer_handshake(
            &old.hello(SECRET, &NONCE, ShardId(1), 3, "r1"),
            SECRET,
            &NONCE,
            &w,
        );
        assert_eq!(
            hs,
            Handshake::Diverged {
                reader_id: "r1".into()
            }
        );
        let Frame::Welcome {
            mode,
            start_seq,
            flushed_seq,
            history,
            durable_seq,
            ..
        } = hs.reply(&w, "x", &h(&[(1, 1), (3, 50)]))
        else {
            panic!()
        };
        let writer = EpochHistory::from_pairs(history).unwrap();
        assert_eq!(
            old.on_welcome(
                mode,
                start_seq,
                flushed_seq,
                &h(&[(1, 1)]),
                &writer,
                durable_seq
            ),
            Ok(ReaderAction::Truncate { to: WalSeq(49) })
        );
        // Behind the writer's end but forked: the Stream welcome still cuts.
        let behind = ReceiveState::new(WalSeq(55));
        assert_eq!(
            behind.on_welcome(
                WelcomeMode::Stream,
                WalSeq(56),
                WalSeq(0),
                &h(&[(1, 1)]),
                &writer,
                WalSeq(60)
            ),
            Ok(ReaderAction::Truncate { to: WalSeq(49) })
        );
        // A reader of another epoch is refused; outside a cluster a reader
        // ahead is refused as before.
        let stale = old.hello(SECRET, &NONCE, ShardId(1), 1, "r1");
        assert!(matches!(
            writer_handshake(&stale, SECRET, &NONCE, &w),
            Handshake::Refuse {
                code: ErrorCode::Epoch,
                ..
            }
        ));
    }
}
