//! Arc's MessagePack ingest formats.
//!
//! * **Columnar**: `{"m": "cpu", "columns": {"time": [...], "host": [...],
//!   "usage": [...]}}`, optionally `"tag_keys": ["host"]`. Columns decode
//!   straight into Arrow arrays, one pass to find a column's type and one to
//!   fill it; no row maps are built. Without `tag_keys`, string columns are
//!   tags and all others fields; with it, exactly the listed columns are tags
//!   and other string columns are string fields.
//! * **Row**: `{"m": "cpu", "t": 1700000000000, "h": "host1",
//!   "fields": {...}, "tags": {...}}`; `h` sets the `host` tag (a number `n`
//!   becomes `host_<n>`), `f: [...]` gives fields `field_0`, `field_1`, ...
//!   Unlike Arc, a record without `h` keeps its `tags.host`.
//! * A top-level array of records, or `{"batch": [...]}`; row and columnar
//!   records may be mixed.
//!
//! Times are integers or floats whose unit is detected from the magnitude,
//! as Arc does (for a column, from its first value): below 1e10 seconds,
//! below 1e13 milliseconds, below 1e16 microseconds, otherwise nanoseconds.
//! A record or column without a time gets the time the request was received.
//!
//! Unlike Arc, which skips bad records inside a batch, any bad record fails
//! the whole request (nothing is written), and the error names the record
//! number (1-based, in order of appearance), the column and the reason.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, StringDictionaryBuilder,
    UInt64Builder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch, TimestampNanosecondArray};
use arrow_schema::Schema;
use rmp::Marker;
use tidemark_shards::schema::{validate_column_name, TIME_COLUMN, TIME_ZONE};
use tidemark_shards::{ColumnKind, FieldType, TableKey, WriteBatch};

use crate::builder::{Decoded, RequestBuilder, Value};
use crate::error::{IngestError, IngestErrors, Unit};

/// One decoded MessagePack value; containers give their length.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Val<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
    Bin,
    Array(usize),
    Map(usize),
    Ext,
}

impl Val<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Val::Nil => "nil",
            Val::Bool(_) => "boolean",
            Val::Int(_) | Val::UInt(_) => "integer",
            Val::Float(_) => "float",
            Val::Str(_) => "string",
            Val::Bin => "binary",
            Val::Array(_) => "array",
            Val::Map(_) => "map",
            Val::Ext => "extension",
        }
    }
}

