//! Reading repeated points as one (InfluxDB's rule: field union, the latest
//! write wins), at query time, where the data may hold them.
//!
//! Every file is free of repeated points (flushes and compactions merge
//! them), so a point can repeat only across sources: two files whose time
//! ranges overlap, or a file and the buffer, or within the buffer. The
//! scan ([`super::table`]) finds the *overlap*: the times covered by two
//! sources or more, and every buffered row's time. Files that miss it are
//! scanned as they are; the rest, and the buffer, go through
//! [`DedupExec`], which passes rows outside the overlap straight on, hashes
//! the rest by point ([`tidemark_shards::dedup::point_hashes`]) and merges
//! exactly only the rows whose hash repeats, in write order: sources
//! ranked by (shard, flush watermark), each shard's buffer after its files.

use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampNanosecondType, UInt32Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;
use tidemark_shards::manifest::FileMeta;

/// Files among which no point repeats, as a merge found (files never
/// change, so this stays true while they are listed). A file then needs
/// no merge when every file that shares a time with it is one of them.
#[derive(Debug, Clone, Default)]
pub struct Verified(std::collections::HashSet<String>);

impl Verified {
    /// Forgets files no longer in `files` (compacted, dropped).
    pub fn retain_listed(&mut self, files: &[FileMeta]) {
        let listed: std::collections::HashSet<&str> =
            files.iter().map(|f| f.path.as_str()).collect();
        self.0.retain(|p| listed.contains(p.as_str()));
    }

    /// Whether `f` and every file of `files` sharing a time with it are
    /// verified.
    pub fn covers(&self, f: &FileMeta, files: &[FileMeta]) -> bool {
        self.0.contains(&f.path)
            && files
                .iter()
                .filter(|g| g.min_time <= f.max_time && g.max_time >= f.min_time)
                .all(|g| self.0.contains(&g.path))
    }

    /// A merge over `checked` found no point twice. Each of them joins the
    /// set if every file sharing a time with it was checked too or is in
    /// the set already: no point repeats across the union then (files
    /// that share no time cannot hold the same point).
    pub fn add(&mut self, checked: &[FileMeta], files: &[FileMeta]) {
        let checked_paths: std::collections::HashSet<&str> =
            checked.iter().map(|f| f.path.as_str()).collect();
        let joining: Vec<String> = checked
            .iter()
            .filter(|f| {
                files
                    .iter()
                    .filter(|g| g.min_time <= f.max_time && g.max_time >= f.min_time)
                    .all(|g| checked_paths.contains(g.path.as_str()) || self.0.contains(&g.path))
            })
            .map(|f| f.path.clone())
            .collect();
        self.0.extend(joining);
    }
}

/// Sorted, disjoint, inclusive time ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(i64, i64)>);

impl Ranges {
    /// The times covered by two of `intervals` or more (inclusive).
    pub fn overlaps(intervals: &[(i64, i64)]) -> Ranges {
        let mut sorted = intervals.to_vec();
        sorted.sort_unstable();
        let mut out = Vec::new();
        let mut reach = i64::MIN;
        for (i, &(lo, hi)) in sorted.iter().enumerate() {
            // Every earlier interval starts at or before `lo`: together
            // they cover [lo, reach] of this one.
            if i > 0 && lo <= reach {
                out.push((lo, hi.min(reach)));
            }
            reach = reach.max(hi);
        }
        Ranges::union(out)
    }

