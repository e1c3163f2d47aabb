//! Query results as Arc's JSON:
//! `{"success":true,"columns":[names],"data":[[row],...],"row_count":N,
//! "execution_time_ms":X,"timestamp":"RFC3339"}`.
//!
//! Values: integers as JSON numbers; floats in shortest form, NaN and
//! infinities as `null`; timestamps as RFC 3339 strings in UTC with the
//! fraction trimmed (Go's RFC3339Nano, as Arc writes them); tags and strings
//! as strings; anything else as Arrow's display text.

use std::io::Write;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::datatypes::ArrowNativeType;

/// Formats `ns` since the epoch like Go's `time.RFC3339Nano` in UTC.
pub fn rfc3339_nano(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000) as u32;
    let t = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    if frac != 0 {
        let digits = format!("{frac:09}");
        s.push('.');
        s.push_str(digits.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_value(out: &mut Vec<u8>, array: &ArrayRef, i: usize) {
    if array.is_null(i) {
        out.extend_from_slice(b"null");
        return;
    }
    macro_rules! int {
        ($t:ty) => {{
            let _ = write!(out, "{}", array.as_primitive::<$t>().value(i));
        }};
    }
    match array.data_type() {
        // A NULL literal's column has no null buffer: every value is null.
        DataType::Null => out.extend_from_slice(b"null"),
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float32 => write_f64(out, array.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => write_f64(out, array.as_primitive::<Float64Type>().value(i)),
        DataType::Boolean => out.extend_from_slice(if array.as_boolean().value(i) {
            b"true"
        } else {
            b"false"
        }),
        DataType::Utf8 => write_str(out, array.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => write_str(out, array.as_string::<i64>().value(i)),
        DataType::Utf8View => write_str(out, array.as_string_view().value(i)),
        DataType::Timestamp(unit, _) => {
            let ns = match unit {
                TimeUnit::Second => array
                    .as_primitive::<TimestampSecondType>()
                    .value(i)
                    .saturating_mul(1_000_000_000),
                TimeUnit::Millisecond => array
                    .as_primitive::<TimestampMillisecondType>()
                    .value(i)
                    .saturating_mul(1_000_000),
                TimeUnit::Microsecond => array
                    .as_primitive::<TimestampMicrosecondType>()
                    .value(i)
                    .saturating_mul(1_000),
                TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(i),
            };
            write_str(out, &rfc3339_nano(ns));
        }
        DataType::Dictionary(key, _) => {
            // The key of row `i` alone (`normalized_keys` would copy every
            // key of the batch for each value: 19 s of CPU for 1M TSBS
            // rows, perf/results/2026-12-06-8720116-protocols.md).
            macro_rules! key {
                ($t:ty) => {{
                    let d = array.as_dictionary::<$t>();
                    (d.keys().value(i).as_usize(), d.values())
                }};
            }
            let (k, values) = match key.as_ref() {
                DataType::Int8 => key!(Int8Type),
                DataType::Int16 => key!(Int16Type),
                DataType::Int32 => key!(Int32Type),
                DataType::Int64 => key!(Int64Type),
                DataType::UInt8 => key!(UInt8Type),
                DataType::UInt16 => key!(UInt16Type),
                DataType::UInt32 => key!(UInt32Type),
                _ => key!(UInt64Type),
            };
            write_value(out, values, k);
        }
        _ => {
            let text =
                arrow_cast::display::ArrayFormatter::try_new(array.as_ref(), &Default::default())
                    .map(|f| f.value(i).to_string())
                    .unwrap_or_default();
            write_str(out, &text);
        }
    }
}

/// Writes the whole success response.
pub fn write_response(
    out: &mut Vec<u8>,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    execution_time_ms: u128,
    started: chrono::DateTime<chrono::Utc>,
) {
    out.extend_from_slice(b"{\"success\":true,\"columns\":[");
    for (i, f) in schema.fields().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, f.name());
    }
    out.extend_from_slice(b"],\"data\":[");
    let mut rows = 0usize;
    for b in batches {
        for r in 0..b.num_rows() {
            if rows > 0 {
                out.push(b',');
            }
            out.push(b'[');
            for (c, col) in b.columns().iter().enumerate() {
                if c > 0 {
                    out.push(b',');
                }
                write_value(out, col, r);
            }
            out.push(b']');
            rows += 1;
        }
    }
    let _ = write!(
        out,
        "],\"row_count\":{rows},\"execution_time_ms\":{execution_time_ms},\"timestamp\":"
    );
    write_str(
        out,
        &started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    out.push(b'}');
}

/// An error response body in the same shape, `success: false`.
pub fn error_body(
    message: &str,
    execution_time_ms: u128,
    started: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    serde_json::json!({
        "success": false,
        "columns": null,
        "data": null,
        "row_count": 0,
        "execution_time_ms": execution_time_ms as u64,
        "timestamp": started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "error": message,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::StringDictionaryBuilder;
    use arrow_array::{Float64Array, Int64Array, StringArray, TimestampNanosecondArray};
    use arrow_schema::{Field, Schema};

    use super::*;

    #[test]
    fn rfc3339_like_go() {
        assert_eq!(
            rfc3339_nano(1_632_024_000_000_000_000),
            "2021-09-19T04:00:00Z"
        );
        assert_eq!(
            rfc3339_nano(1_632_024_000_500_000_000),
            "2021-09-19T04:00:00.5Z"
        );
        assert_eq!(rfc3339_nano(1), "1970-01-01T00:00:00.000000001Z");
        assert_eq!(rfc3339_nano(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn arc_shape() {
        let mut host = StringDictionaryBuilder::<arrow_array::types::Int32Type>::new();
        host.append_value("a");
        host.append_null();
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            Field::new(
                "host",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("v", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    TimestampNanosecondArray::from(vec![1_500_000_000, 0]).with_timezone("UTC"),
                ),
                Arc::new(host.finish()),
                Arc::new(Float64Array::from(vec![Some(f64::NAN), Some(2.5)])),
                Arc::new(Int64Array::from(vec![Some(-3), None])),
                Arc::new(StringArray::from(vec![Some("q\"x"), Some("")])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let started = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        write_response(&mut out, &schema, &[batch], 12, started);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "success": true,
                "columns": ["time", "host", "v", "n", "s"],
                "data": [["1970-01-01T00:00:01.5Z", "a", null, -3, "q\"x"], ["1970-01-01T00:00:00Z", null, 2.5, null, ""]],
                "row_count": 2,
                "execution_time_ms": 12,
                "timestamp": "2023-11-14T22:13:20Z"
            })
        );
    }
}
