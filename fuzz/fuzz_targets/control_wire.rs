//! Fuzzes the control port's decoders (`src/control/wire.rs`, included
//! as it is): every frame a node reads from a peer before and after the
//! handshake. The first byte picks the decoder; the rest is its input.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/control/wire.rs"]
#[allow(dead_code)]
mod wire;

const SECRET: &[u8] = b"fuzz-secret";
const SN: [u8; wire::NONCE_LEN] = [7; wire::NONCE_LEN];
const CN: [u8; wire::NONCE_LEN] = [9; wire::NONCE_LEN];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match pick % 5 {
        0 => {
            if let Some(h) = body.first_chunk::<4>() {
                if let Ok(len) = wire::frame_len(*h) {
                    assert!(len <= wire::MAX_FRAME);
                }
            }
        }
        1 => {
            let _ = wire::read_challenge(body);
        }
        2 => {
            // A forged Hello must never pass without the secret's MAC.
            if let Ok(h) = wire::read_hello(body, SECRET, &SN) {
                assert_eq!(
                    wire::hello(SECRET, &SN, &h.client_nonce, h.node_id),
                    body,
                    "a Hello passed that the secret did not seal"
                );
            }
        }
        3 => {
            if wire::read_welcome(body, SECRET, &SN, &CN).is_ok() {
                assert_eq!(wire::welcome(SECRET, &SN, &CN), body);
            }
        }
        _ => {
            let key = wire::session_key(SECRET, &SN, &CN);
            let mut rx = wire::Sealer::new(key, wire::Direction::ToServer);
            if let Ok(payload) = rx.open(body) {
                let mut tx = wire::Sealer::new(key, wire::Direction::ToServer);
                assert_eq!(tx.seal(payload), body, "a message opened that was not sealed");
            }
        }
    }
});
