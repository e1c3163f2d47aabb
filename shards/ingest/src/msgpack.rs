//! Arc's MessagePack ingest formats.
//!
//! * **Columnar**: `{"m": "cpu", "columns": {"time": [...], "host": [...],
//!   "usage": [...]}}`, optionally `"tag_keys": ["host"]`. Columns decode
//!   straight into Arrow arrays; no row maps are built. Without `tag_keys`,
//!   string columns are tags and all others fields; with it, exactly the
//!   listed columns are tags and other string columns are string fields.
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
//!
//! Two decoders share these rules. The general one checks each record's map
//! whole (every string as UTF-8) before decoding it, then gives each column
//! a pass to find its type and one to fill it; it is the one that reports
//! errors. The fast one ([`parse`] tries it first) decodes a record's columns
//! where they stand, in one typed loop per column, and gives up on anything
//! unusual or wrong, leaving the body to the general decoder: it must only
//! ever accept what the general decoder accepts, and build the same batches
//! (the tests below check both on the same bodies).

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, StringDictionaryBuilder,
    UInt64Builder,
};
use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, DictionaryArray, Float64Array, Int32Array, Int64Array, RecordBatch,
    TimestampNanosecondArray,
};
use arrow_schema::{Field, Schema};
use rmp::Marker;
use tidemark_shards::schema::{validate_column_name, TIME_COLUMN, TIME_ZONE};
use tidemark_shards::{ColumnKind, FieldType, TableKey, WriteBatch};

use crate::builder::{push_reserved, validity, Decoded, RequestBuilder, Value};
use crate::error::{IngestError, IngestErrors, Unit};
use tidemark_shards::tags::TagDict;

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

    /// The next `N` bytes, as an array for `from_be_bytes`.
    #[inline]
    fn be<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let c = self
            .b
            .get(self.pos..)
            .and_then(|s| s.first_chunk::<N>())
            .ok_or_else(|| "truncated MessagePack data".to_string())?;
        self.pos += N;
        Ok(*c)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.be::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.be()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.be()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.be()?))
    }

    fn next(&mut self) -> Result<Val<'a>, String> {
        let m = Marker::from_u8(self.take(1)?[0]);
        Ok(match m {
            Marker::Null => Val::Nil,
            Marker::True => Val::Bool(true),
            Marker::False => Val::Bool(false),
            Marker::FixPos(n) => Val::Int(n as i64),
            Marker::FixNeg(n) => Val::Int(n as i64),
            Marker::U8 => Val::Int(self.u8()? as i64),
            Marker::U16 => Val::Int(self.u16()? as i64),
            Marker::U32 => Val::Int(self.u32()? as i64),
            Marker::U64 => {
                let v = self.u64()?;
                i64::try_from(v).map_or(Val::UInt(v), Val::Int)
            }
            Marker::I8 => Val::Int(self.u8()? as i8 as i64),
            Marker::I16 => Val::Int(self.u16()? as i16 as i64),
            Marker::I32 => Val::Int(self.u32()? as i32 as i64),
            Marker::I64 => Val::Int(self.u64()? as i64),
            Marker::F32 => Val::Float(f32::from_bits(self.u32()?) as f64),
            Marker::F64 => Val::Float(f64::from_bits(self.u64()?)),
            Marker::FixStr(n) => self.str(n as usize)?,
            Marker::Str8 => {
                let n = self.u8()? as usize;
                self.str(n)?
            }
            Marker::Str16 => {
                let n = self.u16()? as usize;
                self.str(n)?
            }
            Marker::Str32 => {
                let n = self.u32()? as usize;
                self.str(n)?
            }
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let n = match m {
                    Marker::Bin8 => self.u8()? as usize,
                    Marker::Bin16 => self.u16()? as usize,
                    _ => self.u32()? as usize,
                };
                self.take(n)?;
                Val::Bin
            }
            Marker::FixArray(n) => Val::Array(n as usize),
            Marker::Array16 => Val::Array(self.u16()? as usize),
            Marker::Array32 => Val::Array(self.u32()? as usize),
            Marker::FixMap(n) => Val::Map(n as usize),
            Marker::Map16 => Val::Map(self.u16()? as usize),
            Marker::Map32 => Val::Map(self.u32()? as usize),
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
                    Marker::Ext8 => self.u8()? as usize,
                    Marker::Ext16 => self.u16()? as usize,
                    _ => self.u32()? as usize,
                };
                self.take(n + 1)?;
                Val::Ext
            }
            Marker::Reserved => return Err("invalid MessagePack marker 0xc1".into()),
        })
    }

    /// `next()`, with the markers of time and float columns decoded first.
    #[inline]
    fn num(&mut self) -> Result<Val<'a>, String> {
        let p = self.pos;
        let chunk = |b: &'a [u8]| b.get(p + 1..).and_then(|s| s.first_chunk::<8>());
        match self.b.get(p) {
            Some(&m) if m < 0x80 => {
                self.pos = p + 1;
                return Ok(Val::Int(m as i64));
            }
            Some(0xcb) => {
                if let Some(c) = chunk(self.b) {
                    self.pos = p + 9;
                    return Ok(Val::Float(f64::from_bits(u64::from_be_bytes(*c))));
                }
            }
            Some(0xcf) => {
                if let Some(c) = chunk(self.b) {
                    self.pos = p + 9;
                    let v = u64::from_be_bytes(*c);
                    return Ok(i64::try_from(v).map_or(Val::UInt(v), Val::Int));
                }
            }
            Some(0xd3) => {
                if let Some(c) = chunk(self.b) {
                    self.pos = p + 9;
                    return Ok(Val::Int(i64::from_be_bytes(*c)));
                }
            }
            _ => {}
        }
        self.next()
    }

    /// Reads a nil if one is next.
    #[inline]
    fn nil(&mut self) -> bool {
        let nil = self.b.get(self.pos) == Some(&0xc0);
        self.pos += nil as usize;
        nil
    }

    /// Reads a string's bytes, not checked to be UTF-8; `None` (and the
    /// cursor unmoved) if the next value is not a string or is truncated.
    #[inline]
    fn raw_str(&mut self) -> Option<&'a [u8]> {
        let (b, p) = (self.b, self.pos);
        let (len, head) = match *b.get(p)? {
            m @ 0xa0..=0xbf => ((m & 0x1f) as usize, 1),
            0xd9 => (*b.get(p + 1)? as usize, 2),
            0xda => (
                u16::from_be_bytes(*b.get(p + 1..)?.first_chunk()?) as usize,
                3,
            ),
            0xdb => (
                u32::from_be_bytes(*b.get(p + 1..)?.first_chunk()?) as usize,
                5,
            ),
            _ => return None,
        };
        let s = b.get(p + head..)?.get(..len)?;
        self.pos = p + head + len;
        Some(s)
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
    match parse_fast(body, database, now_ns, false) {
        Some(decoded) => Ok(decoded),
        None => parse_general(body, database, now_ns),
    }
}

