//! The control port's wire format: a handshake that proves both ends hold
//! `cluster.secret`, then length-prefixed messages each sealed with an
//! HMAC. Pure byte handling (no sockets): `net.rs` moves the bytes, the
//! fuzz target `control_wire` feeds these decoders arbitrary input.
//!
//! ```text
//! frame        = len:u32 BE | body            (len <= MAX_FRAME)
//! Challenge    = "TMC1" | version:u16 | server_nonce:16          (server → client)
//! Hello        = "TMH1" | version:u16 | node_id:u64 | client_nonce:16
//!                | mac:32 = HMAC(secret, "hello" | server_nonce | client_nonce | node_id)
//! Welcome      = "TMW1" | mac:32 = HMAC(secret, "welcome" | client_nonce | server_nonce)
//! Refused      = "TMR1" | reason (UTF-8)
//! message      = counter:u64 BE | payload (JSON) | mac:32
//!                mac = HMAC(key, direction:u8 | counter | payload)
//!                key = HMAC(secret, "session" | server_nonce | client_nonce)
//! ```
//!
//! The secret never crosses the wire. Counters start at 0 in each
//! direction and go up by one: a replayed, reordered or reflected message
//! fails its MAC check. The client proves the secret first; the server
//! then proves it too, so neither end talks to an impostor.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Version of the control protocol.
pub const VERSION: u16 = 1;
/// Largest frame body accepted (a snapshot chunk or a batch of entries).
pub const MAX_FRAME: usize = 64 << 20;
pub const NONCE_LEN: usize = 16;
pub const MAC_LEN: usize = 32;

const CHALLENGE: &[u8; 4] = b"TMC1";
const HELLO: &[u8; 4] = b"TMH1";
const WELCOME: &[u8; 4] = b"TMW1";
const REFUSED: &[u8; 4] = b"TMR1";

/// Which way a sealed message goes (part of its MAC, so a message cannot
/// be reflected back to its sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToServer = 1,
    ToClient = 2,
}

/// A malformed or unauthenticated frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("{what}: {len} bytes is too short")]
    Short { what: &'static str, len: usize },
    #[error("expected a {expected} frame, got tag {got:?}")]
    Tag {
        expected: &'static str,
        got: [u8; 4],
    },
    #[error("the peer speaks control protocol version {0}, this node {VERSION}")]
    Version(u16),
    #[error("wrong cluster secret: the peer's proof does not match (is cluster.secret the same on every node?)")]
    BadProof,
    #[error("message {got} arrived where {expected} was due (replayed or reordered)")]
    Counter { expected: u64, got: u64 },
    #[error("message MAC mismatch: altered in transit, or sealed with another key")]
    BadMac,
    #[error("the peer refused the connection: {0}")]
    Refused(String),
}

/// The length of the frame whose 4-byte header is `h`.
pub fn frame_len(h: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(h) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    Ok(len)
}

/// `body` with its length header.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    hmac(key, parts).finalize().into_bytes().into()
}

/// Checks `tag` in constant time.
fn verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    hmac(key, parts).verify_slice(tag).is_ok()
}

fn tagged<'a>(body: &'a [u8], tag: &[u8; 4], what: &'static str) -> Result<&'a [u8], WireError> {
    let (t, rest) = body.split_first_chunk::<4>().ok_or(WireError::Short {
        what,
        len: body.len(),
    })?;
    if t == REFUSED && tag != REFUSED {
        return Err(WireError::Refused(
            String::from_utf8_lossy(rest).into_owned(),
        ));
    }
    if t != tag {
        return Err(WireError::Tag {
            expected: what,
            got: *t,
        });
    }
    Ok(rest)
}

/// The server's first frame body.
pub fn challenge(server_nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut b = CHALLENGE.to_vec();
    b.extend_from_slice(&VERSION.to_be_bytes());
    b.extend_from_slice(server_nonce);
    b
}

/// Reads a Challenge: the server's nonce.
pub fn read_challenge(body: &[u8]) -> Result<[u8; NONCE_LEN], WireError> {
    let rest = tagged(body, CHALLENGE, "Challenge")?;
    let (v, rest) = rest.split_first_chunk::<2>().ok_or(WireError::Short {
        what: "Challenge",
        len: body.len(),
    })?;
    let version = u16::from_be_bytes(*v);
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    rest.try_into().map_err(|_| WireError::Short {
        what: "Challenge",
        len: body.len(),
    })
}

/// The client's answer to a Challenge.
pub fn hello(
    secret: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
    node_id: u64,
) -> Vec<u8> {
    let id = node_id.to_be_bytes();
    let tag = mac(secret, &[b"hello", server_nonce, client_nonce, &id]);
    let mut b = HELLO.to_vec();
    b.extend_from_slice(&VERSION.to_be_bytes());
    b.extend_from_slice(&id);
    b.extend_from_slice(client_nonce);
    b.extend_from_slice(&tag);
    b
}

