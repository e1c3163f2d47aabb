//! Invariants shared by the decoder targets.

use tidemark_ingest::builder::Decoded;
use tidemark_ingest::IngestErrors;

pub const DATABASE: &str = "fuzz";
pub const NOW_NS: i64 = 1_700_000_000_000_000_000;

/// What every successful decode must hold: each batch has at least one
/// row, every column is as long as the batch, and `time` exists and has
/// no nulls.
pub fn decoded(d: &Decoded) {
    let mut total = 0;
    for wb in &d.batches {
        let b = wb.batch();
        let rows = b.num_rows();
        assert!(rows >= 1, "empty batch for {:?}", wb.table());
        assert_eq!(rows, wb.num_rows());
        assert_eq!(wb.table().database(), DATABASE);
        assert_eq!(b.num_columns(), b.schema().fields().len());
        for (field, col) in b.schema().fields().iter().zip(b.columns()) {
            assert_eq!(
                col.len(),
                rows,
                "column {:?} has {} values in a batch of {rows} rows",
                field.name(),
                col.len()
            );
        }
        let time = b.column_by_name("time").expect("batch without a time column");
        assert_eq!(time.null_count(), 0, "time column has nulls");
        total += rows;
    }
    assert_eq!(d.num_rows(), total);
}

/// What every failed decode must hold: at least one error, at most
/// `IngestErrors::MAX` listed, and a non-empty message.
pub fn errors(e: &IngestErrors) {
    assert!(!e.errors.is_empty(), "Err without any error");
    assert!(e.errors.len() <= IngestErrors::MAX);
    let msg = e.to_string();
    assert!(!msg.is_empty(), "empty error message: {e:?}");
}