/// The general path: every record's map is read (and checked) whole, then
/// decoded; columnar columns get a type pass and a fill pass. It is the
/// reference the fast path must agree with, and the source of every error.
fn parse_general(body: &[u8], database: &str, now_ns: i64) -> Result<Decoded, IngestErrors> {
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
        Val::Int(i) => Value::integer(i),
        Val::UInt(u) => Value::unsigned(u),
        Val::Float(f) => Value::float(f),
        Val::Str(s) => Value::string(Cow::Borrowed(s)),
        Val::Bool(b) => Value::boolean(b),
        _ => return None,
    })
}

/// The time of the row record whose entries are `entries`: its "t" (a
/// number, in the unit its magnitude tells), or `now_ns` when "t" is
/// absent or nil.
fn record_time(entries: &[(&str, Reader<'_>)], now_ns: i64, at: usize) -> Result<i64, IngestError> {
    let Some(t) = get(entries, "t") else {
        return Ok(now_ns);
    };
    match t.clone().next().map_err(|e| IngestError::new(at, e))? {
        Val::Nil => Ok(now_ns),
        v => {
            let unit = time_unit_nanos(val_as_f64(v).unwrap_or(0.0));
            time_to_nanos(v, unit).map_err(|e| IngestError::column(at, "t", e))
        }
    }
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
    let time = record_time(entries, now_ns, at)?;
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
                    values.push((Cow::Borrowed(k), Value::tag(s)));
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
        values.push((Cow::Borrowed("host"), Value::tag(h)));
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

/// A columnar record's `tag_keys`: `None` when absent or nil.
fn tag_keys_of<'a>(
    entries: &[(&'a str, Reader<'a>)],
    at: usize,
) -> Result<Option<Vec<&'a str>>, IngestError> {
    let err = |e: String| IngestError::new(at, e);
    let Some(t) = get(entries, "tag_keys") else {
        return Ok(None);
    };
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
            Ok(Some(keys))
        }
        Val::Nil => Ok(None),
        other => Err(err(format!(
            "\"tag_keys\" is {}, expected an array",
            other.type_name()
        ))),
    }
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
    let tag_keys = tag_keys_of(entries, at)?;
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
    for (name, mut r, n) in arrays {
        if name == TIME_COLUMN {
            time = Some(time_column(&mut r, n, at)?);
            continue;
        }
        validate_column_name(name).map_err(|e| IngestError::column(at, name, e.to_string()))?;
        let t = column_type(r.clone(), n, name, at)?;
        let is_tag = match &tag_keys {
            Some(keys) => keys.contains(&name),
            None => t == ColType::Str,
        };
        let (kind, array) = fill_column(&mut r, n, t, is_tag, name, at)?;
        let Some(kind) = kind else { continue }; // all nil: no column
        fields.push(kind.field(name));
        out.push(array);
    }
    columnar_batch(table, fields, out, time, rows, now_ns, at)
}

