//! `tidemark-loadgen`: drives any InfluxDB- or Arc-compatible ingest endpoint
//! with realistic series and reports rows/s and request latency.
//!
//! Thread-per-core client: `--threads` threads, each a monoio runtime (io_uring
//! where allowed) with its share of `--connections` keep-alive connections.
//! Request bodies are generated before the run (`--pool` distinct batches,
//! cycled) so the client spends its CPU on sending. With `--rate`, each
//! connection sends on a fixed schedule and latency is measured from the
//! scheduled send time (corrected for coordinated omission); without it,
//! connections send as fast as the server answers.

mod schedule;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use schedule::Schedule;
use tidemark_loadgen::gen::{self, Format, Generator, Schema};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "tidemark-loadgen", version, about)]
struct Args {
    /// Write endpoint. A full URL (`http://host:port/write?db=x`), or just
    /// `http://host:port` to use the format's usual path (`/write?db=<database>`
    /// for line protocol, `/api/v1/write/msgpack` for MessagePack).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    #[arg(long, value_enum, default_value = "lp")]
    format: Format,
    /// Rows per request.
    #[arg(long, default_value_t = 5000)]
    batch_size: usize,
    /// Connections in total, spread over the threads.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Client threads (one runtime each).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pin client thread i to the i-th CPU of this comma-separated list.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Seconds to run after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many rows (after the warm-up, rounded up to whole
    /// requests) instead.
    #[arg(long)]
    rows: Option<u64>,
    /// Seconds of warm-up, not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Target rows per second in total; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Number of hosts (series per measurement).
    #[arg(long, default_value_t = 1000)]
    series: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    schema: Schema,
    /// Time of the first row, ns since the epoch (default: one hour ago).
    #[arg(long)]
    start_time: Option<i64>,
    /// Time step between rounds of hosts, in ms.
    #[arg(long, default_value_t = 10_000)]
    interval_ms: i64,
    #[arg(long, value_enum, default_value = "none")]
    compression: Compression,
    /// Database (query parameter for line protocol, `x-arc-database` for MessagePack).
    #[arg(long, default_value = "bench")]
    database: String,
    /// API token, sent as `Authorization: Bearer`.
    #[arg(long)]
    token: Option<String>,
    /// Distinct request bodies generated up front, sent in order over all
    /// connections and cycled: once the pool wraps around, rows repeat as
    /// the same points (a server that merges repeated points, as tidemark
    /// and InfluxDB do, then stores fewer rows than were sent).
    #[arg(long, default_value_t = 64)]
    pool: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What one client thread saw. `requests`, `rows`, `bytes` and the latency
/// count requests sent after the warm-up; `acked_rows` counts every row a
/// server accepted, warm-up included (what the server should now hold).
struct Stats {
    requests: u64,
    rows: u64,
    acked_rows: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    latency_us: Histogram<u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            requests: 0,
            rows: 0,
            acked_rows: 0,
            bytes: 0,
            errors: 0,
            first_error: None,
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
        }
    }
    fn merge(&mut self, o: Stats) {
        self.requests += o.requests;
        self.rows += o.rows;
        self.acked_rows += o.acked_rows;
        self.bytes += o.bytes;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.latency_us.add(o.latency_us).expect("same bounds");
    }
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn parse_url(args: &Args) -> anyhow::Result<Target> {
    let rest = args
        .url
        .strip_prefix("http://")
        .context("--url must start with http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {hostport}"))?
        .next()
        .context("no address")?;
    let path = if path.is_empty() || path == "/" {
        match args.format {
            Format::Lp => format!("/write?db={}", args.database),
            _ => "/api/v1/write/msgpack".to_string(),
        }
    } else {
        path.to_string()
    };
    Ok(Target {
        addr,
        host: hostport.to_string(),
        path,
    })
}