    /// The union of `intervals`.
    pub fn union(mut intervals: Vec<(i64, i64)>) -> Ranges {
        intervals.sort_unstable();
        let mut out: Vec<(i64, i64)> = Vec::new();
        for (lo, hi) in intervals {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Ranges(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn intervals(&self) -> &[(i64, i64)] {
        &self.0
    }

    /// Whether any time of [lo, hi] is in the ranges.
    pub fn touches(&self, lo: i64, hi: i64) -> bool {
        let i = self.0.partition_point(|&(_, end)| end < lo);
        self.0.get(i).is_some_and(|&(start, _)| start <= hi)
    }

    pub fn contains(&self, t: i64) -> bool {
        self.touches(t, t)
    }
}

/// Columns of [`DedupExec`]'s input, by index.
#[derive(Debug, Clone)]
pub struct PointLayout {
    pub tags: Vec<usize>,
    pub time: usize,
    pub fields: Vec<usize>,
    /// The source rank column (`UInt32`).
    pub rank: usize,
    /// Per source rank, whether every row of it is merged (a buffer batch,
    /// which may repeat a point within itself).
    pub whole: Vec<bool>,
    /// The output columns, as input indices.
    pub output: Vec<usize>,
}

/// See the [module docs](self). As many output partitions as its input:
/// each passes its own input partition's rows outside the overlap on at
/// once; the partition that finishes last merges the rows inside it.
pub struct DedupExec {
    input: Arc<dyn ExecutionPlan>,
    overlap: Arc<Ranges>,
    layout: Arc<PointLayout>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    /// The rows held back for the merge, and how many partitions have not
    /// finished yet (set when the first partition starts).
    run: Arc<Mutex<Option<Run>>>,
    /// Called when the merge found no point twice.
    on_clean: Arc<dyn Fn() + Send + Sync>,
}

impl fmt::Debug for DedupExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupExec")
            .field("overlap", &self.overlap.0.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Run {
    pending: Vec<RecordBatch>,
    running: usize,
}

impl DedupExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        overlap: Arc<Ranges>,
        layout: Arc<PointLayout>,
        on_clean: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<DedupExec> {
        let schema = Arc::new(input.schema().project(&layout.output)?);
        let partitions = input.properties().partitioning.partition_count();
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Both,
            Boundedness::Bounded,
        ));
        Ok(DedupExec {
            input,
            overlap,
            layout,
            schema,
            props,
            run: Arc::default(),
            on_clean,
        })
    }
}

impl DisplayAs for DedupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DedupExec: overlap_ranges={}", self.overlap.0.len())
    }
}

impl ExecutionPlan for DedupExec {
    fn name(&self) -> &str {
        "DedupExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
        Ok(Arc::new(DedupExec::try_new(
            children.swap_remove(0),
            Arc::clone(&self.overlap),
            Arc::clone(&self.layout),
            Arc::clone(&self.on_clean),
        )?))
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
        let partitions = self.input.properties().partitioning.partition_count();
        if partition >= partitions {
            return Err(DataFusionError::Internal(format!(
                "DedupExec has {partitions} partitions, not {partition}"
            )));
        }
        {
            let mut run = self.run.lock().expect("dedup lock");
            if run.as_ref().is_none_or(|r| r.running == 0) {
                *run = Some(Run {
                    pending: Vec::new(),
                    running: partitions,
                });
            }
        }
        let input = self.input.execute(partition, context)?;
        let input_schema = self.input.schema();
        let (overlap, layout) = (Arc::clone(&self.overlap), Arc::clone(&self.layout));
        let (held, run) = (Arc::clone(&self.run), Arc::clone(&self.run));
        let out_layout = Arc::clone(&layout);
        let on_clean = Arc::clone(&self.on_clean);
        let head = input.map(move |batch| {
            let batch = batch?;
            let (pass, merge) = split(&batch, &overlap, &layout)?;
            if let Some(m) = merge {
                let mut run = held.lock().expect("dedup lock");
                if let Some(r) = run.as_mut() {
                    r.pending.push(m);
                }
            }
            Ok(pass)
        });
        // The last partition to finish merges what every one held back.
        let tail = futures::stream::once(async move {
            let batches = {
                let mut run = run.lock().expect("dedup lock");
                match run.as_mut() {
                    Some(r) => {
                        r.running -= 1;
                        if r.running > 0 {
                            return Ok(RecordBatch::new_empty(Arc::new(
                                input_schema.project(&out_layout.output)?,
                            )));
                        }
                        std::mem::take(&mut r.pending)
                    }
                    None => Vec::new(),
                }
            };
            let merged = match merge_repeated(&input_schema, &batches, &out_layout)? {
                Some(merged) => merged,
                None => {
                    on_clean();
                    concat_batches(&input_schema, &batches)?
                }
            };
            Ok(merged.project(&out_layout.output)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            head.chain(tail).filter(|b: &Result<RecordBatch>| {
                futures::future::ready(b.as_ref().map_or(true, |b| b.num_rows() > 0))
            }),
        )))
    }
}

