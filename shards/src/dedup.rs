//! Points with the same measurement, tag set and time are one point
//! (InfluxDB's rule): its field set is the union of the writes', and for a
//! field written more than once the latest write wins.
//!
//! Rows are put in order by (series, time) without comparing rows
//! ([`series_keys`], [`sort_rows`]); equal points are then adjacent, in
//! write order, and [`merge_sorted`] makes each run of them one row. A
//! flush and a compaction both go through it, so no file holds a point
//! twice; queries use [`point_hashes`] to find the few rows that may repeat
//! a point of another file or of the buffer, and merge only those.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, TimestampNanosecondType};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, DictionaryArray, RecordBatch};
use arrow_schema::ArrowError;
use arrow_schema::DataType;
use arrow_select::interleave::interleave;

/// Rows put in order by (hour, series key, time): see [`sort_rows`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sorted {
    /// Row indices in order.
    pub order: Vec<u32>,
    /// `times[p]` is the time of row `order[p]`.
    pub times: Vec<i64>,
    /// Where each (hour, series) group starts in `order`, in order, then
    /// `order.len()`.
    pub groups: Vec<usize>,
}

/// The rows' order by (hour, series key, time), found by grouping rather
/// than by comparing rows (a comparison sort of a flush's row indices was
/// 9.6% of the server's CPU in flamegraphs/, its key lookups missing the
/// cache): rows are bucketed by their (hour, series key) pair, the few
/// distinct pairs ordered, each bucket kept in arrival order, and a bucket
/// sorted by time only if its times are not ascending already (a series'
/// rows usually arrive in time order). Rows equal in all three keep their
/// arrival order. The times travel with the indices, so a bucket is sorted
/// as contiguous (time, row) pairs, not through lookups into `times`
/// (that indirection was 7% of a flushing node's CPU).
pub fn sort_rows(hours: &[i64], series: &[u128], times: &[i64]) -> Sorted {
    let rows = hours.len();
    let mut ids: HashMap<(i64, u128), u32, foldhash::fast::RandomState> = HashMap::default();
    let mut groups: Vec<(i64, u128)> = Vec::new();
    let group_of: Vec<u32> = hours
        .iter()
        .zip(series)
        .map(|(&h, &s)| {
            *ids.entry((h, s)).or_insert_with(|| {
                groups.push((h, s));
                (groups.len() - 1) as u32
            })
        })
        .collect();
    let mut by_key: Vec<u32> = (0..groups.len() as u32).collect();
    by_key.sort_unstable_by_key(|&g| groups[g as usize]);
    let mut rank = vec![0u32; groups.len()];
    for (r, &g) in by_key.iter().enumerate() {
        rank[g as usize] = r as u32;
    }
    // Counting sort by group rank: `start[r]` is where group r begins.
    let mut start = vec![0usize; groups.len() + 1];
    for &g in &group_of {
        start[rank[g as usize] as usize + 1] += 1;
    }
    for r in 1..start.len() {
        start[r] += start[r - 1];
    }
    let mut next = start.clone();
    let mut order = vec![0u32; rows];
    let mut sorted_times = vec![0i64; rows];
    for (i, (&g, &t)) in group_of.iter().zip(times).enumerate() {
        let r = rank[g as usize] as usize;
        order[next[r]] = i as u32;
        sorted_times[next[r]] = t;
        next[r] += 1;
    }
    let mut pairs: Vec<(i64, u32)> = Vec::new();
    for w in start.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        if sorted_times[lo..hi].windows(2).all(|p| p[0] <= p[1]) {
            continue;
        }
        pairs.clear();
        pairs.extend(
            sorted_times[lo..hi]
                .iter()
                .copied()
                .zip(order[lo..hi].iter().copied()),
        );
        // Stable: rows of equal time keep their arrival order.
        pairs.sort_by_key(|&(t, _)| t);
        for (k, &(t, i)) in pairs.iter().enumerate() {
            sorted_times[lo + k] = t;
            order[lo + k] = i;
        }
    }
    Sorted {
        order,
        times: sorted_times,
        groups: start,
    }
}

