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
use tidemark_shards::manifest::{FileMeta, FilePins};
use tidemark_shards::schema::{ColumnKind, TableKey, TableSchema, TIME_COLUMN};
use tidemark_shards::ShardId;

use super::dedup::{DedupExec, PointLayout, Ranges};

use super::engine::QueryEngine;

/// A snapshot of one measurement for one query.
#[derive(Debug)]
pub struct MeasurementTable {
    pub key: TableKey,
    pub schema: SchemaRef,
    /// `schema` with each column's kind.
    pub table_schema: TableSchema,
    pub store_url: ObjectStoreUrl,
    pub files: Vec<FileMeta>,
    /// Buffered rows of every shard, padded to `schema`; a shard's in
    /// write order.
    pub mem: Vec<RecordBatch>,
    /// The shard of each of `mem`.
    pub mem_shards: Vec<ShardId>,
    /// Keeps `files` on disk while the query runs.
    pub pins: Arc<FilePins>,
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

        // Where a point may repeat (see `super::dedup`): times two sources
        // cover, and every buffered row.
        let mem_ranges: Vec<(i64, i64)> = self
            .mem
            .iter()
            .filter_map(|b| time_range(b, time_idx))
            .collect();
        let mem_overlap = Ranges::union(mem_ranges.clone());
        let mut intervals: Vec<(i64, i64)> =
            kept.iter().map(|f| (f.min_time, f.max_time)).collect();
        intervals.extend(&mem_ranges);
        let mut overlap = Ranges::overlaps(&intervals).intervals().to_vec();
        overlap.extend(mem_overlap.intervals());
        let overlap = Ranges::union(overlap);
        let (mut dirty, mut clean): (Vec<&FileMeta>, Vec<&FileMeta>) = kept
            .iter()
            .partition(|f| overlap.touches(f.min_time, f.max_time));
        if !dirty.is_empty() {
            // A file that shares times only with files an earlier merge
            // found to repeat no point with it is read as it is.
            let verified = self.engine.verified_files(&self.key, &self.files);
            let (merge, plain): (Vec<&FileMeta>, Vec<&FileMeta>) =
                dirty.into_iter().partition(|f| {
                    mem_overlap.touches(f.min_time, f.max_time) || !verified.covers(f, &self.files)
                });
            dirty = merge;
            clean.extend(plain);
        }

        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !clean.is_empty() {
            inputs.push(self.file_scan(state, &clean, projection, limit, None)?);
        }
        if !dirty.is_empty() {
            let on_clean = {
                let engine = Arc::clone(&self.engine);
                let key = self.key.clone();
                let checked: Vec<FileMeta> = dirty.iter().map(|f| (*f).clone()).collect();
                let all = self.files.clone();
                Arc::new(move || engine.verify_files(&key, &checked, &all))
                    as Arc<dyn Fn() + Send + Sync>
            };
            inputs.push(self.dedup_scan(state, &dirty, projection, overlap, on_clean)?);
        } else if !self.mem.is_empty() {
            // No file shares a time with the buffer: its repeated points, if
            // any, are merged here, and the scan keeps exact statistics.
            let mem = MemorySourceConfig::try_new(
                &[self.resolved_buffer()?],
                Arc::clone(&self.schema),
                projection.cloned(),
            )?
            .with_limit(limit);
            inputs.push(DataSourceExec::from_data_source(mem));
        }
        if inputs.is_empty() {
            let mem = MemorySourceConfig::try_new(
                &[Vec::new()],
                Arc::clone(&self.schema),
                projection.cloned(),
            )?;
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
            ScanCounts {
                files_pruned,
                files_scanned: kept.len(),
                files_merged: dirty.len(),
                buffer_batches: self.mem.len(),
            },
            Arc::new(distinct),
            Arc::clone(&self.pins),
        )))
    }
}

/// The name of the source-rank column of a dedup scan.
const RANK_COLUMN: &str = "__tidemark_source";

/// Columns a dedup scan reads, and where the point's parts land.
struct ReadLayout {
    read: Vec<usize>,
    points: PointLayout,
}

/// Each source's rank in write order.
struct SourceRanks {
    files: Vec<u32>,
    mem: Vec<u32>,
    /// Per rank: a buffer batch (merged whole).
    whole: Vec<bool>,
}

/// `batch` (with `schema`'s columns but the last) with a last column of `rank`.
fn with_rank(batch: &RecordBatch, schema: &SchemaRef, rank: u32) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(datafusion::arrow::array::UInt32Array::from(
        vec![rank; batch.num_rows()],
    )));
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// The smallest and largest time of a batch (`None` if it has no rows).
fn time_range(batch: &RecordBatch, time_idx: usize) -> Option<(i64, i64)> {
    let times = batch
        .column(time_idx)
        .as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>();
    let lo = datafusion::arrow::compute::min(times)?;
    let hi = datafusion::arrow::compute::max(times)?;
    Some((lo, hi))
}