/// A columnar record's batch from its decoded columns (`fields` starts with
/// the time column's; `time` is `None` when the record has no time column).
fn columnar_batch(
    table: TableKey,
    fields: Vec<Field>,
    mut out: Vec<ArrayRef>,
    time: Option<ArrayRef>,
    rows: usize,
    now_ns: i64,
    at: usize,
) -> Result<WriteBatch, IngestError> {
    let err = |e: String| IngestError::new(at, e);
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

fn time_column(r: &mut Reader<'_>, n: usize, at: usize) -> Result<ArrayRef, IngestError> {
    let terr = |e: String| IngestError::column(at, TIME_COLUMN, e);
    let mut out = Vec::with_capacity(n.min(r.remaining()));
    let mut unit = None;
    for _ in 0..n {
        let v = r.num().map_err(terr)?;
        let u = *unit.get_or_insert_with(|| time_unit_nanos(val_as_f64(v).unwrap_or(0.0)));
        out.push(time_to_nanos(v, u).map_err(terr)?);
    }
    Ok(Arc::new(
        TimestampNanosecondArray::from(out).with_timezone(TIME_ZONE),
    ))
}

/// Second pass: decodes a column of type `t` into its Arrow array.
fn fill_column(
    r: &mut Reader<'_>,
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
        ColType::Empty => {
            // All nil (the type pass checked): read past them.
            for _ in 0..n {
                r.next().map_err(e)?;
            }
            (None, Arc::new(Float64Builder::new().finish()))
        }
        ColType::Float => {
            let mut b = Float64Builder::with_capacity(n);
            for _ in 0..n {
                b.append_option(val_as_f64(r.num().map_err(e)?));
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

// ---- the fast path ----
//
// `parse_fast` decodes a body in one walk: a record's "columns" map is
// decoded where it stands instead of being skipped first, and a column whose
// values all have the type of its first non-nil value is filled in a single
// typed loop. It returns `None` on anything it does not handle and on every
// error; `parse` then runs the general path, which gives the errors. So the
// fast path only has to agree with the general path on bodies it accepts:
// everything it accepts it has read whole, every string checked as UTF-8
// (the general path fails the body on any string that is not), and it builds
// the same arrays.

/// The decoding state of `parse_fast`.
struct Fast<'d, 'a> {
    database: &'d str,
    now_ns: i64,
    rows: RequestBuilder,
    columnar: Vec<(WriteBatch, usize)>,
    record: usize,
    dict: TagDict,
    /// A row record's tags and fields, read straight from the body
    /// ([`Fast::record`]); the list is reused from record to record.
    values: Vec<(Cow<'a, str>, Value<'a>)>,
    /// Tests: decode every column the general way (type pass, fill pass).
    general_columns: bool,
}

/// A columnar record's "columns" decoded, before its measurement is known.
struct Columns {
    fields: Vec<Field>,
    out: Vec<ArrayRef>,
    time: Option<ArrayRef>,
    rows: usize,
}

fn parse_fast(body: &[u8], database: &str, now_ns: i64, general_columns: bool) -> Option<Decoded> {
    let mut f = Fast {
        database,
        now_ns,
        rows: RequestBuilder::new("record"),
        columnar: Vec::new(),
        record: 0,
        dict: TagDict::default(),
        values: Vec::new(),
        general_columns,
    };
    let mut r = Reader { b: body, pos: 0 };
    match r.next().ok()? {
        Val::Array(n) => f.records(&mut r, n)?,
        Val::Map(n) => f.record(&mut r, n, true)?,
        _ => return None,
    }
    if r.pos != body.len() {
        return None;
    }
    let mut decoded = f.rows.finish();
    for (batch, at) in f.columnar {
        decoded.push(batch, at);
    }
    (!decoded.batches.is_empty()).then_some(decoded)
}

/// What [`Fast::record`] has read of a record as a row record.
#[derive(Default)]
struct RowParts {
    /// "tags" and "fields" were read into `Fast::values` (the first of
    /// each, as `get` finds them); fields start at `fields_from`.
    tags: bool,
    fields: bool,
    fields_from: usize,
    /// Something left to `row`, which reads the record from its entries:
    /// "h" or "f", "fields" before "tags", a tag that is not a string, a
    /// malformed map.
    declined: bool,
}

impl<'a> Fast<'_, 'a> {
    fn records(&mut self, r: &mut Reader<'a>, n: usize) -> Option<()> {
        for _ in 0..n {
            self.record += 1;
            self.rows.progress(r.pos, r.b.len());
            match r.next().ok()? {
                Val::Map(m) => self.record(r, m, false)?,
                _ => return None,
            }
        }
        Some(())
    }

    /// A record's map of `n` entries; with `top`, the body's map, which a
    /// "batch" key makes a wrapper of records rather than a record.
    ///
    /// A row record's "tags" and "fields" are read once, into
    /// [`Fast::values`], as the map is read: no list of entries per map, no
    /// value read twice (skipped, then decoded), and of a record's
    /// allocations only its list of entries is left.
    fn record(&mut self, r: &mut Reader<'a>, n: usize, top: bool) -> Option<()> {
        let mut entries = Vec::with_capacity(n.min(64));
        // The first "columns" (as `get` finds it): its entry and whether
        // "tag_keys" came before it, then the columns.
        let mut columns: Option<(usize, bool, Columns)> = None;
        let mut batch = false;
        let mut parts = RowParts::default();
        self.values.clear();
        for _ in 0..n {
            let Val::Str(key) = r.next().ok()? else {
                return None;
            };
            entries.push((key, r.clone()));
            if top && !batch && key == "batch" {
                batch = true;
                let Val::Array(m) = r.next().ok()? else {
                    return None;
                };
                self.records(r, m)?;
            } else if batch {
                r.skip().ok()?;
            } else if columns.is_none() && key == "columns" {
                let tag_keys = tag_keys_of(&entries, 0).ok()?;
                let known = get(&entries, "tag_keys").is_some();
                let c = self.columns(r, tag_keys.as_deref())?;
                columns = Some((entries.len() - 1, known, c));
            } else if (key == "tags" && !parts.tags) || (key == "fields" && !parts.fields) {
                let is_tags = key == "tags";
                if is_tags {
                    parts.tags = true;
                    parts.declined |= parts.fields;
                } else {
                    parts.fields = true;
                    parts.fields_from = self.values.len();
                }
                let mut v = r.clone();
                let read = if parts.declined {
                    None
                } else if is_tags {
                    row_tags(&mut self.values, &mut v)
                } else {
                    row_fields(&mut self.values, &mut v)
                };
                match read {
                    Some(()) => *r = v,
                    None => {
                        parts.declined = true;
                        r.skip().ok()?;
                    }
                }
            } else {
                parts.declined |= key == "h" || key == "f";
                r.skip().ok()?;
            }
        }
        if batch {
            return Some(());
        }
        if top {
            self.record = 1;
        }
        let at = self.record;
        let Some((i, known, mut c)) = columns else {
            if parts.declined {
                return row(&entries, self.database, self.now_ns, at, &mut self.rows).ok();
            }
            if !parts.fields || self.values.len() == parts.fields_from {
                return None;
            }
            return self
                .push_row(&entries, at)
                .or_else(|| row(&entries, self.database, self.now_ns, at, &mut self.rows).ok());
        };
        // "tag_keys" after "columns": decode the columns again with them.
        if !known {
            if let Some(keys) = tag_keys_of(&entries, at).ok()? {
                c = self.columns(&mut entries[i].1.clone(), Some(keys.as_slice()))?;
            }
        }
        let measurement = measurement_of(&entries, at).ok()?;
        let table = TableKey::new(self.database, &measurement).ok()?;
        let batch = columnar_batch(table, c.fields, c.out, c.time, c.rows, self.now_ns, at).ok()?;
        self.columnar.push((batch, at));
        Some(())
    }

    /// Appends the row record whose entries are `entries` and whose tags
    /// and fields are in [`Fast::values`] (`row` does the same from the
    /// entries alone); `None`, having appended nothing, for a measurement
    /// that is not a string or anything wrong.
    fn push_row(&mut self, entries: &[(&'a str, Reader<'a>)], at: usize) -> Option<()> {
        let Val::Str(measurement) = get(entries, "m")?.clone().next().ok()? else {
            return None;
        };
        let time = record_time(entries, self.now_ns, at).ok()?;
        self.rows
            .table(self.database, measurement, at)
            .ok()?
            .push_row(at, time, &self.values)
            .ok()
    }

    /// Decodes a "columns" map (`columnar` does the same in several passes).
    fn columns(&mut self, r: &mut Reader<'_>, tag_keys: Option<&[&str]>) -> Option<Columns> {
        let Val::Map(n) = r.next().ok()? else {
            return None;
        };
        let mut c = Columns {
            fields: vec![ColumnKind::Time.field(TIME_COLUMN)],
            out: Vec::with_capacity(n.min(r.remaining())),
            time: None,
            rows: 0,
        };
        let mut len = None;
        for _ in 0..n {
            let Val::Str(name) = r.next().ok()? else {
                return None;
            };
            let Val::Array(n) = r.next().ok()? else {
                return None;
            };
            // Every value takes a byte at least: more values than bytes left
            // is truncated, and must not size an allocation.
            if *len.get_or_insert(n) != n || n > r.remaining() {
                return None;
            }
            if name == TIME_COLUMN {
                c.time = Some(time_column(r, n, 0).ok()?);
                continue;
            }
            validate_column_name(name).ok()?;
            let (kind, array) = self.column(r, n, name, tag_keys)?;
            let Some(kind) = kind else { continue }; // all nil: no column
            c.fields.push(kind.field(name));
            c.out.push(array);
        }
        c.rows = len.unwrap_or(0);
        (c.rows > 0).then_some(c)
    }

    /// One column of `n` values other than the time: a typed loop for the
    /// type of its first non-nil value, else (or if a later value does not
    /// fit) the general type and fill passes.
    fn column(
        &mut self,
        r: &mut Reader<'_>,
        n: usize,
        name: &str,
        tag_keys: Option<&[&str]>,
    ) -> Option<(Option<ColumnKind>, ArrayRef)> {
        let listed = tag_keys.map(|keys| keys.contains(&name));
        if !self.general_columns {
            // Nils take one byte each, so the first byte that is not a nil
            // marker is the first non-nil value's marker.
            let rest = r.b.get(r.pos..).unwrap_or_default();
            let first = rest.iter().take(n).find(|&&m| m != 0xc0).copied();
            let fast = match (first, listed) {
                // Without tag_keys, string columns are tags.
                (Some(0xa0..=0xbf | 0xd9..=0xdb), None | Some(true)) => {
                    tag_column(&mut self.dict, r, n).map(|a| (ColumnKind::Tag, a))
                }
                (Some(0xa0..=0xbf | 0xd9..=0xdb), Some(false)) => {
                    str_column(r, n).map(|a| (ColumnKind::Field(FieldType::String), a))
                }
                (Some(0xca | 0xcb), None | Some(false)) => {
                    float_column(r, n).map(|a| (ColumnKind::Field(FieldType::Float), a))
                }
                (Some(0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff), None | Some(false)) => {
                    int_column(r, n).map(|a| (ColumnKind::Field(FieldType::Integer), a))
                }
                (Some(0xc2 | 0xc3), None | Some(false)) => {
                    bool_column(r, n).map(|a| (ColumnKind::Field(FieldType::Boolean), a))
                }
                _ => None,
            };
            if let Some((kind, array)) = fast {
                return Some((Some(kind), array));
            }
        }
        let t = column_type(r.clone(), n, name, 0).ok()?;
        let is_tag = listed.unwrap_or(t == ColType::Str);
        fill_column(r, n, t, is_tag, name, 0).ok()
    }
}

/// `s` as a `str`: ASCII, as names and tags almost always are, checked
/// inline; anything else by `str::from_utf8`.
#[inline]
fn utf8(s: &[u8]) -> Option<&str> {
    if s.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(s) })
    } else {
        std::str::from_utf8(s).ok()
    }
}

