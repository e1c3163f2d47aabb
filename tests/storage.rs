//! Storage over time against the real binary: repeated points read as one
//! (InfluxDB's rule) before and after compaction, compaction of many small
//! flushes into one file with answers unchanged (and equal to DuckDB's over
//! the compacted files), retention by whole hour partitions through the
//! API, and `GET /api/v1/measurements` file counts.
#![allow(clippy::unwrap_used)]

mod common;

use common::oracle::{check_against_duckdb, dataset, queries, tidemark_rows, SEC, T0};
use common::*;

fn sql(node: &Node, db: &str, q: &str) -> serde_json::Value {
    let body = serde_json::to_vec(&serde_json::json!({ "sql": q })).unwrap();
    let r = node.req("POST", "/api/v1/query", &[("x-arc-database", db)], &body);
    assert_eq!(r.status, 200, "{q}: {}", r.text());
    r.json()
}

fn compact(node: &Node, body: &str) -> serde_json::Value {
    let r = node.req("POST", "/api/v1/compact", &[], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["errors"], serde_json::json!([]), "{v}");
    v
}

fn measurement<'a>(list: &'a serde_json::Value, db: &str, m: &str) -> &'a serde_json::Value {
    list["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["database"] == db && x["measurement"] == m)
        .unwrap_or_else(|| panic!("{db}.{m} in {list}"))
}

fn metric(node: &Node, name: &str) -> f64 {
    let text = node.req("GET", "/metrics", &[], b"").text();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// One hour: 30 hosts every 30 s.
fn one_hour() -> Vec<String> {
    let hour = T0 - T0.rem_euclid(3600 * SEC);
    (0..120i64)
        .flat_map(|step| {
            (0..30).map(move |h| {
                format!(
                    "cpu,hostname=host_{h},region=r{} usage_user={},usage_idle={} {}",
                    h % 3,
                    (step * 7 + h) % 100,
                    100 - (step * 7 + h) % 100,
                    hour + step * 30 * SEC + h * SEC
                )
            })
        })
        .collect()
}

const SUMS: &str =
    "SELECT count(*), sum(usage_user), sum(usage_idle), count(DISTINCT hostname) FROM cpu";

#[test]
fn two_hundred_flushes_compact_to_one_file_with_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &["--shard-cores", "1", "--set", "compaction.enabled=false"],
    );
    let lines = one_hour();
    for chunk in lines.chunks(lines.len() / 200) {
        assert_eq!(node.write_lp("a", &chunk.join("\n")).status, 204);
        node.flush();
    }
    let before = sql(&node, "a", SUMS)["data"].clone();
    assert_eq!(before[0][0], 3600);
    let list = node
        .req("GET", "/api/v1/measurements?db=a", &[], b"")
        .json();
    let cpu = measurement(&list, "a", "cpu");
    assert_eq!(cpu["files"], 200, "{cpu}");
    assert_eq!(cpu["partitions"], 1);
    assert_eq!(cpu["file_rows"], 3600);

    let report = compact(&node, r#"{"database": "a"}"#);
    assert_eq!(report["jobs"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["files_before"], 200);
    assert_eq!(report["files_after"], 1);
    assert_eq!(report["rows_deduplicated"], 0);
    assert_eq!(sql(&node, "a", SUMS)["data"], before);
    let list = node
        .req("GET", "/api/v1/measurements?db=a", &[], b"")
        .json();
    let cpu = measurement(&list, "a", "cpu");
    assert_eq!(
        (cpu["files"].clone(), cpu["file_rows"].clone()),
        (1.into(), 3600.into())
    );
    // The old files are gone from the disk, the new one matches its record.
    let stored = stored_files(dir.path());
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        metric(&node, "tidemark_compaction_files_before_total"),
        200.0
    );
    assert_eq!(metric(&node, "tidemark_compaction_files_after_total"), 1.0);
    assert_eq!(metric(&node, "tidemark_storage_files"), 1.0);
    // Nothing left to do: a second run compacts nothing.
    assert_eq!(compact(&node, "")["jobs"], serde_json::json!([]));
    // After a restart too.
    drop(node);
    let node = Node::start(
        dir.path(),
        &["--shard-cores", "1", "--set", "compaction.enabled=false"],
    );
    assert_eq!(sql(&node, "a", SUMS)["data"], before);
}

