//! The payload of a write entry: every table's rows of one write request, so
//! a request is in the log whole or not at all. These bytes are what
//! replication sends as they are.
//!
//! Two encodings, told apart by the entry's kind:
//!
//! * [`EntryKind::Write`] (kind 2, what this code writes): each column's
//!   Arrow buffers as they are, after a few bytes that say what they are.
//!   Encoding is a copy of the buffers; an Arrow IPC stream per table (kind 1)
//!   also built a schema message and one dictionary message per tag column,
//!   each a flatbuffer, which was 13% of a node's CPU under line protocol of
//!   four tables per request (1,000 rows, TSBS devops).
//! * [`EntryKind::WriteIpc`] (kind 1, written by earlier versions): an Arrow
//!   IPC stream per table. Still read, so a WAL written before is replayed.
//!
//! ```text
//! payload = count u32 | table*
//! table   = db_len u16 | measurement_len u16 | rows u32 | columns u32
//!           | db | measurement | pad | column*
//! column  = name_len u16 | kind u8 | flags u8 | values u32 | name | pad
//!           | validity (if flags & NULLS) | data
//! data    = time, float, integer, unsigned: rows x 8 bytes
//!         | boolean: bits(rows)
//!         | string: strings(rows)
//!         | tag: keys (rows x i32) | pad | validity of the values (if flags
//!           & VALUE_NULLS) | strings(values)
//! validity, bits(n) = ceil(n / 8) bytes, bit i of byte i / 8 for row i | pad
//! strings(n) = offsets ((n + 1) x i32, the first 0) | pad | bytes | pad
//! ```
//!
//! Integers and values are little-endian; `pad` is zeros to the next
//! multiple of 8 from the payload's start (which is 8-byte aligned in a
//! segment), so every buffer is aligned. Kinds: 0 time, 1 tag, 2 float,
//! 3 integer, 4 unsigned, 5 string, 6 boolean. Kind 1's layout:
//!
//! ```text
//! payload = count u32 | table*
//! table   = db_len u16 | measurement_len u16 | ipc_len u32 | db | measurement
//!           | pad | Arrow IPC stream (ipc_len bytes) | pad
//! ```

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType, UInt64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int64Array, PrimitiveArray,
    RecordBatch, StringArray, TimestampNanosecondArray, UInt64Array,
};
use arrow_buffer::{
    ArrowNativeType, BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer,
};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, Schema};

use super::format::{align, EntryKind};
use crate::batch::WriteBatch;
use crate::schema::{ColumnKind, FieldType, SchemaError, TableKey, TIME_ZONE};

#[cfg(not(target_endian = "little"))]
compile_error!("the WAL's write payload stores Arrow buffers as they are: little-endian only");

