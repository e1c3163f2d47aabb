//! tidemark's data model: the column kinds a table may hold, name rules, and
//! schema merging.
//!
//! A table is one (database, measurement). Its columns are `time`
//! (`Timestamp(Nanosecond, "UTC")`, never null), tags (dictionary-encoded
//! UTF-8, `Dictionary(Int32, Utf8)`), and fields (Float64, Int64, UInt64, Utf8
//! or Boolean). The kind of a column is fully given by its Arrow type, so a
//! table schema is an Arrow [`Schema`]. Columns may be added at any time;
//! a column never changes its type.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// The name of the time column of every table.
pub const TIME_COLUMN: &str = "time";
/// The time zone every `time` column carries.
pub const TIME_ZONE: &str = "UTC";
/// Longest database name (Arc's rule).
pub const MAX_DATABASE_NAME: usize = 64;
/// Longest measurement name (Arc's rule).
pub const MAX_MEASUREMENT_NAME: usize = 128;
/// Longest tag or field name.
pub const MAX_COLUMN_NAME: usize = 256;

/// Why a write does not fit the data model. Every variant names the column or
/// name at fault and the reason, so an HTTP layer can pass it on verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid database name {name:?}: {reason}")]
    InvalidDatabaseName { name: String, reason: &'static str },
    #[error("invalid measurement name {name:?}: {reason}")]
    InvalidMeasurementName { name: String, reason: &'static str },
    #[error("invalid column name {name:?}: {reason}")]
    InvalidColumnName { name: String, reason: &'static str },
    #[error("column {column:?} has unsupported type {data_type}")]
    UnsupportedType { column: String, data_type: String },
    #[error("column {column:?} is of type {existing}, but was given {given}")]
    TypeConflict {
        column: String,
        existing: ColumnKind,
        given: ColumnKind,
    },
    #[error("column {column:?} appears twice")]
    DuplicateColumn { column: String },
    #[error("the time column is missing")]
    MissingTime,
    #[error("the time column has {nulls} null values")]
    NullTime { nulls: usize },
    #[error("a write batch must hold at least one row")]
    Empty,
    #[error("row {row} has no field values (a row needs at least one field)")]
    NoFields { row: usize },
}

/// The type of a field column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Float,
    Integer,
    Unsigned,
    String,
    Boolean,
}

/// What a column is: the time column, a tag, or a field of some type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    Time,
    Tag,
    Field(FieldType),
}

impl fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ColumnKind::Time => "timestamp",
            ColumnKind::Tag => "tag",
            ColumnKind::Field(FieldType::Float) => "float",
            ColumnKind::Field(FieldType::Integer) => "integer",
            ColumnKind::Field(FieldType::Unsigned) => "unsigned",
            ColumnKind::Field(FieldType::String) => "string",
            ColumnKind::Field(FieldType::Boolean) => "boolean",
        };
        f.write_str(s)
    }
}

/// The Arrow type of tag columns.
pub fn tag_data_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// The Arrow type of the time column.
pub fn time_data_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some(TIME_ZONE.into()))
}

impl ColumnKind {
    /// The Arrow type that stores a column of this kind.
    pub fn data_type(self) -> DataType {
        match self {
            ColumnKind::Time => time_data_type(),
            ColumnKind::Tag => tag_data_type(),
            ColumnKind::Field(FieldType::Float) => DataType::Float64,
            ColumnKind::Field(FieldType::Integer) => DataType::Int64,
            ColumnKind::Field(FieldType::Unsigned) => DataType::UInt64,
            ColumnKind::Field(FieldType::String) => DataType::Utf8,
            ColumnKind::Field(FieldType::Boolean) => DataType::Boolean,
        }
    }

    /// The kind an Arrow column of `data_type` named `name` stands for.
    pub fn from_arrow(name: &str, data_type: &DataType) -> Result<ColumnKind, SchemaError> {
        let kind = match data_type {
            DataType::Timestamp(TimeUnit::Nanosecond, Some(tz)) if tz.as_ref() == TIME_ZONE => {
                ColumnKind::Time
            }
            DataType::Dictionary(k, v)
                if k.as_ref() == &DataType::Int32 && v.as_ref() == &DataType::Utf8 =>
            {
                ColumnKind::Tag
            }
            DataType::Float64 => ColumnKind::Field(FieldType::Float),
            DataType::Int64 => ColumnKind::Field(FieldType::Integer),
            DataType::UInt64 => ColumnKind::Field(FieldType::Unsigned),
            DataType::Utf8 => ColumnKind::Field(FieldType::String),
            DataType::Boolean => ColumnKind::Field(FieldType::Boolean),
            other => {
                return Err(SchemaError::UnsupportedType {
                    column: name.to_string(),
                    data_type: other.to_string(),
                })
            }
        };
        let is_time_name = name == TIME_COLUMN;
        if is_time_name != (kind == ColumnKind::Time) {
            return Err(SchemaError::TypeConflict {
                column: name.to_string(),
                existing: if is_time_name { ColumnKind::Time } else { kind },
                given: kind,
            });
        }
        Ok(kind)
    }