/// The length of the map that comes next, 0 for a nil; `None` for
/// anything else.
#[inline]
fn map_len_or_nil(r: &mut Reader<'_>) -> Option<usize> {
    match r.next().ok()? {
        Val::Map(n) => Some(n),
        Val::Nil => Some(0),
        _ => None,
    }
}

/// A row record's "tags" map (or nil) into `values`; `None` for anything
/// `row` would reject or take otherwise (a tag that is not a string).
#[inline]
fn row_tags<'a>(values: &mut Vec<(Cow<'a, str>, Value<'a>)>, r: &mut Reader<'a>) -> Option<()> {
    let n = map_len_or_nil(r)?;
    for _ in 0..n {
        let key = utf8(r.raw_str()?)?;
        if r.nil() {
            continue;
        }
        let value = utf8(r.raw_str()?)?;
        values.reserve(1);
        push_reserved(values, Cow::Borrowed(key), Value::tag(Cow::Borrowed(value)));
    }
    Some(())
}

/// A row record's "fields" map (or nil) into `values`; `None` for anything
/// `row` would reject.
#[inline]
fn row_fields<'a>(values: &mut Vec<(Cow<'a, str>, Value<'a>)>, r: &mut Reader<'a>) -> Option<()> {
    let n = map_len_or_nil(r)?;
    for _ in 0..n {
        let key = Cow::Borrowed(utf8(r.raw_str()?)?);
        values.reserve(1);
        match r.num().ok()? {
            Val::Nil => {}
            Val::Float(x) => push_reserved(values, key, Value::float(x)),
            Val::Int(x) => push_reserved(values, key, Value::integer(x)),
            v => push_reserved(values, key, field_value(v)?),
        }
    }
    Some(())
}