/// Per row, a key whose numeric order is the order of the row's tag values
/// (`columns` in order, nulls first, strings bytewise), as
/// [`arrow_row`]'s comparison of the tags would give. The rows are in
/// parts (a buffer's frozen batches): `columns[t][p]` is tag column `t` of
/// part `p`, and row `i` of the result is the `i`-th row over all parts.
///
/// Each tag column's distinct values are ranked once (dictionaries hold
/// few of them); a row's ranks are packed into the key, most significant
/// first, each in as many bits as its column's largest rank needs. When
/// the next column would not fit in `max_bits` (at most 128), the keys so
/// far are replaced by their dense rank (a sort of the rows' keys), which
/// takes at most 32 bits, and packing goes on. Keys are packed a block of
/// rows at a time, every column into the block, so the keys are written
/// once from cache rather than once per column from memory.
pub fn series_keys(columns: &[Vec<ArrayRef>], rows: usize, max_bits: u32) -> Vec<u128> {
    let mut keys = vec![0u128; rows];
    let mut used = 0u32;
    let mut pending: Vec<RankedColumn<'_>> = Vec::new();
    for parts in columns {
        let ranked = RankedColumn::new(parts);
        let bits = ranked.bits();
        if used + bits > max_bits {
            pack(&mut keys, &pending);
            pending.clear();
            used = u128::BITS - dense_rank(&mut keys).leading_zeros();
        }
        used += bits;
        pending.push(ranked);
    }
    pack(&mut keys, &pending);
    keys
}

/// One part of a tag column, with the rank of each of its dictionary values.
struct RankedPart<'a> {
    keys: &'a [i32],
    nulls: Option<&'a arrow_buffer::NullBuffer>,
    /// Per dictionary value: 0 for null, else 1 + the rank of its string
    /// among the column's distinct strings (equal strings, even under
    /// different dictionary keys or in different parts, rank the same).
    value_rank: Vec<u32>,
}

/// A tag column (in parts), ranked.
struct RankedColumn<'a> {
    parts: Vec<RankedPart<'a>>,
    max_rank: u32,
}

impl<'a> RankedColumn<'a> {
    fn new(parts: &'a [ArrayRef]) -> RankedColumn<'a> {
        let dicts: Vec<_> = parts
            .iter()
            .map(|c| c.as_dictionary::<Int32Type>())
            .collect();
        // The few distinct strings are sorted, not the rows.
        let (distinct, value_ids) = distinct_values(&dicts);
        let mut by_string: Vec<u32> = (0..distinct.len() as u32).collect();
        by_string.sort_unstable_by_key(|&i| distinct[i as usize]);
        let mut rank_of_id = vec![0u32; distinct.len()];
        for (r, &i) in by_string.iter().enumerate() {
            rank_of_id[i as usize] = r as u32 + 1;
        }
        let parts = dicts
            .iter()
            .zip(value_ids)
            .map(|(d, ids)| RankedPart {
                keys: d.keys().values(),
                nulls: d.keys().nulls().filter(|n| n.null_count() > 0),
                value_rank: ids
                    .into_iter()
                    .map(|i| {
                        if i == u32::MAX {
                            0
                        } else {
                            rank_of_id[i as usize]
                        }
                    })
                    .collect(),
            })
            .collect();
        RankedColumn {
            parts,
            max_rank: distinct.len() as u32,
        }
    }

    fn bits(&self) -> u32 {
        u32::BITS - self.max_rank.leading_zeros()
    }
}

/// The id [`distinct_values`] gives a null dictionary value.
const NULL_ID: u32 = u32::MAX;

/// The distinct strings of dictionaries of strings (in order of first
/// appearance), and per dictionary, per value, its string's index among
/// them ([`NULL_ID`] for a null value): a hash lookup per dictionary value,
/// none per row.
fn distinct_values<'a>(dicts: &[&'a DictionaryArray<Int32Type>]) -> (Vec<&'a str>, Vec<Vec<u32>>) {
    let mut ids: HashMap<&str, u32, foldhash::fast::RandomState> = HashMap::default();
    let mut distinct: Vec<&str> = Vec::new();
    let value_ids = dicts
        .iter()
        .map(|d| {
            let values = d.values().as_string::<i32>();
            (0..values.len())
                .map(|v| {
                    if values.is_null(v) {
                        return NULL_ID;
                    }
                    let s = values.value(v);
                    *ids.entry(s).or_insert_with(|| {
                        distinct.push(s);
                        (distinct.len() - 1) as u32
                    })
                })
                .collect()
        })
        .collect();
    (distinct, value_ids)
}

