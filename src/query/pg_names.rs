//! Tables named the way PostgreSQL clients name them, for the PostgreSQL
//! server (`pg.rs`) and for queries it forwards (`x-tidemark-sql-names:
//! postgres`): the connection's database is the catalog, its measurements
//! are tables of schema `public`, every other database is a schema of its
//! name; `information_schema` describes them with PostgreSQL's type names
//! (`double precision`, `timestamp with time zone`), which clients such as
//! Grafana read to tell time and number columns apart. `pg_catalog` is
//! registered by `datafusion-pg-catalog`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{CatalogProvider, MemTable, SchemaProvider, TableProvider};
use datafusion::common::DataFusionError;
use tidemark_shards::schema::{ColumnKind, FieldType};

use datafusion::arrow::array::Array;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility};
use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;

use super::engine::QueryEngine;

/// See the [module docs](self).
pub struct PgDatabase {
    database: String,
    engine: Arc<QueryEngine>,
    registered: RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
}

impl PgDatabase {
    pub fn new(database: &str, engine: Arc<QueryEngine>) -> PgDatabase {
        PgDatabase {
            database: database.to_string(),
            engine,
            registered: RwLock::new(HashMap::new()),
        }
    }

    /// The schemas of measurements: `public`, then the other databases.
    fn measurement_schemas(&self) -> Vec<(String, String)> {
        let mut all = vec![("public".to_string(), self.database.clone())];
        all.extend(
            self.engine
                .databases()
                .into_iter()
                .filter(|d| *d != self.database && d != "public")
                .map(|d| (d.clone(), d)),
        );
        all
    }
}

impl fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDatabase")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl CatalogProvider for PgDatabase {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .measurement_schemas()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        names.push(INFORMATION_SCHEMA.to_string());
        names.extend(
            self.registered
                .read()
                .expect("schemas lock")
                .keys()
                .cloned(),
        );
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(s) = self.registered.read().expect("schemas lock").get(name) {
            return Some(s.clone());
        }
        if name == INFORMATION_SCHEMA {
            return Some(Arc::new(InformationSchema {
                catalog: self.database.clone(),
                schemas: self.measurement_schemas(),
                engine: self.engine.clone(),
            }));
        }
        self.measurement_schemas()
            .into_iter()
            .find(|(s, _)| s == name)
            .map(|(_, database)| self.engine.database_schema(&database))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> datafusion::common::Result<Option<Arc<dyn SchemaProvider>>> {
        Ok(self
            .registered
            .write()
            .expect("schemas lock")
            .insert(name.to_string(), schema))
    }
}

const INFORMATION_SCHEMA: &str = "information_schema";

/// The PostgreSQL version tidemark answers as (`server_version`,
/// `version()`): clients gate features on it.
pub const PG_VERSION: &str = "16.6";
pub const PG_VERSION_NUM: &str = "160006";

/// A new session of `database` with PostgreSQL's names, its `pg_catalog`
/// (`datafusion-pg-catalog`: ~60 tables, set up once per session) and the
/// functions clients call at connect.
pub fn new_context(
    engine: &QueryEngine,
    database: &str,
) -> Result<SessionContext, DataFusionError> {
    let ctx = engine.pg_session(database);
    setup_pg_catalog(&ctx, database, EmptyContextProvider).map_err(|e| *e)?;
    for udf in pg_udfs() {
        ctx.register_udf(udf);
    }
    Ok(ctx)
}

/// `version()` and `current_setting(name)` as PostgreSQL answers them.
pub fn pg_udfs() -> [ScalarUDF; 2] {
    let version = format!(
        "PostgreSQL {PG_VERSION} (tidemark {}, Apache DataFusion {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    );
    let version_udf = datafusion::logical_expr::create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::Utf8(Some(version.clone())),
            ))
        }),
    );
    let setting_udf = datafusion::logical_expr::create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let names = ColumnarValue::values_to_arrays(args)?;
            let names = names[0]
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| DataFusionError::Execution("current_setting takes text".into()))?;
            let mut out = Vec::with_capacity(names.len());
            for name in names.iter() {
                out.push(match name {
                    None => None,
                    Some(n) => Some(setting(n).ok_or_else(|| {
                        DataFusionError::Execution(format!(
                            "unrecognized configuration parameter \"{n}\""
                        ))
                    })?),
                });
            }
            Ok(ColumnarValue::Array(
                Arc::new(StringArray::from(out)) as ArrayRef
            ))
        }),
    );
    [version_udf, setting_udf]
}

/// The settings `current_setting` answers.
pub fn setting(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "search_path" => "public",
        "server_version" => PG_VERSION,
        "server_version_num" => PG_VERSION_NUM,
        "timezone" => "UTC",
        "datestyle" => "ISO, YMD",
        "server_encoding" | "client_encoding" => "UTF8",
        "standard_conforming_strings" => "on",
        "default_transaction_read_only" | "transaction_read_only" => "on",
        "max_identifier_length" => "63",
        "integer_datetimes" => "on",
        _ => return None,
    })
}

/// PostgreSQL's name of a column's type.
pub fn pg_type_name(kind: ColumnKind) -> &'static str {
    match kind {
        ColumnKind::Time => "timestamp with time zone",
        ColumnKind::Tag | ColumnKind::Field(FieldType::String) => "text",
        ColumnKind::Field(FieldType::Float) => "double precision",
        ColumnKind::Field(FieldType::Integer) => "bigint",
        ColumnKind::Field(FieldType::Unsigned) => "numeric",
        ColumnKind::Field(FieldType::Boolean) => "boolean",
    }
}

