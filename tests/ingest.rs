//! Ingest over real HTTP against the real binary: every format and encoding,
//! and every kind of bad input, each answered with the right status and
//! message and leaving the data unchanged. Rows are checked in the flushed
//! Parquet files.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn lp(first: i64, n: i64) -> String {
    (first..first + n)
        .map(|i| {
            format!(
                "m,host=h{} id={i}i,v={}.5 {}\n",
                i % 3,
                i,
                1_700_000_000_000_000_000 + i
            )
        })
        .collect()
}

#[test]
fn line_protocol_plain_gzip_zstd_chunked_on_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let body = lp(0, 10);
    assert_eq!(
        node.req("POST", "/write?db=a", &[], body.as_bytes()).status,
        204
    );
    let body = lp(10, 10);
    let r = node.req(
        "POST",
        "/api/v2/write?bucket=a&precision=ns",
        &[("Content-Encoding", "gzip")],
        &gzip(body.as_bytes()),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    // zstd recognised by magic bytes, no header.
    let body = lp(20, 10);
    let zs = zstd::encode_all(body.as_bytes(), 3).unwrap();
    assert_eq!(
        node.req(
            "POST",
            "/api/v1/write/line-protocol",
            &[("x-arc-database", "a")],
            &zs
        )
        .status,
        204
    );
    // Chunked transfer encoding.
    let body = lp(30, 10);
    let mut chunked = Vec::new();
    for part in body.as_bytes().chunks(37) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = node.req(
        "POST",
        "/write?db=a",
        &[("Transfer-Encoding", "chunked")],
        &chunked,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    // x-arc-database wins over ?db=.
    assert_eq!(
        node.req(
            "POST",
            "/write?db=b",
            &[("x-arc-database", "a")],
            lp(40, 10).as_bytes()
        )
        .status,
        204
    );
    node.flush();
    let rows = node.parquet_rows("a", "m");
    assert_eq!(ids(&rows), (0..50).collect::<Vec<_>>());
    assert!(node.parquet_rows("b", "m").is_empty());
}

#[test]
fn precision_and_default_database() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    assert_eq!(
        node.req("POST", "/write?precision=s", &[], b"m id=1i 1700000000\n")
            .status,
        204
    );
    assert_eq!(
        node.req(
            "POST",
            "/write?precision=ms",
            &[],
            b"m id=2i 1700000000001\n"
        )
        .status,
        204
    );
    let r = node.req("POST", "/write?precision=minutes", &[], b"m id=3i 1\n");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        "invalid precision \"minutes\" (expected ns, us, ms or s)"
    );
    node.flush();
    let rows = node.parquet_rows("default", "m");
    let mut t = times(&rows);
    t.sort();
    assert_eq!(t, [1_700_000_000_000_000_000, 1_700_000_000_001_000_000]);
}

fn mp_row(id: i64) -> Vec<u8> {
    use rmp::encode::*;
    let mut out = Vec::new();
    write_map_len(&mut out, 4).unwrap();
    write_str(&mut out, "m").unwrap();
    write_str(&mut out, "m").unwrap();
    write_str(&mut out, "t").unwrap();
    write_sint(&mut out, 1_700_000_000_000 + id).unwrap();
    write_str(&mut out, "h").unwrap();
    write_str(&mut out, &format!("h{}", id % 3)).unwrap();
    write_str(&mut out, "fields").unwrap();
    write_map_len(&mut out, 2).unwrap();
    write_str(&mut out, "id").unwrap();
    write_sint(&mut out, id).unwrap();
    write_str(&mut out, "v").unwrap();
    write_f64(&mut out, id as f64 + 0.5).unwrap();
    out
}