/// A Hello the server checked: who the client says it is, and its nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub node_id: u64,
    pub client_nonce: [u8; NONCE_LEN],
}

/// Reads and checks a Hello against `secret` and the nonce the server sent.
pub fn read_hello(
    body: &[u8],
    secret: &[u8],
    server_nonce: &[u8; NONCE_LEN],
) -> Result<Hello, WireError> {
    let short = WireError::Short {
        what: "Hello",
        len: body.len(),
    };
    let rest = tagged(body, HELLO, "Hello")?;
    if rest.len() != 2 + 8 + NONCE_LEN + MAC_LEN {
        return Err(short);
    }
    let version = u16::from_be_bytes([rest[0], rest[1]]);
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let id: [u8; 8] = rest[2..10].try_into().expect("length checked");
    let client_nonce: [u8; NONCE_LEN] =
        rest[10..10 + NONCE_LEN].try_into().expect("length checked");
    if !verify(
        secret,
        &[b"hello", server_nonce, &client_nonce, &id],
        &rest[10 + NONCE_LEN..],
    ) {
        return Err(WireError::BadProof);
    }
    Ok(Hello {
        node_id: u64::from_be_bytes(id),
        client_nonce,
    })
}

/// The server's proof that it holds the secret too.
pub fn welcome(
    secret: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    let mut b = WELCOME.to_vec();
    b.extend_from_slice(&mac(secret, &[b"welcome", client_nonce, server_nonce]));
    b
}

/// Checks a Welcome (or reads a Refused as an error).
pub fn read_welcome(
    body: &[u8],
    secret: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
) -> Result<(), WireError> {
    let rest = tagged(body, WELCOME, "Welcome")?;
    if !verify(secret, &[b"welcome", client_nonce, server_nonce], rest) {
        return Err(WireError::BadProof);
    }
    Ok(())
}

/// A refusal with its reason, sent instead of a Welcome.
pub fn refused(reason: &str) -> Vec<u8> {
    let mut b = REFUSED.to_vec();
    b.extend_from_slice(reason.as_bytes());
    b
}

/// The key of a session's message MACs.
pub fn session_key(
    secret: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
) -> [u8; MAC_LEN] {
    mac(secret, &[b"session", server_nonce, client_nonce])
}

/// One direction of a session: seals outgoing or opens incoming messages,
/// counting them.
#[derive(Debug, Clone)]
pub struct Sealer {
    key: [u8; MAC_LEN],
    dir: Direction,
    counter: u64,
}

impl Sealer {
    pub fn new(key: [u8; MAC_LEN], dir: Direction) -> Sealer {
        Sealer {
            key,
            dir,
            counter: 0,
        }
    }

    /// The frame body of the next message carrying `payload`.
    pub fn seal(&mut self, payload: &[u8]) -> Vec<u8> {
        let c = self.counter.to_be_bytes();
        let tag = mac(&self.key, &[&[self.dir as u8], &c, payload]);
        self.counter += 1;
        let mut b = Vec::with_capacity(8 + payload.len() + MAC_LEN);
        b.extend_from_slice(&c);
        b.extend_from_slice(payload);
        b.extend_from_slice(&tag);
        b
    }

