//! The real `tidemark-loadgen` binary against a small real HTTP server in
//! this test: one thread per connection, keep-alive, each body decompressed
//! (gzip, zstd) and decoded with tidemark's own decoders (`tidemark-ingest`),
//! its rows counted, `204` returned. No DataFusion build needed; the test
//! against the real `tidemark` node is `tests/loadgen.rs` at the workspace
//! root.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidemark_ingest::Precision;

/// How the test server answers.
#[derive(Clone, Copy)]
enum Mode {
    /// Decode every body with tidemark's decoders, count its rows, 204.
    Accept,
    /// 204 at once without decoding (fast even in a debug build, for the
    /// timing tests).
    Fast,
    /// 400 to every request.
    Reject,
    /// Like `Fast`, but the request numbered `at` (from 0) waits `ms` first.
    StallOnce { at: u64, ms: u64 },
}

struct Server {
    port: u16,
    rows: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

fn start(mode: Mode) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let rows = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let (r, q) = (rows.clone(), requests.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let (r, q) = (r.clone(), q.clone());
            std::thread::spawn(move || serve(s, mode, &r, &q));
        }
    });
    Server {
        port,
        rows,
        requests,
    }
}

fn serve(mut s: TcpStream, mode: Mode, rows: &AtomicU64, requests: &AtomicU64) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        // Read a head.
        let (head_len, path, len, encoding) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(n) = req.parse(&buf).unwrap() {
                let get = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let len: usize = get("content-length").unwrap().parse().unwrap();
                break (
                    n,
                    req.path.unwrap().to_string(),
                    len,
                    get("content-encoding"),
                );
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head_len + len).skip(head_len).collect();
        let k = requests.fetch_add(1, Ordering::SeqCst);
        let reply: &[u8] = match mode {
            Mode::Reject => {
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 15\r\n\r\n{\"error\":\"no\"}\n"
            }
            Mode::Fast => b"HTTP/1.1 204 No Content\r\n\r\n",
            Mode::StallOnce { at, ms } => {
                if k == at {
                    std::thread::sleep(Duration::from_millis(ms));
                }
                b"HTTP/1.1 204 No Content\r\n\r\n"
            }
            Mode::Accept => {
                let plain = match encoding.as_deref() {
                    None => body,
                    Some("gzip") => {
                        let mut out = Vec::new();
                        flate2::read::GzDecoder::new(&body[..])
                            .read_to_end(&mut out)
                            .unwrap();
                        out
                    }
                    Some("zstd") => zstd::decode_all(&body[..]).unwrap(),
                    Some(e) => panic!("unexpected encoding {e}"),
                };
                let decoded = if path.starts_with("/write") {
                    tidemark_ingest::line_protocol::parse(
                        &plain,
                        "bench",
                        Precision::Nanoseconds,
                        0,
                    )
                } else {
                    assert_eq!(path, "/api/v1/write/msgpack");
                    tidemark_ingest::msgpack::parse(&plain, "bench", 0)
                }
                .unwrap();
                rows.fetch_add(decoded.num_rows() as u64, Ordering::SeqCst);
                b"HTTP/1.1 204 No Content\r\n\r\n"
            }
        };
        if s.write_all(reply).is_err() {
            return;
        }
    }
}

