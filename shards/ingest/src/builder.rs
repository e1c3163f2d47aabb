//! Building the Arrow columns of a request row by row, with the checks every
//! decoder needs: names, types, duplicates, and one type per column within
//! the request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, StringBuilder};
use arrow_array::types::{Float64Type, Int32Type, Int64Type, UInt64Type};
use arrow_array::{ArrayRef, DictionaryArray, Int32Array, RecordBatch, TimestampNanosecondArray};
use arrow_array::{ArrowPrimitiveType, PrimitiveArray};
use arrow_buffer::NullBufferBuilder;
use arrow_schema::Schema;
use tidemark_shards::schema::{validate_column_name, TIME_COLUMN, TIME_ZONE};
use tidemark_shards::{ColumnKind, FieldType, TableKey, WriteBatch};

use crate::error::IngestError;
use tidemark_shards::tags::TagDict;

/// Maps keyed by column and measurement names, probed once per value of a
/// row when the row's columns differ from the previous row's: a fast
/// non-cryptographic hash (names come from the request, but a map is
/// per request and collisions only cost time).
type NameMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// One value of a row: its kind, and the part that kind uses (`text` for
/// tags and strings, `bits` for numbers and booleans).
///
/// A struct, not an enum of payloads: an enum value made in one of several
/// branches was assembled in a stack slot (a one-byte tag, then words) and
/// then copied into the row's list with 16-byte loads that the processor
/// cannot forward from those narrower stores, a stall on every value of
/// every line (22% of the line-protocol parser's samples at 5cfe573). A
/// struct's fields are written where they go.
#[derive(Debug, Clone, PartialEq)]
pub struct Value<'a> {
    kind: ColumnKind,
    text: Cow<'a, str>,
    bits: u64,
}

impl<'a> Value<'a> {
    #[inline]
    fn of(kind: ColumnKind, text: Cow<'a, str>, bits: u64) -> Value<'a> {
        Value { kind, text, bits }
    }
    #[inline]
    pub fn tag(s: Cow<'a, str>) -> Value<'a> {
        Value::of(ColumnKind::Tag, s, 0)
    }
    #[inline]
    pub fn string(s: Cow<'a, str>) -> Value<'a> {
        Value::of(ColumnKind::Field(FieldType::String), s, 0)
    }
    #[inline]
    pub fn float(x: f64) -> Value<'a> {
        Value::of(
            ColumnKind::Field(FieldType::Float),
            Cow::Borrowed(""),
            x.to_bits(),
        )
    }
    #[inline]
    pub fn integer(x: i64) -> Value<'a> {
        Value::of(
            ColumnKind::Field(FieldType::Integer),
            Cow::Borrowed(""),
            x as u64,
        )
    }
    #[inline]
    pub fn unsigned(x: u64) -> Value<'a> {
        Value::of(ColumnKind::Field(FieldType::Unsigned), Cow::Borrowed(""), x)
    }
    #[inline]
    pub fn boolean(x: bool) -> Value<'a> {
        Value::of(
            ColumnKind::Field(FieldType::Boolean),
            Cow::Borrowed(""),
            u64::from(x),
        )
    }
    #[inline]
    pub fn kind(&self) -> ColumnKind {
        self.kind
    }
}

/// A tag column being built: a key per row (0 for a null) and the
/// dictionary of its values ([`TagDict`]).
#[derive(Default)]
struct TagBuilder {
    dict: TagDict,
    keys: Vec<i32>,
    null_at: Vec<usize>,
}

impl TagBuilder {
    #[inline]
    fn append(&mut self, s: &str) {
        let key = self
            .dict
            .key(s.as_bytes())
            .expect("a str is UTF-8, and one request holds far fewer than 2^31 values");
        self.keys.push(key);
    }

    fn append_nulls(&mut self, n: usize) {
        let at = self.keys.len();
        self.null_at.extend(at..at + n);
        self.keys.resize(at + n, 0);
    }

