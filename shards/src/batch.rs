//! A write batch: the validated rows of one write request for one table.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch};
use arrow_schema::Schema;

use crate::schema::{validate_column_name, ColumnKind, SchemaError, TableKey, TIME_COLUMN};

/// Rows for one (database, measurement) as an Arrow [`RecordBatch`] that
/// follows tidemark's schema rules (see [`crate::schema`]).
///
/// Invariants, checked by [`WriteBatch::try_new`]: at least one row; column
/// names unique and valid; every column of a supported kind; a `time` column
/// without nulls. Fields are nullable (a row need not set every field); the
/// batch's schema uses the canonical Arrow field of each kind.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteBatch {
    table: TableKey,
    batch: RecordBatch,
}

impl WriteBatch {
    /// Validates `batch` as rows of `table`.
    pub fn try_new(table: TableKey, batch: RecordBatch) -> Result<WriteBatch, SchemaError> {
        if batch.num_rows() == 0 {
            return Err(SchemaError::Empty);
        }
        let mut seen = HashSet::with_capacity(batch.num_columns());
        let mut fields = Vec::with_capacity(batch.num_columns());
        let mut has_time = false;
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            let name = field.name();
            if !seen.insert(name.as_str()) {
                return Err(SchemaError::DuplicateColumn {
                    column: name.clone(),
                });
            }
            let kind = ColumnKind::from_arrow(name, field.data_type())?;
            if kind == ColumnKind::Time {
                has_time = true;
                if column.null_count() > 0 {
                    return Err(SchemaError::NullTime {
                        nulls: column.null_count(),
                    });
                }
            } else {
                validate_column_name(name)?;
            }
            fields.push(kind.field(name));
        }
        if !has_time {
            return Err(SchemaError::MissingTime);
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = if schema == batch.schema() {
            batch
        } else {
            RecordBatch::try_new(schema, batch.columns().to_vec())
                .expect("same columns, only nullability relaxed")
        };
        debug_assert!(batch.column_by_name(TIME_COLUMN).is_some());
        Ok(WriteBatch { table, batch })
    }

    pub fn table(&self) -> &TableKey {
        &self.table
    }

    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    pub fn into_parts(self) -> (TableKey, RecordBatch) {
        (self.table, self.batch)
    }

    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// Rows times columns: the number of values the batch carries, nulls included.
    pub fn num_values(&self) -> usize {
        self.batch.num_rows() * self.batch.num_columns()
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Builders for small batches used across the crate's tests.
    use std::sync::Arc;

    use arrow_array::builder::StringDictionaryBuilder;
    use arrow_array::types::Int32Type;
    use arrow_array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
        TimestampNanosecondArray, UInt64Array,
    };
    use arrow_schema::Schema;

    use super::WriteBatch;
    use crate::schema::{ColumnKind, FieldType, TableKey, TIME_ZONE};

    /// A row of the test table `db.cpu` (tags host, region; fields of every type).
    #[derive(Debug, Clone, PartialEq)]
    pub struct Row {
        pub time: i64,
        pub host: String,
        pub region: Option<String>,
        pub usage: Option<f64>,
        pub count: Option<i64>,
        pub bytes: Option<u64>,
        pub note: Option<String>,
        pub up: Option<bool>,
    }

    pub fn cpu_batch(rows: &[Row]) -> WriteBatch {
        let mut host = StringDictionaryBuilder::<Int32Type>::new();
        let mut region = StringDictionaryBuilder::<Int32Type>::new();
        for r in rows {
            host.append_value(&r.host);
            region.append_option(r.region.as_deref());
        }
        let columns: Vec<(&str, ColumnKind, ArrayRef)> = vec![
            (
                "time",
                ColumnKind::Time,
                Arc::new(
                    TimestampNanosecondArray::from(rows.iter().map(|r| r.time).collect::<Vec<_>>())
                        .with_timezone(TIME_ZONE),
                ),
            ),
            ("host", ColumnKind::Tag, Arc::new(host.finish())),
            ("region", ColumnKind::Tag, Arc::new(region.finish())),
            (
                "usage",
                ColumnKind::Field(FieldType::Float),
                Arc::new(Float64Array::from(
                    rows.iter().map(|r| r.usage).collect::<Vec<_>>(),
                )),
            ),
            (
                "count",
                ColumnKind::Field(FieldType::Integer),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.count).collect::<Vec<_>>(),
                )),
            ),
            (
                "bytes",
                ColumnKind::Field(FieldType::Unsigned),
                Arc::new(UInt64Array::from(
                    rows.iter().map(|r| r.bytes).collect::<Vec<_>>(),
                )),
            ),
            (
                "note",
                ColumnKind::Field(FieldType::String),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.note.clone()).collect::<Vec<_>>(),
                )),
            ),
            (
                "up",
                ColumnKind::Field(FieldType::Boolean),
                Arc::new(BooleanArray::from(
                    rows.iter().map(|r| r.up).collect::<Vec<_>>(),
                )),
            ),
        ];
        let schema = Schema::new(
            columns
                .iter()
                .map(|(n, k, _)| k.field(n))
                .collect::<Vec<_>>(),
        );
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            columns.into_iter().map(|(_, _, a)| a).collect(),
        )
        .unwrap();
        WriteBatch::try_new(TableKey::new("db", "cpu").unwrap(), batch).unwrap()
    }

    pub fn row(time: i64, host: &str, usage: f64) -> Row {
        Row {
            time,
            host: host.to_string(),
            region: Some("eu".into()),
            usage: Some(usage),
            count: Some(time),
            bytes: Some(time as u64),
            note: None,
            up: Some(time % 2 == 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Float64Array, RecordBatch, TimestampNanosecondArray};
    use arrow_schema::{Field, Schema};

    use super::test_util::*;
    use super::*;
    use crate::schema::{time_data_type, TIME_ZONE};

    #[test]
    fn valid_batch() {
        let b = cpu_batch(&[row(1, "a", 0.5), row(2, "b", 1.5)]);
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.num_values(), 16);
    }

    #[test]
    fn rejects_null_time_and_missing_time() {
        let key = TableKey::new("db", "m").unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "time",
            time_data_type(),
            true,
        )]));
        let time = TimestampNanosecondArray::from(vec![Some(1), None]).with_timezone(TIME_ZONE);
        let b = RecordBatch::try_new(schema, vec![Arc::new(time)]).unwrap();
        assert_eq!(
            WriteBatch::try_new(key.clone(), b).unwrap_err(),
            SchemaError::NullTime { nulls: 1 }
        );
        let schema = Arc::new(Schema::new(vec![Field::new(
            "v",
            arrow_schema::DataType::Float64,
            true,
        )]));
        let b =
            RecordBatch::try_new(schema, vec![Arc::new(Float64Array::from(vec![1.0]))]).unwrap();
        assert_eq!(
            WriteBatch::try_new(key, b).unwrap_err(),
            SchemaError::MissingTime
        );
    }
}
