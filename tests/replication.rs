//! WAL replication between real processes on 127.0.0.1: one writer, two
//! readers, continuous ingest, and during it kill -9 of a reader and of the
//! writer, and a proxy that cuts connections at random moments (mid-frame).
//! At the end every reader holds exactly the writer's rows: the same count,
//! checksum and distinct times per series, and every acknowledged row.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const T0: i64 = 1_700_000_000_000_000_000;
const SECRET: &str = "test-secret";

/// Two consecutive free ports (one per shard core).
fn port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < 65000 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

fn writer_args(repl_port: u16, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--set",
        "cluster.role=writer",
        "--set",
        &format!("cluster.secret={SECRET}"),
        "--set",
        &format!("replication.listen_addr=127.0.0.1:{repl_port}"),
        "--set",
        "replication.heartbeat_ms=200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn start_writer(dir: &std::path::Path, repl_port: u16, extra: &[&str]) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let args = writer_args(repl_port, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start(dir, &args)
}

/// A reader, configured through environment variables as an operator would.
fn start_reader(dir: &std::path::Path, writer_repl_port: u16, id: &str, secret: &str) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    Node::start_with_env(
        dir,
        &[
            "--set",
            "replication.heartbeat_ms=200",
            "--set",
            "replication.reconnect_ms=50",
        ],
        &[
            ("TIDEMARK_CLUSTER_ROLE", "reader"),
            ("TIDEMARK_CLUSTER_SECRET", secret),
            ("TIDEMARK_CLUSTER_NODE_ID", id),
            (
                "TIDEMARK_REPLICATION_WRITER_ADDR",
                &format!("127.0.0.1:{writer_repl_port}"),
            ),
        ],
    )
}

fn sql(node: &Node, q: &str) -> serde_json::Value {
    let body = serde_json::to_vec(&serde_json::json!({ "sql": q })).unwrap();
    let r = node.req(
        "POST",
        "/api/v1/query",
        &[
            ("Content-Type", "application/json"),
            ("x-arc-database", "rep"),
        ],
        &body,
    );
    assert_eq!(r.status, 200, "{q}: {}", r.text());
    r.json()
}

fn count(node: &Node) -> i64 {
    let r = node.req(
        "POST",
        "/api/v1/query",
        &[
            ("Content-Type", "application/json"),
            ("x-arc-database", "rep"),
        ],
        br#"{"sql": "SELECT count(*) AS n FROM m"}"#,
    );
    if r.status != 200 {
        // The table does not exist yet.
        return 0;
    }
    r.json()["data"][0][0].as_i64().unwrap_or(0)
}

/// Per series: rows, distinct times, and the sum of the row ids.
fn per_series(node: &Node) -> Vec<serde_json::Value> {
    let v = sql(
        node,
        "SELECT host, count(*) AS n, count(DISTINCT time) AS t, sum(v) AS s FROM m GROUP BY host ORDER BY host",
    );
    v["data"].as_array().unwrap().clone()
}

fn lines(ids: std::ops::Range<u64>) -> String {
    ids.map(|i| format!("m,host=h{} v={i} {}\n", i % 8, T0 + i as i64))
        .collect()
}

fn write(port: u16, ids: std::ops::Range<u64>) -> Option<u16> {
    try_request(port, "POST", "/write?db=rep", &[], lines(ids).as_bytes())
        .ok()
        .map(|r| r.status)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP proxy for both shard ports that cuts live connections at random.
struct CuttingProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    pub cuts: Arc<AtomicU64>,
}