    /// The Arrow field for a column of this kind.
    pub fn field(self, name: &str) -> Field {
        Field::new(name, self.data_type(), self != ColumnKind::Time)
    }
}

fn check_identifier(name: &str, max: usize) -> Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("must not be empty"),
        Some(c) if !c.is_ascii_alphabetic() => return Err("must start with a letter"),
        Some(_) => {}
    }
    if name.len() > max {
        return Err(if max == MAX_DATABASE_NAME {
            "longer than 64 characters"
        } else {
            "longer than 128 characters"
        });
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err("may hold only letters, digits, '_' and '-'");
    }
    Ok(())
}

/// Checks a database name: `^[a-zA-Z][a-zA-Z0-9_-]*$`, at most 64 characters.
pub fn validate_database_name(name: &str) -> Result<(), SchemaError> {
    check_identifier(name, MAX_DATABASE_NAME).map_err(|reason| SchemaError::InvalidDatabaseName {
        name: name.to_string(),
        reason,
    })
}

/// Checks a measurement name: `^[a-zA-Z][a-zA-Z0-9_-]*$`, at most 128 characters.
pub fn validate_measurement_name(name: &str) -> Result<(), SchemaError> {
    check_identifier(name, MAX_MEASUREMENT_NAME).map_err(|reason| {
        SchemaError::InvalidMeasurementName {
            name: name.to_string(),
            reason,
        }
    })
}

/// Checks a tag or field name: not empty, at most 256 bytes, no control
/// characters.
pub fn validate_column_name(name: &str) -> Result<(), SchemaError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_COLUMN_NAME {
        "longer than 256 bytes"
    } else if name.chars().any(char::is_control) {
        "must not hold control characters"
    } else {
        return Ok(());
    };
    Err(SchemaError::InvalidColumnName {
        name: name.to_string(),
        reason,
    })
}

/// A database and measurement, validated: the key of one table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableKey {
    database: Arc<str>,
    measurement: Arc<str>,
}

impl TableKey {
    /// Validates both names.
    pub fn new(database: &str, measurement: &str) -> Result<TableKey, SchemaError> {
        validate_database_name(database)?;
        validate_measurement_name(measurement)?;
        Ok(TableKey {
            database: database.into(),
            measurement: measurement.into(),
        })
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    pub fn measurement(&self) -> &str {
        &self.measurement
    }
}

impl fmt::Display for TableKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.database, self.measurement)
    }
}

/// The columns of one table in the order they first appeared, `time` first.
/// Invariant: names are unique, `time` is present, every column's Arrow type
/// is the one of its [`ColumnKind`]. Cheap to clone (shared Arrow schema).
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    schema: SchemaRef,
    index: Arc<HashMap<String, (usize, ColumnKind)>>,
}

impl Default for TableSchema {
    fn default() -> Self {
        TableSchema::from_columns([(TIME_COLUMN.to_string(), ColumnKind::Time)])
    }
}

impl TableSchema {
    /// A table schema of `columns` in order (the first must be `time`).
    pub fn from_columns(columns: impl IntoIterator<Item = (String, ColumnKind)>) -> TableSchema {
        let mut fields = Vec::new();
        let mut index = HashMap::new();
        for (name, kind) in columns {
            index.insert(name.clone(), (fields.len(), kind));
            fields.push(kind.field(&name));
        }
        TableSchema {
            schema: Arc::new(Schema::new(fields)),
            index: Arc::new(index),
        }
    }

    /// The Arrow schema of the table.
    pub fn arrow(&self) -> &SchemaRef {
        &self.schema
    }

    /// The kind and position of column `name`, if the table has it.
    pub fn column(&self, name: &str) -> Option<(usize, ColumnKind)> {
        self.index.get(name).copied()
    }

