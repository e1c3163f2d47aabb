//! Shared helpers of tidemark's criterion benches: TSBS-`cpu`-like write
//! batches, frozen tables, and a scratch directory on a real disk.
//!
//! The data follows TSBS's `cpu` use case, trimmed to three tags: a fixed set
//! of hosts (`hostname`), each in one `region` and `datacenter`; ten float
//! fields (`usage_user` ... `usage_guest_nice`) that random-walk per host; and
//! every host reporting once per 10 s tick, nanosecond timestamps starting at
//! an hour boundary. Generation is deterministic (seeded xorshift), so every
//! run benches the same bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, StringDictionaryBuilder, TimestampNanosecondBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::Schema;
use tidemark_shards::buffer::{BufferConfig, FrozenTable, ShardBuffer};
use tidemark_shards::schema::{time_data_type, ColumnKind, FieldType, TableKey, TableSchema};
use tidemark_shards::{WalSeq, WriteBatch};

/// The float fields of TSBS's `cpu` measurement.
pub const FIELDS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
];
/// The tag columns.
pub const TAGS: [&str; 3] = ["hostname", "region", "datacenter"];
/// Columns of a cpu batch: time, the tags, the fields.
pub const COLUMNS: usize = 1 + TAGS.len() + FIELDS.len();
/// Hosts (series) in the fixed set, as in a TSBS run with `--scale=1000`.
pub const HOSTS: usize = 1000;
/// Seconds between two readings of one host (TSBS's default log interval).
pub const TICK_SECS: i64 = 10;
/// 2024-01-01T00:00:00Z, in nanoseconds.
pub const START_NS: i64 = 1_704_067_200 * 1_000_000_000;

const REGIONS: [&str; 9] = [
    "us-east-1",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "sa-east-1",
];

/// The table every cpu batch belongs to: `benchdb.cpu`.
pub fn cpu_table() -> TableKey {
    TableKey::new("benchdb", "cpu").expect("valid names")
}

/// The Arrow schema of a cpu batch (column order: time, tags, fields).
pub fn cpu_arrow_schema() -> Schema {
    let mut fields = vec![ColumnKind::Time.field("time")];
    fields.extend(TAGS.iter().map(|t| ColumnKind::Tag.field(t)));
    fields.extend(
        FIELDS
            .iter()
            .map(|f| ColumnKind::Field(FieldType::Float).field(f)),
    );
    Schema::new(fields)
}

/// The table schema of `benchdb.cpu`, as the catalog would hold it.
pub fn cpu_table_schema() -> TableSchema {
    TableSchema::try_from_arrow(&cpu_arrow_schema()).expect("valid schema")
}

/// A deterministic generator of cpu rows: host after host, tick after tick.
#[derive(Debug, Clone)]
pub struct CpuGen {
    hostnames: Vec<String>,
    regions: Vec<&'static str>,
    datacenters: Vec<String>,
    /// Per host, the current value of each field (random walk in 0..100).
    values: Vec<[f64; FIELDS.len()]>,
    rng: u64,
    /// The next row to produce, counted from the start.
    next_row: u64,
    schema: Arc<Schema>,
}

impl Default for CpuGen {
    fn default() -> Self {
        CpuGen::new(HOSTS)
    }
}

impl CpuGen {
    /// A generator over `hosts` series.
    pub fn new(hosts: usize) -> CpuGen {
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let mut values = Vec::with_capacity(hosts);
        for _ in 0..hosts {
            let mut v = [0.0; FIELDS.len()];
            for x in &mut v {
                *x = (xorshift(&mut rng) % 10_000) as f64 / 100.0;
            }
            values.push(v);
        }
        let regions: Vec<&'static str> = (0..hosts).map(|h| REGIONS[h % REGIONS.len()]).collect();
        let datacenters = (0..hosts)
            .map(|h| format!("{}{}", regions[h], ['a', 'b', 'c'][(h / REGIONS.len()) % 3]))
            .collect();
        CpuGen {
            hostnames: (0..hosts).map(|h| format!("host_{h}")).collect(),
            regions,
            datacenters,
            values,
            rng,
            next_row: 0,
            schema: Arc::new(cpu_arrow_schema()),
        }
    }

