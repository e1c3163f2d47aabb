"""Queries tidemark over the PostgreSQL wire protocol with psycopg (PyPI
`psycopg`), the way applications do, and prints what it got as JSON, times
as integer nanoseconds since the epoch (like tests/oracle.py).

usage: pg_client.py < request.json
request: {"port", "db", "password", "queries": [...], "range": [from_ns, to_ns]}
"""
import datetime
import decimal
import json
import sys

import psycopg

req = json.load(sys.stdin)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

# What Grafana's PostgreSQL data source sends for its table picker.
GRAFANA_TABLES = """SELECT
  CASE WHEN
    quote_ident(table_schema) IN (
    SELECT
      CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
    FROM
      generate_series(
        array_lower(string_to_array(current_setting('search_path'),','),1),
        array_upper(string_to_array(current_setting('search_path'),','),1)
      ) as i,
      string_to_array(current_setting('search_path'),',') s
    )
  THEN quote_ident(table_name)
  ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
  END AS "table"
  FROM information_schema.tables
  WHERE quote_ident(table_schema) NOT IN ('information_schema',
                           'pg_catalog',
                           '_timescaledb_cache',
                           '_timescaledb_catalog',
                           '_timescaledb_internal',
                           '_timescaledb_config',
                           'timescaledb_information',
                           'timescaledb_experimental')
  ORDER BY CASE WHEN
    quote_ident(table_schema) IN (
    SELECT
      CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
    FROM
      generate_series(
        array_lower(string_to_array(current_setting('search_path'),','),1),
        array_upper(string_to_array(current_setting('search_path'),','),1)
      ) as i,
      string_to_array(current_setting('search_path'),',') s
    ) THEN 0 ELSE 1 END, 1"""


def norm(v):
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        d = v - EPOCH
        return (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000
    if isinstance(v, decimal.Decimal):
        return float(v)
    return v


def rows(cur):
    return [[norm(v) for v in r] for r in cur.fetchall()]


def connect(password):
    return psycopg.connect(
        host="127.0.0.1",
        port=req["port"],
        dbname=req["db"],
        user="app",
        password=password,
        autocommit=True,
    )


out = {}
if req.get("mode") == "auth":
    try:
        connect("wrong-token").close()
        out["wrong"] = "accepted"
    except psycopg.OperationalError as e:
        out["wrong"] = str(e)
    with connect(req["password"]) as conn:
        out["right"] = conn.execute("SELECT 1").fetchone()[0]
    print(json.dumps(out))
    sys.exit(0)

if req.get("mode") == "run":
    # Statements with optional parameters: their rows, or their SQLSTATE.
    out = []
    with connect(req.get("password", "anything")) as conn:
        for sql, params in req["statements"]:
            try:
                out.append(rows(conn.execute(sql, params, prepare=params is not None)))
            except psycopg.Error as e:
                out.append(e.sqlstate)
    print(json.dumps(out))
    sys.exit(0)

if req.get("mode") == "types":
    # One query in text and in binary: its values and column type OIDs.
    out = {}
    with connect("anything") as conn:
        for name, binary in [("text", False), ("binary", True)]:
            with conn.cursor(binary=binary) as cur:
                cur.execute(req["sql"])
                out[name] = {
                    "rows": rows(cur),
                    "oids": [d.type_code for d in cur.description],
                }
    print(json.dumps(out))
    sys.exit(0)

if req.get("mode") == "cancel":
    import threading
    import time

    result = {}
    conn = connect("anything")

    def long_query():
        try:
            conn.execute(req["sql"])
            result["outcome"] = "finished"
        except psycopg.Error as e:
            result["outcome"] = e.sqlstate

    t = threading.Thread(target=long_query)
    t.start()
    deadline = time.monotonic() + 120
    # A cancel request only stops a statement that is running: send one
    # until the statement ends (PostgreSQL's semantics, too).
    while t.is_alive() and time.monotonic() < deadline:
        conn.cancel()
        t.join(0.2)
    t.join()
    result["after"] = conn.execute("SELECT 1").fetchone()[0]
    print(json.dumps(result))
    sys.exit(0)

with connect(req.get("password", "anything")) as conn:
    out["server_version"] = conn.info.server_version
    # The extended protocol, text results (psycopg's default).
    out["text"] = [rows(conn.execute(q)) for q in req["queries"]]
    # Binary results.
    with conn.cursor(binary=True) as cur:
        out["binary"] = []
        for q in req["queries"]:
            cur.execute(q)
            out["binary"].append(rows(cur))
    # The simple protocol (client-side binding).
    with psycopg.ClientCursor(conn) as cur:
        out["simple"] = []
        for q in req["queries"]:
            cur.execute(q)
            out["simple"].append(rows(cur))
    # A prepared statement with a time-range parameter, run twice.
    lo, hi = (EPOCH + datetime.timedelta(microseconds=t // 1000) for t in req["range"])
    sql = "SELECT count(*) AS n, max(usage_user) AS m FROM cpu WHERE time >= %s AND time < %s"
    out["prepared"] = [
        rows(conn.execute(sql, (lo, hi), prepare=True)),
        rows(conn.execute(sql, (lo, lo + datetime.timedelta(hours=1)), prepare=True)),
    ]
    # Statements that would change something are refused with a SQLSTATE.
    out["refused"] = {}
    for stmt in [
        "CREATE TABLE t (a int)",
        "INSERT INTO cpu (usage_user) VALUES (1)",
        "DROP TABLE cpu",
    ]:
        try:
            conn.execute(stmt)
            out["refused"][stmt] = "accepted"
        except psycopg.Error as e:
            out["refused"][stmt] = e.sqlstate
    # What clients read at connect and for their schema pickers.
    out["catalog"] = {
        "version": conn.execute("SELECT version()").fetchone()[0],
        "version_num": conn.execute("SELECT current_setting('server_version_num')").fetchone()[0],
        "show": conn.execute("SHOW search_path").fetchone()[0],
        "set": conn.execute("SET application_name = 'tidemark-test'").statusmessage,
        "tables": sorted(
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchall()
        ),
        "pg_class": sorted(
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'"
            ).fetchall()
        ),
        "columns": [
            list(r)
            for r in conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = 'cpu' ORDER BY column_name"
            ).fetchall()
        ],
    }
    # Grafana's PostgreSQL data source: its table picker, then its
    # column picker for the table chosen.
    out["grafana_tables"] = [r[0] for r in conn.execute(GRAFANA_TABLES).fetchall()]
    out["grafana_columns"] = [
        list(r)
        for r in conn.execute(
            "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\" "
            "FROM information_schema.columns WHERE quote_ident(table_name) = 'cpu' "
            "ORDER BY 1"
        ).fetchall()
    ]
    # A query error keeps the connection usable.
    try:
        conn.execute("SELECT * FROM no_such_table")
    except psycopg.Error as e:
        out["missing_table"] = e.sqlstate
    out["after_error"] = conn.execute("SELECT count(*) FROM cpu").fetchone()[0]
print(json.dumps(out))
