//! A MessagePack value tree and its encoding with rmp, for building test
//! bodies. Shared by the integration tests (`tests/msgpack.rs`) and the
//! decoder's unit tests (`src/msgpack.rs`, through `#[path]`).
#![allow(dead_code, clippy::unwrap_used)]

/// A MessagePack value to encode.
#[derive(Debug, Clone)]
pub enum M {
    Nil,
    B(bool),
    I(i64),
    U(u64),
    F(f64),
    F32(f32),
    S(String),
    /// Bytes written as they are (malformed values, odd markers).
    Raw(Vec<u8>),
    A(Vec<M>),
    Map(Vec<(String, M)>),
}

pub fn s(x: &str) -> M {
    M::S(x.to_string())
}

pub fn map(pairs: Vec<(&str, M)>) -> M {
    M::Map(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

pub fn enc(m: &M, out: &mut Vec<u8>) {
    use rmp::encode::*;
    match m {
        M::Nil => write_nil(out).unwrap(),
        M::B(b) => write_bool(out, *b).unwrap(),
        M::I(i) => {
            write_sint(out, *i).unwrap();
        }
        M::U(u) => {
            write_uint(out, *u).unwrap();
        }
        M::F(f) => write_f64(out, *f).unwrap(),
        M::F32(f) => write_f32(out, *f).unwrap(),
        M::S(x) => write_str(out, x).unwrap(),
        M::Raw(b) => out.extend_from_slice(b),
        M::A(items) => {
            write_array_len(out, items.len() as u32).unwrap();
            items.iter().for_each(|i| enc(i, out));
        }
        M::Map(pairs) => {
            write_map_len(out, pairs.len() as u32).unwrap();
            for (k, v) in pairs {
                write_str(out, k).unwrap();
                enc(v, out);
            }
        }
    }
}

pub fn bytes(m: &M) -> Vec<u8> {
    let mut out = Vec::new();
    enc(m, &mut out);
    out
}