    fn finish(&mut self) -> ArrayRef {
        let validity = validity(self.keys.len(), &self.null_at).finish();
        let keys = Int32Array::new(std::mem::take(&mut self.keys).into(), validity);
        self.null_at.clear();
        let values = self.dict.values();
        self.dict.clear();
        Arc::new(
            DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values))
                .expect("every key is a value's index"),
        )
    }
}

/// A numeric column being built: a `Vec` and the rows that are null
/// (arrow's builders' appends do not inline: a call per value).
struct Values<T: ArrowPrimitiveType> {
    values: Vec<T::Native>,
    null_at: Vec<usize>,
}

impl<T: ArrowPrimitiveType> Default for Values<T> {
    fn default() -> Self {
        Values {
            values: Vec::new(),
            null_at: Vec::new(),
        }
    }
}

impl<T: ArrowPrimitiveType> Values<T> {
    fn append_nulls(&mut self, n: usize) {
        let at = self.values.len();
        self.null_at.extend(at..at + n);
        self.values.resize(at + n, T::Native::default());
    }

    fn finish(&mut self) -> PrimitiveArray<T> {
        let n = self.values.len();
        let nulls = validity(n, &self.null_at).finish();
        self.null_at.clear();
        PrimitiveArray::new(std::mem::take(&mut self.values).into(), nulls)
    }
}

enum Data {
    Tag(TagBuilder),
    Float(Values<Float64Type>),
    Integer(Values<Int64Type>),
    Unsigned(Values<UInt64Type>),
    String(StringBuilder),
    Boolean(BooleanBuilder),
}

impl Data {
    fn new(kind: ColumnKind) -> Data {
        match kind {
            ColumnKind::Tag | ColumnKind::Time => Data::Tag(TagBuilder::default()),
            ColumnKind::Field(FieldType::Float) => Data::Float(Values::default()),
            ColumnKind::Field(FieldType::Integer) => Data::Integer(Values::default()),
            ColumnKind::Field(FieldType::Unsigned) => Data::Unsigned(Values::default()),
            ColumnKind::Field(FieldType::String) => Data::String(StringBuilder::new()),
            ColumnKind::Field(FieldType::Boolean) => Data::Boolean(BooleanBuilder::new()),
        }
    }

    fn append_nulls(&mut self, n: usize) {
        match self {
            Data::Tag(b) => b.append_nulls(n),
            Data::Float(b) => b.append_nulls(n),
            Data::Integer(b) => b.append_nulls(n),
            Data::Unsigned(b) => b.append_nulls(n),
            Data::String(b) => b.append_nulls(n),
            Data::Boolean(b) => b.append_nulls(n),
        }
    }

    /// Appends `v`, whose kind was checked to be this column's.
    #[inline]
    fn append(&mut self, v: &Value<'_>) {
        match self {
            Data::Tag(b) => b.append(&v.text),
            Data::Float(b) => b.values.push(f64::from_bits(v.bits)),
            Data::Integer(b) => b.values.push(v.bits as i64),
            Data::Unsigned(b) => b.values.push(v.bits),
            Data::String(b) => b.append_value(&v.text),
            Data::Boolean(b) => b.append_value(v.bits != 0),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Data::Tag(b) => Arc::new(b.finish()),
            Data::Float(b) => Arc::new(b.finish()),
            Data::Integer(b) => Arc::new(b.finish()),
            Data::Unsigned(b) => Arc::new(b.finish()),
            Data::String(b) => Arc::new(b.finish()),
            Data::Boolean(b) => Arc::new(b.finish()),
        }
    }
}

struct Column {
    name: String,
    kind: ColumnKind,
    /// Where the column first appeared, for conflict messages.
    first_at: usize,
    data: Data,
    len: usize,
    /// The row stamp of the last row that set this column (duplicate check).
    stamp: u64,
}

/// The rows of one table of a request.
#[allow(missing_debug_implementations)]
pub struct TableBuilder {
    key: TableKey,
    /// "line" or "record", for messages.
    unit: &'static str,
    time: Vec<i64>,
    columns: Vec<Column>,
    index: NameMap<usize>,
    stamp: u64,
    scratch: Vec<usize>,
    /// The column of each value of the previous row: rows of a request
    /// usually name the same columns in the same order, so the name is
    /// compared with that column's before the map is probed.
    order: Vec<usize>,
}