// The typed loops read a copy of the cursor and move the caller's only when
// the whole column fits, so that the general passes can start over.

/// A float column: floats, integers (as `val_as_f64` widens them) and nils.
fn float_column(r: &mut Reader<'_>, n: usize) -> Option<ArrayRef> {
    let mut c = r.clone();
    // A Vec, not a builder: the array builders' appends do not inline.
    let mut values = Vec::with_capacity(n);
    let mut null_at = Vec::new();
    for i in 0..n {
        values.push(match c.num().ok()? {
            Val::Float(f) => f,
            Val::Int(x) => x as f64,
            Val::UInt(x) => x as f64,
            Val::Nil => {
                null_at.push(i);
                0.0
            }
            _ => return None,
        });
    }
    let array = Float64Array::try_new(values.into(), validity(n, &null_at).finish()).ok()?;
    *r = c;
    Some(Arc::new(array))
}

/// An integer column: integers that fit i64, and nils.
fn int_column(r: &mut Reader<'_>, n: usize) -> Option<ArrayRef> {
    let mut c = r.clone();
    let mut values = Vec::with_capacity(n);
    let mut null_at = Vec::new();
    for i in 0..n {
        values.push(match c.num().ok()? {
            Val::Int(v) => v,
            Val::Nil => {
                null_at.push(i);
                0
            }
            _ => return None,
        });
    }
    let array = Int64Array::try_new(values.into(), validity(n, &null_at).finish()).ok()?;
    *r = c;
    Some(Arc::new(array))
}

fn bool_column(r: &mut Reader<'_>, n: usize) -> Option<ArrayRef> {
    let mut c = r.clone();
    let mut b = BooleanBuilder::with_capacity(n);
    for _ in 0..n {
        match c.next().ok()? {
            Val::Bool(x) => b.append_value(x),
            Val::Nil => b.append_null(),
            _ => return None,
        }
    }
    *r = c;
    Some(Arc::new(b.finish()))
}

/// A string field column: strings and nils.
fn str_column(r: &mut Reader<'_>, n: usize) -> Option<ArrayRef> {
    let mut c = r.clone();
    let mut b = StringBuilder::new();
    for _ in 0..n {
        if c.nil() {
            b.append_null();
        } else {
            b.append_value(std::str::from_utf8(c.raw_str()?).ok()?);
        }
    }
    *r = c;
    Some(Arc::new(b.finish()))
}

/// Decodes `n` tag values (strings and nils) into the same
/// `DictionaryArray<Int32Type>` as `StringDictionaryBuilder`: values unique,
/// in order of first appearance, nils as null keys; `dict` is scratch
/// space reused across columns.
fn tag_column(dict: &mut TagDict, r: &mut Reader<'_>, n: usize) -> Option<ArrayRef> {
    dict.clear();
    let mut c = r.clone();
    let mut keys = Vec::with_capacity(n);
    let mut null_at = Vec::new();
    for i in 0..n {
        if c.nil() {
            keys.push(0);
            null_at.push(i);
        } else {
            keys.push(dict.key(c.raw_str()?)?);
        }
    }
    let keys = Int32Array::try_new(keys.into(), validity(n, &null_at).finish()).ok()?;
    let values: ArrayRef = Arc::new(dict.values());
    debug_assert!(DictionaryArray::<Int32Type>::try_new(keys.clone(), values.clone()).is_ok());
    // SAFETY: `try_new` would succeed: every non-null key was given by
    // `dict.key`, so it indexes the dictionary's values (its check of every
    // key was 1% of a node's CPU under columnar ingest).
    let dict = unsafe { DictionaryArray::<Int32Type>::new_unchecked(keys, values) };
    *r = c;
    Some(Arc::new(dict))
}

/// The test encoder of MessagePack bodies, shared with the integration tests.
#[cfg(test)]
#[path = "../tests/common/mp.rs"]
mod test_mp;

#[cfg(test)]
mod tests {
    //! The fast path against the general one: on every body, `parse` gives
    //! what the general path gives, and the fast path accepts what it should.
    #![allow(clippy::unwrap_used)]

    use super::*;

    use super::test_mp::{bytes, map, s, M};

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn same(a: &Decoded, b: &Decoded) -> bool {
        a.batches == b.batches
            && a.batches.iter().all(|wb| {
                wb.batch()
                    .schema()
                    .fields()
                    .iter()
                    .all(|f| a.first_at(wb.table(), f.name()) == b.first_at(wb.table(), f.name()))
            })
    }

    /// Checks `parse` against the general path on `body`, and the fast path
    /// (typed loops and general columns) whenever it accepts; returns
    /// whether the typed fast path accepted.
    fn check(body: &[u8]) -> bool {
        check_both(body).1
    }

