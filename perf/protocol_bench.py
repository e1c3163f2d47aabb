"""Fetches one large result through every query protocol tidemark speaks
and prints a Markdown table: wall time to fetch it (and to have it in a
usable form on the client), the server's CPU time for it, bytes received.

usage: protocol_bench.py <server pid> <http port> <pg port> <flight port> <db> <sql> <runs>

* HTTP JSON:   POST /api/v1/query, body read, then json.loads
* HTTP Arrow:  POST /api/v1/query/arrow, body read, then pyarrow.ipc
* Flight SQL:  ADBC (adbc-driver-flightsql), fetch_arrow_table (its
               fetch time includes the decoding: ADBC hands over a table)
* PostgreSQL:  psycopg, binary cursor, fetchall (rows as Python tuples)

The server's CPU is its process's utime + stime (all threads) over the
fetch, from /proc/<pid>/stat.
"""
import http.client
import io
import json
import os
import statistics
import sys
import time

import adbc_driver_flightsql.dbapi as flightsql
import psycopg
import pyarrow.ipc

pid, http_port, pg_port, flight_port = (int(x) for x in sys.argv[1:5])
db, sql, runs = sys.argv[5], sys.argv[6], int(sys.argv[7])
TICK = os.sysconf("SC_CLK_TCK")


def server_cpu():
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def http_fetch(path):
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=600)
    conn.request("POST", path, json.dumps({"sql": sql}), {"x-arc-database": db})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise SystemExit(f"{path}: {resp.status} {body[:300]!r}")
    conn.close()
    return body


def json_run():
    body = http_fetch("/api/v1/query")
    fetched = time.perf_counter()
    rows = len(json.loads(body)["data"])
    return fetched, rows, len(body)


def arrow_run():
    body = http_fetch("/api/v1/query/arrow")
    fetched = time.perf_counter()
    rows = pyarrow.ipc.open_stream(io.BytesIO(body)).read_all().num_rows
    return fetched, rows, len(body)


flight = flightsql.connect(
    f"grpc://127.0.0.1:{flight_port}",
    db_kwargs={"adbc.flight.sql.rpc.call_header.database": db},
)


def flight_run():
    cur = flight.cursor()
    cur.execute(sql)
    table = cur.fetch_arrow_table()
    fetched = time.perf_counter()
    cur.close()
    return fetched, table.num_rows, None


pg = psycopg.connect(host="127.0.0.1", port=pg_port, dbname=db, user="bench", password="x")


def pg_run():
    with pg.cursor(binary=True) as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    fetched = time.perf_counter()
    return fetched, len(rows), None


results = []
for name, run in [
    ("Flight SQL (ADBC)", flight_run),
    ("HTTP Arrow IPC", arrow_run),
    ("PostgreSQL binary (psycopg)", pg_run),
    ("HTTP JSON", json_run),
]:
    walls, usable, cpus = [], [], []
    for _ in range(runs):
        cpu0, t0 = server_cpu(), time.perf_counter()
        fetched, rows, nbytes = run()
        t1 = time.perf_counter()
        # The server's CPU settles once the last bytes are sent.
        cpus.append(server_cpu() - cpu0)
        walls.append(fetched - t0)
        usable.append(t1 - t0)
    results.append((name, statistics.median(walls), statistics.median(usable), statistics.median(cpus), rows, nbytes))

arrow_use = next(r[2] for r in results if r[0] == "HTTP Arrow IPC")
json_use = next(r[2] for r in results if r[0] == "HTTP JSON")
print(f"| protocol | rows | fetch s (median of {runs}) | fetch + decode s | server CPU s | HTTP body bytes | fetch + decode vs HTTP Arrow | fetch + decode vs JSON |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, wall, use, cpu, rows, nbytes in results:
    print(
        f"| {name} | {rows:,} | {wall:.3f} | {use:.3f} | {cpu:.2f} | "
        f"{'-' if nbytes is None else format(nbytes, ',')} | "
        f"{arrow_use / use:.2f}x | {json_use / use:.1f}x |"
    )