/// Shifts each column's rank into `keys`, in `columns`' order.
fn pack(keys: &mut [u128], columns: &[RankedColumn<'_>]) {
    const BLOCK: usize = 2048;
    let Some(first) = columns.first() else {
        return;
    };
    let mut start = 0;
    for p in 0..first.parts.len() {
        let len = first.parts[p].keys.len();
        let part_keys = &mut keys[start..start + len];
        for (b, block) in part_keys.chunks_mut(BLOCK).enumerate() {
            let base = b * BLOCK;
            for c in columns {
                let bits = c.bits();
                let part = &c.parts[p];
                let ks = &part.keys[base..base + block.len()];
                match part.nulls {
                    None => {
                        for (k, &key) in block.iter_mut().zip(ks) {
                            *k = (*k << bits) | part.value_rank[key as usize] as u128;
                        }
                    }
                    Some(nulls) => {
                        for (i, (k, &key)) in block.iter_mut().zip(ks).enumerate() {
                            let r = if nulls.is_valid(base + i) {
                                part.value_rank[key as usize]
                            } else {
                                0
                            };
                            *k = (*k << bits) | r as u128;
                        }
                    }
                }
            }
        }
        start += len;
    }
}

/// Replaces every key by its rank among the distinct keys; returns the
/// largest rank.
fn dense_rank(keys: &mut [u128]) -> u128 {
    let mut distinct = keys.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for k in keys.iter_mut() {
        *k = distinct.binary_search(k).expect("a key of the list") as u128;
    }
    distinct.len().saturating_sub(1) as u128
}

/// The rows of `batches` (parts of one table, all with the same schema; a
/// row's index counts over all of them) in `sorted`'s order, with every
/// run of equal points (one group's rows of equal time, adjacent in the
/// order, oldest write first) made one row: its tags and time, and per
/// column of `fields` the newest non-null value of the run (null if the
/// run has none). Returns the rows and how many were merged away. The rows
/// are gathered from the parts straight into the output (`interleave`), no
/// concatenated copy first; a field column without nulls takes the run's
/// newest row, like the tags.
pub fn merge_sorted(
    batches: &[RecordBatch],
    sorted: &Sorted,
    fields: &[usize],
) -> Result<(RecordBatch, u64), ArrowError> {
    let Sorted {
        order,
        times,
        groups,
    } = sorted;
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => return Err(ArrowError::InvalidArgumentError("no rows to merge".into())),
    };
    let mut starts = Vec::with_capacity(batches.len());
    let mut rows = 0;
    for b in batches {
        starts.push(rows);
        rows += b.num_rows();
    }
    // Global row -> (part, row in part).
    let locate = |i: u32| {
        let i = i as usize;
        let p = starts.partition_point(|&s| s <= i) - 1;
        (p, i - starts[p])
    };
    let repeats = groups
        .windows(2)
        .any(|w| times[w[0]..w[1]].windows(2).any(|p| p[0] == p[1]));
    let gather = |column: usize, at: &[(usize, usize)]| {
        let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(column).as_ref()).collect();
        match parts.first().map(|p| p.data_type()) {
            Some(DataType::Dictionary(k, v)) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                Ok(gather_dictionary(&parts, at))
            }
            _ => interleave(&parts, at),
        }
    };
    if !repeats {
        let at: Vec<(usize, usize)> = order.iter().map(|&i| locate(i)).collect();
        let columns = (0..schema.fields().len())
            .map(|c| gather(c, &at))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((RecordBatch::try_new(schema, columns)?, 0));
    }
    // Fields with nulls pick per run; the rest take the newest row.
    let nullable: Vec<usize> = fields
        .iter()
        .copied()
        .filter(|&f| batches.iter().any(|b| b.column(f).null_count() > 0))
        .collect();
    let mut keep = Vec::with_capacity(order.len());
    let mut picks: Vec<Vec<(usize, usize)>> = vec![Vec::with_capacity(order.len()); nullable.len()];
    for w in groups.windows(2) {
        let mut i = w[0];
        while i < w[1] {
            let mut j = i + 1;
            while j < w[1] && times[j] == times[i] {
                j += 1;
            }
            let run = &order[i..j];
            let newest = locate(run[run.len() - 1]);
            keep.push(newest);
            for (&f, out) in nullable.iter().zip(&mut picks) {
                let pick = run
                    .iter()
                    .rev()
                    .map(|&r| locate(r))
                    .find(|&(p, r)| batches[p].column(f).is_valid(r))
                    .unwrap_or(newest);
                out.push(pick);
            }
            i = j;
        }
    }
    let merged = (order.len() - keep.len()) as u64;
    let columns = (0..schema.fields().len())
        .map(|c| match nullable.iter().position(|&f| f == c) {
            Some(k) => gather(c, &picks[k]),
            None => gather(c, &keep),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((RecordBatch::try_new(schema, columns)?, merged))
}

/// The rows `at` ((part, row) pairs) of a tag column in parts, as one
/// dictionary array whose values are the parts' distinct strings. A hash
/// lookup per dictionary value, then one key per row: `interleave` keeps
/// every part's dictionary whole in its output, and with many parts (a
/// buffer part per large request) its merge walks every row once per part.
fn gather_dictionary(parts: &[&dyn Array], at: &[(usize, usize)]) -> ArrayRef {
    let dicts: Vec<&DictionaryArray<Int32Type>> = parts.iter().map(|p| p.as_dictionary()).collect();
    let (distinct, value_ids) = distinct_values(&dicts);
    let mut nulls = arrow_buffer::NullBufferBuilder::new(at.len());
    let keys: Vec<i32> = at
        .iter()
        .map(|&(p, r)| {
            let d = dicts[p];
            let id = if d.is_valid(r) {
                value_ids[p][d.keys().values()[r] as usize]
            } else {
                NULL_ID
            };
            if id == NULL_ID {
                nulls.append_null();
                0
            } else {
                nulls.append_non_null();
                id as i32
            }
        })
        .collect();
    let keys = arrow_array::Int32Array::new(keys.into(), nulls.finish());
    let values: ArrayRef = Arc::new(arrow_array::StringArray::from(distinct));
    // Every non-null key is an index into `distinct`.
    Arc::new(DictionaryArray::<Int32Type>::try_new(keys, values).expect("keys index the values"))
}

/// Sorts `batch` by (series, time) and merges repeated points (see
/// [`merge_sorted`]). Rows of one point must be in write order in `batch`.
/// `tags` and `time` index the batch's tag columns (dictionaries of
/// strings, in the order to sort by) and its time column.
pub fn sort_and_merge(
    batch: &RecordBatch,
    tags: &[usize],
    time: usize,
    fields: &[usize],
) -> Result<(RecordBatch, u64), ArrowError> {
    let columns: Vec<Vec<ArrayRef>> = tags
        .iter()
        .map(|&t| vec![batch.column(t).clone()])
        .collect();
    let series = series_keys(&columns, batch.num_rows(), 128);
    let times = batch
        .column(time)
        .as_primitive::<TimestampNanosecondType>()
        .values();
    let hours = vec![0i64; batch.num_rows()];
    merge_sorted(
        std::slice::from_ref(batch),
        &sort_rows(&hours, &series, times),
        fields,
    )
}

/// Per row, a 64-bit hash of its point (tag values by column, and time):
/// rows of one point hash alike, whatever their batches' dictionaries.
/// Tag columns may be dictionaries of strings or plain strings.
pub fn point_hashes(batch: &RecordBatch, tags: &[usize], time: usize) -> Vec<u64> {
    let times = batch
        .column(time)
        .as_primitive::<TimestampNanosecondType>()
        .values();
    let mut hashes = series_hashes(batch, tags);
    for (h, &t) in hashes.iter_mut().zip(times.iter()) {
        *h = mix(*h, t as u64);
    }
    hashes
}

/// Whether every series' times strictly increase through `batches` (in
/// order): then no point repeats. Costs one lookup per row in a map of the
/// series (small, unlike a map of the points); `false` says only that a
/// point may repeat (rows out of order, or two series hashing alike).
pub fn each_series_ascends(batches: &[RecordBatch], tags: &[usize], time: usize) -> bool {
    let mut last: HashMap<u64, i64, foldhash::fast::RandomState> = HashMap::default();
    for b in batches {
        let times = b
            .column(time)
            .as_primitive::<TimestampNanosecondType>()
            .values();
        for (h, &t) in series_hashes(b, tags).into_iter().zip(times.iter()) {
            match last.entry(h) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    if t <= *e.get() {
                        return false;
                    }
                    e.insert(t);
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(t);
                }
            }
        }
    }
    true
}

