"""Query benchmark: the same TSBS-style queries on tidemark (over HTTP) and on
DuckDB (the PyPI package, in-process) over the same Parquet files, in one run;
prints a table with the median time of each and the ratio tidemark / DuckDB.
Every query's result is checked equal on both sides (floats to 1e-9
relative), and count(*) is checked to be answered from metadata (its plan
reads no file).

usage: query_bench.py <tidemark url> <parquet root> <database> [runs] [threads]
The node must already hold the data, flushed (perf/query-bench.sh does it).
DuckDB reads <parquet root>: a node's own files, or (perf/storage-bench.sh)
a copy of the compacted files, which hold every point once, while the node
answers from files not compacted yet, or holding repeated points.
"""
import datetime
import json
import math
import statistics
import sys
import time
import urllib.request

import duckdb

url, root, db = sys.argv[1:4]
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 5
threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
TARGET = 1.5

con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute(f"SET threads = {threads}")
glob = f"{root}/{db}/cpu/**/*.parquet"
# tidemark writes `time` as TIMESTAMP(NANOS, isAdjustedToUTC), which DuckDB
# already reads as TIMESTAMP WITH TIME ZONE; cast only if it does not.
time_type = con.execute(
    f"SELECT column_type FROM (DESCRIBE SELECT time FROM read_parquet('{glob}', union_by_name = true))"
).fetchone()[0]
if time_type.startswith("TIMESTAMP WITH TIME ZONE"):
    con.execute(f"CREATE VIEW cpu AS SELECT * FROM read_parquet('{glob}', union_by_name = true)")
else:
    con.execute(
        f"CREATE VIEW cpu AS SELECT * REPLACE (time::TIMESTAMPTZ AS time) "
        f"FROM read_parquet('{glob}', union_by_name = true)"
    )
lo, hi = con.execute("SELECT min(time), max(time) FROM cpu").fetchone()
mid = lo + (hi - lo) / 2
frm = mid.strftime("%Y-%m-%dT%H:%M:%SZ")
to = (mid + (hi - lo) / 4).strftime("%Y-%m-%dT%H:%M:%SZ")

QUERIES = {
    "count(*)": "SELECT count(*) FROM cpu",
    "lastpoint": "SELECT c.hostname, c.usage_user FROM cpu c JOIN (SELECT hostname, max(time) AS t FROM cpu GROUP BY hostname) l "
                 "ON c.hostname = l.hostname AND c.time = l.t ORDER BY c.hostname",
    "single-groupby-1-1-12": f"SELECT date_trunc('minute', time) AS m, max(usage_user) FROM cpu WHERE hostname = 'host_7' "
                             f"AND time >= '{frm}' AND time < '{to}' GROUP BY 1 ORDER BY 1",
    "double-groupby-1": f"SELECT date_trunc('hour', time) AS h, hostname, avg(usage_user) FROM cpu "
                        f"WHERE time >= '{frm}' AND time < '{to}' GROUP BY 1, 2 ORDER BY 1, 2",
    "groupby-orderby-limit": f"SELECT date_trunc('minute', time) AS m, max(usage_user) FROM cpu WHERE time < '{to}' "
                             f"GROUP BY 1 ORDER BY 1 DESC LIMIT 5",
    "high-cpu-all": f"SELECT count(*) FROM cpu WHERE usage_user > 90.0 AND time >= '{frm}' AND time < '{to}'",
    "count-per-hour": "SELECT date_trunc('hour', time) AS h, count(*) FROM cpu GROUP BY 1 ORDER BY 1",
}


def post(sql):
    req = urllib.request.Request(
        f"{url}/api/v1/query",
        data=json.dumps({"sql": sql}).encode(),
        headers={"x-arc-database": db, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        body = json.loads(r.read())
    assert body["success"], body
    return body


def tidemark(sql):
    t = time.perf_counter()
    body = post(sql)
    return time.perf_counter() - t, body["data"]


def duck(sql):
    t = time.perf_counter()
    rows = con.execute(sql).fetchall()
    return time.perf_counter() - t, rows


def norm(v):
    """A value as comparable across both: times as UTC epoch seconds."""
    if isinstance(v, datetime.datetime):
        return v.timestamp()
    if isinstance(v, str) and len(v) >= 20 and v[4] == "-" and v[10] == "T" and v.endswith("Z"):
        return datetime.datetime.fromisoformat(v).timestamp()
    return v


def same(a, b):
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        if len(ra) != len(rb):
            return False
        for x, y in zip(map(norm, ra), map(norm, rb)):
            if isinstance(x, float) or isinstance(y, float):
                if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9):
                    return False
            elif x != y:
                return False
    return True


total = con.execute("SELECT count(*) FROM cpu").fetchone()[0]
plan = "\n".join(r[1] for r in post("EXPLAIN SELECT count(*) FROM cpu")["data"])
from_metadata = "PlaceholderRowExec" in plan and "DataSourceExec" not in plan
print(f"rows: {total}, window {frm} .. {to}, median of {runs} runs after one warm-up; "
      f"results checked equal; count(*) answered from metadata: {'yes' if from_metadata else 'NO'}\n")
print("| query | tidemark ms | DuckDB ms | ratio | rows |")
print("|---|---:|---:|---:|---:|")
missed = []
for name, sql in QUERIES.items():
    _, tr = tidemark(sql)
    _, dr = duck(sql)
    assert same(tr, dr), f"{name}: results differ:\n tidemark {tr[:5]}\n DuckDB {dr[:5]}"
    t = [tidemark(sql)[0] for _ in range(runs)]
    d = [duck(sql)[0] for _ in range(runs)]
    tm = statistics.median(t) * 1000
    dm = statistics.median(d) * 1000
    ratio = tm / dm
    if ratio > TARGET:
        missed.append(name)
    print(f"| {name} | {tm:.1f} | {dm:.1f} | {ratio:.2f} | {len(tr)} |", flush=True)
print()
if missed:
    print(f"Target (ratio <= {TARGET}) missed by: {', '.join(missed)}.")
else:
    print(f"Every query within {TARGET}x of DuckDB.")
