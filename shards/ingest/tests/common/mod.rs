//! Turning decoded batches back into plain rows for comparison.
#![allow(dead_code, clippy::unwrap_used)]

pub mod mp;

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType, UInt64Type};
use arrow_array::Array;
use arrow_schema::DataType;
use tidemark_ingest::WriteBatch;

#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Tag(String),
    F(f64),
    I(i64),
    U(u64),
    S(String),
    B(bool),
}

/// (measurement, time, columns) of every row, in order per table.
pub type Row = (String, i64, BTreeMap<String, V>);

pub fn rows(batches: &[WriteBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for wb in batches {
        let b = wb.batch();
        let time = b
            .column_by_name("time")
            .unwrap()
            .as_primitive::<TimestampNanosecondType>();
        for i in 0..b.num_rows() {
            let mut cols = BTreeMap::new();
            for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                if f.name() == "time" || c.is_null(i) {
                    continue;
                }
                let v = match f.data_type() {
                    DataType::Dictionary(_, _) => {
                        let d = c.as_dictionary::<Int32Type>();
                        let vals = d.values().as_string::<i32>();
                        V::Tag(vals.value(d.keys().value(i) as usize).to_string())
                    }
                    DataType::Float64 => V::F(c.as_primitive::<Float64Type>().value(i)),
                    DataType::Int64 => V::I(c.as_primitive::<Int64Type>().value(i)),
                    DataType::UInt64 => V::U(c.as_primitive::<UInt64Type>().value(i)),
                    DataType::Utf8 => V::S(c.as_string::<i32>().value(i).to_string()),
                    DataType::Boolean => V::B(c.as_boolean().value(i)),
                    other => panic!("unexpected type {other}"),
                };
                cols.insert(f.name().clone(), v);
            }
            out.push((wb.table().measurement().to_string(), time.value(i), cols));
        }
    }
    out
}