/// Per row, a 64-bit hash of its tag values (its series).
fn series_hashes(batch: &RecordBatch, tags: &[usize]) -> Vec<u64> {
    let mut hashes = vec![0x51_7c_c1_b7_27_22_0a_95_u64; batch.num_rows()];
    for &t in tags {
        let column = batch.column(t);
        if let Some(dict) = column.as_dictionary_opt::<Int32Type>() {
            let values = dict.values().as_string::<i32>();
            let value_hash: Vec<u64> = (0..values.len())
                .map(|v| {
                    if values.is_valid(v) {
                        str_hash(values.value(v))
                    } else {
                        NULL_HASH
                    }
                })
                .collect();
            for (h, k) in hashes.iter_mut().zip(dict.keys().iter()) {
                *h = mix(*h, k.map_or(NULL_HASH, |k| value_hash[k as usize]));
            }
        } else if let Some(strings) = column.as_string_opt::<i32>() {
            for (h, s) in hashes.iter_mut().zip(strings.iter()) {
                *h = mix(*h, s.map_or(NULL_HASH, str_hash));
            }
        } else {
            for (i, h) in hashes.iter_mut().enumerate() {
                *h = mix(*h, if column.is_valid(i) { 1 } else { NULL_HASH });
            }
        }
    }
    hashes
}