    /// The next `rows` rows as one write batch.
    pub fn batch(&mut self, rows: usize) -> WriteBatch {
        let hosts = self.hostnames.len() as u64;
        let mut time =
            TimestampNanosecondBuilder::with_capacity(rows).with_data_type(time_data_type());
        let mut tags: Vec<StringDictionaryBuilder<Int32Type>> = (0..TAGS.len())
            .map(|_| StringDictionaryBuilder::new())
            .collect();
        let mut fields: Vec<Float64Builder> = (0..FIELDS.len())
            .map(|_| Float64Builder::with_capacity(rows))
            .collect();
        for _ in 0..rows {
            let h = (self.next_row % hosts) as usize;
            let tick = (self.next_row / hosts) as i64;
            // A few microseconds of jitter, as real agents report.
            let jitter = (xorshift(&mut self.rng) % 1_000_000) as i64;
            time.append_value(START_NS + tick * TICK_SECS * 1_000_000_000 + jitter);
            tags[0].append_value(&self.hostnames[h]);
            tags[1].append_value(self.regions[h]);
            tags[2].append_value(&self.datacenters[h]);
            for (f, v) in fields.iter_mut().zip(self.values[h].iter_mut()) {
                let step = (xorshift(&mut self.rng) % 201) as f64 / 100.0 - 1.0;
                *v = (*v + step).clamp(0.0, 100.0);
                f.append_value(*v);
            }
            self.next_row += 1;
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(COLUMNS);
        columns.push(Arc::new(time.finish()));
        columns.extend(tags.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.extend(fields.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        let batch = RecordBatch::try_new(self.schema.clone(), columns).expect("cpu columns");
        WriteBatch::try_new(cpu_table(), batch).expect("valid cpu batch")
    }

    /// `count` consecutive batches of `rows` rows.
    pub fn batches(&mut self, count: usize, rows: usize) -> Vec<WriteBatch> {
        (0..count).map(|_| self.batch(rows)).collect()
    }
}

fn xorshift(s: &mut u64) -> u64 {
    let mut x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    x
}

/// `rows` cpu rows as a shard's flush would hand them to a worker: appended
/// to a [`ShardBuffer`] in batches of 5,000 rows, then frozen.
pub fn frozen_cpu_table(rows: usize) -> FrozenTable {
    let mut gen = CpuGen::default();
    let schema = cpu_table_schema();
    let table = cpu_table();
    let mut buf = ShardBuffer::new(BufferConfig::default(), WalSeq::ZERO);
    let mut seq = WalSeq::ZERO;
    let mut left = rows;
    while left > 0 {
        let n = left.min(5_000);
        let b = gen.batch(n);
        seq = seq.next();
        buf.append(seq, &table, &schema, b.batch());
        left -= n;
    }
    let mut set = buf.begin_flush().expect("rows were appended");
    set.tables.remove(&table).expect("the cpu table")
}

/// A directory for bench files on a real disk: under `/tmp` unless that is a
/// tmpfs (or ramfs), else under the workspace's `target/bench-tmp`.
pub fn scratch_root() -> PathBuf {
    let tmp = std::env::temp_dir();
    if is_memory_fs(&tmp) {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp");
        std::fs::create_dir_all(&p).expect("create target/bench-tmp");
        p
    } else {
        tmp
    }
}

/// A fresh temporary directory under [`scratch_root`], removed on drop.
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(scratch_root())
        .expect("create scratch dir")
}

/// Whether `path` lives on a tmpfs or ramfs, by the longest matching mount
/// point in `/proc/self/mounts`.
fn is_memory_fs(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let _dev = it.next()?;
            let mnt = it.next()?;
            let fstype = it.next()?;
            path.starts_with(mnt).then_some((mnt.len(), fstype))
        })
        .max_by_key(|(len, _)| *len)
        .is_some_and(|(_, fstype)| fstype == "tmpfs" || fstype == "ramfs")
}

/// A human-readable size for bench ids: `1KiB`, `64KiB`, `1MiB`.
pub fn size_label(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes & ((1 << 20) - 1) == 0 {
        format!("{}MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes & ((1 << 10) - 1) == 0 {
        format!("{}KiB", bytes >> 10)
    } else {
        format!("{bytes}B")
    }
}