#[test]
fn msgpack_columnar_row_batch_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let h = [
        ("x-arc-database", "a"),
        ("Content-Type", "application/msgpack"),
    ];
    let r = node.req("POST", "/api/v1/write/msgpack", &h, &mp_columnar(0, 100));
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        node.req(
            "POST",
            "/api/v1/write/msgpack",
            &h,
            &gzip(&mp_columnar(100, 50))
        )
        .status,
        204
    );
    // {"batch": [row, row]}
    let mut batch = Vec::new();
    rmp::encode::write_map_len(&mut batch, 1).unwrap();
    rmp::encode::write_str(&mut batch, "batch").unwrap();
    rmp::encode::write_array_len(&mut batch, 2).unwrap();
    batch.extend(mp_row(150));
    batch.extend(mp_row(151));
    let r = node.req("POST", "/api/v1/write/msgpack", &h, &batch);
    assert_eq!(r.status, 204, "{}", r.text());
    node.flush();
    let rows = node.parquet_rows("a", "m");
    assert_eq!(ids(&rows), (0..152).collect::<Vec<_>>());
    let mut t = times(&rows);
    t.sort();
    assert_eq!(t[0], 1_700_000_000_000_000_000, "milliseconds detected");
}

/// The rows of db `a` right now (after a flush).
fn row_ids(node: &Node) -> Vec<i64> {
    node.flush();
    ids(&node.parquet_rows("a", "m"))
}

#[test]
fn bad_input_is_refused_with_a_clear_message_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--set", "http.max_body_bytes=4096"]);
    assert_eq!(node.write_lp("a", &lp(0, 5)).status, 204);
    let before = row_ids(&node);
    // (path, headers, body, status, message)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/write?db=a",
            vec![],
            format!("{}m,host=x id=9i,v=oops\n", lp(100, 2)).into_bytes(),
            400,
            "line 3: \"v\": invalid value \"oops\"",
        ),
        (
            "/write?db=a",
            vec![],
            b"m id=7.5\n".to_vec(),
            400,
            "line 1: \"id\": is float here but the column is stored as integer",
        ),
        (
            "/write?db=a",
            vec![],
            b"m id=7i\nm id=7.5\n".to_vec(),
            400,
            "line 2: \"id\": is float here but integer in line 1",
        ),
        (
            "/write?db=a",
            vec![],
            b"m,host=x v=1,v=2\n".to_vec(),
            400,
            "line 1: \"v\": appears twice",
        ),
        (
            "/write?db=a",
            vec![],
            b"9bad v=1\n".to_vec(),
            400,
            "line 1: invalid measurement name \"9bad\": must start with a letter",
        ),
        (
            "/write?db=bad.db",
            vec![],
            lp(100, 1).into_bytes(),
            400,
            "invalid database name \"bad.db\": may hold only letters, digits, '_' and '-'",
        ),
        (
            "/api/v1/write/msgpack",
            vec![("x-arc-database", "a")],
            mp_columnar(100, 3)[..20].to_vec(),
            400,
            "truncated MessagePack data",
        ),
        (
            "/api/v1/write/msgpack",
            vec![("x-arc-database", "a")],
            b"\xc1garbage".to_vec(),
            400,
            "invalid MessagePack marker 0xc1",
        ),
        (
            "/write?db=a",
            vec![("Content-Encoding", "gzip")],
            b"not gzip at all".to_vec(),
            400,
            "request body is not valid gzip",
        ),
        (
            "/write?db=a",
            vec![],
            lp(100, 200).into_bytes(),
            413,
            "larger than the limit of 4096 bytes",
        ),
        (
            "/write?db=a",
            vec![("Content-Encoding", "gzip")],
            gzip(lp(100, 200).as_bytes()),
            413,
            "decompressed request body is larger than the limit of 4096 bytes",
        ),
        (
            "/write?db=a",
            vec![("Content-Encoding", "br")],
            lp(100, 1).into_bytes(),
            415,
            "unsupported Content-Encoding \"br\"",
        ),
    ];
    for (path, headers, body, status, message) in cases {
        let r = node.req("POST", path, &headers, &body);
        assert_eq!(r.status, status, "{path} {message}: {}", r.text());
        assert!(
            r.error().contains(message),
            "{path}: {:?} does not contain {message:?}",
            r.error()
        );
    }
    assert_eq!(node.req("GET", "/nope", &[], b"").status, 404);
    assert_eq!(node.req("GET", "/write", &[], b"").status, 405);
    assert_eq!(row_ids(&node), before, "nothing was written");
    // The server stays up.
    assert_eq!(node.req("GET", "/health", &[], b"").status, 200);
}