    /// `check`, asserting that the fast path accepts what the general one
    /// does.
    fn check_fast(body: &[u8]) -> bool {
        let (general, fast) = check_both(body);
        assert_eq!(general, fast, "fast path gave up on {body:02x?}");
        fast
    }

    /// `check`, returning whether the general and the fast path accepted.
    fn check_both(body: &[u8]) -> (bool, bool) {
        let general = parse_general(body, "db", NOW);
        let fast = parse_fast(body, "db", NOW, false);
        let fast_general = parse_fast(body, "db", NOW, true);
        let public = parse(body, "db", NOW);
        match &general {
            Ok(g) => {
                assert!(same(public.as_ref().unwrap(), g));
                for f in [&fast, &fast_general].into_iter().flatten() {
                    assert!(same(f, g), "fast path differs on {body:02x?}");
                }
            }
            Err(e) => {
                assert_eq!(public.as_ref().unwrap_err(), e);
                assert!(fast.is_none() && fast_general.is_none(), "{e}");
            }
        }
        assert_eq!(fast.is_some(), fast_general.is_some());
        (general.is_ok(), fast.is_some())
    }

    /// `check`s every truncation of `body` (none may decode) and `body`
    /// with each byte replaced by a few interesting values; returns how
    /// many of those the fast path accepted.
    fn check_truncated_and_mutated(body: &[u8]) -> usize {
        for end in 0..body.len() {
            assert!(!check(&body[..end]));
        }
        let mut accepted = 0;
        for at in 0..body.len() {
            for v in [0x00, 0x7f, 0xc0, 0xc1, 0xcb, 0xd9, 0xff, body[at] ^ 1] {
                let mut b = body.to_vec();
                b[at] = v;
                accepted += check_fast(&b) as usize;
            }
        }
        accepted
    }

    fn columnar_body(columns: Vec<(&str, M)>) -> Vec<u8> {
        bytes(&map(vec![("m", s("cpu")), ("columns", map(columns))]))
    }

    /// The bench's shape: ms times, tag columns (one with more distinct
    /// values than the tag cache has slots), float columns.
    fn bench_like(rows: usize) -> M {
        let tag = |k: usize| {
            M::A(
                (0..rows)
                    .map(|i| M::S(format!("v{}_{}", k, i % (3 + k * 1000))))
                    .collect(),
            )
        };
        let mut cols = vec![(
            "time".to_string(),
            M::A(
                (0..rows)
                    .map(|i| M::I(1_767_225_600_000 + i as i64))
                    .collect(),
            ),
        )];
        for k in 0..6 {
            cols.push((format!("tag{k}"), tag(k)));
        }
        for k in 0..3 {
            cols.push((
                format!("f{k}"),
                M::A((0..rows).map(|i| M::F(i as f64 / (k + 1) as f64)).collect()),
            ));
        }
        M::Map(vec![
            ("m".to_string(), s("cpu")),
            ("columns".to_string(), M::Map(cols)),
        ])
    }

    #[test]
    fn bench_shaped_bodies_take_the_fast_path() {
        for rows in [1, 7, 6000] {
            assert!(check(&bytes(&bench_like(rows))));
        }
        // Arrays of records and batch wrappers, columnar and row mixed.
        let row = map(vec![
            ("m", s("mem")),
            ("t", M::I(1_700_000_000)),
            ("fields", map(vec![("v", M::I(2))])),
        ]);
        assert!(check(&bytes(&M::A(vec![
            bench_like(3),
            row.clone(),
            bench_like(2)
        ]))));
        assert!(check(&bytes(&map(vec![
            ("x", s("ignored")),
            ("batch", M::A(vec![row.clone(), bench_like(5)])),
            ("columns", s("ignored: a batch wrapper")),
        ]))));
    }

