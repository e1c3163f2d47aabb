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
            rng: seed | 1,
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
        for t in 0..10 {
            write_str(&mut out, host_tags(0)[t].0).expect("vec write");
            write_array_len(&mut out, g.len() as u32).expect("vec write");
            for r in g {
                write_str(&mut out, &host_tags(r.host)[t].1).expect("vec write");
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
    use super::*;

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
}
