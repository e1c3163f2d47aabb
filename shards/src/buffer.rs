//! The in-memory Arrow buffer of one shard's unflushed rows.
//!
//! Per table: column builders for the active part, plus frozen
//! [`RecordBatch`]es. The active part is frozen once it holds
//! `freeze_rows` rows, so a [snapshot](ShardBuffer::snapshot) costs the
//! `Arc` clones of the frozen batches plus a copy of at most `freeze_rows`
//! rows. A flush moves every table's rows into one *flushing* set that stays
//! visible to snapshots until the flush is in the manifest.
//!
//! Invariant: the buffer holds exactly the rows of the WAL entries
//! `(flushed watermark, applied_seq]`, each once (the flushing set holds
//! `(flushed watermark, flushing.upto]`, the tables the rest).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampNanosecondBuilder,
    UInt64Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType, UInt64Type};
use arrow_array::{new_null_array, Array, ArrayRef, DictionaryArray, Int32Array, RecordBatch};
use arrow_buffer::NullBufferBuilder;
use arrow_schema::{DataType, TimeUnit};

use crate::ids::WalSeq;
use crate::schema::{time_data_type, ColumnKind, FieldType, TableKey, TableSchema};
use crate::tags::TagDict;

/// When a shard's buffer should be flushed, and how it is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferConfig {
    /// Flush once the buffer holds this many rows. Default 1,000,000.
    pub flush_rows: usize,
    /// Flush once the buffer holds about this many bytes. Default 256 MiB.
    pub flush_bytes: usize,
    /// Flush once the oldest buffered row is this old. Default 60 s.
    pub flush_age: Duration,
    /// The active part of a table is frozen at this many rows. Default
    /// 16,384: each freeze allocates the next part's builders, and the
    /// kernel zeroes that fresh memory on first touch, on the shard core;
    /// at 65,536 rows that was a 10-20 ms stall of every request in flight
    /// (perf sched timehist at half load), at 16,384 it is a quarter.
    pub freeze_rows: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            flush_rows: 1_000_000,
            flush_bytes: 256 << 20,
            flush_age: Duration::from_secs(60),
            freeze_rows: 16_384,
        }
    }
}

/// Why a flush is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    Rows,
    Bytes,
    Age,
}

enum ColumnBuilder {
    Time(TimestampNanosecondBuilder),
    Tag(TagBuilder),
    Float(Float64Builder),
    Integer(Int64Builder),
    Unsigned(UInt64Builder),
    String(StringBuilder),
    Boolean(BooleanBuilder),
}

impl std::fmt::Debug for ColumnBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ColumnBuilder")
    }
}

impl ColumnBuilder {
    fn new(kind: ColumnKind) -> ColumnBuilder {
        ColumnBuilder::with_capacity(kind, 0)
    }

    /// A builder with room for `rows` values.
    fn with_capacity(kind: ColumnKind, rows: usize) -> ColumnBuilder {
        match kind {
            ColumnKind::Time => ColumnBuilder::Time(
                TimestampNanosecondBuilder::with_capacity(rows).with_data_type(time_data_type()),
            ),
            ColumnKind::Tag => ColumnBuilder::Tag(TagBuilder::with_capacity(rows)),
            ColumnKind::Field(FieldType::Float) => {
                ColumnBuilder::Float(Float64Builder::with_capacity(rows))
            }
            ColumnKind::Field(FieldType::Integer) => {
                ColumnBuilder::Integer(Int64Builder::with_capacity(rows))
            }
            ColumnKind::Field(FieldType::Unsigned) => {
                ColumnBuilder::Unsigned(UInt64Builder::with_capacity(rows))
            }
            ColumnKind::Field(FieldType::String) => {
                ColumnBuilder::String(StringBuilder::with_capacity(rows, rows * 16))
            }
            ColumnKind::Field(FieldType::Boolean) => {
                ColumnBuilder::Boolean(BooleanBuilder::with_capacity(rows))
            }
        }
    }

