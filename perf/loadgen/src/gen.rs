//! Realistic series, after TSBS: `cpu-only` (one measurement `cpu` with ten
//! tags and ten float fields per host) and `devops` (cpu, mem, disk, net per
//! host). Each host is one series per measurement; a batch holds consecutive
//! rows, host after host, advancing time by `interval` after every round of
//! hosts.

use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Schema {
    /// TSBS cpu-only: `cpu` with 10 tags and 10 fields.
    Cpu,
    /// TSBS devops-like: cpu, mem, disk and net per host.
    Devops,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// InfluxDB line protocol.
    Lp,
    /// Arc MessagePack, columnar (one record per measurement).
    MsgpackColumnar,
    /// Arc MessagePack, one record per row.
    MsgpackRow,
}

const REGIONS: [&str; 6] = [
    "us-east-1",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-1",
];
const OS: [&str; 3] = ["Ubuntu16.04LTS", "Ubuntu15.10", "Ubuntu16.10"];
const ARCH: [&str; 2] = ["x64", "x86"];
const TEAMS: [&str; 4] = ["SF", "NYC", "LON", "CHI"];
const SERVICES: [&str; 4] = ["6", "7", "8", "9"];
const ENVS: [&str; 3] = ["production", "staging", "test"];

/// The tags of host `h`.
fn host_tags(h: usize) -> [(&'static str, String); 10] {
    [
        ("hostname", format!("host_{h}")),
        ("region", REGIONS[h % REGIONS.len()].to_string()),
        (
            "datacenter",
            format!("{}{}", REGIONS[h % REGIONS.len()], ["a", "b", "c"][h % 3]),
        ),
        ("rack", (h % 100).to_string()),
        ("os", OS[h % OS.len()].to_string()),
        ("arch", ARCH[h % ARCH.len()].to_string()),
        ("team", TEAMS[h % TEAMS.len()].to_string()),
        ("service", SERVICES[h % SERVICES.len()].to_string()),
        ("service_version", (h % 2).to_string()),
        ("service_environment", ENVS[h % ENVS.len()].to_string()),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    F,
    I,
}

fn fields(measurement: &str) -> &'static [(&'static str, Kind)] {
    match measurement {
        "cpu" => &[
            ("usage_user", Kind::F),
            ("usage_system", Kind::F),
            ("usage_idle", Kind::F),
            ("usage_nice", Kind::F),
            ("usage_iowait", Kind::F),
            ("usage_irq", Kind::F),
            ("usage_softirq", Kind::F),
            ("usage_steal", Kind::F),
            ("usage_guest", Kind::F),
            ("usage_guest_nice", Kind::F),
        ],
        "mem" => &[
            ("total", Kind::I),
            ("available", Kind::I),
            ("used", Kind::I),
            ("free", Kind::I),
            ("cached", Kind::I),
            ("buffered", Kind::I),
            ("used_percent", Kind::F),
        ],
        "disk" => &[
            ("total", Kind::I),
            ("free", Kind::I),
            ("used", Kind::I),
            ("used_percent", Kind::F),
            ("inodes_free", Kind::I),
        ],
        _ => &[
            ("bytes_sent", Kind::I),
            ("bytes_recv", Kind::I),
            ("packets_sent", Kind::I),
            ("packets_recv", Kind::I),
            ("err_in", Kind::I),
        ],
    }
}

/// One row: measurement, host, time, values.
#[derive(Debug, Clone)]
pub struct Row {
    pub measurement: &'static str,
    pub host: usize,
    pub time_ns: i64,
    pub values: Vec<f64>,
}

/// Generates rows deterministically from a seed.
#[derive(Debug, Clone)]
pub struct Generator {
    schema: Schema,
    series: usize,
    start_ns: i64,
    interval_ns: i64,
    /// Rows produced so far.
    n: u64,
    rng: u64,
}

impl Generator {
    pub fn new(
        schema: Schema,
        series: usize,
        start_ns: i64,
        interval_ns: i64,
        seed: u64,
    ) -> Generator {
        Generator {
            schema,
            series: series.max(1),
            start_ns,
            interval_ns,
            n: 0,
            rng: mix_seed(seed),
        }
    }

