//! The node-wide catalog of table schemas, and each shard's cache of it.
//!
//! Two shards may receive conflicting types for a new column at the same
//! moment; the catalog decides which one wins, so a column has one type on
//! the whole node. Shards check a write against their own [`CatalogCache`]
//! first and go to the shared catalog (a mutex, off the hot path) only when a
//! write brings a column the cache has not seen. Columns are only ever added,
//! never retyped, so a cached column's type is always current.
//!
//! The catalog is rebuilt at start-up from the manifest's file schemas and
//! from WAL replay; a column registered by a write that then failed is gone
//! after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_schema::Schema;

use crate::schema::{SchemaError, TableKey, TableSchema};

/// Schemas of all tables of the node.
#[derive(Debug, Default)]
pub struct Catalog {
    tables: Mutex<HashMap<TableKey, TableSchema>>,
}

impl Catalog {
    pub fn new() -> Arc<Catalog> {
        Arc::new(Catalog::default())
    }

    /// Adds the columns of `schema` that `table` lacks and returns the merged
    /// schema, or the conflict.
    pub fn merge(&self, table: &TableKey, schema: &Schema) -> Result<TableSchema, SchemaError> {
        let mut tables = self.tables.lock().expect("catalog lock poisoned");
        let current = tables.entry(table.clone()).or_default();
        if let Some(merged) = current.merge(schema)? {
            *current = merged;
        }
        Ok(current.clone())
    }

    pub fn get(&self, table: &TableKey) -> Option<TableSchema> {
        self.tables
            .lock()
            .expect("catalog lock poisoned")
            .get(table)
            .cloned()
    }

    /// Every table and its schema, sorted by key.
    pub fn tables(&self) -> Vec<(TableKey, TableSchema)> {
        let mut all: Vec<_> = self
            .tables
            .lock()
            .expect("catalog lock poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// One shard's view of the [`Catalog`].
#[derive(Debug)]
pub struct CatalogCache {
    catalog: Arc<Catalog>,
    local: HashMap<TableKey, TableSchema>,
}

impl CatalogCache {
    pub fn new(catalog: Arc<Catalog>) -> CatalogCache {
        CatalogCache {
            catalog,
            local: HashMap::new(),
        }
    }

    /// Checks that `schema` fits `table`, registering new columns. Returns the
    /// table's schema after the write.
    pub fn check(&mut self, table: &TableKey, schema: &Schema) -> Result<TableSchema, SchemaError> {
        if let Some(local) = self.local.get(table) {
            if local.contains(schema) {
                return Ok(local.clone());
            }
        }
        let merged = self.catalog.merge(table, schema)?;
        self.local.insert(table.clone(), merged.clone());
        Ok(merged)
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ColumnKind, FieldType};

    #[test]
    fn shards_agree_on_column_types() {
        let catalog = Catalog::new();
        let mut a = CatalogCache::new(catalog.clone());
        let mut b = CatalogCache::new(catalog.clone());
        let t = TableKey::new("db", "m").unwrap();
        let float = Schema::new(vec![ColumnKind::Field(FieldType::Float).field("v")]);
        let int = Schema::new(vec![ColumnKind::Field(FieldType::Integer).field("v")]);
        a.check(&t, &float).unwrap();
        let err = b.check(&t, &int).unwrap_err();
        assert!(matches!(err, SchemaError::TypeConflict { .. }));
        assert_eq!(b.check(&t, &float).unwrap().len(), 2);
        assert_eq!(catalog.tables().len(), 1);
    }
}
