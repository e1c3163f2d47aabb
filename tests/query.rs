//! SQL over HTTP against the real binary: read-your-writes across flushes,
//! Arc's JSON shape, Arrow IPC, database selection, read-only refusals,
//! pruning shown by EXPLAIN and counted by a metric, count(*) from metadata.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const DAY: i64 = 86_400_000_000_000;
const T0: i64 = 1_700_000_000_000_000_000;

fn sql(node: &Node, db: Option<&str>, q: &str) -> Resp {
    let body = serde_json::to_vec(&serde_json::json!({ "sql": q })).unwrap();
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(db) = db {
        headers.push(("x-arc-database", db));
    }
    node.req("POST", "/api/v1/query", &headers, &body)
}

fn ok_json(node: &Node, db: Option<&str>, q: &str) -> serde_json::Value {
    let r = sql(node, db, q);
    assert_eq!(r.status, 200, "{q}: {}", r.text());
    let v = r.json();
    assert_eq!(v["success"], true);
    v
}

fn lp(first: i64, n: i64, t: i64) -> String {
    (first..first + n)
        .map(|i| format!("m,host=h{} id={i}i,v={}.5 {}\n", i % 3, i, t + i))
        .collect()
}

#[test]
fn every_acknowledged_write_is_visible_at_once_and_never_twice_across_flushes() {
    let dir = tempfile::tempdir().unwrap();
    // Small flush thresholds: background flushes race with the queries.
    let node = Node::start(
        dir.path(),
        &[
            "--set",
            "buffer.flush_rows=150",
            "--set",
            "flush.check_interval_ms=1",
        ],
    );
    let mut written = 0i64;
    for round in 0..60 {
        let n = 1 + round % 37;
        assert_eq!(node.write_lp("a", &lp(written, n, T0)).status, 204);
        written += n;
        if round % 10 == 9 {
            node.flush();
        }
        let v = ok_json(
            &node,
            Some("a"),
            "SELECT count(*) AS n, count(DISTINCT id) AS d, max(id) AS mx FROM m",
        );
        assert_eq!(
            v["data"][0],
            serde_json::json!([written, written, written - 1]),
            "round {round}"
        );
    }
}

#[test]
fn arc_json_shape_databases_and_arrow_ipc() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    assert_eq!(
        node.write_lp(
            "a",
            "m,host=x v=1.5,n=2i,s=\"hi\",b=true 1700000000500000000\n"
        )
        .status,
        204
    );
    assert_eq!(
        node.write_lp("other", "m,host=y v=9 1700000000000000000\n")
            .status,
        204
    );
    let v = ok_json(&node, Some("a"), "SELECT time, host, v, n, s, b FROM m");
    assert_eq!(
        v["columns"],
        serde_json::json!(["time", "host", "v", "n", "s", "b"])
    );
    assert_eq!(
        v["data"],
        serde_json::json!([["2023-11-14T22:13:20.5Z", "x", 1.5, 2, "hi", true]])
    );
    assert_eq!(v["row_count"], 1);
    assert!(v["execution_time_ms"].is_u64());
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    // db.m from another default database.
    let v = ok_json(&node, Some("a"), "SELECT host FROM other.m");
    assert_eq!(v["data"], serde_json::json!([["y"]]));
    // Arrow IPC, zstd-compressed buffers.
    let body = serde_json::to_vec(&serde_json::json!({"sql": "SELECT host, v FROM m"})).unwrap();
    let r = node.req(
        "POST",
        "/api/v1/query/arrow",
        &[("x-arc-database", "a"), ("x-arrow-compression", "zstd")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.headers["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(r.body), None).unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    assert_eq!(count_rows(&batches), 1);
    // The measurements endpoint lists both databases.
    let m = node.req("GET", "/api/v1/measurements", &[], b"").json();
    let names: Vec<String> = m["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}.{}",
                t["database"].as_str().unwrap(),
                t["measurement"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names, ["a.m", "other.m"]);
}

#[test]
fn queries_are_read_only_and_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    assert_eq!(node.write_lp("a", &lp(0, 3, T0)).status, 204);
    for q in [
        "INSERT INTO m (id) VALUES (1)",
        "COPY m TO '/tmp/x.csv'",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "CREATE TABLE t AS SELECT 1",
        "DROP TABLE m",
        "SET datafusion.execution.batch_size = 1",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_parquet('/tmp/x.parquet')",
        "SELECT * FROM generate_series(1, 100000000000)",
        "SELEC nonsense",
        "SELECT nope FROM m",
        "SELECT * FROM missing_table",
    ] {
        let r = sql(&node, Some("a"), q);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        let v = r.json();
        assert_eq!(v["success"], false, "{q}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{q}");
    }
    let r = node.req("POST", "/api/v1/query", &[], b"{\"nope\": 1}");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "the request body needs a non-empty \"sql\" string"
    );
    // Still answers.
    assert_eq!(
        ok_json(&node, Some("a"), "SELECT count(*) FROM m")["data"][0][0],
        3
    );
}

#[test]
fn time_predicates_prune_files_before_they_are_opened() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    // Three days of data: three hour partitions, three files after a flush.
    for day in 0..3 {
        assert_eq!(
            node.write_lp("a", &lp(day * 100, 50, T0 + day * DAY))
                .status,
            204
        );
    }
    node.flush();
    let from = T0 + DAY;
    let q = format!(
        "SELECT count(*) FROM m WHERE time >= to_timestamp_nanos({from}) AND time < to_timestamp_nanos({})",
        from + DAY / 2
    );
    let explain = ok_json(&node, Some("a"), &format!("EXPLAIN {q}"));
    let plan = explain["data"].to_string();
    assert!(plan.contains("files_pruned=2, files_scanned=1"), "{plan}");
    let v = ok_json(&node, Some("a"), &q);
    assert_eq!(v["data"][0][0], 50);
    let metrics = node.req("GET", "/metrics", &[], b"").text();
    let pruned: u64 = metrics
        .lines()
        .find(|l| l.starts_with("tidemark_query_files_pruned_total "))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .unwrap();
    assert!(pruned >= 2, "{metrics}");
}