/// Splits a batch into the rows that cannot repeat a point of another
/// source (outside the overlap), projected to the output, and the rows
/// that may (inside it, or of a buffer batch), whole.
fn split(
    batch: &RecordBatch,
    overlap: &Ranges,
    layout: &PointLayout,
) -> Result<(RecordBatch, Option<RecordBatch>)> {
    let output = batch.project(&layout.output)?;
    if batch.num_rows() == 0 {
        return Ok((output, None));
    }
    let ranks = batch.column(layout.rank).as_primitive::<UInt32Type>();
    let times = batch
        .column(layout.time)
        .as_primitive::<TimestampNanosecondType>()
        .values();
    let whole = |r: u32| layout.whole.get(r as usize).copied().unwrap_or(true);
    // A batch comes from one source: a buffer batch is merged whole.
    if ranks.values().iter().all(|&r| whole(r)) {
        return Ok((output.slice(0, 0), Some(batch.clone())));
    }
    let (lo, hi) = times
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    // The overlap's ranges within this batch's times: usually a file's
    // first and last timestamps, so a row is checked against a few bounds.
    let near: Vec<(i64, i64)> = overlap
        .intervals()
        .iter()
        .filter(|&&(a, b)| a <= hi && b >= lo)
        .copied()
        .collect();
    if near.is_empty() {
        return Ok((output, None));
    }
    let mut any = false;
    let inside: BooleanArray = times
        .iter()
        .zip(ranks.values())
        .map(|(&t, &r)| {
            let i = whole(r) || near.iter().any(|&(a, b)| a <= t && t <= b);
            any |= i;
            Some(i)
        })
        .collect();
    if !any {
        return Ok((output, None));
    }
    let outside = datafusion::arrow::compute::not(&inside)?;
    Ok((
        filter_record_batch(&output, &outside)?,
        Some(filter_record_batch(batch, &inside)?),
    ))
}

/// Merges the rows that may repeat a point: those whose point hash
/// repeats are sorted by source rank (write order) and merged; the others
/// pass on as they are. `None` if no point repeats (the batches are then
/// the answer).
pub fn merge_repeated(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    layout: &PointLayout,
) -> Result<Option<RecordBatch>> {
    // Most data arrives in time order per series: then nothing repeats,
    // and a map of the series (not of every point) shows it.
    if tidemark_shards::dedup::each_series_ascends(batches, &layout.tags, layout.time) {
        return Ok(None);
    }
    let mut hashes = Vec::new();
    for b in batches {
        hashes.extend(tidemark_shards::dedup::point_hashes(
            b,
            &layout.tags,
            layout.time,
        ));
    }
    let repeated = tidemark_shards::dedup::repeated(&hashes);
    if repeated.is_empty() {
        return Ok(None);
    }
    let all = concat_batches(schema, batches)?;
    let mut is_repeated = vec![false; all.num_rows()];
    for &i in &repeated {
        is_repeated[i as usize] = true;
    }
    let single: Vec<u32> = (0..all.num_rows() as u32)
        .filter(|&i| !is_repeated[i as usize])
        .collect();
    let ranks = all.column(layout.rank).as_primitive::<UInt32Type>();
    let mut by_rank = repeated;
    by_rank.sort_by_key(|&i| ranks.value(i as usize)); // stable: keeps row order
    let candidates = take_record_batch(&all, &UInt32Array::from(by_rank))?;
    let (merged, _) = tidemark_shards::dedup::sort_and_merge(
        &candidates,
        &layout.tags,
        layout.time,
        &layout.fields,
    )?;
    let single = take_record_batch(&all, &UInt32Array::from(single))?;
    Ok(Some(concat_batches(schema, &[single, merged])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_are_times_two_sources_cover() {
        // Disjoint: none. Touching at 5: [5, 5]. Nested and chained.
        assert!(Ranges::overlaps(&[(0, 4), (6, 9)]).is_empty());
        assert_eq!(Ranges::overlaps(&[(0, 5), (5, 9)]).0, [(5, 5)]);
        assert_eq!(
            Ranges::overlaps(&[(0, 100), (10, 20), (30, 40), (35, 120)]).0,
            [(10, 20), (30, 100)]
        );
        assert_eq!(Ranges::overlaps(&[(7, 7), (7, 7)]).0, [(7, 7)]);
        let r = Ranges::union(vec![(10, 20), (30, 40)]);
        assert!(r.touches(0, 10) && r.touches(20, 30) && r.touches(35, 36) && r.touches(0, 99));
        assert!(!r.touches(21, 29) && !r.touches(0, 9) && !r.touches(41, 50));
        assert!(r.contains(10) && r.contains(40) && !r.contains(25));
        // Brute force against random intervals.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 60) as i64
        };
        for _ in 0..200 {
            let intervals: Vec<(i64, i64)> = (0..5)
                .map(|_| {
                    let a = next();
                    let b = next();
                    (a.min(b), a.max(b))
                })
                .collect();
            let r = Ranges::overlaps(&intervals);
            for t in 0..60 {
                let n = intervals
                    .iter()
                    .filter(|&&(lo, hi)| lo <= t && t <= hi)
                    .count();
                assert_eq!(r.contains(t), n >= 2, "{intervals:?} at {t}");
            }
        }
    }
}