#[test]
fn the_tsbs_answers_are_the_same_after_compaction_and_equal_duckdbs() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--set", "compaction.enabled=false"]);
    let data = dataset();
    for chunk in data.lines().collect::<Vec<_>>().chunks(700) {
        assert_eq!(node.write_lp("bench", &chunk.join("\n")).status, 204);
        node.flush();
    }
    let qs = queries();
    let before: Vec<_> = qs
        .iter()
        .map(|q| tidemark_rows(&node, "bench", q))
        .collect();
    let report = compact(&node, "");
    assert!(
        report["files_after"].as_u64().unwrap() < report["files_before"].as_u64().unwrap(),
        "{report}"
    );
    for (q, want) in qs.iter().zip(&before) {
        common::oracle::assert_same_rows(q, &tidemark_rows(&node, "bench", q), want);
    }
    // DuckDB over the compacted files (no point is in two of them).
    check_against_duckdb(&node, "bench");
}

/// A point is (measurement, tag set, time): written again with some of its
/// fields, the fields merge and the latest write of each field wins, in the
/// buffer, across flushed files, and after compaction.
#[test]
fn a_repeated_point_reads_back_as_one_with_the_latest_fields() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &["--shard-cores", "1", "--set", "compaction.enabled=false"],
    );
    let t = T0;
    let w = |body: &str| assert_eq!(node.write_lp("d", body).status, 204);
    let q = "SELECT host, a, b, c, s FROM m ORDER BY host, time";
    let expect = |want: serde_json::Value| {
        assert_eq!(sql(&node, "d", q)["data"], want);
        let n = sql(&node, "d", "SELECT count(*) FROM m");
        assert_eq!(n["data"][0][0], want.as_array().unwrap().len());
    };
    // Other points around it, which must not change.
    w(&format!(
        "m,host=x a=1,b=1 {t}\nm,host=y a=5,s=\"y\" {t}\nm,host=x a=9 {}",
        t + 1
    ));
    // The same point again within the buffer, with a new field and one rewritten.
    w(&format!("m,host=x b=2,c=3 {t}"));
    let buffered = serde_json::json!([
        ["x", 1, 2, 3, null],
        ["x", 9, null, null, null],
        ["y", 5, null, null, "y"]
    ]);
    expect(buffered.clone());
    node.flush();
    expect(buffered);
    // Across files: a partial rewrite after the flush, then another flush.
    w(&format!("m,host=x a=7,s=\"late\" {t}"));
    let merged = serde_json::json!([
        ["x", 7, 2, 3, "late"],
        ["x", 9, null, null, null],
        ["y", 5, null, null, "y"]
    ]);
    expect(merged.clone());
    node.flush();
    expect(merged.clone());
    // And in the buffer against the files, once more.
    w(&format!("m,host=x c=4 {t}"));
    let latest = serde_json::json!([
        ["x", 7, 2, 4, "late"],
        ["x", 9, null, null, null],
        ["y", 5, null, null, "y"]
    ]);
    expect(latest.clone());
    node.flush();
    let plan = sql(&node, "d", &format!("EXPLAIN {q}"))["data"].to_string();
    assert!(plan.contains("DedupExec"), "{plan}");
    let report = compact(&node, r#"{"database": "d", "measurement": "m"}"#);
    assert_eq!(report["files_before"], 3, "{report}");
    assert_eq!(report["files_after"], 1, "{report}");
    assert_eq!(report["rows_deduplicated"], 2, "{report}");
    expect(latest.clone());
    // One file, no point twice: the scan merges nothing.
    let plan = sql(&node, "d", &format!("EXPLAIN {q}"))["data"].to_string();
    assert!(!plan.contains("DedupExec"), "{plan}");
    assert_eq!(count_rows(&node.parquet_rows("d", "m")), 3);
    assert!(metric(&node, "tidemark_storage_rows_deduplicated_total") >= 3.0);
}

