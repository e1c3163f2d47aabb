//! Building the Arrow columns of a request row by row, with the checks every
//! decoder needs: names, types, duplicates, and one type per column within
//! the request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::types::{Float64Type, Int32Type, Int64Type, UInt64Type};
use arrow_array::{ArrayRef, DictionaryArray, Int32Array, RecordBatch, TimestampNanosecondArray};
use arrow_array::{ArrowPrimitiveType, BooleanArray, PrimitiveArray, StringArray};
use arrow_buffer::{BooleanBuffer, Buffer, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
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

/// Appends `(key, value)` to `values`, which has room for it (the caller
/// reserved it before making them): the parts are written straight into
/// the slot. `Vec::push` assembles the tuple in a stack slot first (the
/// parts must survive a possible reallocation) and copies it with loads
/// wider than the stores that made it, which the processor cannot forward:
/// a stall on every value (22% of the line-protocol parser's samples at 5cfe573).
#[inline(always)]
pub(crate) fn push_reserved<'a>(
    values: &mut Vec<(Cow<'a, str>, Value<'a>)>,
    key: Cow<'a, str>,
    value: Value<'a>,
) {
    let len = values.len();
    values.spare_capacity_mut()[0].write((key, value));
    // SAFETY: the element at `len`, within the capacity, was just written.
    unsafe { values.set_len(len + 1) };
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

    fn truncate(&mut self, n: usize) {
        self.keys.truncate(n);
        truncate_nulls(&mut self.null_at, n);
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

/// A numeric or boolean column being built: a `Vec` and the rows that are
/// null (arrow's builders' appends do not inline: a call per value).
#[derive(Default)]
struct Values<N> {
    values: Vec<N>,
    null_at: Vec<usize>,
}

impl<N: Default + Clone> Values<N> {
    fn append_nulls(&mut self, n: usize) {
        let at = self.values.len();
        self.null_at.extend(at..at + n);
        self.values.resize(at + n, N::default());
    }

    fn truncate(&mut self, n: usize) {
        self.values.truncate(n);
        truncate_nulls(&mut self.null_at, n);
    }

    /// The values taken, and their validity.
    fn take(&mut self) -> (Vec<N>, Option<arrow_buffer::NullBuffer>) {
        let nulls = validity(self.values.len(), &self.null_at).finish();
        self.null_at.clear();
        (std::mem::take(&mut self.values), nulls)
    }

    fn finish<T: ArrowPrimitiveType<Native = N>>(&mut self) -> PrimitiveArray<T>
    where
        N: arrow_buffer::ArrowNativeType,
    {
        let (values, nulls) = self.take();
        PrimitiveArray::new(values.into(), nulls)
    }
}

impl Values<bool> {
    fn finish_booleans(&mut self) -> BooleanArray {
        let (values, nulls) = self.take();
        BooleanArray::new(values.into_iter().collect::<BooleanBuffer>(), nulls)
    }
}

/// A string column being built: offsets and bytes (a null is empty).
struct Strings {
    offsets: Vec<i32>,
    bytes: Vec<u8>,
    null_at: Vec<usize>,
}

impl Default for Strings {
    fn default() -> Self {
        Strings {
            offsets: vec![0],
            bytes: Vec::new(),
            null_at: Vec::new(),
        }
    }
}

impl Strings {
    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    #[inline]
    fn append(&mut self, s: &str) {
        self.bytes.extend_from_slice(s.as_bytes());
        // As arrow's `StringBuilder`: a request is far below 2 GiB
        // (`http.max_body_bytes`).
        let end = i32::try_from(self.bytes.len()).expect("string column over 2 GiB");
        self.offsets.push(end);
    }

    fn append_nulls(&mut self, n: usize) {
        let at = self.len();
        self.null_at.extend(at..at + n);
        let end = *self.offsets.last().expect("offsets start with 0");
        self.offsets.resize(self.offsets.len() + n, end);
    }

    fn truncate(&mut self, n: usize) {
        self.offsets.truncate(n + 1);
        self.bytes
            .truncate(*self.offsets.last().expect("offsets start with 0") as usize);
        truncate_nulls(&mut self.null_at, n);
    }

    fn finish(&mut self) -> StringArray {
        let nulls = validity(self.len(), &self.null_at).finish();
        self.null_at.clear();
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        StringArray::new(
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Buffer::from_vec(std::mem::take(&mut self.bytes)),
            nulls,
        )
    }
}

/// Drops the nulls at `n` and after from `null_at` (ascending).
fn truncate_nulls(null_at: &mut Vec<usize>, n: usize) {
    let keep = null_at.partition_point(|&i| i < n);
    null_at.truncate(keep);
}

enum Data {
    Tag(TagBuilder),
    Float(Values<f64>),
    Integer(Values<i64>),
    Unsigned(Values<u64>),
    String(Strings),
    Boolean(Values<bool>),
}

impl Data {
    fn new(kind: ColumnKind) -> Data {
        match kind {
            ColumnKind::Tag | ColumnKind::Time => Data::Tag(TagBuilder::default()),
            ColumnKind::Field(FieldType::Float) => Data::Float(Values::default()),
            ColumnKind::Field(FieldType::Integer) => Data::Integer(Values::default()),
            ColumnKind::Field(FieldType::Unsigned) => Data::Unsigned(Values::default()),
            ColumnKind::Field(FieldType::String) => Data::String(Strings::default()),
            ColumnKind::Field(FieldType::Boolean) => Data::Boolean(Values::default()),
        }
    }

    /// Makes room for `rows` more values (strings: of the average length
    /// of those so far).
    fn reserve(&mut self, rows: usize) {
        match self {
            Data::Tag(b) => b.keys.reserve(rows),
            Data::Float(b) => b.values.reserve(rows),
            Data::Integer(b) => b.values.reserve(rows),
            Data::Unsigned(b) => b.values.reserve(rows),
            Data::String(b) => {
                let per_value = b.bytes.len() / b.len().max(1);
                b.offsets.reserve(rows);
                b.bytes.reserve(rows * per_value);
            }
            Data::Boolean(b) => b.values.reserve(rows),
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
            Data::String(b) => b.append(&v.text),
            Data::Boolean(b) => b.values.push(v.bits != 0),
        }
    }

    /// Keeps the first `n` values.
    fn truncate(&mut self, n: usize) {
        match self {
            Data::Tag(b) => b.truncate(n),
            Data::Float(b) => b.truncate(n),
            Data::Integer(b) => b.truncate(n),
            Data::Unsigned(b) => b.truncate(n),
            Data::String(b) => b.truncate(n),
            Data::Boolean(b) => b.truncate(n),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Data::Tag(b) => Arc::new(b.finish()),
            Data::Float(b) => Arc::new(b.finish::<Float64Type>()),
            Data::Integer(b) => Arc::new(b.finish::<Int64Type>()),
            Data::Unsigned(b) => Arc::new(b.finish::<UInt64Type>()),
            Data::String(b) => Arc::new(b.finish()),
            Data::Boolean(b) => Arc::new(b.finish_booleans()),
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
    /// The column of each value of the previous row: rows of a request
    /// usually name the same columns in the same order, so the name is
    /// compared with that column's before the map is probed.
    order: Vec<usize>,
    /// How far the decoder is through the request ([`RequestBuilder::progress`]).
    progress: Progress,
}

/// How far a decoder is through its request, in bytes: what the columns of
/// a table reserve for when they are full is estimated from it.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    done: usize,
    total: usize,
}

/// Rows a table's columns first have room for.
const FIRST_ROWS: usize = 16;

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
            order: Vec::new(),
            progress: Progress::default(),
        }
    }

    /// Makes room in every column for the rows the table will have, as
    /// estimated from how many it has for how far the decoder is through the
    /// request (at least twice as many), so that a column is not grown step
    /// by step: a `Vec` doubling from 4 values to 250 reallocates and copies
    /// 7 times, which for every column of four tables per request was 4% of
    /// a node's CPU under line protocol (TSBS devops, 1,000-row requests).
    #[cold]
    fn reserve_rows(&mut self) {
        let rows = self.time.len();
        let Progress { done, total } = self.progress;
        let estimate = if done == 0 {
            0
        } else {
            // 1/16 more, so that an estimate a little short is not followed
            // by a doubling near the end.
            (rows as u128 * total as u128 / done as u128) as usize + rows / 16
        };
        let target = estimate.max(rows * 2).max(FIRST_ROWS);
        self.time.reserve_exact(target - rows);
        for col in &mut self.columns {
            col.data.reserve(target - col.len);
        }
    }

    pub fn rows(&self) -> usize {
        self.time.len()
    }

    /// Validates one row and appends it; on error nothing is appended (a
    /// new tag value may stay in its column's dictionary, unused). `at` is
    /// the row's line or record number, for messages.
    ///
    /// Each value is checked and appended in one step, and an error undoes
    /// the row ([`TableBuilder::undo_row`]): errors are rare, and checking
    /// a whole row before appending any of it went over its values twice.
    pub fn push_row<S: AsRef<str>>(
        &mut self,
        at: usize,
        time: i64,
        values: &[(S, Value<'_>)],
    ) -> Result<(), IngestError> {
        self.stamp += 1;
        let row = self.time.len();
        if row == self.time.capacity() {
            self.reserve_rows();
        }
        let columns_before = self.columns.len();
        for (i, (name, v)) in values.iter().enumerate() {
            let c = match self.column_of(i, name.as_ref(), v.kind(), at) {
                Ok(c) => c,
                Err(e) => {
                    self.undo_row(row, columns_before);
                    return Err(e);
                }
            };
            let col = &mut self.columns[c];
            if col.len < row {
                col.data.append_nulls(row - col.len);
            }
            col.data.append(v);
            col.len = row + 1;
            // The column becomes the guess for the next row's `i`th value.
            match self.order.get_mut(i) {
                Some(o) => *o = c,
                None => self.order.push(c),
            }
        }
        self.time.push(time);
        Ok(())
    }

    /// The column for the `i`th value of the row being pushed, named
    /// `name`, of `kind`: checked (not already set by this row, the same
    /// kind) and marked set, or made if new.
    #[inline]
    fn column_of(
        &mut self,
        i: usize,
        name: &str,
        kind: ColumnKind,
        at: usize,
    ) -> Result<usize, IngestError> {
        let stamp = self.stamp;
        let guess = self
            .order
            .get(i)
            .filter(|&&c| same_name(&self.columns[c].name, name));
        let Some(c) = guess.or_else(|| self.index.get(name)).copied() else {
            if name == TIME_COLUMN {
                return Err(IngestError::column(
                    at,
                    name,
                    "is reserved for the timestamp",
                ));
            }
            validate_column_name(name).map_err(|e| IngestError::column(at, name, e.to_string()))?;
            self.index.insert(name.to_string(), self.columns.len());
            let mut data = Data::new(kind);
            data.reserve(self.time.capacity());
            self.columns.push(Column {
                name: name.to_string(),
                kind,
                first_at: at,
                data,
                len: 0,
                stamp,
            });
            return Ok(self.columns.len() - 1);
        };
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
        Ok(c)
    }

    /// Takes back what a failed push of row `row` appended: the columns it
    /// made (those from `columns_before` on) and its values in the others.
    fn undo_row(&mut self, row: usize, columns_before: usize) {
        for col in self.columns.drain(columns_before..) {
            self.index.remove(&col.name);
        }
        for col in &mut self.columns {
            if col.len > row {
                col.data.truncate(row);
                col.len = row;
            }
        }
        // The guesses may name the columns just dropped.
        self.order.clear();
    }

    /// The line or record where `column` first appeared in this request.
    pub fn first_at(&self, column: &str) -> Option<usize> {
        self.index.get(column).map(|&c| self.columns[c].first_at)
    }

    fn finish(mut self) -> (WriteBatch, FirstAt) {
        let rows = self.time.len();
        let mut fields = vec![ColumnKind::Time.field(TIME_COLUMN)];
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(
            TimestampNanosecondArray::from(std::mem::take(&mut self.time)).with_timezone(TIME_ZONE),
        )];
        let mut first_at = Vec::with_capacity(self.columns.len());
        for mut col in self.columns {
            if col.len < rows {
                col.data.append_nulls(rows - col.len);
            }
            fields.push(col.kind.field(&col.name));
            arrays.push(col.data.finish());
            first_at.push((col.name, col.first_at));
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
    progress: Progress,
}

/// Where each column of a table first appeared: looked up only to word an
/// error, so a list (a map per table per request cost 0.6% of a node's CPU).
type FirstAt = Vec<(String, usize)>;

/// A request's batches, with where each column first appeared (for turning a
/// catalog conflict into a message that names a line).
#[derive(Debug)]
pub struct Decoded {
    pub batches: Vec<WriteBatch>,
    first_at: Vec<FirstAt>,
}

impl Decoded {
    /// The line or record where `column` of `table` first appeared.
    pub fn first_at(&self, table: &TableKey, column: &str) -> Option<usize> {
        let i = self.batches.iter().position(|b| b.table() == table)?;
        self.first_at[i]
            .iter()
            .find(|(name, _)| name == column)
            .map(|&(_, at)| at)
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
            progress: Progress::default(),
        }
    }

    /// Says that the rows pushed so far came from the first `done` of the
    /// request's `total` bytes: tables size their columns by it.
    #[inline]
    pub fn progress(&mut self, done: usize, total: usize) {
        self.progress = Progress { done, total };
    }

    /// The builder of `database.measurement`, validating the names when the
    /// table first appears.
    pub fn table(
        &mut self,
        database: &str,
        measurement: &str,
        at: usize,
    ) -> Result<&mut TableBuilder, IngestError> {
        let same = |t: &TableBuilder| same_name(t.key.measurement(), measurement);
        // The previous row's table first; then a few tables (rows of
        // several measurements interleaved, as TSBS devops sends them) are
        // compared by name, many looked up.
        let found = if self.tables.get(self.last).is_some_and(same) {
            Some(self.last)
        } else if self.tables.len() <= 8 {
            self.tables.iter().position(same)
        } else {
            self.index.get(measurement).copied()
        };
        let i = match found {
            Some(i) => i,
            None => {
                let key = TableKey::new(database, measurement)
                    .map_err(|e| IngestError::new(at, e.to_string()))?;
                self.index
                    .insert(measurement.to_string(), self.tables.len());
                self.tables.push(TableBuilder::new(key, self.unit));
                self.tables.len() - 1
            }
        };
        self.last = i;
        let t = &mut self.tables[i];
        t.progress = self.progress;
        Ok(t)
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

    /// A row that fails part-way leaves nothing: not its values in the
    /// columns it had reached (tags, strings, booleans, numbers), nor the
    /// columns it made; the rows after it land where they should.
    #[test]
    fn a_failed_row_is_undone() {
        use arrow_array::cast::AsArray;
        let mut r = RequestBuilder::new("line");
        let t = r.table("db", "m", 1).unwrap();
        let row = |host: &'static str, s: &'static str, b: bool, x: f64| {
            vec![
                ("host", Value::tag(host.into())),
                ("s", Value::string(s.into())),
                ("b", Value::boolean(b)),
                ("x", Value::float(x)),
            ]
        };
        t.push_row(1, 1, &row("a", "one", true, 1.0)).unwrap();
        // Fails at its last value, after a new column and every kind.
        let mut bad = row("z", "zzz", false, 9.0);
        bad.insert(1, ("new", Value::integer(7)));
        bad.push(("x", Value::float(9.5)));
        let err = t.push_row(2, 2, &bad).unwrap_err();
        assert_eq!(err.to_string(), "\"x\": appears twice");
        // Fails at a name, with a tag column of a new name before it.
        let err = t
            .push_row(
                3,
                3,
                &[
                    ("other", Value::tag("q".into())),
                    ("x", Value::string("no".into())),
                ],
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("is string here but float in line 1"),
            "{err}"
        );
        // Rows without some columns, after the failures.
        t.push_row(4, 4, &[("x", Value::float(4.0))]).unwrap();
        t.push_row(5, 5, &row("b", "five", false, 5.0)).unwrap();
        assert_eq!(r.table("db", "m", 6).unwrap().first_at("new"), None);
        let d = r.finish();
        let b = d.batches[0].batch();
        let names: Vec<&str> = b
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["time", "host", "s", "b", "x"]);
        let host = b
            .column_by_name("host")
            .unwrap()
            .as_dictionary::<Int32Type>();
        let host: Vec<Option<&str>> = host
            .downcast_dict::<StringArray>()
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(host, [Some("a"), None, Some("b")]);
        let s: Vec<Option<&str>> = b
            .column_by_name("s")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .collect();
        assert_eq!(s, [Some("one"), None, Some("five")]);
        let bools: Vec<Option<bool>> = b.column_by_name("b").unwrap().as_boolean().iter().collect();
        assert_eq!(bools, [Some(true), None, Some(false)]);
        let x: Vec<Option<f64>> = b
            .column_by_name("x")
            .unwrap()
            .as_primitive::<Float64Type>()
            .iter()
            .collect();
        assert_eq!(x, [Some(1.0), Some(4.0), Some(5.0)]);
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