/// The pre-built requests (head and body), and rows per request.
fn build_requests(args: &Args, target: &Target) -> anyhow::Result<Vec<bytes::Bytes>> {
    let start = args.start_time.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        now - 3_600_000_000_000
    });
    let mut g = Generator::new(
        args.schema,
        args.series,
        start,
        args.interval_ms * 1_000_000,
        42,
    );
    let mut out = Vec::with_capacity(args.pool);
    for _ in 0..args.pool.max(1) {
        let rows = g.rows(args.batch_size);
        let mut body = gen::encode(args.format, &rows);
        let mut head = format!("POST {} HTTP/1.1\r\nHost: {}\r\n", target.path, target.host);
        match args.format {
            Format::Lp => head += "Content-Type: text/plain; charset=utf-8\r\n",
            _ => {
                head += "Content-Type: application/msgpack\r\n";
                head += &format!("x-arc-database: {}\r\n", args.database);
            }
        }
        let (compressed, encoding) = compress(args.compression, body)?;
        body = compressed;
        if let Some(e) = encoding {
            head += &format!("Content-Encoding: {e}\r\n");
        }
        if let Some(t) = &args.token {
            head += &format!("Authorization: Bearer {t}\r\n");
        }
        head += &format!("Content-Length: {}\r\n\r\n", body.len());
        let mut req = head.into_bytes();
        req.extend_from_slice(&body);
        out.push(bytes::Bytes::from(req));
    }
    Ok(out)
}

/// `body` compressed as asked, and the `Content-Encoding` that says so.
fn compress(c: Compression, body: Vec<u8>) -> anyhow::Result<(Vec<u8>, Option<&'static str>)> {
    Ok(match c {
        Compression::None => (body, None),
        Compression::Gzip => {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&body)?;
            (e.finish()?, Some("gzip"))
        }
        Compression::Zstd => (zstd::encode_all(&body[..], 3)?, Some("zstd")),
    })
}

/// Reads one response; returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = resp.parse(buf)? {
            let status = resp.code.unwrap_or(0);
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_len + len {
                read_more(stream, buf).await?;
            }
            if status >= 300 && buf.len() >= head_len + len {
                let body = String::from_utf8_lossy(&buf[head_len..head_len + len]).into_owned();
                buf.drain(..head_len + len);
                bail!("HTTP {status}: {body}");
            }
            buf.drain(..head_len + len);
            return Ok(status);
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    use monoio::buf::IoBufMut;
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 << 10);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, b) = stream.read(std::mem::take(buf).slice_mut(len..cap)).await;
    *buf = b.into_inner();
    if res? == 0 {
        bail!("connection closed by the server");
    }
    Ok(())
}