#[test]
fn retention_drops_whole_hours_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--set",
            "compaction.enabled=false",
            "--set",
            "retention.check_interval=1h",
        ],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let hour = 3600 * SEC;
    // Rows 5, 3 and 1 days old, and now; one file each.
    for (days, n) in [(5, 10), (3, 20), (1, 30), (0, 40)] {
        let t = now - days * 24 * hour;
        let body: Vec<String> = (0..n)
            .map(|i| format!("m,host=h{i} v={i} {}", t + i))
            .collect();
        assert_eq!(node.write_lp("r", &body.join("\n")).status, 204);
        assert_eq!(node.write_lp("keep", &body.join("\n")).status, 204);
        node.flush();
    }
    let count =
        |node: &Node, db: &str| sql(node, db, "SELECT count(*) FROM m")["data"][0][0].clone();
    assert_eq!(count(&node, "r"), 100);
    // No retention yet.
    let got = node
        .req("GET", "/api/v1/databases/r/retention", &[], b"")
        .json();
    assert_eq!(got["duration"], serde_json::Value::Null, "{got}");
    assert_eq!(got["source"], "none");
    // Bad input changes nothing.
    for bad in [r#"{"duration": "soon"}"#, r#"{"days": 3}"#, "not json"] {
        let r = node.put_retention("r", bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let r = node.put_retention("bad%20name", r#"{"duration":"2d"}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = node.put_retention("r", r#"{"duration": "2d"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["seconds"], 2 * 86_400);
    let got = node
        .req("GET", "/api/v1/databases/r/retention", &[], b"")
        .json();
    assert_eq!(
        (got["seconds"].clone(), got["source"].clone()),
        (172_800.into(), "database".into())
    );
    let report = compact(&node, "");
    assert_eq!(report["retention"]["partitions_dropped"], 2, "{report}");
    assert_eq!(count(&node, "r"), 70);
    assert_eq!(count(&node, "keep"), 100);
    assert_eq!(
        metric(&node, "tidemark_retention_partitions_dropped_total"),
        2.0
    );
    // Rows past the limit still in the buffer are dropped at their flush.
    let old = now - 4 * 24 * hour;
    assert_eq!(
        node.write_lp("r", &format!("m,host=old v=1 {old}")).status,
        204
    );
    assert_eq!(count(&node, "r"), 71);
    node.flush();
    assert_eq!(count(&node, "r"), 70);
    assert_eq!(metric(&node, "tidemark_retention_rows_expired_total"), 1.0);
    // The setting survives a restart; `null` goes back to the default.
    drop(node);
    let node = Node::start(
        dir.path(),
        &[
            "--set",
            "retention.default=4d",
            "--set",
            "compaction.enabled=false",
        ],
    );
    let got = node
        .req("GET", "/api/v1/databases/r/retention", &[], b"")
        .json();
    assert_eq!(got["seconds"], 172_800, "{got}");
    let r = node.put_retention("r", r#"{"duration": null}"#);
    assert_eq!(r.json()["source"], "default", "{}", r.text());
    compact(&node, "");
    assert_eq!(
        count(&node, "keep"),
        90,
        "the 5-day-old hour is past the 4d default"
    );
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    /// Points (host, second, a, b): a point's fields as written (at least one).
    Write(Vec<(u8, u8, Option<i64>, Option<i64>)>),
    Flush,
    Compact,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let point = (
        0u8..3,
        0u8..6,
        proptest::option::of(0i64..100),
        proptest::option::of(0i64..100),
    )
        .prop_filter("a point has a field", |p| p.2.is_some() || p.3.is_some());
    prop_oneof![
        4 => proptest::collection::vec(point, 1..8).prop_map(Op::Write),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
    ]
}

/// Any sequence of writes (repeating points, with partial field sets),
/// flushes and compactions answers like a model of InfluxDB's rule: per
/// (tags, time) one point, each field its latest written value.
#[test]
fn writes_flushes_and_compactions_answer_like_the_model() {
    use proptest::test_runner::{Config, TestRunner};
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    // One shard core: write order is WAL order. Two query threads: scans
    // (and the merge) run in two partitions.
    let node = Node::start(
        dir.path(),
        &[
            "--shard-cores",
            "1",
            "--set",
            "compaction.enabled=false",
            "--set",
            "query.threads=2",
        ],
    );
    let hour = T0 - T0.rem_euclid(3600 * SEC);
    let time = |s: u8| hour + i64::from(s % 2) * 3600 * SEC + i64::from(s) * SEC;
    let case = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..12), |ops| {
            case.set(case.get() + 1);
            let db = format!("p{}", case.get());
            let mut model: BTreeMap<(u8, i64), (Option<i64>, Option<i64>)> = BTreeMap::new();
            for op in &ops {
                match op {
                    Op::Write(points) => {
                        let body: Vec<String> = points
                            .iter()
                            .map(|(h, s, a, b)| {
                                let mut fields = Vec::new();
                                if let Some(a) = a {
                                    fields.push(format!("a={a}i"));
                                }
                                if let Some(b) = b {
                                    fields.push(format!("b={b}.5"));
                                }
                                format!("m,host=h{h} {} {}", fields.join(","), time(*s))
                            })
                            .collect();
                        let r = node.write_lp(&db, &body.join("\n"));
                        assert_eq!(r.status, 204, "{}", r.text());
                        for (h, s, a, b) in points {
                            let e = model.entry((*h, time(*s))).or_default();
                            e.0 = a.or(e.0);
                            e.1 = b.or(e.1);
                        }
                    }
                    Op::Flush => node.flush(),
                    Op::Compact => {
                        compact(&node, &format!(r#"{{"database": "{db}"}}"#));
                    }
                }
                if model.is_empty() {
                    continue; // no table yet
                }
                // Columns exist once written: select those that do.
                let has_a = model.values().any(|v| v.0.is_some());
                let has_b = model.values().any(|v| v.1.is_some());
                let q = format!(
                    "SELECT host, CAST(time AS BIGINT) AS t, {}, {} FROM m ORDER BY host, t",
                    if has_a { "a" } else { "NULL" },
                    if has_b { "b" } else { "NULL" }
                );
                let got = sql(&node, &db, &q)["data"].clone();
                let want: Vec<serde_json::Value> = model
                    .iter()
                    .map(|((h, t), (a, b))| {
                        serde_json::json!([format!("h{h}"), t, a, b.map(|b| b as f64 + 0.5)])
                    })
                    .collect();
                proptest::prop_assert_eq!(
                    &got,
                    &serde_json::Value::Array(want),
                    "after {:?} of {:?}",
                    op,
                    ops
                );
            }
            Ok(())
        })
        .unwrap();
}

/// Files that share a timestamp are merged by the scan until a merge finds
/// no point twice among them; from then on they are read as they are,
/// until a new file shares their times.
#[test]
fn files_found_free_of_repeats_are_read_without_merging() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &["--shard-cores", "1", "--set", "compaction.enabled=false"],
    );
    let t = T0;
    let merged = |node: &Node| -> String {
        let plan = sql(node, "e", "EXPLAIN SELECT host, v FROM m")["data"].to_string();
        let at = plan.find("files_merged=").unwrap();
        plan[at..].split(',').next().unwrap().to_string()
    };
    // Two flushes sharing the time t (other hosts).
    assert_eq!(node.write_lp("e", &format!("m,host=a v=1 {t}")).status, 204);
    node.flush();
    assert_eq!(node.write_lp("e", &format!("m,host=b v=2 {t}")).status, 204);
    node.flush();
    assert_eq!(merged(&node), "files_merged=2");
    assert_eq!(sql(&node, "e", "SELECT count(*) FROM m")["data"][0][0], 2);
    assert_eq!(merged(&node), "files_merged=0");
    // A third file repeating a point: merged again, and read as one.
    assert_eq!(node.write_lp("e", &format!("m,host=a v=3 {t}")).status, 204);
    node.flush();
    assert_eq!(merged(&node), "files_merged=3");
    let q = "SELECT host, v FROM m ORDER BY host";
    for _ in 0..2 {
        assert_eq!(
            sql(&node, "e", q)["data"],
            serde_json::json!([["a", 3], ["b", 2]])
        );
        assert_eq!(
            merged(&node),
            "files_merged=3",
            "a repeat was found: not verified"
        );
    }
}