    fn append_nulls(&mut self, n: usize) {
        match self {
            ColumnBuilder::Time(b) => b.append_nulls(n),
            ColumnBuilder::Tag(b) => b.append_nulls(n),
            ColumnBuilder::Float(b) => b.append_nulls(n),
            ColumnBuilder::Integer(b) => b.append_nulls(n),
            ColumnBuilder::Unsigned(b) => b.append_nulls(n),
            ColumnBuilder::String(b) => b.append_nulls(n),
            ColumnBuilder::Boolean(b) => b.append_nulls(n),
        }
    }

    /// Appends `array`, whose type the catalog has checked to be this
    /// column's.
    fn append_array(&mut self, array: &dyn Array) {
        match self {
            ColumnBuilder::Time(b) => {
                b.append_array(array.as_primitive::<TimestampNanosecondType>())
            }
            ColumnBuilder::Tag(b) => b.append_array(array.as_dictionary::<Int32Type>()),
            ColumnBuilder::Float(b) => b.append_array(array.as_primitive::<Float64Type>()),
            ColumnBuilder::Integer(b) => b.append_array(array.as_primitive::<Int64Type>()),
            ColumnBuilder::Unsigned(b) => b.append_array(array.as_primitive::<UInt64Type>()),
            ColumnBuilder::String(b) => b
                .append_array(array.as_string::<i32>())
                .expect("string offsets within one freeze_rows part fit i32"),
            ColumnBuilder::Boolean(b) => b.append_array(array.as_boolean()),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Time(b) => Arc::new(b.finish()),
            ColumnBuilder::Tag(b) => Arc::new(b.finish()),
            ColumnBuilder::Float(b) => Arc::new(b.finish()),
            ColumnBuilder::Integer(b) => Arc::new(b.finish()),
            ColumnBuilder::Unsigned(b) => Arc::new(b.finish()),
            ColumnBuilder::String(b) => Arc::new(b.finish()),
            ColumnBuilder::Boolean(b) => Arc::new(b.finish()),
        }
    }