impl MeasurementTable {
    /// A Parquet scan of `files`; with `ranks`, each row also carries its
    /// file's rank in a last column (`RANK_COLUMN`).
    fn file_scan(
        &self,
        state: &dyn Session,
        files: &[&FileMeta],
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
        ranks: Option<&[u32]>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let time_idx = self.schema.index_of(TIME_COLUMN)?;
        // Files never change once written: keep their footers and page
        // indexes in the runtime's metadata cache (shared by all
        // queries) instead of reading them again for every query.
        let store = state.runtime_env().object_store(&self.store_url)?;
        let metadata_cache = state.runtime_env().cache_manager.get_file_metadata_cache();
        let mut table_schema =
            datafusion::datasource::table_schema::TableSchema::builder(Arc::clone(&self.schema));
        if ranks.is_some() {
            table_schema = table_schema.with_table_partition_cols(vec![Arc::new(
                datafusion::arrow::datatypes::Field::new(RANK_COLUMN, DataType::UInt32, false),
            )]);
        }
        let table_schema = table_schema.build();
        let full_schema = Arc::clone(table_schema.table_schema());
        let source = ParquetSource::new(table_schema)
            .with_table_parquet_options(state.default_table_options().parquet)
            .with_parquet_file_reader_factory(Arc::new(CachedParquetFileReaderFactory::new(
                store,
                metadata_cache,
            )));
        let n_groups = state.config().target_partitions().max(1).min(files.len());
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); n_groups];
        for (i, f) in files.iter().enumerate() {
            let mut stats = Statistics::new_unknown(&full_schema)
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
            let mut file =
                PartitionedFile::new(f.path.clone(), f.size).with_statistics(Arc::new(stats));
            if let Some(ranks) = ranks {
                file.partition_values = vec![ScalarValue::UInt32(Some(ranks[i]))];
            }
            groups[i % n_groups].push(file);
        }
        let total_rows: u64 = files.iter().map(|f| f.rows).sum();
        let config = FileScanConfigBuilder::new(self.store_url.clone(), Arc::new(source))
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_statistics(
                Statistics::new_unknown(&full_schema)
                    .with_num_rows(Precision::Exact(total_rows as usize)),
            )
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    /// The buffered rows with repeated points merged (as they are, when no
    /// point repeats).
    fn resolved_buffer(&self) -> Result<Vec<RecordBatch>> {
        let layout = self.layout(&(0..self.schema.fields().len()).collect::<Vec<_>>());
        let mut batches = Vec::with_capacity(self.mem.len());
        let ranked = self.ranked_schema(&layout.read);
        let order = self.source_ranks(&[]);
        for (b, &rank) in self.mem.iter().zip(&order.mem) {
            batches.push(with_rank(b, &ranked, rank)?);
        }
        let layout = PointLayout {
            whole: order.whole,
            ..layout.points
        };
        match super::dedup::merge_repeated(&ranked, &batches, &layout)? {
            None => Ok(self.mem.clone()),
            Some(merged) => Ok(vec![merged.project(&layout.output)?]),
        }
    }

    /// The columns a dedup scan reads for the output columns `wanted`:
    /// those plus tags and time (a point's identity), in table order, then
    /// the source rank; and where each lands.
    fn layout(&self, wanted: &[usize]) -> ReadLayout {
        let n_columns = self.schema.fields().len();
        let mut kinds = vec![None; n_columns];
        for (name, kind) in self.table_schema.columns() {
            if let Ok(i) = self.schema.index_of(name) {
                kinds[i] = Some(kind);
            }
        }
        let read: Vec<usize> = (0..n_columns)
            .filter(|&i| {
                wanted.contains(&i) || matches!(kinds[i], Some(ColumnKind::Tag | ColumnKind::Time))
            })
            .collect();
        let at = |col: usize| read.iter().position(|&c| c == col).expect("read");
        let of_kind = |want: fn(ColumnKind) -> bool| -> Vec<usize> {
            read.iter()
                .enumerate()
                .filter(|(_, &c)| kinds[c].is_some_and(want))
                .map(|(i, _)| i)
                .collect()
        };
        let points = PointLayout {
            tags: of_kind(|k| k == ColumnKind::Tag),
            time: of_kind(|k| k == ColumnKind::Time)[0],
            fields: of_kind(|k| matches!(k, ColumnKind::Field(_))),
            rank: read.len(),
            whole: Vec::new(),
            output: wanted.iter().map(|&c| at(c)).collect(),
        };
        ReadLayout { read, points }
    }

    /// `read`'s columns of the table schema, then the rank column.
    fn ranked_schema(&self, read: &[usize]) -> SchemaRef {
        let mut fields: Vec<_> = read
            .iter()
            .map(|&i| Arc::new(self.schema.field(i).clone()))
            .collect();
        fields.push(Arc::new(datafusion::arrow::datatypes::Field::new(
            RANK_COLUMN,
            DataType::UInt32,
            false,
        )));
        Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
    }

    /// Ranks in write order: per shard, its files (of `dirty`) by flush
    /// watermark, then its buffer batches as they are; shards in id order.
    fn source_ranks(&self, dirty: &[&FileMeta]) -> SourceRanks {
        let mut sources: Vec<(ShardId, u8, u64, usize)> = dirty
            .iter()
            .enumerate()
            .map(|(i, f)| (f.shard, 0, f.upto.0, i))
            .chain(
                self.mem_shards
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| (s, 1, i as u64, i)),
            )
            .collect();
        sources.sort_unstable();
        let mut out = SourceRanks {
            files: vec![0; dirty.len()],
            mem: vec![0; self.mem.len()],
            whole: vec![false; sources.len()],
        };
        for (rank, &(_, kind, _, i)) in sources.iter().enumerate() {
            if kind == 0 {
                out.files[i] = rank as u32;
            } else {
                out.mem[i] = rank as u32;
                out.whole[rank] = true;
            }
        }
        out
    }

    /// The files `dirty` and the buffer, through [`DedupExec`].
    fn dedup_scan(
        &self,
        state: &dyn Session,
        dirty: &[&FileMeta],
        projection: Option<&Vec<usize>>,
        overlap: Ranges,
        on_clean: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let n_columns = self.schema.fields().len();
        let wanted: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..n_columns).collect());
        let ReadLayout { read, points } = self.layout(&wanted);
        let ranks = self.source_ranks(dirty);
        let (file_ranks, mem_ranks) = (ranks.files, ranks.mem);
        let layout = PointLayout {
            whole: ranks.whole,
            ..points
        };
        let mut scan_projection = read.clone();
        scan_projection.push(n_columns); // the rank (partition) column
        let mut children: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !dirty.is_empty() {
            children.push(self.file_scan(
                state,
                dirty,
                Some(&scan_projection),
                None,
                Some(&file_ranks),
            )?);
        }
        let ranked_schema = self.ranked_schema(&read);
        if !self.mem.is_empty() {
            let batches = self
                .mem
                .iter()
                .zip(&mem_ranks)
                .map(|(b, &rank)| with_rank(&b.project(&read)?, &ranked_schema, rank))
                .collect::<Result<Vec<_>>>()?;
            let mem = MemorySourceConfig::try_new(&[batches], Arc::clone(&ranked_schema), None)?;
            children.push(DataSourceExec::from_data_source(mem));
        }
        let input: Arc<dyn ExecutionPlan> = if children.len() == 1 {
            children.remove(0)
        } else {
            UnionExec::try_new(children)?
        };
        Ok(Arc::new(DedupExec::try_new(
            input,
            Arc::new(overlap),
            Arc::new(layout),
            on_clean,
        )?))
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
    counts: ScanCounts,
    /// Per output column: an upper bound of its distinct values, if known.
    distinct: Arc<Vec<Option<usize>>>,
    /// The scanned files stay on disk while this plan or a stream of it lives.
    pins: Arc<FilePins>,
}