    #[test]
    fn typed_loops_agree_with_the_general_passes() {
        let big = u64::MAX - 1;
        let long = "x".repeat(40);
        let longer = "y".repeat(300);
        let longest = "z".repeat(70_000);
        let cases: Vec<Vec<(&str, M)>> = vec![
            // Floats with ints and nils anywhere, f32 too.
            vec![("v", M::A(vec![M::F(1.5), M::I(2), M::Nil, M::I(-3)]))],
            vec![("v", M::A(vec![M::Nil, M::F32(0.1), M::U(big), M::F(2.0)]))],
            // Ints that turn into floats or unsigned later.
            vec![("v", M::A(vec![M::I(1), M::Nil, M::F(2.5)]))],
            vec![("v", M::A(vec![M::I(1), M::U(big)]))],
            vec![("v", M::A(vec![M::U(big), M::I(1)]))],
            vec![(
                "v",
                M::A(vec![M::I(0), M::I(127), M::I(-32), M::I(-33), M::I(300)]),
            )],
            vec![(
                "v",
                M::A(vec![M::I(i64::MIN), M::I(i64::MAX), M::I(70_000)]),
            )],
            // Booleans, strings of every length marker, empty strings.
            vec![("up", M::A(vec![M::B(true), M::Nil, M::B(false)]))],
            vec![(
                "host",
                M::A(vec![
                    s(&long),
                    s(""),
                    M::Nil,
                    s(&longer),
                    s(&longest),
                    s(""),
                ]),
            )],
            // Tags with nils first, all-nil columns, columns mixing types.
            vec![
                ("host", M::A(vec![M::Nil, s("a"), s("a"), M::Nil])),
                ("none", M::A(vec![M::Nil, M::Nil, M::Nil, M::Nil])),
            ],
            vec![("v", M::A(vec![M::F(1.0), s("x")]))],
            vec![("v", M::A(vec![s("x"), M::I(1)]))],
            vec![("v", M::A(vec![M::B(true), M::I(1)]))],
            vec![("v", M::A(vec![M::I(-1), M::U(big)]))],
            vec![("v", M::A(vec![M::F(1.0), M::A(vec![])]))],
            // Time columns: floats, seconds, several, nils.
            vec![
                (
                    "time",
                    M::A(vec![M::F(1_700_000_000.5), M::I(1_700_000_001)]),
                ),
                ("v", M::A(vec![M::F(1.0), M::F(2.0)])),
            ],
            vec![
                ("time", M::A(vec![M::I(1), M::I(2)])),
                ("v", M::A(vec![M::F(1.0), M::F(2.0)])),
                ("time", M::A(vec![M::I(3), M::I(4)])),
            ],
            vec![
                ("time", M::A(vec![M::I(1), M::Nil])),
                ("v", M::A(vec![M::F(1.0), M::F(2.0)])),
            ],
            vec![
                ("time", M::A(vec![M::I(i64::MAX)])),
                ("v", M::A(vec![M::F(1.0)])),
            ],
            // Lengths and names.
            vec![("a", M::A(vec![M::F(1.0)])), ("b", M::A(vec![]))],
            vec![("a", M::A(vec![])), ("b", M::A(vec![]))],
            vec![("a", M::A(vec![M::F(1.0)])), ("a", M::A(vec![M::F(1.0)]))],
            vec![("", M::A(vec![M::F(1.0)]))],
            vec![("bad\n", M::A(vec![M::F(1.0)]))],
            vec![("v", M::F(1.0))],
        ];
        for columns in cases {
            check_fast(&columnar_body(columns.clone()));
            // The same columns with tag_keys naming every one, and none.
            let names: Vec<M> = columns.iter().map(|(k, _)| s(k)).collect();
            for keys in [M::A(names), M::A(vec![])] {
                check_fast(&bytes(&map(vec![
                    ("m", s("cpu")),
                    ("tag_keys", keys),
                    ("columns", map(columns.clone())),
                ])));
            }
        }
        assert!(check(&columnar_body(vec![(
            "v",
            M::A(vec![M::Nil, M::I(1), M::I(-1)])
        )])));
        assert!(check_fast(&columnar_body(vec![(
            "v",
            M::A(vec![M::F(1.0), M::U(u64::MAX)])
        )])));
    }

    #[test]
    fn tag_keys_before_after_and_nil() {
        let columns = map(vec![
            ("time", M::A(vec![M::I(1_700_000_000), M::I(1_700_000_001)])),
            ("host", M::A(vec![s("a"), s("b")])),
            ("message", M::A(vec![s("hello"), M::Nil])),
            ("n", M::A(vec![M::I(1), M::I(2)])),
            ("x", M::A(vec![M::I(1), M::F(2.5)])),
            ("none", M::A(vec![M::Nil, M::Nil])),
        ]);
        let keys = M::A(vec![s("host"), s("n"), s("x"), s("none")]);
        for (i, body) in [
            map(vec![
                ("m", s("logs")),
                ("tag_keys", keys.clone()),
                ("columns", columns.clone()),
            ]),
            map(vec![
                ("columns", columns.clone()),
                ("m", s("logs")),
                ("tag_keys", keys.clone()),
            ]),
            map(vec![
                ("columns", columns.clone()),
                ("tag_keys", M::Nil),
                ("m", s("logs")),
            ]),
            map(vec![
                ("columns", columns.clone()),
                ("tag_keys", M::Nil),
                ("tag_keys", keys.clone()),
                ("m", s("logs")),
            ]),
            map(vec![
                ("m", s("logs")),
                ("columns", columns.clone()),
                ("tag_keys", M::A(vec![M::I(1)])),
            ]),
            map(vec![
                ("m", s("logs")),
                ("columns", columns.clone()),
                ("columns", s("the first one counts")),
            ]),
        ]
        .into_iter()
        .enumerate()
        {
            // All but the bad tag_keys take the fast path.
            assert_eq!(check(&bytes(&body)), i != 4, "body {i}");
        }
    }

    #[test]
    fn bad_utf8_gives_the_general_error() {
        let bad = M::Raw(vec![0xa2, 0xff, 0xfe]);
        let mut cases = vec![
            // In a tag column: first, later, repeated.
            vec![("host", M::A(vec![bad.clone(), s("a")]))],
            vec![("host", M::A(vec![s("a"), s("b"), bad.clone()]))],
            vec![("host", M::A(vec![s("a"), M::F(1.0), bad.clone()]))],
            // In a float column, in a column name.
            vec![("v", M::A(vec![M::F(1.0), bad.clone()]))],
        ];
        cases.push(vec![("v", M::A(vec![M::F(1.0)])), ("ok", M::A(vec![bad]))]);
        for columns in cases {
            let body = columnar_body(columns);
            assert!(!check(&body));
            assert_eq!(
                parse(&body, "db", NOW).unwrap_err().to_string(),
                "string is not valid UTF-8"
            );
        }
        // In a string field (tag_keys empty), and in a column name.
        let mut body = bytes(&map(vec![
            ("m", s("cpu")),
            ("tag_keys", M::A(vec![])),
            (
                "columns",
                map(vec![("msg", M::A(vec![s("ok"), s("\u{1}")]))]),
            ),
        ]));
        let at = body.len() - 1;
        body[at] = 0xff; // "\u{1}" -> a lone 0xff
        assert!(!check(&body));
        let mut body = columnar_body(vec![("vv", M::A(vec![M::F(1.0)]))]);
        let at = body.windows(2).position(|w| w == b"vv").unwrap();
        body[at] = 0xc3;
        assert!(!check(&body));
    }