    fn finish_cloned(&self) -> ArrayRef {
        match self {
            ColumnBuilder::Time(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Tag(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Float(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Integer(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Unsigned(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::String(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Boolean(b) => Arc::new(b.finish_cloned()),
        }
    }
}

/// A part's tag column being built: a key per row into the part's own
/// dictionary. An appended column's dictionary values are looked up once
/// each ([`TagDict`]), then its keys are mapped in one pass: arrow's
/// `extend_dictionary` (a builder push per row) was 5.6% of a node's CPU
/// under columnar ingest.
#[derive(Debug)]
struct TagBuilder {
    dict: TagDict,
    keys: Vec<i32>,
    nulls: NullBufferBuilder,
    /// Scratch: the part's key of each value of the column being appended.
    mapping: Vec<i32>,
}

impl TagBuilder {
    fn with_capacity(rows: usize) -> TagBuilder {
        TagBuilder {
            dict: TagDict::default(),
            keys: Vec::with_capacity(rows),
            nulls: NullBufferBuilder::new(rows),
            mapping: Vec::new(),
        }
    }

    fn append_nulls(&mut self, n: usize) {
        self.keys.resize(self.keys.len() + n, 0);
        self.nulls.append_n_nulls(n);
    }

    /// Appends `array` (a dictionary of strings, as the catalog checked).
    fn append_array(&mut self, array: &DictionaryArray<Int32Type>) {
        let values = array.values().as_string::<i32>();
        self.mapping.clear();
        // A null value gets key -1, which marks its rows null below.
        self.mapping.extend(values.iter().map(|v| {
            v.map_or(-1, |s| {
                self.dict
                    .key(s.as_bytes())
                    .expect("a str is UTF-8, and a part holds far fewer than 2^31 values")
            })
        }));
        let keys = array.keys();
        let no_nulls = keys.null_count() == 0 && values.null_count() == 0;
        if no_nulls {
            let mapping = &self.mapping;
            self.keys
                .extend(keys.values().iter().map(|&k| mapping[k as usize]));
            self.nulls.append_n_non_nulls(keys.len());
        } else {
            for k in keys.iter() {
                match k.map(|k| self.mapping[k as usize]) {
                    Some(m) if m >= 0 => {
                        self.keys.push(m);
                        self.nulls.append_non_null();
                    }
                    _ => {
                        self.keys.push(0);
                        self.nulls.append_null();
                    }
                }
            }
        }
    }

    fn array(keys: Vec<i32>, nulls: Option<arrow_buffer::NullBuffer>, dict: &TagDict) -> ArrayRef {
        let keys = Int32Array::new(keys.into(), nulls);
        let values: ArrayRef = Arc::new(dict.values());
        debug_assert!(DictionaryArray::<Int32Type>::try_new(keys.clone(), values.clone()).is_ok());
        // SAFETY: `try_new` would succeed: every non-null key was given by
        // `dict.key`, so it indexes `dict`'s values (null rows hold 0 and
        // are not checked). Its check of every key was 2.4% of a node's CPU.
        Arc::new(unsafe { DictionaryArray::<Int32Type>::new_unchecked(keys, values) })
    }

    fn finish(&mut self) -> ArrayRef {
        let keys = std::mem::take(&mut self.keys);
        let array = TagBuilder::array(keys, self.nulls.finish(), &self.dict);
        self.dict.clear();
        array
    }

    fn finish_cloned(&self) -> ArrayRef {
        TagBuilder::array(self.keys.clone(), self.nulls.finish_cloned(), &self.dict)
    }
}

/// Pads `batch`, whose columns are a prefix of `schema`'s (the catalog only
/// ever appends columns), with null columns up to `schema`.
pub fn pad_to_schema(batch: &RecordBatch, schema: &TableSchema) -> RecordBatch {
    let arrow = schema.arrow();
    if batch.num_columns() == arrow.fields().len() {
        return batch.clone();
    }
    let mut columns = batch.columns().to_vec();
    for f in &arrow.fields()[batch.num_columns()..] {
        columns.push(new_null_array(f.data_type(), batch.num_rows()));
    }
    RecordBatch::try_new(arrow.clone(), columns).expect("padded to the table schema")
}

/// A write of at least `freeze_rows / KEEP_WHOLE_DIVISOR` rows becomes a
/// frozen part as it is (its arrays shared, columns put in the table's
/// order): copying it into the builders and re-keying its tags was 6% of
/// a node's CPU under columnar ingest of 5,000-row requests. Smaller
/// writes are gathered in the builders, so that a table of many small
/// writes is not a snapshot of thousands of tiny batches.
const KEEP_WHOLE_DIVISOR: usize = 4;

/// `batch`'s columns in `schema`'s order, missing ones as nulls, or `None`
/// if a column's type or nullability differs from the schema's (the
/// catalog has checked the types, so that is not expected).
fn conform(batch: &RecordBatch, schema: &TableSchema) -> Option<RecordBatch> {
    let arrow = schema.arrow();
    let n = batch.num_rows();
    let columns = arrow
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) => c.clone(),
            None => new_null_array(f.data_type(), n),
        })
        .collect();
    RecordBatch::try_new(arrow.clone(), columns).ok()
}

/// Bytes of memory `batch`'s arrays hold, each allocation counted once.
/// `RecordBatch::get_array_memory_size` counts a buffer shared by several
/// arrays once per array: a batch decoded from Arrow IPC (the WAL on
/// replay, a replica's entries) has every column sliced from one message
/// buffer, and was counted 8-20x, so such a buffer reached `flush_bytes`
/// and the backpressure gate's marks with a fraction of the rows.
pub fn memory_size(batch: &RecordBatch) -> usize {
    // Each buffer's address and capacity, sorted and deduplicated by
    // address: no hashing, and no `ArrayData` made per column (`to_data`
    // clones every type and buffer list; with a hash set per batch this was
    // 3% of a node's CPU under line protocol of four tables per request).
    let mut buffers: Vec<(*const u8, usize)> = Vec::with_capacity(batch.num_columns() * 3);
    for c in batch.columns() {
        array_buffers(c.as_ref(), &mut buffers);
    }
    buffers.sort_unstable_by_key(|&(at, _)| at);
    buffers.dedup_by_key(|&mut (at, _)| at);
    buffers.iter().map(|&(_, capacity)| capacity).sum()
}

/// Pushes the address and capacity of every buffer of `a`.
fn array_buffers(a: &dyn Array, out: &mut Vec<(*const u8, usize)>) {
    fn push(b: &arrow_buffer::Buffer, out: &mut Vec<(*const u8, usize)>) {
        out.push((b.data_ptr().as_ptr(), b.capacity()));
    }
    if let Some(n) = a.nulls() {
        push(n.buffer(), out);
    }
    match a.data_type() {
        DataType::Timestamp(TimeUnit::Nanosecond, _) => push(
            a.as_primitive::<TimestampNanosecondType>().values().inner(),
            out,
        ),
        DataType::Float64 => push(a.as_primitive::<Float64Type>().values().inner(), out),
        DataType::Int64 => push(a.as_primitive::<Int64Type>().values().inner(), out),
        DataType::UInt64 => push(a.as_primitive::<UInt64Type>().values().inner(), out),
        DataType::Boolean => push(a.as_boolean().values().inner(), out),
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            push(s.offsets().inner().inner(), out);
            push(s.values(), out);
        }
        DataType::Dictionary(k, _) if **k == DataType::Int32 => {
            let d = a.as_dictionary::<Int32Type>();
            push(d.keys().values().inner(), out);
            array_buffers(d.values().as_ref(), out);
        }
        // Not a type tidemark stores (the catalog checked): every buffer.
        _ => {
            fn visit(data: &arrow_data::ArrayData, out: &mut Vec<(*const u8, usize)>) {
                for b in data.buffers() {
                    push(b, out);
                }
                for c in data.child_data() {
                    if let Some(n) = c.nulls() {
                        push(n.buffer(), out);
                    }
                    visit(c, out);
                }
            }
            visit(&a.to_data(), out);
        }
    }
}

/// The unflushed rows of one table.
#[derive(Debug)]
struct TableBuffer {
    schema: TableSchema,
    builders: Vec<ColumnBuilder>,
    active_rows: usize,
    frozen: Vec<RecordBatch>,
    rows: usize,
}

impl TableBuffer {
    fn new() -> TableBuffer {
        TableBuffer {
            schema: TableSchema::default(),
            builders: vec![ColumnBuilder::new(ColumnKind::Time)],
            active_rows: 0,
            frozen: Vec::new(),
            rows: 0,
        }
    }

    fn append(&mut self, schema: &TableSchema, batch: &RecordBatch, freeze_rows: usize) {
        if schema.len() > self.schema.len() {
            for (_, kind) in schema.columns().skip(self.schema.len()) {
                let mut b = ColumnBuilder::new(kind);
                b.append_nulls(self.active_rows);
                self.builders.push(b);
            }
            self.schema = schema.clone();
        }
        let n = batch.num_rows();
        if n >= freeze_rows.div_ceil(KEEP_WHOLE_DIVISOR) {
            if let Some(part) = conform(batch, &self.schema) {
                // Rows stay in write order: the active part's rows first.
                self.freeze();
                self.frozen.push(part);
                self.rows += n;
                return;
            }
        }
        let batch_schema = batch.schema_ref();
        for (i, (name, _)) in self.schema.columns().enumerate() {
            match batch_schema.index_of(name) {
                Ok(j) => self.builders[i].append_array(batch.column(j).as_ref()),
                Err(_) => self.builders[i].append_nulls(n),
            }
        }
        self.active_rows += n;
        self.rows += n;
        if self.active_rows >= freeze_rows {
            self.freeze();
            // A table that fills parts will likely fill the next one too:
            // allocate for it at once instead of growing builders from zero.
            let rows = self.frozen.last().map_or(0, RecordBatch::num_rows);
            self.builders = self
                .schema
                .columns()
                .map(|(_, kind)| ColumnBuilder::with_capacity(kind, rows))
                .collect();
        }
    }

    fn freeze(&mut self) {
        if self.active_rows == 0 {
            return;
        }
        let columns = self
            .builders
            .iter_mut()
            .map(ColumnBuilder::finish)
            .collect();
        let batch = RecordBatch::try_new(self.schema.arrow().clone(), columns)
            .expect("builders follow the table schema");
        self.frozen.push(batch);
        self.active_rows = 0;
    }

    fn snapshot(&self) -> Vec<RecordBatch> {
        let mut out: Vec<RecordBatch> = self
            .frozen
            .iter()
            .map(|b| pad_to_schema(b, &self.schema))
            .collect();
        if self.active_rows > 0 {
            let columns = self
                .builders
                .iter()
                .map(ColumnBuilder::finish_cloned)
                .collect();
            out.push(
                RecordBatch::try_new(self.schema.arrow().clone(), columns)
                    .expect("builders follow the table schema"),
            );
        }
        out
    }

    fn take(&mut self) -> FrozenTable {
        self.freeze();
        FrozenTable {
            schema: self.schema.clone(),
            batches: std::mem::take(&mut self.frozen)
                .iter()
                .map(|b| pad_to_schema(b, &self.schema))
                .collect(),
        }
    }
}

/// The rows of one table, frozen: what a flush writes.
#[derive(Debug, Clone)]
pub struct FrozenTable {
    pub schema: TableSchema,
    /// Every batch has exactly `schema`'s columns.
    pub batches: Vec<RecordBatch>,
}

impl FrozenTable {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// The rows being flushed: every table's rows of the WAL entries up to `upto`.
#[derive(Debug, Clone)]
pub struct FlushingSet {
    pub upto: WalSeq,
    pub tables: BTreeMap<TableKey, FrozenTable>,
}

/// An immutable view of one table's buffered rows.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    pub schema: TableSchema,
    /// Rows not yet being flushed; each batch has exactly `schema`'s columns.
    pub live: Vec<RecordBatch>,
    /// Rows of the flush in flight, which covers the WAL entries up to
    /// `flushing_upto`. Once the manifest records that flush, the same rows
    /// are in Parquet files: a reader of both must skip these.
    pub flushing: Vec<RecordBatch>,
    pub flushing_upto: Option<WalSeq>,
}

/// An immutable view of a shard's buffer, cheap to take.
#[derive(Debug, Clone, Default)]
pub struct BufferSnapshot {
    pub applied_seq: WalSeq,
    pub tables: BTreeMap<TableKey, TableSnapshot>,
}

impl BufferSnapshot {
    pub fn num_rows(&self) -> usize {
        self.tables
            .values()
            .flat_map(|t| t.live.iter().chain(&t.flushing))
            .map(RecordBatch::num_rows)
            .sum()
    }
}

/// A shard's buffer. Owned by the shard's core. See the [module docs](self).
#[derive(Debug)]
pub struct ShardBuffer {
    config: BufferConfig,
    tables: BTreeMap<TableKey, TableBuffer>,
    flushing: Option<FlushingSet>,
    applied_seq: WalSeq,
    rows: usize,
    bytes: usize,
    oldest: Option<Instant>,
}

impl ShardBuffer {
    /// An empty buffer whose rows start after `flushed_seq`.
    pub fn new(config: BufferConfig, flushed_seq: WalSeq) -> ShardBuffer {
        ShardBuffer {
            config,
            tables: BTreeMap::new(),
            flushing: None,
            applied_seq: flushed_seq,
            rows: 0,
            bytes: 0,
            oldest: None,
        }
    }

    /// The last WAL entry whose rows are in the buffer.
    pub fn applied_seq(&self) -> WalSeq {
        self.applied_seq
    }

    /// Rows outside the flushing set.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate bytes outside the flushing set.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_flushing(&self) -> bool {
        self.flushing.is_some()
    }

    /// Appends the rows of WAL entry `seq`, which must be `applied_seq + 1`.
    /// `schema` is the table's catalog schema, a superset of `batch`'s.
    pub fn append(
        &mut self,
        seq: WalSeq,
        table: &TableKey,
        schema: &TableSchema,
        batch: &RecordBatch,
    ) {
        self.append_tables(seq, [(table, schema, batch)]);
    }

    /// Appends the rows of WAL entry `seq` that holds several tables.
    pub fn append_entry(&mut self, seq: WalSeq, tables: &[(TableKey, TableSchema, RecordBatch)]) {
        self.append_tables(seq, tables.iter().map(|(t, s, b)| (t, s, b)));
    }

    fn append_tables<'a>(
        &mut self,
        seq: WalSeq,
        tables: impl IntoIterator<Item = (&'a TableKey, &'a TableSchema, &'a RecordBatch)>,
    ) {
        assert_eq!(
            seq,
            self.applied_seq.next(),
            "buffer entries must be applied in order"
        );
        for (table, schema, batch) in tables {
            if !self.tables.contains_key(table) {
                self.tables.insert(table.clone(), TableBuffer::new());
            }
            let t = self.tables.get_mut(table).expect("inserted above");
            t.append(schema, batch, self.config.freeze_rows);
            self.rows += batch.num_rows();
            self.bytes += memory_size(batch);
        }
        self.applied_seq = seq;
        self.oldest.get_or_insert_with(Instant::now);
    }

    /// Moves the position past WAL entries that hold no rows for the buffer
    /// (entries skipped as corrupt during recovery).
    pub fn skip_to(&mut self, seq: WalSeq) {
        if seq > self.applied_seq {
            self.applied_seq = seq;
        }
    }

    /// Whether a flush is due at `now`, and why.
    pub fn flush_due(&self, now: Instant) -> Option<FlushReason> {
        if self.rows == 0 {
            None
        } else if self.rows >= self.config.flush_rows {
            Some(FlushReason::Rows)
        } else if self.bytes >= self.config.flush_bytes {
            Some(FlushReason::Bytes)
        } else if self
            .oldest
            .is_some_and(|t| now.duration_since(t) >= self.config.flush_age)
        {
            Some(FlushReason::Age)
        } else {
            None
        }
    }

    /// Moves every table's rows into the flushing set and returns a copy of
    /// it. `None` if there is nothing to flush. If a flush is still in
    /// flight, returns that set again (to retry it) instead.
    pub fn begin_flush(&mut self) -> Option<FlushingSet> {
        if let Some(f) = &self.flushing {
            return Some(f.clone());
        }
        if self.rows == 0 {
            return None;
        }
        let tables = std::mem::take(&mut self.tables)
            .into_iter()
            .map(|(k, mut t)| (k, t.take()))
            .filter(|(_, t)| t.num_rows() > 0)
            .collect();
        self.rows = 0;
        self.bytes = 0;
        self.oldest = None;
        let set = FlushingSet {
            upto: self.applied_seq,
            tables,
        };
        self.flushing = Some(set.clone());
        Some(set)
    }

    /// Drops the flushing set once its files are in the manifest.
    pub fn finish_flush(&mut self, upto: WalSeq) {
        if self.flushing.as_ref().is_some_and(|f| f.upto == upto) {
            self.flushing = None;
        }
    }

    /// A snapshot of every table, flushing rows included.
    pub fn snapshot(&self) -> BufferSnapshot {
        let keys: std::collections::BTreeSet<&TableKey> = self
            .tables
            .keys()
            .chain(self.flushing.iter().flat_map(|f| f.tables.keys()))
            .collect();
        BufferSnapshot {
            applied_seq: self.applied_seq,
            tables: keys
                .into_iter()
                .filter_map(|k| self.snapshot_table(k).map(|t| (k.clone(), t)))
                .collect(),
        }
    }

    /// A snapshot of one table, flushing rows included; `None` if the buffer
    /// holds no rows of it.
    pub fn snapshot_table(&self, table: &TableKey) -> Option<TableSnapshot> {
        let live = self.tables.get(table);
        let flushing = self
            .flushing
            .as_ref()
            .and_then(|f| f.tables.get(table).map(|t| (f.upto, t)));
        if live.is_none() && flushing.is_none() {
            return None;
        }
        // The live part's schema is at least as wide as the flushing one.
        let schema = match (live, flushing) {
            (Some(t), Some((_, f))) if f.schema.len() > t.schema.len() => f.schema.clone(),
            (Some(t), _) => t.schema.clone(),
            (None, Some((_, f))) => f.schema.clone(),
            (None, None) => unreachable!("checked above"),
        };
        let pad = |b: &RecordBatch| pad_to_schema(b, &schema);
        Some(TableSnapshot {
            live: live
                .map(|t| t.snapshot().iter().map(pad).collect())
                .unwrap_or_default(),
            flushing: flushing
                .map(|(_, f)| f.batches.iter().map(pad).collect())
                .unwrap_or_default(),
            flushing_upto: flushing.map(|(u, _)| u),
            schema,
        })
    }
}

#[cfg(test)]
mod tests {
    use arrow_select::concat::concat_batches;
    use proptest::prelude::*;

