//! One measurement as a DataFusion table: the manifest's Parquet files
//! (pruned by their time range before any is opened) unioned with the
//! shards' buffered rows, under the catalog's schema (missing columns read as
//! null). `TidemarkScanExec` wraps the scan so `EXPLAIN` shows how many files
//! were pruned and scanned; it passes filters and statistics through, so row
//! groups are pruned by the Parquet statistics and `count(*)` is answered
//! from metadata. It also adds a distinct-count estimate for tag columns
//! (from the manifest's per-file counts and the buffered batches'
//! dictionaries), which bounds DataFusion's estimate of a `GROUP BY tag`'s
//! output and so lets the join planner build on the small side.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, RecordBatch, TimestampNanosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{
    Column, ColumnStatistics, DFSchema, DataFusionError, Result, ScalarValue, Statistics,
};
use datafusion::config::ConfigOptions;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions, StatisticsArgs,
};
use tidemark_shards::manifest::FileMeta;
use tidemark_shards::schema::{ColumnKind, TableKey, TIME_COLUMN};

use super::engine::QueryEngine;

/// A snapshot of one measurement for one query.
#[derive(Debug)]
pub struct MeasurementTable {
    pub schema: SchemaRef,
    pub store_url: ObjectStoreUrl,
    pub files: Vec<FileMeta>,
    /// Buffered rows of every shard, padded to `schema`.
    pub mem: Vec<RecordBatch>,
    pub engine: Arc<QueryEngine>,
}

/// The files' time ranges as `PruningPredicate` wants them.
struct FileTimes<'a> {
    files: &'a [FileMeta],
}

impl PruningStatistics for FileTimes<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        (column.name == TIME_COLUMN).then(|| {
            Arc::new(
                TimestampNanosecondArray::from_iter_values(self.files.iter().map(|f| f.min_time))
                    .with_timezone("UTC"),
            ) as ArrayRef
        })
    }
    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        (column.name == TIME_COLUMN).then(|| {
            Arc::new(
                TimestampNanosecondArray::from_iter_values(self.files.iter().map(|f| f.max_time))
                    .with_timezone("UTC"),
            ) as ArrayRef
        })
    }
    fn num_containers(&self) -> usize {
        self.files.len()
    }
    fn null_counts(&self, _column: &Column) -> Option<ArrayRef> {
        None
    }
    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(
            self.files.iter().map(|f| f.rows),
        )))
    }
    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

