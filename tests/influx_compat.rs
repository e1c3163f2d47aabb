//! InfluxDB 1.x compatibility: `/ping` and `/query` (`SHOW DATABASES`,
//! `SHOW MEASUREMENTS`, `CREATE DATABASE`) over raw HTTP, then through the
//! InfluxDB 1.x Python client (PyPI `influxdb`, through
//! `tests/influx_client.py`).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `GET /query?q=<q>` plus `extra` query parameters.
fn get_query(node: &Node, q: &str, extra: &str) -> Resp {
    node.req("GET", &format!("/query?q={}{extra}", enc(q)), &[], b"")
}

fn assert_version_headers(r: &Resp) {
    assert_eq!(r.headers["x-influxdb-version"], "1.8.10", "{r:?}");
    assert_eq!(r.headers["x-influxdb-build"], "OSS", "{r:?}");
    assert_eq!(
        r.headers["x-tidemark-version"],
        env!("CARGO_PKG_VERSION"),
        "{r:?}"
    );
}

#[test]
fn ping_answers_204_with_the_version_headers() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    for method in ["GET", "HEAD"] {
        let r = node.req(method, "/ping", &[], b"");
        assert_eq!(r.status, 204, "{method}");
        assert!(r.body.is_empty());
        assert_version_headers(&r);
    }
    let r = node.req("GET", "/ping?verbose=true", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"version": "1.8.10"}));
    assert_version_headers(&r);
    assert_eq!(node.req("GET", "/ping?verbose=false", &[], b"").status, 204);
    assert_eq!(node.req("POST", "/ping", &[], b"").status, 405);
    assert_eq!(node.req("DELETE", "/query", &[], b"").status, 405);
}

#[test]
fn query_answers_show_and_create_in_influxdb_shape() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    // Nothing written yet: no database.
    let r = get_query(&node, "SHOW DATABASES", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"results": [{"statement_id": 0, "series": [
            {"name": "databases", "columns": ["name"]}]}]})
    );
    assert_version_headers(&r);
    assert_eq!(r.headers["content-type"], "application/json");

    assert_eq!(
        node.write_lp("telegraf", "cpu,host=a u=1\nmem,host=a u=2")
            .status,
        204
    );
    assert_eq!(node.write_lp("other", "disk,host=a free=3i").status, 204);

    let r = get_query(&node, "show databases", "");
    assert_eq!(
        r.json(),
        json!({"results": [{"statement_id": 0, "series": [
            {"name": "databases", "columns": ["name"], "values": [["other"], ["telegraf"]]}]}]})
    );
    let measurements = |values: serde_json::Value| {
        json!({"results": [{"statement_id": 0, "series": [
            {"name": "measurements", "columns": ["name"], "values": values}]}]})
    };
    let r = get_query(&node, "SHOW MEASUREMENTS", "&db=telegraf");
    assert_eq!(r.json(), measurements(json!([["cpu"], ["mem"]])));
    // ON (a quoted name) wins over db.
    let r = get_query(&node, r#"SHOW MEASUREMENTS ON "other""#, "&db=telegraf");
    assert_eq!(r.json(), measurements(json!([["disk"]])));
    // A database without data: no series.
    let r = get_query(&node, "SHOW MEASUREMENTS", "&db=nothing");
    assert_eq!(r.json(), json!({"results": [{"statement_id": 0}]}));
    // No database: InfluxDB's statement error, with 200.
    let r = get_query(&node, "SHOW MEASUREMENTS", "");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"results": [{"statement_id": 0, "error": "database name required"}]})
    );

    // CREATE DATABASE: accepted, changes nothing (POST with q in the URL,
    // as influxdb-python sends it, and as a form body, as other clients do).
    let r = node.req(
        "POST",
        &format!("/query?q={}", enc("CREATE DATABASE \"x\"")),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"results": [{"statement_id": 0}]}));
    let form = format!(
        "q={}&db=telegraf",
        enc("create database y; SHOW MEASUREMENTS LIMIT 1")
    );
    let r = node.req(
        "POST",
        "/query",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"results": [{"statement_id": 0}, {"statement_id": 1, "series": [
            {"name": "measurements", "columns": ["name"], "values": [["cpu"]]}]}]})
    );
    let r = get_query(&node, "SHOW DATABASES", "&pretty=true");
    assert!(r.text().contains('\n'), "{}", r.text());
    assert_eq!(
        r.json()["results"][0]["series"][0]["values"],
        json!([["other"], ["telegraf"]])
    );
    // An invalid name is refused.
    let r = node.req(
        "POST",
        &format!("/query?q={}", enc("CREATE DATABASE \"no.dots\"")),
        &[],
        b"",
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("invalid database name"), "{}", r.text());
}