    use super::*;
    use crate::batch::test_util::*;
    use crate::catalog::{Catalog, CatalogCache};
    use crate::WriteBatch;

    fn all_rows(batches: &[RecordBatch], schema: &TableSchema) -> RecordBatch {
        concat_batches(schema.arrow(), batches).unwrap()
    }

    /// Projects a batch of the test table to a subset of its columns.
    fn project(b: &WriteBatch, keep: &[usize]) -> WriteBatch {
        let mut cols: Vec<usize> = vec![0];
        cols.extend(keep.iter().copied().filter(|&c| c > 0));
        cols.sort();
        cols.dedup();
        WriteBatch::try_new(b.table().clone(), b.batch().project(&cols).unwrap()).unwrap()
    }

    proptest! {
        #[test]
        fn snapshot_equals_appended_rows(
            batches in proptest::collection::vec(
                (proptest::collection::vec((0i64..10_000, 0u8..4, -1e6f64..1e6), 1..40),
                 proptest::collection::vec(0usize..8, 0..8)),
                1..20),
            freeze_rows in 1usize..100,
        ) {
            let config = BufferConfig { freeze_rows, ..BufferConfig::default() };
            let mut buf = ShardBuffer::new(config, WalSeq::ZERO);
            let mut cache = CatalogCache::new(Catalog::new());
            let mut written = Vec::new();
            let mut seq = WalSeq::ZERO;
            for (rows, keep) in &batches {
                let rows: Vec<Row> = rows.iter().map(|(t, h, u)| row(*t, &format!("h{h}"), *u)).collect();
                let wb = project(&cpu_batch(&rows), keep);
                let schema = cache.check(wb.table(), wb.batch().schema_ref()).unwrap();
                seq = seq.next();
                buf.append(seq, wb.table(), &schema, wb.batch());
                written.push(wb);
            }
            let snap = buf.snapshot();
            let t = &snap.tables[written[0].table()];
            let got = all_rows(&t.live, &t.schema);
            let want: Vec<RecordBatch> = written.iter().map(|w| pad_to_schema_by_name(w.batch(), &t.schema)).collect();
            let want = all_rows(&want, &t.schema);
            prop_assert_eq!(got, want);
            prop_assert_eq!(snap.applied_seq, seq);
            // Flushing moves every row into the flushing set, visible still.
            let set = buf.begin_flush().unwrap();
            prop_assert_eq!(set.upto, seq);
            prop_assert_eq!(buf.snapshot().num_rows(), snap.num_rows());
            buf.finish_flush(seq);
            prop_assert_eq!(buf.snapshot().num_rows(), 0);
        }
    }

