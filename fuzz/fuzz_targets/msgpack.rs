//! Fuzzes the Arc MessagePack decoder (`/api/v1/write/msgpack`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_ingest::msgpack;

mod check;

fuzz_target!(|data: &[u8]| {
    match msgpack::parse(data, check::DATABASE, check::NOW_NS) {
        Ok(d) => {
            check::decoded(&d);
            assert!(!d.batches.is_empty(), "Ok without batches");
        }
        Err(e) => check::errors(&e),
    }
});