impl CuttingProxy {
    fn start(target: u16, shards: u16, cut_every: Duration) -> CuttingProxy {
        let port = port_pair();
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU64::new(0));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        for s in 0..shards {
            let l = TcpListener::bind(("127.0.0.1", port + s)).unwrap();
            l.set_nonblocking(true).unwrap();
            let (stop, live) = (stop.clone(), live.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((down, _)) = l.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    down.set_nonblocking(false).unwrap();
                    let Ok(up) = TcpStream::connect(("127.0.0.1", target + s)) else {
                        continue;
                    };
                    live.lock().unwrap().push(down.try_clone().unwrap());
                    live.lock().unwrap().push(up.try_clone().unwrap());
                    for (mut from, mut to) in [
                        (down.try_clone().unwrap(), up.try_clone().unwrap()),
                        (up, down),
                    ] {
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 16 << 10];
                            loop {
                                match from.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    // Forward in small pieces, so cuts land mid-frame.
                                    Ok(n) => {
                                        if buf[..n].chunks(997).any(|c| to.write_all(c).is_err()) {
                                            break;
                                        }
                                    }
                                }
                            }
                            let _ = to.shutdown(Shutdown::Both);
                            let _ = from.shutdown(Shutdown::Both);
                        });
                    }
                }
            });
        }
        {
            let (stop, cuts) = (stop.clone(), cuts.clone());
            std::thread::spawn(move || {
                let mut rng = 0x9e3779b97f4a7c15u64;
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let jitter = Duration::from_millis(rng % (cut_every.as_millis() as u64 + 1));
                    std::thread::sleep(cut_every / 2 + jitter);
                    let mut l = live.lock().unwrap();
                    if !l.is_empty() {
                        for s in l.drain(..) {
                            let _ = s.shutdown(Shutdown::Both);
                        }
                        cuts.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        CuttingProxy { port, stop, cuts }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn readers_hold_exactly_the_writers_rows_through_kills_and_cut_connections() {
    let dir = tempfile::tempdir().unwrap();
    let repl = port_pair();
    // Small segments and flushes: rotations, flushes and segment removal
    // (held for the readers) happen during the run; a small ring and
    // retention cap make a reader that is down for long bootstrap.
    let mut writer = start_writer(
        &dir.path().join("w"),
        repl,
        &[
            "--set",
            "wal.segment_bytes=65536",
            "--set",
            "buffer.flush_rows=3000",
            "--set",
            "flush.check_interval_ms=20",
            "--set",
            "replication.ring_bytes=65536",
            "--set",
            "replication.max_retained_bytes=131072",
        ],
    );
    let proxy = CuttingProxy::start(repl, 2, Duration::from_millis(300));
    let mut a = start_reader(&dir.path().join("a"), repl, "reader-a", SECRET);
    let b = start_reader(&dir.path().join("b"), proxy.port, "reader-b", SECRET);

    // Continuous ingest: 50-row batches with unique ids; record the acked ones.
    let stop = Arc::new(AtomicBool::new(false));
    let port = writer.port;
    let ingest = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut acked: Vec<u64> = Vec::new();
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ids = next..next + 50;
                next += 50;
                match write(port, ids.clone()) {
                    Some(204) => acked.extend(ids),
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    a.kill9();
    std::thread::sleep(Duration::from_millis(700));
    a.restart();
    std::thread::sleep(Duration::from_millis(1000));
    writer.restart();
    std::thread::sleep(Duration::from_millis(1000));
    // Reader a away long enough that its entries leave the writer's WAL:
    // the writer removes segments a still needs (retention cap reached).
    // How many rows that takes depends on the entries' size, so the wait
    // is for the removal itself.
    a.kill9();
    let before = count(&writer);
    let removals = "tidemark_replication_forced_segment_removals_total";
    let removed_before = writer.metric_sum(removals);
    wait_until(
        "the writer to drop entries reader a needs",
        Duration::from_secs(60),
        || count(&writer) > before + 8000 && writer.metric_sum(removals) > removed_before,
    );
    writer.flush();
    a.restart();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let acked = ingest.join().unwrap();
    assert!(
        acked.len() > 2000,
        "only {} rows were acknowledged",
        acked.len()
    );

    let total = count(&writer);
    wait_until("the readers to catch up", Duration::from_secs(60), || {
        count(&a) == total && count(&b) == total
    });
    let expected = per_series(&writer);
    assert_eq!(per_series(&a), expected);
    assert_eq!(per_series(&b), expected);
    // Exactly once: rows = distinct times per series.
    for s in &expected {
        assert_eq!(s["n"], s["t"], "{s}");
    }
    // Every acknowledged row is on the writer (and so on the readers).
    let v = sql(&writer, "SELECT v FROM m");
    let have: BTreeSet<u64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_f64().unwrap() as u64)
        .collect();
    assert_eq!(have.len() as i64, total);
    let missing: Vec<_> = acked.iter().filter(|i| !have.contains(i)).take(5).collect();
    assert!(missing.is_empty(), "acknowledged rows missing: {missing:?}");

    eprintln!(
        "acked {} rows, writer holds {total}, proxy cuts {}, reader b resyncs {}, writer resyncs {}, bootstraps a {} b {}",
        acked.len(),
        proxy.cuts.load(Ordering::Relaxed),
        b.metric_sum("tidemark_replication_reader_resyncs_total"),
        writer.metric_sum("tidemark_replication_resyncs_total"),
        a.metric_sum("tidemark_replication_reader_bootstraps_total"),
        b.metric_sum("tidemark_replication_reader_bootstraps_total"),
    );
    assert!(
        proxy.cuts.load(Ordering::Relaxed) > 0,
        "the proxy cut nothing"
    );
    assert!(a.metric_sum("tidemark_replication_reader_bootstraps_total") >= 1.0);
    assert!(b.metric_sum("tidemark_replication_reader_resyncs_total") >= 1.0);
    assert!(writer.metric_sum("tidemark_replication_sent_bytes_total") > 0.0);
    // Caught up: no lag left on the writer.
    wait_until("the lag metric to reach 0", Duration::from_secs(10), || {
        writer.metric_sum("tidemark_replication_lag_entries") == 0.0
    });
}

#[test]
fn with_min_acks_a_write_is_on_the_readers_before_its_204() {
    let dir = tempfile::tempdir().unwrap();
    let repl = port_pair();
    let writer = start_writer(
        &dir.path().join("w"),
        repl,
        &["--set", "replication.min_acks=2"],
    );
    let a = start_reader(&dir.path().join("a"), repl, "reader-a", SECRET);
    let b = start_reader(&dir.path().join("b"), repl, "reader-b", SECRET);
    // Two readers, a stream per shard each.
    wait_until("both readers to connect", Duration::from_secs(20), || {
        writer.metric_sum("tidemark_replication_connected") == 4.0
    });
    for i in 0..30u64 {
        assert_eq!(write(writer.port, i * 10..i * 10 + 10), Some(204));
        let n = (i as i64 + 1) * 10;
        assert_eq!(count(&a), n, "reader a after write {i}");
        assert_eq!(count(&b), n, "reader b after write {i}");
    }
}

#[test]
fn without_min_acks_readers_see_writes_within_moments() {
    let dir = tempfile::tempdir().unwrap();
    let repl = port_pair();
    let writer = start_writer(&dir.path().join("w"), repl, &[]);
    let a = start_reader(&dir.path().join("a"), repl, "reader-a", SECRET);
    for i in 0..20u64 {
        assert_eq!(write(writer.port, i * 10..i * 10 + 10), Some(204));
        let n = (i as i64 + 1) * 10;
        wait_until("the row on the reader", Duration::from_secs(10), || {
            count(&a) == n
        });
    }
    assert_eq!(
        a.metric_sum("tidemark_replication_applied_rows_total"),
        200.0
    );
}

#[test]
fn min_acks_times_out_with_504_and_the_write_still_reaches_readers_later() {
    let dir = tempfile::tempdir().unwrap();
    let repl = port_pair();
    let writer = start_writer(
        &dir.path().join("w"),
        repl,
        &[
            "--set",
            "replication.min_acks=1",
            "--set",
            "replication.ack_timeout_ms=300",
        ],
    );
    let r = writer.req("POST", "/write?db=rep", &[], lines(0..5).as_bytes());
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.error().contains("0 of the 1 readers"), "{}", r.error());
    let a = start_reader(&dir.path().join("a"), repl, "reader-a", SECRET);
    wait_until("the row on the reader", Duration::from_secs(10), || {
        count(&a) == 5
    });
    assert_eq!(write(writer.port, 5..10), Some(204));
    assert_eq!(count(&a), 10);
}

#[test]
fn a_reader_refuses_writes_and_a_wrong_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repl = port_pair();
    let writer = start_writer(&dir.path().join("w"), repl, &[]);
    assert_eq!(write(writer.port, 0..10), Some(204));
    let a = start_reader(&dir.path().join("a"), repl, "reader-a", SECRET);
    let r = a.req("POST", "/write?db=rep", &[], lines(10..20).as_bytes());
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.headers.get("retry-after").map(String::as_str), Some("1"));
    assert!(r.error().contains("replication reader"), "{}", r.error());
    wait_until("the row on the reader", Duration::from_secs(10), || {
        count(&a) == 10
    });

    let bad = start_reader(
        &dir.path().join("bad"),
        repl,
        "reader-bad",
        "not-the-secret",
    );
    wait_until("the writer to refuse", Duration::from_secs(10), || {
        writer.log().contains("AUTH_FAILED")
    });
    assert_eq!(count(&bad), 0);
    assert_eq!(bad.metric_sum("tidemark_replication_connected"), 0.0);
}

#[test]
fn a_reader_behind_the_retained_wal_bootstraps_from_the_writers_files() {
    let dir = tempfile::tempdir().unwrap();
    let repl = port_pair();
    // Tiny segments, frequent flushes, and a retention cap of one segment:
    // a reader that is away for a while finds its entries gone.
    let small = [
        "--set",
        "wal.segment_bytes=65536",
        "--set",
        "buffer.flush_rows=400",
        "--set",
        "flush.check_interval_ms=20",
    ];
    let mut w_args = small.to_vec();
    w_args.extend([
        "--set",
        "replication.max_retained_bytes=65536",
        "--set",
        "replication.ring_bytes=16384",
    ]);
    let writer = start_writer(&dir.path().join("w"), repl, &w_args);
    let mut a = start_reader(&dir.path().join("a"), repl, "reader-a", SECRET);
    let mut next = 0u64;
    let mut batch = |n: u64| {
        for _ in 0..n {
            assert_eq!(write(writer.port, next..next + 50), Some(204));
            next += 50;
        }
        next
    };
    let total = batch(40) as i64;
    wait_until("reader a to catch up", Duration::from_secs(30), || {
        count(&a) == total
    });
    a.kill9();
    let total = batch(200) as i64;
    writer.flush();
    a.restart();
    wait_until(
        "reader a to catch up after bootstrapping",
        Duration::from_secs(60),
        || count(&a) == total,
    );
    assert!(a.metric_sum("tidemark_replication_reader_bootstraps_total") >= 1.0);
    assert!(writer.metric_sum("tidemark_replication_bootstraps_total") >= 1.0);
    assert!(writer.metric_sum("tidemark_replication_forced_segment_removals_total") >= 1.0);
    assert_eq!(per_series(&a), per_series(&writer));
    // The reader's store holds the writer's files under bootstrap names.
    let bootstrapped = walk(&dir.path().join("a").join("data").join("parquet"))
        .into_iter()
        .filter(|p| p.contains("-b0"))
        .count();
    assert!(bootstrapped > 0);

    // Streaming goes on after the bootstrap, and a restart recovers the
    // reader's WAL that now starts after the writer's watermark.
    let total = batch(20) as i64;
    wait_until("reader a to stream again", Duration::from_secs(30), || {
        count(&a) == total
    });
    a.restart();
    wait_until("reader a after a restart", Duration::from_secs(30), || {
        count(&a) == total
    });
    assert_eq!(per_series(&a), per_series(&writer));
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