struct Shared {
    requests: Vec<bytes::Bytes>,
    rows_per_request: u64,
    stop: AtomicBool,
    started: Instant,
    measure_from: Instant,
    measure_until: Instant,
    /// With `--rows`: measured requests still to send (claimed before sending).
    requests_left: Option<AtomicU64>,
    rate: f64,
    batch_size: usize,
    connections: usize,
    /// The next body of the pool to send, over all connections: bodies go
    /// out in order, so no row is sent twice until the pool wraps around
    /// (a server that merges repeated points, as tidemark and InfluxDB do,
    /// stores every row only then).
    next_body: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// Claims one measured request; false once `--rows` are all claimed.
    fn claim(&self) -> bool {
        match &self.requests_left {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    addr: SocketAddr,
    index: usize,
    stats: Arc<std::sync::Mutex<Stats>>,
) {
    let mut local = Stats::new();
    let mut buf = Vec::with_capacity(16 << 10);
    let mut stream: Option<TcpStream> = None;
    let schedule = Schedule::fixed_rate(shared.rate, shared.batch_size, shared.connections, index);
    let start = shared.started;
    let mut k: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= shared.measure_until {
            break;
        }
        let due = schedule.due(k).map(|d| start + d);
        if let Some(at) = due {
            if at >= shared.measure_until {
                break;
            }
            if at > now {
                monoio::time::sleep(at - now).await;
            }
        }
        let sent = Instant::now();
        // A request counts when it was due (or sent) after the warm-up.
        let counted = due.unwrap_or(sent) >= shared.measure_from;
        if counted && !shared.claim() {
            break;
        }
        k += 1;
        if stream.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                    buf.clear();
                }
                Err(e) => {
                    local.errors += 1;
                    local.first_error.get_or_insert(format!("connect: {e}"));
                    monoio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected above");
        let body = shared.next_body.fetch_add(1, Ordering::Relaxed);
        let req = shared.requests[body % shared.requests.len()].clone();
        let len = req.len() as u64;
        let (res, _) = s.write_all(req).await;
        let result = match res {
            Ok(_) => read_response(s, &mut buf).await,
            Err(e) => Err(e.into()),
        };
        let done = Instant::now();
        match result {
            Ok(_) => {
                local.acked_rows += shared.rows_per_request;
                if counted {
                    local.requests += 1;
                    local.rows += shared.rows_per_request;
                    local.bytes += len;
                    let us = schedule::latency(due.map(|d| d - start), sent - start, done - start)
                        .as_micros()
                        .max(1) as u64;
                    let _ = local.latency_us.record(us.min(600_000_000));
                }
            }
            Err(e) => {
                if counted {
                    local.errors += 1;
                }
                local.first_error.get_or_insert(e.to_string());
                stream = None;
            }
        }
    }
    stats.lock().expect("stats lock").merge(local);
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.batch_size == 0 || args.connections == 0 || args.threads == 0 {
        bail!("--batch-size, --connections and --threads must be at least 1");
    }
    let target = parse_url(&args)?;
    let requests = build_requests(&args, &target)?;
    let t0 = Instant::now();
    let measure_from = t0 + Duration::from_secs_f64(args.warmup);
    let measure_until = if args.rows.is_some() {
        t0 + Duration::from_secs(24 * 3600)
    } else {
        measure_from + Duration::from_secs_f64(args.duration)
    };
    let shared = Arc::new(Shared {
        requests,
        rows_per_request: args.batch_size as u64,
        stop: AtomicBool::new(false),
        started: t0,
        measure_from,
        measure_until,
        requests_left: args
            .rows
            .map(|r| AtomicU64::new(r.div_ceil(args.batch_size as u64))),
        rate: args.rate,
        batch_size: args.batch_size,
        connections: args.connections,
        next_body: std::sync::atomic::AtomicUsize::new(0),
    });
    let stats = Arc::new(std::sync::Mutex::new(Stats::new()));
    let mut threads = Vec::new();
    for t in 0..args.threads {
        let shared = shared.clone();
        let stats = stats.clone();
        let addr = target.addr;
        let cpu = args.cpus.get(t).copied();
        let conns: Vec<usize> = (0..args.connections)
            .filter(|c| c % args.threads == t)
            .collect();
        threads.push(std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                let _ = monoio::utils::bind_to_cpu_set([cpu]);
            }
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
                .expect("client runtime");
            rt.block_on(async move {
                let handles: Vec<_> = conns
                    .into_iter()
                    .map(|c| monoio::spawn(connection(shared.clone(), addr, c, stats.clone())))
                    .collect();
                for h in handles {
                    h.await;
                }
            });
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    }
    // From the end of the warm-up to the last answer (requests in flight at
    // the end of --duration are counted, so is the time they took).
    let elapsed = Instant::now()
        .duration_since(measure_from)
        .as_secs_f64()
        .max(1e-9);
    let s = stats.lock().expect("stats lock");
    report(&args, &s, elapsed);
    if s.requests == 0 {
        bail!(
            "no request succeeded: {}",
            s.first_error.clone().unwrap_or_default()
        );
    }
    Ok(())
}

/// The name a value is given on the command line (`msgpack-columnar`).
fn value_name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

fn report(args: &Args, s: &Stats, secs: f64) {
    let q = |p: f64| s.latency_us.value_at_quantile(p) as f64 / 1000.0;
    let rows_per_sec = s.rows as f64 / secs;
    if args.json {
        let v = serde_json::json!({
            "url": args.url,
            "format": value_name(args.format),
            "compression": value_name(args.compression),
            "batch_size": args.batch_size,
            "connections": args.connections,
            "threads": args.threads,
            "rate": args.rate,
            "series": args.series,
            "duration_s": secs,
            "requests": s.requests,
            "rows": s.rows,
            "acked_rows_total": s.acked_rows,
            "errors": s.errors,
            "first_error": s.first_error,
            "rows_per_sec": rows_per_sec,
            "requests_per_sec": s.requests as f64 / secs,
            "mb_per_sec": s.bytes as f64 / secs / 1e6,
            "latency_ms": {
                "mean": s.latency_us.mean() / 1000.0,
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                "max": s.latency_us.max() as f64 / 1000.0,
            },
        });
        println!("{v}");
    } else {
        println!(
            "url {}  format {}  batch {}  connections {}  threads {}  rate {}  {:.1}s",
            args.url,
            value_name(args.format),
            args.batch_size,
            args.connections,
            args.threads,
            if args.rate > 0.0 {
                format!("{}", args.rate)
            } else {
                "max".into()
            },
            secs
        );
        println!(
            "{:>10} {:>12} {:>12} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "requests",
            "rows",
            "rows/s",
            "MB/s",
            "errors",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        println!(
            "{:>10} {:>12} {:>12.0} {:>9.1} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            s.requests,
            s.rows,
            rows_per_sec,
            s.bytes as f64 / secs / 1e6,
            s.errors,
            q(0.5),
            q(0.99),
            q(0.999),
            s.latency_us.max() as f64 / 1000.0
        );
        println!(
            "rows accepted by the server, warm-up included: {}",
            s.acked_rows
        );
        if let Some(e) = &s.first_error {
            println!("first error: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;
    use tidemark_ingest::Precision;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["tidemark-loadgen", "--pool", "3", "--batch-size", "250"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    /// (path, headers, body) of a pre-built request.
    fn split(req: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(n) = r.parse(req).unwrap() else {
            panic!("incomplete head");
        };
        assert_eq!(r.method, Some("POST"));
        let hs: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (r.path.unwrap().to_string(), hs, req[n..].to_vec())
    }

    fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
        hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn decompress(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
        match encoding {
            None => body.to_vec(),
            Some("gzip") => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(body)
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Some("zstd") => zstd::decode_all(body).unwrap(),
            Some(other) => panic!("unexpected encoding {other}"),
        }
    }

    #[test]
    fn every_format_and_compression_round_trips_through_the_decoders() {
        for format in ["lp", "msgpack-columnar", "msgpack-row"] {
            for compression in ["none", "gzip", "zstd"] {
                for schema in ["cpu", "devops"] {
                    let a = args(&[
                        "--format",
                        format,
                        "--compression",
                        compression,
                        "--schema",
                        schema,
                    ]);
                    let target = parse_url(&a).unwrap();
                    let reqs = build_requests(&a, &target).unwrap();
                    assert_eq!(reqs.len(), 3);
                    for req in &reqs {
                        let (_, hs, body) = split(req);
                        let len: usize = header(&hs, "content-length").unwrap().parse().unwrap();
                        assert_eq!(len, body.len(), "{format}/{compression}");
                        let enc = header(&hs, "content-encoding");
                        assert_eq!(enc, (compression != "none").then_some(compression));
                        let plain = decompress(enc, &body);
                        if enc.is_some() {
                            assert!(body.len() < plain.len(), "{compression} shrinks the body");
                        }
                        let decoded = if format == "lp" {
                            tidemark_ingest::line_protocol::parse(
                                &plain,
                                "bench",
                                Precision::Nanoseconds,
                                0,
                            )
                        } else {
                            tidemark_ingest::msgpack::parse(&plain, "bench", 0)
                        }
                        .unwrap_or_else(|e| panic!("{format}/{compression}: {e:?}"));
                        assert_eq!(decoded.num_rows(), 250, "{format}/{compression}/{schema}");
                        let tables = if schema == "cpu" { 1 } else { 4 };
                        assert_eq!(decoded.batches.len(), tables);
                    }
                }
            }
        }
    }

    #[test]
    fn default_paths_and_headers_per_format() {
        let a = args(&["--format", "lp", "--database", "db1", "--token", "s3cret"]);
        let t = parse_url(&a).unwrap();
        assert_eq!(t.path, "/write?db=db1");
        assert_eq!(t.host, "127.0.0.1:8000");
        let (path, hs, _) = split(&build_requests(&a, &t).unwrap()[0]);
        assert_eq!(path, "/write?db=db1");
        assert_eq!(header(&hs, "authorization"), Some("Bearer s3cret"));
        assert_eq!(header(&hs, "x-arc-database"), None);

        let a = args(&["--format", "msgpack-row", "--database", "db2"]);
        let t = parse_url(&a).unwrap();
        let (path, hs, _) = split(&build_requests(&a, &t).unwrap()[0]);
        assert_eq!(path, "/api/v1/write/msgpack");
        assert_eq!(header(&hs, "x-arc-database"), Some("db2"));
        assert_eq!(header(&hs, "content-type"), Some("application/msgpack"));

        // An explicit path is used as given.
        let a = args(&["--url", "http://127.0.0.1:8428/influx/write?db=x"]);
        let t = parse_url(&a).unwrap();
        assert_eq!(t.path, "/influx/write?db=x");
        assert!(parse_url(&args(&["--url", "https://x"])).is_err());
    }

    #[test]
    fn default_start_time_is_recent() {
        // Servers with a retention window (VictoriaMetrics: 1 month) drop
        // older samples silently, so the default must be recent.
        let a = args(&["--format", "lp"]);
        let t = parse_url(&a).unwrap();
        let (_, _, body) = split(&build_requests(&a, &t).unwrap()[0]);
        let first = String::from_utf8(body).unwrap();
        let ts: i64 = first
            .lines()
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!(now - ts > 0 && now - ts < 2 * 3_600_000_000_000, "{ts}");
    }
}