#[async_trait]
impl TableProvider for MeasurementTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used for pruning; DataFusion still filters the rows above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let predicate: Option<Arc<dyn PhysicalExpr>> = match conjunction(filters.iter().cloned()) {
            Some(expr) => {
                let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
                Some(state.create_physical_expr(expr, &df_schema)?)
            }
            None => None,
        };
        // Files whose time range cannot match are dropped before any is opened.
        let kept: Vec<&FileMeta> = match &predicate {
            Some(pred) => {
                let pp = PruningPredicateBuilder::new()
                    .with_file_schema(Arc::clone(&self.schema))
                    .try_build(Arc::clone(pred))?;
                let keep = pp.prune(&FileTimes { files: &self.files })?;
                self.files
                    .iter()
                    .zip(keep)
                    .filter(|(_, k)| *k)
                    .map(|(f, _)| f)
                    .collect()
            }
            None => self.files.iter().collect(),
        };
        let files_pruned = self.files.len() - kept.len();
        self.engine
            .count_pruning(files_pruned as u64, kept.len() as u64);
        let time_idx = self.schema.index_of(TIME_COLUMN)?;

        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !kept.is_empty() {
            // Files never change once written: keep their footers and page
            // indexes in the runtime's metadata cache (shared by all
            // queries) instead of reading them again for every query.
            let store = state.runtime_env().object_store(&self.store_url)?;
            let metadata_cache = state.runtime_env().cache_manager.get_file_metadata_cache();
            let source = ParquetSource::new(Arc::clone(&self.schema))
                .with_table_parquet_options(state.default_table_options().parquet)
                .with_parquet_file_reader_factory(Arc::new(CachedParquetFileReaderFactory::new(
                    store,
                    metadata_cache,
                )));
            let n_groups = state.config().target_partitions().max(1).min(kept.len());
            let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); n_groups];
            for (i, f) in kept.iter().enumerate() {
                let mut stats = Statistics::new_unknown(&self.schema)
                    .with_num_rows(Precision::Exact(f.rows as usize));
                stats.column_statistics[time_idx] = ColumnStatistics::new_unknown()
                    .with_min_value(Precision::Exact(ScalarValue::TimestampNanosecond(
                        Some(f.min_time),
                        Some("UTC".into()),
                    )))
                    .with_max_value(Precision::Exact(ScalarValue::TimestampNanosecond(
                        Some(f.max_time),
                        Some("UTC".into()),
                    )));
                groups[i % n_groups].push(
                    PartitionedFile::new(f.path.clone(), f.size).with_statistics(Arc::new(stats)),
                );
            }
            let total_rows: u64 = kept.iter().map(|f| f.rows).sum();
            let config = FileScanConfigBuilder::new(self.store_url.clone(), Arc::new(source))
                .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
                .with_statistics(
                    Statistics::new_unknown(&self.schema)
                        .with_num_rows(Precision::Exact(total_rows as usize)),
                )
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }
        if !self.mem.is_empty() || inputs.is_empty() {
            let mem = MemorySourceConfig::try_new(
                std::slice::from_ref(&self.mem),
                Arc::clone(&self.schema),
                projection.cloned(),
            )?
            .with_limit(limit);
            inputs.push(DataSourceExec::from_data_source(mem));
        }
        let union = UnionExec::try_new(inputs)?;
        let tag_ndv = tag_distinct_bounds(&self.schema, &kept, &self.mem);
        let distinct: Vec<Option<usize>> = union
            .schema()
            .fields()
            .iter()
            .map(|f| tag_ndv.get(f.name().as_str()).copied())
            .collect();
        Ok(Arc::new(TidemarkScanExec::new(
            union,
            files_pruned,
            kept.len(),
            self.mem.len(),
            Arc::new(distinct),
        )))
    }
}

/// Per tag column of `schema`, an upper bound of its distinct non-null
/// values in the scanned files and buffered batches: the sum of the files'
/// recorded counts (a file without the column adds 0; a file whose record
/// has no count for it, written before counts existed, leaves the column
/// without a bound) plus the dictionary sizes of the buffered batches. The
/// sum over files double-counts values shared by files (every file of an
/// hour holds the same hosts), so it can be far above the true count; it
/// is still far below the row count, which is what join planning needs.
fn tag_distinct_bounds<'a>(
    schema: &'a SchemaRef,
    files: &[&FileMeta],
    mem: &[RecordBatch],
) -> HashMap<&'a str, usize> {
    let mut out = HashMap::new();
    'columns: for (idx, field) in schema.fields().iter().enumerate() {
        if !matches!(field.data_type(), DataType::Dictionary(..)) {
            continue;
        }
        let name = field.name().as_str();
        let mut n: u64 = 0;
        for f in files {
            let is_tag = f
                .columns
                .iter()
                .any(|(c, k)| c == name && *k == ColumnKind::Tag);
            if !is_tag {
                // The column reads as null in this file (or is not a tag
                // there): no non-null values.
                if f.columns.iter().any(|(c, _)| c == name) {
                    continue 'columns;
                }
                continue;
            }
            match f.tag_distinct.get(name) {
                Some(&d) => n = n.saturating_add(d),
                None => continue 'columns,
            }
        }
        for b in mem {
            match b.column(idx).as_any_dictionary_opt() {
                Some(d) => n = n.saturating_add(d.values().len() as u64),
                None => continue 'columns,
            }
        }
        out.insert(name, usize::try_from(n).unwrap_or(usize::MAX));
    }
    out
}