const NULL_HASH: u64 = 0x9e37_79b9_7f4a_7c15;

fn str_hash(s: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(7).hash_one(s)
}

/// One round of a multiply-xorshift mix (from wyhash's `mum`).
fn mix(h: u64, v: u64) -> u64 {
    let m = u128::from(h ^ v) * 0xa076_1d64_78bd_642f_u128;
    ((m >> 64) as u64) ^ (m as u64)
}

/// The indices of rows whose hash appears more than once in `hashes`.
pub fn repeated(hashes: &[u64]) -> Vec<u32> {
    let mut seen: HashMap<u64, u32, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(hashes.len(), Default::default());
    let mut twice = false;
    for &h in hashes {
        let n = seen.entry(h).or_insert(0);
        *n += 1;
        twice |= *n > 1;
    }
    if !twice {
        return Vec::new();
    }
    (0..hashes.len() as u32)
        .filter(|&i| seen[&hashes[i as usize]] > 1)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow_array::DictionaryArray;
    use std::sync::Arc;

    /// A deterministic pseudo-random sequence (xorshift64) for test data.
    pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Grouping gives exactly a stable sort by (hour, series, time): with
    /// buckets whose times arrive ascending, shuffled, and tied.
    #[test]
    fn sort_rows_is_a_stable_sort_by_hour_series_time() {
        let mut next = xorshift(0x2545f4914f6cdd1du64);
        for ascending in [true, false] {
            let rows = 2000;
            let hours: Vec<i64> = (0..rows).map(|_| (next() % 3) as i64 - 1).collect();
            let series: Vec<u128> = (0..rows)
                .map(|_| (next() % 7) as u128 * 1_000_000)
                .collect();
            let times: Vec<i64> = (0..rows)
                .map(|i| {
                    if ascending {
                        i as i64 / 3
                    } else {
                        (next() % 50) as i64
                    }
                })
                .collect();
            let mut want: Vec<u32> = (0..rows as u32).collect();
            want.sort_by_key(|&i| {
                let i = i as usize;
                (hours[i], series[i], times[i])
            });
            let sorted = sort_rows(&hours, &series, &times);
            assert_eq!(sorted.order, want, "ascending {ascending}");
            let key = |p: usize| {
                let i = sorted.order[p] as usize;
                (hours[i], series[i])
            };
            for (p, &i) in sorted.order.iter().enumerate() {
                assert_eq!(sorted.times[p], times[i as usize]);
            }
            assert_eq!((sorted.groups[0], sorted.groups.last()), (0, Some(&rows)));
            for w in sorted.groups.windows(2) {
                assert!(w[0] < w[1]);
                assert!((w[0]..w[1]).all(|p| key(p) == key(w[0])));
                assert!(w[1] == rows || key(w[1]) != key(w[0]));
            }
        }
    }

    /// The keys order rows as their tag values do, also when they are
    /// re-ranked to stay within the bit budget (forced here with budgets
    /// of a few bits), and whichever dictionary key a value has.
    #[test]
    fn series_keys_order_rows_as_their_tags() {
        let values = [
            None,
            Some("b"),
            Some("a"),
            Some("ab"),
            Some(""),
            Some("z"),
            Some("a"),
        ];
        let mut rng = xorshift(0x9e3779b97f4a7c15u64);
        let mut next = move || rng() as usize;
        let rows = 300;
        let tuples: Vec<[Option<&str>; 3]> = (0..rows)
            .map(|_| std::array::from_fn(|_| values[next() % values.len()]))
            .collect();
        // Each column as two dictionaries, concatenated or as two parts,
        // so equal strings may sit under different keys.
        let halves = |c: usize| -> (ArrayRef, ArrayRef) {
            let half = |r: std::ops::Range<usize>| -> ArrayRef {
                Arc::new(
                    tuples[r]
                        .iter()
                        .map(|t| t[c])
                        .collect::<DictionaryArray<Int32Type>>(),
                )
            };
            (half(0..rows / 2), half(rows / 2..rows))
        };
        let concatenated: Vec<Vec<ArrayRef>> = (0..3)
            .map(|c| {
                let (a, b) = halves(c);
                vec![arrow_select::concat::concat(&[&a, &b]).unwrap()]
            })
            .collect();
        let parts: Vec<Vec<ArrayRef>> = (0..3)
            .map(|c| {
                let (a, b) = halves(c);
                vec![a, b]
            })
            .collect();
        for (max_bits, columns) in [128, 6, 4, 3]
            .into_iter()
            .flat_map(|m| [(m, &concatenated), (m, &parts)])
        {
            let keys = series_keys(columns, rows, max_bits);
            for i in 0..rows {
                for j in 0..rows {
                    assert_eq!(
                        keys[i].cmp(&keys[j]),
                        tuples[i].cmp(&tuples[j]),
                        "rows {i} {:?} and {j} {:?}, max_bits {max_bits}",
                        tuples[i],
                        tuples[j]
                    );
                }
            }
        }
    }

    /// Columns time, host (a tag), a (of type `a`) and b (Float64).
    fn time_host_a_b(a: DataType, b_nullable: bool) -> Arc<arrow_schema::Schema> {
        use arrow_schema::{Field, Schema};
        Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(arrow_schema::TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            Field::new(
                "host",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("a", a, true),
            Field::new("b", DataType::Float64, b_nullable),
        ]))
    }

    #[test]
    fn repeated_points_merge_fields_with_the_latest_write_winning() {
        use arrow_array::{Float64Array, Int64Array, TimestampNanosecondArray};
        let schema = time_host_a_b(DataType::Int64, true);
        // In write order: x@1 {a:1}, x@1 {b:2}, y@1 {a:3}, x@1 {a:5}, x@2 {a:6}.
        let batch = |hosts: Vec<&str>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(
                        TimestampNanosecondArray::from(vec![1, 1, 1, 1, 2]).with_timezone("UTC"),
                    ),
                    Arc::new(
                        hosts
                            .into_iter()
                            .map(Some)
                            .collect::<DictionaryArray<Int32Type>>(),
                    ),
                    Arc::new(Int64Array::from(vec![
                        Some(1),
                        None,
                        Some(3),
                        Some(5),
                        Some(6),
                    ])),
                    Arc::new(Float64Array::from(vec![None, Some(2.0), None, None, None])),
                ],
            )
            .unwrap()
        };
        let b = batch(vec!["x", "x", "y", "x", "x"]);
        let (out, merged) = sort_and_merge(&b, &[1], 0, &[2, 3]).unwrap();
        assert_eq!(merged, 2);
        let a: Vec<Option<i64>> = out
            .column(2)
            .as_primitive::<arrow_array::types::Int64Type>()
            .iter()
            .collect();
        let f: Vec<Option<f64>> = out
            .column(3)
            .as_primitive::<arrow_array::types::Float64Type>()
            .iter()
            .collect();
        let t: Vec<i64> = out
            .column(0)
            .as_primitive::<TimestampNanosecondType>()
            .values()
            .to_vec();
        assert_eq!(
            (t, a, f),
            (
                vec![1, 2, 1],
                vec![Some(5), Some(6), Some(3)],
                vec![Some(2.0), None, None]
            )
        );
        // No repeat: rows only sorted, nothing merged.
        let (_, merged) =
            sort_and_merge(&batch(vec!["a", "b", "c", "d", "e"]), &[1], 0, &[2, 3]).unwrap();
        assert_eq!(merged, 0);
        // Point hashes agree across dictionaries, differ across points.
        let h = point_hashes(&b, &[1], 0);
        assert!(h[0] == h[1] && h[1] == h[3] && h[0] != h[2] && h[0] != h[4]);
        let mut other = DictionaryArray::<Int32Type>::from_iter(["zz", "x"].into_iter().map(Some));
        other = other.slice(1, 1);
        let one = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(TimestampNanosecondArray::from(vec![1]).with_timezone("UTC")),
                Arc::new(other),
                Arc::new(Int64Array::from(vec![Some(9)])),
                Arc::new(Float64Array::from(vec![None::<f64>])),
            ],
        )
        .unwrap();
        assert_eq!(point_hashes(&one, &[1], 0)[0], h[0]);
        assert_eq!(repeated(&h), vec![0, 1, 3]);
        assert!(repeated(&[1, 2, 3]).is_empty());
        // Series that only ascend cannot repeat a point; x@1 twice can.
        let ascending = batch(vec!["a", "b", "c", "d", "e"]);
        assert!(each_series_ascends(
            std::slice::from_ref(&ascending),
            &[1],
            0
        ));
        assert!(!each_series_ascends(
            &[ascending.clone(), ascending],
            &[1],
            0
        ));
        assert!(!each_series_ascends(&[b], &[1], 0));
    }

    /// Against a plain reference (a map from point to its merged fields):
    /// random points with repeats and nulls, hosts from two dictionaries.
    #[test]
    fn merge_sorted_agrees_with_a_map_of_points() {
        use arrow_array::{Float64Array, TimestampNanosecondArray};
        use std::collections::BTreeMap;
        /// A point: host and time.
        type Point = (Option<String>, i64);
        let schema = time_host_a_b(DataType::Float64, false);
        let mut next = xorshift(0x1234_5678_9abc_def1);
        for rows in [1usize, 7, 500, 3000] {
            let host: Vec<Option<String>> = (0..rows)
                .map(|_| match next() % 6 {
                    0 => None,
                    h => Some(format!("h{h}")),
                })
                .collect();
            let time: Vec<i64> = (0..rows).map(|_| (next() % 40) as i64).collect();
            let a: Vec<Option<f64>> = (0..rows)
                .map(|i| (!next().is_multiple_of(3)).then_some(i as f64))
                .collect();
            let b: Vec<f64> = (0..rows).map(|i| -(i as f64)).collect();
            let half = rows / 2;
            let dict = |r: std::ops::Range<usize>| -> DictionaryArray<Int32Type> {
                host[r].iter().map(|h| h.as_deref()).collect()
            };
            let hosts = arrow_select::concat::concat(&[&dict(0..half), &dict(half..rows)]).unwrap();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(TimestampNanosecondArray::from(time.clone()).with_timezone("UTC")),
                    hosts,
                    Arc::new(Float64Array::from(a.clone())),
                    Arc::new(Float64Array::from(b.clone())),
                ],
            )
            .unwrap();
            let mut want: BTreeMap<Point, (Option<f64>, f64)> = BTreeMap::new();
            for i in 0..rows {
                let e = want
                    .entry((host[i].clone(), time[i]))
                    .or_insert((None, 0.0));
                e.0 = a[i].or(e.0);
                e.1 = b[i];
            }
            let (whole, merged) = sort_and_merge(&batch, &[1], 0, &[2, 3]).unwrap();
            assert_eq!(merged as usize, rows - want.len(), "rows {rows}");
            // The same rows in three parts, each with its own dictionary,
            // as a flush gets them.
            let cuts = [0, rows / 3, rows / 2, rows];
            let parts: Vec<RecordBatch> = cuts
                .windows(2)
                .map(|w| {
                    let mut columns = batch.slice(w[0], w[1] - w[0]).columns().to_vec();
                    columns[1] = Arc::new(dict(w[0]..w[1]));
                    RecordBatch::try_new(schema.clone(), columns).unwrap()
                })
                .collect();
            let hosts: Vec<Vec<ArrayRef>> =
                vec![parts.iter().map(|p| p.column(1).clone()).collect()];
            let series = series_keys(&hosts, rows, 128);
            let sorted = sort_rows(&vec![0; rows], &series, &time);
            let (in_parts, merged) = merge_sorted(&parts, &sorted, &[2, 3]).unwrap();
            assert_eq!(merged as usize, rows - want.len(), "rows {rows}");
            for out in [whole, in_parts] {
                let hosts = out.column(1).as_dictionary::<Int32Type>();
                let host_values = hosts.values().as_string::<i32>();
                let got: Vec<(Point, (Option<f64>, f64))> = (0..out.num_rows())
                    .map(|r| {
                        let h = hosts.key(r).map(|k| host_values.value(k).to_string());
                        let t = out
                            .column(0)
                            .as_primitive::<TimestampNanosecondType>()
                            .value(r);
                        let a = out
                            .column(2)
                            .as_primitive::<arrow_array::types::Float64Type>();
                        let b = out
                            .column(3)
                            .as_primitive::<arrow_array::types::Float64Type>();
                        ((h, t), (a.is_valid(r).then(|| a.value(r)), b.value(r)))
                    })
                    .collect();
                assert_eq!(
                    got,
                    want.clone().into_iter().collect::<Vec<_>>(),
                    "rows {rows}"
                );
            }
        }
    }
}