const NEW: usize = usize::MAX;

/// The validity of `n` values of which those at `null_at` (ascending) are
/// null: no buffer when none is (built at the end, as nils are rare and
/// `NullBufferBuilder::append` does not inline).
pub(crate) fn validity(n: usize, null_at: &[usize]) -> NullBufferBuilder {
    let mut b = NullBufferBuilder::new(n);
    let mut done = 0;
    for &i in null_at {
        b.append_n_non_nulls(i - done);
        b.append_null();
        done = i + 1;
    }
    b.append_n_non_nulls(n - done);
    b
}

/// `a == b`, for the short names of columns and measurements compared once
/// per value: names of 8 to 16 bytes as two 8-byte words, shorter ones byte
/// by byte, without a call to `memcmp` (4.7% of a line-protocol node's CPU
/// went to those calls).
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    if a.len() > 16 {
        return a == b;
    }
    match (a.first_chunk::<8>(), a.last_chunk::<8>()) {
        (Some(a0), Some(a1)) => {
            let (Some(b0), Some(b1)) = (b.first_chunk::<8>(), b.last_chunk::<8>()) else {
                return false;
            };
            u64::from_ne_bytes(*a0) == u64::from_ne_bytes(*b0)
                && u64::from_ne_bytes(*a1) == u64::from_ne_bytes(*b1)
        }
        _ => {
            let mut same = true;
            for i in 0..a.len() {
                same &= a[i] == b[i];
            }
            same
        }
    }
}

impl TableBuilder {
    fn new(key: TableKey, unit: &'static str) -> TableBuilder {
        TableBuilder {
            key,
            unit,
            time: Vec::new(),
            columns: Vec::new(),
            index: NameMap::default(),
            stamp: 0,
            scratch: Vec::new(),
            order: Vec::new(),
        }
    }

    pub fn rows(&self) -> usize {
        self.time.len()
    }