/// What a scan reads, for `EXPLAIN`.
#[derive(Debug, Clone, Copy)]
struct ScanCounts {
    files_pruned: usize,
    files_scanned: usize,
    /// Of the files scanned, those read through `DedupExec`.
    files_merged: usize,
    buffer_batches: usize,
}

impl TidemarkScanExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        counts: ScanCounts,
        distinct: Arc<Vec<Option<usize>>>,
        pins: Arc<FilePins>,
    ) -> Self {
        let props = Arc::clone(input.properties());
        TidemarkScanExec {
            input,
            props,
            counts,
            distinct,
            pins,
        }
    }
}

impl DisplayAs for TidemarkScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => write!(
                f,
                "TidemarkScanExec: files_pruned={}, files_scanned={}, files_merged={}, buffer_batches={}",
                self.counts.files_pruned,
                self.counts.files_scanned,
                self.counts.files_merged,
                self.counts.buffer_batches
            ),
            DisplayFormatType::TreeRender => write!(
                f,
                "files_pruned={}\nfiles_scanned={}\nfiles_merged={}\nbuffer_batches={}",
                self.counts.files_pruned,
                self.counts.files_scanned,
                self.counts.files_merged,
                self.counts.buffer_batches
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
            self.counts,
            Arc::clone(&self.distinct),
            Arc::clone(&self.pins),
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
        let stream = self.input.execute(partition, context)?;
        let pins = Arc::clone(&self.pins);
        let schema = stream.schema();
        Ok(Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                schema,
                futures::StreamExt::map(stream, move |b| {
                    let _held = &pins;
                    b
                }),
            ),
        ))
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
        self.engine.databases()
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

impl DatabaseSchema {
    pub fn new(database: &str, engine: Arc<QueryEngine>) -> DatabaseSchema {
        DatabaseSchema {
            database: database.to_string(),
            engine,
        }
    }
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
