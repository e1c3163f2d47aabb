//! The payload of a [`EntryKind::Write`](super::format::EntryKind) entry:
//! every table's rows of one write request, so a request is in the log
//! whole or not at all.
//!
//! ```text
//! payload = count u32 | table*
//! table   = db_len u16 | measurement_len u16 | ipc_len u32 | db | measurement
//!           | zero pad to 8 | Arrow IPC stream (ipc_len bytes) | zero pad to 8
//! ```
//!
//! Offsets are relative to the payload start, which is 8-byte aligned in the
//! segment, so each IPC stream is aligned and can be decoded from a memory map.

use std::io::Cursor;

use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::ArrowError;

use super::format::align;
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
    #[error("write payload table holds {0} record batches, expected 1")]
    BatchCount(usize),
    #[error("write payload holds {0} tables, expected 1")]
    TableCount(usize),
}

/// Appends the payload of `batches` (one request) to `out`.
pub fn encode_writes(out: &mut Vec<u8>, batches: &[WriteBatch]) -> Result<(), ArrowError> {
    let start = out.len();
    out.extend_from_slice(&(batches.len() as u32).to_le_bytes());
    for batch in batches {
        let db = batch.table().database().as_bytes();
        let m = batch.table().measurement().as_bytes();
        out.extend_from_slice(&(db.len() as u16).to_le_bytes());
        out.extend_from_slice(&(m.len() as u16).to_le_bytes());
        let len_at = out.len();
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(db);
        out.extend_from_slice(m);
        out.resize(start + align(out.len() - start), 0);
        let ipc_start = out.len();
        let mut w = StreamWriter::try_new(&mut *out, batch.batch().schema_ref())?;
        w.write(batch.batch())?;
        w.finish()?;
        drop(w);
        let ipc_len = (out.len() - ipc_start) as u32;
        out[len_at..len_at + 4].copy_from_slice(&ipc_len.to_le_bytes());
        out.resize(start + align(out.len() - start), 0);
    }
    Ok(())
}

/// Appends the payload of a single-table request.
pub fn encode_write(out: &mut Vec<u8>, batch: &WriteBatch) -> Result<(), ArrowError> {
    encode_writes(out, std::slice::from_ref(batch))
}

fn take<'a>(p: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], PayloadError> {
    let s = p.get(*at..*at + n).ok_or(PayloadError::Short)?;
    *at += n;
    Ok(s)
}

/// Decodes a payload written by [`encode_writes`].
pub fn decode_writes(payload: &[u8]) -> Result<Vec<WriteBatch>, PayloadError> {
    let mut at = 0;
    let count = u32::from_le_bytes(take(payload, &mut at, 4)?.try_into().expect("4"));
    let mut out = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        let h = take(payload, &mut at, 8)?;
        let db_len = u16::from_le_bytes([h[0], h[1]]) as usize;
        let m_len = u16::from_le_bytes([h[2], h[3]]) as usize;
        let ipc_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let db =
            std::str::from_utf8(take(payload, &mut at, db_len)?).map_err(|_| PayloadError::Utf8)?;
        let m =
            std::str::from_utf8(take(payload, &mut at, m_len)?).map_err(|_| PayloadError::Utf8)?;
        let table = TableKey::new(db, m)?;
        at = align(at);
        let ipc = take(payload, &mut at, ipc_len)?;
        at = align(at);
        let reader = StreamReader::try_new(Cursor::new(ipc), None)?;
        let mut batches = reader.collect::<Result<Vec<_>, _>>()?;
        if batches.len() != 1 {
            return Err(PayloadError::BatchCount(batches.len()));
        }
        out.push(WriteBatch::try_new(
            table,
            batches.pop().expect("one batch"),
        )?);
    }
    Ok(out)
}

/// Decodes a single-table payload.
pub fn decode_write(payload: &[u8]) -> Result<WriteBatch, PayloadError> {
    let mut all = decode_writes(payload)?;
    if all.len() != 1 {
        return Err(PayloadError::TableCount(all.len()));
    }
    Ok(all.pop().expect("one table"))
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
        assert_eq!(out.len() % 8, 0);
        assert_eq!(decode_write(&out).unwrap(), b);
        assert!(decode_write(&out[..3]).is_err());
        assert!(decode_write(&out[..out.len() / 2]).is_err());
    }

    #[test]
    fn several_tables_in_one_payload() {
        let a = cpu_batch(&[row(1, "a", 0.5)]);
        let (_, rows) = cpu_batch(&[row(2, "b", 1.5), row(3, "c", 2.5)]).into_parts();
        let b = WriteBatch::try_new(TableKey::new("other-db", "mem").unwrap(), rows).unwrap();
        let mut out = Vec::new();
        encode_writes(&mut out, &[a.clone(), b.clone()]).unwrap();
        assert_eq!(decode_writes(&out).unwrap(), vec![a, b]);
        assert!(matches!(
            decode_write(&out),
            Err(PayloadError::TableCount(2))
        ));
    }
}
