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
        let given = batch.schema_ref();
        let mut seen = HashSet::with_capacity_and_hasher(
            batch.num_columns(),
            foldhash::fast::RandomState::default(),
        );
        let mut has_time = false;
        // Whether every field already is its kind's canonical field (the
        // type is, once `from_arrow` accepts it): decoders build them so,
        // and then no new schema is made.
        let mut canonical = given.metadata().is_empty();
        for (field, column) in given.fields().iter().zip(batch.columns()) {
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
            canonical &=
                field.is_nullable() == (kind != ColumnKind::Time) && field.metadata().is_empty();
        }
        if !has_time {
            return Err(SchemaError::MissingTime);
        }
        if canonical {
            debug_assert_eq!(**given, Self::canonical_schema(given));
            return Ok(WriteBatch { table, batch });
        }
        let schema = Arc::new(Self::canonical_schema(given));
        let batch = RecordBatch::try_new(schema, batch.columns().to_vec())
            .expect("same columns, only nullability relaxed");
        debug_assert!(batch.column_by_name(TIME_COLUMN).is_some());
        Ok(WriteBatch { table, batch })
    }

    /// The schema of `given`'s columns with each kind's canonical field
    /// (`given` has been checked).
    fn canonical_schema(given: &Schema) -> Schema {
        Schema::new(
            given
                .fields()
                .iter()
                .map(|f| {
                    ColumnKind::from_arrow(f.name(), f.data_type())
                        .expect("checked")
                        .field(f.name())
                })
                .collect::<Vec<_>>(),
        )
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

    /// A field that is not nullable, field or schema metadata: the batch
    /// gets the canonical schema; a batch that has it keeps its own.
    #[test]
    fn the_schema_is_made_canonical() {
        let key = TableKey::new("db", "m").unwrap();
        let time = TimestampNanosecondArray::from(vec![1, 2]).with_timezone(TIME_ZONE);
        let v = Float64Array::from(vec![1.0, 2.0]);
        let canonical = Arc::new(Schema::new(vec![
            ColumnKind::Time.field("time"),
            ColumnKind::Field(crate::schema::FieldType::Float).field("v"),
        ]));
        let columns: Vec<arrow_array::ArrayRef> = vec![Arc::new(time), Arc::new(v)];
        let meta = std::collections::HashMap::from([("k".to_string(), "v".to_string())]);
        let given = [
            Schema::new(vec![
                Field::new("time", time_data_type(), false),
                Field::new("v", arrow_schema::DataType::Float64, false),
            ]),
            Schema::new(vec![
                Field::new("time", time_data_type(), false),
                Field::new("v", arrow_schema::DataType::Float64, true).with_metadata(meta.clone()),
            ]),
            (*canonical).clone().with_metadata(meta),
        ];
        for schema in given {
            let b = RecordBatch::try_new(Arc::new(schema), columns.clone()).unwrap();
            let wb = WriteBatch::try_new(key.clone(), b).unwrap();
            assert_eq!(wb.batch().schema(), canonical);
        }
        let b = RecordBatch::try_new(canonical.clone(), columns).unwrap();
        let wb = WriteBatch::try_new(key, b).unwrap();
        assert!(Arc::ptr_eq(&wb.batch().schema(), &canonical));
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