/// A cursor over MessagePack bytes; strings are borrowed.
#[derive(Debug, Clone)]
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.pos..self.pos.saturating_add(n))
            .ok_or_else(|| "truncated MessagePack data".to_string())?;
        self.pos += n;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        let s = self.take(n)?;
        Ok(s.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }

    fn next(&mut self) -> Result<Val<'a>, String> {
        let m = Marker::from_u8(self.take(1)?[0]);
        Ok(match m {
            Marker::Null => Val::Nil,
            Marker::True => Val::Bool(true),
            Marker::False => Val::Bool(false),
            Marker::FixPos(n) => Val::Int(n as i64),
            Marker::FixNeg(n) => Val::Int(n as i64),
            Marker::U8 => Val::Int(self.uint(1)? as i64),
            Marker::U16 => Val::Int(self.uint(2)? as i64),
            Marker::U32 => Val::Int(self.uint(4)? as i64),
            Marker::U64 => {
                let v = self.uint(8)?;
                i64::try_from(v).map_or(Val::UInt(v), Val::Int)
            }
            Marker::I8 => Val::Int(self.uint(1)? as u8 as i8 as i64),
            Marker::I16 => Val::Int(self.uint(2)? as u16 as i16 as i64),
            Marker::I32 => Val::Int(self.uint(4)? as u32 as i32 as i64),
            Marker::I64 => Val::Int(self.uint(8)? as i64),
            Marker::F32 => Val::Float(f32::from_bits(self.uint(4)? as u32) as f64),
            Marker::F64 => Val::Float(f64::from_bits(self.uint(8)?)),
            Marker::FixStr(n) => self.str(n as usize)?,
            Marker::Str8 => {
                let n = self.uint(1)? as usize;
                self.str(n)?
            }
            Marker::Str16 => {
                let n = self.uint(2)? as usize;
                self.str(n)?
            }
            Marker::Str32 => {
                let n = self.uint(4)? as usize;
                self.str(n)?
            }
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let w = match m {
                    Marker::Bin8 => 1,
                    Marker::Bin16 => 2,
                    _ => 4,
                };
                let n = self.uint(w)? as usize;
                self.take(n)?;
                Val::Bin
            }
            Marker::FixArray(n) => Val::Array(n as usize),
            Marker::Array16 => Val::Array(self.uint(2)? as usize),
            Marker::Array32 => Val::Array(self.uint(4)? as usize),
            Marker::FixMap(n) => Val::Map(n as usize),
            Marker::Map16 => Val::Map(self.uint(2)? as usize),
            Marker::Map32 => Val::Map(self.uint(4)? as usize),
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => {
                let n = match m {
                    Marker::FixExt1 => 1,
                    Marker::FixExt2 => 2,
                    Marker::FixExt4 => 4,
                    Marker::FixExt8 => 8,
                    Marker::FixExt16 => 16,
                    Marker::Ext8 => self.uint(1)? as usize,
                    Marker::Ext16 => self.uint(2)? as usize,
                    _ => self.uint(4)? as usize,
                };
                self.take(n + 1)?;
                Val::Ext
            }
            Marker::Reserved => return Err("invalid MessagePack marker 0xc1".into()),
        })
    }

    /// Bytes not read yet: an upper bound on the items still to come (every
    /// MessagePack value takes at least one byte), used to cap allocations
    /// sized by lengths the body declares.
    fn remaining(&self) -> usize {
        self.b.len().saturating_sub(self.pos)
    }

    fn str(&mut self, n: usize) -> Result<Val<'a>, String> {
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(Val::Str)
            .map_err(|_| "string is not valid UTF-8".into())
    }

    /// Skips one whole value, containers included (iteratively: a
    /// container adds its items to the count still to skip).
    fn skip(&mut self) -> Result<(), String> {
        let mut remaining: usize = 1;
        while remaining > 0 {
            remaining -= 1;
            match self.next()? {
                Val::Array(n) => remaining = remaining.saturating_add(n),
                Val::Map(n) => remaining = remaining.saturating_add(n.saturating_mul(2)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads a map's entries as (key, reader at the value), skipping values.
    fn map_entries(&mut self, n: usize) -> Result<Vec<(&'a str, Reader<'a>)>, String> {
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let key = match self.next()? {
                Val::Str(k) => k,
                other => {
                    return Err(format!(
                        "map key is {}, expected a string",
                        other.type_name()
                    ))
                }
            };
            out.push((key, self.clone()));
            self.skip()?;
        }
        Ok(out)
    }
}

fn get<'a, 'b>(entries: &'b [(&'a str, Reader<'a>)], key: &str) -> Option<&'b Reader<'a>> {
    entries.iter().find(|(k, _)| *k == key).map(|(_, r)| r)
}

/// Converts a time value to nanoseconds, detecting its unit by magnitude
/// (Arc's rule): below 1e10 seconds, below 1e13 milliseconds, below 1e16
/// microseconds, otherwise nanoseconds.
fn time_unit_nanos(first: f64) -> i64 {
    let a = first.abs();
    if a < 1e10 {
        1_000_000_000
    } else if a < 1e13 {
        1_000_000
    } else if a < 1e16 {
        1_000
    } else {
        1
    }
}

fn time_to_nanos(v: Val<'_>, unit: i64) -> Result<i64, String> {
    match v {
        Val::Int(i) => i
            .checked_mul(unit)
            .ok_or_else(|| format!("time {i} is out of range")),
        Val::Float(f) if f.is_finite() => {
            let ns = f * unit as f64;
            if ns.abs() < 9.2e18 {
                Ok(ns as i64)
            } else {
                Err(format!("time {f} is out of range"))
            }
        }
        other => Err(format!("time is {}, expected a number", other.type_name())),
    }
}

fn val_as_f64(v: Val<'_>) -> Option<f64> {
    match v {
        Val::Int(i) => Some(i as f64),
        Val::UInt(u) => Some(u as f64),
        Val::Float(f) => Some(f),
        _ => None,
    }
}

/// Decodes a whole MessagePack body for database `database`.
/// `now_ns` is the time of records that carry none.
pub fn parse(body: &[u8], database: &str, now_ns: i64) -> Result<Decoded, IngestErrors> {
    let mut ctx = Ctx {
        database,
        now_ns,
        rows: RequestBuilder::new("record"),
        columnar: Vec::new(),
        errors: IngestErrors::new(Unit::Record),
        record: 0,
    };
    let mut r = Reader { b: body, pos: 0 };
    let whole = |e: String| IngestErrors::one(Unit::Record, IngestError::new(0, e));
    let top = r.next().map_err(whole)?;
    match top {
        Val::Array(n) => ctx.records(&mut r, n).map_err(whole)?,
        Val::Map(n) => {
            let entries = r.map_entries(n).map_err(whole)?;
            match get(&entries, "batch") {
                Some(batch) => {
                    let mut b = batch.clone();
                    match b.next().map_err(whole)? {
                        Val::Array(n) => ctx.records(&mut b, n).map_err(whole)?,
                        other => {
                            return Err(whole(format!(
                                "\"batch\" is {}, expected an array",
                                other.type_name()
                            )))
                        }
                    }
                }
                None => {
                    ctx.record = 1;
                    ctx.record_entries(&entries);
                }
            }
        }
        other => {
            return Err(whole(format!(
                "body is {}, expected a map or an array of maps",
                other.type_name()
            )))
        }
    }
    if r.pos != body.len() {
        ctx.errors.push(IngestError::new(
            0,
            format!(
                "{} trailing bytes after the MessagePack value",
                body.len() - r.pos
            ),
        ));
    }
    if !ctx.errors.is_empty() {
        return Err(ctx.errors);
    }
    let mut decoded = ctx.rows.finish();
    for (batch, at) in ctx.columnar {
        decoded.push(batch, at);
    }
    if decoded.batches.is_empty() {
        return Err(IngestErrors::one(
            Unit::Record,
            IngestError::new(0, "no records"),
        ));
    }
    Ok(decoded)
}

struct Ctx<'d> {
    database: &'d str,
    now_ns: i64,
    rows: RequestBuilder,
    columnar: Vec<(WriteBatch, usize)>,
    errors: IngestErrors,
    record: usize,
}

impl Ctx<'_> {
    fn records(&mut self, r: &mut Reader<'_>, n: usize) -> Result<(), String> {
        for _ in 0..n {
            self.record += 1;
            match r.next()? {
                Val::Map(m) => {
                    let entries = r.map_entries(m)?;
                    self.record_entries(&entries);
                }
                other => {
                    self.errors.push(IngestError::new(
                        self.record,
                        format!("is {}, expected a map", other.type_name()),
                    ));
                    r.skip_rest_of(other)?;
                }
            }
        }
        Ok(())
    }

    fn record_entries(&mut self, entries: &[(&str, Reader<'_>)]) {
        let at = self.record;
        let result = if get(entries, "columns").is_some() {
            columnar(entries, self.database, self.now_ns, at).map(|b| self.columnar.push((b, at)))
        } else {
            row(entries, self.database, self.now_ns, at, &mut self.rows)
        };
        if let Err(e) = result {
            self.errors.push(e);
        }
    }
}

impl Reader<'_> {
    /// After `next()` returned `v`, skips the items of `v` if it is a container.
    fn skip_rest_of(&mut self, v: Val<'_>) -> Result<(), String> {
        let n = match v {
            Val::Array(n) => n,
            Val::Map(n) => n.saturating_mul(2),
            _ => 0,
        };
        for _ in 0..n {
            self.skip()?;
        }
        Ok(())
    }
}

fn measurement_of(entries: &[(&str, Reader<'_>)], at: usize) -> Result<String, IngestError> {
    let mut m = get(entries, "m")
        .ok_or_else(|| IngestError::new(at, "missing measurement \"m\""))?
        .clone();
    match m.next().map_err(|e| IngestError::new(at, e))? {
        Val::Str(s) => Ok(s.to_string()),
        Val::Int(i) => Ok(format!("measurement_{i}")),
        other => Err(IngestError::new(
            at,
            format!(
                "measurement \"m\" is {}, expected a string",
                other.type_name()
            ),
        )),
    }
}

/// The value of a tag given as any scalar.
fn tag_string(v: Val<'_>) -> Option<Cow<'_, str>> {
    match v {
        Val::Str(s) => Some(Cow::Borrowed(s)),
        Val::Int(i) => Some(Cow::Owned(i.to_string())),
        Val::UInt(u) => Some(Cow::Owned(u.to_string())),
        Val::Float(f) => Some(Cow::Owned(f.to_string())),
        Val::Bool(b) => Some(Cow::Owned(b.to_string())),
        _ => None,
    }
}

fn field_value(v: Val<'_>) -> Option<Value<'_>> {
    Some(match v {
        Val::Int(i) => Value::Integer(i),
        Val::UInt(u) => Value::Unsigned(u),
        Val::Float(f) => Value::Float(f),
        Val::Str(s) => Value::String(Cow::Borrowed(s)),
        Val::Bool(b) => Value::Boolean(b),
        _ => return None,
    })
}

fn row(
    entries: &[(&str, Reader<'_>)],
    database: &str,
    now_ns: i64,
    at: usize,
    rows: &mut RequestBuilder,
) -> Result<(), IngestError> {
    let err = |e: String| IngestError::new(at, e);
    let measurement = measurement_of(entries, at)?;
    let time = match get(entries, "t") {
        None => now_ns,
        Some(t) => match t.clone().next().map_err(err)? {
            Val::Nil => now_ns,
            v => {
                let unit = time_unit_nanos(val_as_f64(v).unwrap_or(0.0));
                time_to_nanos(v, unit).map_err(|e| IngestError::column(at, "t", e))?
            }
        },
    };
    let mut values: Vec<(Cow<'_, str>, Value<'_>)> = Vec::new();
    let mut host: Option<Cow<'_, str>> = None;
    if let Some(h) = get(entries, "h") {
        host = match h.clone().next().map_err(err)? {
            Val::Nil => None,
            Val::Str(s) => Some(Cow::Borrowed(s)),
            Val::Int(i) => Some(Cow::Owned(format!("host_{i}"))),
            other => {
                return Err(IngestError::column(
                    at,
                    "h",
                    format!("is {}, expected a string", other.type_name()),
                ))
            }
        };
    }
    if let Some(t) = get(entries, "tags") {
        let mut t = t.clone();
        match t.next().map_err(err)? {
            Val::Map(n) => {
                for (k, mut v) in t.map_entries(n).map_err(err)? {
                    let v = v.next().map_err(err)?;
                    if v == Val::Nil || (k == "host" && host.is_some()) {
                        continue;
                    }
                    let s = tag_string(v).ok_or_else(|| {
                        IngestError::column(
                            at,
                            k,
                            format!("tag is {}, expected a string", v.type_name()),
                        )
                    })?;
                    values.push((Cow::Borrowed(k), Value::Tag(s)));
                }
            }
            Val::Nil => {}
            other => {
                return Err(err(format!(
                    "\"tags\" is {}, expected a map",
                    other.type_name()
                )))
            }
        }
    }
    if let Some(h) = host {
        values.push((Cow::Borrowed("host"), Value::Tag(h)));
    }
    let fields_before = values.len();
    if let Some(f) = get(entries, "fields") {
        let mut f = f.clone();
        match f.next().map_err(err)? {
            Val::Map(n) => {
                for (k, mut v) in f.map_entries(n).map_err(err)? {
                    let v = v.next().map_err(err)?;
                    if v == Val::Nil {
                        continue;
                    }
                    let value = field_value(v).ok_or_else(|| {
                        IngestError::column(
                            at,
                            k,
                            format!("field is {}, expected a scalar", v.type_name()),
                        )
                    })?;
                    values.push((Cow::Borrowed(k), value));
                }
            }
            Val::Nil => {}
            other => {
                return Err(err(format!(
                    "\"fields\" is {}, expected a map",
                    other.type_name()
                )))
            }
        }
    }
    if let Some(f) = get(entries, "f") {
        let mut f = f.clone();
        match f.next().map_err(err)? {
            Val::Array(n) => {
                for i in 0..n {
                    let v = f.next().map_err(err)?;
                    let name = format!("field_{i}");
                    if v == Val::Nil {
                        continue;
                    }
                    let value = field_value(v).ok_or_else(|| {
                        IngestError::column(
                            at,
                            &name,
                            format!("field is {}, expected a scalar", v.type_name()),
                        )
                    })?;
                    values.push((Cow::Owned(name), value));
                }
            }
            other => {
                return Err(err(format!(
                    "\"f\" is {}, expected an array",
                    other.type_name()
                )))
            }
        }
    }
    if values.len() == fields_before {
        return Err(err("record has no fields".into()));
    }
    rows.table(database, &measurement, at)?
        .push_row(at, time, &values)
}

/// The type a columnar column decodes to, found by a first pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColType {
    Empty,
    Bool,
    Int,
    UInt,
    Float,
    Str,
}

fn column_type(mut r: Reader<'_>, n: usize, name: &str, at: usize) -> Result<ColType, IngestError> {
    let mut t = ColType::Empty;
    let mut negative = false;
    for _ in 0..n {
        let v = r.next().map_err(|e| IngestError::column(at, name, e))?;
        let this = match v {
            Val::Nil => continue,
            Val::Bool(_) => ColType::Bool,
            Val::Int(i) => {
                negative |= i < 0;
                ColType::Int
            }
            Val::UInt(_) => ColType::UInt,
            Val::Float(_) => ColType::Float,
            Val::Str(_) => ColType::Str,
            other => {
                return Err(IngestError::column(
                    at,
                    name,
                    format!("holds a {}, expected scalars", other.type_name()),
                ))
            }
        };
        t = match (t, this) {
            (ColType::Empty, x) => x,
            (a, b) if a == b => a,
            // Numbers widen: ints mixed with floats are floats, and ints
            // above i64::MAX make the column unsigned.
            (ColType::Int | ColType::UInt | ColType::Float, ColType::Float)
            | (ColType::Float, ColType::Int | ColType::UInt) => ColType::Float,
            (ColType::Int, ColType::UInt) | (ColType::UInt, ColType::Int) => ColType::UInt,
            (a, b) => {
                return Err(IngestError::column(
                    at,
                    name,
                    format!("mixes {a:?} and {b:?} values").to_lowercase(),
                ))
            }
        };
    }
    if t == ColType::UInt && negative {
        return Err(IngestError::column(
            at,
            name,
            "mixes negative integers and integers above 2^63-1",
        ));
    }
    Ok(t)
}

fn columnar(
    entries: &[(&str, Reader<'_>)],
    database: &str,
    now_ns: i64,
    at: usize,
) -> Result<WriteBatch, IngestError> {
    let err = |e: String| IngestError::new(at, e);
    let measurement = measurement_of(entries, at)?;
    let table = TableKey::new(database, &measurement).map_err(|e| err(e.to_string()))?;
    let mut columns_r = get(entries, "columns").expect("checked by caller").clone();
    let columns = match columns_r.next().map_err(err)? {
        Val::Map(n) if n > 0 => columns_r.map_entries(n).map_err(err)?,
        Val::Map(_) => return Err(err("\"columns\" is empty".into())),
        other => {
            return Err(err(format!(
                "\"columns\" is {}, expected a map",
                other.type_name()
            )))
        }
    };
    let tag_keys: Option<Vec<&str>> = match get(entries, "tag_keys") {
        None => None,
        Some(t) => {
            let mut t = t.clone();
            match t.next().map_err(err)? {
                Val::Array(n) => {
                    let mut keys = Vec::with_capacity(n.min(t.remaining()));
                    for _ in 0..n {
                        match t.next().map_err(err)? {
                            Val::Str(s) => keys.push(s),
                            other => {
                                return Err(err(format!(
                                    "\"tag_keys\" holds a {}, expected strings",
                                    other.type_name()
                                )))
                            }
                        }
                    }
                    Some(keys)
                }
                Val::Nil => None,
                other => {
                    return Err(err(format!(
                        "\"tag_keys\" is {}, expected an array",
                        other.type_name()
                    )))
                }
            }
        }
    };
    // Every column must be an array of the same length.
    let mut len: Option<(usize, &str)> = None;
    let mut arrays = Vec::with_capacity(columns.len());
    for (name, r) in &columns {
        let mut r = r.clone();
        let n = match r.next().map_err(|e| IngestError::column(at, name, e))? {
            Val::Array(n) => n,
            other => {
                return Err(IngestError::column(
                    at,
                    name,
                    format!("is {}, expected an array", other.type_name()),
                ))
            }
        };
        match len {
            None => len = Some((n, name)),
            Some((l, first)) if l != n => {
                return Err(IngestError::column(
                    at,
                    name,
                    format!("has {n} values but {first:?} has {l}"),
                ))
            }
            Some(_) => {}
        }
        arrays.push((*name, r, n));
    }
    let rows = len.map_or(0, |(n, _)| n);
    if rows == 0 {
        return Err(err("columns hold no rows".into()));
    }
    let mut fields = vec![ColumnKind::Time.field(TIME_COLUMN)];
    let mut out: Vec<ArrayRef> = vec![];
    let mut time: Option<ArrayRef> = None;
    for (name, r, n) in arrays {
        if name == TIME_COLUMN {
            time = Some(time_column(r, n, at)?);
            continue;
        }
        validate_column_name(name).map_err(|e| IngestError::column(at, name, e.to_string()))?;
        let t = column_type(r.clone(), n, name, at)?;
        let is_tag = match &tag_keys {
            Some(keys) => keys.contains(&name),
            None => t == ColType::Str,
        };
        let (kind, array) = fill_column(r, n, t, is_tag, name, at)?;
        let Some(kind) = kind else { continue }; // all nil: no column
        fields.push(kind.field(name));
        out.push(array);
    }
    if out.is_empty() {
        return Err(err("record has no fields".into()));
    }
    let time = time.unwrap_or_else(|| {
        Arc::new(TimestampNanosecondArray::from(vec![now_ns; rows]).with_timezone(TIME_ZONE))
    });
    out.insert(0, time);
    let batch =
        RecordBatch::try_new(Arc::new(Schema::new(fields)), out).map_err(|e| err(e.to_string()))?;
    WriteBatch::try_new(table, batch).map_err(|e| err(e.to_string()))
}

fn time_column(mut r: Reader<'_>, n: usize, at: usize) -> Result<ArrayRef, IngestError> {
    let terr = |e: String| IngestError::column(at, TIME_COLUMN, e);
    let mut out = Vec::with_capacity(n.min(r.remaining()));
    let mut unit = None;
    for _ in 0..n {
        let v = r.next().map_err(terr)?;
        let u = *unit.get_or_insert_with(|| time_unit_nanos(val_as_f64(v).unwrap_or(0.0)));
        out.push(time_to_nanos(v, u).map_err(terr)?);
    }
    Ok(Arc::new(
        TimestampNanosecondArray::from(out).with_timezone(TIME_ZONE),
    ))
}

/// Second pass: decodes a column of type `t` into its Arrow array.
fn fill_column(
    mut r: Reader<'_>,
    n: usize,
    t: ColType,
    is_tag: bool,
    name: &str,
    at: usize,
) -> Result<(Option<ColumnKind>, ArrayRef), IngestError> {
    let e = |e: String| IngestError::column(at, name, e);
    if is_tag {
        let mut b = StringDictionaryBuilder::<Int32Type>::new();
        for _ in 0..n {
            match r.next().map_err(e)? {
                Val::Nil => b.append_null(),
                v => {
                    let s =
                        tag_string(v).ok_or_else(|| e(format!("tag holds a {}", v.type_name())))?;
                    b.append_value(s.as_ref());
                }
            }
        }
        return Ok((Some(ColumnKind::Tag), Arc::new(b.finish())));
    }
    Ok(match t {
        ColType::Empty => (None, Arc::new(Float64Builder::new().finish())),
        ColType::Float => {
            let mut b = Float64Builder::with_capacity(n);
            for _ in 0..n {
                b.append_option(val_as_f64(r.next().map_err(e)?));
            }
            (
                Some(ColumnKind::Field(FieldType::Float)),
                Arc::new(b.finish()),
            )
        }
        ColType::Int => {
            let mut b = Int64Builder::with_capacity(n);
            for _ in 0..n {
                match r.next().map_err(e)? {
                    Val::Int(i) => b.append_value(i),
                    _ => b.append_null(),
                }
            }
            (
                Some(ColumnKind::Field(FieldType::Integer)),
                Arc::new(b.finish()),
            )
        }
        ColType::UInt => {
            let mut b = UInt64Builder::with_capacity(n);
            for _ in 0..n {
                match r.next().map_err(e)? {
                    Val::Int(i) => b.append_value(i as u64),
                    Val::UInt(u) => b.append_value(u),
                    _ => b.append_null(),
                }
            }
            (
                Some(ColumnKind::Field(FieldType::Unsigned)),
                Arc::new(b.finish()),
            )
        }
        ColType::Bool => {
            let mut b = BooleanBuilder::with_capacity(n);
            for _ in 0..n {
                match r.next().map_err(e)? {
                    Val::Bool(x) => b.append_value(x),
                    _ => b.append_null(),
                }
            }
            (
                Some(ColumnKind::Field(FieldType::Boolean)),
                Arc::new(b.finish()),
            )
        }
        ColType::Str => {
            let mut b = StringBuilder::new();
            for _ in 0..n {
                match r.next().map_err(e)? {
                    Val::Str(s) => b.append_value(s),
                    _ => b.append_null(),
                }
            }
            (
                Some(ColumnKind::Field(FieldType::String)),
                Arc::new(b.finish()),
            )
        }
    })
}