    /// Reorders and pads `batch`'s columns to `schema` by name (the reference
    /// the buffer's builders must agree with).
    fn pad_to_schema_by_name(batch: &RecordBatch, schema: &TableSchema) -> RecordBatch {
        let cols = schema
            .arrow()
            .fields()
            .iter()
            .map(|f| match batch.column_by_name(f.name()) {
                Some(c) => c.clone(),
                None => new_null_array(f.data_type(), batch.num_rows()),
            })
            .collect();
        RecordBatch::try_new(schema.arrow().clone(), cols).unwrap()
    }

    #[test]
    fn flush_triggers() {
        let config = BufferConfig {
            flush_rows: 3,
            flush_age: Duration::from_secs(10),
            ..BufferConfig::default()
        };
        let mut buf = ShardBuffer::new(config, WalSeq(7));
        let now = Instant::now();
        assert_eq!(buf.flush_due(now), None);
        let mut cache = CatalogCache::new(Catalog::new());
        let wb = cpu_batch(&[row(1, "a", 1.0)]);
        let schema = cache.check(wb.table(), wb.batch().schema_ref()).unwrap();
        buf.append(WalSeq(8), wb.table(), &schema, wb.batch());
        assert_eq!(buf.flush_due(Instant::now()), None);
        assert_eq!(
            buf.flush_due(Instant::now() + Duration::from_secs(11)),
            Some(FlushReason::Age)
        );
        let wb = cpu_batch(&[row(2, "a", 1.0), row(3, "b", 2.0)]);
        buf.append(WalSeq(9), wb.table(), &schema, wb.batch());
        assert_eq!(buf.flush_due(Instant::now()), Some(FlushReason::Rows));
    }

