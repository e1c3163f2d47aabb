"""Talks to tidemark's Arrow Flight SQL server with real clients and prints
what they got as JSON (timestamps as integer nanoseconds since the epoch).

usage: flight_client.py < request.json

The request: {"mode": "queries" | "auth", "port": N, "database": "...",
"token": "..." or null, "queries": [sql, ...], "prepared": {"sql": ...,
"params": [[from_ns, to_ns], ...]}, "influx_params": {"sql": ..., "params": {...}}}.

Clients: ADBC (`adbc-driver-flightsql`, the Flight SQL protocol:
GetFlightInfo + DoGet, prepared statements, GetTables, GetSqlInfo) and
`influxdb3-python` (InfluxDB 3's JSON ticket straight to DoGet).
"""
import datetime
import json
import sys

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight
from influxdb_client_3 import InfluxDBClient3

UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def rows(table):
    """A pyarrow Table as a list of rows of JSON values."""
    cols = []
    for col in table.columns:
        t = col.type
        if pa.types.is_timestamp(t):
            vals = [None if v is None else v * UNIT[t.unit] for v in col.cast(pa.int64()).to_pylist()]
        else:
            vals = col.to_pylist()
        cols.append(vals)
    return [list(r) for r in zip(*cols)]


def utc(ns):
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.timezone.utc)


def adbc(port, database, **auth):
    kwargs = {"adbc.flight.sql.rpc.call_header.database": database}
    if "bearer" in auth:
        kwargs["adbc.flight.sql.authorization_header"] = f"Bearer {auth['bearer']}"
    if "password" in auth:
        kwargs["username"] = "anyone"
        kwargs["password"] = auth["password"]
    return flightsql.connect(f"grpc://127.0.0.1:{port}", db_kwargs=kwargs)


def adbc_query(conn, sql, params=None):
    with conn.cursor() as cur:
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(sql, parameters=params)
        return rows(cur.fetch_arrow_table())


def error_of(f):
    try:
        f()
    except Exception as e:  # noqa: BLE001 - the message is the result
        return f"{type(e).__name__}: {e}"
    return None


def influx(port, database, token):
    return InfluxDBClient3(host=f"http://127.0.0.1:{port}", token=token, database=database)


def queries_mode(req):
    port, db = req["port"], req["database"]
    out = {}
    conn = adbc(port, db)
    out["adbc"] = [adbc_query(conn, q) for q in req["queries"]]
    prep = req["prepared"]
    out["prepared"] = [
        adbc_query(conn, prep["sql"], (utc(a), utc(b))) for a, b in prep["params"]
    ]
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    out["objects"] = [
        [c["catalog_name"], s["db_schema_name"], t["table_name"], t["table_type"]]
        for c in objects
        for s in c["catalog_db_schemas"] or []
        for t in s["db_schema_tables"] or []
    ]
    schema = conn.adbc_get_table_schema("cpu", db_schema_filter=db)
    out["cpu_schema"] = [[f.name, str(f.type)] for f in schema]
    info = conn.adbc_get_info()
    out["vendor_name"] = info.get("vendor_name")
    out["ddl_error"] = error_of(lambda: adbc_query(conn, "CREATE TABLE t (x INT)"))
    out["insert_error"] = error_of(lambda: adbc_query(conn, "INSERT INTO cpu (usage_user) VALUES (1)"))
    conn.close()

    client = influx(port, db, req.get("token") or "unused")
    out["influx"] = [rows(client.query(q, language="sql")) for q in req["queries"]]
    p = req["influx_params"]
    out["influx_params"] = rows(client.query(p["sql"], language="sql", query_parameters=p["params"]))
    out["influxql_error"] = error_of(lambda: client.query("SELECT * FROM cpu", language="influxql"))
    out["influx_ddl_error"] = error_of(lambda: client.query("CREATE TABLE t (x INT)", language="sql"))
    client.close()

    # A client that stops reading and cancels: the server drops the query.
    fc = flight.FlightClient(f"grpc+tcp://127.0.0.1:{port}")
    ticket = {"database": db, "sql_query": req["cancel_sql"], "query_type": "sql"}
    reader = fc.do_get(flight.Ticket(json.dumps(ticket).encode()))
    out["cancel_first_chunk_rows"] = reader.read_chunk().data.num_rows
    reader.cancel()
    fc.close()
    return out


def auth_mode(req):
    port, db, token = req["port"], req["database"], req["token"]
    q = req["queries"][0]
    out = {}
    out["bearer"] = adbc_query(adbc(port, db, bearer=token), q)
    out["password"] = adbc_query(adbc(port, db, password=token), q)
    out["adbc_no_token_error"] = error_of(lambda: adbc_query(adbc(port, db), q))
    out["adbc_wrong_token_error"] = error_of(lambda: adbc_query(adbc(port, db, bearer="wrong"), q))
    out["adbc_wrong_password_error"] = error_of(lambda: adbc_query(adbc(port, db, password="wrong"), q))
    out["too_many_rows_error"] = error_of(lambda: adbc_query(adbc(port, db, bearer=token), "SELECT * FROM cpu"))
    out["influx"] = rows(influx(port, db, token).query(q, language="sql"))
    out["influx_wrong_token_error"] = error_of(lambda: influx(port, db, "wrong").query(q, language="sql"))
    # Last: a query past its deadline is answered at the deadline, but a
    # cross join computing in one poll keeps the (one) pool thread until
    # it yields (ARCHITECTURE, "Cancellation"), which would delay any query
    # after it.
    out["timeout_error"] = error_of(lambda: adbc_query(adbc(port, db, bearer=token), req["slow_sql"]))
    return out


def run_mode(req):
    """Statements with optional parameters through ADBC, and through
    influxdb3-python: their rows, or their error."""
    conn = adbc(req["port"], req["database"])
    out = {"adbc": [], "influx": []}
    for sql, params in req["statements"]:
        try:
            out["adbc"].append(adbc_query(conn, sql, params))
        except Exception as e:  # noqa: BLE001 - the message is the result
            out["adbc"].append(f"{type(e).__name__}: {e}")
    client = influx(req["port"], req["database"], "anything")
    for sql, params in req["statements"]:
        if params is None:
            out["influx"].append(rows(client.query(sql, language="sql")))
    return out


def main():
    req = json.load(sys.stdin)
    out = {"queries": queries_mode, "auth": auth_mode, "run": run_mode}[req["mode"]](req)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