#[test]
fn count_star_is_answered_from_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    assert_eq!(node.write_lp("a", &lp(0, 100, T0)).status, 204);
    node.flush();
    assert_eq!(node.write_lp("a", &lp(100, 10, T0)).status, 204);
    let plan = ok_json(&node, Some("a"), "EXPLAIN SELECT count(*) FROM m")["data"].to_string();
    assert!(plan.contains("PlaceholderRowExec"), "{plan}");
    assert!(!plan.contains("DataSourceExec"), "{plan}");
    assert_eq!(
        ok_json(&node, Some("a"), "SELECT count(*) FROM m")["data"][0][0],
        110
    );
}

fn gauge(node: &Node, name: &str) -> i64 {
    let text = node.req("GET", "/metrics", &[], b"").text();
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// A query that runs for many seconds: a triple cross join.
const SLOW: &str = "SELECT count(*) FROM m a CROSS JOIN m b CROSS JOIN m c WHERE a.v + b.v > c.v";

#[test]
fn limits_timeout_max_rows_and_cancel_on_disconnect() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &["--set", "query.max_rows=5", "--set", "query.timeout_ms=500"],
    );
    assert_eq!(node.write_lp("a", &lp(0, 2000, T0)).status, 204);
    let r = sql(&node, Some("a"), "SELECT id FROM m");
    assert_eq!(r.status, 400);
    assert!(r.error().contains("more than 5 rows"), "{}", r.text());
    let r = sql(&node, Some("a"), SLOW);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.error().contains("timed out"));
    drop(node);

    // Cancel on disconnect. The abort lands at the query's next yield
    // point; scans of many files (here one per row) yield often.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--set", "query.timeout_ms=600000"]);
    for i in 0..400 {
        assert_eq!(node.write_lp("a", &lp(i, 1, T0)).status, 204);
        node.flush();
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    let body = serde_json::to_vec(&serde_json::json!({ "sql": SLOW })).unwrap();
    s.write_all(format!("POST /api/v1/query HTTP/1.1\r\nHost: x\r\nx-arc-database: a\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while gauge(&node, "tidemark_queries_running") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the query never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        gauge(&node, "tidemark_queries_running"),
        1,
        "still running while the client waits"
    );
    drop(s); // the client goes away
             // Run to completion, the query would take far longer than this.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while gauge(&node, "tidemark_queries_running") != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the query was not cancelled"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The children of the first `HashJoinExec` in an indented physical plan:
/// each child's subtree as one string, in order (build side first).
fn join_children(plan: &str) -> Vec<String> {
    let lines: Vec<&str> = plan.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("HashJoinExec"))
        .unwrap_or_else(|| panic!("no HashJoinExec in {plan}"));
    let depth = indent(lines[at]);
    let mut children: Vec<String> = Vec::new();
    for l in &lines[at + 1..] {
        if indent(l) <= depth {
            break;
        }
        if indent(l) == depth + 2 {
            children.push(String::new());
        }
        let child = children.last_mut().expect("first line below is a child");
        child.push_str(l);
        child.push('\n');
    }
    children
}

#[test]
fn lastpoint_join_builds_on_the_group_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    // 3 hosts, 600 rows 12 s apart (two hours from T0, which is 800 s into
    // an hour): three files after the flush, plus buffered rows after it.
    let rows = |first: i64, n: i64| -> String {
        (first..first + n)
            .map(|i| {
                format!(
                    "cpu,hostname=host_{} usage_user={i}.5 {}\n",
                    i % 3,
                    T0 + i * 12_000_000_000
                )
            })
            .collect()
    };
    assert_eq!(node.write_lp("a", &rows(0, 600)).status, 204);
    node.flush();
    assert_eq!(node.write_lp("a", &rows(600, 30)).status, 204);
    let q = "SELECT c.hostname, c.usage_user FROM cpu c JOIN \
             (SELECT hostname, max(time) AS t FROM cpu GROUP BY hostname) l \
             ON c.hostname = l.hostname AND c.time = l.t ORDER BY c.hostname";
    let explain = ok_json(&node, Some("a"), &format!("EXPLAIN {q}"));
    let plan = explain["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0] == "physical_plan")
        .unwrap_or_else(|| panic!("{explain}"))[1]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        plan.contains("files_scanned=3, files_merged=0, buffer_batches=1"),
        "{plan}"
    );
    let children = join_children(&plan);
    assert_eq!(children.len(), 2, "{plan}");
    // The build side is the GROUP BY (estimated at most a few rows from the
    // tag's distinct count), the probe side is the plain scan of `cpu`.
    assert!(children[0].contains("AggregateExec"), "{plan}");
    assert!(!children[1].contains("AggregateExec"), "{plan}");
    assert!(children[1].contains("TidemarkScanExec"), "{plan}");
    // Same results as before: each host's last row.
    let v = ok_json(&node, Some("a"), q);
    assert_eq!(
        v["data"],
        serde_json::json!([["host_0", 627.5], ["host_1", 628.5], ["host_2", 629.5]]),
        "{plan}"
    );
}