#[test]
fn other_influxql_and_bad_input_get_400_pointing_to_sql() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    for (q, kind) in [
        ("SELECT mean(u) FROM cpu WHERE time > now() - 1h", "SELECT"),
        ("SHOW SERIES", "SHOW SERIES"),
        ("SHOW DATABASES; DROP DATABASE telegraf", "DROP DATABASE"),
    ] {
        let r = get_query(&node, q, "&db=telegraf");
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        let e = r.error();
        assert!(
            e.contains(&format!("InfluxQL {kind} is not supported")),
            "{e}"
        );
        assert!(e.contains("SQL at POST /api/v1/query"), "{e}");
        assert_version_headers(&r);
    }
    for (path, says) in [
        ("/query", "missing required parameter \"q\""),
        ("/query?q=", "missing required parameter \"q\""),
        ("/query?q=%20%3B", "no statement"),
        ("/query?q=SHOW%20DATABASES%20now", "error parsing query"),
        ("/query?q=hello", "expected an InfluxQL statement"),
    ] {
        let r = node.req("GET", path, &[], b"");
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.error().contains(says), "{path}: {}", r.text());
    }
}

#[test]
fn query_needs_a_token_when_auth_is_on_and_ping_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with_env(
        dir.path(),
        &["--set", "auth.enabled=true"],
        &[("TIDEMARK_AUTH_TOKENS", "[\"t0ken\"]")],
    );
    let q = format!("/query?q={}", enc("SHOW DATABASES"));
    assert_eq!(node.req("GET", &q, &[], b"").status, 401);
    assert_eq!(
        node.req("GET", &format!("{q}&u=me&p=wrong"), &[], b"")
            .status,
        401
    );
    let r = node.req("GET", &format!("{q}&u=me&p=t0ken"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    // user:t0ken
    let r = node.req(
        "GET",
        &q,
        &[("Authorization", "Basic dXNlcjp0MGtlbg==")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(node.req("HEAD", "/ping", &[], b"").status, 204);
    assert_eq!(node.req("GET", "/ping", &[], b"").status, 204);
}

/// Runs `tests/influx_client.py` against `node` and returns what it printed.
fn python_client(node: &Node, token: Option<&str>) -> serde_json::Value {
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/influx_client.py"
        ))
        .arg(node.port.to_string())
        .args(token)
        .output()
        .expect("python3 with the influxdb package (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "influx_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_influxdb_python_client_pings_lists_and_creates() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    assert_eq!(node.write_lp("telegraf", "cpu,host=a u=1").status, 204);
    let got = python_client(&node, None);
    assert_eq!(got["ping"], "1.8.10");
    assert_eq!(got["databases_before"], json!([{"name": "telegraf"}]));
    assert_eq!(got["created"], true);
    assert_eq!(
        got["databases"],
        json!([{"name": "pyclient"}, {"name": "telegraf"}])
    );
    assert_eq!(
        got["measurements"],
        json!([{"name": "cpu"}, {"name": "mem"}])
    );
    assert_eq!(got["select"]["code"], 400, "{got}");
    let content = got["select"]["content"].as_str().unwrap();
    assert!(
        content.contains("InfluxQL SELECT is not supported"),
        "{content}"
    );
}

#[test]
fn the_influxdb_python_client_with_auth() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with_env(
        dir.path(),
        &["--set", "auth.enabled=true"],
        &[("TIDEMARK_AUTH_TOKENS", "[\"t0ken\"]")],
    );
    let got = python_client(&node, Some("t0ken"));
    assert_eq!(got["ping"], "1.8.10");
    assert_eq!(got["databases_before"], json!([]));
    assert_eq!(got["databases"], json!([{"name": "pyclient"}]));
    assert_eq!(
        got["measurements"],
        json!([{"name": "cpu"}, {"name": "mem"}])
    );
}