    /// Null keys, null dictionary values, unused values, and values under
    /// different keys in each appended column: the part's column reads as
    /// the appended ones did.
    #[test]
    fn tag_columns_keep_values_and_nulls() {
        let a: DictionaryArray<Int32Type> = vec![Some("x"), None, Some("y"), Some("x")]
            .into_iter()
            .collect();
        let values = arrow_array::StringArray::from(vec![Some("y"), None, Some("z"), Some("x")]);
        let b = DictionaryArray::<Int32Type>::try_new(
            Int32Array::from(vec![Some(0), Some(1), None, Some(3), Some(0)]),
            Arc::new(values),
        )
        .unwrap();
        let mut t = TagBuilder::with_capacity(0);
        t.append_array(&a);
        t.append_nulls(2);
        t.append_array(&b);
        let read = |array: &ArrayRef| -> Vec<Option<String>> {
            let d = array.as_dictionary::<Int32Type>();
            let v = d.values().as_string::<i32>();
            (0..d.len())
                .map(|i| {
                    d.key(i)
                        .filter(|&k| v.is_valid(k))
                        .map(|k| v.value(k).to_string())
                })
                .collect()
        };
        let want: Vec<Option<String>> = [
            Some("x"),
            None,
            Some("y"),
            Some("x"),
            None,
            None,
            Some("y"),
            None,
            None,
            Some("x"),
            Some("y"),
        ]
        .iter()
        .map(|v| v.map(String::from))
        .collect();
        assert_eq!(read(&t.finish_cloned()), want);
        assert_eq!(read(&t.finish()), want);
        assert_eq!(t.finish().len(), 0);
    }