    /// Checks the next message's frame body and returns its payload.
    pub fn open<'a>(&mut self, body: &'a [u8]) -> Result<&'a [u8], WireError> {
        if body.len() < 8 + MAC_LEN {
            return Err(WireError::Short {
                what: "message",
                len: body.len(),
            });
        }
        let (c, rest) = body.split_at(8);
        let (payload, tag) = rest.split_at(rest.len() - MAC_LEN);
        let got = u64::from_be_bytes(c.try_into().expect("8 bytes"));
        if got != self.counter {
            return Err(WireError::Counter {
                expected: self.counter,
                got,
            });
        }
        if !verify(&self.key, &[&[self.dir as u8], c, payload], tag) {
            return Err(WireError::BadMac);
        }
        self.counter += 1;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &[u8] = b"cluster-secret";
    const SN: [u8; NONCE_LEN] = [1; NONCE_LEN];
    const CN: [u8; NONCE_LEN] = [2; NONCE_LEN];

    #[test]
    fn handshake_round_trip() {
        assert_eq!(read_challenge(&challenge(&SN)), Ok(SN));
        let h = read_hello(&hello(S, &SN, &CN, 7), S, &SN).unwrap();
        assert_eq!(
            h,
            Hello {
                node_id: 7,
                client_nonce: CN
            }
        );
        read_welcome(&welcome(S, &SN, &CN), S, &SN, &CN).unwrap();
    }

    #[test]
    fn a_wrong_secret_fails_on_both_sides() {
        assert_eq!(
            read_hello(&hello(b"other", &SN, &CN, 7), S, &SN),
            Err(WireError::BadProof)
        );
        // A replayed Hello (another challenge) fails too.
        assert_eq!(
            read_hello(&hello(S, &[9; NONCE_LEN], &CN, 7), S, &SN),
            Err(WireError::BadProof)
        );
        assert_eq!(
            read_welcome(&welcome(b"other", &SN, &CN), S, &SN, &CN),
            Err(WireError::BadProof)
        );
        let e = read_welcome(&refused("wrong cluster secret"), S, &SN, &CN).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the peer refused the connection: wrong cluster secret"
        );
    }

    #[test]
    fn sealed_messages_detect_tampering_replay_and_reflection() {
        let key = session_key(S, &SN, &CN);
        let mut tx = Sealer::new(key, Direction::ToServer);
        let mut rx = Sealer::new(key, Direction::ToServer);
        let m0 = tx.seal(b"{\"a\":1}");
        let m1 = tx.seal(b"{\"b\":2}");
        assert_eq!(rx.open(&m0), Ok(&b"{\"a\":1}"[..]));
        // Replay of m0.
        assert_eq!(
            rx.open(&m0),
            Err(WireError::Counter {
                expected: 1,
                got: 0
            })
        );
        let mut bad = m1.clone();
        bad[9] ^= 1;
        assert_eq!(rx.open(&bad), Err(WireError::BadMac));
        assert_eq!(rx.open(&m1), Ok(&b"{\"b\":2}"[..]));
        // A message sealed for the other direction does not open.
        let mut back = Sealer::new(key, Direction::ToClient);
        let mut rx2 = Sealer::new(key, Direction::ToServer);
        assert_eq!(rx2.open(&back.seal(b"x")), Err(WireError::BadMac));
    }

    #[test]
    fn short_and_oversized_frames_are_errors() {
        assert_eq!(
            frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()),
            Err(WireError::TooLarge(MAX_FRAME + 1))
        );
        assert!(read_challenge(b"TM").is_err());
        assert!(read_challenge(b"TMC1\x00\x01").is_err());
        assert!(read_hello(b"TMH1", S, &SN).is_err());
        let mut rx = Sealer::new([0; 32], Direction::ToClient);
        assert!(rx.open(&[0; 39]).is_err());
    }

    proptest::proptest! {
        /// Any bytes, in every decoder: no panic, and nothing accepted that
        /// the secret did not seal (the fuzz target's checks, in CI).
        #[test]
        fn arbitrary_bytes_are_never_accepted_unsealed(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Some(h) = body.first_chunk::<4>() {
                if let Ok(len) = frame_len(*h) {
                    proptest::prop_assert!(len <= MAX_FRAME);
                }
            }
            let _ = read_challenge(&body);
            if let Ok(h) = read_hello(&body, S, &SN) {
                proptest::prop_assert_eq!(hello(S, &SN, &h.client_nonce, h.node_id), body.clone());
            }
            if read_welcome(&body, S, &SN, &CN).is_ok() {
                proptest::prop_assert_eq!(welcome(S, &SN, &CN), body.clone());
            }
            let key = session_key(S, &SN, &CN);
            if let Ok(p) = Sealer::new(key, Direction::ToServer).open(&body) {
                proptest::prop_assert_eq!(Sealer::new(key, Direction::ToServer).seal(p), body.clone());
            }
        }

        /// A sealed message with any one bit flipped does not open.
        #[test]
        fn any_flipped_bit_is_caught(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..64), bit in 0usize..1000) {
            let key = session_key(S, &SN, &CN);
            let mut m = Sealer::new(key, Direction::ToClient).seal(&payload);
            let bit = bit % (m.len() * 8);
            m[bit / 8] ^= 1 << (bit % 8);
            proptest::prop_assert!(Sealer::new(key, Direction::ToClient).open(&m).is_err());
        }
    }

    /// The wire format, byte for byte: a change here is a protocol change.
    #[test]
    fn wire_format_snapshot() {
        let key = session_key(S, &SN, &CN);
        let mut tx = Sealer::new(key, Direction::ToServer);
        let hex = |b: &[u8]| hex::encode(b);
        insta::assert_snapshot!(
            "control_wire",
            format!(
                "challenge {}\nhello {}\nwelcome {}\nrefused {}\nmessage {}\n",
                hex(&frame(&challenge(&SN))),
                hex(&frame(&hello(S, &SN, &CN, 7))),
                hex(&frame(&welcome(S, &SN, &CN))),
                hex(&frame(&refused("no"))),
                hex(&frame(&tx.seal(b"{}"))),
            )
        );
    }
}