/// Why a write payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("write payload too short")]
    Short,
    #[error("write payload names are not UTF-8")]
    Utf8,
    #[error("write payload: {0}")]
    Schema(#[from] SchemaError),
    #[error("write payload Arrow data: {0}")]
    Arrow(#[from] ArrowError),
    #[error("write payload table holds {0} record batches, expected 1")]
    BatchCount(usize),
    #[error("write payload holds {0} tables, expected 1")]
    TableCount(usize),
    #[error("write payload has {0} bytes after its tables")]
    Trailing(usize),
    #[error("write payload column {column:?}: {reason}")]
    Column { column: String, reason: String },
}

/// Column flag: a validity bitmap follows.
const NULLS: u8 = 1;
/// Column flag (tags): the dictionary's values have a validity bitmap.
const VALUE_NULLS: u8 = 2;

fn kind_code(kind: ColumnKind) -> u8 {
    match kind {
        ColumnKind::Time => 0,
        ColumnKind::Tag => 1,
        ColumnKind::Field(FieldType::Float) => 2,
        ColumnKind::Field(FieldType::Integer) => 3,
        ColumnKind::Field(FieldType::Unsigned) => 4,
        ColumnKind::Field(FieldType::String) => 5,
        ColumnKind::Field(FieldType::Boolean) => 6,
    }
}

fn kind_of_code(code: u8) -> Option<ColumnKind> {
    Some(match code {
        0 => ColumnKind::Time,
        1 => ColumnKind::Tag,
        2 => ColumnKind::Field(FieldType::Float),
        3 => ColumnKind::Field(FieldType::Integer),
        4 => ColumnKind::Field(FieldType::Unsigned),
        5 => ColumnKind::Field(FieldType::String),
        6 => ColumnKind::Field(FieldType::Boolean),
        _ => return None,
    })
}

/// Appends zeros to `out` up to the next multiple of 8 from `start`.
fn pad(out: &mut Vec<u8>, start: usize) {
    out.resize(start + align(out.len() - start), 0);
}

/// Appends `bits` packed from bit 0, the unused bits of the last byte zero.
fn put_bits(out: &mut Vec<u8>, start: usize, bits: &BooleanBuffer) {
    let packed = bits.sliced();
    let n = bits.len().div_ceil(8);
    out.extend_from_slice(&packed.as_slice()[..n]);
    if !bits.len().is_multiple_of(8) {
        let last = out.len() - 1;
        out[last] &= (1u8 << (bits.len() % 8)) - 1;
    }
    pad(out, start);
}

/// Appends the validity bitmap of a column that has nulls.
fn put_validity(out: &mut Vec<u8>, start: usize, nulls: Option<&NullBuffer>) {
    put_bits(out, start, nulls.expect("a column with nulls").inner());
}

fn put_scalars<T: ArrowNativeType>(out: &mut Vec<u8>, start: usize, values: &ScalarBuffer<T>) {
    out.extend_from_slice(values.inner().as_slice());
    pad(out, start);
}

/// Appends `a`'s offsets (rebased to start at 0) and bytes.
fn put_strings(out: &mut Vec<u8>, start: usize, a: &StringArray) {
    let offsets = a.offsets();
    let first = offsets[0];
    let last = offsets[offsets.len() - 1];
    if first == 0 {
        out.extend_from_slice(offsets.inner().inner().as_slice());
    } else {
        for &o in offsets.iter() {
            out.extend_from_slice(&(o - first).to_le_bytes());
        }
    }
    pad(out, start);
    out.extend_from_slice(&a.values().as_slice()[first as usize..last as usize]);
    pad(out, start);
}

/// Appends one column, of `kind` (checked by [`WriteBatch::try_new`]).
fn put_column(out: &mut Vec<u8>, start: usize, name: &str, kind: ColumnKind, a: &dyn Array) {
    let dict = (kind == ColumnKind::Tag).then(|| a.as_dictionary::<Int32Type>());
    let dict_values = dict.map(|d| d.values().as_string::<i32>());
    let mut flags = 0;
    if a.null_count() > 0 {
        flags |= NULLS;
    }
    if dict_values.is_some_and(|v| v.null_count() > 0) {
        flags |= VALUE_NULLS;
    }
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.push(kind_code(kind));
    out.push(flags);
    out.extend_from_slice(&(dict_values.map_or(0, |v| v.len()) as u32).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    pad(out, start);
    if flags & NULLS != 0 {
        put_validity(out, start, a.nulls());
    }
    match kind {
        ColumnKind::Time => put_scalars(
            out,
            start,
            a.as_primitive::<TimestampNanosecondType>().values(),
        ),
        ColumnKind::Field(FieldType::Float) => {
            put_scalars(out, start, a.as_primitive::<Float64Type>().values())
        }
        ColumnKind::Field(FieldType::Integer) => {
            put_scalars(out, start, a.as_primitive::<Int64Type>().values())
        }
        ColumnKind::Field(FieldType::Unsigned) => {
            put_scalars(out, start, a.as_primitive::<UInt64Type>().values())
        }
        ColumnKind::Field(FieldType::Boolean) => put_bits(out, start, a.as_boolean().values()),
        ColumnKind::Field(FieldType::String) => put_strings(out, start, a.as_string::<i32>()),
        ColumnKind::Tag => {
            let (dict, values) = (dict.expect("a tag"), dict_values.expect("a tag"));
            put_scalars(out, start, dict.keys().values());
            if flags & VALUE_NULLS != 0 {
                put_validity(out, start, values.nulls());
            }
            put_strings(out, start, values);
        }
    }
}

/// Appends the payload of `batches` (one request) to `out`.
pub fn encode_writes(out: &mut Vec<u8>, batches: &[WriteBatch]) {
    let start = out.len();
    out.extend_from_slice(&(batches.len() as u32).to_le_bytes());
    for batch in batches {
        let db = batch.table().database().as_bytes();
        let m = batch.table().measurement().as_bytes();
        let rows = batch.batch();
        out.extend_from_slice(&(db.len() as u16).to_le_bytes());
        out.extend_from_slice(&(m.len() as u16).to_le_bytes());
        out.extend_from_slice(&(rows.num_rows() as u32).to_le_bytes());
        out.extend_from_slice(&(rows.num_columns() as u32).to_le_bytes());
        out.extend_from_slice(db);
        out.extend_from_slice(m);
        pad(out, start);
        for (field, column) in rows.schema_ref().fields().iter().zip(rows.columns()) {
            let kind = ColumnKind::from_arrow(field.name(), field.data_type())
                .expect("a WriteBatch's columns are of supported kinds");
            put_column(out, start, field.name(), kind, column);
        }
    }
}

/// Appends the payload of a single-table request.
pub fn encode_write(out: &mut Vec<u8>, batch: &WriteBatch) {
    encode_writes(out, std::slice::from_ref(batch))
}

/// Appends the payload of `batches` in the Arrow IPC encoding of
/// [`EntryKind::WriteIpc`], which earlier versions wrote: for tests and
/// benches that check such entries are still read.
pub fn encode_writes_ipc(out: &mut Vec<u8>, batches: &[WriteBatch]) -> Result<(), ArrowError> {
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
        pad(out, start);
        let ipc_start = out.len();
        let mut w = StreamWriter::try_new(&mut *out, batch.batch().schema_ref())?;
        w.write(batch.batch())?;
        w.finish()?;
        drop(w);
        let ipc_len = (out.len() - ipc_start) as u32;
        out[len_at..len_at + 4].copy_from_slice(&ipc_len.to_le_bytes());
        pad(out, start);
    }
    Ok(())
}

/// Reads a payload from its start, each section aligned as it was written.
struct Reader<'a> {
    p: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        let end = self.at.checked_add(n).ok_or(PayloadError::Short)?;
        let s = self.p.get(self.at..end).ok_or(PayloadError::Short)?;
        self.at = end;
        Ok(s)
    }

    /// `n` bytes, then the padding after them.
    fn take_padded(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        let s = self.take(n)?;
        self.at = align(self.at);
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, PayloadError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, PayloadError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn str(&mut self, n: usize) -> Result<&'a str, PayloadError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| PayloadError::Utf8)
    }

    /// `n` values of `T` (copied into an aligned buffer).
    fn scalars<T: ArrowNativeType>(&mut self, n: usize) -> Result<ScalarBuffer<T>, PayloadError> {
        let bytes = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or(PayloadError::Short)?;
        let b = Buffer::from_slice_ref(self.take_padded(bytes)?);
        Ok(ScalarBuffer::new(b, 0, n))
    }

    fn bits(&mut self, n: usize) -> Result<BooleanBuffer, PayloadError> {
        let b = Buffer::from_slice_ref(self.take_padded(n.div_ceil(8))?);
        Ok(BooleanBuffer::new(b, 0, n))
    }

    fn validity(&mut self, present: bool, n: usize) -> Result<Option<NullBuffer>, PayloadError> {
        Ok(if present {
            Some(NullBuffer::new(self.bits(n)?))
        } else {
            None
        })
    }

    /// `n` strings (validated: offsets in order and in range, UTF-8).
    fn strings(
        &mut self,
        n: usize,
        nulls: Option<NullBuffer>,
        column: &str,
    ) -> Result<StringArray, PayloadError> {
        let offsets = self.scalars::<i32>(n.checked_add(1).ok_or(PayloadError::Short)?)?;
        if offsets[0] != 0 || offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(PayloadError::Column {
                column: column.to_string(),
                reason: "string offsets out of order".to_string(),
            });
        }
        let bytes = self.take_padded(offsets[n] as usize)?;
        StringArray::try_new(
            OffsetBuffer::new(offsets),
            Buffer::from_slice_ref(bytes),
            nulls,
        )
        .map_err(|e| PayloadError::Column {
            column: column.to_string(),
            reason: e.to_string(),
        })
    }

    /// One column of `rows` values.
    fn column(&mut self, rows: usize) -> Result<(String, ColumnKind, ArrayRef), PayloadError> {
        let name_len = self.u16()? as usize;
        let code = self.take(1)?[0];
        let flags = self.take(1)?[0];
        let values = self.u32()? as usize;
        let name = self.str(name_len)?.to_string();
        self.at = align(self.at);
        let bad = |reason: String| PayloadError::Column {
            column: name.clone(),
            reason,
        };
        let kind = kind_of_code(code).ok_or_else(|| bad(format!("unknown column kind {code}")))?;
        let nulls = self.validity(flags & NULLS != 0, rows)?;
        let array: ArrayRef = match kind {
            ColumnKind::Time => Arc::new(
                TimestampNanosecondArray::try_new(self.scalars(rows)?, nulls)?
                    .with_timezone(TIME_ZONE),
            ),
            ColumnKind::Field(FieldType::Float) => {
                Arc::new(Float64Array::try_new(self.scalars(rows)?, nulls)?)
            }
            ColumnKind::Field(FieldType::Integer) => {
                Arc::new(Int64Array::try_new(self.scalars(rows)?, nulls)?)
            }
            ColumnKind::Field(FieldType::Unsigned) => {
                Arc::new(UInt64Array::try_new(self.scalars(rows)?, nulls)?)
            }
            ColumnKind::Field(FieldType::Boolean) => {
                // Both `rows` long, as `new` requires.
                Arc::new(BooleanArray::new(self.bits(rows)?, nulls))
            }
            ColumnKind::Field(FieldType::String) => Arc::new(self.strings(rows, nulls, &name)?),
            ColumnKind::Tag => {
                let keys = PrimitiveArray::<Int32Type>::try_new(self.scalars(rows)?, nulls)?;
                let value_nulls = self.validity(flags & VALUE_NULLS != 0, values)?;
                let values = self.strings(values, value_nulls, &name)?;
                Arc::new(
                    DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values))
                        .map_err(|e| bad(e.to_string()))?,
                )
            }
        };
        Ok((name, kind, array))
    }

    /// A table's database and measurement names, and the padding after.
    fn table_key(&mut self, db_len: usize, m_len: usize) -> Result<TableKey, PayloadError> {
        let db = self.str(db_len)?;
        let m = self.str(m_len)?;
        let table = TableKey::new(db, m)?;
        self.at = align(self.at);
        Ok(table)
    }

    /// One table of the [`EntryKind::Write`] encoding.
    fn table(&mut self) -> Result<WriteBatch, PayloadError> {
        let db_len = self.u16()? as usize;
        let m_len = self.u16()? as usize;
        let rows = self.u32()? as usize;
        let columns = self.u32()? as usize;
        let table = self.table_key(db_len, m_len)?;
        let mut fields = Vec::with_capacity(columns.min(4096));
        let mut arrays = Vec::with_capacity(columns.min(4096));
        for _ in 0..columns {
            let (name, kind, array) = self.column(rows)?;
            fields.push(kind.field(&name));
            arrays.push(array);
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
        Ok(WriteBatch::try_new(table, batch)?)
    }

    /// One table of the [`EntryKind::WriteIpc`] encoding.
    fn table_ipc(&mut self) -> Result<WriteBatch, PayloadError> {
        let db_len = self.u16()? as usize;
        let m_len = self.u16()? as usize;
        let ipc_len = self.u32()? as usize;
        let table = self.table_key(db_len, m_len)?;
        let ipc = self.take_padded(ipc_len)?;
        let reader = StreamReader::try_new(Cursor::new(ipc), None)?;
        let mut batches = reader.collect::<Result<Vec<_>, _>>()?;
        if batches.len() != 1 {
            return Err(PayloadError::BatchCount(batches.len()));
        }
        Ok(WriteBatch::try_new(
            table,
            batches.pop().expect("one batch"),
        )?)
    }
}