    /// A batch decoded from an Arrow IPC entry of the WAL (written by
    /// earlier versions) shares one buffer among its columns: counted once,
    /// it is about the size of the batch it was encoded from, not many times
    /// that. One decoded from the current encoding is the same size too.
    #[test]
    fn memory_size_counts_a_shared_buffer_once() {
        use crate::wal::format::EntryKind;
        use crate::wal::payload::{decode_writes, encode_write, encode_writes_ipc};
        let rows: Vec<Row> = (0..5000)
            .map(|i| row(i, &format!("h{}", i % 100), i as f64))
            .collect();
        let built = cpu_batch(&rows);
        let mut payload = Vec::new();
        encode_writes_ipc(&mut payload, std::slice::from_ref(&built)).unwrap();
        let decoded = decode_writes(EntryKind::WriteIpc, &payload)
            .unwrap()
            .remove(0);
        let (b, d) = (memory_size(built.batch()), memory_size(decoded.batch()));
        assert!(d < 2 * b && b < 2 * d, "built {b}, decoded {d}");
        assert!(decoded.batch().get_array_memory_size() > 4 * d);
        assert!(b <= built.batch().get_array_memory_size());
        payload.clear();
        encode_write(&mut payload, &built);
        let decoded = decode_writes(EntryKind::Write, &payload).unwrap().remove(0);
        let d = memory_size(decoded.batch());
        assert!(d < 2 * b && b < 2 * d, "built {b}, decoded {d}");
    }
}