/// `information_schema.{schemata, tables, columns}` of the measurements,
/// built when a query names them.
#[derive(Debug)]
struct InformationSchema {
    catalog: String,
    /// (schema, database) of every schema of measurements.
    schemas: Vec<(String, String)>,
    engine: Arc<QueryEngine>,
}

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

impl InformationSchema {
    fn build(&self, name: &str) -> Option<Result<RecordBatch, DataFusionError>> {
        let tables = self.engine.catalog().tables();
        // (schema, measurement, table schema) in schema order.
        let mut listed = Vec::new();
        for (schema, database) in &self.schemas {
            let mut own: Vec<_> = tables
                .iter()
                .filter(|(k, _)| k.database() == database)
                .collect();
            own.sort_by(|a, b| a.0.measurement().cmp(b.0.measurement()));
            listed.extend(
                own.into_iter()
                    .map(|(k, s)| (schema.as_str(), k.measurement(), s)),
            );
        }
        let strings = |v: Vec<Option<String>>| Arc::new(StringArray::from(v)) as ArrayRef;
        let catalog = |n: usize| strings(vec![Some(self.catalog.clone()); n]);
        let result = match name {
            "schemata" => {
                let names: Vec<Option<String>> =
                    self.schemas.iter().map(|(s, _)| Some(s.clone())).collect();
                let n = names.len();
                RecordBatch::try_new(
                    Arc::new(Schema::new(vec![
                        text("catalog_name"),
                        text("schema_name"),
                        text("schema_owner"),
                    ])),
                    vec![
                        catalog(n),
                        strings(names),
                        strings(vec![Some("tidemark".into()); n]),
                    ],
                )
            }
            "tables" => {
                let n = listed.len();
                RecordBatch::try_new(
                    Arc::new(Schema::new(vec![
                        text("table_catalog"),
                        text("table_schema"),
                        text("table_name"),
                        text("table_type"),
                    ])),
                    vec![
                        catalog(n),
                        strings(listed.iter().map(|t| Some(t.0.to_string())).collect()),
                        strings(listed.iter().map(|t| Some(t.1.to_string())).collect()),
                        strings(vec![Some("BASE TABLE".into()); n]),
                    ],
                )
            }
            "columns" => {
                let mut cols: Vec<[String; 4]> = Vec::new();
                let mut positions = Vec::new();
                for (schema, table, s) in &listed {
                    for (i, (column, kind)) in s.columns().enumerate() {
                        cols.push([
                            schema.to_string(),
                            table.to_string(),
                            column.to_string(),
                            pg_type_name(kind).to_string(),
                        ]);
                        positions.push(i as i64 + 1);
                    }
                }
                let n = cols.len();
                let nullable: Vec<Option<String>> = cols
                    .iter()
                    .map(|c| {
                        Some(
                            if c[3] == "timestamp with time zone" {
                                "NO"
                            } else {
                                "YES"
                            }
                            .into(),
                        )
                    })
                    .collect();
                let col = |i: usize| strings(cols.iter().map(|c| Some(c[i].clone())).collect());
                RecordBatch::try_new(
                    Arc::new(Schema::new(vec![
                        text("table_catalog"),
                        text("table_schema"),
                        text("table_name"),
                        text("column_name"),
                        Field::new("ordinal_position", DataType::Int64, false),
                        text("column_default"),
                        text("is_nullable"),
                        text("data_type"),
                    ])),
                    vec![
                        catalog(n),
                        col(0),
                        col(1),
                        col(2),
                        Arc::new(Int64Array::from(positions)),
                        strings(vec![None; n]),
                        strings(nullable),
                        col(3),
                    ],
                )
            }
            _ => return None,
        };
        Some(result.map_err(DataFusionError::from))
    }
}

#[async_trait]
impl SchemaProvider for InformationSchema {
    fn table_names(&self) -> Vec<String> {
        ["schemata", "tables", "columns"].map(String::from).to_vec()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let Some(batch) = self.build(name) else {
            return Ok(None);
        };
        let batch = batch?;
        let schema: SchemaRef = batch.schema();
        Ok(Some(Arc::new(MemTable::try_new(
            schema,
            vec![vec![batch]],
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names().iter().any(|t| t == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_clients_read_at_connect() {
        assert_eq!(setting("server_version_num"), Some(PG_VERSION_NUM));
        assert_eq!(setting("search_path"), Some("public"));
        assert_eq!(setting("TimeZone"), Some("UTC"));
        assert_eq!(setting("no_such_thing"), None);
    }

    #[test]
    fn postgres_type_names() {
        assert_eq!(pg_type_name(ColumnKind::Time), "timestamp with time zone");
        assert_eq!(pg_type_name(ColumnKind::Tag), "text");
        assert_eq!(
            pg_type_name(ColumnKind::Field(FieldType::Float)),
            "double precision"
        );
        assert_eq!(
            pg_type_name(ColumnKind::Field(FieldType::Integer)),
            "bigint"
        );
        assert_eq!(
            pg_type_name(ColumnKind::Field(FieldType::Unsigned)),
            "numeric"
        );
        assert_eq!(
            pg_type_name(ColumnKind::Field(FieldType::Boolean)),
            "boolean"
        );
    }
}
