//! The DuckDB oracle: TSBS-style queries run on tidemark and on DuckDB (the
//! PyPI `duckdb` package, through `tests/oracle.py`) over a node's Parquet
//! files must give the same answers.
#![allow(dead_code, clippy::unwrap_used)]

use super::Node;

pub const T0: i64 = 1_700_000_000_000_000_000;
pub const SEC: i64 = 1_000_000_000;

pub fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// 30 hosts, 3 regions, one row per host every 37 s for about 7 hours.
pub fn dataset() -> String {
    let mut s = String::new();
    let mut x: u64 = 12345;
    for step in 0..700i64 {
        for h in 0..30 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let user = (x % 10_000) as f64 / 100.0;
            let system = ((x >> 16) % 5_000) as f64 / 100.0;
            s += &format!(
                "cpu,hostname=host_{h},region=r{} usage_user={user},usage_system={system},usage_idle={} {}\n",
                h % 3,
                100.0 - user,
                T0 + step * 37 * SEC + h * SEC
            );
        }
    }
    s
}

/// A JSON value from tidemark with RFC 3339 times as nanoseconds, like the oracle's.
fn norm(v: &serde_json::Value) -> serde_json::Value {
    if let Some(s) = v.as_str() {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            return serde_json::json!(t.timestamp_nanos_opt().unwrap());
        }
    }
    v.clone()
}

fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

/// The TSBS-style queries over `cpu` of [`dataset`].
pub fn queries() -> Vec<String> {
    let (from, to) = (rfc3339(T0 + 3600 * SEC), rfc3339(T0 + 5 * 3600 * SEC));
    vec![
        // lastpoint
        "SELECT c.hostname, c.time, c.usage_user FROM cpu c JOIN (SELECT hostname, max(time) AS t FROM cpu GROUP BY hostname) l \
         ON c.hostname = l.hostname AND c.time = l.t ORDER BY c.hostname".to_string(),
        // single-groupby: one host, max per minute, over a window
        format!("SELECT date_trunc('minute', time) AS minute, max(usage_user) AS m FROM cpu \
                 WHERE hostname = 'host_7' AND time >= '{from}' AND time < '{to}' GROUP BY 1 ORDER BY 1"),
        // double-groupby: mean per hour per host
        format!("SELECT date_trunc('hour', time) AS hour, hostname, avg(usage_user) AS a FROM cpu \
                 WHERE time >= '{from}' AND time < '{to}' GROUP BY 1, 2 ORDER BY 1, 2"),
        // groupby-orderby-limit
        format!("SELECT date_trunc('minute', time) AS minute, max(usage_user) AS m FROM cpu \
                 WHERE time < '{to}' GROUP BY 1 ORDER BY 1 DESC LIMIT 5"),
        // high-cpu
        format!("SELECT time, hostname, usage_user FROM cpu WHERE usage_user > 99.5 \
                 AND time >= '{from}' AND time < '{to}' ORDER BY time, hostname"),
        // count per time bucket, and per region
        "SELECT date_trunc('hour', time) AS h, count(*) AS n FROM cpu GROUP BY 1 ORDER BY 1".to_string(),
        "SELECT region, count(*) AS n, sum(usage_system) AS s, min(usage_idle) AS lo FROM cpu GROUP BY region ORDER BY region".to_string(),
        "SELECT count(*) FROM cpu".to_string(),
    ]
}

/// Rows of `q`'s answer from tidemark, times as nanoseconds.
pub fn tidemark_rows(node: &Node, db: &str, q: &str) -> Vec<Vec<serde_json::Value>> {
    let body = serde_json::to_vec(&serde_json::json!({ "sql": q })).unwrap();
    let r = node.req("POST", "/api/v1/query", &[("x-arc-database", db)], &body);
    assert_eq!(r.status, 200, "{q}: {}", r.text());
    r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(norm).collect())
        .collect()
}

/// DuckDB's answers to `queries` over the node's Parquet files of `db.measurement`.
pub fn duckdb(
    node: &Node,
    db: &str,
    measurement: &str,
    queries: &[String],
) -> Vec<Vec<Vec<serde_json::Value>>> {
    let parquet = node.dir.join("data").join("parquet");
    let args = [parquet.as_os_str(), db.as_ref(), measurement.as_ref()];
    let answers = super::python_script(
        "oracle.py",
        &args,
        "the duckdb package",
        &serde_json::json!(queries),
    );
    serde_json::from_value(answers).unwrap()
}

/// Asserts that two answers are equal (floats to 1e-9 relative).
pub fn assert_same_rows(q: &str, got: &[Vec<serde_json::Value>], want: &[Vec<serde_json::Value>]) {
    assert_eq!(got.len(), want.len(), "{q}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            g.len() == w.len() && g.iter().zip(w).all(|(a, b)| same(a, b)),
            "{q}\n tidemark {g:?}\n expected {w:?}"
        );
    }
}

/// Runs [`queries`] on tidemark and DuckDB over `db.cpu`; asserts equal answers.
pub fn check_against_duckdb(node: &Node, db: &str) {
    let queries = queries();
    let expected = duckdb(node, db, "cpu", &queries);
    for (q, want) in queries.iter().zip(expected) {
        assert!(!want.is_empty(), "{q}: the oracle returned no rows");
        assert_same_rows(q, &tidemark_rows(node, db, q), &want);
    }
}