    /// Row records of every shape the fast path reads itself or leaves to
    /// `row`: what the general path gives, whole, truncated and mutated.
    #[test]
    fn row_records_agree() {
        let tags = |host: &str| {
            map(vec![
                ("host", s(host)),
                ("region", s("us-east-1")),
                ("gone", M::Nil),
                ("é", s("ü")),
            ])
        };
        let fields = map(vec![
            ("usage", M::F(58.31)),
            ("n", M::I(-3)),
            ("big", M::U(u64::MAX)),
            ("on", M::B(true)),
            ("msg", s("a b")),
            ("none", M::Nil),
        ]);
        let records = vec![
            map(vec![
                ("m", s("cpu")),
                ("t", M::I(1_700_000_000_000)),
                ("tags", tags("a")),
                ("fields", fields.clone()),
            ]),
            // Fields before tags, no time, a float time, nil tags.
            map(vec![
                ("m", s("cpu")),
                ("fields", fields.clone()),
                ("tags", tags("b")),
            ]),
            map(vec![
                ("t", M::F(1_700_000_000.5)),
                ("m", s("cpu")),
                ("tags", M::Nil),
                ("fields", map(vec![("usage", M::F(1.0))])),
            ]),
            // "h", a tag that is not a string, an integer measurement,
            // "f", repeated keys, an unknown key.
            map(vec![
                ("m", s("cpu")),
                ("h", s("h1")),
                ("tags", tags("c")),
                ("fields", fields.clone()),
            ]),
            map(vec![
                ("m", s("cpu")),
                ("tags", map(vec![("host", M::I(7))])),
                ("fields", map(vec![("usage", M::F(2.0))])),
            ]),
            map(vec![
                ("m", M::I(3)),
                ("fields", map(vec![("v", M::F(2.0))])),
            ]),
            map(vec![
                ("m", s("mem")),
                ("f", M::A(vec![M::F(1.0), M::Nil, M::I(2)])),
            ]),
            map(vec![
                ("m", s("cpu")),
                ("tags", tags("d")),
                ("tags", map(vec![("other", s("x"))])),
                ("fields", map(vec![("usage", M::F(3.0))])),
                ("fields", map(vec![("other", M::F(3.0))])),
                ("extra", s("ignored")),
            ]),
        ];
        let body = bytes(&M::A(records.clone()));
        assert!(check_fast(&body));
        for r in &records {
            assert!(check_fast(&bytes(&M::A(vec![r.clone()]))));
        }
        // Errors: no fields, a field that is not a scalar, a column twice.
        for bad in [
            map(vec![("m", s("cpu")), ("tags", tags("a"))]),
            map(vec![
                ("m", s("cpu")),
                ("fields", map(vec![("v", M::A(vec![]))])),
            ]),
            map(vec![
                ("m", s("cpu")),
                ("tags", tags("a")),
                ("fields", map(vec![("host", M::F(1.0))])),
            ]),
        ] {
            let b = bytes(&M::A(vec![records[0].clone(), bad]));
            assert_eq!(check_both(&b), (false, false));
        }
        let accepted = check_truncated_and_mutated(&body);
        assert!(accepted > 500, "{accepted}");
    }

    #[test]
    fn truncated_and_mutated_bodies_agree() {
        let body = bytes(&M::A(vec![
            bench_like(4),
            map(vec![
                ("m", s("mem")),
                ("tag_keys", M::A(vec![s("host")])),
                (
                    "columns",
                    map(vec![
                        ("host", M::A(vec![s("a"), M::Nil])),
                        ("msg", M::A(vec![s("x"), s("y")])),
                        ("n", M::A(vec![M::I(1), M::U(u64::MAX)])),
                        ("up", M::A(vec![M::B(true), M::Nil])),
                    ]),
                ),
            ]),
            map(vec![
                ("m", s("cpu")),
                ("t", M::I(1_700_000_000)),
                ("h", s("h1")),
                ("fields", map(vec![("f0", M::F(1.0))])),
            ]),
        ]));
        assert!(check(&body));
        // Every byte replaced by a few interesting values, then random
        // pairs of bytes.
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut accepted = check_truncated_and_mutated(&body);
        for _ in 0..3000 {
            let mut b = body.clone();
            for _ in 0..2 {
                let at = rand() as usize % b.len();
                b[at] = rand() as u8;
            }
            accepted += check_fast(&b) as usize;
        }
        // Many mutations only change values: those must still compare.
        assert!(accepted > 1000, "{accepted}");
    }

    #[test]
    fn tag_dictionary_matches_the_builder() {
        let values: Vec<String> = (0..20_000)
            .map(|i| match i % 7 {
                0 => String::new(),
                1 => format!("host_{}", i % 5000),
                2 => format!("{}", i % 13),
                3 => format!("a-long-value-with-a-shared-prefix-{}", i % 300),
                4 => format!("{}-a-long-value-with-a-shared-suffix", i % 300),
                5 => "é".repeat(i % 9),
                _ => format!("x{}", i % 2),
            })
            .collect();
        let items: Vec<M> = values
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 11 == 0 { M::Nil } else { s(v) })
            .collect();
        let body = bytes(&M::A(items));
        let mut r = Reader { b: &body, pos: 0 };
        let Ok(Val::Array(n)) = r.next() else {
            unreachable!()
        };
        let (mut fast, mut general) = (r.clone(), r.clone());
        let got = tag_column(&mut TagDict::default(), &mut fast, n).unwrap();
        let (_, want) = fill_column(&mut general, n, ColType::Str, true, "t", 1).unwrap();
        assert_eq!(got.to_data(), want.to_data());
        assert_eq!(fast.pos, body.len());
        assert_eq!(general.pos, body.len());
    }
}
