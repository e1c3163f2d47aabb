//! The load generator's series and request bodies ([`gen`]), for its binary
//! and for benches that must send exactly what it sends.

pub mod gen;