    fn next_f(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 10_000) as f64 / 100.0
    }

    fn measurements(&self) -> &'static [&'static str] {
        match self.schema {
            Schema::Cpu => &["cpu"],
            Schema::Devops => &["cpu", "mem", "disk", "net"],
        }
    }

    pub fn next_row(&mut self) -> Row {
        let ms = self.measurements();
        let per_round = (self.series * ms.len()) as u64;
        let round = self.n / per_round;
        let within = (self.n % per_round) as usize;
        let host = within / ms.len();
        let measurement = ms[within % ms.len()];
        self.n += 1;
        let values = (0..fields(measurement).len())
            .map(|_| self.next_f())
            .collect();
        Row {
            measurement,
            host,
            time_ns: self.start_ns + round as i64 * self.interval_ns,
            values,
        }
    }

    pub fn rows(&mut self, n: usize) -> Vec<Row> {
        (0..n).map(|_| self.next_row()).collect()
    }
}

/// splitmix64 of `seed`, never zero (xorshift's one fixed point). Not
/// `seed | 1`, which gave seeds 42 and 43 the same stream.
fn mix_seed(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

fn escape_tag(s: &str, out: &mut String) {
    for c in s.chars() {
        if matches!(c, ',' | '=' | ' ') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Line protocol, nanosecond timestamps.
pub fn line_protocol(rows: &[Row]) -> Vec<u8> {
    let mut s = String::with_capacity(rows.len() * 300);
    for r in rows {
        s.push_str(r.measurement);
        for (k, v) in host_tags(r.host) {
            s.push(',');
            s.push_str(k);
            s.push('=');
            escape_tag(&v, &mut s);
        }
        s.push(' ');
        for (i, ((name, kind), v)) in fields(r.measurement).iter().zip(&r.values).enumerate() {
            if i > 0 {
                s.push(',');
            }
            match kind {
                Kind::F => {
                    let _ = write!(s, "{name}={v}");
                }
                Kind::I => {
                    let _ = write!(s, "{name}={}i", (*v * 1000.0) as i64);
                }
            }
        }
        let _ = writeln!(s, " {}", r.time_ns);
    }
    s.into_bytes()
}

/// Arc MessagePack columnar: one record per measurement, in an array when
/// there are several. Times in milliseconds, as Telegraf's Arc output sends.
pub fn msgpack_columnar(rows: &[Row]) -> Vec<u8> {
    use rmp::encode::*;
    let mut groups: Vec<(&'static str, Vec<&Row>)> = Vec::new();
    for r in rows {
        match groups.iter_mut().find(|(m, _)| *m == r.measurement) {
            Some((_, g)) => g.push(r),
            None => groups.push((r.measurement, vec![r])),
        }
    }
    let mut out = Vec::with_capacity(rows.len() * 200);
    if groups.len() > 1 {
        write_array_len(&mut out, groups.len() as u32).expect("vec write");
    }
    for (m, g) in &groups {
        let fs = fields(m);
        write_map_len(&mut out, 2).expect("vec write");
        write_str(&mut out, "m").expect("vec write");
        write_str(&mut out, m).expect("vec write");
        write_str(&mut out, "columns").expect("vec write");
        write_map_len(&mut out, (1 + 10 + fs.len()) as u32).expect("vec write");
        write_str(&mut out, "time").expect("vec write");
        write_array_len(&mut out, g.len() as u32).expect("vec write");
        for r in g {
            write_sint(&mut out, r.time_ns / 1_000_000).expect("vec write");
        }
        // Each row's tags once (not once per tag column: host_tags allocates).
        let tags: Vec<[(&'static str, String); 10]> = g.iter().map(|r| host_tags(r.host)).collect();
        for t in 0..10 {
            write_str(&mut out, tags[0][t].0).expect("vec write");
            write_array_len(&mut out, g.len() as u32).expect("vec write");
            for row_tags in &tags {
                write_str(&mut out, &row_tags[t].1).expect("vec write");
            }
        }
        for (i, (name, kind)) in fs.iter().enumerate() {
            write_str(&mut out, name).expect("vec write");
            write_array_len(&mut out, g.len() as u32).expect("vec write");
            for r in g {
                match kind {
                    Kind::F => write_f64(&mut out, r.values[i]).expect("vec write"),
                    Kind::I => {
                        write_sint(&mut out, (r.values[i] * 1000.0) as i64).expect("vec write");
                    }
                }
            }
        }
    }
    out
}

/// Arc MessagePack row records in an array. Times in milliseconds.
pub fn msgpack_row(rows: &[Row]) -> Vec<u8> {
    use rmp::encode::*;
    let mut out = Vec::with_capacity(rows.len() * 400);
    write_array_len(&mut out, rows.len() as u32).expect("vec write");
    for r in rows {
        let tags = host_tags(r.host);
        write_map_len(&mut out, 4).expect("vec write");
        write_str(&mut out, "m").expect("vec write");
        write_str(&mut out, r.measurement).expect("vec write");
        write_str(&mut out, "t").expect("vec write");
        write_sint(&mut out, r.time_ns / 1_000_000).expect("vec write");
        write_str(&mut out, "tags").expect("vec write");
        write_map_len(&mut out, tags.len() as u32).expect("vec write");
        for (k, v) in &tags {
            write_str(&mut out, k).expect("vec write");
            write_str(&mut out, v).expect("vec write");
        }
        write_str(&mut out, "fields").expect("vec write");
        let fs = fields(r.measurement);
        write_map_len(&mut out, fs.len() as u32).expect("vec write");
        for (i, (name, kind)) in fs.iter().enumerate() {
            write_str(&mut out, name).expect("vec write");
            match kind {
                Kind::F => write_f64(&mut out, r.values[i]).expect("vec write"),
                Kind::I => {
                    write_sint(&mut out, (r.values[i] * 1000.0) as i64).expect("vec write");
                }
            }
        }
    }
    out
}

pub fn encode(format: Format, rows: &[Row]) -> Vec<u8> {
    match format {
        Format::Lp => line_protocol(rows),
        Format::MsgpackColumnar => msgpack_columnar(rows),
        Format::MsgpackRow => msgpack_row(rows),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType};
    use arrow_array::RecordBatch;
    use tidemark_ingest::{Precision, WriteBatch};

    /// 2026-01-01T00:00:00Z: a whole millisecond, so the MessagePack formats
    /// (milliseconds) and line protocol (nanoseconds) carry the same times.
    const START: i64 = 1_767_225_600_000_000_000;

    #[test]
    fn rows_advance_time_after_each_round_of_hosts() {
        let mut g = Generator::new(Schema::Devops, 3, 1_000, 10, 7);
        let rows = g.rows(13);
        assert_eq!(rows[0].measurement, "cpu");
        assert_eq!(rows[1].measurement, "mem");
        assert_eq!(rows[4].host, 1);
        assert!(rows[..12].iter().all(|r| r.time_ns == 1_000));
        assert_eq!(rows[12].time_ns, 1_010);
        let lp = String::from_utf8(line_protocol(&rows[..1])).unwrap();
        assert!(
            lp.starts_with("cpu,hostname=host_0,region=us-east-1,"),
            "{lp}"
        );
        assert!(lp.ends_with(" 1000\n"));
    }

    #[test]
    fn generation_is_deterministic_and_seeded() {
        let a = Generator::new(Schema::Cpu, 10, START, 1, 42).rows(50);
        let b = Generator::new(Schema::Cpu, 10, START, 1, 42).rows(50);
        let c = Generator::new(Schema::Cpu, 10, START, 1, 43).rows(50);
        assert!(line_protocol(&a) == line_protocol(&b));
        // Seeds that differ in the lowest bit only give different streams.
        assert!(line_protocol(&a) != line_protocol(&c));
        assert!(a
            .iter()
            .flat_map(|r| &r.values)
            .all(|v| (0.0..100.0).contains(v)));
    }

    #[test]
    fn line_protocol_lines_have_ten_tags_and_the_schema_fields() {
        let rows = Generator::new(Schema::Devops, 5, START, 10_000_000_000, 1).rows(40);
        let text = String::from_utf8(line_protocol(&rows)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 40);
        for (line, row) in lines.iter().zip(&rows) {
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts.len(), 3, "{line}");
            let key: Vec<&str> = parts[0].split(',').collect();
            assert_eq!(key[0], row.measurement);
            assert_eq!(key.len(), 11, "measurement + 10 tags: {line}");
            assert_eq!(key[1], format!("hostname=host_{}", row.host));
            let fs: Vec<&str> = parts[1].split(',').collect();
            assert_eq!(fs.len(), fields(row.measurement).len());
            for (f, (name, kind)) in fs.iter().zip(fields(row.measurement)) {
                let (k, v) = f.split_once('=').unwrap();
                assert_eq!(k, *name);
                match kind {
                    Kind::I => assert!(v.ends_with('i') && v[..v.len() - 1].parse::<i64>().is_ok()),
                    Kind::F => assert!(v.parse::<f64>().is_ok(), "{v}"),
                }
            }
            assert_eq!(parts[2].parse::<i64>().unwrap(), row.time_ns);
        }
    }

    #[test]
    fn tag_values_with_special_characters_are_escaped() {
        let mut s = String::new();
        escape_tag("a b,c=d", &mut s);
        assert_eq!(s, r"a\ b\,c\=d");
        let body = format!("m,t={s} v=1 1\n");
        let d =
            tidemark_ingest::line_protocol::parse(body.as_bytes(), "db", Precision::Nanoseconds, 0)
                .unwrap();
        assert_eq!(tag_strings(d.batches[0].batch(), "t"), vec!["a b,c=d"]);
    }

    /// A decoded MessagePack value, enough to check the shapes we send.
    #[derive(Debug, Clone, PartialEq)]
    enum V {
        Map(Vec<(String, V)>),
        Arr(Vec<V>),
        Str(String),
        Int(i64),
        F(f64),
    }

    impl V {
        fn get(&self, key: &str) -> &V {
            match self {
                V::Map(es) => &es.iter().find(|(k, _)| k == key).unwrap().1,
                other => panic!("{other:?} is not a map"),
            }
        }
        fn keys(&self) -> Vec<&str> {
            match self {
                V::Map(es) => es.iter().map(|(k, _)| k.as_str()).collect(),
                other => panic!("{other:?} is not a map"),
            }
        }
        fn arr(&self) -> &[V] {
            match self {
                V::Arr(a) => a,
                other => panic!("{other:?} is not an array"),
            }
        }
    }

    fn read_v(r: &mut &[u8]) -> V {
        use rmp::Marker;
        let marker = rmp::decode::read_marker(r).unwrap();
        let take = |r: &mut &[u8], n: usize| {
            let (a, b) = r.split_at(n);
            *r = b;
            a.to_vec()
        };
        let be = |b: Vec<u8>| b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
        match marker {
            Marker::FixMap(n) => V::Map((0..n).map(|_| read_kv(r)).collect()),
            Marker::Map16 => {
                let n = be(take(r, 2));
                V::Map((0..n).map(|_| read_kv(r)).collect())
            }
            Marker::FixArray(n) => V::Arr((0..n).map(|_| read_v(r)).collect()),
            Marker::Array16 => {
                let n = be(take(r, 2));
                V::Arr((0..n).map(|_| read_v(r)).collect())
            }
            Marker::Array32 => {
                let n = be(take(r, 4));
                V::Arr((0..n).map(|_| read_v(r)).collect())
            }
            Marker::FixStr(n) => V::Str(String::from_utf8(take(r, n as usize)).unwrap()),
            Marker::Str8 => {
                let n = be(take(r, 1)) as usize;
                V::Str(String::from_utf8(take(r, n)).unwrap())
            }
            Marker::FixPos(n) => V::Int(i64::from(n)),
            Marker::U8 => V::Int(be(take(r, 1)) as i64),
            Marker::U16 => V::Int(be(take(r, 2)) as i64),
            Marker::U32 => V::Int(be(take(r, 4)) as i64),
            Marker::U64 => V::Int(be(take(r, 8)) as i64),
            Marker::F64 => V::F(f64::from_bits(be(take(r, 8)))),
            other => panic!("unexpected marker {other:?}"),
        }
    }

    fn read_kv(r: &mut &[u8]) -> (String, V) {
        let V::Str(k) = read_v(r) else {
            panic!("map key is not a string")
        };
        (k, read_v(r))
    }

    fn decode_all(body: &[u8]) -> V {
        let mut r = body;
        let v = read_v(&mut r);
        assert!(r.is_empty(), "{} trailing bytes", r.len());
        v
    }

    #[test]
    fn msgpack_columnar_is_one_record_per_measurement_with_equal_length_columns() {
        let rows = Generator::new(Schema::Cpu, 7, START, 10_000_000_000, 1).rows(20);
        let v = decode_all(&msgpack_columnar(&rows));
        // One measurement: a single record, not an array.
        assert_eq!(v.keys(), vec!["m", "columns"]);
        assert_eq!(v.get("m"), &V::Str("cpu".into()));
        let cols = v.get("columns");
        let keys = cols.keys();
        assert_eq!(keys.len(), 1 + 10 + 10);
        assert_eq!(keys[0], "time");
        for k in &keys {
            assert_eq!(cols.get(k).arr().len(), 20, "column {k}");
        }
        assert_eq!(cols.get("time").arr()[0], V::Int(START / 1_000_000));
        assert_eq!(cols.get("hostname").arr()[3], V::Str("host_3".into()));
        assert!(matches!(cols.get("usage_idle").arr()[0], V::F(_)));

        // Several measurements: an array of records, rows grouped by measurement.
        let rows = Generator::new(Schema::Devops, 3, START, 10_000_000_000, 1).rows(24);
        let v = decode_all(&msgpack_columnar(&rows));
        let recs = v.arr();
        let names: Vec<&V> = recs.iter().map(|r| r.get("m")).collect();
        assert_eq!(
            names,
            ["cpu", "mem", "disk", "net"]
                .map(|s| V::Str(s.into()))
                .iter()
                .collect::<Vec<_>>()
        );
        for r in recs {
            assert_eq!(r.get("columns").get("time").arr().len(), 6);
        }
        assert!(matches!(
            recs[1].get("columns").get("total").arr()[0],
            V::Int(_)
        ));
    }

    #[test]
    fn msgpack_row_is_an_array_of_m_t_tags_fields_records() {
        let rows = Generator::new(Schema::Devops, 2, START, 10_000_000_000, 1).rows(9);
        let v = decode_all(&msgpack_row(&rows));
        let recs = v.arr();
        assert_eq!(recs.len(), 9);
        for (rec, row) in recs.iter().zip(&rows) {
            assert_eq!(rec.keys(), vec!["m", "t", "tags", "fields"]);
            assert_eq!(rec.get("m"), &V::Str(row.measurement.into()));
            assert_eq!(rec.get("t"), &V::Int(row.time_ns / 1_000_000));
            assert_eq!(rec.get("tags").keys().len(), 10);
            assert_eq!(
                rec.get("tags").get("hostname"),
                &V::Str(format!("host_{}", row.host))
            );
            assert_eq!(
                rec.get("fields").keys().len(),
                fields(row.measurement).len()
            );
        }
    }

    fn tag_strings(b: &RecordBatch, name: &str) -> Vec<String> {
        let d = b.column_by_name(name).unwrap().as_dictionary::<Int32Type>();
        let vals = d.values().as_string::<i32>();
        (0..b.num_rows())
            .map(|i| vals.value(d.keys().value(i) as usize).to_string())
            .collect()
    }

    /// Every column of a decoded table as comparable strings, by name.
    fn columns(b: &WriteBatch) -> Vec<(String, Vec<String>)> {
        let rb = b.batch();
        let mut out: Vec<(String, Vec<String>)> = rb
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let name = f.name().clone();
                let c = rb.column_by_name(&name).unwrap();
                let vals: Vec<String> =
                    if let Some(t) = c.as_primitive_opt::<TimestampNanosecondType>() {
                        (0..t.len()).map(|i| t.value(i).to_string()).collect()
                    } else if let Some(x) = c.as_primitive_opt::<Float64Type>() {
                        (0..x.len()).map(|i| x.value(i).to_string()).collect()
                    } else if let Some(x) = c.as_primitive_opt::<Int64Type>() {
                        (0..x.len()).map(|i| format!("{}i", x.value(i))).collect()
                    } else {
                        tag_strings(rb, &name)
                    };
                (name, vals)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn all_three_formats_decode_to_the_same_tables() {
        for schema in [Schema::Cpu, Schema::Devops] {
            let rows = Generator::new(schema, 50, START, 10_000_000_000, 9).rows(333);
            let lp = tidemark_ingest::line_protocol::parse(
                &line_protocol(&rows),
                "db",
                Precision::Nanoseconds,
                0,
            )
            .unwrap();
            let col = tidemark_ingest::msgpack::parse(&msgpack_columnar(&rows), "db", 0).unwrap();
            let row = tidemark_ingest::msgpack::parse(&msgpack_row(&rows), "db", 0).unwrap();
            for d in [&lp, &col, &row] {
                assert_eq!(d.num_rows(), 333);
            }
            for table in &lp.batches {
                let key = table.table();
                let find = |d: &tidemark_ingest::builder::Decoded| {
                    columns(d.batches.iter().find(|b| b.table() == key).unwrap())
                };
                let want = columns(table);
                assert_eq!(want.len(), 1 + 10 + fields(key.measurement()).len());
                assert_eq!(find(&col), want, "columnar {key:?}");
                assert_eq!(find(&row), want, "row {key:?}");
            }
        }
    }
}
