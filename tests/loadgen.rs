//! The real `tidemark-loadgen` binary against the real `tidemark` binary:
//! every format, the row counts the load generator reports checked against
//! what the node then answers to `SELECT count(*)`, before and after a flush.
//!
//! The load generator is found in `$TIDEMARK_LOADGEN`, else next to the
//! `tidemark` binary under test (`cargo test --workspace` builds both into
//! the same target directory; alone, build it first with
//! `cargo build -p tidemark-loadgen`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn loadgen_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDEMARK_LOADGEN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_BIN_EXE_tidemark")).with_file_name("tidemark-loadgen");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p tidemark-loadgen` (same profile and \
         target directory) or set TIDEMARK_LOADGEN",
        p.display()
    );
    p
}

/// Runs the load generator with `--json` against `node`; its report.
fn loadgen(node: &Node, args: &[&str]) -> serde_json::Value {
    let out = Command::new(loadgen_bin())
        .arg("--url")
        .arg(format!("http://127.0.0.1:{}", node.port))
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

fn count(node: &Node, db: &str, measurement: &str) -> u64 {
    let q = serde_json::json!({ "sql": format!("SELECT count(*) FROM {measurement}") });
    let r = node.req(
        "POST",
        "/api/v1/query",
        &[("x-arc-database", db)],
        q.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"][0][0].as_u64().unwrap()
}

#[test]
fn loadgen_row_counts_match_what_the_node_stores() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let cases = [
        ("lp", "none", "cpu"),
        ("lp", "gzip", "devops"),
        ("msgpack-columnar", "zstd", "cpu"),
        ("msgpack-columnar", "none", "devops"),
        ("msgpack-row", "gzip", "cpu"),
    ];
    let mut expected = Vec::new();
    for (i, (format, compression, schema)) in cases.iter().enumerate() {
        let db = format!("lg{i}");
        let v = loadgen(
            &node,
            &[
                "--format",
                format,
                "--compression",
                compression,
                "--schema",
                schema,
                "--database",
                &db,
                "--series",
                "50",
                "--batch-size",
                "700",
                "--rows",
                "14000",
                "--connections",
                "4",
                "--threads",
                "2",
                "--warmup",
                "0",
                "--pool",
                "20",
            ],
        );
        assert_eq!(v["errors"], 0, "{v}");
        assert_eq!(v["rows"], 14_000, "{v}");
        assert_eq!(v["acked_rows_total"], 14_000, "{v}");
        let measurements: &[&str] = if *schema == "cpu" {
            &["cpu"]
        } else {
            &["cpu", "mem", "disk", "net"]
        };
        // Devops rows go round-robin over the four measurements, host by host.
        for m in measurements {
            let want = 14_000 / measurements.len() as u64;
            assert_eq!(
                count(&node, &db, m),
                want,
                "{db}.{m} ({format}/{compression})"
            );
            expected.push((db.clone(), m.to_string(), want));
        }
    }

    // A timed run with a warm-up: the node holds warm-up and measured rows.
    let v = loadgen(
        &node,
        &[
            "--format",
            "msgpack-columnar",
            "--database",
            "timed",
            "--batch-size",
            "2000",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--connections",
            "4",
        ],
    );
    let acked = v["acked_rows_total"].as_u64().unwrap();
    assert!(acked > v["rows"].as_u64().unwrap(), "{v}");
    // The 64 bodies of 2,000 rows go out in order: past them, rows repeat
    // as the same points, which are stored once.
    let distinct = acked.min(64 * 2000);
    assert_eq!(count(&node, "timed", "cpu"), distinct);
    expected.push(("timed".into(), "cpu".into(), distinct));

    // Flushed to Parquet, the counts do not change.
    node.flush();
    for (db, m, want) in &expected {
        assert_eq!(count(&node, db, m), *want, "{db}.{m} after flush");
    }
}

#[test]
fn fixed_rate_run_against_the_node_never_exceeds_its_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    // 10,000 rows/s in requests of 500 over 2 connections for 2 s: 40
    // requests scheduled. How many are answered in time depends on the
    // build (a debug node is slow) and the machine, so only the upper bound
    // is exact here; the schedule itself is tested against a fast server in
    // perf/loadgen/tests/against_server.rs.
    let v = loadgen(
        &node,
        &[
            "--rate",
            "10000",
            "--batch-size",
            "500",
            "--connections",
            "2",
            "--duration",
            "2",
            "--warmup",
            "0",
            "--database",
            "rate",
        ],
    );
    let n = v["requests"].as_u64().unwrap();
    assert!((1..=40).contains(&n), "{n} requests: {v}");
    assert_eq!(v["errors"], 0);
    assert_eq!(v["rate"], 10_000.0);
    assert_eq!(
        count(&node, "rate", "cpu"),
        v["acked_rows_total"].as_u64().unwrap()
    );
}
