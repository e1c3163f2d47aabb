//! Arrow Flight SQL (`flight.addr`) with real clients: ADBC's Flight SQL
//! driver and `influxdb3-python` (PyPI, through `tests/flight_client.py`)
//! must get the same answers as `POST /api/v1/query` for the TSBS-style
//! queries of the oracle, a prepared statement with time parameters, and
//! InfluxDB 3's ticket; DDL and DML are refused, InfluxQL too, tokens are
//! checked when auth is on, the row limit and the timeout hold, and a
//! client that cancels stops its query.
#![allow(clippy::unwrap_used)]

mod common;

use common::oracle::{assert_same_rows, dataset, queries, rfc3339, tidemark_rows, SEC, T0};
use common::*;

/// Runs `tests/flight_client.py` with `request` and returns its JSON.
fn client(request: serde_json::Value) -> serde_json::Value {
    python_client(
        "flight_client.py",
        "adbc-driver-flightsql, pyarrow, influxdb3-python",
        &request,
    )
}

fn rows_of(v: &serde_json::Value) -> Vec<Vec<serde_json::Value>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().clone())
        .collect()
}

fn start_with_data(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> (Node, u16) {
    let port = free_port();
    let addr = format!("flight.addr=127.0.0.1:{port}");
    let mut args = vec!["--set", addr.as_str()];
    args.extend_from_slice(extra);
    let node = Node::start_with_env(dir, &args, env);
    let headers: &[(&str, &str)] = if env.is_empty() {
        &[]
    } else {
        &[("Authorization", "Bearer t0ken")]
    };
    let data = dataset();
    let lines: Vec<&str> = data.lines().collect();
    for (i, chunk) in lines.chunks(3000).enumerate() {
        let r = node.req(
            "POST",
            "/write?db=bench",
            headers,
            chunk.join("\n").as_bytes(),
        );
        assert_eq!(r.status, 204, "{}", r.text());
        // Half in Parquet files, half still in the buffer.
        if i == 3 {
            let r = node.req("POST", "/api/v1/flush", headers, b"");
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    (node, port)
}

#[test]
fn adbc_and_influxdb3_clients_get_what_http_gets() {
    let dir = tempfile::tempdir().unwrap();
    let (node, port) = start_with_data(dir.path(), &[], &[]);
    let queries = queries();
    let ranges = [(T0 + 3600 * SEC, T0 + 5 * 3600 * SEC), (T0, T0 + 600 * SEC)];
    let prepared =
        "SELECT count(*) AS n, avg(usage_user) AS a, max(time) AS last FROM cpu WHERE time >= ? AND time < ?";
    let out = client(serde_json::json!({
        "mode": "queries",
        "port": port,
        "database": "bench",
        "token": null,
        "queries": queries,
        "prepared": {"sql": prepared, "params": ranges},
        "cancel_sql": "SELECT a.time, b.usage_user FROM cpu a CROSS JOIN cpu b LIMIT 900000",
        "influx_params": {
            "sql": "SELECT count(*), max(usage_user) FROM cpu WHERE hostname = $host",
            "params": {"host": "host_7"},
        },
    }));

    // Every TSBS-style query, through both clients, as over HTTP.
    for (i, q) in queries.iter().enumerate() {
        let want = tidemark_rows(&node, "bench", q);
        assert!(!want.is_empty(), "{q}");
        assert_same_rows(q, &rows_of(&out["adbc"][i]), &want);
        assert_same_rows(q, &rows_of(&out["influx"][i]), &want);
    }

    // The prepared statement, bound twice with different ranges.
    for (i, (from, to)) in ranges.iter().enumerate() {
        let q = prepared
            .replacen('?', &format!("'{}'", rfc3339(*from)), 1)
            .replacen('?', &format!("'{}'", rfc3339(*to)), 1);
        let want = tidemark_rows(&node, "bench", &q);
        assert_same_rows(&q, &rows_of(&out["prepared"][i]), &want);
    }
    assert_ne!(out["prepared"][0], out["prepared"][1]);

    // InfluxDB 3's named parameters.
    let want = tidemark_rows(
        &node,
        "bench",
        "SELECT count(*), max(usage_user) FROM cpu WHERE hostname = 'host_7'",
    );
    assert_same_rows("influx params", &rows_of(&out["influx_params"]), &want);

    // Metadata: GetCatalogs / GetDbSchemas / GetTables (with the schema), GetSqlInfo.
    assert!(
        out["objects"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["tidemark", "bench", "cpu", "TABLE"])),
        "{}",
        out["objects"]
    );
    let columns: Vec<&str> = out["cpu_schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0].as_str().unwrap())
        .collect();
    for c in [
        "time",
        "hostname",
        "region",
        "usage_user",
        "usage_system",
        "usage_idle",
    ] {
        assert!(columns.contains(&c), "{c} in {columns:?}");
    }
    assert_eq!(out["vendor_name"], "tidemark");

    // Read-only: DDL and DML are errors, and nothing changed.
    for key in ["ddl_error", "influx_ddl_error", "insert_error"] {
        let e = out[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}: no error"));
        assert!(
            e.contains("not supported") || e.contains("DDL") || e.contains("DML"),
            "{key}: {e}"
        );
    }
    let r = node.req(
        "POST",
        "/api/v1/query",
        &[],
        br#"{"sql": "SELECT * FROM bench.t"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        tidemark_rows(&node, "bench", "SELECT count(*) FROM cpu"),
        vec![vec![serde_json::json!(21000)]]
    );

    // Only SQL.
    let e = out["influxql_error"].as_str().unwrap();
    assert!(e.contains("\"influxql\" is not supported"), "{e}");

    // The cancelled query: stopped, counted as cancelled.
    assert!(out["cancel_first_chunk_rows"].as_u64().unwrap() > 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = node.req("GET", "/metrics", &[], b"").text();
        let cancelled = metrics
            .lines()
            .any(|l| l.starts_with("tidemark_flight_queries_total{outcome=\"cancelled\"} "));
        if cancelled && node.metric_sum("tidemark_queries_running") == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Counted per protocol.
    assert!(node.metric_sum("tidemark_flight_queries_total") >= 2.0 * queries.len() as f64);
    assert!(node.metric_sum("tidemark_flight_rows_total") > 0.0);
}

#[test]
fn tokens_are_checked_when_auth_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let (node, port) = start_with_data(
        dir.path(),
        &[
            "--set",
            "auth.enabled=true",
            "--set",
            "query.max_rows=1000",
            "--set",
            "query.timeout_ms=2000",
        ],
        &[("TIDEMARK_AUTH_TOKENS", "[\"t0ken\"]")],
    );
    let q = "SELECT region, count(*) AS n FROM cpu GROUP BY region ORDER BY region";
    // The answer to compare with, first: the timeout case comes last.
    let body = serde_json::to_vec(&serde_json::json!({ "sql": q })).unwrap();
    let r = node.req(
        "POST",
        "/api/v1/query",
        &[
            ("x-arc-database", "bench"),
            ("Authorization", "Bearer t0ken"),
        ],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let want: Vec<Vec<serde_json::Value>> = rows_of(&r.json()["data"]);
    let out = client(serde_json::json!({
        "mode": "auth",
        "port": port,
        "database": "bench",
        "token": "t0ken",
        "queries": [q],
        "slow_sql": "SELECT sum(a.usage_user * b.usage_idle) FROM cpu a CROSS JOIN cpu b",
    }));
    for key in ["bearer", "password", "influx"] {
        assert_same_rows(key, &rows_of(&out[key]), &want);
    }
    for key in [
        "adbc_no_token_error",
        "adbc_wrong_token_error",
        "adbc_wrong_password_error",
        "influx_wrong_token_error",
    ] {
        let e = out[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}: no error"));
        assert!(
            e.to_lowercase().contains("unauthenticated")
                && (e.contains("invalid API token") || e.contains("missing API token")),
            "{key}: {e}"
        );
    }
    // The row limit of /api/v1/query holds here too.
    let e = out["too_many_rows_error"].as_str().unwrap();
    assert!(e.contains("more than 1000 rows (query.max_rows)"), "{e}");
    // And its timeout.
    let e = out["timeout_error"].as_str().unwrap();
    assert!(
        e.contains("DeadlineExceeded") && e.contains("timed out after 2000 ms"),
        "{e}"
    );
}

#[test]
fn a_taken_address_fails_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("flight.addr={}", taken.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::launch(dir.path(), &["--set", &addr], &[]);
    let status = node
        .wait_exit(std::time::Duration::from_secs(30))
        .expect("the node exits");
    assert!(!status.success());
    assert!(node.log().contains("flight.addr"), "{}", node.log());
}

#[test]
fn in_a_cluster_queries_go_where_routing_sends_http_queries() {
    use common::cluster::*;
    let dir = tempfile::tempdir().unwrap();
    let flight_port = free_port();
    let (n1, _n2) = writer_routing_to_a_reader(
        dir.path(),
        &[format!("flight.addr=127.0.0.1:{flight_port}")],
    );
    let before = n1.node.metric_sum("tidemark_forwarded_requests_total");
    let out = client(serde_json::json!({
        "mode": "run", "port": flight_port, "database": "r",
        "statements": [
            ["SELECT count(*) AS n, sum(id) AS s FROM m", null],
            ["SELECT count(*) AS n FROM m WHERE id >= ? AND host = ?", [100, "h1"]],
        ],
    }));
    assert_eq!(out["adbc"][0], serde_json::json!([[500, 124750]]), "{out}");
    assert_eq!(out["adbc"][1], serde_json::json!([[100]]), "{out}");
    assert_eq!(
        out["influx"][0],
        serde_json::json!([[500, 124750]]),
        "{out}"
    );
    // Three queries over measurements went to the reader (ADBC's two,
    // influxdb3's one); ADBC's planning for the schema stays here.
    let after = n1.node.metric_sum("tidemark_forwarded_requests_total");
    assert_eq!(after - before, 3.0);
}