#[test]
fn oversized_body_is_refused_before_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--set", "http.max_body_bytes=4096"]);
    let mut s = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Announce 1 GB and send none of it: the 413 must come anyway.
    s.write_all(b"POST /write?db=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let r = &parse_responses(&raw)[0];
    assert_eq!(r.status, 413);
}

#[test]
fn auth_tokens_in_every_form() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with_env(
        dir.path(),
        &["--set", "auth.enabled=true"],
        &[("TIDEMARK_AUTH_TOKENS", "[\"t0ken\"]")],
    );
    for h in [
        ("Authorization", "Bearer t0ken"),
        ("Authorization", "Token t0ken"),
        ("x-api-key", "t0ken"),
    ] {
        let r = node.req("POST", "/write?db=a", &[h], lp(0, 1).as_bytes());
        assert_eq!(r.status, 204, "{h:?}");
    }
    let r = node.req(
        "POST",
        "/write?db=a",
        &[("x-api-key", "wrong")],
        lp(1, 1).as_bytes(),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid API token");
    let r = node.req("POST", "/write?db=a", &[], lp(1, 1).as_bytes());
    assert_eq!(r.status, 401);
    assert_eq!(node.req("POST", "/api/v1/flush", &[], b"").status, 401);
    // Operations endpoints stay open.
    for p in ["/health", "/ready", "/metrics"] {
        assert_eq!(node.req("GET", p, &[], b"").status, 200, "{p}");
    }
    let r = node.req("POST", "/api/v1/flush", &[("x-api-key", "t0ken")], b"");
    assert_eq!(r.status, 200);
    // The three accepted writes were of one point: one point (a shard's
    // file holds it once; two shards' files may each hold it).
    let mut stored = ids(&node.parquet_rows("a", "m"));
    stored.dedup();
    assert_eq!(stored, [0]);
    let r = node.req(
        "POST",
        "/api/v1/query",
        &[("x-api-key", "t0ken"), ("x-arc-database", "a")],
        br#"{"sql": "SELECT count(*) FROM m"}"#,
    );
    assert_eq!(r.json()["data"][0][0], 1, "{}", r.text());
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut s = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut all = Vec::new();
    for i in 0..20 {
        let body = lp(i, 1);
        all.extend_from_slice(
            format!(
                "POST /write?db=a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        if i % 5 == 4 {
            all.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        }
    }
    all.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    // All at once: pipelined.
    s.write_all(&all).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let statuses: Vec<u16> = parse_responses(&raw).iter().map(|r| r.status).collect();
    let mut want = Vec::new();
    for i in 0..20 {
        want.push(204);
        if i % 5 == 4 {
            want.push(404);
        }
    }
    want.push(200);
    assert_eq!(statuses, want);
    assert_eq!(row_ids(&node), (0..20).collect::<Vec<_>>());
}

#[test]
fn slow_clients_get_408_and_the_connection_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--set",
            "http.header_timeout_ms=300",
            "--set",
            "http.max_connections=4",
        ],
    );
    let mut s = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /write HTTP/1.1\r\nHost: x\r\n").unwrap(); // never finishes the head
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    assert_eq!(parse_responses(&raw)[0].status, 408);
    // 2 per core: hold 6 idle connections; some are refused (closed at once).
    let held: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(("127.0.0.1", node.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let closed = held
        .iter()
        .filter(|c| {
            let mut c = *c;
            c.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut b = [0u8; 1];
            matches!(c.read(&mut b), Ok(0))
        })
        .count();
    assert!(closed >= 2, "{closed} connections were closed by the limit");
    drop(held);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(node.req("GET", "/health", &[], b"").status, 200);
}

#[test]
fn metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    assert_eq!(node.write_lp("a", &lp(0, 10)).status, 204);
    assert_eq!(node.write_lp("a", "bad\n").status, 400);
    node.flush();
    let r = node.req("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    let text = r.text();
    for family in [
        "tidemark_ingest_rows_total",
        "tidemark_ingest_bytes_total",
        "tidemark_ingest_requests_total",
        "tidemark_ingest_errors_total",
        "tidemark_wal_appends_total",
        "tidemark_wal_fsyncs_total",
        "tidemark_wal_fsync_duration_seconds_bucket",
        "tidemark_buffer_rows",
        "tidemark_flushes_total",
        "tidemark_http_request_duration_seconds_bucket",
        "tidemark_core_busy_seconds_total",
        "tidemark_ready",
    ] {
        assert!(text.contains(family), "missing {family}");
    }
    let rows: u64 = text
        .lines()
        .filter(|l| l.starts_with("tidemark_ingest_rows_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(rows, 10);
    let promtool = which_promtool();
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which_promtool() -> String {
    for p in ["/usr/bin/promtool", "/usr/local/bin/promtool"] {
        if std::path::Path::new(p).exists() {
            return p.to_string();
        }
    }
    panic!("promtool not found: install Debian's `prometheus` package (.ci/run does)");
}

#[test]
fn a_client_still_sending_an_oversized_body_reads_the_413() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--set", "http.max_body_bytes=4096"]);
    let mut s = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = vec![b'x'; 2 << 20];
    s.write_all(
        format!(
            "POST /write?db=a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    // Keep sending the body the server will not read; ignore a broken pipe.
    let _ = s.write_all(&body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let r = &parse_responses(&raw)[0];
    assert_eq!(r.status, 413);
}

/// A node driven past its flush rate for a while (a buffer a few MiB
/// large, four clients writing as fast as they can): the gradual
/// backpressure slows the writes (the metric says so) and never refuses
/// one; every acknowledged row is there afterwards, once, in the buffer and
/// then in the files. Behaviour only: how long writes waited is not
/// checked.
#[test]
fn writes_past_the_flush_rate_are_slowed_never_refused_or_lost() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--set",
            "buffer.flush_rows=20000",
            "--set",
            "buffer.flush_bytes=2097152",
            "--set",
            "buffer.max_bytes=8388608",
            "--set",
            "buffer.slow_bytes=3145728",
            "--set",
            "flush.nice=19",
            "--set",
            "flush.check_interval_ms=10",
        ],
    );
    const CLIENTS: i64 = 4;
    const BATCHES: i64 = 60;
    const ROWS: i64 = 2_000;
    let port = node.port;
    let statuses: Vec<Vec<u16>> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                s.spawn(move || {
                    (0..BATCHES)
                        .map(|b| {
                            let first = (c * BATCHES + b) * ROWS;
                            try_request(
                                port,
                                "POST",
                                "/write?db=a",
                                &[],
                                lp(first, ROWS).as_bytes(),
                            )
                            .map(|r| r.status)
                            .unwrap_or(0)
                        })
                        .collect()
                })
            })
            .collect();
        clients.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (c, s) in statuses.iter().enumerate() {
        assert!(s.iter().all(|&st| st == 204), "client {c}: {s:?}");
    }
    assert!(
        node.metric_sum("tidemark_ingest_slowed_writes_total") > 0.0,
        "the node was not driven past its flush rate: no write was slowed"
    );
    assert!(node.metric_sum("tidemark_flushes_total") >= 2.0);
    let total = CLIENTS * BATCHES * ROWS;
    let counted = node.req(
        "POST",
        "/api/v1/query",
        &[("content-type", "application/json")],
        br#"{"sql": "SELECT count(*) AS n, count(DISTINCT id) AS d, min(id) AS lo, max(id) AS hi FROM a.m"}"#,
    );
    assert_eq!(counted.status, 200, "{}", counted.text());
    let row = &counted.json()["data"][0];
    assert_eq!(
        *row,
        serde_json::json!([total, total, 0, total - 1]),
        "{}",
        counted.text()
    );
    let mut all = row_ids(&node);
    all.sort_unstable();
    assert_eq!(all, (0..total).collect::<Vec<_>>());
}