/// Decodes the payload of a write entry of `kind`.
pub fn decode_writes(kind: EntryKind, payload: &[u8]) -> Result<Vec<WriteBatch>, PayloadError> {
    let mut r = Reader { p: payload, at: 0 };
    let count = r.u32()?;
    let mut out = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        out.push(match kind {
            EntryKind::Write => r.table()?,
            EntryKind::WriteIpc => r.table_ipc()?,
        });
    }
    // The last table's padding is there, and nothing after it.
    match r.at.cmp(&payload.len()) {
        std::cmp::Ordering::Greater => return Err(PayloadError::Short),
        std::cmp::Ordering::Less => return Err(PayloadError::Trailing(payload.len() - r.at)),
        std::cmp::Ordering::Equal => {}
    }
    Ok(out)
}

/// Decodes the payload of a single-table [`EntryKind::Write`] entry.
pub fn decode_write(payload: &[u8]) -> Result<WriteBatch, PayloadError> {
    let mut all = decode_writes(EntryKind::Write, payload)?;
    if all.len() != 1 {
        return Err(PayloadError::TableCount(all.len()));
    }
    Ok(all.pop().expect("one table"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::test_util::*;
    use arrow_array::Int32Array;

    fn rows() -> Vec<Row> {
        (0..21)
            .map(|i| Row {
                time: i * 1_000,
                host: format!("host-{}", i % 5),
                region: (i % 3 != 0).then(|| format!("region-{}", i % 2)),
                usage: (i % 4 != 1).then_some(i as f64 / 3.0),
                count: (i % 5 != 2).then_some(-i * 7),
                bytes: (i % 6 != 3).then_some((i as u64) << 40),
                note: (i % 7 != 4).then(|| "é".repeat(i as usize % 4)),
                up: (i % 2 == 0).then_some(i % 3 == 0),
            })
            .collect()
    }

    #[test]
    fn roundtrip() {
        let b = cpu_batch(&[row(1, "a", 0.5), row(3_600_000_000_000, "b", 2.0)]);
        let mut out = Vec::new();
        encode_write(&mut out, &b);
        assert_eq!(out.len() % 8, 0);
        assert_eq!(decode_write(&out).unwrap(), b);
        assert!(decode_write(&out[..3]).is_err());
        assert!(decode_write(&out[..out.len() / 2]).is_err());
    }

    /// Every kind, with nulls, and arrays that are slices of larger ones
    /// (offsets in bits that are not a multiple of 8, string offsets that do
    /// not start at 0, a dictionary whose values hold a null).
    #[test]
    fn every_kind_nulls_and_slices_roundtrip() {
        let b = cpu_batch(&rows());
        let (table, rows) = b.clone().into_parts();
        for (offset, len) in [(0, 21), (3, 11), (5, 1), (1, 20), (8, 13)] {
            let sliced = WriteBatch::try_new(table.clone(), rows.slice(offset, len)).unwrap();
            let mut out = Vec::new();
            encode_write(&mut out, &sliced);
            assert_eq!(out.len() % 8, 0);
            assert_eq!(decode_write(&out).unwrap(), sliced, "slice {offset}+{len}");
        }
        // A dictionary whose values hold a null (a row pointing at it is
        // null, as arrow reads it).
        let keys = Int32Array::from(vec![Some(0), Some(1), None, Some(1)]);
        let values = StringArray::from(vec![Some("a"), None]);
        let tag = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values)).unwrap();
        let time = TimestampNanosecondArray::from(vec![1, 2, 3, 4]).with_timezone("UTC");
        let schema = Schema::new(vec![
            ColumnKind::Time.field("time"),
            ColumnKind::Tag.field("t"),
        ]);
        let batch =
            RecordBatch::try_new(Arc::new(schema), vec![Arc::new(time), Arc::new(tag)]).unwrap();
        let wb = WriteBatch::try_new(table, batch).unwrap();
        let mut out = Vec::new();
        encode_write(&mut out, &wb);
        assert_eq!(decode_write(&out).unwrap(), wb);
    }

    #[test]
    fn several_tables_in_one_payload() {
        let a = cpu_batch(&[row(1, "a", 0.5)]);
        let (_, rows) = cpu_batch(&[row(2, "b", 1.5), row(3, "c", 2.5)]).into_parts();
        let b = WriteBatch::try_new(TableKey::new("other-db", "mem").unwrap(), rows).unwrap();
        let mut out = Vec::new();
        encode_writes(&mut out, &[a.clone(), b.clone()]);
        assert_eq!(decode_writes(EntryKind::Write, &out).unwrap(), vec![a, b]);
        assert!(matches!(
            decode_write(&out),
            Err(PayloadError::TableCount(2))
        ));
    }

    /// Entries written by earlier versions (Arrow IPC) are still read.
    #[test]
    fn the_arrow_ipc_encoding_is_still_read() {
        let a = cpu_batch(&rows());
        let (_, rows) = cpu_batch(&[row(2, "b", 1.5)]).into_parts();
        let b = WriteBatch::try_new(TableKey::new("other-db", "mem").unwrap(), rows).unwrap();
        let mut out = Vec::new();
        encode_writes_ipc(&mut out, &[a.clone(), b.clone()]).unwrap();
        assert_eq!(out.len() % 8, 0);
        assert_eq!(
            decode_writes(EntryKind::WriteIpc, &out).unwrap(),
            vec![a, b]
        );
        assert!(decode_writes(EntryKind::Write, &out).is_err());
    }

    /// Cut anywhere, or with any byte changed, a payload decodes to an error
    /// or to batches that pass [`WriteBatch::try_new`]; never a panic.
    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        let b = cpu_batch(&rows()[..9]);
        let mut out = Vec::new();
        encode_write(&mut out, &b);
        for cut in 0..out.len() {
            assert!(decode_write(&out[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..out.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut d = out.clone();
                d[i] ^= x;
                let _ = decode_writes(EntryKind::Write, &d);
            }
        }
        // The checks that catch what arrow would panic on.
        let name_at = |name: &str| {
            out.windows(name.len())
                .position(|w| w == name.as_bytes())
                .unwrap()
        };
        let mut d = out.clone();
        d[name_at("usage") - 6] = 9;
        let err = decode_write(&d).unwrap_err().to_string();
        assert_eq!(err, "write payload column \"usage\": unknown column kind 9");
        // The note column's offsets: swap two so they go backwards.
        let mut d = out.clone();
        let offsets = align(name_at("note") + 4);
        let offsets = offsets + align(9usize.div_ceil(8)); // its validity
        d[offsets + 4..offsets + 8].copy_from_slice(&100i32.to_le_bytes());
        let err = decode_write(&d).unwrap_err().to_string();
        assert_eq!(
            err,
            "write payload column \"note\": string offsets out of order"
        );
    }
}