/// Runs the loadgen with `--json` against `port`; (exit success, report).
fn loadgen(port: u16, args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark-loadgen"))
        .arg("--url")
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

#[test]
fn every_format_and_compression_delivers_exactly_the_rows_it_reports() {
    for format in ["lp", "msgpack-columnar", "msgpack-row"] {
        for compression in ["none", "gzip", "zstd"] {
            let srv = start(Mode::Accept);
            let (ok, v) = loadgen(
                srv.port,
                &[
                    "--format",
                    format,
                    "--compression",
                    compression,
                    "--schema",
                    "devops",
                    "--batch-size",
                    "400",
                    "--rows",
                    "10000",
                    "--connections",
                    "3",
                    "--threads",
                    "2",
                    "--warmup",
                    "0",
                    "--pool",
                    "4",
                ],
            );
            assert!(ok, "{v}");
            // 10,000 rows in requests of 400: 25 requests.
            assert_eq!(v["requests"], 25, "{format}/{compression}: {v}");
            assert_eq!(v["rows"], 10_000);
            assert_eq!(v["acked_rows_total"], 10_000);
            assert_eq!(v["errors"], 0);
            assert_eq!(
                srv.rows.load(Ordering::SeqCst),
                10_000,
                "{format}/{compression}"
            );
            assert_eq!(srv.requests.load(Ordering::SeqCst), 25);
        }
    }
}

#[test]
fn rows_is_rounded_up_to_whole_requests_and_warm_up_rows_are_reported_apart() {
    let srv = start(Mode::Accept);
    let (ok, v) = loadgen(
        srv.port,
        &[
            "--batch-size",
            "300",
            "--rows",
            "1000",
            "--connections",
            "2",
            "--warmup",
            "0.3",
        ],
    );
    assert!(ok, "{v}");
    assert_eq!(v["rows"], 1_200, "4 requests of 300: {v}");
    let acked = v["acked_rows_total"].as_u64().unwrap();
    assert!(acked > 1_200, "the warm-up sent rows too: {v}");
    assert_eq!(acked % 300, 0);
    assert_eq!(srv.rows.load(Ordering::SeqCst), acked);
}

#[test]
fn duration_run_reports_what_the_server_received() {
    let srv = start(Mode::Accept);
    let (ok, v) = loadgen(
        srv.port,
        &[
            "--format",
            "msgpack-columnar",
            "--batch-size",
            "1000",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--connections",
            "4",
        ],
    );
    assert!(ok, "{v}");
    assert_eq!(
        v["acked_rows_total"].as_u64().unwrap(),
        srv.rows.load(Ordering::SeqCst)
    );
    assert!(v["rows"].as_u64().unwrap() > 0);
    let secs = v["duration_s"].as_f64().unwrap();
    assert!((1.0..2.0).contains(&secs), "{v}");
    let rps = v["rows_per_sec"].as_f64().unwrap();
    let expect = v["rows"].as_f64().unwrap() / secs;
    assert!((rps - expect).abs() < 1.0);
    let lat = &v["latency_ms"];
    assert!(lat["p50"].as_f64().unwrap() <= lat["p99"].as_f64().unwrap());
    assert!(lat["p99"].as_f64().unwrap() <= lat["p999"].as_f64().unwrap());
}

#[test]
fn fixed_rate_sends_on_schedule() {
    let srv = start(Mode::Fast);
    // 20,000 rows/s in requests of 500 = 40 requests/s, over 2 connections,
    // for 1.5 s: 60 requests.
    let (ok, v) = loadgen(
        srv.port,
        &[
            "--rate",
            "20000",
            "--batch-size",
            "500",
            "--connections",
            "2",
            "--duration",
            "1.5",
            "--warmup",
            "0",
        ],
    );
    assert!(ok, "{v}");
    let n = v["requests"].as_u64().unwrap();
    assert!((58..=62).contains(&n), "{n} requests: {v}");
    let rps = v["rows_per_sec"].as_f64().unwrap();
    assert!((18_000.0..21_000.0).contains(&rps), "{rps}");
}

#[test]
fn a_server_stall_shows_in_fixed_rate_percentiles() {
    // One connection, 100 requests/s (every 10 ms) for 2 s; request 20
    // stalls 500 ms. Corrected, the ~50 requests due during the stall are
    // charged for it: p90 and above are hundreds of ms; p50 stays small.
    let srv = start(Mode::StallOnce { at: 20, ms: 500 });
    let (ok, v) = loadgen(
        srv.port,
        &[
            "--rate",
            "10000",
            "--batch-size",
            "100",
            "--connections",
            "1",
            "--duration",
            "2",
            "--warmup",
            "0",
        ],
    );
    assert!(ok, "{v}");
    let lat = &v["latency_ms"];
    let (p50, p90, max) = (
        lat["p50"].as_f64().unwrap(),
        lat["p90"].as_f64().unwrap(),
        lat["max"].as_f64().unwrap(),
    );
    assert!(p50 < 50.0, "p50 {p50}: {v}");
    assert!(p90 > 100.0, "p90 {p90} must carry the stall: {v}");
    assert!((480.0..1_500.0).contains(&max), "max {max}: {v}");
    // The schedule catches up: about 200 requests in 2 s, not 150.
    let n = v["requests"].as_u64().unwrap();
    assert!(n >= 190, "{n}");
}

#[test]
fn rejected_writes_are_errors_and_fail_the_run() {
    let srv = start(Mode::Reject);
    let (ok, v) = loadgen(
        srv.port,
        &["--rows", "2000", "--batch-size", "500", "--warmup", "0"],
    );
    assert!(!ok, "a run where nothing succeeded must fail: {v}");
    assert_eq!(v["requests"], 0);
    assert!(v["errors"].as_u64().unwrap() >= 1);
    assert!(
        v["first_error"].as_str().unwrap().contains("HTTP 400"),
        "{v}"
    );
    assert_eq!(v["acked_rows_total"], 0);
}

#[test]
fn nothing_listening_is_a_connect_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, v) = loadgen(port, &["--duration", "0.3", "--warmup", "0"]);
    assert!(!ok);
    assert!(
        v["first_error"].as_str().unwrap().starts_with("connect:"),
        "{v}"
    );
}