    /// Columns in order, with their kinds.
    pub fn columns(&self) -> impl Iterator<Item = (&str, ColumnKind)> + '_ {
        self.schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), self.index[f.name()].1))
    }

    /// Names of the tag columns, sorted: the sort key of flushed files.
    pub fn tag_names(&self) -> Vec<String> {
        let mut tags: Vec<String> = self
            .columns()
            .filter(|(_, k)| *k == ColumnKind::Tag)
            .map(|(n, _)| n.to_string())
            .collect();
        tags.sort();
        tags
    }

    pub fn len(&self) -> usize {
        self.schema.fields().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every column of `other` is in this schema with the same kind.
    pub fn contains(&self, other: &Schema) -> bool {
        other.fields().iter().all(|f| {
            self.index
                .get(f.name())
                .is_some_and(|(_, k)| k.data_type() == *f.data_type())
        })
    }

    /// This schema with the columns of `other` that it lacks appended.
    /// Fails with [`SchemaError::TypeConflict`] naming the first column whose
    /// kind differs. Returns `None` when nothing new was added.
    pub fn merge(&self, other: &Schema) -> Result<Option<TableSchema>, SchemaError> {
        let mut added = Vec::new();
        for f in other.fields() {
            let given = ColumnKind::from_arrow(f.name(), f.data_type())?;
            match self.index.get(f.name()) {
                Some((_, existing)) if *existing != given => {
                    return Err(SchemaError::TypeConflict {
                        column: f.name().clone(),
                        existing: *existing,
                        given,
                    })
                }
                Some(_) => {}
                None => added.push((f.name().clone(), given)),
            }
        }
        if added.is_empty() {
            return Ok(None);
        }
        let columns = self
            .columns()
            .map(|(n, k)| (n.to_string(), k))
            .chain(added)
            .collect::<Vec<_>>();
        Ok(Some(TableSchema::from_columns(columns)))
    }

    /// Builds a table schema from an Arrow schema (as stored in a Parquet
    /// file or a WAL entry), checking every column.
    pub fn try_from_arrow(schema: &Schema) -> Result<TableSchema, SchemaError> {
        Ok(TableSchema::default().merge(schema)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_database_name("telegraf_1-x").is_ok());
        assert!(validate_database_name("1abc").is_err());
        assert!(validate_database_name("").is_err());
        assert!(validate_database_name("a.b").is_err());
        assert!(validate_database_name(&"a".repeat(64)).is_ok());
        assert!(validate_database_name(&"a".repeat(65)).is_err());
        assert!(validate_measurement_name(&"a".repeat(128)).is_ok());
        assert!(validate_measurement_name(&"a".repeat(129)).is_err());
        assert!(validate_column_name("usage idle,x=1").is_ok());
        assert!(validate_column_name("a\nb").is_err());
    }

    #[test]
    fn merge_adds_columns_and_rejects_conflicts() {
        let s = TableSchema::default();
        let a = Schema::new(vec![
            ColumnKind::Time.field("time"),
            ColumnKind::Tag.field("host"),
            ColumnKind::Field(FieldType::Float).field("usage"),
        ]);
        let s = s.merge(&a).unwrap().unwrap();
        assert_eq!(s.len(), 3);
        assert!(s.merge(&a).unwrap().is_none());
        assert!(s.contains(&a));
        let b = Schema::new(vec![ColumnKind::Field(FieldType::Integer).field("usage")]);
        let err = s.merge(&b).unwrap_err();
        assert_eq!(
            err.to_string(),
            "column \"usage\" is of type float, but was given integer"
        );
        let c = Schema::new(vec![ColumnKind::Field(FieldType::Boolean).field("up")]);
        let s2 = s.merge(&c).unwrap().unwrap();
        assert_eq!(
            s2.columns().map(|(n, _)| n).collect::<Vec<_>>(),
            ["time", "host", "usage", "up"]
        );
        assert_eq!(s2.tag_names(), ["host"]);
    }

    #[test]
    fn time_must_be_named_time() {
        let err = ColumnKind::from_arrow("ts", &time_data_type()).unwrap_err();
        assert!(matches!(err, SchemaError::TypeConflict { .. }));
        let err = ColumnKind::from_arrow("time", &DataType::Float64).unwrap_err();
        assert!(err.to_string().contains("\"time\" is of type timestamp"));
        assert!(ColumnKind::from_arrow("x", &DataType::Int32).is_err());
    }
}
