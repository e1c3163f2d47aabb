//! The PostgreSQL wire protocol (`pg.addr`) with real clients against the
//! real binary: `psql` (Debian's postgresql-client) and `psycopg` (PyPI,
//! through `tests/pg_client.py`) run the TSBS-style queries of the DuckDB
//! oracle and must get DuckDB's answers, in text and binary, over the simple
//! and the extended protocol; a prepared statement takes a time range;
//! statements that would write are refused with their SQLSTATE; auth takes
//! the API tokens as passwords; a cancel request stops a running query.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::Command;

use common::oracle::{assert_same_rows, dataset, duckdb, queries, SEC, T0};
use common::*;

fn pg_node(dir: &std::path::Path, extra: &[&str]) -> (Node, u16) {
    let port = free_port();
    let addr = format!("pg.addr=127.0.0.1:{port}");
    let mut flags = vec!["--set", addr.as_str()];
    flags.extend_from_slice(extra);
    (Node::start(dir, &flags), port)
}

/// Runs `tests/pg_client.py` with `request` on stdin; its JSON answer.
fn psycopg(request: serde_json::Value) -> serde_json::Value {
    python_client("pg_client.py", "psycopg", &request)
}

/// `psql -At` with `args`: (exit status ok, stdout, stderr).
fn psql(port: u16, db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "grafana",
            "-d",
            db,
        ])
        .args(["-X", "-At", "-v", "VERBOSITY=verbose"])
        .args(args)
        .env("PGPASSWORD", "anything")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql (Debian's postgresql-client; scripts/test.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `psql -At` field as the oracle writes it: numbers as numbers,
/// timestamps as nanoseconds, the rest as text.
fn psql_value(field: &str) -> serde_json::Value {
    if let Ok(i) = field.parse::<i64>() {
        return serde_json::json!(i);
    }
    if let Ok(f) = field.parse::<f64>() {
        return serde_json::json!(f);
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(field, format) {
            return serde_json::json!(t.timestamp_nanos_opt().unwrap());
        }
    }
    serde_json::json!(field)
}

fn to_rows(v: &serde_json::Value) -> Vec<Vec<serde_json::Value>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().clone())
        .collect()
}

#[test]
fn psql_and_psycopg_get_the_oracles_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (node, port) = pg_node(dir.path(), &[]);
    let data = dataset();
    for chunk in data.lines().collect::<Vec<_>>().chunks(3000) {
        assert_eq!(node.write_lp("bench", &chunk.join("\n")).status, 204);
    }
    node.flush();
    let queries = queries();
    let expected = duckdb(&node, "bench", "cpu", &queries);

    // psql: the simple protocol, text results.
    for (q, want) in queries.iter().zip(&expected) {
        let (ok, out, err) = psql(port, "bench", &["-F", "|", "-c", q]);
        assert!(ok, "{q}: {err}");
        let got: Vec<Vec<serde_json::Value>> = out
            .lines()
            .map(|l| l.split('|').map(psql_value).collect())
            .collect();
        assert_same_rows(q, &got, want);
    }

    // psycopg: extended protocol in text and binary, the simple protocol,
    // a prepared statement, refusals, catalog queries.
    let (from, to) = (T0 + 3600 * SEC, T0 + 5 * 3600 * SEC);
    let got = psycopg(serde_json::json!({
        "port": port, "db": "bench", "queries": queries, "range": [from, to],
    }));
    for mode in ["text", "binary", "simple"] {
        for (i, (q, want)) in queries.iter().zip(&expected).enumerate() {
            assert_same_rows(&format!("{mode}: {q}"), &to_rows(&got[mode][i]), want);
        }
    }
    let window = |lo: i64, hi: i64| {
        let q = format!(
            "SELECT count(*) AS n, max(usage_user) AS m FROM cpu WHERE time >= '{}' AND time < '{}'",
            common::oracle::rfc3339(lo),
            common::oracle::rfc3339(hi)
        );
        common::oracle::tidemark_rows(&node, "bench", &q)
    };
    assert_same_rows("prepared", &to_rows(&got["prepared"][0]), &window(from, to));
    assert_same_rows(
        "prepared again",
        &to_rows(&got["prepared"][1]),
        &window(from, from + 3600 * SEC),
    );
    assert!(got["prepared"][0][0][0].as_i64().unwrap() > 0);
    for (stmt, code) in got["refused"].as_object().unwrap() {
        assert_eq!(code, "25006", "{stmt}");
    }
    let catalog = &got["catalog"];
    assert!(catalog["version"]
        .as_str()
        .unwrap()
        .starts_with("PostgreSQL 16"));
    assert_eq!(catalog["version_num"], "160006");
    assert_eq!(catalog["show"], "public");
    assert_eq!(catalog["set"], "SET");
    assert_eq!(catalog["tables"], serde_json::json!(["cpu"]));
    assert_eq!(catalog["pg_class"], serde_json::json!(["cpu"]));
    let columns: Vec<String> = catalog["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        columns,
        [
            "hostname",
            "region",
            "time",
            "usage_idle",
            "usage_system",
            "usage_user"
        ]
    );
    // Grafana's pickers: the measurement (schema-qualified), its columns.
    let tables = got["grafana_tables"].as_array().unwrap();
    assert!(
        tables.iter().any(|t| t == "cpu" || t == "public.cpu"),
        "{tables:?}"
    );
    assert!(
        got["grafana_columns"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["usage_user", "double precision"])),
        "{}",
        got["grafana_columns"]
    );
    assert_eq!(got["missing_table"], "42P01");
    assert_eq!(got["after_error"], 21000);
    assert!(got["server_version"].as_i64().unwrap() >= 160000);

    // psql's own catalog queries: \dt and \d.
    let (ok, out, err) = psql(port, "bench", &["-c", "\\dt"]);
    assert!(ok && out.contains("cpu"), "\\dt: {out} {err}");
    let (ok, out, err) = psql(port, "bench", &["-c", "\\d cpu"]);
    assert!(
        ok && out.contains("usage_user") && out.contains("timestamp with time zone"),
        "\\d cpu: {out} {err}"
    );
    // DDL: refused with its SQLSTATE, nothing changed.
    let (ok, _, err) = psql(port, "bench", &["-c", "CREATE TABLE t (a int)"]);
    assert!(!ok && err.contains("25006"), "{err}");

    // Rows are visible at acknowledgement (not flushed), and another
    // database is a schema of the same name.
    assert_eq!(
        node.write_lp(
            "other",
            &format!("mem,host=a used=1 {T0}\nmem,host=b used=2 {T0}")
        )
        .status,
        204
    );
    let (ok, out, err) = psql(
        port,
        "bench",
        &["-c", "SELECT count(*), sum(used) FROM other.mem"],
    );
    assert!(ok, "{err}");
    let fields: Vec<f64> = out.trim().split('|').map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields, [2.0, 3.0], "{out}");
    let (ok, out, err) = psql(port, "other", &["-c", "SELECT count(*) FROM mem"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "2");
    assert!(node.metric_sum("tidemark_pg_queries_total") > 0.0);
}