    /// Validates one row and appends it; on error nothing is appended.
    /// `at` is the row's line or record number, for messages.
    pub fn push_row<S: AsRef<str>>(
        &mut self,
        at: usize,
        time: i64,
        values: &[(S, Value<'_>)],
    ) -> Result<(), IngestError> {
        self.stamp += 1;
        let stamp = self.stamp;
        let mut idxs = std::mem::take(&mut self.scratch);
        idxs.clear();
        let check = (|| {
            for (i, (name, v)) in values.iter().enumerate() {
                let name = name.as_ref();
                let kind = v.kind();
                let found = match self.order.get(i) {
                    Some(&c) if same_name(&self.columns[c].name, name) => Some(c),
                    _ => self.index.get(name).copied(),
                };
                match found {
                    Some(c) => {
                        let col = &mut self.columns[c];
                        if col.stamp == stamp {
                            return Err(IngestError::column(at, name, "appears twice"));
                        }
                        if col.kind != kind {
                            return Err(IngestError::column(
                                at,
                                name,
                                format!(
                                    "is {kind} here but {} in {} {}",
                                    col.kind, self.unit, col.first_at
                                ),
                            ));
                        }
                        col.stamp = stamp;
                        idxs.push(c);
                    }
                    None => {
                        if name == TIME_COLUMN {
                            return Err(IngestError::column(
                                at,
                                name,
                                "is reserved for the timestamp",
                            ));
                        }
                        validate_column_name(name)
                            .map_err(|e| IngestError::column(at, name, e.to_string()))?;
                        if values[..i].iter().any(|(n, _)| n.as_ref() == name) {
                            return Err(IngestError::column(at, name, "appears twice"));
                        }
                        idxs.push(NEW);
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = check {
            self.scratch = idxs;
            return Err(e);
        }
        let row = self.time.len();
        for ((name, v), c) in values.iter().zip(idxs.iter_mut()) {
            *c = if *c == NEW {
                let mut data = Data::new(v.kind());
                data.append_nulls(row);
                self.index
                    .insert(name.as_ref().to_string(), self.columns.len());
                self.columns.push(Column {
                    name: name.as_ref().to_string(),
                    kind: v.kind(),
                    first_at: at,
                    data,
                    len: row,
                    stamp,
                });
                self.columns.len() - 1
            } else {
                *c
            };
            let col = &mut self.columns[*c];
            if col.len < row {
                col.data.append_nulls(row - col.len);
            }
            col.data.append(v);
            col.len = row + 1;
        }
        self.time.push(time);
        // The resolved columns become the guess for the next row.
        self.scratch = std::mem::replace(&mut self.order, idxs);
        Ok(())
    }

    /// The line or record where `column` first appeared in this request.
    pub fn first_at(&self, column: &str) -> Option<usize> {
        self.index.get(column).map(|&c| self.columns[c].first_at)
    }

    fn finish(mut self) -> (WriteBatch, HashMap<String, usize>) {
        let rows = self.time.len();
        let mut fields = vec![ColumnKind::Time.field(TIME_COLUMN)];
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(
            TimestampNanosecondArray::from(std::mem::take(&mut self.time)).with_timezone(TIME_ZONE),
        )];
        let mut first_at = HashMap::new();
        for mut col in self.columns {
            if col.len < rows {
                col.data.append_nulls(rows - col.len);
            }
            fields.push(col.kind.field(&col.name));
            arrays.push(col.data.finish());
            first_at.insert(col.name, col.first_at);
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .expect("columns built to the same length");
        let wb =
            WriteBatch::try_new(self.key, batch).expect("names and types were checked row by row");
        (wb, first_at)
    }
}

/// Every table of one request, in order of first appearance.
#[allow(missing_debug_implementations)]
pub struct RequestBuilder {
    unit: &'static str,
    tables: Vec<TableBuilder>,
    index: NameMap<usize>,
    /// The table of the previous row, checked before the map.
    last: usize,
}

/// A request's batches, with where each column first appeared (for turning a
/// catalog conflict into a message that names a line).
#[derive(Debug)]
pub struct Decoded {
    pub batches: Vec<WriteBatch>,
    first_at: Vec<HashMap<String, usize>>,
}

impl Decoded {
    /// The line or record where `column` of `table` first appeared.
    pub fn first_at(&self, table: &TableKey, column: &str) -> Option<usize> {
        let i = self.batches.iter().position(|b| b.table() == table)?;
        self.first_at[i].get(column).copied()
    }

    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(WriteBatch::num_rows).sum()
    }

    /// Adds a batch built elsewhere (a columnar record) whose columns all
    /// come from record or line `at`.
    pub fn push(&mut self, batch: WriteBatch, at: usize) {
        let first_at = batch
            .batch()
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), at))
            .collect();
        self.batches.push(batch);
        self.first_at.push(first_at);
    }
}

impl RequestBuilder {
    /// A builder whose positions count `unit`s ("line" or "record").
    pub fn new(unit: &'static str) -> RequestBuilder {
        RequestBuilder {
            unit,
            tables: Vec::new(),
            index: NameMap::default(),
            last: 0,
        }
    }

    /// The builder of `database.measurement`, validating the names when the
    /// table first appears.
    pub fn table(
        &mut self,
        database: &str,
        measurement: &str,
        at: usize,
    ) -> Result<&mut TableBuilder, IngestError> {
        if self
            .tables
            .get(self.last)
            .is_some_and(|t| same_name(t.key.measurement(), measurement))
        {
            return Ok(&mut self.tables[self.last]);
        }
        if let Some(&i) = self.index.get(measurement) {
            self.last = i;
            return Ok(&mut self.tables[i]);
        }
        let key = TableKey::new(database, measurement)
            .map_err(|e| IngestError::new(at, e.to_string()))?;
        self.index
            .insert(measurement.to_string(), self.tables.len());
        self.tables.push(TableBuilder::new(key, self.unit));
        self.last = self.tables.len() - 1;
        Ok(self.tables.last_mut().expect("pushed"))
    }

    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| t.rows() == 0)
    }

    pub fn finish(self) -> Decoded {
        let mut batches = Vec::new();
        let mut first_at = Vec::new();
        for t in self.tables.into_iter().filter(|t| t.rows() > 0) {
            let (b, f) = t.finish();
            batches.push(b);
            first_at.push(f);
        }
        Decoded { batches, first_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_is_equality() {
        let names = [
            "",
            "a",
            "b",
            "os",
            "rack",
            "region",
            "hostnam",
            "hostname",
            "hostnamf",
            "datacenter",
            "usage_user",
            "usage_usex",
            "service_version",
            "service_versioo",
            "16_bytes_exactly",
            "16_bytes_exactlz",
            "service_environment",
            "service_environmenu",
        ];
        for a in names {
            for b in names {
                assert_eq!(same_name(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn rows_with_missing_and_new_columns() {
        let mut r = RequestBuilder::new("line");
        let t = r.table("db", "cpu", 1).unwrap();
        t.push_row(
            1,
            10,
            &[("host", Value::tag("a".into())), ("v", Value::float(1.0))],
        )
        .unwrap();
        t.push_row(2, 20, &[("v", Value::float(2.0)), ("n", Value::integer(3))])
            .unwrap();
        let err = t.push_row(3, 30, &[("v", Value::integer(1))]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"v\": is integer here but float in line 1"
        );
        let err = t
            .push_row(4, 30, &[("v", Value::float(1.0)), ("v", Value::float(2.0))])
            .unwrap_err();
        assert_eq!(err.to_string(), "\"v\": appears twice");
        let err = t
            .push_row(5, 30, &[("time", Value::float(1.0))])
            .unwrap_err();
        assert!(err.to_string().contains("reserved"));
        let d = r.finish();
        let b = d.batches[0].batch();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.num_columns(), 4);
        assert_eq!(b.column_by_name("host").unwrap().null_count(), 1);
        assert_eq!(b.column_by_name("n").unwrap().null_count(), 1);
        assert_eq!(d.first_at(d.batches[0].table(), "n"), Some(2));
    }

    /// Rows whose columns change order, shrink and grow: each value must
    /// land in its own column whatever the previous row's order was.
    #[test]
    fn column_order_changes_between_rows() {
        let mut r = RequestBuilder::new("line");
        let rows: Vec<Vec<(&str, f64)>> = vec![
            vec![("a", 1.0), ("b", 2.0), ("c", 3.0)],
            vec![("c", 13.0), ("a", 11.0), ("b", 12.0)],
            vec![("b", 22.0)],
            vec![("d", 34.0), ("b", 32.0), ("a", 31.0), ("c", 33.0)],
            vec![("a", 41.0), ("b", 42.0), ("c", 43.0)],
        ];
        for (i, row) in rows.iter().enumerate() {
            let values: Vec<(&str, Value<'_>)> =
                row.iter().map(|(n, x)| (*n, Value::float(*x))).collect();
            r.table("db", "m", i + 1)
                .unwrap()
                .push_row(i + 1, i as i64, &values)
                .unwrap();
        }
        let t = r.table("db", "m", 6).unwrap();
        let err = t
            .push_row(6, 5, &[("a", Value::float(1.0)), ("a", Value::float(1.0))])
            .unwrap_err();
        assert_eq!(err.to_string(), "\"a\": appears twice");
        let d = r.finish();
        let b = d.batches[0].batch();
        let column = |name: &str| -> Vec<Option<f64>> {
            let a = b.column_by_name(name).unwrap();
            let a = a
                .as_any()
                .downcast_ref::<arrow_array::Float64Array>()
                .unwrap();
            a.iter().collect()
        };
        assert_eq!(
            column("a"),
            [Some(1.0), Some(11.0), None, Some(31.0), Some(41.0)]
        );
        assert_eq!(
            column("b"),
            [Some(2.0), Some(12.0), Some(22.0), Some(32.0), Some(42.0)]
        );
        assert_eq!(
            column("c"),
            [Some(3.0), Some(13.0), None, Some(33.0), Some(43.0)]
        );
        assert_eq!(column("d"), [None, None, None, Some(34.0), None]);
    }
}