/// Transparent wrapper that shows pruning in `EXPLAIN`:
/// `TidemarkScanExec: files_pruned=N, files_scanned=M, buffer_batches=K`.
/// Its statistics are its input's plus, for tag columns, an inexact
/// distinct count (see [`tag_distinct_bounds`]).
#[derive(Debug)]
pub struct TidemarkScanExec {
    input: Arc<dyn ExecutionPlan>,
    props: Arc<PlanProperties>,
    files_pruned: usize,
    files_scanned: usize,
    buffer_batches: usize,
    /// Per output column: an upper bound of its distinct values, if known.
    distinct: Arc<Vec<Option<usize>>>,
}

impl TidemarkScanExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        files_pruned: usize,
        files_scanned: usize,
        buffer_batches: usize,
        distinct: Arc<Vec<Option<usize>>>,
    ) -> Self {
        let props = Arc::clone(input.properties());
        TidemarkScanExec {
            input,
            props,
            files_pruned,
            files_scanned,
            buffer_batches,
            distinct,
        }
    }
}

impl DisplayAs for TidemarkScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => write!(
                f,
                "TidemarkScanExec: files_pruned={}, files_scanned={}, buffer_batches={}",
                self.files_pruned, self.files_scanned, self.buffer_batches
            ),
            DisplayFormatType::TreeRender => write!(
                f,
                "files_pruned={}\nfiles_scanned={}\nbuffer_batches={}",
                self.files_pruned, self.files_scanned, self.buffer_batches
            ),
        }
    }
}

impl ExecutionPlan for TidemarkScanExec {
    fn name(&self) -> &str {
        "TidemarkScanExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(TidemarkScanExec::new(
            children.swap_remove(0),
            self.files_pruned,
            self.files_scanned,
            self.buffer_batches,
            Arc::clone(&self.distinct),
        )))
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }
    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let input = &input_stats[0];
        if self.distinct.iter().all(Option::is_none)
            || input.column_statistics.len() != self.distinct.len()
        {
            return Ok(Arc::clone(input));
        }
        // The bound holds for the whole scan, so for any one partition too;
        // no partition has more distinct values than rows.
        let rows = input.num_rows.get_value().copied();
        let mut stats = Statistics::clone(input);
        for (col, ndv) in stats.column_statistics.iter_mut().zip(self.distinct.iter()) {
            if let (Some(ndv), Precision::Absent) = (ndv, &col.distinct_count) {
                col.distinct_count = Precision::Inexact(rows.map_or(*ndv, |r| r.min(*ndv)));
            }
        }
        Ok(Arc::new(stats))
    }
    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }
    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
    }
}

/// The per-query catalog `tidemark`: one schema per database.
#[derive(Debug)]
pub struct QueryCatalog {
    pub engine: Arc<QueryEngine>,
}

impl CatalogProvider for QueryCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut dbs: Vec<String> = self
            .engine
            .catalog()
            .tables()
            .into_iter()
            .map(|(k, _)| k.database().to_string())
            .collect();
        dbs.dedup();
        dbs
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        Some(Arc::new(DatabaseSchema {
            database: name.to_string(),
            engine: Arc::clone(&self.engine),
        }))
    }
}

/// One database: its measurements are built on demand, per query.
#[derive(Debug)]
pub struct DatabaseSchema {
    database: String,
    engine: Arc<QueryEngine>,
}

#[async_trait]
impl SchemaProvider for DatabaseSchema {
    fn table_names(&self) -> Vec<String> {
        self.engine
            .catalog()
            .tables()
            .into_iter()
            .filter(|(k, _)| k.database() == self.database)
            .map(|(k, _)| k.measurement().to_string())
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let Ok(key) = TableKey::new(&self.database, name) else {
            return Ok(None);
        };
        let Some(schema) = self.engine.catalog().get(&key) else {
            return Ok(None);
        };
        let table = self.engine.measurement(&key, schema).await?;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TableKey::new(&self.database, name).is_ok_and(|k| self.engine.catalog().get(&k).is_some())
    }
}