#[test]
fn passwords_are_api_tokens_when_auth_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let (node, port) = pg_node(
        dir.path(),
        &[
            "--set",
            "auth.enabled=true",
            "--set",
            "auth.tokens=[\"s3cret\"]",
        ],
    );
    let got = psycopg(serde_json::json!({
        "mode": "auth", "port": port, "db": "default", "password": "s3cret",
    }));
    let wrong = got["wrong"].as_str().unwrap();
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    assert_eq!(got["right"], 1);
    assert!(node.metric_sum("tidemark_pg_auth_failures_total") >= 1.0);
}

#[test]
fn a_cancel_request_stops_a_running_query() {
    let dir = tempfile::tempdir().unwrap();
    let (node, port) = pg_node(dir.path(), &["--set", "query.timeout_ms=600000"]);
    let data = dataset();
    for chunk in data.lines().collect::<Vec<_>>().chunks(3000) {
        assert_eq!(node.write_lp("default", &chunk.join("\n")).status, 204);
    }
    // 21,000² pairs: minutes of work, unless cancelled.
    let got = psycopg(serde_json::json!({
        "mode": "cancel", "port": port, "db": "default",
        "sql": "SELECT count(*) FROM cpu a, cpu b WHERE a.usage_user + b.usage_idle > a.usage_system * b.usage_user",
    }));
    assert_eq!(got["outcome"], "57014", "{got}");
    assert_eq!(got["after"], 1);
}

/// `tests/pg_client.py` in `run` mode: each statement's rows (or SQLSTATE).
fn run_statements(port: u16, db: &str, statements: serde_json::Value) -> serde_json::Value {
    psycopg(serde_json::json!({
        "mode": "run", "port": port, "db": db, "statements": statements,
    }))
}

#[test]
fn in_a_cluster_queries_go_where_routing_sends_http_queries() {
    use common::cluster::*;
    let dir = tempfile::tempdir().unwrap();
    let pg_port = free_port();
    let (n1, _n2) =
        writer_routing_to_a_reader(dir.path(), &[format!("pg.addr=127.0.0.1:{pg_port}")]);
    let before = n1.node.metric_sum("tidemark_forwarded_requests_total");
    let got = run_statements(
        pg_port,
        "r",
        serde_json::json!([
            ["SELECT count(*), sum(id) FROM m", null],
            [
                "SELECT count(*) FROM public.m WHERE id >= %s AND host = %s",
                [100, "h1"]
            ],
            [
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'm'",
                null
            ],
            ["SELECT * FROM no_such_table", null],
        ]),
    );
    assert_eq!(got[0], serde_json::json!([[500, 124750]]));
    assert_eq!(got[1], serde_json::json!([[100]]));
    assert_eq!(got[2], serde_json::json!([[1]]));
    assert_eq!(got[3], "42P01");
    // The two queries over measurements went to the reader; the catalog
    // query and the failed plan stayed here.
    let after = n1.node.metric_sum("tidemark_forwarded_requests_total");
    assert_eq!(after - before, 2.0);
}

