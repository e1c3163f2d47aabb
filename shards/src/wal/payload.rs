//! The payload of a [`EntryKind::Write`](super::format::EntryKind) entry:
//!
//! ```text
//! db_len u16 | measurement_len u16 | db | measurement | zero pad to 8
//! | Arrow IPC stream (schema message, one record batch, end-of-stream)
//! ```
//!
//! The IPC stream starts 8-byte aligned within the payload (and so within the
//! segment), which lets a reader decode it from a memory map.

use std::io::Cursor;

use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::ArrowError;

use crate::batch::WriteBatch;
use crate::schema::{SchemaError, TableKey};

/// Why a write payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("write payload too short")]
    Short,
    #[error("write payload names are not UTF-8")]
    Utf8,
    #[error("write payload: {0}")]
    Schema(#[from] SchemaError),
    #[error("write payload Arrow IPC: {0}")]
    Arrow(#[from] ArrowError),
    #[error("write payload holds {0} record batches, expected 1")]
    BatchCount(usize),
}

/// Appends the payload of `batch` to `out`.
pub fn encode_write(out: &mut Vec<u8>, batch: &WriteBatch) -> Result<(), ArrowError> {
    let start = out.len();
    let db = batch.table().database().as_bytes();
    let m = batch.table().measurement().as_bytes();
    out.extend_from_slice(&(db.len() as u16).to_le_bytes());
    out.extend_from_slice(&(m.len() as u16).to_le_bytes());
    out.extend_from_slice(db);
    out.extend_from_slice(m);
    let header = out.len() - start;
    out.resize(start + super::format::align(header), 0);
    let mut w = StreamWriter::try_new(&mut *out, batch.batch().schema_ref())?;
    w.write(batch.batch())?;
    w.finish()?;
    Ok(())
}

/// Decodes a payload written by [`encode_write`].
pub fn decode_write(payload: &[u8]) -> Result<WriteBatch, PayloadError> {
    if payload.len() < 4 {
        return Err(PayloadError::Short);
    }
    let db_len = u16::from_le_bytes([payload[0], payload[1]]) as usize;
    let m_len = u16::from_le_bytes([payload[2], payload[3]]) as usize;
    let names_end = 4 + db_len + m_len;
    if payload.len() < names_end {
        return Err(PayloadError::Short);
    }
    let db = std::str::from_utf8(&payload[4..4 + db_len]).map_err(|_| PayloadError::Utf8)?;
    let m = std::str::from_utf8(&payload[4 + db_len..names_end]).map_err(|_| PayloadError::Utf8)?;
    let table = TableKey::new(db, m)?;
    let ipc = payload
        .get(super::format::align(names_end)..)
        .ok_or(PayloadError::Short)?;
    let reader = StreamReader::try_new(Cursor::new(ipc), None)?;
    let mut batches = reader.collect::<Result<Vec<_>, _>>()?;
    if batches.len() != 1 {
        return Err(PayloadError::BatchCount(batches.len()));
    }
    let batch = batches.pop().expect("one batch");
    Ok(WriteBatch::try_new(table, batch)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::test_util::*;

    #[test]
    fn roundtrip() {
        let b = cpu_batch(&[row(1, "a", 0.5), row(3_600_000_000_000, "b", 2.0)]);
        let mut out = Vec::new();
        encode_write(&mut out, &b).unwrap();
        assert_eq!(decode_write(&out).unwrap(), b);
        assert!(decode_write(&out[..3]).is_err());
        assert!(decode_write(&out[..out.len() / 2]).is_err());
    }
}
