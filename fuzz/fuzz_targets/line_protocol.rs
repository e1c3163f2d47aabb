//! Fuzzes the InfluxDB line-protocol decoder (`/write`, `/api/v2/write`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_ingest::{line_protocol, Precision};

mod check;

fuzz_target!(|data: &[u8]| {
    // The whole input is the body; its first byte also picks the precision,
    // so seeds stay plain line protocol.
    let precision = match data.first().map(|b| b % 4) {
        Some(1) => Precision::Microseconds,
        Some(2) => Precision::Milliseconds,
        Some(3) => Precision::Seconds,
        _ => Precision::Nanoseconds,
    };
    match line_protocol::parse(data, check::DATABASE, precision, check::NOW_NS) {
        Ok(d) => {
            check::decoded(&d);
            // One row per line at most, and one batch per measurement.
            let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
            assert!(d.num_rows() <= lines);
            for (i, b) in d.batches.iter().enumerate() {
                assert!(
                    d.batches[..i].iter().all(|o| o.table() != b.table()),
                    "two batches for {:?}",
                    b.table()
                );
            }
        }
        Err(e) => check::errors(&e),
    }
});