#[test]
fn every_column_kind_reads_back_in_text_and_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (node, port) = pg_node(dir.path(), &[]);
    let lines = format!(
        "k,tag=a f=1.5,i=-3i,u=7u,b=true,s=\"hi there\" {T0}\nk,tag=b f=-0.25,i=9000000000i,u=18446744073709551615u,b=false,s=\"\" {}",
        T0 + SEC
    );
    assert_eq!(node.write_lp("types", &lines).status, 204);
    let got = psycopg(serde_json::json!({
        "mode": "types", "port": port, "db": "types",
        "sql": "SELECT time, tag, f, i, u, b, s FROM k ORDER BY time",
    }));
    // timestamptz, text, float8, int8, numeric, bool, text
    let oids = serde_json::json!([1184, 25, 701, 20, 1700, 16, 25]);
    let want = serde_json::json!([
        [T0, "a", 1.5, -3, 7.0, true, "hi there"],
        [
            T0 + SEC,
            "b",
            -0.25,
            9_000_000_000i64,
            18446744073709551615.0,
            false,
            ""
        ],
    ]);
    for mode in ["text", "binary"] {
        assert_eq!(got[mode]["oids"], oids, "{mode}");
        assert_eq!(got[mode]["rows"], want, "{mode}");
    }
}

#[test]
fn tls_is_offered_when_the_node_has_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(&dir.path().join("pki"), "node");
    let (cert, key, ca) = (
        format!("tls.cert={}", p.cert.display()),
        format!("tls.key={}", p.key.display()),
        format!("tls.ca={}", p.ca.display()),
    );
    let (_node, port) = pg_node(dir.path(), &["--set", &cert, "--set", &key, "--set", &ca]);
    let conninfo = |mode: &str| {
        let out = Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={port} dbname=default user=u password=x sslmode={mode} sslrootcert={}",
                p.ca.display()
            ))
            .args(["-X", "-At", "-c", "\\conninfo", "-c", "SELECT 1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The certificate checks out against the CA and the host name.
    let tls = conninfo("verify-full");
    assert!(tls.contains("SSL connection"), "{tls}");
    // TLS is offered, not required.
    let plain = conninfo("disable");
    assert!(
        !plain.contains("SSL connection") && plain.ends_with("1\n"),
        "{plain}"
    );
}

/// The backend messages a raw connection receives until the server closes
/// it (or 10 s pass): (type, body).
fn read_messages(sock: &mut std::net::TcpStream) -> Vec<(u8, Vec<u8>)> {
    use std::io::Read;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut raw = Vec::new();
    let _ = sock.read_to_end(&mut raw);
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= raw.len() {
        let len = u32::from_be_bytes(raw[at + 1..at + 5].try_into().unwrap()) as usize;
        let end = (at + 1 + len).min(raw.len());
        out.push((raw[at], raw[at + 5..end].to_vec()));
        at = end;
    }
    out
}

#[test]
fn a_client_refused_its_password_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, port) = pg_node(
        dir.path(),
        &[
            "--set",
            "auth.enabled=true",
            "--set",
            "auth.tokens=[\"s3cret\"]",
        ],
    );
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let message = |kind: Option<u8>, body: &[u8]| {
        let mut m: Vec<u8> = kind.into_iter().collect();
        m.extend(((body.len() + 4) as u32).to_be_bytes());
        m.extend(body);
        m
    };
    let mut startup = 196608u32.to_be_bytes().to_vec();
    startup.extend(b"user\0u\0database\0default\0\0");
    // Startup, a wrong password and, without waiting, a query.
    let mut all = message(None, &startup);
    all.extend(message(Some(b'p'), b"wrong\0"));
    all.extend(message(Some(b'Q'), b"SELECT 1\0"));
    sock.write_all(&all).unwrap();
    let got = read_messages(&mut sock);
    let kinds: Vec<char> = got.iter().map(|(k, _)| *k as char).collect();
    assert!(
        got.iter()
            .any(|(k, b)| *k == b'E' && String::from_utf8_lossy(b).contains("28P01")),
        "{kinds:?}"
    );
    // No row description, no data row, no command complete.
    assert!(
        !kinds.iter().any(|k| matches!(k, 'T' | 'D' | 'C')),
        "{kinds:?}"
    );
}
